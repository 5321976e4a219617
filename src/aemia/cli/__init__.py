"""The ``aemia`` command line: one module per verb group, assembled in :mod:`aemia.cli.main`."""
