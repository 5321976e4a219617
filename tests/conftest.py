"""Suite-wide test configuration: fp32 everywhere, and the ``needs_data`` marker.

``AEMIA_AMP=none`` makes ``amp="auto"`` mean fp32 in this process and every CLI subprocess a test starts: tests
that assert learning must not depend on a CPU's bf16 rounding (CI machines differ). Tests of the bf16 code path
ask for ``amp="bf16"`` explicitly.

``@pytest.mark.needs_data`` marks a test that reads the real data folder (``AEMIA_DATA``, else
``<repo>/../shared/data``); the test is skipped, not failed, when that folder is absent. Data set folder names as
arguments (``@pytest.mark.needs_data("kvasir_seg_256")``) also skip it when one of those sub-folders is missing.
The ``real_data`` fixture returns the folder (and skips likewise)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["AEMIA_AMP"] = "none"


def data_root() -> Path:
    """The real data folder the package's catalog reads: ``AEMIA_DATA`` or ``<repo>/../shared/data``."""
    env = os.environ.get("AEMIA_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


def missing_data(names: tuple[str, ...] = ()) -> str | None:
    """Why real-data tests needing ``names`` cannot run here, or None when they can."""
    root = data_root()
    if not root.is_dir():
        return f"real data folder {root} not found (set AEMIA_DATA)"
    absent = [n for n in names if not (root / n).exists()]
    return f"{', '.join(absent)} not found under {root}" if absent else None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers("needs_data"):
        reason = missing_data(tuple(str(a) for a in marker.args))
        if reason:
            pytest.skip(reason)


@pytest.fixture(scope="session")
def real_data() -> Path:
    reason = missing_data()
    if reason:
        pytest.skip(reason)
    return data_root()
