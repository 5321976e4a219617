"""Fixtures for the evaluation tests: the CLI entry point and mask folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from evaluate_helpers import write_png_mask


@pytest.fixture
def cli_main():
    """``aemia.cli.main.main``. While ``evaluate`` is the only verb registered, Typer would run it as the root
    command (no sub-command name); giving the app a no-op callback keeps it a group, as it is once other
    verbs exist."""
    from aemia.cli import main as cli

    app = cli.app
    if app.registered_callback is None and len(app.registered_commands) + len(app.registered_groups) == 1:
        app.callback()(lambda: None)
    return cli.main


@pytest.fixture
def png_folders(tmp_path: Path) -> tuple[Path, Path, Path]:
    """pred/, gt/, images/ with three 64x64 cases: perfect, shifted square, and a missed lesion + false positive."""
    from PIL import Image

    dirs = [tmp_path / n for n in ("pred", "gt", "images")]
    for d in dirs:
        d.mkdir()
    pred_dir, gt_dir, img_dir = dirs
    rng = np.random.default_rng(0)
    square = np.zeros((64, 64), bool)
    square[20:40, 20:40] = True
    shifted = np.roll(square, 4, axis=1)
    two = np.zeros((64, 64), bool)
    two[5:15, 5:15] = True
    two[40:50, 40:50] = True
    pred_two = np.zeros((64, 64), bool)
    pred_two[5:15, 5:15] = True
    pred_two[50:60, 5:15] = True  # false positive, lesion at 40:50 missed
    for cid, gt, pred in (("case_a", square, square), ("case_b", square, shifted), ("case_c", two, pred_two)):
        write_png_mask(gt_dir / f"{cid}.png", gt)
        write_png_mask(pred_dir / f"{cid}.png", pred)
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(img_dir / f"{cid}.jpg")
    return pred_dir, gt_dir, img_dir
