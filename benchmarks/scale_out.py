"""Scale-out prediction on CT-sized volumes (issue 16): 1 vs 2 worker processes, 2 torchrun ranks, and the
ensemble -> review-priority loop. Writes ``benchmarks/results/scale_out.json``.

Volumes: ``--cases`` (default 40) crops of the bundled real CTs (``liver_ct_real``: CHAOS 512x512x78 at 0.73 mm,
IRCAD 17 512x512x119 at 0.74 mm; ``totalsegmentator_example_ct``: 122x101x112 at 3 mm), each a random crop of 70-100 %
of every axis with seeded Gaussian noise (sd 10 HU), written as int16 NIfTI to a temporary folder (deleted at the
end). Model: a randomly initialised 3D U-Net (``--features``, default 8,16,32,64), a CT window, 2 mm working
spacing and a 64x64x48 sliding window: the CPU preset's geometry; the weights do not change the timing. Each
configuration runs ``aemia predict`` as a fresh command (model loading, worker start-up and writing included):

* ``1 worker``: one process, torch threads = all cores;
* ``2 workers``: ``--workers 2``, each worker ``cores // 2`` threads;
* ``2 torchrun ranks``: ``python -m torch.distributed.run --nproc_per_node 2 -m aemia.cli.main predict ...``;
* ensemble priority: ``predict --runs A,B,C --save-probs --workers 2`` then ``review prioritize`` on
  ``--ensemble-cases`` cases (3 models with different seeds).

OMP_NUM_THREADS is removed from the commands' environment (this measures how the threads are divided). The
machine load (``os.getloadavg()``) is recorded before and after each configuration: on a shared machine the
speed-up is distorted by other processes and should be re-measured on an idle one:

    python benchmarks/scale_out.py                  # 40 cases, ~10 min on 2 idle cores
    python benchmarks/scale_out.py --cases 8 --ensemble-cases 4 --out /tmp/scale_quick.json   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
DATA = Path(os.environ.get("AEMIA_DATA", ROOT.parent / "shared" / "data"))
SOURCES = [DATA / "liver_ct_real" / "chaos_ct_sample" / "ct.nii.gz", DATA / "liver_ct_real" / "ircad_17" / "ct.nii.gz",
           DATA / "totalsegmentator_example_ct" / "example_ct.nii.gz"]


def make_volumes(folder: Path, n: int) -> list[dict]:
    import nibabel as nib
    import numpy as np

    folder.mkdir(parents=True)
    sources = [nib.load(str(p)) for p in SOURCES]
    arrays = [np.asarray(s.dataobj, dtype=np.int16) for s in sources]
    made = []
    for i in range(n):
        rng = np.random.default_rng(i)
        k = i % len(sources)
        arr, aff = arrays[k], sources[k].affine.copy()
        size = [max(8, int(s * rng.uniform(0.7, 1.0))) for s in arr.shape]
        start = [int(rng.integers(0, s - c + 1)) for s, c in zip(arr.shape, size)]
        crop = arr[tuple(slice(a, a + c) for a, c in zip(start, size))].astype(np.float32)
        crop = np.clip(crop + rng.normal(0, 10, crop.shape), -1024, 3071).astype(np.int16)
        aff[:3, 3] = aff[:3, :3] @ np.array(start) + aff[:3, 3]
        nib.save(nib.Nifti1Image(crop, aff), str(folder / f"ct_{i:03d}.nii.gz"))
        made.append({"case": f"ct_{i:03d}", "source": SOURCES[k].parent.name, "shape": list(crop.shape)})
    return made


def make_run(folder: Path, seed: int, features: list[int]) -> Path:
    import torch

    from aemia.nets import create_model
    from aemia.nets.checkpoint import save_checkpoint
    from aemia.runs import RunConfig, RunFolder

    torch.manual_seed(seed)
    net = create_model("unet", 3, 1, 3, features=features).eval()
    (folder / "checkpoints").mkdir(parents=True)
    save_checkpoint(net, folder / "checkpoints" / "best", {"task": "segmentation"})
    RunFolder(folder).save_config(RunConfig(dataset="benchmark-ct", model="unet", features=features,
                                            normaliser="ct-window:-175,250", spacing=[2.0, 2.0, 2.0],
                                            patch=[64, 64, 48]))
    return folder


def timed(cmd: list[str], env: dict) -> dict:
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return {"seconds": round(seconds, 2), "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()]}


def predict_config(name: str, cmd: list[str], env: dict, out: Path, n: int, workers: int) -> dict:
    res = timed(cmd, env)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["done"] == n, summary
    return {"config": name, **res, "cases": n, "cases_per_hour": round(n / res["seconds"] * 3600, 1),
            "wall_seconds_per_case_per_worker": round(res["seconds"] * workers / n, 2),
            "seconds_per_case_in_worker_mean": summary["seconds_per_case_mean"],
            "model_loads": summary["model_loads"], "worker_processes": summary["worker_processes"],
            "peak_rss_mb_per_worker": summary["peak_rss_mb_per_worker"], "command": " ".join(cmd)}


def ensemble_stage(py: str, env: dict, work: Path, cts: Path, volumes: list[dict], runs: list[Path], n: int) -> dict:
    """3-model ensemble with saved probabilities, then the review priorities, on the first ``n`` cases."""
    ens_in = work / "ens_cts"
    ens_in.mkdir()
    for v in volumes[:n]:
        os.link(cts / f"{v['case']}.nii.gz", ens_in / f"{v['case']}.nii.gz")
    ens_cmd = [py, "-m", "aemia.cli.main", "predict", "--runs", ",".join(map(str, runs)), "--save-probs",
               "--workers", "2", "--input", str(ens_in), "--out", str(work / "ens")]
    ens = timed(ens_cmd, env)
    review_cmd = [py, "-m", "aemia.cli.main", "review", "prioritize", "--predictions", str(work / "ens" / "probs"),
                  "--out", str(work / "review"), "--quiet"]
    rev = timed(review_cmd, env)
    summary = json.loads((work / "ens" / "summary.json").read_text())
    probs_bytes = sum(f.stat().st_size for f in (work / "ens" / "probs").rglob("*.nii.gz"))
    return {"models": len(runs), "cases": n, "predict": ens, "review_prioritize": rev,
            "seconds_per_case": round((ens["seconds"] + rev["seconds"]) / n, 2),
            "model_loads": summary["model_loads"], "probs_dtype": "uint8",
            "probs_mb_per_case_per_model": round(probs_bytes / 2**20 / n / len(runs), 2),
            "commands": [" ".join(ens_cmd), " ".join(review_cmd)]}


STAGES = {"w1": "1 worker", "w2": "2 workers", "torchrun": "2 torchrun ranks"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=40)
    ap.add_argument("--ensemble-cases", type=int, default=8)
    ap.add_argument("--features", default="8,16,32,64")
    ap.add_argument("--stages", default="w1,w2,torchrun,ensemble", help="any of w1, w2, torchrun, ensemble")
    ap.add_argument("--reuse", action="append", default=[], help="a earlier (partial) JSON whose measured stages "
                    "fill the ones not run now (e.g. after a run cut short)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scale_out.json"))
    args = ap.parse_args()
    stages = [x.strip() for x in args.stages.split(",") if x.strip()]
    features = [int(f) for f in args.features.split(",")]
    py = sys.executable
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.update(PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1")
    reused = [json.loads(Path(f).read_text()) for f in args.reuse]
    command = "python benchmarks/scale_out.py " + " ".join(sys.argv[1:])
    work = Path(tempfile.mkdtemp(prefix="aemia-scale-"))
    try:
        cts = work / "cts"
        volumes = make_volumes(cts, args.cases)
        runs = [make_run(work / f"model_{s}", s, features) for s in range(3)]
        cli = [py, "-m", "aemia.cli.main", "predict", "-r", str(runs[0]), "--input", str(cts)]
        configs = {"w1": ([*cli, "--out", str(work / "w1")], work / "w1", 1),
                   "w2": ([*cli, "--out", str(work / "w2"), "--workers", "2"], work / "w2", 2),
                   "torchrun": ([py, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                                 "127.0.0.1", "--master_port", "29533", *cli[1:], "--out", str(work / "tr")],
                                work / "tr", 2)}
        results = [dict(r, measured_by=old.get("command")) for old in reused for r in old.get("runs", [])
                   if r["config"] in [STAGES[k] for k in STAGES if k not in stages]]
        ensemble = next((dict(old["ensemble"], measured_by=old.get("command")) for old in reused
                         if old.get("ensemble") and "ensemble" not in stages), None)
        partial = Path(args.out).with_suffix(".partial.json")  # what is measured so far, if the run is cut short
        for key in [k for k in STAGES if k in stages]:
            cmd, out, workers = configs[key]
            results.append(dict(predict_config(STAGES[key], cmd, env, out, args.cases, workers), measured_by=command))
            partial.write_text(json.dumps({"command": command, "runs": results, "ensemble": ensemble}, indent=2) + "\n")
        if "ensemble" in stages:
            ensemble = dict(ensemble_stage(py, env, work, cts, volumes, runs, args.ensemble_cases), measured_by=command)
            partial.write_text(json.dumps({"command": command, "runs": results, "ensemble": ensemble}, indent=2) + "\n")
        by = {r["config"]: r for r in results}
        speedup = by["1 worker"]["seconds"] / by["2 workers"]["seconds"] if {"1 worker", "2 workers"} <= set(by) else None
        torch_speedup = (by["1 worker"]["seconds"] / by["2 torchrun ranks"]["seconds"]
                         if {"1 worker", "2 torchrun ranks"} <= set(by) else None)
        loads = [r["loadavg_before"][0] for r in results] + [r["loadavg_after"][0] for r in results]
        report = {
            "benchmark": "scale_out (issue 16)",
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                        "python": platform.python_version(), "torch": __import__("torch").__version__},
            "command": command,
            "volumes": {"cases": args.cases, "sources": [str(p.relative_to(DATA)) for p in SOURCES],
                        "shapes_min": [min(v["shape"][a] for v in volumes) for a in range(3)],
                        "shapes_max": [max(v["shape"][a] for v in volumes) for a in range(3)],
                        "how": "random 70-100 % crops per axis + N(0, 10 HU) noise, seed = case index"},
            "model": {"net": "unet 3D", "features": features, "classes": 3, "spacing_mm": 2.0, "window": [64, 64, 48],
                      "weights": "random (seeded): timing only"},
            "cases_per_hour": {r["config"]: r["cases_per_hour"] for r in results},
            "speedup_2_workers": None if speedup is None else round(speedup, 3),
            "speedup_2_torchrun_ranks": None if torch_speedup is None else round(torch_speedup, 3),
            "model_loads": {r["config"]: r["model_loads"] for r in results},
            "peak_rss_mb_per_worker": {r["config"]: r["peak_rss_mb_per_worker"] for r in results},
            "seconds_per_case_per_worker": {r["config"]: r["wall_seconds_per_case_per_worker"] for r in results},
            "ensemble_priority_seconds_per_case": ensemble["seconds_per_case"] if ensemble else None,
            "ensemble": ensemble,
            "targets": {"speedup_2_workers": 1.7, "model_loads": "= number of workers",
                        "speedup_met": None if speedup is None else speedup >= 1.7,
                        "model_loads_met": all(r["model_loads"] == r["worker_processes"] for r in results)},
            "machine_load": {"loadavg_1min_range": [min(loads), max(loads)] if loads else None, "cores": os.cpu_count(),
                             "note": "shared machine: other processes compete for the same cores, so the speed-up "
                                     "is distorted unless the load average stays well below the core count"},
            "runs": results,
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        partial.unlink(missing_ok=True)
        print(json.dumps({k: report[k] for k in ("cases_per_hour", "speedup_2_workers", "model_loads",
                                                 "peak_rss_mb_per_worker", "ensemble_priority_seconds_per_case",
                                                 "machine_load")}, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
