"""The bad-input corpus through every verb it applies to (issue 18): exit 2, one error line, no traceback,
nothing written; every problem listed before any work."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from corpus import BAD_FILES, MSD_DEFECTS, fake_run, label_map, msd, picture, run_cli, volume


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("corpus")
    return {name: make(d) for name, make in BAD_FILES.items()}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_data_check_refuses_each_bad_file(name: str, corpus: dict[str, Path]) -> None:
    res = run_cli(["data", "check", corpus[name]], corpus[name].parent)
    assert res.ok, res
    assert str(corpus[name]) in res.out  # the problem line names the file
    assert "OK" not in res.out


@pytest.mark.parametrize("defect", MSD_DEFECTS)
def test_data_check_and_train_refuse_a_bad_msd_folder(defect: str, tmp_path: Path) -> None:
    root = msd(tmp_path / "ds", defect=defect)
    words = {"label-value": "label values [7]", "spacing": "spacing", "shape": "shape", "nan": "NaN",
             "4d": "is 4D", "no-json": "no dataset.json"}[defect]
    check = run_cli(["data", "check", root], tmp_path)
    assert check.ok and words in check.out + check.err_lines[0], check
    train = run_cli(["train", "--dataset", root, "--run", tmp_path / "run", "--epochs", "1"], tmp_path)
    assert train.ok and words in train.out + train.err_lines[0], train
    assert not (tmp_path / "run").exists()


def test_a_good_msd_folder_passes_the_check(tmp_path: Path) -> None:
    res = run_cli(["data", "check", msd(tmp_path / "ds")], tmp_path)
    assert res.rc == 0 and "OK: 2 cases" in res.out, res


@pytest.fixture(scope="module")
def run2d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake_run(tmp_path_factory.mktemp("run") / "run")


def _mixed_inputs(folder: Path, corpus: dict[str, Path]) -> list[str]:
    picture(folder / "good_a.png")
    picture(folder / "good_b.png")
    bad = ["text.png", "truncated.png", "nan.nii.gz"]
    for name in bad:
        (folder / name).write_bytes(corpus[name].read_bytes())
    return bad


def test_predict_refuses_a_batch_with_bad_inputs_before_writing(run2d: Path, corpus: dict[str, Path],
                                                                tmp_path: Path) -> None:
    bad = _mixed_inputs(tmp_path / "in", corpus)
    res = run_cli(["predict", "--run", run2d, "--input", tmp_path / "in", "--out", tmp_path / "out",
                   "--device", "cpu"], tmp_path)
    assert res.ok, res
    assert not (tmp_path / "out").exists()
    assert all(name in res.out for name in bad)  # every problem listed, not only the first
    assert "is a 3D volume" in res.out  # a volume given to a 2D model, not a channel-count message


def test_predict_skip_bad_writes_the_good_ones_and_failures_csv(run2d: Path, corpus: dict[str, Path],
                                                                tmp_path: Path) -> None:
    bad = _mixed_inputs(tmp_path / "in", corpus)
    res = run_cli(["predict", "--run", run2d, "--input", tmp_path / "in", "--out", tmp_path / "out",
                   "--device", "cpu", "--skip-bad"], tmp_path)
    assert res.rc == 2 and len(res.err_lines) == 1 and not res.traceback, res
    written = sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith("."))  # .aemia-predict
    assert written == ["failures.csv", "good_a.png", "good_b.png", "summary.json"]  # records: resume, not output
    rows = list(csv.DictReader((tmp_path / "out" / "failures.csv").open()))
    assert sorted({Path(r["path"]).name for r in rows}) == sorted(bad)


def test_predict_on_good_inputs_still_works(run2d: Path, tmp_path: Path) -> None:
    picture(tmp_path / "in" / "a.png")
    res = run_cli(["predict", "--run", run2d, "--input", tmp_path / "in", "--out", tmp_path / "out",
                   "--device", "cpu"], tmp_path)
    assert res.rc == 0, res
    assert (tmp_path / "out" / "a.png").is_file()


@pytest.mark.parametrize("pred", ["4d", "nan", "spacing", "fraction"])
def test_evaluate_refuses_predictions_it_cannot_score(pred: str, tmp_path: Path) -> None:
    gt = label_map(tmp_path / "gt" / "case_a.nii.gz")
    target = tmp_path / "pred" / "case_a.nii.gz"
    if pred == "4d":
        volume(target, channels=2, value=1.0)
    elif pred == "nan":
        volume(target, nan=True, value=1.0)
    elif pred == "spacing":
        label_map(target, spacing=(2.0, 2.0, 2.0))
    else:
        volume(target, value=0.5)
    res = run_cli(["evaluate", "--pred", tmp_path / "pred", "--gt", gt.parent, "--out", tmp_path / "eval"], tmp_path)
    assert res.ok, res
    assert not (tmp_path / "eval").exists()


def _ct_and_mask(tmp_path: Path, nan: bool = False) -> tuple[Path, Path]:
    ct = volume(tmp_path / "ct.nii.gz", shape=(24, 24, 16), nan=nan, value=40.0)
    if nan:
        import nibabel as nib

        arr = np.asarray(nib.load(ct).dataobj)
        assert np.isnan(arr).any()
    lab = np.zeros((24, 24, 16), np.uint8)
    lab[4:20, 4:20, 3:13] = 5
    from aemia.data.image import Image
    from aemia.data.io import write_nifti

    mask = write_nifti(Image(lab[None], (1.0, 1.5, 2.0), np.diag([1.0, 1.5, 2.0, 1.0])), tmp_path / "mask.nii.gz")
    return ct, mask


def test_synth_refuses_a_ct_with_nan_voxels(tmp_path: Path) -> None:
    ct, mask = _ct_and_mask(tmp_path, nan=True)
    res = run_cli(["synth", "tumors", "--ct", ct, "--organ-mask", mask, "--organ-label", "5", "--n", "1",
                   "--out", tmp_path / "out"], tmp_path)
    assert res.ok and "NaN" in res.err_lines[0], res


def test_synth_geometry_message_names_what_differs(tmp_path: Path) -> None:
    ct, _ = _ct_and_mask(tmp_path)
    lab = np.zeros((24, 24, 16), np.uint8)
    lab[4:20, 4:20, 3:13] = 5
    from aemia.data.image import Image
    from aemia.data.io import write_nifti

    mask = write_nifti(Image(lab[None], (1.0, 1.0, 1.0), np.eye(4)), tmp_path / "other.nii.gz")
    res = run_cli(["synth", "tumors", "--ct", ct, "--organ-mask", mask, "--organ-label", "5", "--n", "1",
                   "--out", tmp_path / "out"], tmp_path)
    assert res.ok and "spacing [1.0, 1.0, 1.0] vs [1.0, 1.5, 2.0]" in res.err_lines[0], res


def test_resume_refuses_changed_settings_by_name(tmp_path: Path) -> None:
    from aemia.runs import RunConfig, RunFolder
    from aemia.train.trainer import TrainConfig

    run = tmp_path / "run"
    RunFolder(run).save_config(RunConfig(dataset="kvasir", size=64, train=TrainConfig(epochs=5)))
    res = run_cli(["train", "--dataset", "kvasir", "--run", run, "--resume", "--epochs", "9", "--size", "32",
                   "--lr", "0.001"], tmp_path)
    assert res.ok, res
    line = res.err_lines[0]
    assert "--epochs 9 (the run has 5)" in line and "--size 32 (the run has 64)" in line and "--lr" not in line


def test_malformed_config_yaml_is_one_line(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("dataset: [kvasir\nmodel: {unet\n  size: :\n")
    picture(tmp_path / "in" / "a.png")
    res = run_cli(["predict", "--run", run, "--input", tmp_path / "in", "--out", tmp_path / "out"], tmp_path)
    assert res.ok and "config.yaml" in res.err_lines[0], res


@pytest.mark.parametrize("method", ["genesis", "transvw"])
def test_pretrain_lists_every_bad_image_of_a_folder_before_writing(method: str, corpus: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    folder = tmp_path / "unlabelled"
    picture(folder / "good.png")
    bad = ["text.png", "empty.nii.gz", "nan.nii.gz"]
    for name in bad:
        (folder / name).write_bytes(corpus[name].read_bytes())
    res = run_cli(["pretrain", method, "--data", folder, "--out", tmp_path / "out", "--epochs", "1"], tmp_path)
    assert res.ok, res
    assert not (tmp_path / "out").exists()
    assert all(name in res.out for name in bad)  # every problem, not the first
    assert "expected 2D images" in res.out  # the NIfTI volumes in a --dims 2 pretraining
    check = run_cli(["data", "check", folder], tmp_path)  # the same checks (data check has no --dims)
    assert check.ok and all(name in check.out for name in bad), check


def test_pretrain_3d_refuses_pictures(tmp_path: Path) -> None:
    volume(tmp_path / "in" / "a.nii.gz")
    picture(tmp_path / "in" / "sub" / "b.png")  # folders are searched recursively, as data check does
    res = run_cli(["pretrain", "genesis", "--dims", "3", "--data", tmp_path / "in", "--out", tmp_path / "out"],
                  tmp_path)
    assert res.ok and "b.png: is a 2D picture" in res.err_lines[0], res


def test_pretraining_images_agrees_with_the_folder_pretrain_reads(tmp_path: Path) -> None:
    from aemia.data.preflight import pretraining_images
    from aemia.pretrain.restore import _images

    picture(tmp_path / "a.png")
    picture(tmp_path / "sub" / "b.png")
    (tmp_path / "notes.txt").write_text("metadata is skipped")
    assert pretraining_images(str(tmp_path), 2) == []
    images, _, _ = _images(str(tmp_path))
    assert sorted(Path(i.path).name for i in images) == ["a.png", "b.png"]
    assert pretraining_images("kvasir", 3, ["kvasir"]) == []  # bundled data sets are trusted


def test_active_init_lists_every_bad_picture_before_writing(corpus: dict[str, Path], tmp_path: Path) -> None:
    images = tmp_path / "pool"
    picture(images / "a.png")
    picture(images / "a.jpg")  # the same case id twice
    picture(images / "b.png")
    for name in ("text.png", "truncated.png", "empty.nii.gz"):
        (images / name).write_bytes(corpus[name].read_bytes())
    res = run_cli(["active", "init", "--images", images, "--project", tmp_path / "P", "--size", "32"], tmp_path)
    assert res.ok, res
    assert not (tmp_path / "P").exists()
    lines = res.out.splitlines()
    assert len(lines) == 4, lines  # one problem per line
    assert all(any(name in ln for ln in lines) for name in ("a.png", "text.png", "truncated.png", "empty.nii.gz"))
    assert "4 problems" in res.err_lines[0]


@pytest.mark.parametrize("defect", ["nan", "fraction", "4d"])
def test_synth_refuses_an_organ_mask_that_is_not_a_label_map(defect: str, tmp_path: Path) -> None:
    ct, _ = _ct_and_mask(tmp_path)
    mask = volume(tmp_path / "m.nii.gz", shape=(24, 24, 16), value=0.5 if defect == "fraction" else 5.0,
                  nan=defect == "nan", channels=2 if defect == "4d" else 1, spacing=(1.0, 1.5, 2.0))
    res = run_cli(["synth", "tumors", "--ct", ct, "--organ-mask", mask, "--organ-label", "5", "--n", "1",
                   "--out", tmp_path / "out"], tmp_path)
    words = {"nan": "NaN", "fraction": "non-integer", "4d": "is 4D"}[defect]
    assert res.ok and words in res.err_lines[0], res


@pytest.mark.parametrize("verb", [["predict", "--run", "{run}", "--input", "{in}", "--device", "cpu"],
                                  ["train", "--dataset", "kvasir", "--epochs", "1"],
                                  ["pretrain", "genesis", "--data", "kvasir"]])
def test_an_output_folder_that_cannot_be_created_is_refused_at_parse_time(verb: list[str], run2d: Path,
                                                                          tmp_path: Path) -> None:
    picture(tmp_path / "in" / "a.png")
    argv = [a.replace("{run}", str(run2d)).replace("{in}", str(tmp_path / "in")) for a in verb]
    res = run_cli([*argv, "--out" if verb[0] != "train" else "--run", "/proc/aemia_cannot_write/run"], tmp_path)
    assert res.ok and "not writable" in res.err_lines[0], res  # root passes os.access: the check must try
