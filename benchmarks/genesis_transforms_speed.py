"""Benchmark: Models Genesis transforms, vectorised (aemia) vs a straightforward per-block loop, same RNG draws.

What is compared
----------------
* ``ours``  ``aemia.pretrain.genesis.GenesisTransform``: vectorised local shuffle (blocks sorted in groups of
            equal size), the intensity map interpolated once per distinct CT value, and with out-painting the
            shuffle and the map computed only inside the windows that survive it (identical outputs).
* ``loop``  the same published rules (METHODS.md §1.2) written here in the original code's style: the local
            pixel shuffle is a Python loop over the 10,000 blocks (slice, flatten, permute, write back), the
            Bézier curve uses the original's Bernstein basis (``comb(n, i) t^(n-i) (1-t)^i``, which runs from
            (1, 1) to (0, 0)) with "sort only x" for the inverting half, ``np.interp`` is called directly on the
            cube, flips are applied one at a time, painting fills box by box.

Same RNG draws: both get ``np.random.default_rng(seed)`` and consume it in the same order and the same calls
(flip coins/axes; shuffle coin, all block sizes and all block origins as ``floor(U(0,1)·n)``, one raw 64-bit
word per block voxel whose top bits order the block; non-linear coin, u1..u4, inversion coin; paint coin,
in-paint coin, boxes, noise). The only deviations from the original's draw order are that (a) the loop draws the
block sizes/origins/keys up front in three array calls instead of 6 scalar calls + one shuffle per block (this
makes the loop *faster*, so
the ratio is conservative; the original's scalar-draw style is timed separately as ``loop_scalar_draws`` for the
shuffle) and (b) in-painting draws all boxes before the noise. With equal draws the outputs are asserted equal:
inputs/targets identical except for the non-linear map, whose two formulations of the same curve differ by
float64 rounding (< 1e-6 after the float32 cast; the max difference is reported).

Figures (per 64x64x32 cube from the real TotalSegmentator example CT, extracted with ``aemia.pretrain.cubes``
and the tissue-rich filter, since the published chest-CT filter rejects every abdominal cube):

* ``pipeline_paper``: the paper's probabilities; per-cube time = the fastest of ``--repeats`` runs; we report the
  median and mean over ``--cubes`` cubes and ``ratio_mean`` = sum(ours) / sum(loop) (throughput) and
  ``ratio_median``. The shuffle fires in half of the cubes, so the per-cube times are bimodal;
* ``pipeline_all_on``: every transform applied (shuffle, non-linear, painting p = 1; flips 0.4): the per-cube
  worst case, ``ratio_median`` over cubes;
* ``per_transform``: local shuffle, non-linear and painting alone (median over cubes);
* ``tissue_filter``: the cube filter of §1.1, vectorised vs the original 4-level per-voxel loop, on a few
  candidate windows (64x64x35), equal scores asserted.

Target: ``pipeline ratio <= 0.1``. Machine is shared: run under ``nice``; load averages are recorded.

Run (from the repository root)::

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/genesis_transforms_speed.py
    .venv/bin/python benchmarks/genesis_transforms_speed.py --cubes 4 --repeats 1 --out /tmp/g.json   # smoke
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from scipy.special import comb  # noqa: E402

from aemia.data.catalog import data_root  # noqa: E402
from aemia.data.io import read_image  # noqa: E402
from aemia.pretrain.cubes import PAPER_CUBES, extract_cubes, tissue_fraction  # noqa: E402
from aemia.pretrain.genesis import GenesisTransform  # noqa: E402
from aemia.utils.io import write_json_atomic  # noqa: E402

TARGET = 0.1
ROOT = Path(__file__).resolve().parents[1]


# ============================================================================ loop reference (original style)
def loop_flip(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, rate: float = 0.4, max_flips: int = 3):
    ndim = x.ndim - 1
    cnt = 0
    while cnt < max_flips and rng.random() < rate:
        axis = int(rng.integers(ndim))
        x = np.flip(x, axis=1 + axis)
        y = np.flip(y, axis=1 + axis)
        cnt += 1
    return x.copy(), y.copy()


def loop_shuffle(x: np.ndarray, rng: np.random.Generator, num_blocks: int = 10_000, divisor: int = 10) -> np.ndarray:
    """Per-block Python loop, reading from the unshuffled original and writing to the output."""
    _, rows, cols, deps = x.shape
    dims = np.array([rows, cols, deps])
    hi = np.maximum(dims // divisor, 1)
    sizes = 1 + np.minimum((rng.random((num_blocks, 3)) * hi).astype(np.int64), hi - 1)  # randint(1, dim // 10)
    span = dims - sizes + 1
    origins = np.minimum((rng.random((num_blocks, 3)) * span).astype(np.int64), span - 1)
    counts = sizes.prod(axis=1)
    total = int(counts.sum())
    local_bits = max(1, int(counts.max() - 1).bit_length())
    key_bits = 63 - local_bits - max(1, int(num_blocks - 1).bit_length())
    keys = rng.bit_generator.random_raw(total) >> np.uint64(64 - key_bits)
    orig = x.copy()
    out = x.copy()
    start = 0
    for b in range(num_blocks):
        bx, by, bz = sizes[b]
        nx, ny, nz = origins[b]
        n = bx * by * bz
        window = orig[0, nx:nx + bx, ny:ny + by, nz:nz + bz].flatten()
        perm = np.lexsort((np.arange(n), keys[start:start + n]))  # order of the block's keys
        window = window[perm]
        out[0, nx:nx + bx, ny:ny + by, nz:nz + bz] = window.reshape((bx, by, bz))
        start += n
    return out


def loop_shuffle_scalar_draws(x: np.ndarray, rng: np.random.Generator, num_blocks: int = 10_000,
                              divisor: int = 10) -> np.ndarray:
    """The original's draw style: 6 scalar randint calls and one shuffle per block (different draws)."""
    _, rows, cols, deps = x.shape
    orig = x.copy()
    out = x.copy()
    for _ in range(num_blocks):
        bx = int(rng.integers(1, max(rows // divisor, 1) + 1))
        by = int(rng.integers(1, max(cols // divisor, 1) + 1))
        bz = int(rng.integers(1, max(deps // divisor, 1) + 1))
        nx = int(rng.integers(0, rows - bx + 1))
        ny = int(rng.integers(0, cols - by + 1))
        nz = int(rng.integers(0, deps - bz + 1))
        window = orig[0, nx:nx + bx, ny:ny + by, nz:nz + bz].flatten()
        rng.shuffle(window)
        out[0, nx:nx + bx, ny:ny + by, nz:nz + bz] = window.reshape((bx, by, bz))
    return out


def loop_bezier(points: list[list[float]], n_times: int = 100_000) -> tuple[np.ndarray, np.ndarray]:
    """Bernstein basis as in the original: comb(n, i) t^(n-i) (1-t)^i, i.e. from the last point to the first."""
    n = len(points) - 1
    t = np.linspace(0.0, 1.0, n_times)
    poly = np.array([comb(n, i) * t ** (n - i) * (1 - t) ** i for i in range(n + 1)])
    return np.dot([p[0] for p in points], poly), np.dot([p[1] for p in points], poly)


def loop_nonlinear(x: np.ndarray, rng: np.random.Generator, n_times: int = 100_000) -> np.ndarray:
    u = rng.random(4)
    invert = rng.random() < 0.5
    xvals, yvals = loop_bezier([[0, 0], [u[0], u[1]], [u[2], u[3]], [1, 1]], n_times)
    if invert:
        xvals = np.sort(xvals)  # only x sorted: intensity inversion
    else:
        xvals, yvals = np.sort(xvals), np.sort(yvals)
    return np.interp(x, xvals, yvals).astype(x.dtype)


def _randint(rng: np.random.Generator, lo: int, hi: int) -> int:
    return int(rng.integers(lo, hi + 1))


def loop_inpaint(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    _, rows, cols, deps = x.shape
    blocks = []
    cnt = 5
    while cnt > 0 and rng.random() < 0.95:
        bx, by, bz = _randint(rng, rows // 6, rows // 3), _randint(rng, cols // 6, cols // 3), \
            _randint(rng, deps // 6, deps // 3)
        nx, ny, nz = _randint(rng, 3, rows - bx - 3), _randint(rng, 3, cols - by - 3), _randint(rng, 3, deps - bz - 3)
        blocks.append((bx, by, bz, nx, ny, nz))
        cnt -= 1
    x = x.copy()
    for bx, by, bz, nx, ny, nz in blocks:
        x[:, nx:nx + bx, ny:ny + by, nz:nz + bz] = rng.random((bx, by, bz), dtype=np.float32)
    return x


def loop_outpaint(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    _, rows, cols, deps = x.shape

    def window() -> tuple[int, ...]:
        bx = rows - _randint(rng, 3 * rows // 7, 4 * rows // 7)
        by = cols - _randint(rng, 3 * cols // 7, 4 * cols // 7)
        bz = deps - _randint(rng, 3 * deps // 7, 4 * deps // 7)
        return bx, by, bz, _randint(rng, 3, rows - bx - 3), _randint(rng, 3, cols - by - 3), \
            _randint(rng, 3, deps - bz - 3)

    windows = [window()]
    cnt = 4
    while cnt > 0 and rng.random() < 0.95:
        windows.append(window())
        cnt -= 1
    image_temp = x.copy()
    x = rng.random(x.shape, dtype=np.float32)
    for bx, by, bz, nx, ny, nz in windows:
        x[:, nx:nx + bx, ny:ny + by, nz:nz + bz] = image_temp[:, nx:nx + bx, ny:ny + by, nz:nz + bz]
    return x


def loop_pipeline(cube: np.ndarray, rng: np.random.Generator, local_rate: float = 0.5, nonlinear_rate: float = 0.9,
                  paint_rate: float = 0.9, inpaint_rate: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    x, y = loop_flip(cube, cube, rng)
    if rng.random() < local_rate:
        x = loop_shuffle(x, rng)
    if rng.random() < nonlinear_rate:
        x = loop_nonlinear(x, rng)
    if rng.random() < paint_rate:
        x = loop_inpaint(x, rng) if rng.random() < inpaint_rate else loop_outpaint(x, rng)
    return x, y


def loop_tissue_fraction(window: np.ndarray, deps: int = 32, thr: float = 0.425, len_depth: int = 3) -> float:
    """The original's 4-level per-voxel loop (d, i, j, k) of the tissue filter."""
    rows, cols = window.shape[:2]
    d_img = np.zeros((rows, cols, deps))
    for d in range(deps):
        for i in range(rows):
            for j in range(cols):
                for k in range(len_depth):
                    if window[i, j, d + k] >= thr:
                        d_img[i, j, d] = k
                        break
                    if k == len_depth - 1:
                        d_img[i, j, d] = k
    d_img = 1.0 - d_img / (len_depth - 1)
    return float(np.sum(d_img)) / (rows * cols * deps)


# ====================================================================================== measurement helpers
def _time(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)  # the fastest repeat: least disturbed by other load, the same rule for both sides


def _summary(ours: list[float], loop: list[float]) -> dict[str, Any]:
    return {
        "ours_ms_median": round(1e3 * statistics.median(ours), 3),
        "loop_ms_median": round(1e3 * statistics.median(loop), 3),
        "ours_ms_mean": round(1e3 * statistics.fmean(ours), 3),
        "loop_ms_mean": round(1e3 * statistics.fmean(loop), 3),
        "ratio_median": round(statistics.median(ours) / statistics.median(loop), 4),
        "ratio_mean": round(sum(ours) / sum(loop), 4),
        "ratio_per_cube_median": round(statistics.median(o / lp for o, lp in zip(ours, loop)), 4),
    }


def _machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    import scipy

    return {"cpu": cpu, "cores": os.cpu_count(), "numpy": np.__version__, "scipy": scipy.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "niceness": os.nice(0)}


def _compare(ours: tuple[np.ndarray, np.ndarray], ref: tuple[np.ndarray, np.ndarray], what: str) -> float:
    """Assert equal targets and inputs equal up to the non-linear map's float rounding; return max |diff|."""
    assert np.array_equal(ours[1], ref[1]), f"{what}: targets differ"
    diff = float(np.max(np.abs(ours[0].astype(np.float64) - ref[0].astype(np.float64))))
    assert diff < 1e-6, f"{what}: inputs differ by {diff}"
    return diff


# ============================================================================================== main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cubes", type=int, default=16, help="number of real 64x64x32 cubes (default 16)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per cube and method (fastest counts; default 5)")
    ap.add_argument("--filter-windows", type=int, default=2, help="candidate windows for the filter loop")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "genesis_transforms_speed.json")
    args = ap.parse_args(argv)

    load_before = os.getloadavg()
    started = time.perf_counter()
    ct_path = data_root() / "totalsegmentator_example_ct" / "example_ct.nii.gz"
    image = read_image(ct_path)
    config = PAPER_CUBES.tissue_rich()
    batch = extract_cubes(image, np.random.default_rng(args.seed), config)
    cubes = batch.array[: args.cubes]
    if len(cubes) < args.cubes:
        raise SystemExit(f"only {len(cubes)} cubes extracted")
    print(f"{len(cubes)} cubes {cubes.shape[1:]} from {ct_path.name} {image.spatial_shape}", flush=True)

    paper = GenesisTransform()
    all_on = GenesisTransform(local_rate=1.0, nonlinear_rate=1.0, paint_rate=1.0)
    max_diff = 0.0
    # warm-up (caches, allocator) + equality of outputs with the same draws
    for i, cube in enumerate(cubes):
        for name, tf, kw in (("paper", paper, {}),
                             ("all_on", all_on, dict(local_rate=1.0, nonlinear_rate=1.0, paint_rate=1.0))):
            seed = args.seed * 1000 + i
            ours = tf(cube, np.random.default_rng(seed))
            ref = loop_pipeline(cube, np.random.default_rng(seed), **kw)
            max_diff = max(max_diff, _compare(ours, ref, f"cube {i} {name}"))
    print(f"outputs equal with the same draws (max |diff| {max_diff:.2e})", flush=True)

    results: dict[str, Any] = {}
    applied_shuffle = []
    for name, tf, kw in (("pipeline_paper", paper, {}),
                         ("pipeline_all_on", all_on, dict(local_rate=1.0, nonlinear_rate=1.0, paint_rate=1.0))):
        t_ours, t_loop = [], []
        for i, cube in enumerate(cubes):
            seed = args.seed * 1000 + i
            t_ours.append(_time(lambda: tf(cube, np.random.default_rng(seed)), args.repeats))
            t_loop.append(_time(lambda: loop_pipeline(cube, np.random.default_rng(seed), **kw), args.repeats))
            if name == "pipeline_paper":
                applied_shuffle.append(tf.apply(cube, np.random.default_rng(seed)).applied["local_shuffle"])
        results[name] = _summary(t_ours, t_loop)
        print(name, results[name], flush=True)
    results["pipeline_paper"]["cubes_with_shuffle"] = int(sum(applied_shuffle))

    from aemia.pretrain import genesis as G

    per: dict[str, Any] = {}
    parts: dict[str, tuple[Callable, Callable]] = {
        "local_shuffle": (lambda c, r: G.local_pixel_shuffle(c, r), loop_shuffle),
        "nonlinear": (lambda c, r: G.nonlinear_transform(c, r), loop_nonlinear),
        "in_painting": (lambda c, r: G.in_paint(c, r), loop_inpaint),
        "out_painting": (lambda c, r: G.out_paint(c, r), loop_outpaint),
    }
    for name, (ours_fn, loop_fn) in parts.items():
        t_ours, t_loop = [], []
        for i, cube in enumerate(cubes):
            seed = 10_000 + i
            a, b = ours_fn(cube, np.random.default_rng(seed)), loop_fn(cube, np.random.default_rng(seed))
            max_diff = max(max_diff, _compare((a, cube), (b, cube), name))
            t_ours.append(_time(lambda: ours_fn(cube, np.random.default_rng(seed)), args.repeats))
            t_loop.append(_time(lambda: loop_fn(cube, np.random.default_rng(seed)), args.repeats))
        per[name] = _summary(t_ours, t_loop)
        print(name, per[name], flush=True)
    t_scalar = [_time(lambda: loop_shuffle_scalar_draws(c, np.random.default_rng(i)), 1)
                for i, c in enumerate(cubes[: max(2, len(cubes) // 4)])]
    per["local_shuffle"]["loop_scalar_draws_ms_median"] = round(1e3 * statistics.median(t_scalar), 3)
    per["local_shuffle"]["loop_us_per_block"] = round(per["local_shuffle"]["loop_ms_median"] / 10.0, 2)
    results["per_transform"] = per

    # tissue filter: candidate windows of 64x64x(32+3) from the same CT
    vol = np.clip((image.array[0].astype(np.float32) + 1000) / 2000, 0, 1)
    rng = np.random.default_rng(args.seed + 1)
    t_ours, t_loop, scores = [], [], []
    for _ in range(args.filter_windows):
        x0, y0, z0 = (int(rng.integers(0, d - s + 1)) for d, s in zip(vol.shape, (64, 64, 35)))
        w = vol[x0:x0 + 64, y0:y0 + 64, z0:z0 + 35]
        a, b = tissue_fraction(w, 32), loop_tissue_fraction(w, 32)
        assert abs(a - b) < 1e-9, (a, b)
        scores.append(round(a, 4))
        t_ours.append(_time(lambda: tissue_fraction(w, 32), 5))
        t_loop.append(_time(lambda: loop_tissue_fraction(w, 32), 1))
    results["tissue_filter"] = {**_summary(t_ours, t_loop), "windows": args.filter_windows, "scores": scores}
    print("tissue_filter", results["tissue_filter"], flush=True)

    headline = results["pipeline_paper"]["ratio_mean"]
    worst_case = results["pipeline_all_on"]["ratio_median"]
    out = {
        "benchmark": "genesis_transforms_speed",
        "cube": [64, 64, 32],
        "cubes": len(cubes),
        "repeats": args.repeats,
        "source": f"{ct_path.name} {list(image.spatial_shape)} (real CT, tissue-rich cubes; no resampling)",
        "ratio_ours_over_loop": headline,
        "ratio_ours_over_loop_all_transforms_on": worst_case,
        "target": f"ratio <= {TARGET}",
        "verdict": {
            "pipeline_paper_ratio_mean": "met" if headline <= TARGET else "not met",
            "pipeline_all_on_ratio_median": "met" if worst_case <= TARGET else "not met",
            "local_shuffle_ratio_median": "met" if per["local_shuffle"]["ratio_median"] <= TARGET else "not met",
            "tissue_filter_ratio_median": "met" if results["tissue_filter"]["ratio_median"] <= TARGET else "not met",
        },
        "outputs_equal_with_same_draws": True,
        "max_abs_input_difference": max_diff,
        **results,
        "notes": [
            "ratio_ours_over_loop = sum of per-cube times, ours / loop, with the paper's probabilities (throughput).",
            "The loop reference draws its shuffle blocks and keys up front (same draws as ours), which is faster "
            "than the original's scalar draws; loop_scalar_draws_ms_median shows the original draw style.",
            "Non-linear map: the loop uses the original reversed Bernstein basis and 'sort x only'; ours maps "
            "X(t) -> Y(1-t) directly; equal up to float64 rounding (max_abs_input_difference).",
            "Costs shared by both (Bezier sampling at 100,000 t, noise, copies) bound the ratio from below; the "
            "loop's per-block cost (loop_us_per_block) decides how much the vectorised shuffle can gain.",
            "in_painting/out_painting are vectorised in the original too (a few boxes): ratios near 1 are expected.",
        ],
        "command": "".join([f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else "",
                            f"nice -n {os.nice(0)} " if os.nice(0) > 0 else ""])
                   + shlex.join([".venv/bin/python", *sys.argv]),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "elapsed_s": round(time.perf_counter() - started, 1),
        "machine": _machine(),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
    }
    write_json_atomic(args.out, out)
    print(f"ratio ours/loop {headline} (all on: {worst_case}); wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
