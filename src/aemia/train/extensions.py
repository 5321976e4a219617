"""Extension points of a training run that packages above ``train`` fill in, so ``train`` never imports them.

:data:`SEMI_METHODS`: ``RunConfig.semi`` name → ``make(cfg, ds, labelled, task, n_classes) -> SemiRun``.
:mod:`aemia.semisup` registers mean teacher and pseudo-labels on import (the CLI and the benchmarks import it);
:func:`aemia.recipes.run.train_run` looks the name up with :func:`semi_method` before it writes anything.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from aemia.errors import InputError
from aemia.train.hooks import Hook


class SemiRun(Protocol):
    """What a semi-supervised method adds to one run: a trainer hook, and the report step after training.

    ``report(run_dir, history, evaluate, extras)`` calls ``evaluate(extras')`` (the run's evaluation, with
    ``extras'`` the report extras to use) and returns the run's summary (``metrics.json``)."""

    hook: Hook

    def report(self, run_dir: Path, history: list[dict[str, Any]], evaluate: Callable[[Any], dict[str, Any]],
               extras: Any) -> dict[str, Any]: ...


#: ``make(cfg: RunConfig, ds: CatalogDataset, labelled: list[str], task: str, n_classes: int) -> SemiRun``;
#: ``make`` may write the resolved settings back into ``cfg`` (they are saved in config.yaml).
SemiMaker = Callable[[Any, Any, list[str], str, int], SemiRun]

SEMI_METHODS: dict[str, SemiMaker] = {}


def semi_name(method: str) -> str:
    """The canonical spelling of a semi-supervised method name (``mean_teacher`` → ``mean-teacher``)."""
    return method.strip().lower().replace("_", "-")


def register_semi_method(name: str, make: SemiMaker) -> None:
    """Make ``RunConfig(semi=name)`` train with what ``make`` builds (see :data:`SEMI_METHODS`)."""
    SEMI_METHODS[semi_name(name)] = make


def semi_method(name: str) -> SemiMaker:
    """The registered method ``name``; InputError naming the registered ones otherwise."""
    make = SEMI_METHODS.get(semi_name(name))
    if make is None:
        known = ", ".join(sorted(SEMI_METHODS)) or "none registered: import aemia.semisup first"
        raise InputError(None, f"unknown semi-supervised method {name!r}; choose one of: {known}")
    return make


__all__ = ["SEMI_METHODS", "SemiMaker", "SemiRun", "register_semi_method", "semi_method", "semi_name"]
