"""report.html, overlay and learning-curve figures."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from aemia.evaluate.report import Figure, overlay_figure, select_slice, write_report


def _png_ok(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_overlay_figure_grey_rgb_and_empty(tmp_path: Path) -> None:
    gt = np.zeros((32, 32), bool)
    gt[8:20, 8:20] = True
    pred = np.roll(gt, 3, axis=1)
    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. matplotlib's "no contour levels" for empty masks
        assert _png_ok(overlay_figure(rng.random((32, 32)), gt, pred, "grey", tmp_path / "a.png"))
        rgb = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        assert _png_ok(overlay_figure(rgb, gt, np.zeros_like(gt), "rgb, empty pred", tmp_path / "b.png"))
        assert _png_ok(overlay_figure(None, np.zeros_like(gt), pred, "no image", tmp_path / "c.png"))
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


def test_select_slice_takes_most_gt_foreground() -> None:
    gt = np.zeros((10, 12, 8), bool)
    gt[2:5, 2:5, 3] = True
    gt[2:8, 2:8, 6] = True
    img = np.random.default_rng(0).random(gt.shape)
    image2d, gt2d, pred2d, index = select_slice(img, gt, np.zeros_like(gt))
    assert index == 6 and gt2d.sum() == 36 and image2d.shape == gt2d.shape == pred2d.shape == (12, 10)
    assert select_slice(None, np.zeros_like(gt), gt)[3] == 6  # falls back to the prediction


def test_write_report_with_tables_curves_and_overlays(tmp_path: Path) -> None:
    gt = np.zeros((32, 32), bool)
    gt[8:20, 8:20] = True
    fig = overlay_figure(None, gt, gt, "best", tmp_path / "figures" / "best.png")
    metrics = {
        "n_cases": 2,
        "segmentation": {"polyp": {"dice": {"mean": 0.81, "ci": [0.7, 0.9], "n": 2},
                                   "hd95": {"mean": 3.5, "ci": [None, None], "n": 2}}},
        "lesion_detection": {"bins": [{"label": "0-5 mm", "n_lesions": 3, "n_detected": 2, "sensitivity": 0.667,
                                       "ci": [0.3, 1.0]}],
                             "overall": {"n_lesions": 3, "n_detected": 2, "sensitivity": 0.667, "ci": [0.3, 1.0]},
                             "false_positives_per_case": {"mean": 0.5, "ci": [0.0, 1.0], "n": 2}},
        "classification": {"auc": {"mean": 0.9, "ci": [0.8, 0.97], "n": 40}},
    }
    rows = [{"case": "a", "polyp_dice": 0.9}, {"case": "b<script>", "polyp_dice": 0.72}]
    curves = {"epoch": [1, 2, 3], "train_loss": [1.0, 0.6, 0.4], "val_dice": [0.5, 0.7, 0.8]}
    path = write_report(tmp_path, metrics, rows, [Figure(fig, "best case")], curves, "Demo run")
    assert path == tmp_path / "report.html"
    page = path.read_text(encoding="utf-8")
    assert "<title>Demo run</title>" in page and "95% CI" in page
    assert "0.81" in page and "0.7 – 0.9" in page and "polyp" in page
    assert "Lesion detection" in page and "0-5 mm" in page and "Classification" in page
    assert page.count("data:image/png;base64,") == 2  # learning curves + overlay
    assert "b&lt;script&gt;" in page and "<script>" not in page
    assert _png_ok(tmp_path / "figures" / "learning_curves.png")
