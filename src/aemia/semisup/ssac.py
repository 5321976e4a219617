"""SSAC: semi-supervised adversarial classification (Xie, Zhang, Xia, MedIA 2019), a small 2D CPU version.

Published facts (``reference/METHODS.md`` §7.1; abstract only, no public code):

* **R**, a reconstruction network built on an adversarial autoencoder (AAE), is trained on the labelled **and**
  the unlabelled images;
* **C**, a supervised classification network, is trained on the labelled images;
* **learnable transition layers** adapt R's encoder representation to C.

MK-SSAC (three SSACs per view for overall appearance, shape and texture patches, over nine planar views of a 3D
nodule, fused) is not built here: the bundled classification sets are 2D images. The §7.1 CPU recipe is
followed: AAE = conv encoder → latent ``z``, conv decoder, a discriminator on ``z`` against a Gaussian prior;
transition layer = a 1×1 conv mapping R-encoder features into C.

**AAE training** (Makhzani et al., "Adversarial Autoencoders", ICLR workshop 2016), per mini-batch:

1. reconstruction phase: encoder + decoder minimise the reconstruction loss (BCE on [0, 1] images, or MSE);
2. regularisation phase: the discriminator ``D`` learns to tell prior samples ``z ~ N(0, σ²I)`` (label 1)
   from codes ``E(x)`` (label 0) (:func:`discriminator_loss`); then the encoder, acting as the generator, is
   updated to fool it with the non-saturating loss ``-log D(E(x))`` (:func:`generator_loss`).

**Networks** (CPU-sized choices; the paper gives none at this scale): R's encoder and C share one level
structure — level 0 at full resolution, each further level halves it with a stride-2 3×3 conv (two conv-BN-ReLU
per level). C's widths are (16, 32, 64) up to 32 px and (16, 32, 64, 128) above; R's are half of those (its
decoder at full resolution is the costly part on a CPU). The encoder's last level is flattened to ``z``
(16-d); the decoder mirrors it (nearest upsampling + convs, logits out); the discriminator is an MLP (64, 64,
LeakyReLU 0.2). C adds, after each of its levels, ``T_l(e_l)`` where ``e_l`` is R's encoder feature map at the
same resolution and ``T_l`` a 1×1 conv (:class:`FusionClassifier`). The transitions are zero-initialised (a
toolkit choice) and created after C's own layers, so at initialisation SSAC computes exactly what "C alone" (the
baseline, same seed) computes; any difference after training comes from R's features.

**Training** (:func:`run_ssac`): phase 1, the AAE on every training image (labelled + unlabelled; Adam 1e-3 for
reconstruction, Adam 2e-4 with β1 = 0.5 for the discriminator and generator steps, the usual GAN setting);
phase 2, C + transitions on the labelled images with cross-entropy (Adam 1e-3, weight decay 1e-4, cosine decay,
flips and ±10% intensity augmentation). R's encoder is frozen by default — the paper adapts R's representation
to C through the transition layers — or fine-tuned at ``encoder_lr_scale`` × the classifier's learning rate
(``encoder="finetune"``); its batch-norm statistics stay those of phase 1 in both cases. The baseline "C alone"
has the same architecture without transitions and the same seed, batches and schedule. The model evaluated is
the last epoch's (no selection on labelled validation data, which a 5%-label setting would not have); the
validation AUC is only logged for the curves.

Phase 1 uses no labels, so a finished run's AAE can be reused by another run on the same data set, size and R
widths (``pretrained_aae``; e.g. other seeds of a benchmark), provided it saw the whole training split.

Modules: networks, losses and the recipe in :mod:`aemia.semisup.ssac_nets`; training in
:mod:`aemia.semisup.ssac_training`; the run, its evaluation and figure here (which also re-exports the two).
Both phases run on the one :class:`~aemia.train.trainer.Trainer`: phase 1's
reconstruction step is the Trainer's step and the discriminator and generator steps are a hook
(:class:`AAERegularisation`); phase 2 is a plain classification run with per-group learning rates. So both get
checkpoints every epoch, exact resume (``run_ssac(..., resume=True)``), mixed precision (``amp``) and DDP.

Outputs of a run folder: ``config.yaml``, ``splits.json``, one Trainer folder per phase (``aae/``, ``ssac/``,
``classifier/``: ``log.jsonl``, ``checkpoints/last.safetensors``), the trained weights
``checkpoints/{aae,ssac,classifier}.safetensors`` (+ ``.json``), ``per_case.csv`` (test probabilities of both
models), ``metrics.json`` (test AUC — binary, or macro one-vs-rest — and accuracy with case-level bootstrap 95% CIs
for both models, the paired bootstrap CI of the AUC difference, the AAE's test reconstruction error and code
statistics), ``figures/ssac.png`` (reconstructions, a PCA of the test codes next to prior samples, training curves).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from aemia.errors import InputError
from aemia.evaluate import metrics as M
from aemia.nets.checkpoint import read_config, read_state, save_checkpoint
from aemia.runs.folder import RunFolder
from aemia.semisup.ssac_nets import (
    AAE,
    AMP_MODES,
    ENCODER_MODES,
    RECON_LOSSES,
    Decoder,
    Discriminator,
    Encoder,
    FusionClassifier,
    SSACConfig,
    SSACNet,
    default_widths,
    discriminator_loss,
    generator_loss,
    level_sizes,
    reconstruction_loss,
)
from aemia.semisup.ssac_training import AAERegularisation, train_aae, train_classifier
from aemia.utils.io import write_text_atomic, write_with


def predict_proba(model: nn.Module, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """Softmax class probabilities ``(N, K)`` in eval mode."""
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            out.append(torch.softmax(model(torch.from_numpy(images[i:i + batch])), 1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def class_scores(probs: np.ndarray) -> np.ndarray:
    """What :func:`aemia.evaluate.metrics.auc` takes: P(class 1) for two classes, else all probabilities."""
    return probs[:, 1] if probs.shape[1] == 2 else probs


# ---------------------------------------------------------------------------------------------- evaluation


def classification_metrics(y: np.ndarray, probs: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Test AUC (binary, or macro one-vs-rest) and accuracy, each with a case-level bootstrap 95% CI."""
    auc_ci = M.bootstrap_metric_ci(y, class_scores(probs), M.auc, n_resamples=n_boot, seed=seed)
    acc_ci = M.bootstrap_ci((probs.argmax(1) == y).astype(float), n_resamples=n_boot, seed=seed)
    return {"auc": M.ci_dict(auc_ci), "accuracy": M.ci_dict(acc_ci)}


def paired_auc_difference(y: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray, n_boot: int = 1000,
                          seed: int = 0) -> dict[str, Any]:
    """AUC(a) − AUC(b) with a paired bootstrap CI (the same resampled cases for both models)."""
    k = probs_a.shape[1]
    both = np.concatenate([probs_a, probs_b], axis=1)

    def diff(yy: np.ndarray, s: np.ndarray) -> float:
        return M.auc(yy, class_scores(s[:, :k])) - M.auc(yy, class_scores(s[:, k:]))

    return M.ci_dict(M.bootstrap_metric_ci(y, both, diff, n_resamples=n_boot, seed=seed))


def _latent(aae: AAE, images: np.ndarray, batch: int = 256) -> tuple[np.ndarray, dict[str, float]]:
    """Codes of ``images`` and their mean per-pixel reconstruction BCE and MSE."""
    aae.eval()
    zs, bce, mse, n = [], 0.0, 0.0, 0
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(images[i:i + batch])
            z, logits = aae(x)
            zs.append(z.numpy())
            bce += float(reconstruction_loss(logits, x, "bce")) * len(x)
            mse += float(reconstruction_loss(logits, x, "mse")) * len(x)
            n += len(x)
    return np.concatenate(zs), {"bce": bce / max(n, 1), "mse": mse / max(n, 1)}


# -------------------------------------------------------------------------------------------------- figure


def _montage(images: np.ndarray) -> np.ndarray:
    """(N, C, H, W) → one (H, N·W[, 3]) picture."""
    row = np.concatenate(list(images), axis=-1)
    return row[0] if row.shape[0] == 1 else np.moveaxis(row[:3], 0, -1)


def plot_ssac(path: Path, originals: np.ndarray, recons: np.ndarray, z: np.ndarray, y: np.ndarray,
              classes: Sequence[str], prior_std: float, history: dict[str, list[dict[str, float]]],
              title: str) -> None:
    """``figures/ssac.png``: reconstructions, PCA of the test codes (with prior samples), training curves."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 2, figsize=(12, 9))
    grid = np.concatenate([_montage(originals), _montage(recons)], axis=0)
    ax[0, 0].imshow(np.clip(grid, 0, 1), cmap="gray", vmin=0, vmax=1)
    ax[0, 0].set_title("test images (top) and AAE reconstructions (bottom)")
    ax[0, 0].axis("off")

    zc = z - z.mean(0)
    _, _, vt = np.linalg.svd(zc, full_matrices=False)
    basis = vt[:2].T
    prior = np.random.default_rng(0).normal(0, prior_std, size=(min(len(z), 500), z.shape[1]))
    pp = (prior - z.mean(0)) @ basis
    ax[0, 1].scatter(pp[:, 0], pp[:, 1], s=4, c="lightgrey", label="prior samples")
    proj = zc @ basis
    for k, name in enumerate(classes):
        sel = y == k
        if sel.any():
            ax[0, 1].scatter(proj[sel, 0], proj[sel, 1], s=6, alpha=0.7, label=name)
    ax[0, 1].set_title("latent z of the test images (PCA, 2 components)")
    ax[0, 1].legend(markerscale=3, fontsize=8)

    aae_h = history.get("aae", [])
    if aae_h:
        ep = [h["epoch"] for h in aae_h]
        for key, label, style in (("recon", "reconstruction", "-"), ("d_loss", "discriminator", "-"),
                                  ("g_loss", "generator", "-"), ("d_acc", "D accuracy", ":")):
            ax[1, 0].plot(ep, [h.get(key, math.nan) for h in aae_h], style, label=label)
        ax[1, 0].legend(fontsize=8)
    ax[1, 0].set_title("phase 1: adversarial autoencoder")
    ax[1, 0].set_xlabel("epoch")

    twin = ax[1, 1].twinx()
    for name, style in (("ssac", "-"), ("classifier", "--")):
        h = history.get(name, [])
        if not h:
            continue
        ep = [r["epoch"] for r in h]
        ax[1, 1].plot(ep, [r["loss"] for r in h], style, color="tab:blue", label=f"{name} train loss")
        if "val_auc" in h[0]:
            twin.plot(ep, [r["val_auc"] for r in h], style, color="tab:orange", label=f"{name} val AUC")
    ax[1, 1].set_xlabel("epoch")
    ax[1, 1].set_ylabel("cross-entropy")
    twin.set_ylabel("validation AUC")
    lines = ax[1, 1].get_legend_handles_labels()
    lines2 = twin.get_legend_handles_labels()
    ax[1, 1].legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="center right")
    ax[1, 1].set_title("phase 2: SSAC (solid) vs classifier alone (dashed)")
    fig.suptitle(title)
    fig.tight_layout()
    write_with(path, lambda p: fig.savefig(p, dpi=100))
    plt.close(fig)


# ------------------------------------------------------------------------------------------------------ run


def _check_run_dir(run_dir: Path) -> None:
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise InputError(run_dir, "run folder already exists and is not empty: choose a new --run "
                                  "(nothing is overwritten)")


def _load_data(cfg: SSACConfig) -> dict[str, Any]:
    from aemia.data.catalog import get_dataset
    from aemia.runs.config import labelled_subset

    ds = get_dataset(cfg.dataset)
    if not ds.classes:
        raise InputError(None, f"data set '{ds.name}' has no image-level classes: SSAC needs a classification data set")
    if ds.dims != 2:
        raise InputError(None, f"data set '{ds.name}' is {ds.dims}D: SSAC here works on 2D images")
    size = cfg.working_size()
    x, _, t = ds.arrays("train", size)
    ids = ds.case_ids("train")
    labelled = labelled_subset(ids, cfg.label_fraction, cfg.seed)
    keep = set(labelled)
    lab_idx = np.array([i for i, c in enumerate(ids) if c in keep], dtype=np.int64)
    unl_idx = np.array([i for i, c in enumerate(ids) if c not in keep], dtype=np.int64)
    if cfg.max_unlabelled is not None and len(unl_idx) > cfg.max_unlabelled:
        pick = np.random.default_rng([cfg.seed, 3]).choice(len(unl_idx), cfg.max_unlabelled, replace=False)
        unl_idx = np.sort(unl_idx[pick])
    val = None
    if ds.splits.get("val"):
        vx, _, vt = ds.arrays("val", size)
        val = (np.ascontiguousarray(vx), np.asarray(vt))
    tx, _, tt = ds.arrays("test", size)
    return {
        "ds": ds, "size": size, "labelled": labelled, "unlabelled": [ids[i] for i in unl_idx],
        "x_lab": np.ascontiguousarray(x[lab_idx]), "t_lab": np.asarray(t[lab_idx]),
        "x_all": np.ascontiguousarray(x[np.sort(np.concatenate([lab_idx, unl_idx]))]),
        "val": val, "x_test": np.ascontiguousarray(tx), "t_test": np.asarray(tt),
    }


def _load_pretrained_aae(aae: AAE, cfg: SSACConfig) -> list[dict[str, float]]:
    """Load phase 1 of an earlier run into ``aae``; it must match this run's data set, size and R widths."""
    path = Path(str(cfg.pretrained_aae))
    if path.is_dir():
        path = path / "checkpoints" / "aae"
    meta = read_config(path)
    if meta.get("model") != aae.config:
        raise InputError(path, f"AAE {meta.get('model')} differs from this run's {aae.config}")
    src = meta.get("ssac", {})
    if src.get("dataset") != cfg.dataset or src.get("max_unlabelled") is not None or cfg.max_unlabelled is not None:
        raise InputError(path, "a pretrained AAE is reusable only for the same data set, trained on the whole "
                               "training split")
    aae.load_state_dict(read_state(path))
    aae.eval()
    return list(meta.get("history", []))


def build_models(cfg: SSACConfig, in_channels: int, n_classes: int) -> tuple[AAE, FusionClassifier, FusionClassifier]:
    """The AAE (R), SSAC's classifier (C with transitions) and the baseline (C alone); C seeded identically."""
    size = cfg.working_size()
    widths, r_widths = cfg.level_widths()
    if len(widths) != len(r_widths):
        raise ValueError(f"C has {len(widths)} levels and R {len(r_widths)}: give widths of equal length")
    torch.manual_seed(cfg.seed)
    aae = AAE(in_channels, size, r_widths, cfg.latent_dim)
    torch.manual_seed(cfg.seed + 1)
    fused = FusionClassifier(in_channels, n_classes, widths, r_widths=r_widths, fuse_levels=cfg.fuse_levels,
                             dropout=cfg.dropout)
    torch.manual_seed(cfg.seed + 1)
    alone = FusionClassifier(in_channels, n_classes, widths, dropout=cfg.dropout)
    return aae, fused, alone


def load_ssac_config(run_dir: str | Path) -> SSACConfig:
    """The recipe of an SSAC run folder (``config.yaml``; runs written before it hold ``config.json``)."""
    folder = RunFolder(run_dir)
    data = folder.config_dict()
    try:
        return SSACConfig(**data)
    except (TypeError, ValueError) as exc:
        raise InputError(folder.config_path, f"not an SSAC run config ({exc})") from None


def _phase(run_dir: Path, name: str, model: nn.Module, cfg: SSACConfig, resume: bool,
           train: Any) -> list[dict[str, float]]:
    """Train one phase in ``run_dir/<name>/`` with ``train(run_dir, resume) -> history`` and save the trained
    weights to ``checkpoints/<name>``; when resuming, a phase whose checkpoint exists is loaded, not retrained."""
    final = run_dir / "checkpoints" / name
    if resume and final.with_suffix(".safetensors").exists():
        model.load_state_dict(read_state(final))
        model.eval()
        return list(read_config(final).get("history", []))
    stage = run_dir / name
    history = train(stage, resume and (stage / "checkpoints" / "last.safetensors").exists())
    save_checkpoint(model, final, {"ssac": asdict(cfg), "history": history})
    return history


def run_ssac(cfg: SSACConfig | None, run_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    """Phase 1 AAE on all training images, phase 2 SSAC and "C alone" on the labelled ones, test evaluation.

    Writes ``config.yaml``, ``splits.json``, one Trainer folder per phase (``aae/``, ``ssac/``, ``classifier/``:
    ``log.jsonl`` and resumable ``checkpoints/``), the trained weights ``checkpoints/{aae,ssac,classifier}``,
    ``metrics.json``, ``per_case.csv`` and ``figures/ssac.png`` into ``run_dir`` (which must not exist or be
    empty) and returns the metrics. With ``resume`` the recipe is read from ``run_dir``, finished phases are
    reused and an interrupted one continues from its last epoch.
    """
    run_dir = Path(run_dir)
    if resume:
        cfg = load_ssac_config(run_dir)
    else:
        _check_run_dir(run_dir)
    if cfg is None:
        raise ValueError("run_ssac needs a config unless it resumes")
    t0 = time.monotonic()
    data = _load_data(cfg)
    ds = data["ds"]
    n_classes = len(ds.classes)
    in_ch = data["x_all"].shape[1]
    aae, fused, alone = build_models(cfg, in_ch, n_classes)
    pretrained = _load_pretrained_aae(aae, cfg) if cfg.pretrained_aae else None  # checked before writing anything
    run_dir.mkdir(parents=True, exist_ok=True)
    folder = RunFolder(run_dir)
    folder.save_config(asdict(cfg))
    folder.save_splits({**ds.split_manifest(), "labelled": data["labelled"], "unlabelled_used": data["unlabelled"],
                        "label_fraction": cfg.label_fraction})
    seconds: dict[str, float] = {"data": time.monotonic() - t0}
    history: dict[str, list[dict[str, float]]] = {}

    t = time.monotonic()
    if pretrained is not None:
        history["aae"] = pretrained
        save_checkpoint(aae, run_dir / "checkpoints" / "aae", {"ssac": asdict(cfg), "history": pretrained})
    else:
        history["aae"] = _phase(run_dir, "aae", aae, cfg, resume,
                                lambda d, r: train_aae(aae, data["x_all"], cfg, d, resume=r))
    seconds["aae"] = time.monotonic() - t
    y = data["t_test"]
    n_show = max(1, 8 // n_classes)
    pick = np.concatenate([np.flatnonzero(y == k)[:n_show] for k in range(n_classes)])[:8]
    z, rec_test = _latent(aae, data["x_test"])  # before phase 2 can fine-tune the shared encoder
    with torch.no_grad():
        recons = aae.reconstruct(torch.from_numpy(data["x_test"][pick])).numpy()

    ssac = SSACNet(aae.encoder, fused, freeze_encoder=cfg.encoder == "frozen")
    for name, model in (("ssac", ssac), ("classifier", alone)):
        t = time.monotonic()
        history[name] = _phase(run_dir, name, model, cfg, resume,
                               lambda d, r, m=model: train_classifier(m, data["x_lab"], data["t_lab"], cfg, d,
                                                                      data["val"], resume=r))
        seconds[name] = time.monotonic() - t

    probs = {name: predict_proba(m, data["x_test"]) for name, m in (("ssac", ssac), ("classifier", alone))}
    results = {name: classification_metrics(y, p, cfg.n_boot, cfg.seed) for name, p in probs.items()}
    delta = paired_auc_difference(y, probs["ssac"], probs["classifier"], cfg.n_boot, cfg.seed)
    a, c = results["ssac"]["auc"], results["classifier"]["auc"]
    headline = (f"{ds.name} {cfg.label_fraction:g} labels: SSAC AUC {a['mean']:.3f} ({a['ci'][0]:.3f}-{a['ci'][1]:.3f})"
                f" vs classifier alone {c['mean']:.3f} ({c['ci'][0]:.3f}-{c['ci'][1]:.3f});"
                f" difference {delta['mean']:+.3f} ({delta['ci'][0]:+.3f} to {delta['ci'][1]:+.3f})")

    plot_ssac(folder.figures / "ssac.png", data["x_test"][pick], recons, z, y, ds.classes, cfg.prior_std,
              history, headline)
    seconds["total"] = time.monotonic() - t0
    metrics = {
        "method": "SSAC (Xie, Zhang, Xia, MedIA 2019): AAE reconstruction network + classifier with 1x1 transitions",
        "dataset": ds.name, "classes": list(ds.classes), "label_fraction": cfg.label_fraction, "seed": cfg.seed,
        "size": data["size"], "n_labelled": len(data["labelled"]), "n_unlabelled": len(data["unlabelled"]),
        "n_test": int(len(y)),
        "ssac": results["ssac"], "classifier": results["classifier"], "delta_auc": delta,
        "aae": {"test_recon_bce": rec_test["bce"], "test_recon_mse": rec_test["mse"], "z_mean": float(z.mean()),
                "z_std": float(z.std()), "final_d_acc": history["aae"][-1].get("d_acc") if history["aae"] else None,
                "pretrained_from": cfg.pretrained_aae},
        "headline": headline, "history": history, "seconds": seconds, "config": asdict(cfg),
    }
    _write_per_case(folder.per_case_path, ds.case_ids("test"), y, probs, ds.classes)
    folder.save_metrics(metrics)
    return metrics


def _write_per_case(path: Path, ids: Sequence[str], y: np.ndarray, probs: dict[str, np.ndarray],
                    classes: Sequence[str]) -> None:
    """One row per test case: id, target and each model's class probabilities (``ssac_p_<class>``, ...)."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["case", "target", *[f"{m}_p_{c}" for m in probs for c in classes]])
    for i, cid in enumerate(ids):
        w.writerow([cid, int(y[i]), *[f"{float(probs[m][i, k]):.6g}" for m in probs for k in range(len(classes))]])
    write_text_atomic(path, buf.getvalue())


def load_ssac(run_dir: str | Path) -> tuple[AAE, SSACNet, FusionClassifier]:
    """Rebuild the AAE, the SSAC classifier and the baseline of a finished run from its checkpoints."""
    ckpt = RunFolder(run_dir).checkpoints
    ac = read_config(ckpt / "aae")["model"]
    aae = AAE(ac["in_channels"], ac["size"], ac["widths"], ac["latent_dim"], ac["disc_hidden"])
    aae.load_state_dict(read_state(ckpt / "aae"))
    models: list[nn.Module] = []
    for name in ("ssac", "classifier"):
        mc = read_config(ckpt / name)["model"]
        cc = mc["classifier"] if mc["class"] == "SSACNet" else mc
        clf = FusionClassifier(cc["in_channels"], cc["n_classes"], cc["widths"], cc["r_widths"], cc["fuse_levels"],
                               cc["dropout"])
        model: nn.Module = clf
        if mc["class"] == "SSACNet":
            encoder = Encoder(ac["in_channels"], ac["size"], ac["widths"], ac["latent_dim"])
            model = SSACNet(encoder, clf, mc["freeze_encoder"])
        model.load_state_dict(read_state(ckpt / name))
        models.append(model.eval())
    return aae.eval(), models[0], models[1]  # type: ignore[return-value]


__all__ = [
    "AMP_MODES", "ENCODER_MODES", "RECON_LOSSES", "AAE", "AAERegularisation", "Decoder", "Discriminator", "Encoder", "FusionClassifier", "SSACConfig", "SSACNet",
    "build_models", "load_ssac_config",
    "class_scores", "classification_metrics", "default_widths", "discriminator_loss", "generator_loss",
    "level_sizes", "load_ssac", "paired_auc_difference", "plot_ssac", "predict_proba", "reconstruction_loss",
    "run_ssac", "train_aae", "train_classifier",
]
