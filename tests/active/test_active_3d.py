"""3D volumes in the active-learning loop: init → query → import → train → query → status on NIfTI / DICOM volumes,
the geometry checks of imported masks, and the per-volume scoring of every strategy.

Tiny and CPU-light: 24³ synthetic CT-like volumes (spheres of 'tissue' in air, 2 mm voxels), a 3D U-Net with
widths (4, 8, 16), 16³ patches, one epoch per round. The ``needs_data`` test uses real CT crops.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

from aemia.active.continual import train_round  # noqa: E402
from aemia.active.importing import import_labels  # noqa: E402
from aemia.active.project import Project, init_project  # noqa: E402
from aemia.active.query import query_round  # noqa: E402
from aemia.active.scoring import score_pool  # noqa: E402
from aemia.active.strategies import LIKELY_FOREGROUND, ForegroundRandom, get_strategy, reduce_voxel_scores  # noqa: E402
from aemia.active.volume_scoring import N_FLIPS, _flip_axes, patch_embedding  # noqa: E402
from aemia.cli.main import main  # noqa: E402
from aemia.data.image import Image  # noqa: E402
from aemia.data.io import read_image, write_nifti  # noqa: E402
from aemia.errors import InputError, ProblemsError  # noqa: E402

DATA = Path(os.environ.get("AEMIA_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data"))
TINY = ["--features", "4,8,16", "--patch", "16,16,16"]
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def _cli(*args: str) -> int:
    return main(list(args))


def _make_pool(folder: Path, n: int = 6, shape: int = 24) -> tuple[Path, Path]:
    """``folder/images/cNN.nii.gz`` (HU-like: air -1000, a sphere of soft tissue ~60 HU) and ``folder/truth``."""
    images, truth = folder / "images", folder / "truth"
    images.mkdir(parents=True)
    truth.mkdir()
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[:shape, :shape, :shape]
    for i in range(n):
        c, r = rng.integers(8, shape - 8, 3), int(rng.integers(4, 7))
        mask = (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 < r * r
        ct = -1000.0 + 200.0 * rng.random(mask.shape) + 1060.0 * mask
        write_nifti(Image(ct[None].astype(np.float32), (2.0, 2.0, 2.0), AFFINE), images / f"c{i}.nii.gz")
        write_nifti(Image(mask[None].astype(np.uint8), (2.0, 2.0, 2.0), AFFINE), truth / f"c{i}.nii.gz")
    return images, truth


def _annotate(cases: list[str], truth: Path, out: Path) -> Path:
    out.mkdir(parents=True)
    for c in cases:
        shutil.copyfile(truth / f"{c}.nii.gz", out / f"{c}.nii.gz")
    return out


@pytest.fixture()
def pool(tmp_path: Path) -> tuple[Path, Path]:
    return _make_pool(tmp_path)


def test_3d_loop_from_the_cli(tmp_path: Path, pool: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    images, truth = pool
    proj = tmp_path / "P"
    assert _cli("active", "init", "--images", str(images), "--project", str(proj), *TINY) == 0
    out = capsys.readouterr().out
    assert "6 volumes" in out and "3D unet" in out and "ct-window" in out
    cfg = json.loads((proj / "project.json").read_text())
    assert cfg["dims"] == 3 and cfg["spacing"] == [2.0, 2.0, 2.0] and cfg["patch"] == [16, 16, 16]
    assert _cli("active", "query", "--project", str(proj), "--strategy", "acft", "--k", "3") == 0
    rows = (proj / "rounds" / "00" / "worklist.csv").read_text().splitlines()[1:]
    cases = [r.split(",")[0] for r in rows]
    assert len(cases) == 3 and all((proj / "rounds" / "00" / "to_annotate" / f"{c}.nii.gz").is_file() for c in cases)
    assert "<case>.nii.gz" in (proj / "rounds" / "00" / "README.txt").read_text()
    labels = _annotate(cases, truth, tmp_path / "lab0")
    assert _cli("active", "import", "--project", str(proj), "--labels", str(labels)) == 0
    assert _cli("active", "train", "--project", str(proj), "--epochs", "1", "--batch-size", "2") == 0
    run = proj / "models" / "round_00"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["n_validation"] == 1 and 0.0 <= summary["validation"]["value"] <= 1.0
    assert _cli("active", "query", "--project", str(proj), "--strategy", "entropy", "--k", "2") == 0
    with Project.open(proj).ledger() as led:
        assert "likely-foreground" in led.rounds()[-1].strategy  # the 3D default reduction, recorded
    assert _cli("active", "status", "--project", str(proj)) == 0
    # the round's model is a run folder `aemia predict` applies to volumes: a mask on the input's grid
    assert _cli("predict", "--run", str(run), "--input", str(images), "--out", str(tmp_path / "pred")) == 0
    pred = read_image(tmp_path / "pred" / "c0.nii.gz")
    src = read_image(images / "c0.nii.gz")
    assert pred.spatial_shape == src.spatial_shape and np.allclose(pred.affine, src.affine)


def _label(arr: np.ndarray, path: Path, spacing: tuple[float, ...] = (2.0, 2.0, 2.0),
           affine: np.ndarray = AFFINE) -> None:
    write_nifti(Image(arr[None].astype(np.uint8), spacing, affine), path)


def _write_dicom_series(nifti: Path, out: Path) -> None:
    """A label NIfTI as a DICOM series folder (one int16 slice per file, position and orientation tags set).
    GDCM's DICOM writer sets the process locale to "C" (text files would then be read as ASCII): restored after."""
    import locale

    import SimpleITK as sitk

    saved = locale.setlocale(locale.LC_ALL)
    try:
        _write_slices(sitk, nifti, out)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_slices(sitk: Any, nifti: Path, out: Path) -> None:

    img = sitk.Cast(sitk.ReadImage(str(nifti)), sitk.sitkInt16)
    out.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    d = img.GetDirection()
    orient = "\\".join(map(str, (d[0], d[3], d[6], d[1], d[4], d[7])))
    uid = "1.2.826.0.1.3680043.2.1125"
    for k in range(img.GetDepth()):
        sl = img[:, :, k]
        pos = "\\".join(map(str, img.TransformIndexToPhysicalPoint((0, 0, k))))
        for tag, val in (("0008|0060", "SEG"), ("0020|000d", f"{uid}.1"), ("0020|000e", f"{uid}.2"),
                         ("0020|0037", orient), ("0020|0032", pos), ("0020|0013", str(k + 1)),
                         ("0008|0018", f"{uid}.3.{k + 1}")):
            sl.SetMetaData(tag, val)
        writer.SetFileName(str(out / f"{k:03d}.dcm"))
        writer.Execute(sl)


def test_3d_import_checks_geometry_and_values(tmp_path: Path, pool: tuple[Path, Path]) -> None:
    images, truth = pool
    proj = init_project(tmp_path / "P", images, features=[4, 8, 16], patch=[16, 16, 16], progress=False)
    cases = query_round(proj, "random", 6, progress=False).cases
    good = read_image(truth / "c0.nii.gz").array[0]
    bad = tmp_path / "bad"
    bad.mkdir()
    _label(good[:20], bad / "c0.nii.gz")  # wrong shape
    _label(good, bad / "c1.nii.gz", spacing=(1.0, 1.0, 1.0), affine=np.diag([1.0, 1.0, 1.0, 1.0]))  # spacing
    shifted = AFFINE.copy()
    shifted[:3, 3] = [10.0, 0.0, 0.0]
    _label(good, bad / "c2.nii.gz", affine=shifted)  # same shape and spacing, another place in the world
    _label(good * 3, bad / "c3.nii.gz")  # values outside 0..1 (and not 0/255)
    with pytest.raises(ProblemsError) as err:
        import_labels(proj, bad, progress=False)
    text = "\n".join(err.value.problems)
    assert "'c0'" in text and "shape" in text
    assert "'c1'" in text and "spacing" in text
    assert "'c2'" in text and "affine" in text
    assert "'c3'" in text and "not allowed" in text
    with proj.ledger() as led:
        assert led.status_counts()["annotated"] == 0  # all or none
    # an NRRD mask and a DICOM series mask on the right grid are accepted and stored as NIfTI with the same voxels
    import SimpleITK as sitk

    ok = tmp_path / "ok"
    ok.mkdir()
    itk = sitk.ReadImage(str(truth / f"{cases[0]}.nii.gz"))
    sitk.WriteImage(itk, str(ok / f"{cases[0]}.nrrd"))
    _write_dicom_series(truth / f"{cases[1]}.nii.gz", ok / cases[1])  # and a DICOM series folder <case>/
    res = import_labels(proj, ok, progress=False)
    assert sorted(res.annotated) == sorted(cases[:2])
    for case in cases[:2]:
        with proj.ledger() as led:
            stored = Path(led.item(case).label_path)
        assert stored.name.endswith(".nii")
        np.testing.assert_array_equal(read_image(stored).array, read_image(truth / f"{case}.nii.gz").array)
        assert np.allclose(read_image(stored).affine, read_image(images / f"{case}.nii.gz").affine)


def test_3d_init_refusals(tmp_path: Path, pool: tuple[Path, Path]) -> None:
    images, _ = pool
    with pytest.raises(InputError, match="segmentation"):
        init_project(tmp_path / "A", images, task="classification", progress=False)
    with pytest.raises(InputError, match="multiples of 4"):
        init_project(tmp_path / "B", images, features=[4, 8, 16], patch=[18, 16, 16], progress=False)
    write_nifti(Image(np.zeros((2, 8, 8, 8), np.float32), (2.0, 2.0, 2.0), AFFINE), images / "two.nii.gz")
    with pytest.raises(ProblemsError) as err:
        init_project(tmp_path / "C", images, progress=False)
    assert "different channel counts" in "\n".join(map(str, err.value.problems))
    assert not (tmp_path / "C").exists()  # nothing written


def test_every_strategy_scores_volumes(tmp_path: Path, pool: tuple[Path, Path]) -> None:
    """Each strategy gives one finite score per volume from the 3D network; ranks are valid permutations."""
    images, truth = pool
    proj = init_project(tmp_path / "P", images, features=[4, 8, 16], patch=[16, 16, 16], dropout=0.2,
                        progress=False)
    model = proj.new_model()
    with proj.ledger() as led:
        items = led.items()
    for name in ("random", "fg-random", "entropy", "margin", "least-confidence", "bald", "coreset", "acft",
                 "acft-diversity"):
        params = {} if name in ("random", "fg-random", "coreset") else {"reduce": "likely-foreground"}
        strat = get_strategy(name, **params)
        scores = score_pool(proj, model, strat, items[:4], labelled=items[4:], progress=False)
        assert scores.shape == (4,) and np.isfinite(scores).all(), name
        assert sorted(strat.rank(scores, 4).tolist()) == [0, 1, 2, 3]


def test_volume_scoring_invariants() -> None:
    # the 8 ACFT copies are the 8 distinct subsets of flipped axes, each its own inverse
    assert len({_flip_axes(t) for t in range(N_FLIPS)}) == N_FLIPS
    x = torch.randn(1, 1, 4, 5, 6)
    for t in range(N_FLIPS):
        a = _flip_axes(t)
        assert torch.equal(torch.flip(torch.flip(x, a), a) if a else x, x)
    # likely-foreground = the mean over voxels with P(not background) >= 0.1; empty region -> empty_score
    p = np.zeros((2, 2, 4))
    p[:, 0] = [[0.95, 0.85, 0.2, 1.0], [1.0, 1.0, 1.0, 1.0]]
    p[:, 1] = 1 - p[:, 0]
    v = np.array([[1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0]])
    assert LIKELY_FOREGROUND == 0.1
    np.testing.assert_allclose(reduce_voxel_scores(v, p, "likely-foreground"), [2.5, 0.0])
    np.testing.assert_allclose(reduce_voxel_scores(v, p, "foreground"), [3.0, 0.0])
    # fg-random on a list of differently shaped label maps = on the same maps as one array when shapes agree
    maps = [np.zeros((3, 3, 3), np.uint8), np.ones((3, 3, 3), np.uint8), np.zeros((3, 3, 3), np.uint8)]
    maps[2][0, 0, 0] = 1
    s = ForegroundRandom(seed=3)
    np.testing.assert_allclose(s.score(maps), s.score(np.stack(maps)))
    assert s.score([np.zeros((2, 2, 2)), np.ones((5, 4, 3))]).argmax() == 1


def test_acft_voxel_chunks_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """ACFT scores 3D maps in chunks of voxels; any chunk size gives the unchunked per-voxel scores, reduced."""
    import aemia.active.strategies as strategies

    rng = np.random.default_rng(0)
    q = rng.random((3, 8, 1, 7, 9, 5))
    q = np.concatenate([1 - q, q], axis=2)
    for reduce in ("mean", "foreground", "likely-foreground"):
        st = get_strategy("acft", reduce=reduce)
        ref = reduce_voxel_scores(strategies.acft_scores(q, st.alpha), q.mean(1), reduce)
        monkeypatch.setattr(strategies, "ACFT_CHUNK", 17)
        np.testing.assert_allclose(st.score(q), ref, rtol=1e-12)
        monkeypatch.setattr(strategies, "ACFT_CHUNK", 1 << 16)
        np.testing.assert_allclose(st.score(q), ref, rtol=1e-12)


def test_patch_embedding_is_the_mean_over_tiles() -> None:
    from aemia.nets import create_model

    torch.manual_seed(0)
    model = create_model("unet", 3, 1, 2, features=[4, 8]).eval()
    a, b = torch.randn(1, 1, 8, 8, 8), torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        ea, eb = (model.forward_features(t)["embedding"].numpy() for t in (a, b))
    np.testing.assert_allclose(patch_embedding(model, a, [8, 8, 8]), ea, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(patch_embedding(model, torch.cat([a, b], dim=2), [8, 8, 8]), (ea + eb) / 2,
                               rtol=1e-5, atol=1e-6)


CT = DATA / "totalsegmentator_example_ct"


@pytest.mark.needs_data("totalsegmentator_example_ct")
def test_real_ct_crops_and_a_dicom_series(tmp_path: Path) -> None:
    """Real data: liver crops of the TotalSegmentator example CT (3 mm) as NIfTI cases plus the example DICOM
    series as a case folder; its TotalSegmentator mask (NIfTI from dcm2niix geometry) imports onto the DICOM grid."""
    images, truth = tmp_path / "images", tmp_path / "truth"
    images.mkdir()
    truth.mkdir()
    ct, seg = read_image(CT / "example_ct.nii.gz"), read_image(CT / "example_ct_seg_totalv1.nii.gz")
    liver = np.argwhere(seg.array[0] == 5)
    lo = liver.min(0)
    for i, off in enumerate([(0, 0, 0), (8, 4, 8), (16, 8, 4), (4, 12, 12)]):
        start = [int(v) for v in lo + np.array(off)]
        sl = tuple(slice(s, s + 32) for s in start)
        aff = ct.affine.copy()
        aff[:3, 3] = ct.affine[:3, :3] @ np.array(start) + ct.affine[:3, 3]
        write_nifti(Image(ct.array[(slice(None),) + sl].astype(np.int16), ct.spacing, aff), images / f"ct{i}.nii.gz")
        write_nifti(Image((seg.array[(slice(None),) + sl] == 5).astype(np.uint8), ct.spacing, aff),
                    truth / f"ct{i}.nii.gz")
    shutil.copytree(CT / "example_ct_dicom", images / "dicom0")
    dseg = read_image(CT / "example_seg_dicom.nii.gz")
    write_nifti(dseg.with_array((dseg.array == 5).astype(np.uint8)), truth / "dicom0.nii.gz")
    proj = init_project(tmp_path / "P", images, classes=["background", "liver"], features=[4, 8, 16],
                        spacing=[6.0, 6.0, 6.0], patch=[16, 16, 16], progress=False)
    assert proj.config.normaliser.startswith("ct-window") and proj.config.dims == 3
    q = query_round(proj, "acft", 5, progress=False)
    assert sorted(q.cases) == ["ct0", "ct1", "ct2", "ct3", "dicom0"]
    assert (q.folder / "dicom0").is_dir()  # the DICOM series is copied whole for the annotator
    wrong = tmp_path / "wrong"  # a DICOM series given as a mask: read, on the grid, but CT values, not labels
    shutil.copytree(CT / "example_ct_dicom", wrong / "dicom0")
    with pytest.raises(ProblemsError) as err:
        import_labels(proj, wrong, progress=False)
    assert "'dicom0'" in str(err.value.problems) and "not allowed" in str(err.value.problems)
    res = import_labels(proj, _annotate(q.cases, truth, tmp_path / "lab"), progress=False)
    assert sorted(res.annotated) == sorted(q.cases)
    s = train_round(proj, epochs=1, batch_size=2, progress=False)
    assert s["n_train_labels"] == 4 and s["validation"]["n"] == 1

