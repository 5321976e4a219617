"""Lesion-wise detection: sizes, bins, misses and false positives."""

from __future__ import annotations

import math

import numpy as np
import pytest
from evaluate_helpers import ball

from aemia.evaluate.metrics import equivalent_diameter_mm, lesion_detection, size_bin_labels


def test_equivalent_diameter() -> None:
    assert equivalent_diameter_mm(4 / 3 * math.pi * 5**3, 3) == pytest.approx(10.0)
    assert equivalent_diameter_mm(math.pi * 3**2, 2) == pytest.approx(6.0)
    assert size_bin_labels((0, 5, 10, 20, math.inf)) == ["0-5 mm", "5-10 mm", "10-20 mm", ">=20 mm"]


def test_three_lesions_one_missed_by_size_bin() -> None:
    shape, spacing = (60, 60, 20), (0.5, 0.5, 2.0)
    small = ball(shape, spacing, 1.6, centre_mm=(5, 5, 20))  # diameter ~3 mm
    medium = ball(shape, spacing, 3.5, centre_mm=(20, 8, 20))  # ~7 mm
    large = ball(shape, spacing, 7.0, centre_mm=(14, 20, 20))  # ~14 mm
    gt = small | medium | large
    pred = np.zeros(shape, bool)
    pred[10, 10, 10] = True  # a single voxel inside the small lesion is enough
    pred |= ball(shape, spacing, 6.0, centre_mm=(14, 20, 20))
    pred |= ball(shape, spacing, 2.0, centre_mm=(25, 25, 5))  # false positive, far from any lesion
    assert pred[10, 10, 10] and small[10, 10, 10]

    res = lesion_detection(pred, gt, spacing)
    assert res["n_lesions"] == 3 and res["n_detected"] == 2
    assert res["sensitivity"] == pytest.approx(2 / 3)
    assert res["false_positives"] == 1
    diam = sorted(l["diameter_mm"] for l in res["lesions"])
    assert diam == pytest.approx([3.2, 7.0, 14.0], rel=0.15)
    by_bin = {b["label"]: b for b in res["bins"]}
    assert [by_bin[k]["n_lesions"] for k in by_bin] == [1, 1, 1, 0]
    assert by_bin["0-5 mm"]["sensitivity"] == 1.0
    assert by_bin["5-10 mm"]["sensitivity"] == 0.0  # the medium lesion is the missed one
    assert by_bin["10-20 mm"]["sensitivity"] == 1.0
    assert math.isnan(by_bin[">=20 mm"]["sensitivity"])


def test_full_connectivity_and_empty_cases() -> None:
    gt = np.zeros((10, 10), bool)
    gt[2, 2] = gt[3, 3] = True  # diagonal neighbours: one lesion with full connectivity
    res = lesion_detection(np.zeros_like(gt), gt, (1.0, 1.0), size_bins_mm=(0, math.inf))
    assert res["n_lesions"] == 1 and res["n_detected"] == 0 and res["false_positives"] == 0
    none = lesion_detection(gt, np.zeros_like(gt), (1.0, 1.0))
    assert none["n_lesions"] == 0 and math.isnan(none["sensitivity"]) and none["false_positives"] == 1
