"""The command line end to end on real Kvasir data (tiny budget), and its error contract:
one line naming the file and the problem, exit code 2, nothing half-written."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from aemia.cli.main import main

DATA = Path(os.environ.get("AEMIA_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data"))
KVASIR = DATA / "kvasir_seg_256"
needs_data = pytest.mark.needs_data("kvasir_seg_256")

COMMANDS = [["train"], ["predict"], ["evaluate"], ["demo"], ["data", "list"], ["data", "check"],
            ["pretrain", "genesis"], ["pretrain", "transvw"], ["pretrain", "dira"], ["pretrain", "caid"], ["active", "init"], ["active", "query"],
            ["active", "import"], ["active", "train"], ["active", "status"], ["review", "prioritize"],
            ["synth", "tumors"], ["active", "simulate"], ["weak", "cam"], ["semi", "mbdcnn"], ["semi", "ssac"]]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c))
def test_every_command_has_help_with_an_example(cmd: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*cmd, "--help"]) == 0
    assert "Example: aemia " in capsys.readouterr().out.replace("\n", " ")


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1, err
    assert err[0].startswith("aemia: error: ")
    return err[0]


@pytest.fixture(scope="module")
def kvasir_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not KVASIR.is_dir():
        pytest.skip("Kvasir data not found")
    run = tmp_path_factory.mktemp("runs") / "kv"
    rc = main(["train", "--dataset", "kvasir", "--model", "unetpp", "--preset", "tiny", "--label-fraction", "0.03",
               "--epochs", "2", "--size", "32", "--batch-size", "4", "--run", str(run)])
    assert rc == 0
    return run


@needs_data
def test_train_writes_a_complete_run_folder(kvasir_run: Path) -> None:
    for name in ("config.yaml", "splits.json", "log.jsonl", "metrics.json", "per_case.csv", "report.html",
                 "checkpoints/best.safetensors", "checkpoints/best.json", "checkpoints/last.safetensors"):
        assert (kvasir_run / name).is_file(), name
    splits = json.loads((kvasir_run / "splits.json").read_text())
    assert len(splits["labelled"]) == 24  # ceil(0.03 * 798)
    assert set(splits["labelled"]) <= set(splits["splits"]["train"])
    assert not set(splits["splits"]["train"]) & set(splits["splits"]["test"])
    metrics = json.loads((kvasir_run / "metrics.json").read_text())
    dice = metrics["segmentation"]["polyp"]["dice"]
    assert dice["n"] == 100 and dice["ci"][0] <= dice["mean"] <= dice["ci"][1]
    assert len((kvasir_run / "log.jsonl").read_text().splitlines()) == 2
    html = (kvasir_run / "report.html").read_text()
    assert "Learning curves" in html and "data:image/png;base64" in html
    assert not list(kvasir_run.rglob(".*.tmp")) and not [p for p in kvasir_run.rglob("*") if p.name.startswith(".")]


@needs_data
def test_train_refuses_to_overwrite_a_run_without_resume(kvasir_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["train", "--dataset", "kvasir", "--epochs", "1", "--run", str(kvasir_run)])
    assert rc == 2
    assert "--resume" in _one_error_line(capsys)


@needs_data
def test_predict_keeps_geometry_and_prune_mode_works(kvasir_run: Path, tmp_path: Path) -> None:
    images = sorted((KVASIR / "images").glob("*.jpg"))[:3]
    inp = tmp_path / "in"
    inp.mkdir()
    for p in images:
        shutil.copy(p, inp / p.name)
    for extra, out in (([], tmp_path / "full"), (["--prune", "1", "--tta"], tmp_path / "pruned")):
        assert main(["predict", "--run", str(kvasir_run), "--input", str(inp), "--out", str(out), *extra]) == 0
        masks = sorted(out.glob("*.png"))
        assert [m.stem for m in masks] == [p.stem for p in images]
        for m in masks:
            arr = np.asarray(PILImage.open(m))
            assert arr.shape == (256, 256) and set(np.unique(arr)) <= {0, 255}
    gt = tmp_path / "gt"
    gt.mkdir()
    for p in images:
        shutil.copy(KVASIR / "masks" / p.name, gt / p.name)
    assert main(["evaluate", "--pred", str(tmp_path / "full"), "--gt", str(gt), "--out", str(tmp_path / "ev")]) == 0
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["n_cases"] == 3


@needs_data
def test_wrong_channel_count_is_one_line_exit_2(kvasir_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gray = tmp_path / "gray.png"
    PILImage.fromarray(np.zeros((64, 64), np.uint8)).save(gray)
    out = tmp_path / "out"
    assert main(["predict", "--run", str(kvasir_run), "--input", str(gray), "--out", str(out)]) == 2
    line = _one_error_line(capsys)
    assert "gray.png" in line and "1 channel" in line and "expects 3" in line
    assert not out.exists() or not any(out.iterdir())


@needs_data
@pytest.mark.parametrize("kind", ["non_image", "truncated_nifti", "empty_folder"])
def test_bad_predict_inputs(kvasir_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    if kind == "non_image":
        bad = tmp_path / "notes.png"
        bad.write_text("this is not an image")
    elif kind == "truncated_nifti":
        import nibabel as nib

        full = tmp_path / "full.nii.gz"
        nib.save(nib.Nifti1Image(np.zeros((16, 16, 16), np.float32), np.eye(4)), full)
        bad = tmp_path / "cut.nii.gz"
        bad.write_bytes(full.read_bytes()[:200])
    else:
        bad = tmp_path / "empty"
        bad.mkdir()
    out = tmp_path / "out"
    assert main(["predict", "--run", str(kvasir_run), "--input", str(bad), "--out", str(out)]) == 2
    assert bad.name in _one_error_line(capsys)
    assert not out.exists() or not any(out.iterdir())


@needs_data
def test_checkpoint_with_missing_keys_is_refused(kvasir_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(kvasir_run, broken)
    state = load_file(str(broken / "checkpoints" / "best.safetensors"))
    state.pop(sorted(state)[0])
    save_file(state, str(broken / "checkpoints" / "best.safetensors"))
    img = sorted((KVASIR / "images").glob("*.jpg"))[0]
    assert main(["predict", "--run", str(broken), "--input", str(img), "--out", str(tmp_path / "o")]) == 2
    line = _one_error_line(capsys)
    assert "best.safetensors" in line and "missing 1" in line


def test_unknown_dataset_and_bad_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--dataset", "nope", "--run", str(tmp_path / "r")]) == 2
    assert "unknown data set 'nope'" in _one_error_line(capsys)
    assert main(["predict", "--run", str(tmp_path), "--input", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "config.yaml" in _one_error_line(capsys)


def _blob_msd(folder: Path) -> Path:
    from aemia.data.dataset import write_msd
    from aemia.data.image import Image

    rng = np.random.default_rng(0)
    aff = np.diag([1.5, 1.5, 2.0, 1.0])
    aff[:3, 3] = (-20.0, 10.0, 5.0)
    cases = []
    for i in range(10):
        img = rng.normal(size=(1, 24, 24, 20)).astype(np.float32)
        lab = np.zeros((24, 24, 20), np.uint8)
        c = rng.integers(6, 14, 3)
        lab[c[0] - 4 : c[0] + 4, c[1] - 4 : c[1] + 4, c[2] - 4 : c[2] + 4] = 1
        img[0][lab == 1] += 2.0
        cases.append((f"blob{i:03d}", Image(img, (1.5, 1.5, 2.0), aff), Image(lab[None], (1.5, 1.5, 2.0), aff)))
    return write_msd(folder, "Dataset001_Blob", cases, {0: "background", 1: "blob"}, {0: "MRI"}).root


def test_an_nnunet_folder_trains_unchanged_and_3d_predictions_keep_geometry(tmp_path: Path) -> None:
    import nibabel as nib

    msd = _blob_msd(tmp_path / "Dataset001_Blob")
    run = tmp_path / "run"
    assert main(["train", "--dataset", str(msd), "--preset", "tiny", "--patch", "16,16,16", "--epochs", "3",
                 "--lr", "0.003", "--run", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["segmentation"]["blob"]["dice"]["mean"] > 0.5  # a bright cube is easy: it must be learnt
    src = msd / "imagesTr" / "blob000_0000.nii.gz"
    assert main(["predict", "--run", str(run), "--input", str(src), "--out", str(tmp_path / "pred")]) == 0
    pred, ref = nib.load(tmp_path / "pred" / "blob000_0000.nii.gz"), nib.load(src)
    assert pred.shape == ref.shape[:3] and np.allclose(pred.affine, ref.affine)
