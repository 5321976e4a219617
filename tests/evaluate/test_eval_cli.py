"""``aemia evaluate`` end to end on PNG and NIfTI folders, and its error paths."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from evaluate_helpers import ball, write_nifti_labels, write_png_mask


def _run(cli_main, *args: str) -> int:
    return cli_main(["evaluate", *args, "--n-bootstrap", "200"])


def test_png_folders_end_to_end(cli_main, png_folders, capsys) -> None:
    pred_dir, gt_dir, img_dir = png_folders
    assert _run(cli_main, "--pred", str(pred_dir), "--gt", str(gt_dir), "--images", str(img_dir)) == 0
    out_dir = pred_dir.parent / "evaluation"  # default: next to the predictions
    stdout = capsys.readouterr().out
    assert "dice" in stdout and f"Report: {out_dir / 'report.html'}" in stdout

    summary = json.loads((out_dir / "metrics.json").read_text())
    seg = summary["segmentation"]["foreground"]
    assert summary["n_cases"] == 3 and summary["classes"] == {"1": "foreground"}
    assert seg["dice"]["mean"] == pytest.approx((1.0 + 0.8 + 0.5) / 3)
    assert seg["dice"]["ci"][0] <= seg["dice"]["mean"] <= seg["dice"]["ci"][1]
    lesions = summary["lesion_detection"]
    assert lesions["overall"]["n_lesions"] == 4 and lesions["overall"]["n_detected"] == 3
    by_bin = {b["label"]: b for b in lesions["bins"]}
    assert (by_bin["10-20 mm"]["n_lesions"], by_bin["10-20 mm"]["n_detected"]) == (2, 1)
    assert by_bin["0-5 mm"]["sensitivity"] is None  # empty bin → null, valid JSON
    assert lesions["false_positives_per_case"]["mean"] == pytest.approx(1 / 3)
    assert summary["worst_cases"][0]["case"] == "case_c" and summary["best_cases"][0]["case"] == "case_a"

    rows = list(csv.DictReader((out_dir / "per_case.csv").open()))
    assert [r["case"] for r in rows] == ["case_a", "case_b", "case_c"]
    assert float(rows[1]["foreground_dice"]) == pytest.approx(0.8)
    assert rows[2]["false_positive_components"] == "1"
    page = (out_dir / "report.html").read_text()
    assert "case_c" in page and page.count("data:image/png;base64,") >= 2
    assert len(list((out_dir / "figures").glob("*.png"))) >= 2


def test_jpeg_masks_with_noise_match_png_predictions(cli_main, tmp_path) -> None:
    from PIL import Image

    (tmp_path / "gt").mkdir(), (tmp_path / "pred").mkdir()
    mask = ball((64, 64), (1.0, 1.0), 15.0)
    rgb = np.repeat((mask * 255).astype(np.uint8)[..., None], 3, axis=2)
    Image.fromarray(rgb).save(tmp_path / "gt" / "p1.jpg", quality=70)  # JPEG: values spread around 0/255
    write_png_mask(tmp_path / "pred" / "p1.png", mask)
    out = tmp_path / "out"
    assert _run(cli_main, "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--out", str(out)) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert list(summary["segmentation"]) == ["foreground"]
    assert summary["segmentation"]["foreground"]["dice"]["mean"] > 0.97


def test_nifti_multilabel_anisotropic(cli_main, tmp_path) -> None:
    spacing = (0.8, 0.8, 2.5)
    shape = (40, 40, 16)
    (tmp_path / "gt").mkdir(), (tmp_path / "pred").mkdir()
    for i in range(2):
        gt = np.zeros(shape, np.uint8)
        gt[ball(shape, spacing, 10.0)] = 1
        gt[ball(shape, spacing, 4.0, centre_mm=(8, 8, 20))] = 2
        pred = np.zeros(shape, np.uint8)
        pred[ball(shape, spacing, 10.0 - 2 * i)] = 1  # case 1: 2 mm smaller
        write_nifti_labels(tmp_path / "gt" / f"ct{i}.nii.gz", gt, spacing)
        write_nifti_labels(tmp_path / "pred" / f"ct{i}.nii.gz", pred, spacing)
    out = tmp_path / "eval"
    rc = _run(cli_main, "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--out", str(out),
              "--classes", "1=organ,2=tumour", "--nsd-tolerance", "2.5")
    assert rc == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert set(summary["segmentation"]) == {"organ", "tumour"}
    rows = list(csv.DictReader((out / "per_case.csv").open()))
    assert float(rows[0]["organ_hd95"]) == 0.0
    assert float(rows[1]["organ_hd95"]) == pytest.approx(2.0, abs=2.5)
    assert rows[0]["tumour_dice"] == "0" and rows[0]["tumour_hd95_worst_case"] == "1"
    assert summary["segmentation"]["tumour"]["hd95_worst_case"]["mean"] == 1.0
    assert (out / "report.html").is_file()


def test_missing_prediction_is_one_line_error(cli_main, png_folders, capsys) -> None:
    pred_dir, gt_dir, _ = png_folders
    (pred_dir / "case_b.png").unlink()
    out = pred_dir.parent / "out"
    assert _run(cli_main, "--pred", str(pred_dir), "--gt", str(gt_dir), "--out", str(out)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "case_b" in err and "no prediction" in err
    assert not (out / "metrics.json").exists()


def test_shape_mismatch_is_one_line_error(cli_main, png_folders, capsys) -> None:
    pred_dir, gt_dir, _ = png_folders
    write_png_mask(pred_dir / "case_c.png", np.zeros((32, 64), bool))
    out = pred_dir.parent / "out"
    assert _run(cli_main, "--pred", str(pred_dir), "--gt", str(gt_dir), "--out", str(out)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(pred_dir / "case_c.png") in err and str(gt_dir / "case_c.png") in err and "shape" in err
    assert not (out / "metrics.json").exists() and not (out / "report.html").exists()


def test_not_a_folder_and_bad_classes(cli_main, png_folders, capsys) -> None:
    pred_dir, gt_dir, _ = png_folders
    assert _run(cli_main, "--pred", str(pred_dir / "nope"), "--gt", str(gt_dir)) == 2
    assert "not a folder" in capsys.readouterr().err
    assert _run(cli_main, "--pred", str(pred_dir), "--gt", str(gt_dir), "--classes", "x=liver") == 2
    assert "--classes" in capsys.readouterr().err


def test_help_has_example(cli_main, capsys) -> None:
    assert cli_main(["evaluate", "--help"]) == 0
    assert "Example: aemia evaluate --pred" in capsys.readouterr().out
