"""MSD / nnU-Net folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from aemia.data.dataset import read_msd, write_msd
from aemia.data.image import Image
from aemia.data.io import read_image, write_nifti
from aemia.errors import InputError


def affine_for(spacing: tuple[float, float, float]) -> np.ndarray:
    """A non-trivial affine (scaled, shifted) for synthetic images."""
    aff = np.diag([*spacing, 1.0])
    aff[:3, 3] = (-10.0, 5.0, 2.5)
    return aff


def _case(seed: int) -> tuple[Image, np.ndarray]:
    rng = np.random.default_rng(seed)
    img = Image(rng.normal(size=(2, 6, 5, 4)).astype(np.float32), (1.0, 1.0, 3.0), affine_for((1.0, 1.0, 3.0)))
    lab = rng.integers(0, 3, (6, 5, 4)).astype(np.uint8)
    return img, lab


def test_write_then_read_round_trip(tmp_path: Path) -> None:
    cases = {f"pat{i}": _case(i) for i in range(3)}
    ds = write_msd(tmp_path / "Dataset002_X", "X", [(k, v[0], v[1]) for k, v in cases.items()] + [
        ("new0", cases["pat0"][0], None)], labels={0: "background", 1: "liver", 2: "tumour"},
        modality={0: "FLAIR", 1: "T1c"})
    root = tmp_path / "Dataset002_X"
    assert sorted(p.name for p in (root / "imagesTr").iterdir())[:2] == ["pat0_0000.nii.gz", "pat0_0001.nii.gz"]
    assert (root / "imagesTs" / "new0_0000.nii.gz").is_file()
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "liver": 1, "tumour": 2}  # nnU-Net v2 spelling
    assert meta["channel_names"] == {"0": "FLAIR", "1": "T1c"} and meta["file_ending"] == ".nii.gz"
    assert meta["numTraining"] == 3
    assert ds.labels == {0: "background", 1: "liver", 2: "tumour"} and ds.channels == {0: "FLAIR", 1: "T1c"}
    assert [c.id for c in ds.training] == ["pat0", "pat1", "pat2"] and [c.id for c in ds.test] == ["new0"]
    for case in ds.training:
        img, lab = cases[case.id]
        for ch, f in enumerate(case.images):
            back = read_image(f)
            np.testing.assert_array_equal(back.array[0], img.array[ch])
            np.testing.assert_allclose(back.affine, img.affine)
        np.testing.assert_array_equal(read_image(case.label).array[0], lab)
    assert not [p for p in root.rglob(".*")]  # no temp files


def test_write_msd_rejects_unknown_label_values(tmp_path: Path) -> None:
    img, lab = _case(0)
    with pytest.raises(InputError, match="not in labels"):
        write_msd(tmp_path / "D", "D", [("a", img, lab)], labels={0: "background", 1: "x"}, modality=["A", "B"])
    assert not (tmp_path / "D" / "dataset.json").exists()


def test_read_msd_style_json_with_training_list(tmp_path: Path) -> None:
    root = tmp_path / "Task01_BrainTumour"
    img = Image(np.zeros((2, 4, 4, 3), np.float32), (1.0, 1.0, 1.0))
    write_nifti(img, root / "imagesTr" / "BRATS_001.nii.gz")  # MSD: one 4D file per case
    write_nifti(np.zeros((4, 4, 3), np.uint8), root / "labelsTr" / "BRATS_001.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "name": "BRATS", "modality": {"0": "FLAIR", "1": "T1w"},
        "labels": {"0": "background", "1": "edema"},
        "training": [{"image": "./imagesTr/BRATS_001.nii.gz", "label": "./labelsTr/BRATS_001.nii.gz"}],
        "test": []}))
    ds = read_msd(root)
    assert ds.labels == {0: "background", 1: "edema"} and ds.modality == {0: "FLAIR", 1: "T1w"}
    assert len(ds.training) == 1 and ds.training[0].images == ((root / "imagesTr/BRATS_001.nii.gz").resolve(),)
    assert read_image(ds.training[0].images[0]).channels == 2


def test_read_nnunet_discovery_and_regions(make_msd, tmp_path: Path) -> None:
    root = make_msd(2)
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"]["whole"] = [1, 2]
    (root / "dataset.json").write_text(json.dumps(meta))
    ds = read_msd(root)
    assert [c.id for c in ds.training] == ["case_000", "case_001"]
    assert ds.training[0].label == root / "labelsTr" / "case_000.nii.gz"
    assert ds.regions == {"whole": [1, 2]} and ds.labels == {0: "background", 1: "liver", 2: "tumour"}
    with pytest.raises(InputError, match="dataset.json"):
        read_msd(tmp_path)
