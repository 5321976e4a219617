"""Class activation maps (Zhou et al., CVPR 2016): CAM_c = Σ_k w_ck f_k exactly, normalisation by the positive
maximum, thresholding into masks, IoU/Dice scoring, and the ``aemia weak cam`` command's outputs and error
contract (one line, exit code 2)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aemia.cli.main import main
from aemia.nets import ResNetClassifier, create_model, save_checkpoint
from aemia.weak.cam import (
    CamConfig,
    cam_from_maps,
    class_activation_maps,
    largest_component,
    normalise_cams,
    score_masks,
    supports_cam,
    threshold_cam,
    threshold_cams,
)

needs_ph2 = pytest.mark.needs_data("ph2_dermoscopy")
needs_busi = pytest.mark.needs_data("busi_classification")


def _tiny_model(out: int = 3) -> ResNetClassifier:
    torch.manual_seed(0)
    return ResNetClassifier(2, 3, out, features=(4, 6), blocks=(1, 1)).eval()


# ----------------------------------------------------------------------------------------------- the maps


def test_cam_equals_the_manual_weighted_sum_of_the_last_feature_maps() -> None:
    model = _tiny_model()
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        maps = model.forward_maps(x)  # (2, 6, 4, 4)
        cams = cam_from_maps(maps, model.fc.weight)
        w = model.fc.weight
        manual = torch.zeros(2, 3, 4, 4)
        for n in range(2):
            for c in range(3):
                for k in range(6):
                    manual[n, c] += w[c, k] * maps[n, k]
        torch.testing.assert_close(cams, manual)
        # global average pooling makes the logit the CAM's mean plus the bias
        torch.testing.assert_close(cams.mean(dim=(2, 3)) + model.fc.bias, model(x))


def test_class_activation_maps_upsample_normalise_and_pick_the_class() -> None:
    model = _tiny_model()
    x = torch.rand(3, 3, 8, 8)
    with torch.no_grad():
        logits = model(x)
        raw = cam_from_maps(model.forward_maps(x), model.fc.weight)
    out = class_activation_maps(model, x.numpy())
    assert out.cams.shape == (3, 8, 8) and out.cams.dtype == np.float32
    np.testing.assert_array_equal(out.classes, logits.argmax(1).numpy())  # default: the predicted class
    np.testing.assert_allclose(out.probs, logits.softmax(1).numpy(), rtol=1e-5, atol=1e-6)
    expected = F.interpolate(raw, size=(8, 8), mode="bilinear", align_corners=False).clamp(min=0)
    for i, c in enumerate(out.classes):
        m = expected[i, c]
        ref = (m / m.max()).numpy() if m.max() > 0 else np.zeros((8, 8))
        np.testing.assert_allclose(out.cams[i], ref, rtol=1e-5, atol=1e-6)
    named = class_activation_maps(model, x, classes=2, size=(16, 12))
    assert named.cams.shape == (3, 16, 12) and (named.classes == 2).all()
    assert 0.0 <= named.cams.min() and named.cams.max() <= 1.0
    with pytest.raises(ValueError, match="out of range"):
        class_activation_maps(model, x, classes=3)


def test_normalisation_divides_by_the_positive_max_and_zeroes_negative_maps() -> None:
    cams = torch.tensor([[[-1.0, 2.0], [4.0, 0.0]], [[-3.0, -1.0], [-2.0, -0.5]]])
    out = normalise_cams(cams)
    torch.testing.assert_close(out[0], torch.tensor([[0.0, 0.5], [1.0, 0.0]]))
    torch.testing.assert_close(out[1], torch.zeros(2, 2))


def test_models_without_a_feature_map_head_are_refused() -> None:
    unet = create_model("unet", 2, 3, 2, features=(4, 8))
    assert not supports_cam(unet) and supports_cam(_tiny_model())
    with pytest.raises(ValueError, match="no feature maps"):
        class_activation_maps(unet, np.zeros((1, 3, 8, 8), np.float32))


# -------------------------------------------------------------------------------------- masks and scores


def test_thresholding_a_hand_made_map() -> None:
    cam = np.array([[0.0, 0.2, 0.4, 0.0],
                    [0.1, 0.5, 0.9, 0.0],
                    [0.0, 0.6, 1.0, 0.3],
                    [0.0, 0.0, 0.0, 0.55]])
    expected = np.array([[0, 0, 0, 0],
                         [0, 1, 1, 0],
                         [0, 1, 1, 0],
                         [0, 0, 0, 1]], dtype=bool)
    np.testing.assert_array_equal(threshold_cam(cam, 0.5), expected)
    np.testing.assert_array_equal(threshold_cam(cam * 10, 0.5), expected)  # relative to the map's maximum
    np.testing.assert_array_equal(threshold_cam(cam, 0.95), cam >= 0.95)
    # 8-connectivity: the corner pixel touches the block diagonally, so it stays with the largest component
    np.testing.assert_array_equal(threshold_cam(cam, 0.5, largest=True), expected)
    two = np.zeros((5, 5))
    two[:2, :2], two[4, 4] = 1.0, 0.8  # a 2x2 blob and a lone pixel far from it
    assert threshold_cam(two, 0.5).sum() == 5
    np.testing.assert_array_equal(threshold_cam(two, 0.5, largest=True), two == 1.0)
    assert not threshold_cam(np.zeros((4, 4)), 0.5).any()
    assert not threshold_cam(-np.ones((4, 4)), 0.0).any()


def test_largest_component_and_stacked_thresholds() -> None:
    m = np.zeros((6, 6), bool)
    m[0, 0] = True
    m[2:5, 2:5] = True
    np.testing.assert_array_equal(largest_component(m), np.pad(np.ones((3, 3), bool), ((2, 1), (2, 1))))
    assert not largest_component(np.zeros((3, 3), bool)).any()
    stack = threshold_cams(np.stack([m.astype(float), 0.4 * m]), CamConfig(threshold=0.5, largest_component=True))
    assert stack.shape == (2, 6, 6) and stack[0].sum() == 9 and stack[1].sum() == 9
    with pytest.raises(ValueError, match="threshold"):
        CamConfig(threshold=1.5)


def test_perfect_masks_score_one_and_disjoint_masks_zero() -> None:
    rng = np.random.default_rng(0)
    truth = rng.random((5, 8, 8)) > 0.5
    perfect = score_masks(truth, truth)
    assert perfect["iou"]["mean"] == 1.0 and perfect["dice"]["mean"] == 1.0
    assert perfect["iou"]["ci"] == [1.0, 1.0] and perfect["iou"]["n"] == 5
    half = np.zeros((2, 4, 4), bool)
    half[:, :2] = True
    full = np.ones((2, 4, 4), bool)
    s = score_masks(half, full)
    assert s["iou"]["mean"] == pytest.approx(0.5) and s["dice"]["mean"] == pytest.approx(2 / 3)
    assert score_masks(~truth, truth)["dice"]["mean"] == 0.0


# ------------------------------------------------------------------------------------------------- the CLI


def _fake_run(root: Path, dataset: str, model: str = "resnet", task: str = "classification", out: int = 3) -> Path:
    """A run folder with an untrained checkpoint, as ``aemia train`` writes it (config.yaml + checkpoints/best)."""
    from aemia.runs import RunConfig, RunFolder

    run = root / f"{dataset}_{model}"
    RunFolder(run).save_config(RunConfig(dataset=dataset, model=model, features=[4, 8], size=32,
                                         task=task if dataset == "ph2" else "auto"))
    torch.manual_seed(0)
    net = create_model(model, 2, 3, out, features=[4, 8])
    save_checkpoint(net, run / "checkpoints" / "best", {"epoch": 0, "val_metric": None, "task": task})
    return run


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1, err
    assert err[0].startswith("aemia: error: ")
    return err[0]


@needs_ph2
def test_cli_writes_metrics_table_and_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _fake_run(tmp_path, "ph2")
    out = tmp_path / "cam"
    assert main(["weak", "cam", "--run", str(run), "--class", "melanoma", "--threshold", "0.3", "--out", str(out)]) == 0
    assert "IoU" in capsys.readouterr().out
    metrics = json.loads((out / "cam_metrics.json").read_text())
    assert metrics["n_images"] == 40 and metrics["threshold"] == 0.3 and list(metrics["cams"]) == ["melanoma"]
    iou = metrics["cams"]["melanoma"]["iou"]
    assert iou["n"] == 40 and iou["ci"][0] <= iou["mean"] <= iou["ci"][1]
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert len(rows) == 40 and {r["cam_class"] for r in rows} == {"melanoma"}
    assert np.mean([float(r["iou"]) for r in rows]) == pytest.approx(iou["mean"], abs=1e-5)
    assert (out / "cams.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


@needs_ph2
def test_cli_refuses_a_segmentation_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _fake_run(tmp_path, "ph2", model="unet", task="segmentation", out=2)
    assert main(["weak", "cam", "--run", str(run), "--out", str(tmp_path / "o")]) == 2
    assert "not a classification run" in _one_error_line(capsys)


@needs_busi
def test_cli_refuses_a_data_set_without_masks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _fake_run(tmp_path, "busi")
    assert main(["weak", "cam", "--run", str(run), "--out", str(tmp_path / "o")]) == 2
    assert "has no masks" in _one_error_line(capsys)
    assert not (tmp_path / "o").exists()


@needs_ph2
def test_cli_refuses_an_unknown_class_and_a_bad_threshold(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _fake_run(tmp_path, "ph2")
    assert main(["weak", "cam", "--run", str(run), "--class", "basalioma", "--out", str(tmp_path / "o")]) == 2
    assert "unknown class 'basalioma'" in _one_error_line(capsys)
    assert main(["weak", "cam", "--run", str(run), "--threshold", "1.5", "--out", str(tmp_path / "o")]) == 2
    assert "--threshold" in _one_error_line(capsys)


def test_cli_refuses_a_folder_that_is_not_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["weak", "cam", "--run", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    assert "config.yaml missing" in _one_error_line(capsys)


def test_a_trained_classifier_localises_a_planted_object() -> None:
    """End to end: a ResNet that learns 'is there a bright square?' from image-level labels only puts its CAM on
    the square (guards the map orientation, the upsampling and the class-weight pairing)."""
    rng = np.random.default_rng(0)
    n, size, side = 256, 32, 10
    x = (0.3 * rng.random((n, 1, size, size))).astype(np.float32)
    y = np.arange(n) % 2
    masks = np.zeros((n, size, size), bool)
    centres = []
    for i in np.flatnonzero(y):
        r, c = rng.integers(0, size - side, 2)
        x[i, 0, r:r + side, c:c + side] += 0.6
        masks[i, r:r + side, c:c + side] = True
        centres.append((r + (side - 1) / 2, c + (side - 1) / 2))
    torch.manual_seed(0)
    model = ResNetClassifier(2, 1, 2, features=(8, 16), blocks=(1, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(6):
        for idx in torch.randperm(n).split(32):
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    pos = np.flatnonzero(y)
    out = class_activation_maps(model, x[pos], classes=1)
    assert (out.probs[:, 1] > 0.5).mean() > 0.9  # it learned the task
    # the map's centre of mass sits on the square (its peak may be on the square's edge: edge detectors)
    grid = np.indices((size, size)).reshape(2, -1)
    centroid = np.stack([grid @ (c.reshape(-1) / c.sum()) for c in out.cams])
    assert np.mean(np.linalg.norm(centroid - np.array(centres), axis=1) < 2.0) > 0.9
    scores = score_masks(threshold_cams(out.cams, CamConfig(threshold=0.5)), masks[pos], n_resamples=10)
    assert scores["iou"]["mean"] > 0.3
