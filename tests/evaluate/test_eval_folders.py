"""Case matching and mask-value rules of the folder evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from evaluate_helpers import write_png_mask

from aemia.data.image import Image
from aemia.errors import InputError
from aemia.evaluate import evaluate_folders
from aemia.evaluate.evaluate import case_id, find_cases, mask_labels


def test_case_id_strips_image_suffixes(tmp_path: Path) -> None:
    assert case_id("a/ct_001.nii.gz") == "ct_001"
    assert case_id("b.NII") == "b" and case_id("x.y.png") == "x.y" and case_id("m.nrrd") == "m"
    (tmp_path / "c.png").write_bytes(b"")
    (tmp_path / "c.jpg").write_bytes(b"")
    with pytest.raises(InputError, match="'c' appears twice"):
        find_cases(tmp_path)
    with pytest.raises(InputError, match="holds no images"):
        find_cases(_empty(tmp_path))


def _empty(tmp_path: Path) -> Path:
    d = tmp_path / "empty"
    d.mkdir()
    (d / "notes.txt").write_text("x")
    return d


def test_mask_label_rules() -> None:
    pic = Image(np.array([[[0, 255], [3, 130]]], np.uint8), (1.0, 1.0), path="m.png")
    assert mask_labels(pic).tolist() == [[0, 1], [0, 1]]  # 8-bit picture mask: > 127
    small = Image(np.array([[[0, 1], [2, 2]]], np.uint8), (1.0, 1.0), path="m.png")
    assert mask_labels(small).tolist() == [[0, 1], [2, 2]]  # label values kept
    vol = Image(np.full((1, 2, 2, 2), 104, np.int16), (1.0, 1.0, 1.0), path="seg.nii.gz")
    assert (mask_labels(vol) == 104).all()  # volumes keep labels > 20
    prob = Image(np.array([[[0.2, 0.7]]], np.float32), (1.0, 1.0), path="p.nii.gz")
    assert mask_labels(prob).tolist() == [[0, 1]]
    rgb = Image(np.stack([np.zeros((2, 2)), np.full((2, 2), 255), np.zeros((2, 2))]).astype(np.uint8),
                (1.0, 1.0), path="m.jpg")
    assert mask_labels(rgb).tolist() == [[1, 1], [1, 1]]


def test_evaluate_folders_api(png_folders) -> None:
    pred_dir, gt_dir, _ = png_folders
    write_png_mask(pred_dir / "extra.png", np.zeros((64, 64), bool))
    out = pred_dir.parent / "api_eval"
    res = evaluate_folders(pred_dir, gt_dir, out, n_resamples=100, progress=False, lesions=False)
    assert res["unmatched_predictions"] == ["extra"] and res["lesion_detection"] == {}
    assert Path(res["outputs"]["metrics_json"]).is_file() and Path(res["outputs"]["per_case_csv"]).is_file()
    assert res["segmentation"]["foreground"]["dice"]["n"] == 3
