"""Benchmark part: ARL-CNN vs the same ResNet, and CAM localisation from image-level labels.

(a) ARL-ResNet (Zhang et al., TMI 2019; :mod:`aemia.nets.arl`) against the toolkit's ResNet classifier with the
    same widths and blocks — basic blocks, widths (16, 32, 64, 128), one block per stage, the 3×3 stem. With the
    same seed both start from identical weights (the ARL network only adds one α per block, initialised to 0), so
    the attention is the only difference. Two ARL variants: ``arl``, the spatial softmax (the paper as remembered),
    and ``arl_channel``, the softmax over channels of the unofficial code (``nn.Softmax2d``; METHODS.md §7.3 lists
    the axis as unverified). AUC with case-bootstrap 95% CIs, and each paired ARL − ResNet difference:
      * PH2, melanoma vs rest (40 / 160): a fixed stratified 5-fold split of all 200 images (fold seed 2019, the
        fold ids are in the JSON); every image is scored by the model that did not see it (out-of-fold).
      * BUSI, normal / benign / malignant: trained on train + val (no model selection), scored on the 156 test
        images; macro one-vs-rest AUC (the trainer's validation metric).
(b) CAM localisation on PH2 (Zhou et al., CVPR 2016; :mod:`aemia.weak.cam`): the out-of-fold classifiers' CAM of
    the predicted class, thresholded at 0.5 of its maximum, against the lesion masks: per-image IoU and Dice with
    bootstrap CIs, for both networks (headline: ARL), next to an uninformed centre prior (a centred ellipse with
    semi-axes 0.3 × the image side), because PH2 lesions are large and mostly central. Also scored: thresholds
    0.1 / 0.2 / 0.3 / 0.5, and the CAM of the melanoma class (on all images and on the 40 melanomas alone: the
    class whose evidence is the lesion; a "rest" CAM shows evidence for benign, which need not be the lesion).
    The figure of the first seed's ARL CAMs is copied to ``results/semi_weak_ph2_cams.png``.

Recipe (both networks identical): 128 px, Adam 1e-3, cosine schedule, batch 16, fp32 (under bf16 the tiny
α·A(F)⊙x term would round away), the toolkit's default flips / 90° rotations / intensity jitter; PH2 12 epochs per
fold, BUSI 8 epochs; the last epoch's weights. With several seeds a model's AUC is the mean of the per-seed AUCs
(bootstrapped jointly over cases) and a CAM score the per-image mean over seeds. About 20 minutes per seed on 2
cores; ``quick`` (64 px, 2 / 1 epochs, 96 BUSI training images) about a minute. Finished units (one trained model
per dataset, network, seed and fold) are kept under ``work/`` and reused; an interrupted unit resumes from its last
epoch checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aemia.data.catalog import get_dataset
from aemia.evaluate import metrics as M
from aemia.evaluate.metrics import iou
from aemia.nets import create_model
from aemia.train.data import ArrayDataset, AugmentConfig
from aemia.train.trainer import TrainConfig, Trainer
from aemia.utils.io import write_json_atomic
from aemia.weak.cam import CamConfig, class_activation_maps, plot_cams, score_masks, threshold_cams

#: benchmark name -> (registry name, extra keyword arguments)
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "resnet": ("resnet", {}),
    "arl": ("arl-resnet", {"block": "basic"}),
    "arl_channel": ("arl-resnet", {"block": "basic", "attention_axis": "channel"}),
}
#: CAM thresholds (fractions of each map's maximum) scored besides the recipe's; Zhou et al. used 0.2
SWEEP = (0.1, 0.2, 0.3, 0.5)


@dataclass(frozen=True)
class Recipe:
    size: int = 128
    features: tuple[int, ...] = (16, 32, 64, 128)
    blocks: tuple[int, ...] = (1, 1, 1, 1)
    batch_size: int = 16
    lr: float = 1e-3
    ph2_epochs: int = 12
    busi_epochs: int = 8
    busi_train_limit: int | None = None  # a seeded subset of BUSI train + val (quick mode)
    folds: int = 5
    fold_seed: int = 2019
    threshold: float = 0.5
    n_resamples: int = 1000

    def key(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:8]


FULL = Recipe()
QUICK = replace(FULL, size=64, ph2_epochs=2, busi_epochs=1, busi_train_limit=96, n_resamples=500)


# ------------------------------------------------------------------------------------------------ pieces


def stratified_folds(targets: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold index per case: each class's cases in a seeded random order, dealt round-robin to the k folds."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(targets), dtype=np.int64)
    for c in np.unique(targets):
        idx = np.flatnonzero(targets == c)
        fold[rng.permutation(idx)] = np.arange(idx.size) % k
    return fold


def _train(unit: Path, model: tuple[str, dict[str, Any]], x: np.ndarray, t: np.ndarray, n_classes: int, epochs: int, seed: int,
           recipe: Recipe) -> torch.nn.Module:
    """Train one network (resuming an interrupted unit); the last epoch's model."""
    torch.manual_seed(seed)  # same seed → identical initial weights for both networks
    name, extra = model
    net = create_model(name, 2, x.shape[1], n_classes, features=list(recipe.features), blocks=list(recipe.blocks),
                       **extra)
    cfg = TrainConfig(epochs=epochs, batch_size=recipe.batch_size, lr=recipe.lr, seed=seed, amp="none",
                      progress=False, deep_supervision=False)
    data = ArrayDataset(x, targets=t, augment=AugmentConfig(), seed=seed)
    trainer = Trainer(net, data, None, cfg, unit, task="classification")
    trainer.fit(resume=(unit / "checkpoints" / "last.safetensors").exists())
    return trainer.model.eval()


@torch.no_grad()
def _probs(model: torch.nn.Module, x: np.ndarray, batch: int = 64) -> np.ndarray:
    model.eval()
    return np.concatenate([model(torch.from_numpy(x[i:i + batch])).float().softmax(1).numpy()
                           for i in range(0, len(x), batch)])


def _same_start(recipe: Recipe, seed: int = 0) -> bool:
    """All networks built as in :func:`_train` with one seed hold identical weights (ARL adds only the α's)."""
    states = []
    for name, extra in MODELS.values():
        torch.manual_seed(seed)
        net = create_model(name, 2, 3, 2, features=list(recipe.features), blocks=list(recipe.blocks), **extra)
        states.append({k: v for k, v in net.state_dict().items() if not k.endswith("alpha")})
    a = states[0]
    return all(list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a) for b in states[1:])


def _alphas(model: torch.nn.Module) -> list[float]:
    return list(model.alphas()) if hasattr(model, "alphas") else []


def _centre_prior(shape: tuple[int, int], semi_axis: float = 0.3) -> np.ndarray:
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    return ((yy - (h - 1) / 2) / (semi_axis * h)) ** 2 + ((xx - (w - 1) / 2) / (semi_axis * w)) ** 2 <= 1.0


def _per_seed(s: np.ndarray) -> list[np.ndarray]:
    """The seeds' scores (last axis of ``s``: (n, S) binary or (n, K, S) multi-class) one array per seed."""
    return [s[..., j] for j in range(s.shape[-1])]


def _auc_block(y: np.ndarray, scores: dict[str, np.ndarray], n_resamples: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, s in scores.items():
        ci = M.seed_mean_metric_ci(y, _per_seed(s), M.auc, n_resamples=n_resamples, seed=0)
        out[name] = {"auc": ci.point, "ci": [ci.lo, ci.hi],
                     "per_seed": [M.auc(y, s[..., j]) for j in range(s.shape[-1])]}
    for name in scores:
        if name == "resnet":
            continue
        diff = M.seed_mean_metric_ci(y, _per_seed(scores[name]), M.auc, n_resamples=n_resamples, seed=0,
                                     minus=_per_seed(scores["resnet"]))
        out[f"difference_{name}_minus_resnet"] = {"auc": diff.point, "ci": [diff.lo, diff.hi]}
    return out


def _publish_png(src: Path, dst: Path) -> None:
    """Copy a figure into results/ as a 256-colour PNG (the RGB grid of photos is 1.7 MB; this keeps it < 0.5 MB)."""
    from PIL import Image as PILImage

    tmp = dst.with_suffix(".tmp.png")
    PILImage.open(src).convert("RGB").quantize(256, method=PILImage.Quantize.MEDIANCUT).save(tmp, optimize=True)
    tmp.replace(dst)


def _ci(values: np.ndarray, n_resamples: int) -> tuple[float, float]:
    c = M.bootstrap_ci(values, n_resamples)
    return c.lo, c.hi


def _seg_block(iou: np.ndarray, dice: np.ndarray, n_resamples: int) -> dict[str, Any]:
    i, d = M.bootstrap_ci(iou, n_resamples), M.bootstrap_ci(dice, n_resamples)
    return {"iou": i.point, "ci": [i.lo, i.hi], "dice": d.point, "dice_ci": [d.lo, d.hi], "n": i.n}


# ------------------------------------------------------------------------------------------------- PH2


def _ph2(recipe: Recipe, seeds: list[int], root: Path) -> dict[str, Any]:
    ds = get_dataset("ph2")
    xs, ys, ts, ids = [], [], [], []
    for split in ("train", "val", "test"):
        x, y, t = ds.arrays(split, recipe.size)
        xs.append(x), ys.append(y), ts.append(t), ids.extend(ds.case_ids(split))
    x, masks = np.concatenate(xs), np.concatenate(ys) > 0
    target = (np.concatenate(ts) == ds.classes.index("melanoma")).astype(np.int64)
    fold = stratified_folds(target, recipe.folds, recipe.fold_seed)
    n = len(ids)
    scores = {m: np.zeros((n, len(seeds))) for m in MODELS}
    ious = {m: np.zeros((n, len(seeds))) for m in MODELS}
    dices = {m: np.zeros((n, len(seeds))) for m in MODELS}
    # threshold sweep: per model, target ("predicted" class / "melanoma" class), threshold -> per-image IoU
    sweep = {m: {t: {th: np.zeros((n, len(seeds))) for th in SWEEP} for t in ("predicted", "melanoma")} for m in MODELS}
    alphas: dict[str, list[list[float]]] = {}
    cam_cfg = CamConfig(threshold=recipe.threshold)
    for si, seed in enumerate(seeds):
        for f in range(recipe.folds):
            test = np.flatnonzero(fold == f)
            train = np.flatnonzero(fold != f)
            for m, spec in MODELS.items():
                unit = root / "ph2" / m / f"seed{seed}" / f"fold{f}"
                res = unit / "result.npz"
                if not res.exists():
                    model = _train(unit, spec, x[train], target[train], 2, recipe.ph2_epochs, seed, recipe)
                    out = class_activation_maps(model, x[test])
                    mel = class_activation_maps(model, x[test], classes=1)
                    sc = score_masks(threshold_cams(out.cams, cam_cfg), masks[test], n_resamples=10)
                    np.savez(res.with_suffix(".tmp.npz"), test=test, p=out.probs[:, 1],
                             iou=[r["iou"] for r in sc["per_image"]], dice=[r["dice"] for r in sc["per_image"]],
                             alphas=np.asarray(_alphas(model), dtype=float), cams=out.cams.astype(np.float16),
                             cams_melanoma=mel.cams.astype(np.float16))
                    res.with_suffix(".tmp.npz").replace(res)
                r = np.load(res)
                if not np.array_equal(r["test"], test):
                    raise RuntimeError(f"{res}: stored fold differs from the current split; delete {root}")
                scores[m][test, si], ious[m][test, si], dices[m][test, si] = r["p"], r["iou"], r["dice"]
                for tgt, key in (("predicted", "cams"), ("melanoma", "cams_melanoma")):
                    for th in SWEEP:
                        pred = threshold_cams(r[key].astype(np.float32), CamConfig(threshold=th))
                        sweep[m][tgt][th][test, si] = [iou(p_, g_) for p_, g_ in zip(pred, masks[test])]
                alphas.setdefault(m, []).append([float(a) for a in r["alphas"]])
    if seeds:  # a figure of the first seed's ARL CAMs (first 16 images by id)
        order = np.argsort(ids)[:16]
        cams = np.zeros((len(order),) + masks.shape[1:], np.float32)
        for f in range(recipe.folds):
            r = np.load(root / "ph2" / "arl" / f"seed{seeds[0]}" / f"fold{f}" / "result.npz")
            where = {int(i): k for k, i in enumerate(r["test"])}
            for j, i in enumerate(order):
                if int(i) in where:
                    cams[j] = r["cams"][where[int(i)]]
        plot_cams(x[order], cams, threshold_cams(cams, cam_cfg), masks[order], root / "ph2_cams_arl.png",
                  titles=[f"{ids[i]} {'MEL' if target[i] else 'nev'} IoU {ious['arl'][i, 0]:.2f}" for i in order])
        mel = np.flatnonzero(target == 1)[:16]  # the melanoma class's CAM on melanomas
        mcams = np.zeros((len(mel),) + masks.shape[1:], np.float32)
        for f in range(recipe.folds):
            r = np.load(root / "ph2" / "arl" / f"seed{seeds[0]}" / f"fold{f}" / "result.npz")
            where = {int(i): k for k, i in enumerate(r["test"])}
            for j, i in enumerate(mel):
                if int(i) in where:
                    mcams[j] = r["cams_melanoma"][where[int(i)]]
        plot_cams(x[mel], mcams, threshold_cams(mcams, cam_cfg), masks[mel], root / "ph2_cams_arl_melanoma.png",
                  titles=[f"{ids[i]} MEL, melanoma CAM" for i in mel])
        if root.name.startswith("arl_cam_full"):  # a measured run (not --quick)
            results = Path(__file__).resolve().parents[1] / "results"
            _publish_png(root / "ph2_cams_arl.png", results / "semi_weak_ph2_cams.png")
            _publish_png(root / "ph2_cams_arl_melanoma.png", results / "semi_weak_ph2_cams_melanoma.png")
    prior = _centre_prior(masks.shape[1:])
    prior_scores = score_masks(np.broadcast_to(prior, masks.shape), masks, n_resamples=recipe.n_resamples)
    prior_iou = np.array([r["iou"] for r in prior_scores["per_image"]])
    prior_dice = np.array([r["dice"] for r in prior_scores["per_image"]])
    cam = {m: _seg_block(ious[m].mean(1), dices[m].mean(1), recipe.n_resamples) for m in MODELS}
    return {
        "auc": {"task": f"melanoma vs rest, stratified {recipe.folds}-fold out-of-fold scores of all {n} images",
                "n": n, "n_melanoma": int(target.sum()), **_auc_block(target, scores, recipe.n_resamples),
                "folds": [sorted(ids[i] for i in np.flatnonzero(fold == f)) for f in range(recipe.folds)],
                "fold_seed": recipe.fold_seed},
        "cam": {**cam["arl"], "model": "arl", "target": "predicted class", "threshold": recipe.threshold,
                "by_model": cam,
                "threshold_sweep_iou": {
                    m: {tgt: {str(th): float(v.mean()) for th, v in per.items()} for tgt, per in sweep[m].items()}
                    for m in MODELS},
                "melanoma_cam_on_melanomas_iou": {
                    m: {str(th): float(sweep[m]["melanoma"][th][target == 1].mean()) for th in SWEEP} for m in MODELS},
                "melanoma_cam_on_melanomas_ci": {  # per-image IoU averaged over seeds, bootstrap over the melanomas
                    m: {str(th): list(_ci(sweep[m]["melanoma"][th][target == 1].mean(1), recipe.n_resamples))
                        for th in SWEEP} for m in MODELS},
                "centre_prior_on_melanomas": {**_seg_block(prior_iou[target == 1], prior_dice[target == 1],
                                                           recipe.n_resamples),
                                              "what": "the same centred ellipse, scored on the melanomas only"},
                "sweep_what": "mean per-image IoU (all 200 images, or the 40 melanomas) of the CAM of the predicted "
                              "class / of the melanoma class, thresholded at each fraction of its maximum",
                "centre_prior": {"iou": prior_scores["iou"]["mean"], "ci": prior_scores["iou"]["ci"],
                                 "dice": prior_scores["dice"]["mean"], "dice_ci": prior_scores["dice"]["ci"],
                                 "what": "centred ellipse, semi-axes 0.3 x image side"}},
        "alphas": alphas,
    }


# ------------------------------------------------------------------------------------------------ BUSI


def _busi(recipe: Recipe, seeds: list[int], root: Path) -> dict[str, Any]:
    ds = get_dataset("busi")
    xa, _, ta = ds.arrays("train", recipe.size)
    xv, _, tv = ds.arrays("val", recipe.size)
    x_tr, t_tr = np.concatenate([xa, xv]), np.concatenate([ta, tv])
    if recipe.busi_train_limit is not None and recipe.busi_train_limit < len(x_tr):
        keep = np.sort(np.random.default_rng(recipe.fold_seed).permutation(len(x_tr))[: recipe.busi_train_limit])
        x_tr, t_tr = x_tr[keep], t_tr[keep]
    x_te, _, t_te = ds.arrays("test", recipe.size)
    k = len(ds.classes)
    scores = {m: np.zeros((len(x_te), k, len(seeds))) for m in MODELS}
    alphas: dict[str, list[list[float]]] = {}
    for si, seed in enumerate(seeds):
        for m, spec in MODELS.items():
            unit = root / "busi" / m / f"seed{seed}"
            res = unit / "result.npz"
            if not res.exists():
                model = _train(unit, spec, x_tr, t_tr, k, recipe.busi_epochs, seed, recipe)
                np.savez(res.with_suffix(".tmp.npz"), p=_probs(model, x_te), alphas=np.asarray(_alphas(model), float))
                res.with_suffix(".tmp.npz").replace(res)
            r = np.load(res)
            scores[m][:, :, si] = r["p"]
            alphas.setdefault(m, []).append([float(a) for a in r["alphas"]])
    return {"auc": {"task": f"{k}-class macro one-vs-rest AUC, trained on train+val ({len(x_tr)}), "
                            f"scored on the test split", "n": len(x_te), "n_train": len(x_tr),
                    **_auc_block(t_te, scores, recipe.n_resamples)},
            "alphas": alphas}


# ------------------------------------------------------------------------------------------------ entry


def run(quick: bool, seeds: list[int], work: Path) -> dict[str, Any]:
    """Train (or reuse) every unit, score them; ``{"arl": {"ph2": ..., "busi": ...}, "cam": {"ph2": ...}, ...}``."""
    recipe = QUICK if quick else FULL
    seeds = [int(s) for s in seeds]
    root = Path(work) / f"arl_cam_{'quick' if quick else 'full'}_{recipe.key()}"
    root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(root / "recipe.json", asdict(recipe))
    t0 = time.perf_counter()
    ph2 = _ph2(recipe, seeds, root)
    busi = _busi(recipe, seeds, root)
    def alpha_summary(m: str) -> dict[str, Any]:
        mags = [abs(a) for r in (ph2, busi) for unit in r["alphas"].get(m, []) for a in unit]
        return {"mean_abs": float(np.mean(mags)) if mags else None, "max_abs": float(np.max(mags)) if mags else None,
                "per_unit": {"ph2": ph2["alphas"].get(m, []), "busi": busi["alphas"].get(m, [])}}

    return {
        "arl": {"ph2": ph2["auc"], "busi": busi["auc"], "identical_initial_weights": _same_start(recipe),
                "learned_alpha": alpha_summary("arl"), "learned_alpha_channel": alpha_summary("arl_channel")},
        "cam": {"ph2": ph2["cam"]},
        "recipe": {**asdict(recipe), "models": {"resnet": "ResNetClassifier", "arl": "ArlResNet(block='basic')",
                                                  "arl_channel": "ArlResNet(block='basic', attention_axis='channel')"},
                   "amp": "none", "work": str(root)},
        "seeds": seeds,
        "quick": quick,
        "seconds": round(time.perf_counter() - t0, 1),
    }


if __name__ == "__main__":  # pragma: no cover - manual smoke run
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--work", default="benchmarks/work/semi_weak")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    result = run(a.quick, [int(s) for s in a.seeds.split(",")], Path(a.work))
    text = json.dumps(result, indent=2)
    if a.out:
        write_json_atomic(a.out, result)
    print(text if len(text) < 4000 else json.dumps({k: result[k] for k in ("cam", "seconds")}, indent=2))
