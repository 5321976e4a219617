"""Benchmark: why is the mean teacher below supervised training on Kvasir? (issue 5, the "why")

``semi_weak.py --parts semi_long`` trains Kvasir-SEG UNet++ at 10% labels for 600 optimiser steps, long enough
for the EMA (decay 0.99, a ~100-step window) to catch up, and with the paper's batch-norm rule (``teacher_bn="own"``)
the teacher was still 4 Dice points below the supervised model (0.536 vs 0.577). This script reads those finished
runs (kept in ``work/semi_weak/semi_long_teacher_bn_own/``, with links to the supervised runs; nothing is trained)
and scores, on the 100 test images at the training size (128 px), for every seed:

* ``teacher``           the model the run evaluated (the EMA teacher; its batch-norm running statistics come from
                        its own training-mode passes over *perturbed unlabelled* images);
* ``student``           the student's final weights (same checkpoint);
* ``teacher_bn_clean``  the teacher with its batch-norm statistics re-estimated on the clean labelled training
                        images (is it the statistics of noisy inputs that hurt?);
* ``supervised``        the supervised run with the same seed, for reference.

Dice is the mean per-image foreground Dice of the argmax mask (the toolkit's ``dice``), with a case-bootstrap 95%
CI; paired differences against ``supervised`` are bootstrapped over the same images. About a minute.

    .venv/bin/python benchmarks/semi_mt_diagnosis.py
    .venv/bin/python benchmarks/semi_mt_diagnosis.py --work benchmarks/work/semi_weak/semi_long_teacher_bn_own --seeds 0,1,2

Outcome (measured): ``teacher_bn="clean"`` became the default of :class:`aemia.semisup.MeanTeacherConfig`.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from aemia.data.catalog import get_dataset  # noqa: E402
from aemia.evaluate import metrics as M  # noqa: E402
from aemia.nets.checkpoint import read_state  # noqa: E402
from aemia.nets.registry import model_from_config  # noqa: E402
from aemia.runs import labelled_subset  # noqa: E402
from aemia.utils.io import write_json_atomic  # noqa: E402
from provenance import provenance  # noqa: E402

SIZE = 128
FRACTION = 0.1


def _model(run: Path, prefix: str = "") -> torch.nn.Module:
    """The run's network with the ``last`` checkpoint's weights under ``prefix`` (``""`` = the student/model)."""
    config = json.loads((run / "checkpoints" / "last.json").read_text())
    model = model_from_config(config["model"])
    state = read_state(run / "checkpoints" / "last")
    own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)} if prefix else \
        {k: v for k, v in state.items() if not k.startswith(("optim/", "hook/", "rng/"))}
    model.load_state_dict(own, strict=True)
    return model.eval()


@torch.no_grad()
def _masks(model: torch.nn.Module, x: np.ndarray, batch: int = 16) -> np.ndarray:
    out = []
    for i in range(0, len(x), batch):
        logits = model(torch.from_numpy(x[i:i + batch]))
        if isinstance(logits, (list, tuple)):
            logits = logits[-1]
        out.append(logits.float().argmax(1).numpy().astype(np.uint8))
    return np.concatenate(out)


@torch.no_grad()
def _reestimate_bn(model: torch.nn.Module, x: np.ndarray, batch: int = 8) -> torch.nn.Module:
    """Batch-norm running statistics recomputed (cumulative average) on ``x``; weights unchanged."""
    m = copy.deepcopy(model)
    bns = [b for b in m.modules() if isinstance(b, torch.nn.modules.batchnorm._BatchNorm)]
    for b in bns:
        b.reset_running_stats()
        b.momentum = None  # cumulative moving average over all batches
    m.train()
    for i in range(0, len(x), batch):
        m(torch.from_numpy(x[i:i + batch]))
    return m.eval()


def _dice(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    return np.array([M.dice(p, g) for p, g in zip(pred, gt)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path,
                    default=ROOT / "benchmarks" / "work" / "semi_weak" / "semi_long_teacher_bn_own")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "semi_mt_diagnosis.json")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    torch.manual_seed(0)
    ds = get_dataset("kvasir")
    x_te, y_te, _ = ds.arrays("test", SIZE)
    x_tr, _, _ = ds.arrays("train", SIZE)
    train_ids = ds.case_ids("train")
    per: dict[str, list[np.ndarray]] = {k: [] for k in ("supervised", "teacher", "student", "teacher_bn_clean")}
    for seed in seeds:
        mt = args.work / f"kvasir_{FRACTION}_mean_teacher_s{seed}"
        sup = args.work / f"kvasir_{FRACTION}_supervised_s{seed}"
        for run in (mt, sup):
            if not (run / "checkpoints" / "last.safetensors").exists():
                print(f"{run}: no finished run; run benchmarks/semi_weak.py --parts semi_long first", file=sys.stderr)
                return 2
        labelled = set(labelled_subset(train_ids, FRACTION, seed))
        x_lab = x_tr[[i for i, c in enumerate(train_ids) if c in labelled]]
        teacher = _model(mt, "hook/0/teacher/")
        models = {"supervised": _model(sup), "teacher": teacher, "student": _model(mt),
                  "teacher_bn_clean": _reestimate_bn(teacher, x_lab)}
        for name, model in models.items():
            per[name].append(_dice(_masks(model, x_te), y_te > 0))
        print(f"seed {seed}: " + ", ".join(f"{k} {v[-1].mean():.3f}" for k, v in per.items()), flush=True)
    results = {}
    for name, values in per.items():
        mean = np.mean(values, axis=0)  # per-image Dice averaged over seeds
        ci = M.bootstrap_ci(mean, 1000)
        results[name] = {"dice": ci.point, "ci": [ci.lo, ci.hi], "per_seed": [float(v.mean()) for v in values]}
        if name != "supervised":
            d = M.bootstrap_ci(mean - np.mean(per["supervised"], axis=0), 1000)
            results[name]["minus_supervised"] = {"dice": d.point, "ci": [d.lo, d.hi]}
    out = {
        "benchmark": "semi_mt_diagnosis",
        **provenance(),
        "what": "Kvasir-SEG test Dice at 128 px (argmax of the last head) of the semi_long runs' checkpoints",
        "work": str(args.work), "seeds": seeds, "fraction": FRACTION,
        "results": results,
    }
    write_json_atomic(args.out, out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
