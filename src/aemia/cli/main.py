"""Entry point of the ``aemia`` command.

Each verb module exposes ``register(app)``; errors derived from :class:`aemia.errors.AemiaError`
become one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from aemia.errors import AemiaError

app = typer.Typer(
    name="aemia",
    help="aemia: annotation-efficient medical image analysis.\n\nExample: aemia demo",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

# Verb modules, in pipeline order. A module that is missing is skipped so partial installs still run.
_VERB_MODULES = ("data", "pretrain", "synth", "train", "semi", "weak", "predict", "evaluate", "active", "review",
                 "demo")



@app.callback()
def _root() -> None:
    """aemia: annotation-efficient medical image analysis."""


for _name in _VERB_MODULES:
    try:
        _mod = importlib.import_module(f"aemia.cli.{_name}")
    except ModuleNotFoundError as exc:  # pragma: no cover - only during development
        if exc.name != f"aemia.cli.{_name}":
            raise
        continue
    _mod.register(app)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (used by the console script and tests)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        rc = app(args=argv, standalone_mode=False, prog_name="aemia")
    except AemiaError as exc:
        print(f"aemia: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except typer.Exit as exc:
        return int(exc.exit_code or 0)
    except SystemExit as exc:  # click raises this for --help and usage errors
        return int(exc.code or 0)
    except KeyboardInterrupt:
        print("aemia: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # Usage errors from the click that typer bundles (typer >= 0.20 vendors it privately, older versions
        # use the click package): recognised by their interface rather than an import.
        if hasattr(exc, "show") and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            return int(exc.exit_code)
        if type(exc).__name__ == "Abort":
            return 1
        raise
    return int(rc) if isinstance(rc, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
