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

Aggregation over seeds (seed mean, seed std, and a 95% bootstrap CI over test cases pooled over seeds) and
the labels needed to reach a target are :mod:`aemia.active.curves`; the config, data, model, per-round training
and test evaluation are :mod:`aemia.active.sim_training`.

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
import json
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from aemia.active.curves import plot_curves, summarise_runs
from aemia.active.sim_training import SimulationConfig, evaluate, fit_round, load_data, new_model, predict
from aemia.errors import InputError

__all__ = ["full_label_run", "simulate", "simulate_one"]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


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
    data = load_data(cfg)
    n_pool = len(data.x_pool)
    if cfg.initial > n_pool:
        raise InputError(None, f"--initial {cfg.initial} exceeds the pool ({n_pool} cases)")
    work = Path(work_dir) if work_dir is not None else None
    if work is not None:
        work.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    labelled = np.sort(np.random.default_rng([int(seed), 7]).permutation(n_pool)[: cfg.initial])
    model = new_model(cfg, data, seed)
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
                probs = predict(model, data.x_pool[seen], cfg.score_batch)
                hard = hard_cases(cfg.task, probs, data.y_pool[seen], [str(i) for i in seen], data.n_classes,
                                  cfg.hard_threshold)
                train_idx = np.union1d(train_idx, np.asarray([int(c) for c in hard], dtype=np.int64))
        if cfg.mode == "from-scratch":
            model.load_state_dict(m0)
        model, epochs = fit_round(cfg, model, data, train_idx, seed * 1000 + r, work, progress)
        seen = labelled.copy()
        ev = evaluate(cfg, model, data)
        pt = {"round": r, "n_labels": int(len(labelled)), "n_trained_on": int(len(train_idx)), "n_hard": len(hard),
              "epochs": epochs, **ev, "queried": queried, "seconds": round(time.perf_counter() - t0, 2)}
        points.append(pt)
        val = "n/a" if ev["value"] is None else f"{ev['value']:.4f}"
        say(f"{name} seed {seed} round {r}: {len(labelled)} labels, trained on {len(train_idx)} "
            f"({len(hard)} hard, {epochs} epochs): test {ev['metric']} {val} ({pt['seconds']:.0f} s)")
    return {"strategy": name, "seed": int(seed), "config": cfg.to_json(), "key": cfg.key(),
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
    data = load_data(cfg)
    t0 = time.perf_counter()
    model = new_model(cfg, data, seed)
    idx = np.arange(len(data.x_pool))
    model, epochs = fit_round(cfg, model, data, idx, seed * 1000 + 999, cache.parent.parent / "tmp" if cache else None,
                         progress)
    ev = evaluate(cfg, model, data)
    res = {"strategy": "full", "seed": int(seed), "config": cfg.to_json(), "key": cfg.key(),
           "n_labels": int(len(idx)), "epochs": epochs, **ev, "seconds": round(time.perf_counter() - t0, 2),
           "created_at": _now()}
    if log:
        log(f"full labels seed {seed}: {len(idx)} labels, {epochs} epochs: test {ev['metric']} "
            f"{ev['value'] if ev['value'] is None else round(ev['value'], 4)} ({res['seconds']:.0f} s)")
    if cache is not None:
        from aemia.utils.io import write_json_atomic

        write_json_atomic(cache, res)
    return res


def _cache_path(out_dir: str | Path | None, strategy: str, seed: int, cfg: SimulationConfig) -> Path | None:
    if out_dir is None:
        return None
    return Path(out_dir) / "runs" / f"{strategy}_seed{int(seed)}_{cfg.key()}.json"


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
    data = load_data(cfg)
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
        "config": cfg.to_json(), "key": cfg.key(), "seeds": seed_list, "n_pool": int(len(data.x_pool)),
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

