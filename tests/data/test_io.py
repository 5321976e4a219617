"""Image readers and writers."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image as PILImage

from aemia.data.image import Image
from aemia.data.io import read_image, read_npz_split, write_nifti, write_png
from aemia.data.orientation import to_source
from aemia.errors import InputError


def affine_for(spacing: tuple[float, float, float]) -> np.ndarray:
    """A non-trivial affine (scaled, shifted) for synthetic images."""
    aff = np.diag([*spacing, 1.0])
    aff[:3, 3] = (-10.0, 5.0, 2.5)
    return aff


def test_nifti_round_trip_keeps_affine_values_and_channels(tmp_path: Path) -> None:
    aff = affine_for((0.8, 0.9, 2.5))
    aff[:3, :3] = np.diag([-0.8, 0.9, 2.5])  # a flipped axis must survive too
    arr = np.random.default_rng(1).normal(size=(2, 6, 7, 4)).astype(np.float32)
    out = write_nifti(Image(arr, (0.8, 0.9, 2.5), aff), tmp_path / "x.nii.gz")
    back = read_image(out)
    assert back.array.shape == (2, 6, 7, 4)
    np.testing.assert_array_equal(back.array, arr[:, ::-1])  # read in RAS order: the flipped axis is turned
    assert nib.aff2axcodes(back.affine) == ("R", "A", "S")
    np.testing.assert_allclose(back.source_affine, aff, atol=1e-6)
    stored = to_source(back)
    np.testing.assert_array_equal(stored.array, arr)
    np.testing.assert_allclose(stored.affine, aff, atol=1e-6)
    np.testing.assert_allclose(back.spacing, (0.8, 0.9, 2.5), rtol=1e-6)
    assert nib.load(str(out)).shape == (6, 7, 4, 2)  # channels last on disk, as nnU-Net/MSD expect
    assert [p.name for p in tmp_path.iterdir()] == ["x.nii.gz"]  # no temp file left


def test_write_nifti_label_like_reference(tmp_path: Path) -> None:
    ref = Image(np.zeros((1, 5, 5, 3), np.float32), (2.0, 2.0, 3.0), affine_for((2.0, 2.0, 3.0)))
    lab = np.zeros((5, 5, 3), np.int64)
    lab[1:3, 1:3, 1] = 7
    back = read_image(write_nifti(lab, tmp_path / "l.nii.gz", like=ref))
    assert back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array[0], lab)
    np.testing.assert_allclose(back.affine, ref.affine)
    with pytest.raises(InputError, match="does not match"):
        write_nifti(np.zeros((4, 4, 4)), tmp_path / "bad.nii.gz", like=ref)
    assert not (tmp_path / "bad.nii.gz").exists()


def test_truncated_nifti_is_input_error_naming_file(tmp_path: Path) -> None:
    good = write_nifti(np.arange(1000, dtype=np.float32).reshape(10, 10, 10), tmp_path / "a.nii.gz")
    bad = tmp_path / "trunc.nii.gz"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(InputError) as exc:
        read_image(bad)
    assert "trunc.nii.gz" in str(exc.value) and "truncated or corrupt" in str(exc.value)


def test_bad_inputs_are_input_errors(tmp_path: Path) -> None:
    (tmp_path / "notes.bin").write_bytes(b"hello")
    (tmp_path / "empty").mkdir()
    (tmp_path / "fake.png").write_text("not a png")
    for target, words in [("notes.bin", "not a recognised image format"), ("empty", "folder is empty"),
                          ("fake.png", "cannot read"), ("missing.nii.gz", "not found")]:
        with pytest.raises(InputError) as exc:
            read_image(tmp_path / target)
        assert target in str(exc.value) and words in str(exc.value)


def test_nrrd_matches_nifti_convention(tmp_path: Path) -> None:
    import SimpleITK as sitk

    aff = affine_for((0.7, 0.8, 3.0))
    aff[:3, :3] = np.diag([-0.7, 0.8, 3.0])
    arr = np.arange(5 * 6 * 4, dtype=np.int16).reshape(5, 6, 4)
    nii = write_nifti(Image(arr[None], (0.7, 0.8, 3.0), aff), tmp_path / "v.nii.gz")
    sitk.WriteImage(sitk.ReadImage(str(nii)), str(tmp_path / "v.nrrd"))
    a, b = read_image(nii), read_image(tmp_path / "v.nrrd")
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-5)
    np.testing.assert_allclose(a.spacing, b.spacing, rtol=1e-6)


def test_nan_voxels_are_read_not_rejected(tmp_path: Path) -> None:
    arr = np.ones((3, 3, 3), np.float32)
    arr[1, 1, 1] = np.nan
    back = read_image(write_nifti(arr, tmp_path / "n.nii.gz"))
    assert np.isnan(back.array).sum() == 1


def test_pictures_rgb_grey_and_png_writer(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    PILImage.fromarray(rgb).save(tmp_path / "c.png")
    img = read_image(tmp_path / "c.png")
    assert img.array.shape == (3, 5, 7) and img.spacing == (1.0, 1.0)
    np.testing.assert_array_equal(np.moveaxis(img.array, 0, -1), rgb)
    mask = np.zeros((5, 7), bool)
    mask[1:3, 2:4] = True
    back = read_image(write_png(mask, tmp_path / "m.png"))
    assert back.array.shape == (1, 5, 7) and set(np.unique(back.array)) == {0, 255}
    np.testing.assert_array_equal(back.array[0] > 127, mask)
    labels = np.array([[0, 1], [2, 3]])
    assert read_image(write_png(labels, tmp_path / "lab.png")).array.max() == 3  # labels kept by default
    assert read_image(write_png(labels, tmp_path / "lab2.png", labels=True)).array.max() == 255


def test_npz_split_flat_and_column_labels(tmp_path: Path) -> None:
    x = np.zeros((4, 28, 28), np.uint8)
    np.savez(tmp_path / "a.npz", train_images=x, train_labels=np.array([[0], [1], [1], [0]], np.uint8))
    np.savez(tmp_path / "b.npz", train_images=x, train_labels=np.array([0, 1, 1, 0], np.uint8))
    for f in ("a.npz", "b.npz"):
        imgs, labels = read_npz_split(tmp_path / f, "train")
        assert imgs.shape == (4, 28, 28) and labels.tolist() == [0, 1, 1, 0] and labels.dtype == np.int64
    with pytest.raises(InputError, match="no split 'val'"):
        read_npz_split(tmp_path / "a.npz", "val")
    assert read_image(f"{tmp_path / 'a.npz'}#train/2").array.shape == (1, 28, 28)


@pytest.mark.needs_data
def test_dicom_series_aligns_with_its_nifti_label_map(data_dir: Path) -> None:
    base = data_dir / "totalsegmentator_example_ct"
    ct = read_image(base / "example_ct_dicom")
    seg = read_image(base / "example_seg_dicom.nii.gz")
    assert ct.array.shape == (1, 512, 512, 20) and seg.array.shape == (1, 512, 512, 20)
    np.testing.assert_allclose(ct.affine, seg.affine, atol=1e-3)  # same RAS grid as the label map
    np.testing.assert_allclose(ct.spacing, (0.9765625, 0.9765625, 2.0), rtol=1e-5)
    hu, lab = ct.array[0], seg.array[0]
    liver, spleen = lab == 5, lab == 1
    assert liver.sum() == 366708
    assert 30 < np.median(hu[liver]) < 200 and 30 < np.median(hu[spleen]) < 200  # soft tissue, not air/fat
    assert (hu[lab > 0] > -500).mean() > 0.95  # labelled voxels lie inside the body
    # the wrong (unflipped) row order would put many organ voxels outside the body
    assert (hu[:, ::-1][lab > 0] > -500).mean() < 0.9
