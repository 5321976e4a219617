"""``train``: the model of a round by continual fine-tuning (ACFT, Zhou et al. CVPR'17 / MedIA'21;
``reference/METHODS.md`` §5.1) and its fixed validation set (the active-learning cycle, :mod:`aemia.cli.active`).

Round ``t``'s model ``M_t`` is trained, according to ``mode``:

* ``continual`` (default, ACFT(HQ)): initialised from ``M_{t-1}`` (the latest trained model) and trained on
  **Q** = the training labels ``M_{t-1}`` had not seen, plus **H** = the labels ``M_{t-1}`` had seen and
  gets *wrong*: for segmentation a case whose Dice (mean over foreground classes, both-empty = 1) of
  ``M_{t-1}``'s prediction is below ``hard_threshold`` (default 0.5); for classification a misclassified
  case (arg-max ≠ label). Cases the model already gets right are not revisited.
* ``all-labelled`` (ACFT(LQ)): from ``M_{t-1}``, on every training label.
* ``new-only`` (ACFT(Q)): from ``M_{t-1}``, on Q only.
* ``from-scratch`` (AFT / RFT): from ``M_0`` (the same seeded initialisation, or ``pretrained`` weights,
  every round), on every training label.

The first model (no ``M_{t-1}``) starts from ``M_0`` on every training label in every mode.
The model of a round is its **last epoch**; the validation set is never used to pick epochs or models,
only to measure, so the learning curve is not optimistically biased.

Validation set: at the first ``train``, ``floor(val_fraction · n0)`` cases are drawn (seeded) from the
``n0`` annotated cases of the earliest annotated round and frozen in ``validation.json``; they never enter
training. Round 0 is chosen at random (cold start, :mod:`aemia.active.query`), so this is an unbiased sample
of the pool, whereas later rounds are biased by the strategy. Fewer than 1 → no validation set, no learning
curve.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aemia.active.ledger import LedgerItem
from aemia.active.project import VALIDATION_FILE, Project, utc_now, open_project
from aemia.active.scoring import predict_probabilities
from aemia.errors import InputError
from aemia.utils.io import write_json_atomic

__all__ = [
    "MODES",
    "case_scores",
    "fit_model",
    "hard_cases",
    "initial_model",
    "train_round",
    "validation_cases",
]

MODES = ("continual", "all-labelled", "new-only", "from-scratch")
_MODE_ALIASES = {"hq": "continual", "acft": "continual", "lq": "all-labelled", "all": "all-labelled",
                 "q": "new-only", "scratch": "from-scratch"}


def normalise_mode(mode: str) -> str:
    key = mode.strip().lower().replace("_", "-")
    key = _MODE_ALIASES.get(key, key)
    if key not in MODES:
        raise InputError(None, f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    return key


def validation_cases(proj: Project, annotated: Sequence[LedgerItem]) -> list[str]:
    """The frozen held-out validation cases (chosen and written at the first call; see module docstring)."""
    path = proj.root / VALIDATION_FILE
    if path.is_file():
        return list(json.loads(path.read_text())["cases"])
    first = min(it.round for it in annotated if it.round is not None)
    pool = sorted(it.case_id for it in annotated if it.round == first)
    n_val = int(math.floor(proj.config.val_fraction * len(pool) + 1e-9))
    order = np.random.default_rng(proj.config.seed).permutation(len(pool))
    cases = sorted(pool[i] for i in order[:n_val])
    write_json_atomic(path, {
        "cases": cases, "from_round": first, "fraction": proj.config.val_fraction, "created_at": utc_now(),
        "rule": "floor(fraction x n) cases drawn with the project seed from the n annotated cases of the first "
                "annotated round (a random cold-start round); frozen, never used for training or model selection",
    })
    return cases


def predict_all(model: Any, x: np.ndarray, batch_size: int = 16) -> np.ndarray:
    import torch

    out = [predict_probabilities(model, torch.from_numpy(x[s : s + batch_size])).numpy() for s in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros((0,))


def case_scores(task: str, probs: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-case score: Dice (mean over foreground classes, both empty = 1) or 1/0 correct (classification)."""
    if task == "classification":
        return (probs.argmax(1) == y).astype(np.float64)
    import torch

    from aemia.train.trainer import case_mean_dice

    pred = probs.argmax(1)
    return np.array([case_mean_dice(torch.from_numpy(p), torch.from_numpy(t), n_classes) for p, t in zip(pred, y)])


def validation_metrics(task: str, probs: np.ndarray, y: np.ndarray, n_classes: int) -> dict[str, Any]:
    if len(y) == 0:
        return {}
    per_case = case_scores(task, probs, y, n_classes)
    if task == "segmentation":
        return {"metric": "dice", "value": float(per_case.mean()), "n": int(len(y))}
    from aemia.evaluate.metrics import auc

    try:
        value: float | None = float(auc(y, probs[:, 1] if probs.shape[1] == 2 else probs))
    except ValueError:
        value = None  # a single class among the validation cases
    return {"metric": "auc", "value": value, "accuracy": float(per_case.mean()), "n": int(len(y))}


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
) -> tuple[Any, dict[str, Any]]:
    """One round's training recipe: ``epochs`` of Adam (cosine) with light augmentation on ``x, y`` (class
    indices for classification, masks for segmentation), no validation, the last epoch is the model.

    Returns ``(model on the CPU, the trainer's fit report)``; checkpoints and ``log.jsonl`` go to ``run_dir``.
    """
    from aemia.train.data import ArrayDataset, AugmentConfig
    from aemia.train.trainer import TrainConfig, Trainer

    aug = AugmentConfig()
    train_set = (ArrayDataset(x, targets=y, augment=aug, seed=seed, ids=ids) if task == "classification"
                 else ArrayDataset(x, y, augment=aug, seed=seed, ids=ids))
    unetpp = getattr(model, "config", {}).get("name") == "unetpp"
    tcfg = TrainConfig(epochs=int(epochs), batch_size=int(batch_size), lr=float(lr), seed=seed, amp="none",
                       device=device, progress=progress, deep_supervision=unetpp)
    trainer = Trainer(model, train_set, None, tcfg, run_dir, task=task)
    fit = trainer.fit()
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


def train_round(
    project: str | Path | Project,
    *,
    epochs: int = 20,
    mode: str = "continual",
    hard_threshold: float = 0.5,
    lr: float = 1e-3,
    batch_size: int = 8,
    overwrite: bool = False,
    device: str = "auto",
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train the model of the latest annotated round (``models/round_NN``); returns its ``summary.json``.

    See the module docstring for the modes, the hard-case rule and the validation set. Refuses when that
    round already has a model (``overwrite`` retrains it) and, in ``continual`` / ``new-only`` mode, when
    there are no labels the previous model has not seen.
    """
    say = log or (lambda _msg: None)
    proj = open_project(project)
    mode = normalise_mode(mode)
    if epochs < 1:
        raise InputError(None, f"--epochs must be at least 1, got {epochs}")
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
    val_ids = set(validation_cases(proj, annotated))
    by_id = {it.case_id: it for it in annotated}
    labelled = sorted(c for c in by_id if c not in val_ids)
    if not labelled:
        raise InputError(proj.root, "every annotated case is in the validation set; annotate more cases")
    parent = proj.latest_model(before=r)
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
            prev = proj.load_model(parent)
            x, y = proj.dataset_arrays([by_id[c] for c in seen], progress)
            hard = hard_cases(cfg.task, predict_all(prev, x), y, seen, proj.n_classes, hard_threshold)
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
    trained, fit = fit_model(model, x, y, cfg.task, out_dir, epochs=epochs, lr=lr, batch_size=batch_size,
                             seed=cfg.seed + r, device=device, progress=progress, ids=train_ids)
    from aemia.nets import save_checkpoint

    val_items = [by_id[c] for c in sorted(val_ids)]
    val: dict[str, Any] = {}
    if val_items:
        vx, vy = proj.dataset_arrays(val_items)
        val = validation_metrics(cfg.task, predict_all(trained, vx), vy, proj.n_classes)
    summary = {
        "round": r, "mode": mode, "task": cfg.task, "created_at": utc_now(), "init": init,
        "parent": None if parent is None else parent["round"],
        "labelled": labelled, "trained_on": train_ids, "new": new if parent else train_ids,
        "hard": hard, "hard_threshold": hard_threshold if cfg.task == "segmentation" else "misclassified",
        "n_labels": len(by_id), "n_train_labels": len(labelled), "n_validation": len(val_ids),
        "pending": counts["queried"], "epochs": int(epochs), "lr": float(lr), "batch_size": int(batch_size),
        "final_train_loss": fit["history"][-1]["train_loss"] if fit["history"] else None,
        "validation": val,
    }
    save_checkpoint(trained, out_dir / "model", {"round": r, "mode": mode, "task": cfg.task,
                                                 "classes": cfg.classes, "size": cfg.size, "validation": val})
    write_json_atomic(out_dir / "summary.json", summary)  # the round's commit point
    return summary
