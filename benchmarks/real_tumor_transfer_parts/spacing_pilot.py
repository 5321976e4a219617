"""Issue 17: does a finer grid tighten the liver? Leave-one-out runs of the liver + tumour recipe at 1.5 mm
(the patch, 64x64x48 voxels, then covers 96x96x72 mm instead of 128x128x96), scored with
``real_tumor_transfer.py``'s own functions under the shipped decision rule and set beside the same runs at 2 mm
recorded in ``real_tumor_transfer.json``. Writes ``recipe_1p5mm_pilot`` into that JSON.

    W=benchmarks/work/real_tumor_transfer_1p5
    OMP_NUM_THREADS=1 python benchmarks/real_tumor_transfer.py --stage train --spacing 1.5,1.5,1.5 --work $W \\
        --runs loo-chaos_ct_sample,loo-ts_example_ct_dicom
    OMP_NUM_THREADS=1 python benchmarks/real_tumor_transfer_parts/spacing_pilot.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "src"))

import real_tumor_transfer as rtt  # noqa: E402

from aemia.utils.io import write_json_atomic  # noqa: E402

WORK = ROOT / "benchmarks" / "work" / "real_tumor_transfer_1p5"
OUT = ROOT / "benchmarks" / "results" / "real_tumor_transfer.json"


def _ircad(item: dict[str, Any], rule: rtt.Rule) -> dict[str, Any]:
    return {k: v for k, v in rtt.ircad_summary(item, rule).items() if k not in ("_labels", "froc")}


def score_run(name: str, data: dict[str, Any], rule: rtt.Rule) -> dict[str, Any]:
    """One finished 1.5 mm run under the shipped rule, beside the same run at 2 mm from ``data``."""
    res = rtt.evaluate_run(name, 3, 2)
    ss = rtt.synthetic_summary(res["synthetic"], rule)
    old = next(s for s in data["synthetic_validation"]["seeds"] if s["run"] == name)
    return {
        "at_1.5mm": {"liver_dice_leave_one_out": rtt.held_out_liver_dice(res, rule),
                     "synthetic_tumor_dice": ss["tumor_dice"], "synthetic_sensitivity": ss["sensitivity"],
                     "synthetic_fp_per_case": ss["fp_per_case"], "ircad_17": _ircad(res["ircad"], rule),
                     "ircad_17_argmax": _ircad(res["ircad"], rtt.Rule(None, rule.min_mm3))},
        "at_2mm (recorded above)": {
            "liver_dice_leave_one_out": data["liver_dice_leave_one_out"][res["held_out"]],
            "ircad_17": {k: v for k, v in data["ircad_17_per_run"][name].items() if k != "froc"},
            "ircad_17_argmax": {k: v for k, v in data["ircad_17_per_run_argmax"][name].items() if k != "froc"},
            **{f"synthetic_{k}": old[k] for k in ("tumor_dice", "sensitivity", "fp_per_case")}},
        "train_minutes_1.5mm": rtt.train_minutes(name)}


def reading(runs: dict[str, Any]) -> str:
    """The comparison in words, from the figures."""
    parts = []
    for name, r in runs.items():
        a, b = r["at_1.5mm"], r["at_2mm (recorded above)"]
        ia, ib = a["ircad_17"], b["ircad_17"]
        parts.append(f"{name}: ircad_17 false positives {ia['false_positives']} at 1.5 mm vs "
                     f"{ib['false_positives']} at 2 mm, ircad_17 liver Dice {ia['liver_dice']:.3f} "
                     f"vs {ib['liver_dice']:.3f}, held-out liver Dice {a['liver_dice_leave_one_out']:.3f} vs "
                     f"{b['liver_dice_leave_one_out']:.3f}")
    fewer = all(r["at_1.5mm"]["ircad_17"]["false_positives"]
                < r["at_2mm (recorded above)"]["ircad_17"]["false_positives"] for r in runs.values())
    verdict = ("1.5 mm with the same patch gives fewer false positives in every run" if fewer else
               "1.5 mm with the same patch does not give fewer false positives in every run, so it is not adopted")
    return "; ".join(parts) + f". {verdict}. A finer grid with a larger patch (same field of view, about twice the " \
        "step cost) is untested."


def main() -> None:
    import torch

    torch.set_num_threads(1)
    rtt.WORK = WORK
    data = json.loads(OUT.read_text())
    pp = data["postprocess"]
    rule = rtt.Rule.from_postprocess(pp)
    names = [n for n in ("loo-chaos_ct_sample", "loo-ts_example_ct_dicom", "loo-ts_example_ct")
             if (WORK / n / "trained.txt").exists()]
    if not names:
        raise SystemExit(f"{WORK}: no finished 1.5 mm run; train first (see this script's docstring)")
    runs = {n: score_run(n, data, rule) for n in names}
    data["recipe_1p5mm_pilot"] = {
        "runs": runs, "reading": reading(runs),
        "recipe": "the shipped recipe (64x64x48 patch, 1500 steps, strong augmentation, bf16 autocast) resampled to "
                  "1.5 mm: the patch covers 96x96x72 mm instead of 128x128x96",
        "rule": {**rule.as_postprocess(), "from": "the shipped rule (postprocess)"},
        "command": "benchmarks/real_tumor_transfer.py --stage train --spacing 1.5,1.5,1.5 --work "
                   "benchmarks/work/real_tumor_transfer_1p5 --runs " + ",".join(names) +
                   "; then benchmarks/real_tumor_transfer_parts/spacing_pilot.py",
        "date": __import__("datetime").date.today().isoformat(), "machine": data["machine"]}
    write_json_atomic(OUT, data)
    print(data["recipe_1p5mm_pilot"]["reading"])


if __name__ == "__main__":
    main()
