"""Every verb refuses bad option values at parse time: exit 2, exactly one line on stderr, no traceback, and
nothing written (issue 18 item 4, issue 13 item 6)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aemia.cli.main import _from_argument_check, main

# verb, the required options ({in} is an existing folder, {out} a folder to create), then bad option values
BASE: dict[str, list[str]] = {
    "train": ["train", "--dataset", "kvasir", "--run", "{out}"],
    "predict": ["predict", "--run", "{in}", "--input", "{in}", "--out", "{out}"],
    "evaluate": ["evaluate", "--pred", "{in}", "--gt", "{in}", "--out", "{out}"],
    "demo": ["demo", "--out", "{out}"],
    "genesis": ["pretrain", "genesis", "--data", "kvasir", "--out", "{out}"],
    "transvw": ["pretrain", "transvw", "--data", "kvasir", "--out", "{out}"],
    "dira": ["pretrain", "dira", "--data", "kvasir", "--out", "{out}"],
    "caid": ["pretrain", "caid", "--data", "kvasir", "--out", "{out}"],
    "init": ["active", "init", "--images", "{in}", "--project", "{out}"],
    "query": ["active", "query", "--project", "{in}"],
    "import": ["active", "import", "--project", "{in}", "--labels", "{in}"],
    "atrain": ["active", "train", "--project", "{in}"],
    "simulate": ["active", "simulate", "--dataset", "kvasir", "--out", "{out}"],
    "review": ["review", "prioritize", "--predictions", "{in}", "--out", "{out}"],
    "synth": ["synth", "tumors", "--ct", "{in}", "--organ-mask", "{in}", "--out", "{out}"],
    "cam": ["weak", "cam", "--run", "{in}", "--out", "{out}"],
    "mbdcnn": ["semi", "mbdcnn", "--run", "{out}"],
    "ssac": ["semi", "ssac", "--dataset", "pneumoniamnist", "--run", "{out}"],
}

BAD: list[tuple[str, str, str]] = [
    *[("train", o, b) for o, b in [("--epochs", "0"), ("--batch-size", "0"), ("--size", "-5"), ("--size", "7"),
                                   ("--lr", "-1"), ("--lr", "nan"), ("--model", "nope"), ("--patch", "0,0,0"),
                                   ("--patch", "64,64"), ("--preset", "huge"), ("--features", "a,b"),
                                   ("--label-fraction", "0"), ("--label-fraction", "1.5"), ("--task", "x"),
                                   ("--optimizer", "x"), ("--schedule", "x"), ("--loss", "x"), ("--amp", "x"),
                                   ("--device", "bogus"), ("--spacing", "0,1,1"), ("--early-stopping", "-1"),
                                   ("--semi", "x"), ("--semi-weight", "-1"), ("--semi-threshold", "2"),
                                   ("--init", "text.png"), ("--init", "{in}/notes.txt"), ("--seed", "-1")]],
    *[("predict", o, b) for o, b in [("--device", "bogus"), ("--prune", "0"), ("--amp", "fp8")]],
    *[("evaluate", o, b) for o, b in [("--nsd-tolerance", "-1"), ("--n-bootstrap", "0"), ("--classes", "x=y")]],
    *[("demo", o, b) for o, b in [("--epochs", "0"), ("--size", "0"), ("--label-fraction", "2"),
                                  ("--pretrain", "x"), ("--device", "x")]],
    *[(v, o, b) for v in ("genesis", "transvw") for o, b in [
        ("--epochs", "0"), ("--size", "0,0"), ("--size", "64"), ("--dims", "4"), ("--batch-size", "0"),
        ("--optimizer", "x"), ("--lr", "0"), ("--model", "resnet"), ("--amp", "x")]],
    *[(v, o, b) for v in ("dira", "caid") for o, b in [
        ("--epochs", "0"), ("--size", "16"), ("--size", "40"), ("--batch-size", "0"), ("--optimizer", "x"), ("--queue", "0"),
        ("--momentum", "1"), ("--temperature", "0"), ("--key-bn-group", "-1"), ("--model", "resnet"), ("--amp", "x")]],
    *[("init", o, b) for o, b in [("--dropout", "2"), ("--size", "0"), ("--val-fraction", "1"), ("--task", "x"),
                                  ("--model", "x"), ("--pretrained", "missing.safetensors")]],
    *[("query", o, b) for o, b in [("--batch-size", "0"), ("--k", "0"), ("--strategy", "x"), ("--reduce", "x")]],
    *[("atrain", o, b) for o, b in [("--lr", "-1"), ("--hard-threshold", "5"), ("--epochs", "0"),
                                    ("--mode", "x"), ("--batch-size", "0")]],
    *[("simulate", o, b) for o, b in [("--strategy", "random,nope"), ("--rounds", "0"), ("--seeds", "0"),
                                      ("--dropout", "1"), ("--dataset", "x"), ("--per-round", "0")]],
    *[("review", o, b) for o, b in [("--std-threshold", "-1"), ("--opening-iterations", "-1"),
                                    ("--figure-cases", "-1")]],
    *[("synth", o, b) for o, b in [("--organ-label", "0"), ("--n", "0"), ("--type", "huge"), ("--per-bin", "0"),
                                   ("--vessel-labels", "a")]],
    *[("cam", o, b) for o, b in [("--split", "x"), ("--threshold", "2"), ("--figure-images", "-1")]],
    *[("mbdcnn", o, b) for o, b in [("--epochs-seg", "0"), ("--folds", "1"), ("--preset", "x"), ("--amp", "x")]],
    *[("ssac", o, b) for o, b in [("--label-fraction", "0"), ("--epochs-aae", "0"), ("--encoder", "x")]],
]


def _listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _run(tmp_path: Path, args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    inp = tmp_path / "in"
    inp.mkdir(exist_ok=True)
    (inp / "notes.txt").write_text("not a checkpoint")
    before = _listing(tmp_path)
    argv = [a.replace("{in}", str(inp)).replace("{out}", str(tmp_path / "out")) for a in args]
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        rc = main(argv)
    finally:
        os.chdir(cwd)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert _listing(tmp_path) == before, "something was written"
    return rc, [ln for ln in captured.err.splitlines() if ln.strip()]


@pytest.mark.parametrize("verb,option,bad", BAD, ids=[f"{v} {o} {b}" for v, o, b in BAD])
def test_bad_option_value_is_one_line_exit_2(verb: str, option: str, bad: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _run(tmp_path, [*BASE[verb], option, bad], capsys)
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("aemia: error: "), err
    assert option in err[0] or bad in err[0], err


OUT_VERBS = [v for v, args in BASE.items() if "{out}" in args and v != "init"]


@pytest.mark.parametrize("verb", OUT_VERBS)
def test_output_path_that_is_a_file_is_refused(verb: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "out").write_text("a file")
    rc, err = _run(tmp_path, BASE[verb], capsys)
    assert rc == 2 and len(err) == 1 and "is a file" in err[0], err


@pytest.mark.parametrize("verb", ["train", "predict", "genesis", "review"])
def test_output_folder_under_a_file_is_refused(verb: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "f").write_text("a file")
    args = [a.replace("{out}", str(tmp_path / "f" / "run")) for a in BASE[verb]]
    rc, err = _run(tmp_path, args, capsys)
    assert rc == 2 and len(err) == 1 and "under the file" in err[0], err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        args = [a.replace("{out}", str(locked / "run")) for a in BASE["train"]]
        rc, err = _run(tmp_path, args, capsys)
    finally:
        locked.chmod(0o700)
    assert rc == 2 and len(err) == 1 and "not writable" in err[0], err


def test_usage_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _run(tmp_path, ["train", "--dataset", "kvasir"], capsys)  # missing --run
    assert rc == 2 and len(err) == 1 and "--run" in err[0], err
    rc, err = _run(tmp_path, ["train", "--dataset", "kvasir", "--run", "x", "--no-such-option"], capsys)
    assert rc == 2 and len(err) == 1, err


def test_train_takes_its_defaults_from_the_dataclasses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No recipe number is repeated in the CLI: an option left out gets the TrainConfig/RunConfig default."""
    import aemia.recipes.run as run_mod
    from aemia.runs import RunConfig
    from aemia.train.trainer import TrainConfig

    seen = {}
    monkeypatch.setattr(run_mod, "train_run", lambda cfg, run, resume=False: seen.setdefault("cfg", cfg) and {})
    assert main(["train", "--data", "kvasir", "--out", str(tmp_path / "r")]) == 0  # new aliases of --dataset/--run
    cfg = seen["cfg"]
    from aemia.cli.train import DEFAULT_MIN_STEPS_2D

    assert cfg.train == TrainConfig(min_steps=DEFAULT_MIN_STEPS_2D)  # the one CLI-level choice: 2D trains by steps
    assert cfg.model == RunConfig(dataset="x").model
    seen.clear()
    assert main(["train", "-d", "kvasir", "-r", str(tmp_path / "r"), "--epochs", "3", "--no-deep-supervision"]) == 0
    assert seen["cfg"].train.epochs == 3 and seen["cfg"].train.deep_supervision is False
    assert seen["cfg"].train.min_steps == 0  # --epochs given: exactly that many
    seen.clear()
    assert main(["train", "-d", "kvasir", "-r", str(tmp_path / "r"), "--epochs", "3", "--min-steps", "40"]) == 0
    assert seen["cfg"].train.min_steps == 40
    seen.clear()  # the liver + tumour recipe trains by steps too (800 steps found no synthetic tumour)
    from aemia.cli.train import DEFAULT_MIN_STEPS_LIVER_TUMOR

    assert main(["train", "-d", "totalseg_ct", "-r", str(tmp_path / "lt"), "--task", "liver-tumor",
                 "--synthetic-tumors"]) == 0
    assert seen["cfg"].train.min_steps == DEFAULT_MIN_STEPS_LIVER_TUMOR == 1500


def test_pretrain_accepts_the_train_spellings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import aemia.pretrain.restore as restore

    seen = {}

    def fake(cfg, out, resume=False):  # noqa: ANN001, ANN202
        seen["cfg"], seen["out"] = cfg, out
        raise SystemExit(0)

    monkeypatch.setattr(restore, "pretrain", fake)
    main(["pretrain", "genesis", "--dataset", "kvasir", "--run", str(tmp_path / "g"), "--epochs", "2"])
    assert seen["cfg"].data == "kvasir" and seen["out"] == tmp_path / "g" and seen["cfg"].train.epochs == 2


def test_value_errors_count_as_argument_errors_only_from_config_checks() -> None:
    from dataclasses import dataclass

    @dataclass
    class Cfg:
        n: int

        def __post_init__(self) -> None:
            if self.n < 1:
                raise ValueError("n must be >= 1")

    with pytest.raises(ValueError) as info:
        Cfg(0)
    assert _from_argument_check(info.value)
    with pytest.raises(ValueError) as info:
        int("x")
    assert not _from_argument_check(info.value)
