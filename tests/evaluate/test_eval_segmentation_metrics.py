"""Overlap and surface metrics: known values, empty-mask conventions, agreement with MONAI."""

from __future__ import annotations

import math

import numpy as np
import pytest
from evaluate_helpers import ball, random_blobs

from aemia.evaluate.metrics import (
    binary_case_metrics,
    dice,
    hd95,
    image_diagonal_mm,
    iou,
    nsd,
    segmentation_case_metrics,
    surface_distances,
)


def _squares() -> tuple[np.ndarray, np.ndarray]:
    a = np.zeros((30, 30), bool)
    b = np.zeros((30, 30), bool)
    a[0:10, 0:10] = True
    b[5:15, 0:10] = True  # overlap 5x10 = 50 pixels
    return a, b


def test_dice_and_iou_of_two_known_squares() -> None:
    a, b = _squares()
    assert dice(a, b) == pytest.approx(0.5)  # 2*50 / (100+100)
    assert iou(a, b) == pytest.approx(1 / 3)  # 50 / 150
    assert dice(a, a) == 1.0 and iou(a, a) == 1.0
    assert dice(a.astype(np.uint8) * 255, b) == pytest.approx(0.5)  # nonzero = foreground


def test_empty_mask_conventions() -> None:
    empty, (a, _) = np.zeros((30, 30), bool), _squares()
    assert (dice(empty, empty), iou(empty, empty), hd95(empty, empty), nsd(empty, empty)) == (1.0, 1.0, 0.0, 1.0)
    assert (dice(a, empty), iou(empty, a), nsd(a, empty), nsd(empty, a)) == (0.0, 0.0, 0.0, 0.0)
    assert math.isinf(hd95(a, empty)) and math.isinf(hd95(empty, a))
    # the per-case metrics replace inf with the image diagonal and flag it
    m = binary_case_metrics(empty, a, spacing=(2.0, 0.5))
    assert m["hd95"] == pytest.approx(image_diagonal_mm((30, 30), (2.0, 0.5))) == pytest.approx(math.hypot(58, 14.5))
    assert m["hd95_worst_case"] == 1.0 and m["nsd"] == 0.0
    assert binary_case_metrics(empty, empty, (1.0, 1.0)) == {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "nsd": 1.0,
                                                             "hd95_worst_case": 0.0}


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="shape"):
        dice(np.zeros((4, 4)), np.zeros((4, 5)))


@pytest.mark.parametrize(
    "shape, spacing, r_gt, r_pred",
    [((80, 40), (0.5, 1.25), 15.0, 9.0), ((48, 40, 24), (0.8, 1.0, 2.0), 14.0, 10.0)],
)
def test_hd95_of_concentric_balls_is_radius_difference(shape, spacing, r_gt, r_pred) -> None:
    gt, pred = ball(shape, spacing, r_gt), ball(shape, spacing, r_pred)
    assert hd95(pred, gt, spacing) == pytest.approx(r_gt - r_pred, abs=max(spacing))
    assert hd95(gt, pred, spacing) == pytest.approx(hd95(pred, gt, spacing))  # symmetric
    assert hd95(gt, gt, spacing) == 0.0


def test_nsd_at_tolerances() -> None:
    spacing = (0.5, 1.25)
    gt, pred = ball((80, 40), spacing, 15.0), ball((80, 40), spacing, 9.0)  # surfaces 6 mm apart
    assert nsd(pred, gt, spacing, tolerance_mm=1.0) < 0.05
    assert nsd(pred, gt, spacing, tolerance_mm=10.0) == 1.0
    values = [nsd(pred, gt, spacing, t) for t in (0.0, 2.0, 4.0, 5.5, 6.0, 8.0)]
    assert values == sorted(values)  # grows with the tolerance
    assert nsd(gt, gt, spacing, tolerance_mm=0.0) == 1.0
    # by hand: pred/gt surface counts and how many lie within tolerance
    d_pg, d_gp = surface_distances(pred, gt, spacing)
    t = 5.5
    assert nsd(pred, gt, spacing, t) == pytest.approx(((d_pg <= t).sum() + (d_gp <= t).sum()) / (d_pg.size + d_gp.size))


def test_shifted_square_surface_distances() -> None:
    a = np.zeros((40, 40), bool)
    a[10:30, 10:30] = True
    b = np.roll(a, 3, axis=0)
    # every surface voxel is within 3 voxels of the other surface, most exactly 3 along axis 0
    assert hd95(a, b, (2.0, 1.0)) == pytest.approx(6.0)
    assert nsd(a, b, (2.0, 1.0), tolerance_mm=6.0) == 1.0


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("shape, spacing", [((64, 72), (0.7, 1.3)), ((36, 40, 20), (0.9, 1.1, 2.5))])
def test_agrees_with_monai(shape, spacing) -> None:
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    for seed in range(3):
        pred, gt = random_blobs(shape, seed), random_blobs(shape, seed + 100)

        def t(x):
            return torch.from_numpy(x[None, None].astype(np.float32))

        ref_hd = monai_metrics.compute_hausdorff_distance(
            t(pred), t(gt), include_background=True, percentile=95, spacing=list(spacing)
        ).item()
        ref_nsd = monai_metrics.compute_surface_dice(
            t(pred), t(gt), [1.5], include_background=True, spacing=list(spacing)
        ).item()
        assert hd95(pred, gt, spacing) == pytest.approx(ref_hd, rel=1e-5)
        assert nsd(pred, gt, spacing, 1.5) == pytest.approx(ref_nsd, rel=1e-5)


def test_segmentation_case_metrics_per_class() -> None:
    gt = np.zeros((40, 40), np.uint8)
    gt[5:15, 5:15] = 1
    gt[25:35, 25:35] = 2
    pred = gt.copy()
    pred[pred == 2] = 0  # class 2 missed entirely
    res = segmentation_case_metrics(pred, gt, (1.0, 1.0), {1: "liver", 2: "tumour", 3: "absent"})
    assert set(res) == {"liver", "tumour", "absent"}
    assert res["liver"] == {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "nsd": 1.0, "hd95_worst_case": 0.0}
    assert res["tumour"]["dice"] == 0.0 and res["tumour"]["hd95_worst_case"] == 1.0
    assert res["tumour"]["hd95"] == pytest.approx(math.hypot(39, 39))
    assert res["absent"]["dice"] == 1.0  # absent from both: agreement


def test_mean_class_dice_averages_the_foreground_classes() -> None:
    from aemia.evaluate.metrics import mean_class_dice

    gt = np.array([[0, 1, 1, 2]])
    pred = np.array([[0, 1, 0, 0]])
    # class 1: 2·1/(1+2) = 2/3; class 2: missed → 0; class 3 empty in both → 1
    assert mean_class_dice(pred, gt, 3) == pytest.approx((2 / 3 + 0.0) / 2)
    assert mean_class_dice(pred, gt, 4) == pytest.approx((2 / 3 + 0.0 + 1.0) / 3)
    assert mean_class_dice(np.zeros((2, 2)), np.zeros((2, 2)), 2) == 1.0
