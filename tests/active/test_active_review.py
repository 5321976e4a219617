"""``aemia review prioritize`` (AbdomenAtlas-8K attention, METHODS.md §5.2): thresholds and morphology on hand-made
arrays, the ranking and maps on the bundled TotalSegmentator CT with three perturbed "models", and the error
contract (one line naming the file, exit code 2, nothing written)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from scipy.optimize import brentq
from scipy.special import entr

from aemia.active.attention import (
    FLAG_INCONSISTENCY,
    FLAG_OVERLAP,
    FLAG_UNCERTAINTY,
    ReviewConfig,
    compute_case_arrays,
    open_mask,
    rank_cases,
)
from aemia.active.prediction_set import parse_organs
from aemia.cli.main import main
from aemia.errors import InputError

DATA = Path(os.environ.get("AEMIA_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data"))
CT_DIR = DATA / "totalsegmentator_example_ct"
needs_ct = pytest.mark.needs_data("totalsegmentator_example_ct/example_ct_seg_totalv1.nii.gz")

SHAPE = (13, 13, 13)


def _block(size: int = 5, shape: tuple[int, ...] = SHAPE, start: int = 4) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[start:start + size, start:start + size, start:start + size] = True
    return mask


def _models(*maps: np.ndarray) -> np.ndarray:
    return np.stack([np.asarray(m, dtype=np.float32) for m in maps])


# ------------------------------------------------------------------------------------------ thresholds, morphology


@pytest.mark.parametrize("spread, flagged", [(0.09, False), (0.11, True)])
def test_inconsistency_is_std_across_models_above_0_1(spread: float, flagged: bool) -> None:
    block = _block()
    # Two models at 0.5 -+ spread: the population std across models is exactly `spread`.
    a = np.where(block, 0.5 - spread, 0.0)
    b = np.where(block, 0.5 + spread, 0.0)
    assert np.isclose(np.std(_models(a, b), axis=0)[block], spread, atol=1e-6).all()
    res = compute_case_arrays({"liver": _models(a, b)})
    assert res.organs["liver"].inconsistency == (125 if flagged else 0)
    assert bool((res.flags & FLAG_INCONSISTENCY).any()) is flagged


def test_inconsistency_uses_population_std_and_is_zero_with_one_model() -> None:
    block = _block()
    # Three models 0.5, 0.5, 0.7: the population std (ddof=0, as the paper's code) is 0.094 < 0.1, the sample
    # std (ddof=1) would be 0.115 > 0.1.
    maps = _models(np.where(block, 0.5, 0), np.where(block, 0.5, 0), np.where(block, 0.7, 0))
    assert np.std(maps, axis=0)[block].max() < 0.1 < np.std(maps, axis=0, ddof=1)[block].max()
    assert compute_case_arrays({"liver": maps}).organs["liver"].inconsistency == 0
    one = compute_case_arrays({"liver": maps[:1]})
    assert one.organs["liver"].inconsistency == 0


@pytest.mark.parametrize("entropy, flagged", [(0.049, False), (0.051, True)])
def test_uncertainty_is_mean_entr_above_0_05(entropy: float, flagged: bool) -> None:
    p = brentq(lambda x: float(entr(x)) - entropy, 1e-6, 1 / np.e)  # -p ln p = entropy, p ~ 0.01
    block = _block()
    maps = _models(*[np.where(block, p, 0.0)] * 3)
    res = compute_case_arrays({"spleen": maps})
    assert res.organs["spleen"].inconsistency == 0  # all models agree: std = 0
    assert res.organs["spleen"].uncertainty == (125 if flagged else 0)
    assert bool((res.flags & FLAG_UNCERTAINTY).any()) is flagged


def test_uncertainty_averages_entr_over_models_not_entr_of_the_mean() -> None:
    block = _block()
    # Models say 0 and 1: each entr is 0 (certain), the mean probability 0.5 would have entr 0.35.
    res = compute_case_arrays({"spleen": _models(np.zeros(SHAPE), np.where(block, 1.0, 0.0))})
    assert res.organs["spleen"].uncertainty == 0
    assert res.organs["spleen"].inconsistency == 125  # std 0.5


def test_opening_removes_isolated_voxels_and_thin_blobs_keeps_5_cube() -> None:
    mask = _block(5, (20, 20, 20), 2)
    noise = [(15, 15, 15), (0, 0, 0), (17, 3, 9), (10, 17, 2)]
    for v in noise:
        mask[v] = True
    mask |= _block(4, (20, 20, 20), 13)  # a 4x4x4 cube does not survive 2 erosions of the 3x3x3 element
    opened = open_mask(mask, iterations=2, connectivity=3)
    assert np.array_equal(opened, _block(5, (20, 20, 20), 2))

    # Same through the pipeline: isolated disagreeing voxels are not flagged, the 5-cube is.
    disagree = _block(5, (20, 20, 20), 2)
    for v in noise:
        disagree[v] = True
    res = compute_case_arrays({"liver": _models(np.zeros((20, 20, 20)), disagree)})
    assert res.organs["liver"].inconsistency == 125
    assert np.array_equal(res.flags > 0, _block(5, (20, 20, 20), 2))
    # Without opening the single voxels come back.
    raw = compute_case_arrays({"liver": _models(np.zeros((20, 20, 20)), disagree)},
                              ReviewConfig(opening_iterations=0))
    assert raw.organs["liver"].inconsistency == 125 + len(noise)


def test_overlap_between_touching_organs_is_flagged_and_not_opened() -> None:
    a = np.zeros(SHAPE)
    b = np.zeros(SHAPE)
    a[2:7, 2:10, 2:10] = 1.0
    b[6:11, 2:10, 2:10] = 1.0  # one shared slab at x = 6
    probs = {"liver": _models(a, a, a), "kidney_right": _models(b, b, b)}
    res = compute_case_arrays(probs)
    assert res.organs["liver"].overlap == res.organs["kidney_right"].overlap == 64
    assert res.organs["liver"].inconsistency == res.organs["liver"].uncertainty == 0
    assert np.array_equal(res.flags == FLAG_OVERLAP, np.pad(np.ones((1, 8, 8), bool), ((6, 6), (2, 3), (2, 3))))
    assert res.attention_voxels == 128  # summed over organs, as the paper does
    assert compute_case_arrays(probs, ReviewConfig(open_overlap=True)).attention_voxels == 0
    # Only organs of the overlap set count as the "other" organ (the paper's ORGAN_NAME_OVERLAP).
    only_liver = compute_case_arrays(probs, ReviewConfig(overlap_organs=("liver",)))
    assert only_liver.organs["kidney_right"].overlap == 64 and only_liver.organs["liver"].overlap == 0

    touching = np.zeros(SHAPE)
    touching[7:11, 2:10, 2:10] = 1.0  # adjacent, not overlapping
    res2 = compute_case_arrays({"liver": _models(a, a), "kidney_right": _models(touching, touching)})
    assert res2.attention_voxels == 0


def test_rank_cases_by_attention_volume_with_spacing() -> None:
    small = compute_case_arrays({"liver": _models(np.zeros(SHAPE), _block(5))}, voxel_volume_mm3=27.0)
    big = compute_case_arrays({"liver": _models(np.zeros(SHAPE), _block(7, start=3))}, voxel_volume_mm3=1.0)
    assert small.attention_mm3 == 125 * 27.0
    assert big.attention_mm3 == 343.0
    assert rank_cases({"big": big, "small": small}) == ["small", "big"]


def test_parse_organs_text_and_json(tmp_path: Path) -> None:
    organs = parse_organs("1:spleen, 5:liver")
    assert organs is not None and [(o.label, o.name) for o in organs] == [(1, "spleen"), (5, "liver")]
    f = tmp_path / "organs.json"
    f.write_text(json.dumps({"2": "kidney_right", "10": "pancreas"}))
    organs = parse_organs(str(f))
    assert organs is not None and [(o.label, o.name) for o in organs] == [(2, "kidney_right"), (10, "pancreas")]
    for bad in ("liver", "x:liver", "1:liver,1:spleen", "1:"):
        with pytest.raises(InputError):
            parse_organs(bad)


# ------------------------------------------------------------------------------------------ CLI on tiny folders


def _save(arr: np.ndarray, path: Path, affine: np.ndarray | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(arr, dtype=np.float32), np.eye(4) if affine is None else affine), str(path))


def _tiny_case(perturbed: bool) -> np.ndarray:
    """(models=2, X, Y, Z, K=2) probabilities of liver and spleen."""
    liver, spleen = _block(5, start=1), _block(4, start=8)
    m1 = np.stack([liver, spleen], axis=-1).astype(np.float32)
    m2 = m1.copy()
    if perturbed:
        m2[..., 0] = 0.0  # the second model misses the liver
    return np.stack([m1, m2])


def _tiny_folder(root: Path, layout: str = "4d") -> Path:
    for case, pert in (("calm", False), ("busy", True)):
        maps = _tiny_case(pert)
        for m, name in enumerate(("modelA", "modelB")):
            if layout == "4d":
                _save(maps[m], root / name / f"{case}.nii.gz")
            else:
                for k, organ in enumerate(("liver", "spleen")):
                    _save(maps[m][..., k], root / name / case / f"{organ}.nii.gz")
    return root


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1, err
    assert err[0].startswith("aemia: error: ")
    return err[0]


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_help_has_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["review", "prioritize", "--help"]) == 0
    out = capsys.readouterr().out
    assert any(ln.strip().startswith("Example: aemia review prioritize ") for ln in out.splitlines())


def test_both_layouts_give_the_same_priority(tmp_path: Path) -> None:
    rows = {}
    for layout, organs in (("4d", ["--organs", "0:liver,1:spleen"]), ("folders", [])):
        pred = _tiny_folder(tmp_path / layout, layout)
        out = tmp_path / f"out_{layout}"
        assert main(["review", "prioritize", "--predictions", str(pred), *organs, "--out", str(out), "--quiet"]) == 0
        rows[layout] = _read_csv(out / "priority.csv")
        assert [r["case"] for r in rows[layout]] == ["busy", "calm"]
        assert rows[layout][0]["organs"] == "liver=125.0"
        assert float(rows[layout][1]["attention_mm3"]) == 0.0
        assert (out / "priority.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert [r["attention_mm3"] for r in rows["4d"]] == [r["attention_mm3"] for r in rows["folders"]]
    # Channel 0 is an organ in the 4D run: the organ map stores key + 1 so it is not background.
    legend = json.loads((tmp_path / "out_4d" / "review.json").read_text())["organs"]
    assert legend[0] == {"name": "liver", "key": 0, "organ_map_value": 1}
    organ_map = np.asarray(nib.load(str(tmp_path / "out_4d" / "attention" / "busy_organs.nii.gz")).dataobj)
    assert set(np.unique(organ_map)) == {0, 1} and (organ_map == 1).sum() == 125


def _assert_failed_cleanly(out: Path) -> None:
    assert not (out / "priority.csv").exists()
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]


def test_error_mismatched_shapes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred = _tiny_folder(tmp_path / "pred")
    bad = pred / "modelB" / "busy.nii.gz"
    _save(np.zeros((13, 13, 12, 2)), bad)
    out = tmp_path / "out"
    assert main(["review", "prioritize", "--predictions", str(pred), "--organs", "0:liver,1:spleen",
                 "--out", str(out)]) == 2
    line = _one_error_line(capsys)
    assert str(bad) in line and "shape" in line
    _assert_failed_cleanly(out)


def test_error_missing_case_in_one_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred = _tiny_folder(tmp_path / "pred", "folders")
    import shutil

    shutil.rmtree(pred / "modelA" / "calm")
    out = tmp_path / "out"
    assert main(["review", "prioritize", "--predictions", str(pred), "--out", str(out)]) == 2
    line = _one_error_line(capsys)
    assert str(pred / "modelA" / "calm") in line and "missing" in line
    _assert_failed_cleanly(out)


@pytest.mark.parametrize("value", [1.5, -0.2, np.nan])
def test_error_probabilities_outside_0_1(tmp_path: Path, capsys: pytest.CaptureFixture[str], value: float) -> None:
    pred = _tiny_folder(tmp_path / "pred")
    maps = _tiny_case(False)[1]
    maps[6, 6, 6, 1] = value
    bad = pred / "modelB" / "calm.nii.gz"  # 'calm' is read after 'busy': outputs of 'busy' must not appear
    _save(maps, bad)
    out = tmp_path / "out"
    assert main(["review", "prioritize", "--predictions", str(pred), "--organs", "0:liver,1:spleen",
                 "--out", str(out)]) == 2
    line = _one_error_line(capsys)
    assert str(bad) in line and "[0, 1]" in line
    _assert_failed_cleanly(out)


def test_error_4d_without_organs_and_bad_channel(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred = _tiny_folder(tmp_path / "pred")
    assert main(["review", "prioritize", "--predictions", str(pred), "--out", str(tmp_path / "o")]) == 2
    assert "--organs" in _one_error_line(capsys)
    assert main(["review", "prioritize", "--predictions", str(pred), "--organs", "0:liver,5:spleen",
                 "--out", str(tmp_path / "o")]) == 2
    assert "channel 5" in _one_error_line(capsys)


# ------------------------------------------------------------------------------------------ the bundled CT

ORGANS = {1: "spleen", 2: "kidney_right", 3: "kidney_left", 5: "liver", 10: "pancreas"}
CROP = (slice(4, 112), slice(18, 92), slice(50, 112))  # around the five organs (x 10..105, y 22..86, z 57..111)


def _ct_models(seg: np.ndarray, perturbed: bool) -> tuple[list[dict[int, np.ndarray]], np.ndarray]:
    """Three "models" from the label map: blurred one-hot masks; perturbed = model 1 shifts the liver by 6 voxels
    (18 mm) and blurs more, model 2 misses the upper half of the spleen and blurs less, models 1 and 2
    over-segment the right kidney by 2 voxels. Returns the models and the voxels where a mask was changed."""
    sigmas = (1.0, 1.2, 0.8) if perturbed else (1.0, 1.0, 1.0)
    zone = np.zeros(seg.shape, dtype=bool)
    models = []
    for m in range(3):
        maps = {}
        for label in ORGANS:
            mask = seg == label
            new = mask
            if perturbed and m == 1 and label == 5:
                new = ndimage.shift(mask.astype(np.uint8), (6, 0, 0), order=0).astype(bool)
            if perturbed and m == 2 and label == 1:
                z_mid = int(np.median(np.nonzero(mask)[2]))
                new = mask.copy()
                new[:, :, z_mid:] = False
            if perturbed and m in (1, 2) and label == 2:
                new = ndimage.binary_dilation(mask, iterations=2)
            zone |= new ^ mask
            maps[label] = np.clip(ndimage.gaussian_filter(new.astype(np.float32), sigmas[m]), 0.0, 1.0)
        models.append(maps)
    return models, zone


@pytest.fixture(scope="module")
def ct_review(tmp_path_factory: pytest.TempPathFactory) -> dict:
    if not (CT_DIR / "example_ct_seg_totalv1.nii.gz").is_file():
        pytest.skip("TotalSegmentator example CT not found")
    from aemia.data.image import Image
    from aemia.data.io import read_image, write_nifti

    seg_img = read_image(CT_DIR / "example_ct_seg_totalv1.nii.gz")
    ct_img = read_image(CT_DIR / "example_ct.nii.gz")
    seg = np.asarray(seg_img.array[0])[CROP].astype(np.int16)
    affine = seg_img.affine.copy()
    affine[:3, 3] += affine[:3, :3] @ np.array([s.start for s in CROP], dtype=float)
    root = tmp_path_factory.mktemp("ct_review")
    pred, images = root / "pred", root / "images"
    zones = {}
    for case, perturbed in (("agree", False), ("perturbed", True)):
        models, zones[case] = _ct_models(seg, perturbed)
        for m, maps in enumerate(models):
            # Channel 0 background (1 - max organ), channels 1..5 the organs.
            organ_maps = [maps[label] for label in ORGANS]
            vol = np.stack([1.0 - np.max(organ_maps, axis=0), *organ_maps], axis=-1).astype(np.float32)
            path = pred / f"model{m}" / f"{case}.nii.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(vol, affine), str(path))
        ct = np.asarray(ct_img.array[0])[CROP].astype(np.int16)
        write_nifti(Image(ct[None], seg_img.spacing, affine), images / f"{case}.nii.gz")
    out = root / "out"
    organs = ",".join(f"{i + 1}:{name}" for i, name in enumerate(ORGANS.values()))
    rc = main(["review", "prioritize", "--predictions", str(pred), "--organs", organs, "--out", str(out),
               "--images", str(images), "--quiet"])
    return {"rc": rc, "out": out, "affine": affine, "shape": seg.shape, "zones": zones}


@needs_ct
def test_ct_perturbed_case_ranks_above_agreeing_case(ct_review: dict) -> None:
    assert ct_review["rc"] == 0
    rows = _read_csv(ct_review["out"] / "priority.csv")
    assert [r["case"] for r in rows] == ["perturbed", "agree"]
    assert [r["rank"] for r in rows] == ["1", "2"]
    perturbed, agree = (float(r["attention_mm3"]) for r in rows)
    assert perturbed > 5 * agree
    organs = [item.split("=")[0] for item in rows[0]["organs"].split(";")]
    assert organs[:2] == ["liver", "spleen"]  # the shifted liver and the half-missed spleen come first
    volumes = [float(item.split("=")[1]) for item in rows[0]["organs"].split(";")]
    assert volumes == sorted(volumes, reverse=True) and abs(sum(volumes) - perturbed) < 1.0
    assert float(rows[0]["inconsistency_mm3"]) > 0 and float(rows[1]["inconsistency_mm3"]) == 0  # agree: std = 0


@needs_ct
def test_ct_attention_concentrates_where_perturbed(ct_review: dict) -> None:
    flags = np.asarray(nib.load(str(ct_review["out"] / "attention" / "perturbed_flags.nii.gz")).dataobj)
    attention = flags > 0
    zone = ndimage.binary_dilation(ct_review["zones"]["perturbed"], iterations=3)
    inside = (attention & zone).sum() / attention.sum()
    assert inside > 0.85, inside
    assert zone.mean() < 0.25  # the perturbed region is a small part of the volume
    assert set(np.unique(flags)) <= set(range(8))


@needs_ct
def test_ct_maps_keep_the_input_geometry(ct_review: dict) -> None:
    for case in ("agree", "perturbed"):
        for kind in ("flags", "organs", "heat"):
            img = nib.load(str(ct_review["out"] / "attention" / f"{case}_{kind}.nii.gz"))
            assert img.shape == ct_review["shape"]
            assert np.allclose(img.affine, ct_review["affine"], atol=1e-4)
    organ_map = np.asarray(nib.load(str(ct_review["out"] / "attention" / "perturbed_organs.nii.gz")).dataobj)
    assert set(np.unique(organ_map)) <= {0, 1, 2, 3, 4, 5}
    png = ct_review["out"] / "priority.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((ct_review["out"] / "review.json").read_text())
    assert summary["config"]["std_threshold"] == 0.1 and summary["config"]["entropy_threshold"] == 0.05
    assert summary["models"] == ["model0", "model1", "model2"]
