"""Scale-out prediction: parts (job arrays, torchrun ranks), worker processes, resume, merge, ensembles."""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from aemia.cli.main import main
from aemia.data.io import read_image
from aemia.errors import InputError
from aemia.infer.batch import merge_outputs, predict_path
from aemia.infer.pool import chunks, prefetched, thread_budget
from aemia.infer.predictor import Predictor
from aemia.infer.records import RECORDS, read_record
from aemia.infer.shard import Shard

SRC = Path(__file__).resolve().parents[2] / "src"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1"}
CASES = [f"case_{i:02d}" for i in range(7)]


@pytest.fixture
def volumes(tmp_path: Path) -> Path:
    """Seven small CT-like volumes of different shapes and orientations."""
    folder = tmp_path / "cts"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, name in enumerate(CASES):
        shape = (14 + i, 12 + (i % 3), 10 + (i % 2))
        vol = rng.normal(0, 200, size=shape).astype(np.float32)
        aff = np.diag([1.5, 1.5, 2.0, 1.0]) if i % 2 else np.diag([-1.5, -1.5, 2.0, 1.0])
        nib.save(nib.Nifti1Image(vol, aff), str(folder / f"{name}.nii.gz"))
    return folder


@pytest.fixture
def run3d(make_run) -> Path:
    return make_run(3, name="run_a", normaliser="ct-window:-100,200", patch=[8, 8, 8])


def _contents(folder: Path) -> dict[str, bytes]:
    """Every output file's content (NIfTI decompressed: gzip headers carry a time stamp), hidden files left out."""
    files = {}
    for f in sorted(folder.rglob("*")):
        rel = f.relative_to(folder)
        if f.is_file() and not any(p.startswith(".") for p in rel.parts) and f.name != "summary.json":
            files[str(rel)] = gzip.decompress(f.read_bytes()) if f.name.endswith(".gz") else f.read_bytes()
    return files


def test_shard_split_is_deterministic_disjoint_and_complete() -> None:
    ids = [f"c{i}" for i in (5, 1, 9, 3, 7, 2, 8)]
    parts = [Shard(k, 3).select(ids) for k in range(3)]
    assert sorted(sum(parts, [])) == sorted(ids)
    assert all(not set(a) & set(b) for i, a in enumerate(parts) for b in parts[i + 1:])
    assert parts == [Shard(k, 3).select(list(reversed(ids))) for k in range(3)]  # input order does not matter
    with pytest.raises(InputError, match="part-id must be in 0..2"):
        Shard(3, 3)
    with pytest.raises(InputError, match="go together"):
        Shard.resolve(4, None)


def test_torchrun_environment_gives_the_part(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    assert Shard.resolve() == Shard(2, 4, torchrun=True)
    assert Shard.resolve(8, 1) == Shard(1, 8)  # explicit options win (e.g. torchrun inside a job array)
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert [thread_budget(w) for w in (1, 2, 3, 16)] == [8, 4, 2, 1]


def test_prefetch_keeps_order_and_passes_errors() -> None:
    def load(x: int) -> int:
        if x == 3:
            raise ValueError("bad 3")
        return x * 10

    got = list(prefetched(range(6), load, depth=2))
    assert [i for i, _ in got] == list(range(6))
    assert [r for i, r in got if i != 3] == [0, 10, 20, 40, 50]
    assert isinstance(got[3][1], ValueError)
    assert [len(c) for c in chunks(list(range(40)), 2)] == [5] * 8


def test_parts_union_equals_unsharded_bit_for_bit(run3d: Path, make_run, volumes: Path, tmp_path: Path) -> None:
    """An ensemble with saved probabilities: one process vs three job-array parts."""
    run_b = make_run(3, name="run_b", normaliser="ct-window:-100,200", patch=[8, 8, 8], features=[4, 4])
    runs = [run3d, run_b]
    whole = tmp_path / "whole"
    predict_path(runs, volumes, whole, progress=False, save_probs=True)
    parted = tmp_path / "parted"
    for k in range(3):
        predict_path(runs, volumes, parted, progress=False, save_probs=True, num_parts=3, part_id=k)
    report = merge_outputs(runs, volumes, parted, save_probs=True)
    assert report.complete and report.done == len(CASES)
    a, b = _contents(whole), _contents(parted)
    assert sorted(a) == sorted(b) and len([k for k in a if k.startswith("probs/run_a/")]) == len(CASES)
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]]
    summary = json.loads((whole / "summary.json").read_text())
    assert summary["complete"] and summary["model_loads"] == 2 and summary["worker_processes"] == 1
    summary = json.loads((parted / "summary.json").read_text())  # 3 parts, each loading both runs once
    assert summary["worker_processes"] == 3 and summary["model_loads"] == 6


def test_saved_probabilities_are_quantised_probabilities_in_the_input_geometry(run3d: Path, volumes: Path,
                                                                               tmp_path: Path) -> None:
    out = tmp_path / "pred"
    predict_path([run3d], volumes / "case_00.nii.gz", out, progress=False, save_probs=True)
    stored = nib.load(str(out / "probs" / "run_a" / "case_00.nii.gz"))
    src = nib.load(str(volumes / "case_00.nii.gz"))  # LPS-stored: probabilities come back in the stored order
    assert stored.get_data_dtype() == np.uint8 and stored.shape == (*src.shape, 2)
    np.testing.assert_allclose(stored.affine, src.affine)
    image = read_image(volumes / "case_00.nii.gz")
    exact = Predictor.from_run(run3d, device="cpu").probabilities(image)  # RAS order
    got = np.asarray(stored.dataobj, dtype=np.float32)[::-1, ::-1]  # stored LPS -> RAS (flip x, y)
    assert np.abs(np.moveaxis(got, -1, 0) - exact).max() <= 0.5 / 255 + 1e-6
    assert json.loads((out / "probs" / "organs.json").read_text()) == {"1": "class1"}


def _kill_script(tmp_path: Path) -> Path:
    """Predicts with one worker in this process; the 4th NIfTI write leaves half a temp file and SIGKILLs."""
    script = tmp_path / "killed_predict.py"
    script.write_text(
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "import aemia.infer.cases as cases\n"
        "from aemia.infer.batch import predict_path\n"
        "real, calls = cases.write_nifti, [0]\n"
        "def dying(image, path, like=None):\n"
        "    calls[0] += 1\n"
        "    if calls[0] == 4:\n"
        "        path = Path(path)\n"
        "        (path.parent / ('.' + path.name + '.half.nii.gz')).write_bytes(b'\\x1f\\x8b half written')\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(image, path, like)\n"
        "cases.write_nifti = dying\n"
        "predict_path(sys.argv[1], sys.argv[2], sys.argv[3], progress=False)\n")
    return script


def test_a_killed_part_resumes_without_rewriting_finished_cases(run3d: Path, volumes: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "pred"
    proc = subprocess.run([sys.executable, str(_kill_script(tmp_path)), str(run3d), str(volumes), str(out)],
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    done = sorted(p.name for p in out.glob("*.nii.gz") if not p.name.startswith("."))
    assert done == [f"{c}.nii.gz" for c in CASES[:3]] and (out / ".case_03.nii.gz.half.nii.gz").exists()
    assert not (out / RECORDS / "case_03.json").exists() and not (out / "summary.json").exists()
    before = {c: (out / f"{c}.nii.gz").stat().st_mtime_ns for c in CASES[:3]}

    import aemia.infer.cases as cases

    written: list[str] = []
    real = cases.write_nifti
    monkeypatch.setattr(cases, "write_nifti", lambda image, path, like=None: written.append(Path(path).name)
                        or real(image, path, like))
    predict_path(run3d, volumes, out, progress=False)
    assert written == [f"{c}.nii.gz" for c in CASES[3:]], "finished cases are not predicted again"
    assert {c: (out / f"{c}.nii.gz").stat().st_mtime_ns for c in CASES[:3]} == before
    assert not (out / ".case_03.nii.gz.half.nii.gz").exists(), "the merge removes a killed process's temp file"
    assert json.loads((out / "summary.json").read_text())["complete"]
    whole = tmp_path / "whole"
    predict_path(run3d, volumes, whole, progress=False)
    assert _contents(whole) == _contents(out)


def test_merge_lists_missing_parts_then_completes(run3d: Path, volumes: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pred"
    base = ["predict", "--run", str(run3d), "--input", str(volumes), "--out", str(out)]
    assert main([*base, "--num-parts", "2", "--part-id", "1"]) == 0
    assert not (out / "summary.json").exists(), "a job-array part does not merge by itself"
    capsys.readouterr()
    assert main([*base, "--merge"]) == 2
    assert "4 case(s) not predicted yet (first: case_00)" in capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["missing"] == Shard(0, 2).select(CASES) and summary["done"] == 3
    assert main([*base, "--num-parts", "2", "--part-id", "0"]) == 0
    assert main([*base, "--merge"]) == 0
    assert json.loads((out / "summary.json").read_text())["complete"]
    assert not (out / "failures.csv").exists()


def test_a_failing_case_is_named_the_others_finish_and_the_exit_code_is_2(run3d: Path, volumes: Path,
                                                                         tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Two spawned worker processes, one case failing inside a worker; the others equal one-process outputs."""
    whole = tmp_path / "whole"
    predict_path(run3d, volumes, whole, progress=False)
    out = tmp_path / "pred"
    (out / "case_02.nii.gz").mkdir(parents=True)  # the worker cannot write this case's mask
    rc = main(["predict", "--run", str(run3d), "--input", str(volumes), "--out", str(out), "--workers", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and "1 case(s) failed (first: case_02: IsADirectoryError" in err, err
    assert sorted(p.name for p in out.glob("*.nii.gz") if p.is_file()) == [f"{c}.nii.gz" for c in CASES if c != "case_02"]
    rows = (out / "failures.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("case_02,") and "Is a directory" in rows[1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["done"] == 6 and summary["failed"][0]["case"] == "case_02" and summary["model_loads"] == 2
    assert os.getpid() not in {read_record(out, c).pid for c in CASES}
    expected = {k: v for k, v in _contents(whole).items() if not k.startswith("case_02")}
    assert {k: v for k, v in _contents(out).items() if k.endswith(".nii.gz")} == expected
    (out / "case_02.nii.gz").rmdir()
    assert main(["predict", "--run", str(run3d), "--input", str(volumes), "--out", str(out)]) == 0  # resumes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_torchrun_ranks_split_the_cases_without_overlap(run3d: Path, volumes: Path, tmp_path: Path) -> None:
    out = tmp_path / "pred"
    # -r, not --run: torchrun's own parser takes --run as an abbreviation of its --run-path
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "aemia.cli.main", "predict", "-r", str(run3d),
           "--input", str(volumes), "--out", str(out)]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    by_pid: dict[int, list[str]] = {}
    for c in CASES:
        by_pid.setdefault(read_record(out, c).pid, []).append(c)
    assert sorted(by_pid.values()) == [Shard(0, 2).select(CASES), Shard(1, 2).select(CASES)]
    summary = json.loads((out / "summary.json").read_text())  # rank 0 merged after both ranks finished
    assert summary["complete"] and summary["done"] == len(CASES) and summary["parts"] == 2


def test_ensemble_probabilities_feed_review_prioritize(run3d: Path, make_run, volumes: Path, tmp_path: Path) -> None:
    run_b = make_run(3, name="run_b", normaliser="ct-window:-300,300", patch=[8, 8, 8], features=[4, 4])
    out = tmp_path / "pred"
    assert main(["predict", "--runs", f"{run3d},{run_b}", "--save-probs", "--input", str(volumes),
                 "--out", str(out)]) == 0
    assert sorted(p.name for p in (out / "probs").iterdir()) == ["organs.json", "run_a", "run_b"]
    assert main(["review", "prioritize", "--predictions", str(out / "probs"), "--out", str(tmp_path / "review"),
                 "--quiet", "--figure-cases", "0"]) == 0
    rows = (tmp_path / "review" / "priority.csv").read_text().splitlines()
    assert len(rows) == 1 + len(CASES)


def test_ensemble_and_probability_options_are_checked(run3d: Path, make_run, volumes: Path, tmp_path: Path) -> None:
    run2d = make_run(2, name="run2d")
    with pytest.raises(InputError, match="same task, dimensionality"):
        predict_path([run3d, run2d], volumes, tmp_path / "o", progress=False)
    with pytest.raises(InputError, match="save-probs writes 3D"):
        predict_path(run2d, volumes, tmp_path / "o2", progress=False, save_probs=True)


def test_review_prioritize_parts_equal_one_process(run3d: Path, make_run, volumes: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    run_b = make_run(3, name="run_b", normaliser="ct-window:-300,300", patch=[8, 8, 8], features=[4, 4])
    pred = tmp_path / "pred"
    predict_path([run3d, run_b], volumes, pred, progress=False, save_probs=True)
    review = ["review", "prioritize", "--predictions", str(pred / "probs"), "--quiet", "--figure-cases", "2",
              "--entropy-threshold", "0.3", "--opening-iterations", "0"]
    assert main([*review, "--out", str(tmp_path / "whole")]) == 0
    parted = tmp_path / "parted"
    for k in (0, 2):
        assert main([*review, "--out", str(parted), "--num-parts", "3", "--part-id", str(k)]) == 0
    assert not (parted / "priority.csv").exists()
    capsys.readouterr()
    assert main([*review, "--out", str(parted), "--merge"]) == 2
    assert "1 of 3 part(s) not finished (part id(s) 1)" in capsys.readouterr().err
    stamp = (parted / "attention" / "case_00_flags.nii.gz").stat().st_mtime_ns
    for k in (0, 1):  # part 0 finished already: skipped, its maps untouched
        assert main([*review, "--out", str(parted), "--num-parts", "3", "--part-id", str(k)]) == 0
    assert (parted / "attention" / "case_00_flags.nii.gz").stat().st_mtime_ns == stamp
    assert main([*review, "--out", str(parted), "--merge"]) == 0
    whole, merged = _contents(tmp_path / "whole"), _contents(parted)
    assert sorted(whole) == sorted(merged) and len([k for k in whole if k.startswith("attention/")]) == 3 * len(CASES)
    assert all(whole[k] == merged[k] for k in whole if k not in ("review.json", "priority.png"))
    a, b = (json.loads((d / "review.json").read_text()) for d in (tmp_path / "whole", parted))
    assert a["cases"] == b["cases"] and (a["parts"], b["parts"]) == (1, 3)
    assert float(a["cases"][0]["attention_mm3"]) > 0, "the two models disagree somewhere"
    assert not [p for p in parted.iterdir() if p.name.startswith(".")]
