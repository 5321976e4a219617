"""Benchmark mode of active learning: a simulated annotator reveals the ground truth of the queried cases.

For every strategy and seed (:func:`simulate`):

1. the pool is the catalog's **train** split (optionally a fixed seeded subset, ``pool_limit``), the evaluation
   set its **test** split (optionally ``test_limit`` cases); the validation split is not used;
2. round 0: ``initial`` cases drawn uniformly at random (seed ``seed``; the same draw for every strategy, so the
   curves of one seed start from the same labelled set), the first model ``M_0`` (seeded initialisation) trained
   on them;
3. rounds 1..R: the strategy scores the unlabelled pool with the current model and the ``per_round`` best cases
   are "annotated" (their ground truth is revealed); the model is trained according to ``mode``, exactly the
   rules of the human-in-the-loop cycle (:mod:`aemia.active.continual`): ``continual`` = ACFT(HQ), fine-tune the
   previous model on the new labels **plus** the previously labelled cases it gets wrong
   (:func:`~aemia.active.continual.hard_cases`); ``all-labelled`` (ACFT(LQ)); ``new-only`` (ACFT(Q));
   ``from-scratch`` (AFT/RFT: ``M_0`` on every label). Every strategy, random included, uses the same mode,
   so curves differ only by the selection;
4. after every round the model is evaluated on the test split: **AUC** for classification (binary, or macro
   one-vs-rest for more classes) and **Dice** for segmentation (mean over foreground classes per case, both
   empty = 1, at the working size ``size``), giving one learning-curve point (metric vs number of labels).

The scoring inputs per strategy are the loop's (:func:`~aemia.active.scoring.score_images`): ACFT on the m = 8
dihedral copies of each image (mapped back for segmentation), BALD on 8 MC-dropout passes (needs
``dropout > 0``), core-set on the network's pooled embeddings (greedy limited to ``per_round`` picks, which gives
the same top ranks), fg-random on the predicted foreground. The model of a round is its last epoch (no model
selection on held-out data).

Aggregation over seeds (:func:`summarise_runs`), per point:

* ``mean``: the mean over seeds of the test metric, ``std``: its standard deviation over seeds;
* ``ci``: a 95% percentile-bootstrap interval over **test cases**, pooled over seeds: each of ``n_boot``
  resamples draws test cases with replacement once and applies the same draw to every seed (the test set is
  shared), and the statistic is the seed-mean metric on the resample (Dice: the mean of the per-case seed-mean
  Dice; AUC: the mean over seeds of each seed's AUC, resamples with one class skipped). The interval is the
  uncertainty due to the finite test set of the seed-averaged curve; seed-to-seed variation is ``std``.

:func:`labels_to_reach` interpolates the number of labels at which a mean curve first reaches a target (e.g.
95% of the full-label metric, :func:`full_label_run`), as in the ACFT claim "reduces annotation efforts by at
least half compared with random selection".

Resumable: with ``out_dir``, each finished (strategy, seed) curve is written to
``out_dir/runs/<strategy>_seed<seed>_<config hash>.json`` and reused by any later call with the same settings
(the hash covers everything that changes the curve); ``curves.json`` (and ``curves.png``) summarise them.

Sources: Zhou et al., "Fine-tuning convolutional neural networks for biomedical image analysis: actively and
incrementally", CVPR 2017, and "Active, continual fine tuning of convolutional neural networks for reducing
annotation efforts", MedIA 2021 (``reference/METHODS.md`` §5.1: selection criterion, continual fine-tuning
with hard cases, labels needed vs random); nnActive (Lüth et al. 2025, ``reference/PEERS.md`` §0 item 3):
foreground-aware random as the honest baseline for segmentation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from aemia.utils.io import save_figure
from aemia.errors import InputError

__all__ = [
    "DATASET_DEFAULTS",
    "SimulationConfig",
    "full_label_run",
    "labels_to_reach",
    "plot_curves",
    "simulate",
    "simulate_one",
    "summarise_runs",
]

DATASETS = ("pneumoniamnist", "kvasir", "busi")
#: Per data set: task, working size, network, widths, batch size (CPU-sized; override in the config).
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "pneumoniamnist": {"task": "classification", "size": 28, "model": "resnet", "features": (16, 32, 64, 128),
                       "batch_size": 32},
    "kvasir": {"task": "segmentation", "size": 64, "model": "unet", "features": (16, 32, 64, 128), "batch_size": 8},
    "busi": {"task": "classification", "size": 64, "model": "resnet", "features": (16, 32, 64, 128),
             "batch_size": 16},
}
CACHE_VERSION = 1


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class SimulationConfig:
    """Everything that defines a simulated learning curve (``None`` = the data set's default).

    Attributes:
        dataset: ``pneumoniamnist``, ``kvasir`` or ``busi`` (catalog names).
        initial: size of the random initial labelled set (round 0).
        per_round: cases revealed per query round.
        rounds: number of query rounds after round 0 (the curve has ``rounds + 1`` points).
        mode: training mode per round (``all-labelled`` = ACFT(LQ), the default as in ``aemia active train``;
            ``continual`` = ACFT(HQ), ``new-only``, ``from-scratch``).
        epochs_per_round: epochs over the round's training cases ...
        min_steps: ... but at least this many optimiser steps, so small rounds are not starved.
        size: working size (images and masks resized to ``size x size``); ``None`` = the data set default.
        model: network name (``resnet`` for classification, ``unet`` / ``unetpp`` for segmentation).
        features: network widths per level.
        dropout: dropout in the network (``bald`` needs > 0; applies to every strategy for equal footing).
        lr: peak learning rate (Adam, cosine) of each round.
        batch_size: training batch size.
        hard_threshold: segmentation Dice below which a previously labelled case is "hard" (continual mode).
        reduce: segmentation reduction of per-pixel scores for the uncertainty strategies and ACFT
            (``mean`` or ``foreground``; ``None`` = the strategy's default, ``mean``).
        pool_limit: use only this many pool cases (a fixed seeded subset, the same for every seed); ``None`` = all.
        test_limit: evaluate on this many test cases (a fixed seeded subset); ``None`` = all.
        score_batch: images scored at once.
        n_boot: bootstrap resamples for the confidence intervals.
        device: ``auto``, ``cpu`` or ``cuda``.
    """

    dataset: str = "pneumoniamnist"
    initial: int = 20
    per_round: int = 20
    rounds: int = 5
    mode: str = "all-labelled"
    epochs_per_round: int = 10
    min_steps: int = 0
    size: int | None = None
    model: str | None = None
    features: tuple[int, ...] | None = None
    dropout: float = 0.0
    lr: float = 1e-3
    batch_size: int | None = None
    hard_threshold: float = 0.5
    reduce: str | None = None
    pool_limit: int | None = None
    test_limit: int | None = None
    score_batch: int = 32
    n_boot: int = 1000
    device: str = "auto"

    def resolved(self) -> SimulationConfig:
        """A copy with the data set defaults filled in, checked (``InputError`` on a bad value)."""
        from aemia.active.continual import normalise_mode

        name = self.dataset.strip().lower()
        if name not in DATASETS:
            raise InputError(None, f"--dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        d = DATASET_DEFAULTS[name]
        cfg = dataclasses.replace(
            self, dataset=name, mode=normalise_mode(self.mode),
            size=int(self.size if self.size is not None else d["size"]),
            model=self.model or d["model"], features=tuple(int(f) for f in (self.features or d["features"])),
            batch_size=int(self.batch_size or d["batch_size"]),
        )
        for what, value, low in (("--initial", cfg.initial, 1), ("--per-round", cfg.per_round, 1),
                                 ("--rounds", cfg.rounds, 0), ("--epochs", cfg.epochs_per_round, 1),
                                 ("--min-steps", cfg.min_steps, 0), ("--size", cfg.size, 8)):
            if isinstance(value, bool) or int(value) != value or value < low:
                raise InputError(None, f"{what} must be an integer >= {low}, got {value!r}")
        if cfg.task == "segmentation":
            m = 2 ** (len(cfg.features or ()) - 1)
            if cfg.size % m:  # type: ignore[operator]
                raise InputError(None, f"--size {cfg.size} must be a multiple of {m} for {len(cfg.features or ())} "
                                       "network levels")
        if cfg.reduce not in (None, "mean", "foreground"):
            raise InputError(None, f"--reduce must be mean or foreground, got {cfg.reduce!r}")
        return cfg

    @property
    def task(self) -> str:
        return str(DATASET_DEFAULTS[self.dataset.strip().lower()]["task"])

    def key(self) -> str:
        """Hash of every setting that changes a curve (not the device)."""
        d = asdict(self)
        d.pop("device", None)
        d.pop("n_boot", None)
        d.pop("score_batch", None)
        d["features"] = list(d["features"] or [])
        d["version"] = CACHE_VERSION
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


# ------------------------------------------------------------------------------------------ data


@dataclass
class _Data:
    x_pool: np.ndarray
    y_pool: np.ndarray  # class indices (N,) or masks (N, H, W) int64
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    in_channels: int
    pool_ids: list[int]  # indices into the catalog's train split
    test_ids: list[int]


_DATA_CACHE: dict[tuple[Any, ...], _Data] = {}


def _subset(n: int, limit: int | None, salt: int) -> np.ndarray:
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng([20240611, salt]).permutation(n)[: int(limit)])


def _load_data(cfg: SimulationConfig) -> _Data:
    key = (cfg.dataset, cfg.size, cfg.pool_limit, cfg.test_limit)
    if key in _DATA_CACHE:
        return _DATA_CACHE[key]
    from aemia.data.catalog import get_dataset

    ds = get_dataset(cfg.dataset)
    size = None if cfg.dataset == "pneumoniamnist" and cfg.size == 28 else cfg.size
    parts = []
    for split in ("train", "test"):
        x, lab, tgt = ds.arrays(split, size)
        y = tgt if cfg.task == "classification" else lab
        if y is None:
            raise InputError(None, f"{cfg.dataset} {split} split has no {'targets' if cfg.task == 'classification' else 'masks'}")
        parts.append((x, np.asarray(y, dtype=np.int64)))
    (xp, yp), (xt, yt) = parts
    pi = _subset(len(xp), cfg.pool_limit, 0)
    ti = _subset(len(xt), cfg.test_limit, 1)
    if cfg.task == "classification":
        n_classes = len(ds.classes) if ds.classes else int(max(yp.max(), yt.max()) + 1)
    else:
        n_classes = int(max(int(yp.max()), int(yt.max()), 1) + 1)
    data = _Data(np.ascontiguousarray(xp[pi]), yp[pi], np.ascontiguousarray(xt[ti]), yt[ti], n_classes,
                 int(xp.shape[1]), pi.tolist(), ti.tolist())
    _DATA_CACHE[key] = data
    return data


def _new_model(cfg: SimulationConfig, data: _Data, seed: int) -> Any:
    import torch

    from aemia.nets import create_model

    torch.manual_seed(seed)
    return create_model(cfg.model or "", 2, data.in_channels, data.n_classes, features=cfg.features,
                        deep_supervision=cfg.model == "unetpp", dropout=cfg.dropout)


def _predict(model: Any, x: np.ndarray, batch_size: int) -> np.ndarray:
    import torch

    from aemia.nets.predict import predict_probs

    out = [predict_probs(model, torch.from_numpy(x[s : s + batch_size]), amp="none").float().cpu().numpy()
           for s in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros((0,))


def _evaluate(cfg: SimulationConfig, model: Any, data: _Data) -> dict[str, Any]:
    """Test metric and what the bootstrap needs: per-case Dice, or the class probabilities."""
    from aemia.active.validation import case_scores
    from aemia.evaluate.metrics import auc

    probs = _predict(model, data.x_test, cfg.score_batch)
    if cfg.task == "segmentation":
        per_case = case_scores("segmentation", probs, data.y_test, data.n_classes)
        return {"metric": "dice", "value": float(per_case.mean()), "per_case": np.round(per_case, 5).tolist()}
    scores = probs[:, 1] if probs.shape[1] == 2 else probs
    try:
        value: float | None = float(auc(data.y_test, scores))
    except ValueError:
        value = None
    return {"metric": "auc", "value": value, "accuracy": float((probs.argmax(1) == data.y_test).mean()),
            "probs": np.round(scores, 5).tolist()}


def _epochs_for(cfg: SimulationConfig, n_train: int) -> int:
    steps = math.ceil(n_train / int(cfg.batch_size or 1))
    return max(int(cfg.epochs_per_round), math.ceil(cfg.min_steps / max(steps, 1)))


def _fit(cfg: SimulationConfig, model: Any, data: _Data, idx: np.ndarray, seed: int, work: Path | None,
         progress: bool) -> tuple[Any, int]:
    from aemia.active import continual

    epochs = _epochs_for(cfg, len(idx))
    if work is not None:
        work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="aemia-sim-", dir=work) as tmp:
        model, _ = continual.fit_model(model, data.x_pool[idx], data.y_pool[idx], cfg.task, tmp, epochs=epochs, lr=cfg.lr,
                             batch_size=int(cfg.batch_size or 8), seed=seed, device=cfg.device, progress=progress,
                             ids=[str(i) for i in idx])
    return model, epochs


def _strategy(name: str, cfg: SimulationConfig, seed: int, r: int) -> Any:
    from aemia.active.strategies import get_strategy

    probe = get_strategy(name)
    names = {f.name for f in dataclasses.fields(probe)}
    params: dict[str, Any] = {}
    if "seed" in names:
        params["seed"] = seed * 1000 + r  # a fresh random draw every round and seed
    if "reduce" in names and cfg.reduce is not None:
        params["reduce"] = cfg.reduce
    if "max_picks" in names:
        params["max_picks"] = cfg.per_round  # the top per_round ranks are the exact greedy picks
    return get_strategy(name, **params)


def _check_strategy(name: str, cfg: SimulationConfig) -> str:
    from aemia.active.strategies import MC_SAMPLES, get_strategy

    try:
        strat = get_strategy(name)
    except ValueError as exc:
        raise InputError(None, f"--strategy: {exc}") from None
    if cfg.task not in strat.tasks:
        raise InputError(None, f"--strategy {strat.name} is for {' and '.join(strat.tasks)}; {cfg.dataset} is {cfg.task}")
    if strat.needs == MC_SAMPLES and cfg.dropout <= 0:
        raise InputError(None, f"--strategy {strat.name} needs MC dropout: pass --dropout 0.2 (applies to every strategy)")
    return name.strip().lower().replace("_", "-")


# ------------------------------------------------------------------------------------------ one curve


def simulate_one(
    cfg: SimulationConfig,
    strategy: str,
    seed: int,
    *,
    work_dir: str | Path | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """One learning curve (one strategy, one seed), not cached; see the module docstring for the protocol.

    Returns ``{"strategy", "seed", "config", "points": [{"round", "n_labels", "n_trained_on", "n_hard",
    "epochs", "value", "metric", "per_case" | "probs", "queried", "seconds"}], ...}``; ``queried`` are indices
    into the (possibly limited) pool.
    """
    from aemia.active.continual import hard_cases
    from aemia.active.scoring import score_images

    say = log or (lambda _m: None)
    cfg = cfg.resolved()
    name = _check_strategy(strategy, cfg)
    data = _load_data(cfg)
    n_pool = len(data.x_pool)
    if cfg.initial > n_pool:
        raise InputError(None, f"--initial {cfg.initial} exceeds the pool ({n_pool} cases)")
    work = Path(work_dir) if work_dir is not None else None
    if work is not None:
        work.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    labelled = np.sort(np.random.default_rng([int(seed), 7]).permutation(n_pool)[: cfg.initial])
    model = _new_model(cfg, data, seed)
    m0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    seen = np.zeros(0, dtype=np.int64)  # the cases the current model was trained with (its labelled set)
    points: list[dict[str, Any]] = []
    for r in range(cfg.rounds + 1):
        t0 = time.perf_counter()
        queried: list[int] = []
        if r > 0:
            mask = np.ones(n_pool, dtype=bool)
            mask[labelled] = False
            unl = np.flatnonzero(mask)
            if len(unl) == 0:
                say(f"{name} seed {seed}: pool exhausted after round {r - 1}")
                break
            strat = _strategy(name, cfg, seed, r)
            scores = score_images(model, strat, cfg.task, len(unl), lambda a, b: data.x_pool[unl[a:b]],
                                  n_labelled=len(labelled), load_labelled=lambda a, b: data.x_pool[labelled[a:b]],
                                  batch_size=cfg.score_batch, progress=progress)
            pick = unl[strat.rank(scores, min(cfg.per_round, len(unl)))]
            queried = [int(i) for i in pick]
            labelled = np.sort(np.concatenate([labelled, pick]))
        hard: dict[str, float] = {}
        if r == 0 or cfg.mode in ("from-scratch", "all-labelled"):
            train_idx = labelled
        else:
            train_idx = np.sort(np.asarray(queried, dtype=np.int64))
            if cfg.mode == "continual" and len(seen):
                probs = _predict(model, data.x_pool[seen], cfg.score_batch)
                hard = hard_cases(cfg.task, probs, data.y_pool[seen], [str(i) for i in seen], data.n_classes,
                                  cfg.hard_threshold)
                train_idx = np.union1d(train_idx, np.asarray([int(c) for c in hard], dtype=np.int64))
        if cfg.mode == "from-scratch":
            model.load_state_dict(m0)
        model, epochs = _fit(cfg, model, data, train_idx, seed * 1000 + r, work, progress)
        seen = labelled.copy()
        ev = _evaluate(cfg, model, data)
        pt = {"round": r, "n_labels": int(len(labelled)), "n_trained_on": int(len(train_idx)), "n_hard": len(hard),
              "epochs": epochs, **ev, "queried": queried, "seconds": round(time.perf_counter() - t0, 2)}
        points.append(pt)
        val = "n/a" if ev["value"] is None else f"{ev['value']:.4f}"
        say(f"{name} seed {seed} round {r}: {len(labelled)} labels, trained on {len(train_idx)} "
            f"({len(hard)} hard, {epochs} epochs): test {ev['metric']} {val} ({pt['seconds']:.0f} s)")
    return {"strategy": name, "seed": int(seed), "config": _config_json(cfg), "key": cfg.key(),
            "metric": "auc" if cfg.task == "classification" else "dice", "n_pool": n_pool,
            "n_test": int(len(data.x_test)), "points": points, "seconds": round(time.perf_counter() - t_all, 2),
            "created_at": _now()}


def full_label_run(
    cfg: SimulationConfig,
    seed: int,
    *,
    out_dir: str | Path | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The full-label reference: ``M_0`` (seed ``seed``) trained on **every** pool label with the same recipe
    (``epochs_per_round`` epochs, at least ``min_steps`` steps, same lr / batch / augmentation, last epoch),
    evaluated like a curve point. Cached as ``out_dir/runs/full_seed<seed>_<hash>.json``."""
    cfg = cfg.resolved()
    # the query settings do not change this run: keep them out of its cache key
    cache = _cache_path(out_dir, "full", seed, dataclasses.replace(cfg, initial=0, per_round=0, rounds=0, mode="full",
                                                                   hard_threshold=0.0, reduce=None))
    if cache is not None and cache.is_file():
        return json.loads(cache.read_text())
    data = _load_data(cfg)
    t0 = time.perf_counter()
    model = _new_model(cfg, data, seed)
    idx = np.arange(len(data.x_pool))
    model, epochs = _fit(cfg, model, data, idx, seed * 1000 + 999, cache.parent.parent / "tmp" if cache else None,
                         progress)
    ev = _evaluate(cfg, model, data)
    res = {"strategy": "full", "seed": int(seed), "config": _config_json(cfg), "key": cfg.key(),
           "n_labels": int(len(idx)), "epochs": epochs, **ev, "seconds": round(time.perf_counter() - t0, 2),
           "created_at": _now()}
    if log:
        log(f"full labels seed {seed}: {len(idx)} labels, {epochs} epochs: test {ev['metric']} "
            f"{ev['value'] if ev['value'] is None else round(ev['value'], 4)} ({res['seconds']:.0f} s)")
    if cache is not None:
        from aemia.utils.io import write_json_atomic

        write_json_atomic(cache, res)
    return res


def _config_json(cfg: SimulationConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["features"] = list(d["features"] or [])
    return d


def _cache_path(out_dir: str | Path | None, strategy: str, seed: int, cfg: SimulationConfig) -> Path | None:
    if out_dir is None:
        return None
    return Path(out_dir) / "runs" / f"{strategy}_seed{int(seed)}_{cfg.key()}.json"


# ------------------------------------------------------------------------------------------ aggregate


def _seed_mean_auc() -> Callable[[np.ndarray, np.ndarray], float]:
    """Mean over seeds (axis 1 of ``s``) of each seed's AUC; NaN when a resample makes AUC undefined."""
    from aemia.evaluate.metrics import auc

    def fn(y: np.ndarray, s: np.ndarray) -> float:
        vals = []
        for j in range(s.shape[1]):
            try:
                vals.append(auc(y, s[:, j]))
            except ValueError:
                return float("nan")
        return float(np.mean(vals))

    return fn


def summarise_runs(runs: Sequence[dict[str, Any]], y_test: np.ndarray | None = None, n_boot: int = 1000,
                   boot_seed: int = 0) -> dict[str, Any]:
    """Mean curve over the seeds of one strategy, with seed std and the pooled test-case bootstrap CI
    (module docstring). ``y_test`` (test class labels) is needed for AUC curves. Returns
    ``{"metric", "n_seeds", "seeds", "points": [{"n_labels", "mean", "std", "ci": [lo, hi], "per_seed"}]}``."""
    from aemia.evaluate.metrics import bootstrap_ci, bootstrap_metric_ci

    if not runs:
        return {"metric": None, "n_seeds": 0, "seeds": [], "points": []}
    metric = runs[0]["metric"]
    n_points = min(len(r["points"]) for r in runs)
    points = []
    for i in range(n_points):
        pts = [r["points"][i] for r in runs]
        labels = {p["n_labels"] for p in pts}
        if len(labels) != 1:
            raise ValueError(f"point {i}: seeds disagree on the number of labels {sorted(labels)}")
        vals = np.array([np.nan if p["value"] is None else p["value"] for p in pts], dtype=float)
        if metric == "dice":
            per_case = np.mean([p["per_case"] for p in pts], axis=0)
            ci = bootstrap_ci(per_case, n_resamples=n_boot, seed=boot_seed)
        else:
            if y_test is None:
                raise ValueError("summarise_runs needs y_test for AUC curves")
            s = np.stack([np.asarray(p["probs"], dtype=float) for p in pts], axis=1)  # (n, seeds[, K])
            ci = bootstrap_metric_ci(y_test, s, metric_fn=_seed_mean_auc(), n_resamples=n_boot,
                                     seed=boot_seed)
        points.append({"round": pts[0]["round"], "n_labels": labels.pop(), "mean": float(np.nanmean(vals)),
                       "std": float(np.nanstd(vals, ddof=1)) if np.isfinite(vals).sum() > 1 else 0.0,
                       "ci": [ci.lo, ci.hi], "per_seed": [None if not np.isfinite(v) else float(v) for v in vals],
                       "n_trained_on": [p["n_trained_on"] for p in pts], "n_hard": [p["n_hard"] for p in pts]})
    return {"metric": metric, "n_seeds": len(runs), "seeds": [r["seed"] for r in runs], "points": points}


def labels_to_reach(points: Sequence[dict[str, Any]], target: float) -> dict[str, Any]:
    """Labels at which the mean curve **first** reaches ``target``, linearly interpolated between the last
    point below and the first point at or above it.

    Returns ``{"labels": float | None, "reached": bool, "note": str}``; ``labels`` is None when the curve never
    reaches the target ("not reached"), and the first point's label count, with a note, when the curve starts
    at or above it (the true value is at most that).
    """
    xs = [float(p["n_labels"]) for p in points]
    ys = [float(p["mean"]) for p in points]
    for i, (x, y) in enumerate(zip(xs, ys)):
        if y >= target:
            if i == 0:
                return {"labels": x, "reached": True, "note": "at or above the target from the first point (upper bound)"}
            x0, y0 = xs[i - 1], ys[i - 1]
            lab = x0 + (target - y0) * (x - x0) / (y - y0) if y > y0 else x
            return {"labels": float(lab), "reached": True, "note": "interpolated"}
    return {"labels": None, "reached": False, "note": "not reached"}


# ------------------------------------------------------------------------------------------ driver


def _parse_strategies(strategy: str | Sequence[str]) -> list[str]:
    items = strategy.split(",") if isinstance(strategy, str) else list(strategy)
    out = [s.strip() for s in items if s and s.strip()]
    if not out:
        raise InputError(None, "--strategy: give at least one strategy name")
    return out


def _parse_seeds(seeds: int | Sequence[int]) -> list[int]:
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        if seeds < 1:
            raise InputError(None, f"--seeds must be at least 1, got {seeds}")
        return list(range(int(seeds)))
    out = [int(s) for s in seeds]  # type: ignore[union-attr]
    if not out:
        raise InputError(None, "--seeds: give at least one seed")
    return out


def simulate(
    dataset: str,
    strategy: str | Sequence[str],
    initial: int = 20,
    per_round: int = 20,
    rounds: int = 5,
    seeds: int | Sequence[int] = 3,
    mode: str = "all-labelled",
    epochs_per_round: int = 10,
    size: int | None = None,
    out_dir: str | Path | None = None,
    *,
    config: SimulationConfig | None = None,
    plot: bool = True,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Simulated active learning: learning curves of one or more strategies over seeds.

    Args:
        dataset: ``pneumoniamnist`` (AUC), ``kvasir`` (Dice) or ``busi`` (AUC, 3 classes).
        strategy: a name or a list / comma-separated names (:func:`aemia.active.strategies.available_strategies`).
        initial, per_round, rounds: random initial set, cases per query, query rounds.
        seeds: number of seeds (``0..seeds-1``) or the seeds themselves.
        mode: training per round (default ``all-labelled`` = ACFT(LQ); ``continual`` = ACFT(HQ); see
            :mod:`aemia.active.continual`).
        epochs_per_round: epochs per round (at least ``min_steps`` optimiser steps, see the config).
        size: working size; ``None`` = data set default (28 PneumoniaMNIST, 64 Kvasir / BUSI).
        out_dir: where the per-(strategy, seed) curves are cached and ``curves.json`` / ``curves.png`` are
            written; ``None`` = nothing written, nothing reused.
        config: a full :class:`SimulationConfig` instead of the arguments above (``settings`` still override).
        settings: any other :class:`SimulationConfig` field (``min_steps``, ``pool_limit``, ``features``, ...).

    Returns the content of ``curves.json``: ``{"dataset", "task", "metric", "config", "seeds", "strategies":
    {name: summary (:func:`summarise_runs`)}, "runs": {name: [cache file or None per seed]}, "ci_method",
    "created_at", "seconds"}``.
    """
    from aemia.utils.io import write_json_atomic

    say = log or (lambda _m: None)
    if config is None:
        config = SimulationConfig(dataset=dataset, initial=initial, per_round=per_round, rounds=rounds, mode=mode,
                                  epochs_per_round=epochs_per_round, size=size)
    known = {f.name for f in dataclasses.fields(SimulationConfig)}
    bad = sorted(set(settings) - known)
    if bad:
        raise InputError(None, f"unknown simulation setting(s) {bad}; accepted: {sorted(known)}")
    cfg = dataclasses.replace(config, **settings).resolved()
    names = [_check_strategy(s, cfg) for s in _parse_strategies(strategy)]
    seed_list = _parse_seeds(seeds)
    t0 = time.perf_counter()
    out = Path(out_dir) if out_dir is not None else None
    data = _load_data(cfg)
    summaries: dict[str, Any] = {}
    files: dict[str, list[str | None]] = {}
    for name in names:
        runs = []
        files[name] = []
        for seed in seed_list:
            cache = _cache_path(out, name, seed, cfg)
            if cache is not None and cache.is_file():
                run = json.loads(cache.read_text())
                say(f"{name} seed {seed}: cached ({cache.name})")
            else:
                run = simulate_one(cfg, name, seed, work_dir=out / "tmp" if out else None, progress=progress, log=say)
                if cache is not None:
                    write_json_atomic(cache, run)
            runs.append(run)
            files[name].append(str(cache) if cache is not None else None)
        summaries[name] = summarise_runs(runs, data.y_test if cfg.task == "classification" else None, cfg.n_boot)
    result = {
        "dataset": cfg.dataset, "task": cfg.task, "metric": "auc" if cfg.task == "classification" else "dice",
        "config": _config_json(cfg), "key": cfg.key(), "seeds": seed_list, "n_pool": int(len(data.x_pool)),
        "n_test": int(len(data.x_test)), "strategies": summaries, "runs": files,
        "ci_method": "95% percentile bootstrap over test cases, pooled over seeds (the same case resample for "
                     "every seed; statistic = seed-mean metric); 'std' is the standard deviation over seeds",
        "created_at": _now(), "seconds": round(time.perf_counter() - t0, 2),
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "curves.json", result)
        if plot:
            plot_curves(result, out / "curves.png")
            result["png"] = str(out / "curves.png")
    return result


def plot_curves(result: dict[str, Any], path: str | Path, title: str | None = None,
                reference: float | None = None) -> Path:
    """Metric vs number of labels, one line per strategy with its 95% CI band (and an optional horizontal
    ``reference``, e.g. 95% of the full-label metric)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    path = Path(path)
    fig, ax = plt.subplots(figsize=(6.0, 4.0), dpi=120)
    colours = plt.get_cmap("tab10")
    for i, (name, summ) in enumerate(result["strategies"].items()):
        pts = [p for p in summ["points"] if np.isfinite(p["mean"])]
        if not pts:
            continue
        xs = [p["n_labels"] for p in pts]
        ax.plot(xs, [p["mean"] for p in pts], "o-", ms=3, color=colours(i % 10), label=f"{name} (n={summ['n_seeds']})")
        lo = [p["ci"][0] if p["ci"][0] is not None and np.isfinite(p["ci"][0]) else p["mean"] for p in pts]
        hi = [p["ci"][1] if p["ci"][1] is not None and np.isfinite(p["ci"][1]) else p["mean"] for p in pts]
        ax.fill_between(xs, lo, hi, color=colours(i % 10), alpha=0.15, linewidth=0)
    if reference is not None:
        ax.axhline(reference, color="grey", ls="--", lw=1, label="95% of full labels")
    metric = str(result.get("metric", "metric")).upper() if result.get("metric") == "auc" else "Dice"
    ax.set_xlabel("labelled cases")
    ax.set_ylabel(f"test {metric} (mean over seeds, 95% CI)")
    cfg = result.get("config", {})
    ax.set_title(title or f"{result.get('dataset', '')}: {cfg.get('mode', '')} fine-tuning, "
                          f"{cfg.get('per_round', '')} per round", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, path)
