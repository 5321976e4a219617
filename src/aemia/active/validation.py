"""The held-out validation set of an active-learning project, its scores with a bootstrap 95% CI, and the
rule that keeps a worse round from replacing the project's model.

**The set grows with the labels.** Before each ``train`` the set is topped up to
:func:`validation_target` cases, ``max(floor(fraction·n), ceil(0.1·n), min(20, n // 3))`` for ``n``
annotated cases (``fraction = 0`` turns validation off): at least 20 cases as soon as there are 60 labels,
never more than a third while there are fewer, and at least 10% always. Only cases *no model has been
trained on* may join (the newly imported ones, drawn with the project seed and the round), so every model
of the project is compared on cases none of them has seen; at most half of a round's new cases join once a
model exists, so every round still trains on new labels. Cases never leave the set. The first round is a
random cold start (:mod:`aemia.active.query`), so the first cases are an unbiased sample of the pool; later
ones follow the strategy's choice.

**Score.** Per case: correct 1 / 0 (classification, the validation *accuracy*) or the mean foreground Dice
(segmentation); the round's score is their mean with a case-level percentile bootstrap 95% CI
(:func:`aemia.evaluate.metrics.bootstrap_ci`).

**Promotion** (:func:`promotion_decision`, rules in :data:`PROMOTION_RULES`). Both the new round's model and
the current project model are scored on the *same current* validation cases, and the per-case differences
(new − current) get a paired bootstrap 95% CI.

* ``not-worse`` (default): the new model replaces the project model only if its mean score on those cases is
  at least the current model's. Measured on BUSI through the CLI (``training_stability.json``), the looser
  rule below let a round drop 0.096 in test accuracy because 20 validation cases cannot put a 5-point drop
  outside a CI; this rule keeps the better-validated model, and the next round still fine-tunes it on every
  label.
* ``ci``: the new model is kept unless the current one scores above the upper end of the new model's own
  95% CI (a drop inside the CI counts as noise).

Until a model is promoted the previous one stays the one ``query`` and the next ``train`` start from.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from aemia.active.ledger import LedgerItem
from aemia.active.project import VALIDATION_FILE, Project, utc_now
from aemia.utils.io import write_json_atomic

__all__ = [
    "MIN_VALIDATION",
    "PROMOTION_RULES",
    "case_scores",
    "grow_validation",
    "promotion_decision",
    "score_with_ci",
    "validation_metrics",
    "validation_target",
]

MIN_VALIDATION = 20  # cases, once there are enough labels (3 x this many)
_RULE = ("topped up before each train to max(floor(fraction x n), ceil(0.1 x n), min(20, n // 3)) of the n annotated "
         "cases, drawn with the project seed and the round from cases no model was trained on (at most half of a "
         "round's new cases once a model exists); cases never leave; never used for training or to pick epochs")


def validation_target(n_annotated: int, fraction: float) -> int:
    """How many of ``n_annotated`` cases the validation set should hold (0 when ``fraction`` is 0)."""
    if fraction <= 0 or n_annotated <= 0:
        return 0
    n = int(n_annotated)
    return max(int(math.floor(fraction * n + 1e-9)), math.ceil(0.1 * n - 1e-9), min(MIN_VALIDATION, n // 3))


def grow_validation(proj: Project, annotated: Sequence[LedgerItem], round_: int,
                    trained: Sequence[str] = ()) -> list[str]:
    """The validation cases for training round ``round_``, topped up and written to ``validation.json``.

    ``trained`` are the cases some model of the project was trained on (they never join). See the module
    docstring for the rule.
    """
    path = proj.root / VALIDATION_FILE
    state: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {"cases": []}
    cases = set(state["cases"])
    target = validation_target(len(annotated), proj.config.val_fraction)
    excluded = cases | set(trained)
    candidates = sorted(it.case_id for it in annotated if it.case_id not in excluded)
    cap = len(candidates) - 1 if not trained else len(candidates) // 2
    need = max(0, min(target - len(cases), cap))
    if need == 0 and path.is_file():
        return sorted(cases)
    order = np.random.default_rng([proj.config.seed, round_]).permutation(len(candidates))
    added = sorted(candidates[i] for i in order[:need])
    history = list(state.get("added", []))
    if added or not history:
        history.append({"round": round_, "cases": added, "n_annotated": len(annotated), "target": target})
    cases |= set(added)
    write_json_atomic(path, {"cases": sorted(cases), "fraction": proj.config.val_fraction, "added": history,
                             "updated_at": utc_now(), "rule": _RULE})
    return sorted(cases)


def case_scores(task: str, probs: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-case score: Dice (mean over foreground classes, both empty = 1) or 1/0 correct (classification).
    ``probs`` ``(N, K, ...)``, or a list of ``(K, *S)`` maps of different shapes (3D volumes)."""
    if task == "classification":
        return (probs.argmax(1) == y).astype(np.float64)
    from aemia.evaluate.metrics import dice

    pred = [p.argmax(0) for p in probs] if isinstance(probs, list) else probs.argmax(1)
    out = []
    for p, t in zip(pred, y):
        fg = [dice(p == c, t == c) for c in range(1, n_classes)]
        out.append(float(np.mean(fg)) if fg else 1.0)
    return np.asarray(out, dtype=np.float64)


def score_with_ci(task: str, probs: np.ndarray, y: np.ndarray, n_classes: int, seed: int = 0,
                  n_resamples: int = 1000) -> dict[str, Any]:
    """Mean per-case score (accuracy or Dice) with its bootstrap 95% CI: ``{"metric", "mean", "ci", "n"}``."""
    from aemia.evaluate.metrics import bootstrap_ci

    ci = bootstrap_ci(case_scores(task, probs, y, n_classes), n_resamples=n_resamples, seed=seed)
    return {"metric": "accuracy" if task == "classification" else "dice", "mean": ci.point, "ci": [ci.lo, ci.hi],
            "n": ci.n}


def validation_metrics(task: str, probs: np.ndarray, y: np.ndarray, n_classes: int,
                       seed: int = 0) -> dict[str, Any]:
    """A model's validation result: ``metric``/``value`` (Dice, or AUC for classification), ``accuracy``,
    ``n`` and ``score`` (:func:`score_with_ci`, the value the promotion rule uses)."""
    if len(y) == 0:
        return {}
    score = score_with_ci(task, probs, y, n_classes, seed)
    if task == "segmentation":
        return {"metric": "dice", "value": score["mean"], "n": int(len(y)), "score": score}
    from aemia.evaluate.metrics import auc

    try:
        value: float | None = float(auc(y, probs[:, 1] if probs.shape[1] == 2 else probs))
    except ValueError:
        value = None  # a single class among the validation cases
    return {"metric": "auc", "value": value, "accuracy": score["mean"], "n": int(len(y)), "score": score}


def _not_worse(new: float, old: float, new_ci: tuple[float, float], diff_ci: tuple[float, float]) -> bool:
    return new >= old - 1e-12


def _outside_ci(new: float, old: float, new_ci: tuple[float, float], diff_ci: tuple[float, float]) -> bool:
    return not old > new_ci[1]


#: name -> (promoted?(new mean, current mean, new model's CI, CI of the paired difference), what it demands)
PROMOTION_RULES: dict[str, tuple[Callable[[float, float, tuple[float, float], tuple[float, float]], bool], str]] = {
    "not-worse": (_not_worse, "at least the project model's mean on the same cases"),
    "ci": (_outside_ci, "the project model not above this round's 95% CI"),
}


def promotion_decision(new_cases: np.ndarray | None, old_cases: np.ndarray | None, incumbent_round: int | None,
                       metric: str = "accuracy", rule: str = "not-worse", seed: int = 0) -> dict[str, Any]:
    """Whether a new model replaces the project model (round ``incumbent_round``; ``None``: there is none).

    ``new_cases`` / ``old_cases``: per-case validation scores (:func:`case_scores`) of the new and the current
    model on the *same* cases (``None`` or empty: no validation set, the new model is promoted). ``rule`` is a
    key of :data:`PROMOTION_RULES`. The result records both means, the new model's 95% CI and the paired 95%
    CI of the difference (new − current), and says why in ``reason``.
    """
    from aemia.evaluate.metrics import bootstrap_ci

    if rule not in PROMOTION_RULES:
        raise ValueError(f"unknown promotion rule {rule!r}; choose one of {', '.join(PROMOTION_RULES)}")
    if incumbent_round is None:
        return {"promoted": True, "rule": rule, "reason": "first model"}
    if new_cases is None or old_cases is None or len(new_cases) == 0:
        return {"promoted": True, "rule": rule, "reason": "no validation set to compare on",
                "incumbent": incumbent_round}
    new_arr, old_arr = np.asarray(new_cases, dtype=float), np.asarray(old_cases, dtype=float)
    if new_arr.shape != old_arr.shape:
        raise ValueError(f"paired scores differ in length: {new_arr.shape} vs {old_arr.shape}")
    new_ci, diff_ci = bootstrap_ci(new_arr, seed=seed), bootstrap_ci(new_arr - old_arr, seed=seed)
    new_mean, old_mean = float(new_arr.mean()), float(old_arr.mean())
    check, demand = PROMOTION_RULES[rule]
    promoted = bool(check(new_mean, old_mean, (new_ci.lo, new_ci.hi), (diff_ci.lo, diff_ci.hi)))
    verdict = "promoted" if promoted else "not promoted"
    reason = (f"{metric} {new_mean:.3f} (95% CI {new_ci.lo:.3f}-{new_ci.hi:.3f}) vs round {incumbent_round:02d}'s "
              f"{old_mean:.3f} on the same {new_arr.size} cases (difference {new_mean - old_mean:+.3f}, paired 95% CI "
              f"{diff_ci.lo:+.3f} to {diff_ci.hi:+.3f}); rule {rule}: {demand}: {verdict}")
    return {"promoted": promoted, "rule": rule, "incumbent": incumbent_round, "incumbent_score": old_mean,
            "score": new_mean, "score_ci": [new_ci.lo, new_ci.hi], "difference": new_mean - old_mean,
            "difference_ci": [diff_ci.lo, diff_ci.hi], "reason": reason}
