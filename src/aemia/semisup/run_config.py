"""The recipe file of a multi-network semi-supervised run (SSAC, MB-DCNN): ``config.yaml``, as every run folder.

Runs written before the run contract was followed hold ``config.json`` instead; :func:`read_method_config`
still reads those.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from aemia.errors import InputError
from aemia.utils.io import write_text_atomic


def write_method_config(run_dir: str | Path, config: dict[str, Any]) -> Path:
    """Write ``config`` (plain data) to ``run_dir/config.yaml`` atomically; returns the path."""
    path = Path(run_dir) / "config.yaml"
    write_text_atomic(path, yaml.safe_dump(json.loads(json.dumps(config)), sort_keys=False))
    return path


def read_method_config(run_dir: str | Path) -> dict[str, Any]:
    """``run_dir/config.yaml``, or a legacy ``config.json``; InputError if neither is there or readable."""
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    legacy = run_dir / "config.json"
    try:
        if path.exists():
            data = yaml.safe_load(path.read_text())
        elif legacy.exists():
            path, data = legacy, json.loads(legacy.read_text())
        else:
            raise InputError(path, "not a run folder (config.yaml missing)")
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"invalid run config ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(path, "invalid run config (not a mapping)")
    return data
