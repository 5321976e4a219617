"""Models shipped inside the package: ``src/aemia/shipped/<name>/`` holds ``model.safetensors``, ``config.json``
(the run's model config, as a run folder's checkpoint config) and ``MODEL_CARD.md`` (training data, licences,
measured scores).

``aemia train --init universal`` and ``aemia predict --pretrained liver-tumor`` find their weights here; a name
that is not shipped is a one-line error listing the ones that are.
"""

from __future__ import annotations

from pathlib import Path

from aemia.errors import InputError

#: Where shipped models live (package data, see pyproject's ``tool.setuptools.package-data``).
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "shipped"

#: The files every shipped model folder has.
SHIPPED_FILES = ("model.safetensors", "config.json", "MODEL_CARD.md")


def shipped_models() -> list[str]:
    """Names of the shipped models whose folder is complete."""
    if not SHIPPED_DIR.is_dir():
        return []
    return sorted(p.name for p in SHIPPED_DIR.iterdir()
                  if p.is_dir() and all((p / f).is_file() for f in SHIPPED_FILES))


def shipped_model_dir(name: str) -> Path:
    """The folder of the shipped model ``name``; :class:`InputError` naming the available ones otherwise."""
    folder = SHIPPED_DIR / name
    missing = [f for f in SHIPPED_FILES if not (folder / f).is_file()]
    if missing:
        have = ", ".join(shipped_models()) or "none"
        raise InputError(folder, f"no shipped model {name!r} (missing {', '.join(missing)}); shipped: {have}")
    return folder


__all__ = ["SHIPPED_DIR", "SHIPPED_FILES", "shipped_model_dir", "shipped_models"]
