"""The run folder: one type that knows where everything of a run lives and reads/writes its config.

::

    runs/<name>/config.yaml     the full recipe (RunConfig + TrainConfig), the seed included
    runs/<name>/splits.json     the data set's split and the labelled subset actually used
    runs/<name>/log.jsonl       one line per epoch (written by aemia.train.Trainer)
    runs/<name>/checkpoints/    last.safetensors (resumable), best.safetensors + best.json
    runs/<name>/metrics.json    evaluation metrics with bootstrap 95% CIs
    runs/<name>/per_case.csv, figures/, report.html

``RunFolder("runs/kv10").config()`` is the :class:`~aemia.runs.config.RunConfig`; ``.checkpoint("best")`` the
checkpoint stem :func:`aemia.nets.load_checkpoint` reads. The :class:`~aemia.train.Trainer` writes ``log.jsonl``
and ``checkpoints/`` itself (``train`` sits below ``runs``), under the names both take from
:mod:`aemia.train.trainer` (``LOG_FILE``, ``CHECKPOINTS_DIR``).

Runs whose recipe is not a :class:`RunConfig` (SSAC, MB-DCNN, pretraining, active rounds) write and read their
``config.yaml`` as a plain mapping: :meth:`RunFolder.save_config` with a mapping, :meth:`RunFolder.config_dict`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from aemia.errors import InputError
from aemia.runs.config import RunConfig
from aemia.train.trainer import CHECKPOINTS_DIR, LOG_FILE
from aemia.utils.io import write_json_atomic, write_text_atomic


class _Part:
    """A file or folder of a run as a read-only attribute: ``RunFolder(p).config_path == p / "config.yaml"``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, folder: "RunFolder | None", owner: type | None = None) -> Path:
        if folder is None:
            raise AttributeError(self.name)
        return folder.path / self.name


@dataclass(frozen=True)
class RunFolder:
    path: Path

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))

    # -- where things are -------------------------------------------------------------------------------
    config_path = _Part("config.yaml")
    splits_path = _Part("splits.json")
    log_path = _Part(LOG_FILE)
    metrics_path = _Part("metrics.json")
    per_case_path = _Part("per_case.csv")
    report_path = _Part("report.html")
    checkpoints = _Part(CHECKPOINTS_DIR)
    figures = _Part("figures")

    def checkpoint(self, name: str = "best") -> Path:
        """The stem of checkpoint ``name`` (``best`` or ``last``): ``<stem>.safetensors`` + ``<stem>.json``."""
        return self.checkpoints / name

    def has_checkpoint(self, name: str = "best") -> bool:
        return self.checkpoint(name).with_suffix(".safetensors").is_file()

    def is_run(self) -> bool:
        """A run folder has a ``config.yaml``."""
        return self.config_path.is_file()

    # -- config -----------------------------------------------------------------------------------------
    def config(self) -> RunConfig:
        """The run's :class:`RunConfig`; InputError when ``config.yaml`` is missing or invalid."""
        path = self.config_path
        if not path.exists():
            raise InputError(path, "not a run folder (config.yaml missing)")
        try:
            return RunConfig.from_dict(self.config_dict())
        except (TypeError, ValueError) as exc:
            raise InputError(path, f"invalid run config ({exc})") from None

    def config_dict(self) -> dict[str, Any]:
        """``config.yaml`` as a plain mapping, or a legacy ``config.json`` when there is no ``config.yaml`` (SSAC and
        MB-DCNN runs written before the run contract); InputError if neither is there or readable."""
        path, legacy = self.config_path, self.path / "config.json"
        try:
            if path.exists():
                data = yaml.safe_load(path.read_text())
            elif legacy.exists():
                path = legacy
                data = json.loads(legacy.read_text())
            else:
                raise InputError(path, "not a run folder (config.yaml missing)")
        except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(path, f"invalid run config ({exc})") from None
        if not isinstance(data, dict):
            raise InputError(path, "invalid run config (not a mapping)")
        return data

    def save_config(self, cfg: RunConfig | dict[str, Any]) -> Path:
        """Write ``config.yaml`` atomically: a :class:`RunConfig`, or a mapping for runs whose recipe is another
        dataclass (SSAC, MB-DCNN, pretraining) or a subset of its fields (active rounds). A mapping is written as
        plain JSON data (tuples become lists)."""
        data = cfg.to_dict() if isinstance(cfg, RunConfig) else json.loads(json.dumps(dict(cfg)))
        write_text_atomic(self.config_path, yaml.safe_dump(data, sort_keys=False))
        return self.config_path

    # -- other records ----------------------------------------------------------------------------------
    def save_splits(self, splits: dict[str, Any]) -> Path:
        write_json_atomic(self.splits_path, splits)
        return self.splits_path

    def splits(self) -> dict[str, Any]:
        return self._json(self.splits_path)

    def save_metrics(self, metrics: dict[str, Any]) -> Path:
        write_json_atomic(self.metrics_path, metrics)
        return self.metrics_path

    def metrics(self) -> dict[str, Any]:
        return self._json(self.metrics_path)

    def log(self) -> list[dict[str, Any]]:
        """The epoch log (one dict per line of ``log.jsonl``); empty before the first epoch."""
        if not self.log_path.is_file():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]

    @staticmethod
    def _json(path: Path) -> dict[str, Any]:
        if not path.is_file():
            raise InputError(path, "missing: the run has not written it yet")
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise InputError(path, f"invalid JSON ({exc})") from None
