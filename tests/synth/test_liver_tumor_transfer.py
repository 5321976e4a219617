"""Issue 17: the liver + tumour post-processing, per-lesion confidence, FROC, and the shipped liver-tumor model."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy import ndimage

from aemia.cli.main import main
from aemia.evaluate.froc import case_candidates, froc, sensitivity_at
from aemia.infer.lesions import (drop_shallow_tumors, drop_unconfident_tumors, lesion_csv, lesion_rows,
                                 liver_tumor_labels, postprocess_liver_tumor, threshold_tumor, tumor_depths_mm)
from aemia.infer.predictor import Predictor
from aemia.recipes.liver_tumor import ScannerJitter, body_box, choose_tumor_threshold


def _scene() -> np.ndarray:
    lab = np.zeros((40, 40, 30), np.uint8)
    lab[5:25, 5:25, 5:20] = 1  # the liver
    lab[8:14, 8:14, 8:14] = 2  # a large tumour inside it (216 voxels)
    lab[18:20, 18:20, 10:12] = 2  # a small tumour inside it (8 voxels)
    lab[32:36, 32:36, 5:9] = 2  # a tumour far from the liver
    lab[30:33, 2:5, 20:23] = 1  # a liver fragment elsewhere
    return lab


def test_postprocess_keeps_only_in_liver_tumours_above_the_threshold() -> None:
    out = postprocess_liver_tumor(_scene(), (2.0, 2.0, 2.0), min_tumor_mm3=10 * 8.0)
    assert out.dtype == np.uint8 and set(np.unique(out)) == {0, 1, 2}
    assert (out[32:36, 32:36, 5:9] == 0).all(), "a tumour outside the liver is removed"
    assert (out[30:33, 2:5, 20:23] == 0).all(), "only the largest liver component is kept"
    assert (out[8:14, 8:14, 8:14] == 2).all(), "a tumour inside the liver above the threshold stays"
    assert (out[18:20, 18:20, 10:12] == 1).all(), "a tumour below the threshold becomes liver"
    assert (out == 2).sum() == 216
    # threshold 0 keeps both in-liver tumours; an empty prediction stays empty
    assert (postprocess_liver_tumor(_scene(), (2.0, 2.0, 2.0), 0.0) == 2).sum() == 216 + 8
    assert not postprocess_liver_tumor(np.zeros((5, 5, 5), np.uint8), (1, 1, 1), 0.0).any()


def _probs(tumour_p: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (3, *S), truth): the liver is the argmax; the true tumour gets tumour probability
    ``tumour_p`` (liver keeps the argmax), a dark spot outside the liver gets 0.35, the rest of the liver 0.02."""
    truth = np.zeros((40, 40, 30), np.uint8)
    truth[5:25, 5:25, 5:20] = 1
    truth[8:14, 8:14, 8:14] = 2
    p = np.zeros((3, *truth.shape), np.float32)
    p[0] = 0.98
    p[2] = 0.02
    liver = truth > 0
    p[1][liver], p[0][liver] = 0.96, 0.02
    p[2][8:14, 8:14, 8:14], p[1][8:14, 8:14, 8:14] = tumour_p, 1 - tumour_p - 0.02
    p[2][32:36, 32:36, 5:9], p[0][32:36, 32:36, 5:9] = 0.35, 0.63
    return p, truth


def test_tumour_threshold_finds_what_the_argmax_misses_and_only_inside_the_liver() -> None:
    p, truth = _probs(0.3)
    assert not (liver_tumor_labels(p, (2.0, 2.0, 2.0)) == 2).any()  # the argmax never calls tumour
    out = liver_tumor_labels(p, (2.0, 2.0, 2.0), tumor_threshold=0.25)
    assert np.array_equal(out == 2, truth == 2), "the in-liver tumour, voxel for voxel"
    assert (out[32:36, 32:36, 5:9] == 0).all(), "the spot outside the liver is not a tumour"
    assert not (liver_tumor_labels(p, (2.0, 2.0, 2.0), tumor_threshold=0.31) == 2).any()


def test_threshold_on_the_argmax_and_tumour_probability_alone_matches_the_full_rule() -> None:
    """The benchmark keeps only the argmax and the tumour probability: the rule from those two must equal the
    rule from all class probabilities, and must not change its input."""
    p, _ = _probs(0.3)
    argmax = p.argmax(0).astype(np.uint8)
    before = argmax.copy()
    for th in (None, 0.25, 0.31):
        two_arrays = postprocess_liver_tumor(threshold_tumor(argmax, p[2], th), (2.0, 2.0, 2.0))
        assert np.array_equal(two_arrays, liver_tumor_labels(p, (2.0, 2.0, 2.0), th))
    assert np.array_equal(argmax, before)


class _FixedPredictor:
    def __init__(self, probs: np.ndarray) -> None:
        self.probs = probs

    def probabilities(self, image) -> np.ndarray:  # noqa: ANN001
        assert image.array.shape == (1, *self.probs.shape[1:])
        return self.probs


def test_threshold_is_chosen_by_synthetic_validation_dice_with_ties_to_the_higher_one() -> None:
    p, truth = _probs(0.3)
    th, table = choose_tumor_threshold(_FixedPredictor(p), [(np.zeros(truth.shape), truth)], (2.0, 2.0, 2.0))
    assert th == 0.3 and table["0.3"] == table["0.25"] == 1.0 and table["argmax"] == 0.0
    p, truth = _probs(0.6)  # a confident model keeps the argmax
    th, table = choose_tumor_threshold(_FixedPredictor(p), [(np.zeros(truth.shape), truth)], (2.0, 2.0, 2.0))
    assert th is None and table["argmax"] == 1.0


def test_predictor_applies_the_recorded_rule() -> None:
    p, truth = _probs(0.3)
    pred = Predictor(model=None, spatial_dims=3,  # type: ignore[arg-type]
                     postprocess={"kind": "liver_tumor", "tumor_threshold": 0.3, "min_tumor_mm3": 0.0})
    assert np.array_equal(pred.label_map(p, (2.0, 2.0, 2.0)), truth)
    pred.postprocess = None
    assert not (pred.label_map(p, (2.0, 2.0, 2.0)) == 2).any()


def test_unconfident_tumours_become_liver_and_confident_ones_stay() -> None:
    """The FROC operating point: a component is kept when its maximum tumour probability reaches the cut."""
    p, truth = _probs(0.3)
    p[2][18:22, 18:22, 14:18], p[1][18:22, 18:22, 14:18] = 0.26, 0.72  # a second in-liver tumour, max 0.26
    both = liver_tumor_labels(p, (2.0, 2.0, 2.0), tumor_threshold=0.25)
    assert (both[18:22, 18:22, 14:18] == 2).all()
    assert np.array_equal(both[8:14, 8:14, 8:14] == 2, truth[8:14, 8:14, 8:14] == 2)
    cut = liver_tumor_labels(p, (2.0, 2.0, 2.0), tumor_threshold=0.25, min_confidence=0.28)
    assert (cut[18:22, 18:22, 14:18] == 1).all(), "the 0.26 tumour is below the cut: liver"
    assert np.array_equal(cut == 2, truth == 2), "the 0.3 tumour stays, voxel for voxel"
    assert np.array_equal(drop_unconfident_tumors(both, p[2], 0.0), both)  # 0 keeps everything
    assert not (drop_unconfident_tumors(both, p[2], 0.31) == 2).any()
    pred = Predictor(model=None, spatial_dims=3,  # type: ignore[arg-type]
                     postprocess={"kind": "liver_tumor", "tumor_threshold": 0.25, "min_confidence": 0.28})
    assert np.array_equal(pred.label_map(p, (2.0, 2.0, 2.0)), cut)


def test_tumour_depth_is_the_mean_distance_to_outside_the_liver_in_mm() -> None:
    """Known values: a one-voxel component at the liver's face lies one voxel deep (its nearest outside voxel is
    the neighbour across the face), in the spacing's mm along that axis; tumour voxels count as liver."""
    lab = np.zeros((21, 21, 21), np.uint8)
    lab[1:20, 1:20, 1:20] = 1
    lab[1, 10, 10] = 2  # on the x face
    lab[8:13, 8:13, 8:13] = 2  # a 5^3 tumour at the centre: 7-11 voxels from the faces
    comp, n = ndimage.label(lab == 2)
    depth = tumor_depths_mm(comp, n, lab > 0, (3.0, 1.0, 1.0))
    rim, centre = (depth[0], depth[1]) if comp[1, 10, 10] == 1 else (depth[1], depth[0])
    assert rim == pytest.approx(3.0)  # one voxel along x at 3 mm
    assert centre > 7.0  # at least 7 voxels of 1 mm to the y and z faces
    assert tumor_depths_mm(comp, 0, lab > 0, (1, 1, 1)).shape == (0,)


def test_rim_rule_turns_shallow_tumours_into_liver_and_keeps_deep_ones() -> None:
    lab = np.zeros((30, 30, 30), np.uint8)
    lab[2:28, 2:28, 2:28] = 1
    lab[12:18, 12:18, 12:18] = 2  # deep: about 10-13 voxels from the surface
    lab[2:4, 5:8, 5:8] = 2  # at the rim: 1-2 voxels deep
    out = drop_shallow_tumors(lab, (1.0, 1.0, 1.0), 4.0)
    assert (out[12:18, 12:18, 12:18] == 2).all(), "the deep tumour stays"
    assert (out[2:4, 5:8, 5:8] == 1).all(), "the rim component becomes liver"
    assert np.array_equal(out > 0, lab > 0), "the liver (organ + tumour) is unchanged"
    assert np.array_equal(drop_shallow_tumors(lab, (1.0, 1.0, 1.0), 0.0), lab)  # 0 keeps everything
    # the same scene at 3 mm voxels: the rim component is now 3-6 mm deep, still below 8 mm; the deep one stays
    out3 = drop_shallow_tumors(lab, (3.0, 3.0, 3.0), 8.0)
    assert (out3[2:4, 5:8, 5:8] == 1).all() and (out3[12:18, 12:18, 12:18] == 2).all()


def test_predictor_applies_the_rim_rule_from_its_config() -> None:
    p, truth = _probs(0.3)
    p[2][5:7, 15:18, 10:13], p[1][5:7, 15:18, 10:13] = 0.5, 0.48  # a confident component at the liver's rim
    rule = {"kind": "liver_tumor", "tumor_threshold": 0.25}
    both = Predictor(model=None, spatial_dims=3, postprocess=rule).label_map(p, (2.0, 2.0, 2.0))  # type: ignore[arg-type]
    assert (both[5:7, 15:18, 10:13] == 2).all()
    cut = Predictor(model=None, spatial_dims=3,  # type: ignore[arg-type]
                    postprocess={**rule, "min_depth_mm": 5.0}).label_map(p, (2.0, 2.0, 2.0))
    assert np.array_equal(cut == 2, truth == 2), "the rim component is cut, the true tumour (6+ mm deep) stays"
    assert np.array_equal(cut, liver_tumor_labels(p, (2.0, 2.0, 2.0), 0.25, min_depth_mm=5.0))


def test_lesion_rows_carry_max_and_mean_probability() -> None:
    lab = _scene()
    prob = np.zeros(lab.shape, np.float32)
    prob[8:14, 8:14, 8:14] = 0.6
    prob[10, 10, 10] = 0.9
    rows = lesion_rows(lab, 2, (1.0, 1.0, 1.0), probability=prob)
    big = rows[0]
    assert big["voxels"] == 216 and big["confidence"] == pytest.approx(0.9)
    assert big["confidence_mean"] == pytest.approx((215 * 0.6 + 0.9) / 216, abs=1e-4)
    assert all(0.0 <= r["confidence"] <= 1.0 for r in rows)
    assert "depth_mm" not in big  # no organ given, no depth


def test_lesion_rows_report_depth_inside_the_organ() -> None:
    lab = _scene()
    rows = lesion_rows(lab, 2, (2.0, 2.0, 2.0), region=lab > 0)
    by_voxels = {r["voxels"]: r for r in rows}
    big = by_voxels[216]  # [8:14]^3 in the liver [5:25, 5:25, 5:20]: 3-6 voxels to the nearest face
    assert 6.0 < big["depth_mm"] < 12.0
    # the tumour outside the liver is its own region, a 4^3 cube: per voxel 1 or 2 voxels to the outside along each
    # axis, the nearest face wins: 2 voxels only when all three axes say 2 (1 in 8), so 1.125 voxels = 2.25 mm
    assert by_voxels[64]["depth_mm"] == pytest.approx(2.2, abs=0.06)  # rounded to 0.1 mm
    assert "depth_mm" in lesion_csv(rows).splitlines()[0]


def test_froc_on_a_known_toy_case() -> None:
    truth = np.zeros((20, 20, 20), bool)
    truth[2:5, 2:5, 2:5] = True  # lesion A
    truth[12:15, 12:15, 12:15] = True  # lesion B
    comp = np.zeros(truth.shape, np.int32)
    comp[3:6, 3:6, 3:6] = 1  # hits A, confidence 0.9
    comp[16:18, 2:4, 2:4] = 2  # false positive, confidence 0.7
    comp[13:14, 13:14, 13:14] = 3  # hits B, confidence 0.5
    case = case_candidates(comp, [0.9, 0.7, 0.5], truth)
    assert case.false_positive.tolist() == [False, True, False]
    assert case.lesion_best.tolist() == [0.9, 0.5]
    empty = case_candidates(np.zeros_like(comp), [], np.zeros_like(truth))  # a second case with nothing at all
    points = froc([case, empty])
    assert points == [(0.9, 0.0, 0.5), (0.7, 0.5, 0.5), (0.5, 0.5, 1.0)]
    assert sensitivity_at(points, 0.0) == 0.5 and sensitivity_at(points, 1.0) == 1.0


def test_scanner_jitter_and_body_box() -> None:
    rng = np.random.default_rng(0)
    hu = np.full((10, 10, 10), 100.0, np.float32)
    outs = [ScannerJitter(noise_hu=0.0).apply(hu, rng) for _ in range(50)]
    means = np.array([o.mean() for o in outs])
    assert means.min() >= 100 * 0.85 - 40 - 1e-3 and means.max() <= 100 * 1.15 + 40 + 1e-3 and means.std() > 5
    vol = np.full((30, 30, 30), -1000.0, np.float32)
    vol[5:20, 8:25, 3:9] = 40.0
    assert body_box(vol) == (slice(5, 20), slice(8, 25), slice(3, 9))


def test_pretrained_refuses_a_missing_model_in_one_line(tmp_path, capsys) -> None:
    ct = tmp_path / "ct.nii.gz"
    ct.write_bytes(b"")
    code = main(["predict", "--pretrained", "no-such-model", "--input", str(ct), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "no shipped model 'no-such-model'" in err
    code = main(["predict", "--input", str(ct), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "exactly one of --run" in err and len(err.splitlines()) == 1


def _shipped_or_skip():
    from aemia.runs.shipped import shipped_models

    if "liver-tumor" not in shipped_models():
        pytest.skip("the liver-tumor model is not shipped in this checkout")


def test_pretrained_loads_the_shipped_card_and_weights() -> None:
    _shipped_or_skip()
    from aemia.infer.predictor import Predictor
    from aemia.runs.shipped import shipped_model_dir

    folder = shipped_model_dir("liver-tumor")
    assert (folder / "model.safetensors").stat().st_size <= 25 * 2**20
    cfg = json.loads((folder / "config.json").read_text())
    card = (folder / "MODEL_CARD.md").read_text()
    assert "ircad_17" in card and "CC BY" in card
    p = Predictor.from_shipped("liver-tumor", device="cpu")
    assert p.spatial_dims == 3 and p.classes == {0: "background", 1: "liver", 2: "liver tumor"}
    assert p.postprocess["kind"] == "liver_tumor" and p.postprocess["min_tumor_mm3"] >= 0
    assert p.spacing == cfg["spacing"]


@pytest.mark.needs_data("liver_ct_real")
def test_shipped_model_runs_on_a_small_crop_of_a_real_ct(tmp_path, real_data) -> None:
    _shipped_or_skip()
    import nibabel as nib

    src = nib.load(str(real_data / "liver_ct_real" / "ircad_17" / "ct.nii.gz"))
    crop = np.asarray(src.dataobj[128:320:2, 160:352:2, 40:80]).astype(np.int16)  # 96 x 96 x 40 voxels
    affine = src.affine.copy()
    affine[:3, :3] = src.affine[:3, :3] @ np.diag([2.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(crop, affine), str(tmp_path / "crop.nii.gz"))
    code = main(["predict", "--pretrained", "liver-tumor", "--input", str(tmp_path / "crop.nii.gz"),
                 "--out", str(tmp_path / "out")])
    assert code == 0
    mask = nib.load(str(tmp_path / "out" / "crop.nii.gz"))
    assert mask.shape == crop.shape and np.allclose(mask.affine, affine)
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2}
    with open(tmp_path / "out" / "crop_lesions.csv") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert "depth_mm" in (reader.fieldnames or [])  # each tumour's mean depth inside the predicted liver
    assert all(0.0 <= float(r["confidence"]) <= 1.0 and float(r["depth_mm"]) > 0.0 for r in rows)
