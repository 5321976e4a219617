"""Benchmark part ``busi_active_cli`` of ``training_stability.json`` (issue 12): the active-learning cycle as a
user runs it, through the real CLI, on BUSI (3 classes: normal, benign, malignant).

Per strategy (``random``, ``acft``) and seed: ``aemia active init`` on BUSI's training split (546 pictures, CLI
defaults: classification, 128 px, ResNet 16-32-64-128, validation fraction 0.2), then ``rounds`` times
``aemia active query --k per_round`` → import the true labels of the queried cases (the simulated annotator) →
``aemia active train`` with CLI defaults (20 epochs, mode all-labelled, promotion only when not worse). After
each round the *project model* (the latest promoted round, ``summary.json: project_model``) predicts BUSI's 156
test pictures with ``aemia predict --run P/models/round_NN``; its accuracy is the round's figure. The first
query is the random cold start for both strategies.

Writes ``{"random": [test accuracy per round], "acft": [...], "labels": [annotated cases per round],
"command", "date", "machine", ...}``; with several seeds a strategy's list is the mean over seeds and
``"<strategy>_seeds"`` holds each seed's list. Target (issue 12): no round more than 0.03 below the previous.

    python benchmarks/training_stability_parts/busi_active_cli.py --out benchmarks/results/busi_active_cli.json

``--quick`` (2 rounds of 10, 1 epoch, 32 px, small network, 60 test pictures) checks the plumbing in a minute.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "src"))

from provenance import provenance  # noqa: E402

from aemia.utils.io import write_json_atomic  # noqa: E402

STRATEGIES = ("random", "acft")
DATASET = "busi"  # aemia.data.catalog name of /work/shared/data/busi_classification


def _cli(*args: str, log: Path) -> None:
    """Run ``python -m aemia.cli.main ARGS`` (the installed CLI of this checkout); raise on failure."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "aemia.cli.main", *args]
    with log.open("a") as fh:
        fh.write("$ aemia " + " ".join(args) + "\n")
        fh.flush()
        res = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if res.returncode != 0:
        raise RuntimeError(f"`aemia {' '.join(args)}` failed with exit code {res.returncode}; see {log}")


def _copy_split(cases: Sequence[Any], folder: Path) -> dict[str, int]:
    """Copy the pictures of ``cases`` to ``folder/<case id>.png``; returns ``{case id: class index}``."""
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for c in cases:
        shutil.copyfile(c.images[0], folder / f"{c.id}.png")
        truth[c.id] = int(c.target)
    return truth


def _test_accuracy(run: Path, test_dir: Path, truth: dict[str, int], work: Path, log: Path) -> float:
    out = work / f"pred_{run.name}"
    if out.exists():
        shutil.rmtree(out)
    _cli("predict", "--run", str(run), "--input", str(test_dir), "--out", str(out), log=log)
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    return sum(int(r["predicted_class"]) == truth[r["case"]] for r in rows) / len(rows)


def run_one(strategy: str, seed: int, work: Path, pool_dir: Path, test_dir: Path, pool_truth: dict[str, int],
            test_truth: dict[str, int], classes: list[str], *, rounds: int, per_round: int,
            init_args: Sequence[str] = (), train_args: Sequence[str] = ()) -> dict[str, Any]:
    """One project: init, then ``rounds`` × (query, import the truth, train, test the project model)."""
    proj = work / f"{strategy}_seed{seed}"
    if proj.exists():
        shutil.rmtree(proj)
    log = work / f"{strategy}_seed{seed}.log"
    log.write_text("")
    _cli("active", "init", "--images", str(pool_dir), "--project", str(proj), "--task", "classification",
         "--classes", ",".join(classes), "--seed", str(seed), *init_args, log=log)
    acc, labels, rows = [], [], []
    for r in range(rounds):
        _cli("active", "query", "--project", str(proj), "--strategy", strategy, "--k", str(per_round), log=log)
        with (proj / "rounds" / f"{r:02d}" / "worklist.csv").open() as fh:
            queried = [row["case"] for row in csv.DictReader(fh)]
        label_csv = work / f"{strategy}_seed{seed}_labels_{r:02d}.csv"
        label_csv.write_text("case,label\n" + "".join(f"{c},{classes[pool_truth[c]]}\n" for c in queried))
        _cli("active", "import", "--project", str(proj), "--labels", str(label_csv), "--annotator", "truth", log=log)
        _cli("active", "train", "--project", str(proj), *train_args, log=log)
        summary = json.loads((proj / "models" / f"round_{r:02d}" / "summary.json").read_text())
        current = int(summary.get("project_model", r))
        a = _test_accuracy(proj / "models" / f"round_{current:02d}", test_dir, test_truth, work, log)
        acc.append(round(a, 4))
        labels.append(int(summary["n_labels"]))
        rows.append({"round": r, "n_labels": summary["n_labels"], "promoted": summary.get("promoted", True),
                     "project_model": current, "validation": (summary.get("validation") or {}).get("score"),
                     "test_accuracy": round(a, 4)})
    return {"accuracy": acc, "labels": labels, "rounds": rows}


def run(out_json_path: str | Path, rounds: int = 6, per_round: int = 30, seeds: Sequence[int] = (0,), *,
        strategies: Sequence[str] = STRATEGIES, work_dir: str | Path | None = None, quick: bool = False,
        test_limit: int | None = None) -> dict[str, Any]:
    """Run the benchmark and write ``out_json_path``; returns what was written (see the module docstring)."""
    from aemia.data.catalog import get_dataset

    ds = get_dataset(DATASET)
    classes = list(ds.classes)
    init_args: list[str] = ["--size", "32", "--features", "4,8,16,32"] if quick else []
    train_args: list[str] = ["--epochs", "1"] if quick else []
    test_cases = list(ds.splits["test"])
    limit = test_limit or (60 if quick else None)
    if limit and limit < len(test_cases):  # an even spread over the (class-sorted) test split
        test_cases = [test_cases[int(i * len(test_cases) / limit)] for i in range(limit)]
    with tempfile.TemporaryDirectory(prefix="aemia-busi-active-") as tmp:
        work = Path(work_dir) if work_dir is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        pool_dir, test_dir = work / "pool", work / "test"
        for d in (pool_dir, test_dir):
            if d.exists():
                shutil.rmtree(d)
        pool_truth = _copy_split(ds.splits["train"], pool_dir)
        test_truth = _copy_split(test_cases, test_dir)
        result: dict[str, Any] = {}
        details: dict[str, Any] = {}
        for strategy in strategies:
            per_seed = [run_one(strategy, s, work, pool_dir, test_dir, pool_truth, test_truth, classes,
                                rounds=rounds, per_round=per_round, init_args=init_args, train_args=train_args)
                        for s in seeds]
            curves = [p["accuracy"] for p in per_seed]
            result[strategy] = [round(sum(v) / len(v), 4) for v in zip(*curves)]
            result[f"{strategy}_seeds"] = curves
            result["labels"] = per_seed[0]["labels"]
            details[strategy] = [p["rounds"] for p in per_seed]
    out = {**result, "n_test": len(test_truth), "n_pool": len(pool_truth), "classes": classes,
           "settings": {"rounds": rounds, "per_round": per_round, "seeds": list(seeds), "quick": quick,
                        "init": init_args or "CLI defaults", "train": train_args or "CLI defaults"},
           "details": details, **provenance()}
    write_json_atomic(Path(out_json_path), out)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "busi_active_cli.json")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--per-round", type=int, default=30)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    ap.add_argument("--work", type=Path, default=None, help="keep the projects and logs here (default: a temp folder)")
    ap.add_argument("--quick", action="store_true", help="plumbing check: 32 px, small network, 1 epoch, 60 test images")
    a = ap.parse_args(argv)
    out = run(a.out, a.rounds, a.per_round, a.seeds, strategies=a.strategies, work_dir=a.work, quick=a.quick)
    for s in a.strategies:
        print(f"{s}: {out[s]} at labels {out['labels']}")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
