"""Benchmark part: MB-DCNN (Xie, Zhang, Xia, Shen, IEEE TMI 2020) on PH2 against the plain networks.

PH2's 200 dermoscopy images under a fixed stratified 5-fold split (by diagnosis, seed ``FOLD_SEED``; the folds are
listed in the result). Per fold, :func:`aemia.semisup.bootstrapping.run_mbdcnn` trains on the four other folds:
Coarse-SN (a width-16 U-Net = the plain segmentation baseline), the plain classifier (RGB only), Mask-CN
(RGB + coarse mask), Enhanced-SN (Mask-CN's CAM at the bottleneck, initialised from Coarse-SN) and the control
"coarse_continued" (Coarse-SN fine-tuned for the Enhanced-SN budget without a CAM), all at 128 px with the CPU
preset of :class:`MBDCNNConfig` (25 / 20 / 10 epochs; about 25 minutes on 2 cores). Out-of-fold predictions
are pooled over the 200 cases:

* ``jaccard``: per-image Jaccard at 128 px, mean with a case-bootstrap 95% CI, for ``coarse`` and ``enhanced``
  (plus ``coarse_continued``, ``enhanced_cam_zeroed`` and the paired differences);
* ``auc_melanoma``: melanoma-vs-rest AUC with a case-bootstrap 95% CI for ``plain``, ``mask_guided`` and
  ``mask_guided_9crop`` (plus ``plain_9crop`` and paired differences); ``auc_macro`` likewise.

Fold runs live in ``work/mbdcnn[_quick]/seed<S>/fold<K>/``; a finished fold (``metrics.json``) is read back and an
interrupted one resumes stage by stage. ``quick=True``: 64 px and 2 / 2 / 1 epochs (a smoke run, not a
measurement; about 2 minutes).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from aemia.runs.folder import RunFolder
from aemia.semisup.bootstrapping import MBDCNNConfig, run_mbdcnn
from aemia.semisup.mbdcnn_data import case_table, stratified_folds
from aemia.semisup.mbdcnn_report import read_per_case, summarise_predictions

DATASET = "ph2"
N_FOLDS = 5
FOLD_SEED = 0
FULL = dict(size=128, epochs_seg=25, epochs_cls=20, epochs_enh=10)
QUICK = dict(size=64, epochs_seg=2, epochs_cls=2, epochs_enh=1, n_bootstrap=200)
SEG_ARMS = ("coarse", "enhanced", "coarse_continued", "enhanced_cam_zeroed")
CLS_ARMS = ("plain", "plain_9crop", "mask_guided", "mask_guided_9crop")


def config(quick: bool, seed: int) -> MBDCNNConfig:
    return MBDCNNConfig.cpu(dataset=DATASET, seed=seed, continued_control=True, progress=False, figure_cases=4,
                            **(QUICK if quick else FULL))


def _fold(cfg: MBDCNNConfig, run_dir: Path, train_ids: list[str], test_ids: list[str]) -> list[dict[str, Any]]:
    """Per-case rows of one fold, trained now or read back from a finished run with the same recipe."""
    folder = RunFolder(run_dir)
    if folder.metrics_path.exists():
        saved = folder.config_dict()  # config.yaml (config.json in runs written before it)
        saved.pop("method", None)
        if saved != json.loads(json.dumps(asdict(cfg))):
            raise RuntimeError(f"{run_dir} was run with another recipe; delete it to rerun")
        return read_per_case(folder.per_case_path)
    return run_mbdcnn(cfg, run_dir, train_ids, test_ids, resume=True)["per_case"]


def _pooled(rows: list[dict[str, Any]], pos: int, n_classes: int, n_boot: int, seed: int) -> dict[str, Any]:
    y = np.array([r["target"] for r in rows])
    jac = {a: np.array([r[f"jaccard_{a}"] for r in rows]) for a in SEG_ARMS if f"jaccard_{a}" in rows[0]}
    probs = {a: np.array([[r[f"p_{a}_{c}"] for c in range(n_classes)] for r in rows]) for a in CLS_ARMS}
    return summarise_predictions(y, jac, probs, pos, n_boot, seed)


def _seed_run(quick: bool, seed: int, work: Path, ids: list[str], targets: list[int], classes: list[str],
              folds: list[list[str]]) -> dict[str, Any]:
    cfg = config(quick, seed)
    root = work / f"mbdcnn{'_quick' if quick else ''}" / f"seed{seed}"
    pos = classes.index("melanoma")
    rows: list[dict[str, Any]] = []
    per_fold = []
    t0 = time.perf_counter()
    for k, test_ids in enumerate(folds):
        train_ids = [c for j, f in enumerate(folds) if j != k for c in f]
        fold_rows = _fold(cfg, root / f"fold{k}", train_ids, test_ids)
        rows += fold_rows
        fold_metrics = json.loads((root / f"fold{k}" / "metrics.json").read_text())
        per_fold.append({"fold": k, "n_test": len(test_ids),
                         "jaccard": {a: v["mean"] for a, v in fold_metrics["jaccard"].items()},
                         "auc_melanoma": {a: v["mean"] for a, v in fold_metrics["auc_melanoma"].items()},
                         "seconds": fold_metrics.get("seconds", {})})
    if sorted(r["id"] for r in rows) != sorted(ids):
        raise RuntimeError("out-of-fold predictions do not cover every case exactly once")
    pooled = _pooled(rows, pos, len(classes), cfg.n_bootstrap, seed)
    return {"seed": seed, **pooled, "per_fold": per_fold, "seconds": round(time.perf_counter() - t0, 1),
            "config": asdict(cfg)}


def run(quick: bool, seeds: list[int], work: Path) -> dict[str, Any]:
    """MB-DCNN vs plain segmentation (Jaccard) and plain classification (melanoma AUC) on PH2, pooled
    out-of-fold. The first seed gives the headline numbers; further seeds are reported under ``other_seeds``."""
    work = Path(work)
    seeds = list(seeds) or [0]
    ids, targets, classes, _ = case_table(DATASET)
    folds = stratified_folds(ids, targets, N_FOLDS, FOLD_SEED)
    results = [_seed_run(quick, s, work, ids, targets, classes, folds) for s in seeds]
    first = results[0]
    out: dict[str, Any] = {
        "method": "MB-DCNN (Xie et al., IEEE TMI 2020), CPU-sized: U-Net / ResNet width 16",
        "quick": quick,
        "fold_seed": FOLD_SEED,
        "folds": [{"fold": k, "test_ids": f,
                   "class_counts": np.bincount([targets[ids.index(c)] for c in f], minlength=len(classes)).tolist()}
                  for k, f in enumerate(folds)],
        "classes": classes,
        "n_cases": len(ids),
        "jaccard": first["jaccard"],
        "auc_melanoma": first["auc_melanoma"],
        "auc_macro": first["auc_macro"],
        "accuracy": first["accuracy"],
        "per_fold": first["per_fold"],
        "seed": first["seed"],
        "seconds": first["seconds"],
        "config": first["config"],
        "notes": ("Jaccard per image at the working size; AUCs from out-of-fold probabilities pooled over the 5 "
                  "folds; CIs: case-bootstrap resamples (config.n_bootstrap) (paired for the *_minus_* differences). "
                  "coarse = the plain U-Net; coarse_continued = Coarse-SN trained for the Enhanced-SN budget "
                  "without a CAM; enhanced_cam_zeroed = Enhanced-SN with its CAM input set to 0."),
    }
    if len(results) > 1:
        out["other_seeds"] = [{k: r[k] for k in ("seed", "jaccard", "auc_melanoma", "auc_macro", "seconds")}
                              for r in results[1:]]
    return {"ph2": out}


if __name__ == "__main__":  # pragma: no cover - manual smoke run
    import argparse
    import sys

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, nargs="*", default=[0])
    ap.add_argument("--work", type=Path, default=Path(__file__).resolve().parents[1] / "work")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    result = run(args.quick, args.seeds, args.work)
    text = json.dumps(result, indent=2, default=float)
    if args.out:
        args.out.write_text(text + "\n")
    else:
        sys.stdout.write(text + "\n")
