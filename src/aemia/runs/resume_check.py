"""``--resume`` keeps the run's own settings: an option given again with another value is refused, by name.

A resumed run continues from its checkpoint with the ``config.yaml`` it was started with (the learning-rate
schedule, the data split and the network all depend on it). Before issue 18 a changed ``--epochs`` or
``--size`` was silently ignored; :func:`resume_conflicts` names every such option so the CLI can refuse.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from aemia.errors import InputError

#: CLI option (parameter name) → where its value lives in a :class:`aemia.runs.config.RunConfig`.
TRAIN_FIELDS = ("epochs", "batch_size", "lr", "optimizer", "schedule", "loss", "deep_supervision",
                "early_stopping", "seed", "amp", "device")


def _value(cfg: Any, name: str) -> Any:
    return getattr(cfg.train, name) if name in TRAIN_FIELDS else getattr(cfg, name, None)


def resume_conflicts(saved: Any, requested: Any, given: Iterable[str]) -> list[str]:
    """``"--epochs 10 (the run has 50)"`` for every option in ``given`` whose value differs from the run's."""
    out = []
    for name in given:
        if name in ("resume", "run", "dataset") or not (name in TRAIN_FIELDS or hasattr(saved, name)):
            continue
        old, new = _value(saved, name), _value(requested, name)
        if old != new:
            out.append(f"--{name.replace('_', '-')} {new} (the run has {old})")
    return out


def check_resume(run_dir: str | Path, requested: Any, given: Iterable[str]) -> None:
    """Raise :class:`InputError` naming every option that would change a run being resumed."""
    from aemia.runs.folder import RunFolder

    folder = RunFolder(run_dir)
    if not folder.config_path.exists():
        return  # nothing to resume yet: train_run starts the run
    conflicts = resume_conflicts(folder.config(), requested, given)
    if conflicts:
        raise InputError(run_dir, "--resume keeps the run's settings, but these differ: " + "; ".join(conflicts)
                         + ". Drop them to resume, or start a new --run")
