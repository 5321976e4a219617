"""The bundled real data sets: counts, splits, labels (skipped without the data root)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aemia.data import catalog
from aemia.data.catalog import get_dataset, list_datasets
from aemia.errors import InputError


def _fresh(name: str, root: Path) -> catalog.CatalogDataset:
    """Build without the get_dataset cache (to prove splits are reproducible from scratch)."""
    return catalog._BUILDERS[name](root)


def _ids(ds: catalog.CatalogDataset) -> dict[str, list[str]]:
    return {k: [c.id for c in v] for k, v in ds.splits.items()}


def _assert_disjoint(ds: catalog.CatalogDataset) -> None:
    all_ids = [c.id for v in ds.splits.values() for c in v]
    assert len(all_ids) == len(set(all_ids))


def test_data_root_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AEMIA_DATA", str(tmp_path))
    assert catalog.data_root() == tmp_path.resolve()
    monkeypatch.setenv("AEMIA_DATA", str(tmp_path / "nope"))
    with pytest.raises(InputError, match="nope"):
        catalog.data_root()


@pytest.mark.needs_data
def test_unknown_name_lists_known(data_dir: Path) -> None:
    with pytest.raises(InputError) as exc:
        get_dataset("kvasr", data_dir)
    assert "kvasir" in str(exc.value) and "pneumoniamnist" in str(exc.value)
    assert {"kvasir", "ph2", "drive", "pneumoniamnist", "breastmnist", "busi", "brats", "totalseg_ct"} <= set(
        list_datasets())


@pytest.mark.needs_data
def test_kvasir_count_split_reproducible_disjoint(data_dir: Path) -> None:
    ds = get_dataset("kvasir", data_dir)
    assert ds.counts() == {"train": 798, "val": 100, "test": 100}
    assert sum(ds.counts().values()) == 998
    _assert_disjoint(ds)
    assert _ids(_fresh("kvasir", data_dir)) == _ids(ds)
    assert ds.split_manifest()["seed"] == 0 and ds.split_manifest()["splits"]["val"] == _ids(ds)["val"]
    assert "cju1gkndf6yi10801o1qnje19" not in {c.id for v in ds.splits.values() for c in v}  # missing in source
    x, y, t = ds.arrays("val")
    assert x.shape == (100, 3, 256, 256) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert y.shape == (100, 256, 256) and y.dtype == np.uint8 and set(np.unique(y)) == {0, 1} and t is None
    assert 0.02 < y.mean() < 0.5  # polyps cover a real fraction of the image
    assert ds.arrays("val") is ds.arrays("val")  # cached
    x64, y64, _ = ds.arrays("val", size=64)
    assert x64.shape == (100, 3, 64, 64) and y64.shape == (100, 64, 64) and set(np.unique(y64)) == {0, 1}


@pytest.mark.needs_data
def test_medmnist_official_splits(data_dir: Path) -> None:
    pn = get_dataset("pneumoniamnist", data_dir)
    assert pn.counts() == {"train": 4708, "val": 524, "test": 624}
    assert pn.classes == ["normal", "pneumonia"]
    x, y, t = pn.arrays("test")
    assert x.shape == (624, 1, 28, 28) and y is None and np.bincount(t).tolist() == [234, 390]
    assert np.bincount(pn.arrays("train")[2]).tolist() == [1214, 3494]
    bm = get_dataset("breastmnist", data_dir)
    assert bm.counts() == {"train": 546, "val": 78, "test": 156}
    assert np.bincount(bm.arrays("train")[2]).tolist() == [147, 399]
    s = bm.load(bm.splits["val"][3])
    assert s.image.array.shape == (1, 28, 28) and s.target == bm.splits["val"][3].target
    np.testing.assert_allclose(s.image.array, bm.arrays("val")[0][3])


@pytest.mark.needs_data
def test_busi_and_ph2_stratified(data_dir: Path) -> None:
    busi = get_dataset("busi", data_dir)
    targets = [c.target for v in busi.splits.values() for c in v]
    assert len(targets) == 780 and np.bincount(targets).tolist() == [133, 437, 210]
    assert busi.counts() == {"train": 546, "val": 78, "test": 156}
    _assert_disjoint(busi)
    ph2 = get_dataset("ph2", data_dir)
    assert sum(ph2.counts().values()) == 200
    assert np.bincount([c.target for c in ph2.splits["test"]]).tolist() == [16, 16, 8]
    assert _ids(_fresh("ph2", data_dir)) == _ids(ph2)
    with pytest.raises(InputError, match="size"):
        ph2.arrays("val")
    x, y, t = ph2.arrays("val", size=96)
    assert x.shape == (20, 3, 96, 96) and y.shape == (20, 96, 96) and t.shape == (20,) and y.max() == 1


@pytest.mark.needs_data
def test_drive_splits_and_fov(data_dir: Path) -> None:
    ds = get_dataset("drive", data_dir)
    assert ds.counts() == {"train": 16, "val": 4, "test": 20}
    _assert_disjoint(ds)
    s = ds.load(ds.splits["test"][0])
    assert s.image.array.shape == (3, 584, 565) and s.label.shape == (584, 565)
    assert s.extra["fov"].dtype == bool and 0.5 < s.extra["fov"].mean() < 0.8
    assert 0.05 < s.label.mean() < 0.2
    # vessels lie inside the FOV (the manual masks overshoot the FOV edge by a few dozen pixels)
    assert s.label[~s.extra["fov"]].sum() < 0.005 * s.label.sum()
    assert "label2" in s.extra  # 01_test's second observer is stored as vessel(1).gif


@pytest.mark.needs_data
def test_brats_and_whole_tumour(data_dir: Path) -> None:
    ds = get_dataset("brats", data_dir)
    assert ds.counts() == {"train": 2, "val": 2, "test": 2} and ds.labels[4] == "enhancing tumour"
    wt = get_dataset("brats_wt", data_dir)
    s, w = ds.load(ds.splits["train"][0]), wt.load(wt.splits["train"][0])
    assert s.image.array.shape == (2, 240, 240, 155) and s.image.array.dtype == np.float32
    assert set(np.unique(s.label)) <= {0, 1, 2, 3, 4} and s.label.max() > 1
    np.testing.assert_array_equal(w.label, (s.label > 0).astype(np.uint8))


@pytest.mark.needs_data
def test_totalseg_labels(data_dir: Path) -> None:
    ds = get_dataset("totalseg_ct", data_dir)
    assert ds.labels[5] == "liver" and ds.labels[10] == "pancreas" and len(ds.labels) == 105
    train = ds.load(ds.splits["train"][0])
    assert train.image.array.shape == (1, 122, 101, 112)
    counts = np.bincount(train.label.ravel(), minlength=11)
    assert (counts[5], counts[1], counts[2], counts[3], counts[10]) == (41602, 9677, 6993, 5144, 818)
    test = ds.load(ds.splits["test"][0])  # DICOM with v2 labels remapped to v1 ids
    assert test.image.array.shape == (1, 512, 512, 20) and test.label.shape == (512, 512, 20)
    counts = np.bincount(test.label.ravel(), minlength=11)
    # v2 pancreas (7) -> v1 pancreas (10); v2 aorta (52) -> v1 aorta (7)
    assert counts[5] == 366708 and counts[10] == 1327 and counts[7] == 11723
