"""Benchmark mode with a simulated annotator (``aemia.active.simulate``, ``aemia active simulate``).

Tiny and CPU-light: a fixed 120-case PneumoniaMNIST pool, 80 test cases, 28 px, a ResNet with widths (4, 8),
20 initial labels + 2 rounds of 20, 1 epoch (at least 3 steps) per round.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

import aemia.active.continual as continual  # noqa: E402
import aemia.active.simulate as sim  # noqa: E402
from aemia.active.curves import labels_to_reach, summarise_runs  # noqa: E402
from aemia.active.sim_training import SimulationConfig  # noqa: E402
from aemia.active.simulate import full_label_run, simulate  # noqa: E402
from aemia.cli.main import main  # noqa: E402
from aemia.errors import InputError  # noqa: E402

TINY = {"features": (4, 8), "pool_limit": 120, "test_limit": 80, "min_steps": 3, "batch_size": 16, "n_boot": 200}


needs_data = pytest.mark.needs_data("pneumoniamnist")


def _run(out: Path | None, strategies: str = "random,acft", seeds: int = 2) -> dict:
    return simulate("pneumoniamnist", strategies, initial=20, per_round=20, rounds=2, seeds=seeds,
                    epochs_per_round=1, size=28, out_dir=out, **TINY)


@needs_data
def test_simulate_curves_resume_and_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "sim"
    res = _run(out)
    assert res["metric"] == "auc" and res["n_pool"] == 120 and res["n_test"] == 80
    assert set(res["strategies"]) == {"random", "acft"}
    for name, summ in res["strategies"].items():
        pts = summ["points"]
        assert [p["n_labels"] for p in pts] == [20, 40, 60], name  # monotone, initial + k per round
        for p in pts:
            assert 0.0 <= p["mean"] <= 1.0
            lo, hi = p["ci"]
            assert 0.0 <= lo <= hi <= 1.0
            assert all(0.0 <= v <= 1.0 for v in p["per_seed"])
        # the default ACFT(LQ): round r >= 1 replays every label so far, no hard-case selection
        assert pts[1]["n_trained_on"] == [40] * len(pts[1]["n_trained_on"]) and set(pts[1]["n_hard"]) == {0}
    # both strategies share the seed's random initial set and initialisation: identical first points
    assert res["strategies"]["random"]["points"][0]["per_seed"] == res["strategies"]["acft"]["points"][0]["per_seed"]
    runs = sorted((out / "runs").glob("*.json"))
    assert len(runs) == 4
    one = json.loads(runs[0].read_text())
    queried = [i for p in one["points"] for i in p["queried"]]
    assert len(queried) == len(set(queried)) == 40  # never the same case twice
    assert (out / "curves.json").is_file() and (out / "curves.png").stat().st_size > 1000

    cfg = SimulationConfig(dataset="pneumoniamnist", epochs_per_round=1, **TINY)
    full = full_label_run(cfg, 0, out_dir=out)
    assert full["n_labels"] == 120 and 0.0 <= full["value"] <= 1.0 and full["metric"] == "auc"

    # resume: every curve comes from the cache, nothing is trained or scored again
    def boom(*_a: object, **_k: object) -> None:
        raise AssertionError("retrained a cached curve")

    monkeypatch.setattr(sim, "simulate_one", boom)
    monkeypatch.setattr(continual, "fit_model", boom)
    again = _run(out)
    assert again["strategies"] == res["strategies"]
    assert full_label_run(dataclasses.replace(cfg, rounds=7), 0, out_dir=out) == full  # query settings: same key
    # a different setting is a different cache key: it must run (and here hits the patched trainer)
    with pytest.raises(AssertionError, match="retrained"):
        simulate("pneumoniamnist", "random", initial=20, per_round=10, rounds=1, seeds=1, epochs_per_round=1,
                 out_dir=out, **TINY)


@needs_data
def test_cli_simulate_writes_curves_and_png(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    rc = main(["active", "simulate", "--dataset", "pneumoniamnist", "--strategy", "entropy", "--initial", "20",
               "--per-round", "20", "--rounds", "1", "--seeds", "1", "--epochs", "1", "--min-steps", "2",
               "--features", "4,8", "--pool-limit", "60", "--test-limit", "60", "--out", str(out)])
    assert rc == 0
    curves = json.loads((out / "curves.json").read_text())
    assert [p["n_labels"] for p in curves["strategies"]["entropy"]["points"]] == [20, 40]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_bad_strategy_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["active", "simulate", "--dataset", "pneumoniamnist", "--strategy", "random,nonsense",
               "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and "nonsense" in err and "available" in err
    assert not (tmp_path / "x").exists()


def test_bad_settings_are_input_errors() -> None:
    with pytest.raises(InputError, match="segmentation"):
        simulate("pneumoniamnist", "fg-random", out_dir=None)
    with pytest.raises(InputError, match="dropout"):
        simulate("kvasir", "bald", out_dir=None)
    with pytest.raises(InputError, match="--dataset"):
        SimulationConfig(dataset="mnist").resolved()
    with pytest.raises(InputError, match="--size"):
        SimulationConfig(dataset="kvasir", size=36).resolved()
    with pytest.raises(InputError, match="unknown simulation setting"):
        simulate("pneumoniamnist", "random", out_dir=None, epochz=3)


def test_labels_to_reach_interpolates() -> None:
    pts = [{"n_labels": 20, "mean": 0.70}, {"n_labels": 40, "mean": 0.80}, {"n_labels": 60, "mean": 0.90}]
    mid = labels_to_reach(pts, 0.85)
    assert mid["labels"] == pytest.approx(50.0) and mid["reached"] and mid["note"] == "interpolated"
    assert labels_to_reach(pts, 0.80)["labels"] == pytest.approx(40.0)
    first = labels_to_reach(pts, 0.5)
    assert first["labels"] == 20.0 and "upper bound" in first["note"]
    assert labels_to_reach(pts, 0.95) == {"labels": None, "reached": False, "note": "not reached"}
    # first crossing counts, even if the curve dips again later
    dip = [{"n_labels": 10, "mean": 0.5}, {"n_labels": 20, "mean": 0.9}, {"n_labels": 30, "mean": 0.6}]
    assert labels_to_reach(dip, 0.7)["labels"] == pytest.approx(15.0)


def _fake_run(seed: int, values: list[float], per_case: list[list[float]] | None = None,
              probs: list[list[float]] | None = None) -> dict:
    pts = []
    for i, v in enumerate(values):
        p = {"round": i, "n_labels": 10 * (i + 1), "value": v, "n_trained_on": 10, "n_hard": 0}
        if per_case is not None:
            p["per_case"] = per_case[i]
        if probs is not None:
            p["probs"] = probs[i]
        pts.append(p)
    return {"seed": seed, "metric": "dice" if per_case is not None else "auc", "points": pts}


def test_summarise_runs_dice_and_auc() -> None:
    rng = np.random.default_rng(0)
    a = rng.uniform(0.4, 0.9, 50)
    b = np.clip(a + rng.normal(0, 0.05, 50), 0, 1)
    runs = [_fake_run(0, [float(a.mean())], per_case=[a.tolist()]), _fake_run(1, [float(b.mean())], per_case=[b.tolist()])]
    s = summarise_runs(runs, n_boot=300)
    p = s["points"][0]
    assert p["mean"] == pytest.approx((a.mean() + b.mean()) / 2)
    assert p["ci"][0] < p["mean"] < p["ci"][1]
    assert p["std"] == pytest.approx(np.std([a.mean(), b.mean()], ddof=1))

    from aemia.evaluate.metrics import auc

    y = np.array([0, 1] * 30)
    s1 = np.clip(y * 0.3 + rng.uniform(0, 0.7, 60), 0, 1)
    s2 = rng.uniform(0, 1, 60)
    runs = [_fake_run(0, [auc(y, s1)], probs=[s1.tolist()]), _fake_run(1, [auc(y, s2)], probs=[s2.tolist()])]
    p = summarise_runs(runs, y_test=y, n_boot=300)["points"][0]
    assert p["mean"] == pytest.approx((auc(y, s1) + auc(y, s2)) / 2)
    assert p["ci"][0] < p["mean"] < p["ci"][1]
