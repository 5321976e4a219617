"""``aemia semi``: semi-supervised and mutually bootstrapped recipes that need more than one network
(MB-DCNN, SSAC). Mean teacher and pseudo-labels are options of ``aemia train`` (``--semi``).

Each recipe lives in its own module ``aemia.cli.semi_<name>`` exposing ``register(semi_app)``; a module that
is not installed is skipped.
"""

from __future__ import annotations

import importlib

import typer

_RECIPES = ("semi_mbdcnn", "semi_ssac")


def register(app: typer.Typer) -> None:
    semi_app = typer.Typer(
        name="semi",
        help="Semi-supervised recipes with several networks (MB-DCNN on PH2, SSAC).\n\n"
             "Example: aemia semi mbdcnn --dataset ph2 --run runs/mbdcnn",
        no_args_is_help=True,
    )
    for name in _RECIPES:
        try:
            mod = importlib.import_module(f"aemia.cli.{name}")
        except ModuleNotFoundError as exc:  # pragma: no cover - during development
            if exc.name != f"aemia.cli.{name}":
                raise
            continue
        mod.register(semi_app)
    app.add_typer(semi_app)
