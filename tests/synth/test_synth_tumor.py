"""Synthetic liver tumors (METHODS.md §3): invariants of the published pipeline at 1 mm (phantom) and 3 mm (the
bundled TotalSegmentator CT, cropped around the liver), per-worker/per-epoch randomness of the training
transform, and the ``aemia synth tumors`` command with its error contract."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from aemia.cli.main import main
from aemia.data.image import Image
from aemia.data.io import read_image, write_nifti
from aemia.synth.transform import RandTumorSynthesisd
from aemia.synth.tumor import (
    SIZE_BINS,
    SIZE_TYPES,
    TUMOR_TYPES,
    TumorConfig,
    ellipsoid_tumor_shape,
    equivalent_diameter_mm,
    generate_texture,
    sample_tumor_type,
    synthesize_tumors,
    synthesize_validation_tumors,
)

DATA = Path(os.environ.get("AEMIA_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data"))
TS = DATA / "totalsegmentator_example_ct"
CT_PATH, SEG_PATH = TS / "example_ct.nii.gz", TS / "example_ct_seg_totalv1.nii.gz"
needs_ct = pytest.mark.needs_data("totalsegmentator_example_ct/example_ct.nii.gz",
                                  "totalsegmentator_example_ct/example_ct_seg_totalv1.nii.gz")
LIVER = 5
CFG = TumorConfig()


# ----------------------------------------------------------------------------------------------- fixtures


def _phantom(shape=(96, 96, 64), radii=(40.0, 38.0, 28.0), spacing=(1.0, 1.0, 1.0), seed=0):
    """METHODS §3.4: ellipsoidal 'liver' (100 ± 10 HU) in a -100 HU background; radii in mm."""
    rng = np.random.default_rng(seed)
    g = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)]
    organ = sum((gi.reshape([-1 if k == i else 1 for k in range(3)]) / r) ** 2
                for i, (gi, r) in enumerate(zip(g, radii))) <= 1.0
    image = np.where(organ, 100.0 + 10.0 * rng.standard_normal(shape), -100.0).astype(np.float32)
    return image, organ


@pytest.fixture(scope="module")
def phantom_1mm():
    return _phantom()


@pytest.fixture(scope="module")
def ct_3mm() -> tuple[Image, np.ndarray]:
    """The bundled 3 mm CT and its TotalSegmentator v1 labels, cropped to the liver + 4 voxels (affine kept right)."""
    if not (CT_PATH.is_file() and SEG_PATH.is_file()):
        pytest.skip("bundled CT not found")
    ct, seg = read_image(CT_PATH), read_image(SEG_PATH)
    labels = np.rint(seg.array[0]).astype(np.int16)
    idx = np.argwhere(labels == LIVER)
    lo = np.maximum(idx.min(0) - 4, 0)
    hi = np.minimum(idx.max(0) + 5, labels.shape)
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    aff = ct.affine.copy()
    aff[:3, 3] = (ct.affine @ np.array([*lo, 1.0]))[:3]
    crop = Image(np.ascontiguousarray(ct.array[(slice(None), *sl)]), ct.spacing, aff, str(CT_PATH))
    return crop, np.ascontiguousarray(labels[sl])


def _check_invariants(image, organ, res) -> None:
    lab = res.label
    assert set(np.unique(lab).tolist()) <= {0, 1, 2}
    assert np.array_equal(lab > 0, organ)  # organ = 1 or 2 exactly where the organ is
    tumor = lab == 2
    assert not (tumor & ~organ).any()  # tumor ⊂ organ
    assert np.array_equal(image[~organ], res.image[~organ])  # nothing changes outside the organ
    drop = image.astype(np.float64) - res.image
    assert drop.min() >= -1e-3 and drop.max() <= 145.0 + 1e-3
    assert 65.0 <= res.hu_drop <= 145.0
    assert np.array_equal(res.instances > 0, tumor)
    for t in res.tumors:
        inst = res.instances == t.id
        assert organ[t.centre_voxel]  # the ellipsoid centre is an organ voxel
        if inst.any():
            assert 0.0 < float(drop[inst].mean()) <= 145.0
        assert 0.0 < t.mean_hu_drop <= 145.0
        assert t.diameter_mm <= t.shape_diameter_mm + 1e-6


def _check_counts_and_sizes(res, ttype: str, spacing) -> None:
    table = CFG.mix_counts if ttype == "mix" else {ttype: CFG.counts[ttype]}
    got = {t: sum(1 for x in res.tumors if x.type == t) for t in SIZE_TYPES}
    for t in SIZE_TYPES:
        lo, hi = table.get(t, (0, 0))
        assert lo <= got[t] <= hi, (ttype, t, got)
    vox = max(spacing)
    for x in res.tumors:
        r = CFG.radius_mm[x.type]
        # Undeformed: equivalent diameter in [1.5 r, 2.5 r] (radii in [0.75 r, 1.25 r]); the elastic deformation
        # and voxelisation move it by up to ~15 % and one voxel.
        assert 1.5 * r * 0.8 - vox <= x.shape_diameter_mm <= 2.5 * r * 1.2 + vox, (x.type, x.shape_diameter_mm)


# ----------------------------------------------------------------------------------------------- pipeline


def test_type_probabilities_are_one_fifth_each() -> None:
    rng = np.random.default_rng(0)
    draws = [sample_tumor_type(rng) for _ in range(3000)]
    for t in TUMOR_TYPES:
        assert abs(draws.count(t) / 3000 - 0.2) < 0.035


def test_undeformed_ellipsoid_radii_are_in_mm_at_any_spacing() -> None:
    rng = np.random.default_rng(0)
    for spacing in [(1.0, 1.0, 1.0), (0.7, 0.7, 2.5)]:
        for _ in range(10):
            shape = ellipsoid_tumor_shape(rng, 16.0, 0.0, spacing)
            d = equivalent_diameter_mm(int(shape.sum()), spacing)
            assert 1.5 * 16 * 0.97 <= d <= 2.5 * 16 * 1.03
            ext = [np.ptp(np.nonzero(shape)[i]) * spacing[i] for i in range(3)]
            assert max(ext) / min(ext) < 2.0  # physically round-ish even on an anisotropic grid
            assert shape[tuple(n // 2 for n in shape.shape)]


def test_texture_is_float32_in_unit_range_and_sized_lazily() -> None:
    rng = np.random.default_rng(0)
    tex = generate_texture(rng, (40, 30, 20), (1.0, 1.0, 1.0))
    assert tex.dtype == np.float32 and tex.shape == (40, 30, 20)
    assert 0.0 <= tex.min() and tex.max() <= 1.0 and 0.2 < tex.mean() < 0.9
    aniso = generate_texture(rng, (30, 30, 10), (1.0, 1.0, 3.0))
    assert aniso.shape == (30, 30, 10) and aniso.dtype == np.float32


@pytest.mark.parametrize("ttype", TUMOR_TYPES)
def test_phantom_1mm_invariants_counts_and_diameters(phantom_1mm, ttype: str) -> None:
    image, organ = phantom_1mm
    res = synthesize_tumors(image, organ, np.random.default_rng(SIZE_TYPES.index(ttype) if ttype != "mix" else 9),
                            tumor_type=ttype, spacing=(1.0, 1.0, 1.0))
    assert res.tumor_type == ttype and res.tumors
    _check_invariants(image, organ, res)
    _check_counts_and_sizes(res, ttype, (1.0, 1.0, 1.0))


@needs_ct
@pytest.mark.parametrize("ttype", TUMOR_TYPES)
def test_real_ct_3mm_invariants_counts_and_diameters(ct_3mm, ttype: str) -> None:
    ct, labels = ct_3mm
    image, organ = ct.array[0].astype(np.float32), labels == LIVER
    res = synthesize_tumors(image, organ, np.random.default_rng(100 + TUMOR_TYPES.index(ttype)), tumor_type=ttype,
                            affine=ct.affine)
    assert res.spacing == (3.0, 3.0, 3.0)
    _check_invariants(image, organ, res)
    _check_counts_and_sizes(res, ttype, res.spacing)
    for t in res.tumors:  # world centre = affine · voxel centre
        assert np.allclose(t.centre_mm, (ct.affine @ np.array([*t.centre_voxel, 1.0]))[:3])


def test_location_follows_the_published_z_range(phantom_1mm) -> None:
    image, organ = phantom_1mm
    z = np.nonzero(organ.any(axis=(0, 1)))[0]
    lo, hi = z[0] + 0.3 * (z[-1] - z[0]), z[0] + 0.7 * (z[-1] - z[0])
    res = synthesize_tumors(image, organ, np.random.default_rng(3), tumor_type="tiny")
    for t in res.tumors:
        assert lo - 0.5 <= t.centre_voxel[2] <= hi + 0.5
        eroded = ndimage.binary_erosion(organ[:, :, t.centre_voxel[2]], np.ones((5, 5), bool))
        assert eroded[t.centre_voxel[0], t.centre_voxel[1]]  # 5×5 in-plane erosion at 1 mm


def test_vessel_avoidance(phantom_1mm) -> None:
    image, organ = phantom_1mm
    vessel = np.zeros_like(organ)
    vessel[40:56, :, :] = True  # a 16 mm slab through the liver
    vessel[:, 44:50, :] = True
    vessel &= organ
    for seed in range(3):
        res = synthesize_tumors(image, organ, np.random.default_rng(seed), tumor_type="small", vessel_mask=vessel)
        assert not ((res.label == 2) & vessel).any()
        assert all(not vessel[t.centre_voxel] for t in res.tumors)
        _check_invariants(image, organ, res)


def test_capsule_extra_stays_inside_the_organ(phantom_1mm) -> None:
    image, organ = phantom_1mm
    res = synthesize_tumors(image, organ, np.random.default_rng(0), tumor_type="medium",
                            config=TumorConfig(capsule=True))
    assert np.array_equal(image[~organ], res.image[~organ])
    assert (res.image > image + 1.0).any()  # the enhancing rim


@needs_ct
def test_validation_set_has_controlled_sizes_per_bin(ct_3mm) -> None:
    ct, labels = ct_3mm
    image, organ = ct.array[0].astype(np.float32), labels == LIVER
    res = synthesize_validation_tumors(image, organ, np.random.default_rng(0), per_bin=2, affine=ct.affine)
    _check_invariants(image, organ, res)
    bins = [t.size_bin for t in res.tumors]
    for name, lo, hi in SIZE_BINS:
        assert 1 <= bins.count(name) <= 2, bins
    for t in res.tumors:
        lo, hi = next((b[1], b[2]) for b in SIZE_BINS if b[0] == t.size_bin)
        assert lo < t.diameter_mm <= hi
    _, n_components = ndimage.label(res.label == 2)
    assert n_components >= len(res.tumors)  # tumors kept apart: lesion-wise matching is unambiguous


# ----------------------------------------------------------------------------------------------- transform


def _healthy(spacing=3.0):
    image, organ = _phantom(shape=(32, 32, 24), radii=(40.0, 38.0, 28.0), spacing=(spacing,) * 3)
    return image[None], organ.astype(np.uint8)[None]


class _Healthy(torch.utils.data.Dataset):
    def __init__(self, n: int, tf: RandTumorSynthesisd) -> None:
        self.image, self.label = _healthy()
        self.n, self.tf = n, tf

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return self.tf({"image": self.image.copy(), "label": self.label.copy()})["label"]


def _epoch_labels(tf: RandTumorSynthesisd, epoch: int, workers: int) -> list[np.ndarray]:
    tf.set_epoch(epoch)
    loader = torch.utils.data.DataLoader(_Healthy(4, tf), batch_size=1, num_workers=workers, shuffle=False)
    return [b[0].numpy() for b in loader]


def test_transform_draws_different_tumors_per_worker_and_epoch() -> None:
    tf = RandTumorSynthesisd(keys=("image", "label"), prob=1.0, seed=7, tumor_type="small", spacing=(3.0, 3.0, 3.0))
    e0 = _epoch_labels(tf, 0, workers=2)
    e1 = _epoch_labels(tf, 1, workers=2)
    assert all((lab == 2).any() for lab in e0 + e1)
    # samples 0 and 1 are the first call of worker 0 and of worker 1: same input, different tumors
    assert not np.array_equal(e0[0], e0[1])
    assert len({lab.tobytes() for lab in e0}) == 4
    assert all(not np.array_equal(a, b) for a, b in zip(e0, e1))  # a new epoch draws new tumors
    again = _epoch_labels(RandTumorSynthesisd(prob=1.0, seed=7, tumor_type="small", spacing=(3.0, 3.0, 3.0)), 0, 2)
    assert all(np.array_equal(a, b) for a, b in zip(e0, again))  # reproducible from (seed, worker, epoch, index)
    tf.set_random_state(seed=8)
    assert not np.array_equal(_epoch_labels(tf, 0, workers=0)[0], e0[0])


def test_transform_on_torch_and_numpy_with_probability() -> None:
    image, label = _healthy()
    tf = RandTumorSynthesisd(prob=1.0, seed=0, spacing=(3.0, 3.0, 3.0))
    out = tf({"image": torch.from_numpy(image), "label": torch.from_numpy(label)})
    assert isinstance(out["image"], torch.Tensor) and out["image"].dtype == torch.float32
    assert out["label"].dtype == torch.uint8 and int(out["label"].max()) == 2
    assert tuple(out["image"].shape) == image.shape
    organ = label[0] > 0
    assert np.array_equal(out["image"].numpy()[0][~organ], image[0][~organ])
    out_np = tf({"image": image, "label": label})
    assert isinstance(out_np["image"], np.ndarray) and out_np["label"].max() == 2
    never = RandTumorSynthesisd(prob=0.0, seed=0)({"image": image, "label": label})
    assert never["image"] is image and never["label"] is label
    hits = 0
    tf9 = RandTumorSynthesisd(seed=1, tumor_type="tiny", spacing=(3.0, 3.0, 3.0))  # the paper's p = 0.9
    for _ in range(40):
        hits += int(tf9({"image": image, "label": label})["label"].max() == 2)
    assert 30 <= hits <= 40


def test_transform_leaves_a_case_with_a_tumor_untouched() -> None:
    image, label = _healthy()
    label = label.copy()
    label[0, 16, 16, 12] = 2  # a real tumor annotation
    tf = RandTumorSynthesisd(prob=1.0, seed=0)
    for _ in range(5):
        out = tf({"image": image, "label": label})
        assert out["image"] is image and out["label"] is label
        assert tf.last_result is None


# ----------------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def cli_inputs(ct_3mm, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Image]:
    """The cropped 3 mm CT and a liver-only mask (liver = 5) written as NIfTI."""
    ct, labels = ct_3mm
    d = tmp_path_factory.mktemp("synth_in")
    write_nifti(ct, d / "ct.nii.gz")
    write_nifti(np.where(labels == LIVER, LIVER, 0).astype(np.uint8), d / "mask.nii.gz", like=ct)
    return d / "ct.nii.gz", d / "mask.nii.gz", read_image(d / "ct.nii.gz")


def test_synth_help_has_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["synth", "tumors", "--help"]) == 0
    assert "Example: aemia synth tumors" in capsys.readouterr().out.replace("\n", " ")


@needs_ct
def test_cli_writes_images_labels_csv_and_montage(cli_inputs, tmp_path: Path) -> None:
    ct_path, mask_path, ct = cli_inputs
    out = tmp_path / "synth"
    rc = main(["synth", "tumors", "--ct", str(ct_path), "--organ-mask", str(mask_path), "--organ-label", "5",
               "--n", "2", "--type", "mix", "--out", str(out), "--seed", "0", "--no-progress"])
    assert rc == 0
    rows = list(csv.DictReader((out / "tumors.csv").open()))
    cases = sorted({r["case"] for r in rows})
    assert cases == ["ct_synth000", "ct_synth001"]
    liver = np.asarray(nib.load(mask_path).dataobj) == LIVER
    for case in cases:
        img, lab = nib.load(out / "images" / f"{case}.nii.gz"), nib.load(out / "labels" / f"{case}.nii.gz")
        assert np.allclose(img.affine, ct.affine) and np.allclose(lab.affine, ct.affine)
        assert img.shape == ct.spatial_shape == lab.shape
        lab_arr, img_arr = np.asarray(lab.dataobj), np.asarray(img.dataobj)
        assert set(np.unique(lab_arr).tolist()) == {0, 1, 2}
        assert np.array_equal(lab_arr > 0, liver)
        assert np.array_equal(img_arr[~liver], ct.array[0][~liver])
        assert (out / "montages" / f"{case}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        case_rows = [r for r in rows if r["case"] == case]
        n_mix = [sum(1 for r in case_rows if r["type"] == t) for t in SIZE_TYPES]
        assert all(lo <= k <= hi for k, (lo, hi) in zip(n_mix, (CFG.mix_counts[t] for t in SIZE_TYPES)))
        for r in case_rows:  # centre in mm = affine · centre voxel
            vox = np.array([float(r["centre_i"]), float(r["centre_j"]), float(r["centre_k"]), 1.0])
            assert np.allclose([float(r[f"centre_{a}_mm"]) for a in "xyz"], (ct.affine @ vox)[:3], atol=0.01)
            assert 0 < float(r["mean_hu_drop"]) <= 145 and float(r["diameter_mm"]) > 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # staging folder gone


@needs_ct
def test_cli_validation_set_controls_sizes(cli_inputs, tmp_path: Path) -> None:
    ct_path, mask_path, _ = cli_inputs
    out = tmp_path / "val"
    rc = main(["synth", "tumors", "--ct", str(ct_path), "--organ-mask", str(mask_path), "--organ-label", "5",
               "--n", "1", "--for-validation", "--per-bin", "1", "--out", str(out), "--no-montage", "--no-progress"])
    assert rc == 0
    rows = list(csv.DictReader((out / "tumors.csv").open()))
    assert sorted(r["size_bin"] for r in rows) == sorted(b[0] for b in SIZE_BINS)
    inst = np.asarray(nib.load(out / "instances" / "ct_synth000.nii.gz").dataobj)
    assert sorted(int(v) for v in np.unique(inst) if v) == sorted(int(r["tumor_id"]) for r in rows)


def _bad_masks(ct: Image, labels: np.ndarray, d: Path) -> dict[str, tuple[Path, str]]:
    liver = np.where(labels == LIVER, LIVER, 0).astype(np.uint8)
    shifted = ct.affine.copy()
    shifted[:3, 3] += 6.0
    cases = {
        "empty": (np.zeros_like(liver), ct.affine, "5"),
        "shape": (liver[:-2], ct.affine, "5"),
        "affine": (liver, shifted, "5"),
        "absent-label": (liver, ct.affine, "7"),
    }
    out = {}
    for name, (arr, aff, label) in cases.items():
        path = d / f"mask_{name}.nii.gz"
        write_nifti(Image(arr[None], ct.spacing, aff), path)
        out[name] = (path, label)
    return out


@needs_ct
@pytest.mark.parametrize("case", ["empty", "shape", "affine", "absent-label"])
def test_cli_errors_exit_2_with_one_line_and_write_nothing(ct_3mm, cli_inputs, tmp_path: Path, case: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    ct_path, _, ct = cli_inputs
    mask, label = _bad_masks(ct, ct_3mm[1], tmp_path)[case]
    work = tmp_path / "work"
    work.mkdir()
    capsys.readouterr()
    rc = main(["synth", "tumors", "--ct", str(ct_path), "--organ-mask", str(mask), "--organ-label", label,
               "--n", "2", "--out", str(work / "synth"), "--no-progress"])
    assert rc == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("aemia: error: ") and mask.name in err[0], err
    assert list(work.iterdir()) == []  # nothing written, no staging folder left


def test_cli_missing_ct_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["synth", "tumors", "--ct", str(tmp_path / "nope.nii.gz"), "--organ-mask", str(tmp_path / "m.nii.gz"),
               "--out", str(tmp_path / "o"), "--no-progress"])
    assert rc == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "nope.nii.gz" in err[0]
    assert not (tmp_path / "o").exists()
