"""``train``: the model of a round by fine-tuning (ACFT, Zhou et al. CVPR'17 / MedIA'21;
``reference/METHODS.md`` §5.1), scored on the growing validation set, promoted only when not worse than the project model on the same
validation cases (:mod:`aemia.active.validation`, rule ``promotion``).

Round ``t``'s model ``M_t`` is trained, according to ``mode``:

* ``all-labelled`` (default, ACFT(LQ)): initialised from the project model ``M_{t-1}`` and trained on every
  training label so far (nothing is forgotten).
* ``continual`` (ACFT(HQ)): from ``M_{t-1}``, on **Q** = the training labels ``M_{t-1}`` had not seen, plus
  **H** = the labels ``M_{t-1}`` had seen and gets *wrong*: for segmentation a case whose Dice (mean over
  foreground classes, both-empty = 1) is below ``hard_threshold`` (default 0.5); for classification a
  misclassified case. Cases the model already gets right are not revisited.
* ``new-only`` (ACFT(Q)): from ``M_{t-1}``, on Q only.
* ``from-scratch`` (AFT / RFT): from ``M_0`` (the same seeded initialisation, or ``pretrained`` weights,
  every round), on every training label.

``M_{t-1}`` is the *project model*: the latest round that was promoted. The first model starts from ``M_0``
on every training label in every mode. The model of a round is its **last epoch**; the validation set is
never used to pick epochs, only to measure and to decide promotion.

Every round folder ``models/round_NN`` is also a run folder: ``config.yaml`` (a :class:`RunConfig`-shaped
record: model, widths, size, task) and ``checkpoints/best.safetensors`` + ``.json`` (the round's model), so
``aemia predict --run P/models/round_NN`` applies it.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aemia.active.project import Project, open_project, utc_now
from aemia.active.scoring import predict_probabilities
from aemia.active.validation import (
    PROMOTION_RULES,
    case_scores,
    grow_validation,
    promotion_decision,
    validation_metrics,
)
from aemia.errors import InputError
from aemia.utils.io import write_json_atomic

__all__ = [
    "DEFAULT_MODE",
    "MODES",
    "fit_model",
    "hard_cases",
    "initial_model",
    "normalise_mode",
    "predict_all",
    "train_round",
]

MODES = ("all-labelled", "continual", "new-only", "from-scratch")
DEFAULT_MODE = "all-labelled"
#: A 2D round trains at least this many optimiser steps (``aemia active train --min-steps``). Measured on BUSI
#: through the CLI (training_stability.json, busi_active_cli): 20 epochs of a 24-label round are 60 steps and
#: scored below always answering the most common class; Kvasir from scratch needed 3000 (``aemia train``).
DEFAULT_MIN_STEPS_2D = 1000
_MODE_ALIASES = {"hq": "continual", "acft": "continual", "lq": "all-labelled", "all": "all-labelled",
                 "q": "new-only", "scratch": "from-scratch"}


def normalise_mode(mode: str) -> str:
    """The canonical name of a training mode (aliases: hq/acft, lq/all, q, scratch); ``InputError`` if unknown."""
    key = mode.strip().lower().replace("_", "-")
    key = _MODE_ALIASES.get(key, key)
    if key not in MODES:
        raise InputError(None, f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    return key


def predict_all(model: Any, x: np.ndarray | list[np.ndarray], batch_size: int = 16,
                patch: Sequence[int] | None = None) -> Any:
    """Softmax probabilities of every case of ``x`` (batches of ``batch_size``); for a list of 3D volumes, a list
    of ``(K, *S)`` maps, each predicted by sliding window over ``patch``-sized patches."""
    import torch

    if isinstance(x, list):
        from aemia.nets.predict import predict_probs

        return [predict_probs(model, torch.from_numpy(np.ascontiguousarray(v))[None], roi_size=list(patch or v.shape[1:]),
                              amp="none")[0].float().cpu().numpy() for v in x]
    out = [predict_probabilities(model, torch.from_numpy(x[s : s + batch_size])).numpy() for s in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros((0,))


def hard_cases(task: str, probs: np.ndarray, y: np.ndarray, ids: Sequence[str], n_classes: int,
               hard_threshold: float = 0.5) -> dict[str, float]:
    """ACFT's **H**: the previously labelled cases ``ids`` the model gets wrong, ``{case: score}``.

    ``probs`` are the model's predictions for them and ``y`` their labels. Segmentation: case Dice below
    ``hard_threshold``; classification: misclassified (:func:`case_scores` is 1 / 0).
    """
    sc = case_scores(task, probs, y, n_classes)
    threshold = hard_threshold if task == "segmentation" else 0.5  # correct = 1, wrong = 0
    return {c: float(s) for c, s in zip(ids, sc) if s < threshold}


def fit_model(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    task: str,
    run_dir: str | Path,
    *,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 8,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    ids: Sequence[str] | None = None,
    patch: Sequence[int] | None = None,
    patches_per_volume: int = 8,
    min_steps: int = 0,
) -> tuple[Any, dict[str, Any]]:
    """One round's training recipe: ``epochs`` of Adam (cosine) with light augmentation on ``x, y`` (class
    indices for classification, masks for segmentation), no validation, the last epoch is the model.
    ``min_steps`` raises the epochs so the round takes at least that many optimiser steps
    (:meth:`aemia.train.trainer.TrainConfig.with_min_steps`): a 30-label round is otherwise a few dozen steps.

    3D (``x`` a list of volumes, ``y`` their masks, ``patch`` given): an epoch is ``patches_per_volume`` random
    ``patch``-sized patches per volume with nnU-Net's foreground oversampling (``aemia train``'s 3D recipe:
    :class:`aemia.train.data.PatchDataset`, flips and small rotations/zooms, no 90° rotations).

    Returns ``(model on the CPU, the trainer's fit report)``; checkpoints and ``log.jsonl`` go to ``run_dir``.
    """
    from aemia.train.data import ArrayDataset, AugmentConfig
    from aemia.train.trainer import TrainConfig, Trainer

    aug = AugmentConfig()
    if isinstance(x, list):
        from aemia.train.data import PatchDataset

        train_set: Any = PatchDataset(list(zip(x, y)), patch or [48, 48, 48], patches_per_volume,
                                      augment=AugmentConfig(rot90=False), seed=seed)
    elif task == "classification":
        train_set = ArrayDataset(x, targets=y, augment=aug, seed=seed, ids=ids)
    else:
        train_set = ArrayDataset(x, y, augment=aug, seed=seed, ids=ids)
    unetpp = getattr(model, "config", {}).get("name") == "unetpp"
    tcfg = TrainConfig(epochs=int(epochs), batch_size=int(batch_size), lr=float(lr), seed=seed, amp="none",
                       device=device, progress=progress, deep_supervision=unetpp, min_steps=int(min_steps))
    trainer = Trainer(model, train_set, None, tcfg, run_dir, task=task)
    fit = trainer.fit() | {"epochs": trainer.cfg.epochs}  # after with_min_steps: the epochs actually trained
    return trainer.model.cpu(), fit


def initial_model(proj: Project, mode: str, parent: dict[str, Any] | None) -> tuple[Any, dict[str, Any]]:
    """The weights a round starts from: ``M_{t-1}`` (``parent``) for the continual modes, else ``M_0``.

    Returns ``(model, init)``; ``init`` says where the weights came from and, when a checkpoint was loaded,
    how many tensors were loaded / missing / unexpected / shape-mismatched (``load_weights``' report).
    """
    from aemia.nets import load_weights

    model = proj.new_model()
    if mode == "from-scratch" or parent is None:
        src = proj.config.pretrained
        return model, {"from": "pretrained" if src else "M0", "path": src, "seed": proj.config.seed}
    path = proj.model_dir(parent["round"]) / "model"
    report = load_weights(model, path, strict=True)
    return model, {"from": f"round_{parent['round']:02d}", "path": str(path), "loaded": len(report.loaded),
                   "missing": len(report.missing), "unexpected": len(report.unexpected),
                   "mismatched": len(report.mismatched), "summary": report.summary()}


def _write_run_folder(proj: Project, out_dir: Path, model: Any, meta: dict[str, Any], train: dict[str, Any]) -> None:
    """Make ``out_dir`` a run folder for ``aemia predict``: ``config.yaml`` (the fields of
    :class:`aemia.runs.RunConfig` a 2D picture model needs, or a 3D model's patch, working spacing and
    normaliser) and ``checkpoints/best`` (this model)."""
    from aemia.nets import save_checkpoint
    from aemia.runs.folder import RunFolder

    cfg = proj.config
    config = {"dataset": f"active-project:{proj.root.name}", "model": cfg.model, "features": list(cfg.features),
              "size": int(cfg.size), "task": cfg.task, "eval_split": "validation",
              "train": {k: train[k] for k in ("epochs", "batch_size", "lr", "seed")} | {"amp": "none"},
              "active_project": str(proj.root.resolve()), "round": meta["round"], "classes": list(cfg.classes)}
    if proj.is_3d:
        config |= {"size": None, "patch": list(cfg.patch or []), "spacing": list(cfg.spacing or []),
                   "normaliser": cfg.normaliser, "patches_per_volume": int(cfg.patches_per_volume)}
    run = RunFolder(out_dir)
    save_checkpoint(model, run.checkpoint("best"), meta)
    run.save_config(config)


def train_round(
    project: str | Path | Project,
    *,
    epochs: int = 20,
    mode: str = DEFAULT_MODE,
    hard_threshold: float = 0.5,
    lr: float = 1e-3,
    batch_size: int = 8,
    overwrite: bool = False,
    device: str = "auto",
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    promotion: str = "not-worse",
    min_steps: int | None = None,
) -> dict[str, Any]:
    """Train the model of the latest annotated round (``models/round_NN``); returns its ``summary.json``.

    See the module docstring for the modes and :mod:`aemia.active.validation` for the validation set and
    the promotion rule (``summary["promoted"]``, ``summary["decision"]``). ``min_steps`` (default
    :data:`DEFAULT_MIN_STEPS_2D` for 2D projects, 0 for 3D) raises ``epochs`` so the round takes at least that many
    optimiser steps; ``summary["epochs"]`` is what was trained. Refuses when that round already
    has a model (``overwrite`` retrains it) and, in ``continual`` / ``new-only`` mode, when there are no
    labels the project model has not seen.
    """
    say = log or (lambda _msg: None)
    proj = open_project(project)
    mode = normalise_mode(mode)
    if epochs < 1:
        raise InputError(None, f"--epochs must be at least 1, got {epochs}")
    if min_steps is not None and min_steps < 0:
        raise InputError(None, f"--min-steps must be at least 0, got {min_steps}")
    if promotion not in PROMOTION_RULES:
        raise InputError(None, f"--promotion must be one of {', '.join(PROMOTION_RULES)}, got {promotion!r}")
    cfg = proj.config
    with proj.ledger() as led:
        annotated = led.items("annotated")
        counts = led.status_counts()
    if not annotated:
        raise InputError(proj.root, "no annotated cases yet: query, annotate and import labels first")
    r = max(it.round for it in annotated if it.round is not None)
    out_dir = proj.model_dir(r)
    if (out_dir / "summary.json").is_file() and not overwrite:
        raise InputError(out_dir, f"round {r:02d} already has a model; query and import new labels first, "
                                  "or pass --overwrite to retrain this round")
    earlier = [s for s in proj.model_summaries() if s["round"] < r]
    trained_before = sorted({c for s in earlier for c in s["labelled"]})
    val_ids = set(grow_validation(proj, annotated, r, trained_before))
    by_id = {it.case_id: it for it in annotated}
    labelled = sorted(c for c in by_id if c not in val_ids)
    if not labelled:
        raise InputError(proj.root, "every annotated case is in the validation set; annotate more cases")
    parent = proj.project_model(before=r)
    hard: dict[str, float] = {}
    new = sorted(set(labelled) - set(parent["labelled"])) if parent else labelled
    if parent is None or mode in ("from-scratch", "all-labelled"):
        train_ids = labelled
    else:
        if not new:
            raise InputError(proj.root, f"no labels that round_{parent['round']:02d}'s model has not seen; "
                                        "import new labels, or use --mode all-labelled / from-scratch")
        train_ids = list(new)
        seen = sorted(set(parent["labelled"]) & set(labelled))
        if mode == "continual" and seen:
            x, y = proj.dataset_arrays([by_id[c] for c in seen], progress)
            hard = hard_cases(cfg.task, predict_all(proj.load_model(parent), x, patch=cfg.patch), y, seen,
                              proj.n_classes, hard_threshold)
            train_ids = sorted(set(new) | set(hard))
    model, init = initial_model(proj, mode, parent)
    say(f"round {r:02d} ({mode}): init from {init['from']}"
        + (f" ({init['summary']})" if "summary" in init else "")
        + f"; training on {len(train_ids)} cases ({len(new) if parent else len(train_ids)} new"
        + (f", {len(hard)} hard" if parent and mode == "continual" else "") + f"); {len(val_ids)} validation cases")
    if out_dir.exists():
        shutil.rmtree(out_dir)  # an overwritten round, or one whose training was interrupted (no summary.json)
    out_dir.mkdir(parents=True)
    x, y = proj.dataset_arrays([by_id[c] for c in train_ids], progress)
    if min_steps is None:
        min_steps = 0 if proj.is_3d else DEFAULT_MIN_STEPS_2D
    trained, fit = fit_model(model, x, y, cfg.task, out_dir, epochs=epochs, lr=lr, batch_size=batch_size,
                             seed=cfg.seed + r, device=device, progress=progress, ids=train_ids, patch=cfg.patch,
                             patches_per_volume=cfg.patches_per_volume, min_steps=min_steps)
    epochs = int(fit.get("epochs", epochs))
    from aemia.nets import save_checkpoint

    val: dict[str, Any] = {}
    new_cases: np.ndarray | None = None
    old_cases: np.ndarray | None = None
    if val_ids:
        vx, vy = proj.dataset_arrays([by_id[c] for c in sorted(val_ids)])
        probs = predict_all(trained, vx, patch=cfg.patch)
        val = validation_metrics(cfg.task, probs, vy, proj.n_classes, seed=cfg.seed + r)
        if parent is not None:
            new_cases = case_scores(cfg.task, probs, vy, proj.n_classes)
            old_cases = case_scores(cfg.task, predict_all(proj.load_model(parent), vx, patch=cfg.patch), vy,
                                    proj.n_classes)
    decision = promotion_decision(new_cases, old_cases, None if parent is None else parent["round"],
                                  metric="accuracy" if cfg.task == "classification" else "dice", rule=promotion,
                                  seed=cfg.seed + r)
    settings = {"epochs": int(epochs), "lr": float(lr), "batch_size": int(batch_size), "seed": cfg.seed + r,
                "promotion": promotion, "min_steps": int(min_steps)}
    summary = {
        "round": r, "mode": mode, "task": cfg.task, "created_at": utc_now(), "init": init,
        "parent": None if parent is None else parent["round"],
        "labelled": labelled, "trained_on": train_ids, "new": new if parent else train_ids,
        "hard": hard, "hard_threshold": hard_threshold if cfg.task == "segmentation" else "misclassified",
        "n_labels": len(by_id), "n_train_labels": len(labelled), "n_validation": len(val_ids),
        "pending": counts["queried"], "epochs": int(epochs), "min_steps": int(min_steps), "lr": float(lr), "batch_size": int(batch_size),
        "final_train_loss": fit["history"][-1]["train_loss"] if fit["history"] else None,
        "validation": val, "promoted": bool(decision["promoted"]), "decision": decision,
        "project_model": r if decision["promoted"] else parent["round"],  # type: ignore[index]
    }
    meta = {"round": r, "mode": mode, "task": cfg.task, "classes": cfg.classes, "size": cfg.size, "validation": val,
            "dims": cfg.dims, "patch": cfg.patch, "spacing": cfg.spacing}
    save_checkpoint(trained, out_dir / "model", meta)
    _write_run_folder(proj, out_dir, trained, meta, settings)
    write_json_atomic(out_dir / "summary.json", summary)  # the round's commit point
    return summary
