"""Benchmark: learning from unlabelled and weakly labelled images (issue 5), measured on real data.

Runs the four parts in ``benchmarks/semi_weak_parts/`` one after the other in this process and writes
``benchmarks/results/semi_weak.json`` (each part's figures with its recipe, the command, date and machine):

* ``semi``   — supervised only vs mean teacher vs pseudo-labels at 5% and 10% labels: Kvasir Dice,
  PneumoniaMNIST AUC (``semi_weak_parts/semi.py``);
* ``semi_long`` — the Kvasir 10% comparison again with the supervised benchmarks' 600-step budget
  (``semi_weak_parts/semi.py: run_long``);
* ``semi_new_core`` — the mean teacher at Kvasir 10% with the training core's 3000-step recipe, paired seed for
  seed with ``training_stability.py``'s supervised runs (``semi_weak_parts/semi.py: run_new_core``);
* ``ssac``   — SSAC vs the same classifier alone: PneumoniaMNIST 5%, BUSI 10% (``semi_weak_parts/ssac.py``);
* ``mbdcnn`` — MB-DCNN on PH2 under a fixed 5-fold split: coarse vs enhanced segmentation (Jaccard), plain vs
  mask-guided classifier (melanoma AUC), with a "more training, no CAM" control (``semi_weak_parts/mbdcnn.py``);
* ``arl_cam`` — ARL-ResNet vs ResNet (AUC) on PH2 and BUSI; CAM localisation IoU/Dice on PH2
  (``semi_weak_parts/arl_cam.py``).

Every part is resumable (finished runs are kept under ``--work``); the JSON is rewritten after every part, so
an interruption keeps what is done. Run alone on the machine (2 cores): about 1.5 hours with one seed.

    .venv/bin/python benchmarks/semi_weak.py                         # all parts, seed 0
    .venv/bin/python benchmarks/semi_weak.py --parts semi,ssac --seeds 0,1,2
    .venv/bin/python benchmarks/semi_weak.py --quick --out /tmp/sw.json   # smoke run (a few minutes)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/semi_weak.py --parts semi_new_core --seeds 0,1,2,3,4
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from provenance import machine

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("semi", "semi_long", "semi_new_core", "ssac", "mbdcnn", "arl_cam")
#: part -> (file in semi_weak_parts/, function)
ENTRY = {"semi_long": ("semi", "run_long"), "semi_new_core": ("semi", "run_new_core")}


def _load(name: str) -> Any:
    path = ROOT / "benchmarks" / "semi_weak_parts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"semi_weak_{name}", path)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = mod  # type: ignore[union-attr]  (dataclasses look their module up)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2")
    ap.add_argument("--quick", action="store_true", help="smoke run of every part (not a measurement)")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "semi_weak")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "semi_weak.json")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    import json

    from aemia.utils.io import write_json_atomic

    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        print(f"unknown part(s) {unknown}; choose from {', '.join(PARTS)}", file=sys.stderr)
        return 2
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    result: dict[str, Any] = {k: v for k, v in previous.items() if k in PARTS}  # keep parts measured earlier
    result.update({
        "command": " ".join(shlex.quote(a) for a in [sys.executable, "benchmarks/semi_weak.py",
                                                     *(argv if argv is not None else sys.argv[1:])]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(), "quick": bool(args.quick), "seeds": seeds,
        "anchors": {"mbdcnn_ph2": {"jaccard": 0.894, "auc": 0.977}, "arl_cnn50_isic2017_melanoma_auc": 0.875,
                    "note": "published numbers at full scale (different data scale and networks), for orientation"},
    })
    for name in parts:
        t0 = time.time()
        print(f"== {name}", flush=True)
        file, function = ENTRY.get(name, (name, "run"))
        out = getattr(_load(file), function)(args.quick, seeds, args.work)
        result[name] = {**out, "seconds": round(time.time() - t0, 1), "date": result["date"], "seeds": seeds,
                        "quick": bool(args.quick), "command": result["command"]}
        write_json_atomic(args.out, result)
        print(f"   {name} done in {time.time() - t0:.0f} s", flush=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
