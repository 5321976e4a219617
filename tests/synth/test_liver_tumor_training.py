"""Liver + tumor training on synthetic tumors: the training set, the per-lesion table and the CLI errors."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from aemia.cli.main import main
from aemia.evaluate.evaluate import EvalCase, evaluate_cases
from aemia.infer.lesions import lesion_classes, lesion_csv, lesion_rows
from aemia.data.normalise import ct_window
from aemia.errors import InputError
from aemia.recipes.liver_tumor import STRONG_3D, ScannerJitter, SyntheticTumorPatches, augmentation, validation_case
from aemia.train.augment import AugmentConfig


def _phantom(shape=(56, 52, 40)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    hu = rng.normal(-100, 20, shape).astype(np.float32)
    g = np.ogrid[tuple(slice(0, n) for n in shape)]
    liver = sum(((x - n / 2) / (n / 3)) ** 2 for x, n in zip(g, shape)) <= 1
    hu[liver] = rng.normal(110, 10, int(liver.sum()))
    return hu, liver


def _dataset(seed: int = 0) -> SyntheticTumorPatches:
    hu, liver = _phantom()
    return SyntheticTumorPatches([(hu, liver)], (2.0, 2.0, 2.0), (32, 32, 24), patches_per_volume=4,
                                 patches_per_synthesis=2, prob=1.0, seed=seed)


def test_patches_have_liver_and_tumor_labels_inside_the_organ() -> None:
    ds = _dataset()
    image, label, tumor = ds.synthesized(0, 0)
    organ = ds.volumes[0][1]
    assert set(np.unique(label)) <= {0, 1, 2} and (label == 2).any()
    assert organ[label == 2].all(), "tumor voxels must lie inside the organ"
    assert (label[~organ] == 0).all()
    assert image.dtype == np.float32 and image[organ].mean() > 0  # raw HU: windowed per patch
    x, y = ds[0]
    assert -0.5 <= float(x.min()) and float(x.max()) <= 1.5  # windowed, then brightness/contrast augmentation
    assert tuple(x.shape) == (1, 32, 32, 24) and tuple(y.shape) == (32, 32, 24)


def test_augment_setting_picks_patch_augmentation_and_hu_jitter() -> None:
    assert augmentation("strong") == (STRONG_3D, ScannerJitter())
    assert augmentation("light") == (AugmentConfig.light(), None)
    assert augmentation("none") == (None, None)
    with pytest.raises(InputError, match="light"):
        augmentation("heavy")
    hu, liver = _phantom()
    plain = SyntheticTumorPatches([(hu, liver)], (2.0, 2.0, 2.0), (32, 32, 24), patches_per_volume=4, prob=1.0,
                                  augment_cfg=None, jitter=None)
    for i in range(4):  # no augmentation, no jitter: the patch is a window of the synthesized volume, voxel for voxel
        x, y = plain[i]
        image, label, _ = plain.synthesized(0, i // 2)
        expected = ct_window(image, *plain.window)
        hits = [(a, b, c) for a in range(image.shape[0] - 31) for b in range(image.shape[1] - 31)
                for c in range(image.shape[2] - 23)
                if np.array_equal(label[a:a + 32, b:b + 32, c:c + 24], y.numpy())
                and np.allclose(expected[a:a + 32, b:b + 32, c:c + 24], x.numpy()[0])]
        assert hits, f"patch {i} is not an unaugmented crop"


def test_draws_differ_across_epochs_and_groups_but_repeat_for_the_same_key() -> None:
    ds = _dataset()
    a = ds.synthesized(0, 0)[1].copy()
    b = ds.synthesized(0, 1)[1].copy()
    ds.set_epoch(1)
    c = ds.synthesized(0, 0)[1].copy()
    assert not np.array_equal(a, b) and not np.array_equal(a, c)
    fresh = _dataset()  # a new process (or a resumed run) draws the same tumors for the same epoch and group
    np.testing.assert_array_equal(fresh.synthesized(0, 0)[1], a)
    x1, y1 = fresh[3]
    x2, y2 = _dataset()[3]
    assert np.array_equal(x1.numpy(), x2.numpy()) and np.array_equal(y1.numpy(), y2.numpy())


def test_validation_case_places_tumors_per_size_bin() -> None:
    hu, liver = _phantom((90, 84, 60))
    img, lab, tumors = validation_case(hu, liver, (1.5, 1.5, 1.5), seed=3, per_bin=1)
    assert len(tumors) >= 2 and {t.size_bin for t in tumors} <= {"<=5", "5-10", "10-20", ">20"}
    assert liver[lab == 2].all() and np.array_equal(img[~liver], hu[~liver])


def test_lesion_rows_measure_each_component() -> None:
    lab = np.zeros((20, 20, 20), np.uint8)
    lab[2:6, 2:6, 2:6] = 2  # 64 voxels
    lab[10:12, 10:12, 10:12] = 2  # 8 voxels
    lab[15:18, 15:18, 15:18] = 1  # organ, not a lesion
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    affine[:3, 3] = [10.0, 0.0, -5.0]
    rows = lesion_rows(lab, 2, (2.0, 2.0, 3.0), affine, "liver tumor")
    assert [r["voxels"] for r in rows] == [64, 8]
    assert rows[0]["volume_mm3"] == pytest.approx(64 * 12.0)
    assert rows[0]["centre_mm_x"] == pytest.approx(10.0 + 3.5 * 2.0) and rows[0]["centre_mm_z"] == pytest.approx(-5 + 3.5 * 3)
    assert rows[0]["diameter_mm"] == pytest.approx(2 * (3 * 768 / (4 * np.pi)) ** (1 / 3), rel=1e-3)
    table = list(csv.DictReader(io.StringIO(lesion_csv(rows))))
    assert len(table) == 2 and table[1]["class"] == "liver tumor"
    assert lesion_classes({0: "background", 1: "liver", 2: "liver tumor"}) == {2: "liver tumor"}


def test_lesion_detection_can_count_one_label_only(tmp_path) -> None:
    gt = np.zeros((16, 16, 16), np.int64)
    gt[2:14, 2:14, 2:14] = 1
    gt[4:6, 4:6, 4:6] = 2
    gt[10:12, 10:12, 10:12] = 2
    pred = gt.copy()
    pred[10:12, 10:12, 10:12] = 1  # second tumor missed (predicted as liver)
    s = evaluate_cases([EvalCase("c", pred, gt, (1.0, 1.0, 1.0), None)], tmp_path, {0: "bg", 1: "liver", 2: "tumor"},
                       progress=False, lesion_label=2, n_resamples=50)
    assert s["lesion_detection"]["overall"]["n_lesions"] == 2
    assert s["lesion_detection"]["overall"]["n_detected"] == 1


@pytest.mark.needs_data("totalsegmentator_example_ct", "kvasir_seg_256")
def test_cli_refuses_liver_tumor_without_synthetic_tumors_or_on_2d(tmp_path, capsys) -> None:
    rc = main(["train", "--dataset", "totalseg_ct", "--task", "liver-tumor", "--run", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert rc == 2 and "--synthetic-tumors" in err and not (tmp_path / "a").exists()
    rc = main(["train", "--dataset", "kvasir", "--task", "liver-tumor", "--synthetic-tumors", "--run", str(tmp_path / "b")])
    assert rc == 2 and "3D" in capsys.readouterr().err and not (tmp_path / "b").exists()
    rc = main(["train", "--dataset", "kvasir", "--synthetic-tumors", "--run", str(tmp_path / "c")])
    assert rc == 2 and "liver-tumor" in capsys.readouterr().err
