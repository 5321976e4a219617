"""Canonical orientation end to end: a prediction on a reoriented copy equals the reoriented prediction."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform

from aemia.data.image import Image
from aemia.data.io import read_image, write_nifti
from aemia.data.normalise import normalise
from aemia.data.transforms import resample_to_spacing
from aemia.infer.batch import predict_path

NORM = "ct-window:-175.0,250.0"


def reoriented(img: nib.Nifti1Image, codes: str) -> nib.Nifti1Image:
    """The same volume stored with voxel axes ``codes`` (e.g. ``"LPS"``), world geometry unchanged."""
    ornt = ornt_transform(axcodes2ornt(nib.aff2axcodes(img.affine)), axcodes2ornt(tuple(codes)))
    data = apply_orientation(np.asarray(img.dataobj), ornt)
    return nib.Nifti1Image(data, img.affine @ inv_ornt_aff(ornt, img.shape))


def ct_like(shape: tuple[int, int, int] = (20, 14, 10), spacing: tuple[float, float, float] = (1.0, 1.5, 2.5)) -> nib.Nifti1Image:
    """An asymmetric synthetic RAS volume in HU (a bright off-centre block) with anisotropic spacing."""
    rng = np.random.default_rng(0)
    data = rng.normal(-100, 60, shape).astype(np.float32)
    data[3:9, 2:6, 1:4] = 200.0
    aff = np.diag([*spacing, 1.0])
    aff[:3, 3] = (-12.0, 30.0, 5.0)
    return nib.Nifti1Image(data, aff)


def working_input(image: Image, spacing: list[float]) -> np.ndarray:
    """The network input the predictor makes from ``image`` at the working ``spacing``."""
    return resample_to_spacing(normalise(image.array, NORM), image.spacing, spacing)


def nontrivial(img: nib.Nifti1Image) -> bool:
    labels = np.asarray(img.dataobj)
    return bool(labels.any() and not labels.all())


def predict_file(run: Path, img: nib.Nifti1Image, tmp: Path, name: str) -> nib.Nifti1Image:
    src = tmp / f"{name}.nii.gz"
    nib.save(img, str(src))
    out = predict_path(run, src, tmp / f"pred_{name}", progress=False)
    return nib.load(str(out[0]))


@pytest.mark.parametrize("codes", ["LPS", "PLS", "SAR"])
def test_read_brings_volume_to_ras_and_spacing_follows_axes(tmp_path: Path, codes: str) -> None:
    ras = ct_like()
    path = tmp_path / "v.nii.gz"
    nib.save(reoriented(ras, codes), str(path))
    img = read_image(path)
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    np.testing.assert_array_equal(img.array[0], np.asarray(ras.dataobj))
    np.testing.assert_allclose(img.affine, ras.affine, atol=1e-5)
    assert img.spacing == pytest.approx((1.0, 1.5, 2.5))
    assert nib.aff2axcodes(img.source_affine) == tuple(codes)


def test_ras_input_is_read_unchanged(tmp_path: Path) -> None:
    ras = ct_like()
    img = read_image(write_nifti(Image(np.asarray(ras.dataobj)[None], (1.0, 1.5, 2.5), ras.affine), tmp_path / "r.nii.gz"))
    np.testing.assert_array_equal(img.array[0], np.asarray(ras.dataobj))
    np.testing.assert_array_equal(img.affine, img.source_affine)


@pytest.mark.parametrize("codes", ["LPS", "PLS"])
def test_prediction_on_reoriented_copy_is_reoriented_prediction(make_run, tmp_path: Path, codes: str) -> None:
    ras = ct_like()
    run = make_run(3, normaliser=NORM, patch=[8, 8, 8], calibrate=normalise(np.asarray(ras.dataobj)[None], NORM))
    want = reoriented(predict_file(run, ras, tmp_path, "ras"), codes)
    got = predict_file(run, reoriented(ras, codes), tmp_path, codes)
    assert nib.aff2axcodes(got.affine) == tuple(codes)  # written in the input's own orientation
    np.testing.assert_allclose(got.affine, want.affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(got.dataobj), np.asarray(want.dataobj))
    assert nontrivial(got)


def test_real_ct_in_pls(make_run, data_dir: Path, tmp_path: Path) -> None:
    """The bundled CT (RAS) and a PLS copy made with nibabel give the same prediction, reoriented."""
    path = data_dir / "totalsegmentator_example_ct" / "example_ct.nii.gz"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    run = make_run(3, normaliser=NORM, patch=[16, 16, 16], spacing=[6.0, 6.0, 6.0],
                   calibrate=working_input(read_image(path), [6.0, 6.0, 6.0]))
    ras = nib.load(str(path))
    want = reoriented(predict_file(run, ras, tmp_path, "ras"), "PLS")
    got = predict_file(run, reoriented(ras, "PLS"), tmp_path, "pls")
    assert got.shape == ras.shape[1::-1] + ras.shape[2:]
    np.testing.assert_allclose(got.affine, want.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(got.dataobj), np.asarray(want.dataobj))
    assert nontrivial(got)


def test_dicom_series_prediction_is_written_in_its_own_grid(make_run, data_dir: Path, tmp_path: Path) -> None:
    """A DICOM series (stored LAS, as dcm2niix writes it) and a RAS NIfTI of the same voxels: the series'
    prediction, written in the series' own grid, equals the RAS prediction reoriented to it."""
    series = data_dir / "totalsegmentator_example_ct" / "example_ct_dicom"
    if not series.is_dir():
        pytest.skip(f"{series} not found")
    image = read_image(series)
    spacing = [8.0, 8.0, 2.0]
    run = make_run(3, normaliser=NORM, patch=[16, 16, 16], spacing=spacing, calibrate=working_input(image, spacing))
    assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
    ras = nib.Nifti1Image(image.array[0], image.affine)
    got = nib.load(str(predict_path(run, series, tmp_path / "pred_dicom", progress=False)[0]))
    assert nib.aff2axcodes(got.affine) == nib.aff2axcodes(image.source_affine)
    np.testing.assert_allclose(got.affine, image.source_affine, atol=1e-4)
    want = reoriented(predict_file(run, ras, tmp_path, "ras"), "".join(nib.aff2axcodes(got.affine)))
    np.testing.assert_array_equal(np.asarray(got.dataobj), np.asarray(want.dataobj))
    assert nontrivial(got)
    label = nib.load(str(series.parent / "example_seg_dicom.nii.gz"))  # dcm2niix grid of the same series
    assert got.shape == label.shape and np.allclose(got.affine, label.affine, atol=1e-3)
