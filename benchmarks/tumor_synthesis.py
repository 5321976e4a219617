"""Benchmark: synthetic liver tumors, aemia (lazy float32 texture per tumor region) vs the original approach.

Issue 6. Both sides synthesize tumors into the bundled TotalSegmentator CT resampled to 1 mm (the original's
working resolution; liver = label 5), each in its own fresh subprocess so start-up cost and peak memory are the
side's own:

* ``ours``: :func:`aemia.synth.tumor.synthesize_tumors` (published pipeline, texture generated lazily in float32
  only in the tumors' bounding region, at the size needed);
* ``original``: the approach of the original code (``reference/METHODS.md`` §3.1), written here: **ten textures
  precomputed at start-up**, 420×300×320 float64, σ_a ∈ {3, 6, 9, 12, 15} × σ_b ∈ {4, 7} (Gaussian-filtered
  uniform noise, min-max normalised, scaled, Bernoulli-sampled, filtered again, normalised by u0 / mean(b > 0.12));
  then per case: crop to the liver bounding box shrunk by one voxel, draw the type, per tumor the published
  location rule and an ellipsoid with per-axis radii randint(0.75r, 1.25r) in a (4r)³ box, deformed elastically
  (3×3 random grid on the axis pairs (0,1), (1,2), (0,2)), pasted into the crop padded by 160 voxels per axis,
  cut to the liver, a random sub-block of a random precomputed texture, edge blur σ ~ U(1, 2) of the whole crop,
  and the HU drop Δ ~ U(65, 145) inside the liver. The shape and location helpers are aemia's (the same
  published rules), so the comparison isolates the texture strategy and the padded pasting.

Figures (``tumor_synthesis.json``):

* ``cold`` — seconds from the loaded CT to the first synthesized case, precompute included;
* ``steady`` — median seconds per case over ``--cases`` cases after the first (same tumor-type sequence);
* ``peak_mb`` — peak resident memory of the whole side process (``ru_maxrss`` of the child). Both sides load the
  CT the same way (scipy zoom, no torch) and write tumors in place into the loaded volume, as the original
  transform writes into its data dictionary (``synthesize_tumors(..., inplace=True)``); every case restarts from
  the healthy liver;
* ratios ours / original: ``cold_time_ratio`` (target ≤ 0.1), ``steady_time_ratio`` (≤ 1.5),
  ``memory_ratio`` (≤ 0.1).

Run (alone on the machine: timings)::

    .venv/bin/python benchmarks/tumor_synthesis.py
    .venv/bin/python benchmarks/tumor_synthesis.py --cases 3 --texture-shape 128,96,96 --out /tmp/t.json  # smoke
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TYPES = ("tiny", "small", "medium", "large", "mix")
RADIUS = {"tiny": 4, "small": 8, "medium": 16, "large": 32}


def load_ct_1mm() -> tuple[np.ndarray, np.ndarray]:
    """The CT and its liver mask at 1 mm (linear / nearest zoom with scipy: no torch in either side's process,
    since neither synthesis needs it)."""
    from scipy import ndimage

    from aemia.data.catalog import get_dataset

    ds = get_dataset("totalseg_ct")
    s = ds.load(ds.splits["train"][0])
    zoom = [sp / 1.0 for sp in s.image.spacing]
    hu = ndimage.zoom(s.image.array[0].astype(np.float32), zoom, order=1, output=np.float32, grid_mode=True,
                      mode="grid-constant", cval=-1024.0)
    liver = ndimage.zoom((s.label == 5).astype(np.uint8), zoom, order=0, grid_mode=True, mode="grid-constant").view(bool)
    return hu, liver


# ------------------------------------------------------------------------------------------- the original's way
def precompute_textures(shape: tuple[int, int, int], rng: np.random.Generator) -> list[np.ndarray]:
    """The original's start-up: 10 float64 textures, σ_a ∈ {3,6,9,12,15} × σ_b ∈ {4,7}."""
    from scipy import ndimage

    out = []
    for sigma_a in (3, 6, 9, 12, 15):
        for sigma_b in (4, 7):
            a = ndimage.gaussian_filter(rng.uniform(0, 1, shape), sigma_a)
            a = (a - a.min()) / (a.max() - a.min())
            a = rng.uniform(0.19, 0.21) * a + rng.uniform(0.04, 0.06)
            b = (a > rng.uniform(0, 1, shape)).astype(np.float64)
            b = ndimage.gaussian_filter(b, sigma_b)
            beta = rng.uniform(0.5, 0.55) / b[b > 0.12].mean()
            out.append(np.clip(beta * b, 0, 1))
    return out


def original_case(hu: np.ndarray, liver: np.ndarray, textures: list[np.ndarray], ttype: str,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    from scipy import ndimage

    from aemia.synth.tumor import TumorConfig, elastic_deform_random_grid, select_location

    cfg = TumorConfig()
    nz = np.nonzero(liver)
    bb = tuple(slice(int(ix.min()) + 1, int(ix.max())) for ix in nz)  # liver box shrunk by one voxel per side
    vol, mask = hu[bb].astype(np.float64), liver[bb]
    pad = 160
    geo = np.zeros(tuple(n + 2 * pad for n in mask.shape), dtype=np.uint8)
    counts = {"tiny": (3, 10), "small": (3, 10), "medium": (2, 5), "large": (1, 3)}
    if ttype == "mix":
        plan = [(t, int(rng.integers(*{"tiny": (3, 10), "small": (5, 10), "medium": (2, 5), "large": (1, 3)}[t]) + 0))
                for t in ("tiny", "small", "medium", "large")]
    else:
        plan = [(ttype, int(rng.integers(*counts[ttype])))]
    sig = {"tiny": lambda: rng.uniform(0.5, 1), "small": lambda: rng.integers(1, 2),
           "medium": lambda: rng.integers(3, 6), "large": lambda: rng.integers(5, 10)}
    for t, n in plan:
        r = RADIUS[t]
        for _ in range(n):
            c = select_location(rng, mask, (1.0, 1.0, 1.0), axis=2, config=cfg)
            radii = [int(rng.integers(int(0.75 * r), int(1.25 * r) + 1)) for _ in range(3)]
            half = [2 * q for q in radii]
            grids = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
            ell = sum((g / max(q, 1)) ** 2 for g, q in zip(grids, radii)) <= 1
            ell = elastic_deform_random_grid(ell, rng, [float(sig[t]())] * 3)
            lo = [ci + pad - h for ci, h in zip(c, half)]
            sl = tuple(slice(a, a + s) for a, s in zip(lo, ell.shape))
            geo[sl] += ell.astype(np.uint8)
    geo = geo[tuple(slice(pad, pad + n) for n in mask.shape)]
    geo = (geo * mask) >= 1
    tex = textures[int(rng.integers(len(textures)))]
    start = [int(rng.integers(0, max(t - n, 0) + 1)) for t, n in zip(tex.shape, mask.shape)]
    texture = tex[tuple(slice(s, s + n) for s, n in zip(start, mask.shape))]
    if texture.shape != mask.shape:  # texture smaller than the liver box (only with a reduced --texture-shape)
        texture = np.pad(texture, [(0, n - t) for n, t in zip(mask.shape, texture.shape)], mode="reflect")
    geo_blur = ndimage.gaussian_filter(geo.astype(np.float64), rng.uniform(1, 2))
    delta = rng.uniform(65, 145)
    new = vol - texture * geo_blur * delta
    vol = np.where(mask, new, vol)
    hu[bb] = vol  # in place, as the original writes into its data dictionary
    label = liver.astype(np.uint8)
    lab = label[bb]
    lab[geo] = 2
    return hu, label


# -------------------------------------------------------------------------------------------------- one side
def run_side(side: str, n_cases: int, texture_shape: tuple[int, int, int], seed: int) -> dict[str, Any]:
    hu, liver = load_ct_1mm()
    types = [TYPES[i] for i in np.random.default_rng(seed).integers(0, 5, size=n_cases)]
    rng = np.random.default_rng(seed + 1)
    times = []
    n_tumor_voxels = []
    t0 = time.perf_counter()
    precompute = 0.0
    if side == "original":
        textures = precompute_textures(texture_shape, rng)
        precompute = time.perf_counter() - t0
    from aemia.synth.tumor import synthesize_tumors

    box = []
    for ax in range(3):
        hit = np.flatnonzero(np.any(liver, axis=tuple(i for i in range(3) if i != ax)))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    box = tuple(box)
    healthy = hu[box].copy()  # both sides write in place; each case starts from the healthy liver again
    for k, ttype in enumerate(types):
        hu[box] = healthy
        t = time.perf_counter()
        if side == "original":
            _, label = original_case(hu, liver, textures, ttype, rng)
        else:
            label = synthesize_tumors(hu, liver, rng, tumor_type=ttype, spacing=(1.0, 1.0, 1.0), inplace=True).label
        times.append(time.perf_counter() - t)
        n_tumor_voxels.append(int((label == 2).sum()))
        del label  # a training pipeline hands the label on; do not hold two at once
        if k == 0:
            cold = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {"side": side, "cold_s": cold, "precompute_s": precompute, "case_s": times,
            "steady_median_s": float(np.median(times[1:] if len(times) > 1 else times)), "types": types,
            "tumor_voxels": n_tumor_voxels, "peak_mb": peak_mb, "torch_imported": "torch" in sys.modules, "ct_shape_1mm": list(hu.shape),
            "liver_voxels": int(liver.sum())}


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "load_avg_start": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=21, help="cases per side (the first is the cold start; "
                                                          "steady = median of the rest)")
    ap.add_argument("--texture-shape", default="420,300,320", help="the original's precomputed texture shape")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "tumor_synthesis.json")
    ap.add_argument("--side", choices=["ours", "original"], help=argparse.SUPPRESS)
    ap.add_argument("--side-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    shape = tuple(int(v) for v in args.texture_shape.split(","))
    if args.side:  # child process: one side, results to --side-out
        res = run_side(args.side, args.cases, shape, args.seed)  # type: ignore[arg-type]
        args.side_out.write_text(json.dumps(res))
        return 0
    from aemia.utils.io import write_json_atomic

    sides = {}
    for side in ("ours", "original"):
        tmp = args.out.with_name(f".{args.out.stem}_{side}.json")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, __file__, "--side", side, "--side-out", str(tmp), "--cases", str(args.cases),
               "--texture-shape", args.texture_shape, "--seed", str(args.seed)]
        print(f"running {side} ...", flush=True)
        subprocess.run(cmd, check=True)
        sides[side] = json.loads(tmp.read_text())
        tmp.unlink()
        s = sides[side]
        print(f"  {side}: cold {s['cold_s']:.2f} s (precompute {s['precompute_s']:.1f} s), steady "
              f"{s['steady_median_s']:.3f} s/case, peak {s['peak_mb']:.0f} MB", flush=True)
    o, g = sides["ours"], sides["original"]
    result = {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, "benchmarks/tumor_synthesis.py",
                                                     *(argv if argv is not None else sys.argv[1:])]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {**machine(), "load_avg_end": os.getloadavg()},
        "setup": {"ct": "TotalSegmentator example CT (3 mm) resampled to 1 mm, liver label 5",
                  "ct_shape_1mm": o["ct_shape_1mm"], "liver_voxels": o["liver_voxels"], "cases": args.cases,
                  "texture_shape_original": list(shape), "tumor_types": o["types"]},
        "cold_time_ratio": o["cold_s"] / g["cold_s"],
        "steady_time_ratio": o["steady_median_s"] / g["steady_median_s"],
        "memory_ratio": o["peak_mb"] / g["peak_mb"],
        "seconds_per_case": {"ours": o["steady_median_s"], "original": g["steady_median_s"]},
        "cold_seconds": {"ours": o["cold_s"], "original": g["cold_s"], "original_precompute": g["precompute_s"]},
        "peak_mb": {"ours": o["peak_mb"], "original": g["peak_mb"]},
        "targets": {"cold_time_ratio": "<= 0.1", "steady_time_ratio": "<= 1.5", "memory_ratio": "<= 0.1"},
        "sides": sides,
    }
    result["verdicts"] = {"cold_time_ratio": result["cold_time_ratio"] <= 0.1,
                          "steady_time_ratio": result["steady_time_ratio"] <= 1.5,
                          "memory_ratio": result["memory_ratio"] <= 0.1}
    write_json_atomic(args.out, result)
    print(json.dumps({k: result[k] for k in ("cold_time_ratio", "steady_time_ratio", "memory_ratio",
                                             "seconds_per_case", "peak_mb", "verdicts")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
