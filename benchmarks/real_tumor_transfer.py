"""Benchmark (issue 17): a liver + tumour model trained without a tumour label, tested on real tumours.

Data (:func:`aemia.data.catalog` ``liver_ct``): every healthy liver mask we have (CHAOS ``chaos_ct_sample``, the
TotalSegmentator CT ``ts_example_ct`` and its DICOM series ``ts_example_ct_dicom``) is a training case; tumours
come only from :class:`aemia.synth.transform.RandTumorSynthesisd` (:mod:`aemia.recipes.liver_tumor`). The one
real-tumour CT, 3D-IRCADb-01 patient 17 (``ircad_17``), is never trained on.

Runs (each resumable; ``benchmarks/work/real_tumor_transfer/<run>``):

* ``full-s0`` trains on all three healthy livers (seed 0): the shipped model; ``full-s1`` and ``full-s2`` are the
  same recipe with seeds 1 and 2, for the spread of the real-tumour figures;
* ``loo-<case>`` leave-one-case-out runs, one per training case, with seeds 0, 1, 2: each is scored on its held-out
  case's real liver mask (liver Dice) and on synthetic validation tumours in that held-out healthy liver
  (tumour Dice, sensitivity by size, false positives per case, FROC). They are the recipe's three seeds; their
  spread mixes seed and held-out case, and the JSON says so;
* ``loo-<case>-s<k>`` (opt-in through ``--runs``): the same held-out case with another seed. With them the eval
  stage reports ``synthetic_validation_same_liver``: the seeds' synthetic-validation figures on one liver and
  whether their CIs agree (issue 17's reproducibility check, without the held-out case changing).

Every run is also applied to ``ircad_17``: liver Dice, tumour Dice, each real tumour (diameter, detected,
confidence), false positives, FROC. The tumour volume threshold of the post-processing
(:func:`aemia.infer.lesions.postprocess_liver_tumor`) is chosen on the synthetic validation only.

    OMP_NUM_THREADS=1 python benchmarks/real_tumor_transfer.py --stage train --runs full-s0,loo-chaos_ct_sample
    OMP_NUM_THREADS=1 python benchmarks/real_tumor_transfer.py --stage eval      # scores what has finished
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
WORK = ROOT / "benchmarks" / "work" / "real_tumor_transfer"
TRAIN_CASES = ("ts_example_ct_dicom", "chaos_ct_sample", "ts_example_ct")  # loo seed k holds out TRAIN_CASES[k]
FULL_RUNS = ("full-s0", "full-s1", "full-s2")  # the shipped recipe on all three livers, seeds 0-2
ALL_RUNS = (*FULL_RUNS, *(f"loo-{c}" for c in TRAIN_CASES))


@dataclass(frozen=True)
class Rule:
    """The decision rule after the network, as the shipped model's ``config.json`` ``postprocess`` records it
    (:func:`aemia.infer.lesions.liver_tumor_labels`): tumour where its probability reaches ``threshold`` (None:
    the argmax), the largest liver component, then tumour components smaller than ``min_mm3``, with confidence
    (maximum probability) below ``min_confidence`` or with mean depth inside the predicted liver below
    ``min_depth_mm`` become liver."""

    threshold: float | None = None
    min_mm3: float = 0.0
    min_confidence: float = 0.0
    min_depth_mm: float = 0.0

    @classmethod
    def from_postprocess(cls, pp: dict[str, Any]) -> "Rule":
        t = pp.get("tumor_threshold")
        return cls(None if t is None else float(t), float(pp.get("min_tumor_mm3", 0.0)),
                   float(pp.get("min_confidence", 0.0)), float(pp.get("min_depth_mm", 0.0)))

    def as_postprocess(self) -> dict[str, Any]:
        return {"tumor_threshold": self.threshold, "min_tumor_mm3": self.min_mm3,
                "min_confidence": self.min_confidence, "min_depth_mm": self.min_depth_mm}

    def key(self) -> str:
        """``threshold|volume|confidence|depth``, the key of ``postprocess.synthetic_validation_by_rule``."""
        t = "argmax" if self.threshold is None else f"{self.threshold:g}"
        return f"{t}|{self.min_mm3:g}|{self.min_confidence:g}|{self.min_depth_mm:g}"


def run_spec(name: str) -> tuple[int, str | None]:
    """(seed, held-out case or None) of a run name: ``full-s<k>``, ``loo-<case>`` (seed = the case's index in
    :data:`TRAIN_CASES`) or ``loo-<case>-s<k>`` (that held-out case with seed k: the same-liver seed runs)."""
    if name in FULL_RUNS:
        return int(name.removeprefix("full-s")), None
    case, _, seed = name.removeprefix("loo-").rpartition("-s")
    if case in TRAIN_CASES and seed.isdigit():
        return int(seed), case
    case = name.removeprefix("loo-")
    if case not in TRAIN_CASES:
        raise SystemExit(f"unknown run {name!r}; runs: {', '.join(ALL_RUNS)} or loo-<case>-s<seed>")
    return TRAIN_CASES.index(case), case


def same_liver_runs() -> dict[str, list[str]]:
    """{held-out case: finished runs holding it out} for every case with a finished ``loo-<case>-s<k>`` run:
    the recipe's seeds on one held-out liver, so their synthetic-validation figures can be compared."""
    out: dict[str, list[str]] = {}
    for case in TRAIN_CASES:
        extra = sorted(p.name for p in WORK.glob(f"loo-{case}-s*") if (p / "trained.txt").exists())
        if extra:
            base = [f"loo-{case}"] if (WORK / f"loo-{case}" / "trained.txt").exists() else []
            out[case] = sorted(base + extra, key=lambda r: run_spec(r)[0])
    return out


def same_liver_summary(args: argparse.Namespace, rule: Rule, results: dict[str, Any] | None = None) -> dict[str, Any]:
    """Synthetic validation of the recipe's seeds on one held-out liver (:func:`same_liver_runs`) under a fixed
    decision rule, and whether their 95% CIs agree pairwise, with each seed's held-out liver Dice and ``ircad_17``
    figures; {} when no ``loo-<case>-s<k>`` run has finished."""
    out: dict[str, Any] = {}
    for case, names in same_liver_runs().items():
        rows = []
        for r in names:
            res = (results or {}).get(r) or evaluate_run(r, args.variants, args.per_bin)
            summary = synthetic_summary(res["synthetic"], rule)
            ircad = ircad_summary(res["ircad"], rule)
            rows.append({"run": r, "seed": res["seed"], **{k: v for k, v in summary.items() if k != "froc"},
                         "held_out_liver_dice": held_out_liver_dice(res, rule),
                         "ircad_17": {k: v for k, v in ircad.items() if k in ("liver_dice", "tumor_dice",
                                                                                "false_positives")}
                         | {"both_tumours_detected": all(x["detected"] for x in ircad["lesions"])}})
        out[case] = {
            "seeds": rows,
            "agree_within_ci": {k: _cis_overlap([x[f"{k}_ci"] for x in rows])
                                for k in ("tumor_dice", "sensitivity", "fp_per_case")},
            "spread": {k: _spread([x[k] for x in rows]) for k in ("tumor_dice", "sensitivity", "fp_per_case")}}
    if out:
        out["rule"] = rule.as_postprocess()
        out["note"] = ("the recipe's seeds with the same held-out liver (loo-<case> and loo-<case>-s<k>), scored with "
                       "one fixed decision rule (never chosen on these runs); agree_within_ci: every pair of seeds' "
                       "95% CIs overlaps")
    return out


def seeds_stage(out: Path, argv: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """``--stage seeds``: :func:`same_liver_summary` under the shipped model's decision rule (its config's
    ``postprocess``), merged into ``out`` as ``synthetic_validation_same_liver`` with command and date."""
    from datetime import datetime, timezone

    from aemia.utils.io import write_json_atomic

    if not same_liver_runs():
        raise SystemExit(f"{WORK}: no finished loo-<case>-s<seed> run; train some first, e.g. "
                         "--stage train --runs loo-chaos_ct_sample-s0,loo-chaos_ct_sample-s2")
    pp = json.loads((args.ship_dir / "config.json").read_text())["postprocess"]
    result = same_liver_summary(args, Rule.from_postprocess(pp))
    result["command"] = "python benchmarks/real_tumor_transfer.py " + " ".join(argv)
    result["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    data = json.loads(out.read_text()) if out.is_file() else {}
    # a run that the eval stage recorded earlier and that was trained again here: does it reproduce?
    recorded = {s["run"]: s for s in data.get("synthetic_validation", {}).get("seeds", [])}
    rerun = {row["run"]: {k: {"recorded": recorded[row["run"]][k], "now": row[k]}
                          for k in ("tumor_dice", "sensitivity", "fp_per_case")}
             for case, v in result.items() if isinstance(v, dict) and "seeds" in v
             for row in v["seeds"] if row["run"] in recorded}
    if rerun:
        result["rerun_of_recorded_runs"] = rerun
    data["synthetic_validation_same_liver"] = result
    write_json_atomic(out, data)
    return result


def shipped_ircad(args: argparse.Namespace) -> dict[str, Any]:
    """The shipped model's raw outputs on ``ircad_17`` (as :func:`evaluate_run`'s ``ircad``), cached in
    ``WORK/shipped/pred_ircad_17.npz``."""
    import numpy as np

    from aemia.data.catalog import get_dataset
    from aemia.data.image import Image
    from aemia.infer.predictor import Predictor

    ds = get_dataset("liver_ct")
    s = ds.load(ds.splits["test"][0])
    cache = WORK / "shipped" / "pred_ircad_17.npz"
    if not cache.exists():
        pred = Predictor.from_model_folder(args.ship_dir, device="cpu", amp=INFER_AMP)
        probs = pred.probabilities(Image(np.asarray(s.image.array[0], np.float32)[None], tuple(s.image.spacing),
                                         s.image.affine))
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(cache, raw=probs.argmax(0).astype(np.uint8), tumor=probs[2].astype(np.float16))
    with np.load(cache, allow_pickle=False) as z:
        raw = (z["raw"], z["tumor"].astype(np.float32))
    return {"raw": raw, "truth": s.label.astype(np.uint8), "spacing": s.image.spacing, "hu": s.image.array[0]}


def rim_stage(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """``--stage rim``: add the rim cut to the *shipped* model's rule, and record a re-run of the recipe.

    The finished leave-one-out runs in ``WORK`` (a re-run of the recipe, e.g. on another machine) provide the
    synthetic validation. With the shipped rule's threshold, volume and confidence cuts held fixed, the minimum
    depth of ``MIN_DEPTHS_MM`` with the best pooled lesion F1 is chosen (ties: better tumour Dice, then the
    smaller depth). It is written into the shipped ``config.json`` (``postprocess.min_depth_mm``), the card is
    regenerated, and the JSON gets ``ircad_17`` (the shipped model under the extended rule, the figures before in
    ``ircad_17_before_rim_rule``) and ``rerun_on_another_machine``: the re-run's runs under the recorded rule, the
    extended rule and their own freshly chosen rule, beside the recorded figures."""
    from provenance import provenance

    from aemia.utils.io import write_json_atomic, write_text_atomic

    if not args.out.is_file():
        raise SystemExit(f"{args.out}: no recorded result to extend; run --stage eval first")
    data = json.loads(args.out.read_text())
    done = [r for r in ALL_RUNS if (WORK / r / "trained.txt").exists()]
    loo = [r for r in done if r.startswith("loo-")]
    if not loo:
        raise SystemExit(f"{WORK}: no finished leave-one-out run; train them first (--stage train)")
    results = {r: evaluate_run(r, args.variants, args.per_bin) for r in done}
    syn_items = [it for r in loo for it in results[r]["synthetic"]]
    cfg_path = args.ship_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    base = Rule.from_postprocess({**cfg["postprocess"], "min_depth_mm": 0.0})
    grid = rule_scores(syn_items, base.threshold, volumes=(base.min_mm3,), confidences=(base.min_confidence,))
    rule = max(grid, key=lambda k: (grid[k]["lesion_f1"], grid[k]["tumor_dice"], -k.min_depth_mm))
    ship_item = shipped_ircad(args)
    before = data.get("ircad_17_before_rim_rule") or {
        "rule": base.as_postprocess(), **{k: v for k, v in data["ircad_17"].items() if k != "froc"}}
    now = ircad_summary(ship_item, rule)
    reproduced = {k: {"recorded": before.get(k), "now": v}
                  for k, v in _public(ircad_summary(ship_item, base)).items() if k in ("liver_dice", "tumor_dice",
                                                                                     "false_positives")}
    # the re-run, scored four ways
    own, own_table = choose_rule(syn_items)
    own_no_rim, _ = choose_rule(syn_items, (0.0,))
    rules = {"recorded rule": base, "recorded rule + rim cut": rule, "own rule (chosen on this re-run)": own,
             "own rule without the rim cut": own_no_rim}
    liver_loo = {results[r]["held_out"]: held_out_liver_dice(results[r], base) for r in loo}
    recorded_runs = data.get("ircad_17_per_run", {})
    recorded_syn = {x["run"]: x for x in data.get("synthetic_validation", {}).get("seeds", [])}
    runs: dict[str, Any] = {}
    for r in done:
        row: dict[str, Any] = {"ircad_17_recorded": {k: recorded_runs.get(r, {}).get(k)
                                                     for k in ("liver_dice", "tumor_dice", "false_positives")}}
        for name, rl in rules.items():
            sc = ircad_summary(results[r]["ircad"], rl)
            row[f"ircad_17 ({name})"] = {"liver_dice": sc["liver_dice"], "tumor_dice": sc["tumor_dice"],
                                         "false_positives": sc["false_positives"],
                                         "both_tumours_detected": all(x["detected"] for x in sc["lesions"])}
        if r in loo:
            old = recorded_syn.get(r, {})
            # the recorded figures pooled the first n_versions validation versions (same seeds): compare those
            syn = synthetic_summary(results[r]["synthetic"][:old.get("n_versions", args.variants)], base)
            row["synthetic_validation_recorded_rule"] = {
                k: {"recorded": old.get(k), "recorded_ci": old.get(f"{k}_ci"), "now": syn[k], "now_ci": syn[f"{k}_ci"]}
                for k in ("tumor_dice", "sensitivity", "fp_per_case")}
        runs[r] = row
        print(f"  {r}: scored under {len(rules)} rules", flush=True)
    prov = provenance()
    command, date = prov["command"], prov["date"]
    machine = {**prov["machine"], "training_threads": 1, "amp_auto_resolved_to": json.loads(
        (WORK / done[0] / "log.jsonl").read_text().splitlines()[0]).get("amp")}
    data["ircad_17_before_rim_rule"] = before
    if args.note:
        data["note"] = args.note
    data["ircad_17"] = {"model": "shipped (full-s0 of the recorded runs)",
                        **{k: v for k, v in now.items() if k != "_labels"}}
    lesions = data["ircad_17"]["lesions"]
    data["targets_ircad_17"] = {"liver_dice>=0.90": now["liver_dice"] >= 0.90,
                                "both_tumours_detected": bool(lesions) and all(x["detected"] for x in lesions),
                                "false_positives<=2": now["false_positives"] <= 2,
                                "tumor_dice>=0.40": now["tumor_dice"] >= 0.40}
    data["postprocess"] |= {
        "min_depth_mm": rule.min_depth_mm,
        "rim_cut": {"chosen_on": f"pooled synthetic validation of the re-run's leave-one-out runs ({', '.join(loo)}; "
                                 f"{len(syn_items)} versions, {args.per_bin} tumours per size bin each) with the "
                                 "threshold, volume and confidence cuts held at the shipped values; best lesion F1, "
                                 "ties to tumour Dice, then the smaller depth",
                    "synthetic_validation_by_depth": {f"{k.min_depth_mm:g}": v for k, v in sorted(
                        grid.items(), key=lambda kv: kv[0].min_depth_mm)},
                    "origin": RIM_RULE_ORIGIN, "command": command, "date": date}}
    data["rerun_on_another_machine"] = {
        "machine": machine, "date": date, "command": command, "runs_finished": done,
        "recorded_machine": data.get("machine"), "recorded_date": data.get("date"),
        "shipped_model_inference_reproduced": reproduced,
        "liver_dice_leave_one_out": {"recorded": data.get("liver_dice_leave_one_out"), "now": liver_loo},
        "rules": {k: v.as_postprocess() for k, v in rules.items()},
        "own_rule_synthetic_validation": own_table.get(own.key()),
        "own_rule_without_rim_synthetic_validation": own_table.get(own_no_rim.key()),
        "runs": runs,
        "note": "the same recipe and seeds trained again on another CPU (with --amp auto: fp32 where the CPU has no "
                "native bf16) and scored under the recorded rule, under it plus the rim cut, and under the rule this "
                "re-run's own synthetic validation chooses; the shipped weights are the recorded runs' full-s0"}
    write_json_atomic(args.out, data)
    cfg["postprocess"]["min_depth_mm"] = rule.min_depth_mm
    write_json_atomic(cfg_path, cfg)
    write_text_atomic(args.ship_dir / "MODEL_CARD.md", model_card(data))
    overlay_figure(ship_item["hu"], ship_item["truth"], now["_labels"], args.figure,
                   f"3D-IRCADb-01 patient 17 (real tumours, never trained on), shipped model: liver Dice "
                   f"{now['liver_dice']:.3f}, tumour Dice {now['tumor_dice']:.3f}, {now['false_positives']} false "
                   "positive(s)")
    return data


def held_out_liver_dice(res: dict[str, Any], rule: Rule) -> float:
    """Liver Dice of a leave-one-out run on its held-out case's real liver mask, after ``rule``'s threshold and
    largest liver component (the later cuts never change the liver)."""
    from aemia.evaluate.metrics import dice
    from aemia.infer.lesions import postprocess_liver_tumor, threshold_tumor

    h = res["held_out_case"]
    lab = postprocess_liver_tumor(threshold_tumor(*h["raw"], rule.threshold), h["spacing"], rule.min_mm3)
    return round(dice(lab > 0, h["truth"] > 0), 4)


def _cis_overlap(cis: list[list[float]]) -> bool:
    """True when every pair of intervals overlaps (the figures agree within their CIs)."""
    return all(a[0] <= b[1] and b[0] <= a[1] for i, a in enumerate(cis) for b in cis[i + 1:])


def make_config(args: argparse.Namespace, seed: int, n_cases: int) -> Any:
    from aemia.runs import RunConfig
    from aemia.train.trainer import TrainConfig

    per_volume = max(1, args.patches_per_epoch // n_cases)
    return RunConfig(dataset="liver_ct", model="unet", preset="cpu", task="liver-tumor", synthetic_tumors=True,
                     patch=[int(v) for v in args.patch.split(",")], spacing=[float(v) for v in args.spacing.split(",")],
                     patches_per_volume=per_volume, augment=args.augment,
                     train=TrainConfig(epochs=args.epochs, batch_size=2, lr=1e-3, optimizer="adamw",
                                       weight_decay=1e-5, seed=seed, amp=args.amp, progress=False,
                                       loss=args.loss, min_steps=args.min_steps))


def train(name: str, args: argparse.Namespace) -> Path:
    """Train (or resume) one run; returns its folder."""
    import torch

    from aemia.data.catalog import get_dataset
    from aemia.recipes.liver_tumor import build_liver_tumor
    from aemia.runs import RunFolder
    from aemia.train.trainer import Trainer

    seed, held_out = run_spec(name)
    run_dir = WORK / name
    folder = RunFolder(run_dir)
    ds = get_dataset("liver_ct")
    labelled = [c for c in ds.case_ids("train") if c != held_out]
    resume = folder.has_checkpoint("last")
    cfg = folder.config() if resume else make_config(args, seed, len(labelled))
    if (run_dir / "trained.txt").exists():
        return run_dir
    torch.manual_seed(seed)
    model, train_set, _, task = build_liver_tumor(cfg, ds, labelled)
    run_dir.mkdir(parents=True, exist_ok=True)
    folder.save_config(cfg)
    folder.save_splits({**ds.split_manifest(), "labelled": labelled, "held_out": held_out})
    # no per-epoch validation: the held-out scores below are the validation; best = the last (EMA) weights
    Trainer(model, train_set, None, cfg.train, run_dir, task=task).fit(resume=resume)
    (run_dir / "trained.txt").write_text("done\n")
    return run_dir


# ------------------------------------------------------------------------------------------------ evaluation
THRESHOLDS_MM3 = (0.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0)  # candidate minimum tumour volumes
# candidate tumour probability thresholds (None: the argmax), the recipe's (aemia.recipes.liver_tumor)
from aemia.recipes.liver_tumor import TUMOR_THRESHOLDS  # noqa: E402  (src/ is put on the path above)
MIN_CONFIDENCES = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)  # candidate minimum lesion confidences (max probability)
# candidate minimum mean depths (mm) of a tumour inside the predicted liver (the rim rule); 0 keeps every component
MIN_DEPTHS_MM = (0.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0)
INFER_AMP = "none"  # set from --infer-amp
SIZE_BINS_MM = (0.0, 5.0, 10.0, 20.0, float("inf"))


def predicted(run_dir: Path, key: str, hu: Any, spacing: Any, affine: Any) -> tuple[Any, Any]:
    """(raw argmax label map, tumour probability) of a run on a HU volume, in the volume's grid; cached in the
    run folder as ``pred_<key>.npz``."""
    import numpy as np

    from aemia.data.image import Image
    from aemia.infer.predictor import Predictor

    cache = run_dir / f"pred_{key}.npz"
    if cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            return z["raw"], z["tumor"].astype(np.float32)
    predictor = Predictor.from_run(run_dir, device="cpu", amp=INFER_AMP)
    probs = predictor.probabilities(Image(np.asarray(hu, np.float32)[None], tuple(spacing), affine))
    raw, tumor = probs.argmax(0).astype(np.uint8), probs[2].astype(np.float32)
    np.savez_compressed(cache, raw=raw, tumor=tumor.astype(np.float16))
    return raw, tumor


def score(raw: Any, tumor_prob: Any, truth: Any, spacing: Any, rule: Rule) -> dict[str, Any]:
    """Liver / tumour Dice, lesion detection and FROC candidates of one case after the decision ``rule``."""
    import numpy as np
    from scipy import ndimage

    from aemia.evaluate.froc import case_candidates
    from aemia.evaluate.metrics import dice, lesion_detection
    from aemia.infer.lesions import apply_liver_tumor_rule, lesion_confidences

    lab = apply_liver_tumor_rule(raw, tumor_prob, spacing, rule.threshold, rule.min_mm3, rule.min_confidence,
                                 rule.min_depth_mm)
    comp, n = ndimage.label(lab == 2, structure=np.ones((3, 3, 3), bool))
    conf, _ = lesion_confidences(comp, n, tumor_prob)
    det = lesion_detection(lab == 2, truth == 2, spacing, SIZE_BINS_MM)
    cand = case_candidates(comp, conf, truth == 2)
    return {"liver_dice": dice(lab > 0, truth > 0), "tumor_dice": dice(lab == 2, truth == 2), "detection": det,
            "candidates": cand, "labels": lab, "lesion_confidence": cand.lesion_best.tolist()}


def _cropped(item: dict[str, Any]) -> dict[str, Any]:
    """The item cut to the bounding box of everything any decision rule could call liver or tumour (predicted
    foreground, tumour probability at or above the lowest candidate threshold) and of the reference: every score
    is unchanged (outside lies background in prediction and reference alike), and the rule grid runs ~10x
    faster on a 512 x 512 CT."""
    import numpy as np

    raw, tumor = item["raw"]
    lowest = min(t for t in TUMOR_THRESHOLDS if t is not None)
    fg = (raw > 0) | (tumor >= lowest) | (item["truth"] > 0)
    if not fg.any():
        return item
    box = tuple(slice(int(ix.min()), int(ix.max()) + 1) for ix in np.nonzero(fg))
    return {**item, "raw": (raw[box], tumor[box]), "truth": item["truth"][box]}


def evaluate_run(name: str, variants: int, per_bin: int) -> dict[str, Any]:
    """Held-out liver Dice and synthetic validation (LOO runs), and the ircad_17 raw outputs, for one run."""
    import numpy as np

    from aemia.data.catalog import get_dataset
    from aemia.recipes.liver_tumor import validation_case

    seed, held_out = run_spec(name)
    run_dir = WORK / name
    ds = get_dataset("liver_ct")
    out: dict[str, Any] = {"run": name, "seed": seed, "held_out": held_out, "synthetic": []}
    if held_out is not None:
        case = next(c for c in ds.splits["train"] if c.id == held_out)
        s = ds.load(case)
        hu, organ = s.image.array[0].astype(np.float32), s.label == 1
        out["held_out_case"] = {"raw": predicted(run_dir, "held_out", hu, s.image.spacing, s.image.affine),
                                "truth": organ.astype(np.uint8), "spacing": s.image.spacing}
        for k in range(variants):
            truth_file = run_dir / f"truth_synthetic{k}.npz"  # the synthetic validation label, cached beside
            if truth_file.exists() and (run_dir / f"pred_synthetic{k}.npz").exists():
                with np.load(truth_file, allow_pickle=False) as z:
                    lab = z["label"]
                raw = predicted(run_dir, f"synthetic{k}", None, s.image.spacing, s.image.affine)
            else:
                img, lab, _ = validation_case(hu, organ, s.image.spacing, seed=2_000_003 + 7919 * k, per_bin=per_bin)
                raw = predicted(run_dir, f"synthetic{k}", img, s.image.spacing, s.image.affine)
                np.savez_compressed(truth_file, label=lab.astype(np.uint8))
            out["synthetic"].append(_cropped({"raw": raw, "truth": lab.astype(np.uint8), "spacing": s.image.spacing}))
            print(f"  {name}: synthetic validation version {k} scored", flush=True)
    case = ds.splits["test"][0]
    s = ds.load(case)
    out["ircad"] = {"raw": predicted(run_dir, "ircad_17", s.image.array[0], s.image.spacing, s.image.affine),
                    "truth": s.label.astype(np.uint8), "spacing": s.image.spacing, "hu": s.image.array[0]}
    return out


def rule_scores(items: list[dict[str, Any]], threshold: float | None, depths: tuple[float, ...] = MIN_DEPTHS_MM,
                volumes: tuple[float, ...] = THRESHOLDS_MM3,
                confidences: tuple[float, ...] = MIN_CONFIDENCES) -> dict[Rule, dict[str, float]]:
    """For every rule with tumour probability ``threshold``, a minimum volume of ``volumes``, a minimum
    confidence of ``confidences`` and a minimum depth of ``depths``: pooled lesion-level F1 (2 TP / (2 TP + FP
    + FN), FROC matching: a lesion is found when a kept component overlaps it) and mean tumour Dice of the
    synthetic validation cases. Exact and fast: the rule without cuts is applied once per case; a volume,
    confidence or depth cut only removes whole components (the components and the liver they lie in do not
    change), so each cut is a mask over per-component volume, confidence, depth and overlap with the reference."""
    import numpy as np
    from scipy import ndimage

    from aemia.infer.lesions import lesion_confidences, postprocess_liver_tumor, threshold_tumor, tumor_depths_mm

    full = np.ones((3, 3, 3), bool)
    cases = []
    for it in items:
        raw, tumor = it["raw"]
        lab = postprocess_liver_tumor(threshold_tumor(raw, tumor, threshold), it["spacing"], 0.0)
        comp, n = ndimage.label(lab == 2, structure=full)
        gt = it["truth"] == 2
        gt_lab, n_gt = ndimage.label(gt, structure=full)
        voxels = np.bincount(comp.ravel(), minlength=n + 1)[1:]
        conf, _ = lesion_confidences(comp, n, tumor)
        depth = tumor_depths_mm(comp, n, lab > 0, it["spacing"])
        both = (comp > 0) & (gt_lab > 0)
        pairs = np.unique(np.stack([comp[both], gt_lab[both]], axis=1), axis=0) if both.any() else np.zeros((0, 2), int)
        inter = np.bincount(comp[gt].ravel(), minlength=n + 1)[1:]  # reference voxels inside each component
        cases.append((voxels, voxels * float(np.prod(it["spacing"])), conf, depth, pairs, n_gt, inter, int(gt.sum())))
    out = {}
    for vol in volumes:
        for c in confidences:
            for d in depths:
                tp = fp = n_les = 0
                dices = []
                for voxels, mm3, conf, depth, pairs, n_gt, inter, gt_sum in cases:
                    kept = (mm3 >= vol) & (conf >= c) & (depth >= d)
                    hit_comp = np.zeros(len(kept), bool)
                    found = np.zeros(n_gt, bool)
                    for k, g in pairs:
                        if kept[k - 1]:
                            hit_comp[k - 1] = True
                            found[g - 1] = True
                    tp += int(found.sum())
                    n_les += n_gt
                    fp += int((kept & ~hit_comp).sum())
                    denom = int(voxels[kept].sum()) + gt_sum
                    dices.append(2.0 * int(inter[kept].sum()) / denom if denom else 1.0)
                out[Rule(threshold, vol, c, d)] = {"lesion_f1": round(2 * tp / max(1, tp + fp + n_les), 4),
                                                   "tumor_dice": round(float(np.mean(dices)), 4),
                                                   "fp_per_case": round(fp / max(1, len(cases)), 3),
                                                   "sensitivity": round(tp / max(1, n_les), 4)}
    return out


def choose_rule(items: list[dict[str, Any]],
                depths: tuple[float, ...] = MIN_DEPTHS_MM) -> tuple[Rule, dict[str, dict[str, float]]]:
    """(rule, table) with the best pooled lesion F1 on synthetic validation, ties to the better tumour Dice, then
    the higher threshold, the smaller volume, the lower confidence and the smaller depth. Never looks at
    ircad_17. ``depths=(0.0,)`` is the rule without the rim cut."""
    table: dict[str, dict[str, float]] = {}
    best: tuple[tuple[float, ...], Rule] | None = None
    for rank, thr in enumerate(TUMOR_THRESHOLDS):
        for rule, r in rule_scores(items, thr, depths).items():
            table[rule.key()] = r
            key = (r["lesion_f1"], r["tumor_dice"], -rank, -rule.min_mm3, -rule.min_confidence, -rule.min_depth_mm)
            if best is None or key > best[0]:
                best = (key, rule)
        print(f"  rule grid: threshold {thr} scored", flush=True)
    assert best is not None
    return best[1], table


def synthetic_summary(items: list[dict[str, Any]], rule: Rule) -> dict[str, Any]:
    """Tumour Dice (CI over validation versions), sensitivity by size (CI over lesions), FP per case, FROC."""
    import numpy as np

    from aemia.evaluate.froc import froc
    from aemia.evaluate.metrics import bootstrap_ci, bootstrap_ratio_ci, ci_dict

    scores = [score(*it["raw"], it["truth"], it["spacing"], rule) for it in items]
    dices = np.array([sc["tumor_dice"] for sc in scores])
    lesions = [les for sc in scores for les in sc["detection"]["lesions"]]
    by_size = {}
    for lo, hi in zip(SIZE_BINS_MM[:-1], SIZE_BINS_MM[1:]):
        hit = [float(les["detected"]) for les in lesions if lo <= les["diameter_mm"] < hi]
        label = f">={lo:g} mm" if hi == float("inf") else f"{lo:g}-{hi:g} mm"
        ci = bootstrap_ratio_ci(hit, [1.0] * len(hit)) if hit else None
        by_size[label] = {"sensitivity": ci.point if ci else None, "ci": [ci.lo, ci.hi] if ci else None,
                          "n_lesions": len(hit), "n_detected": int(sum(hit))}
    hits = [float(les["detected"]) for les in lesions]
    overall = bootstrap_ratio_ci(hits, [1.0] * len(hits))
    fps = np.array([sc["detection"]["false_positives"] for sc in scores], float)
    return {"tumor_dice": float(dices.mean()), "tumor_dice_ci": ci_dict(bootstrap_ci(dices))["ci"],
            "sensitivity": overall.point, "sensitivity_ci": [overall.lo, overall.hi],
            "sensitivity_by_size": by_size, "fp_per_case": float(fps.mean()),
            "fp_per_case_ci": ci_dict(bootstrap_ci(fps))["ci"], "n_versions": len(items),
            "liver_dice_in_synthetic_versions": float(np.mean([sc["liver_dice"] for sc in scores])),
            "froc": [[round(f, 3), round(se, 4)] for _, f, se in froc([sc["candidates"] for sc in scores])]}


def ircad_summary(item: dict[str, Any], rule: Rule) -> dict[str, Any]:
    """Liver / tumour Dice, each real tumour (diameter, detected, confidence), false positives and FROC."""
    from aemia.evaluate.froc import froc

    sc = score(*item["raw"], item["truth"], item["spacing"], rule)
    det = sc["detection"]
    lesions = [{"diameter_mm": round(les["diameter_mm"], 1), "volume_ml": round(les["volume_mm"] / 1000, 2),
                "detected": les["detected"],
                "confidence": round(c, 4) if c > float("-inf") else None}
               for les, c in zip(det["lesions"], sc["lesion_confidence"])]
    return {"liver_dice": round(sc["liver_dice"], 4), "tumor_dice": round(sc["tumor_dice"], 4), "lesions": lesions,
            "false_positives": det["false_positives"],
            "froc": [[round(f, 3), round(se, 4)] for _, f, se in froc([sc["candidates"]])], "_labels": sc["labels"]}


def overlay_figure(hu: Any, truth: Any, labels: Any, path: Path, title: str) -> Path:
    """Axial slice of ircad_17 through the largest real tumour: CT, reference and predicted liver / tumour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from aemia.utils.io import save_figure

    z = int(np.argmax((truth == 2).sum(axis=(0, 1))))
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.6))
    for ax, (mask, name) in zip(axes, ((truth, "reference (expert)"), (labels, "prediction (synthetic-only model)"))):
        ax.imshow(np.clip((hu[:, :, z].T + 160) / 400, 0, 1), cmap="gray", origin="lower")
        ax.contour((mask[:, :, z] > 0).T, levels=[0.5], colors="lime", linewidths=1.0)
        ax.contour((mask[:, :, z] == 2).T, levels=[0.5], colors="red", linewidths=1.2)
        ax.set_title(f"{name}: liver green, tumour red", fontsize=10)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def ship(run_dir: Path, dest: Path, rule: Rule, card: str) -> None:
    """Write the shipped model folder: model.safetensors (the run's best weights), config.json, MODEL_CARD.md."""
    import json
    import shutil

    from aemia.data.normalise import default_normaliser
    from aemia.runs import RunFolder
    from aemia.utils.io import write_json_atomic, write_text_atomic

    cfg = RunFolder(run_dir).config()
    model_cfg = json.loads((run_dir / "checkpoints" / "best.json").read_text())["model"]
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run_dir / "checkpoints" / "best.safetensors", dest / "model.safetensors")
    write_json_atomic(dest / "config.json", {
        "model": model_cfg, "task": "segmentation", "classes": {"0": "background", "1": "liver", "2": "liver tumor"},
        "spacing": cfg.spacing, "patch": cfg.patch, "window_hu": cfg.window,
        "normaliser": default_normaliser("CT (HU)", 3, cfg.window),
        "postprocess": {"kind": "liver_tumor", "organ": 1, "tumor": 2, **rule.as_postprocess()},
        "trained_by": "benchmarks/real_tumor_transfer.py", "run": run_dir.name})
    write_text_atomic(dest / "MODEL_CARD.md", card)


def _spread(values: list[float]) -> dict[str, Any]:
    import numpy as np

    v = np.asarray([x for x in values if x is not None], float)
    if not len(v):
        return {"n": 0}
    return {"mean": round(float(v.mean()), 4), "sd": round(float(v.std(ddof=1)), 4) if len(v) > 1 else None,
            "min": round(float(v.min()), 4), "max": round(float(v.max()), 4), "n": int(len(v))}


def train_minutes(name: str) -> float | None:
    import json

    log = WORK / name / "log.jsonl"
    if not log.exists():
        return None
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return round(sum(r.get("seconds", 0.0) for r in rows) / 60, 1)


def assemble(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """Score every finished run, choose the tumour volume threshold on synthetic validation, write the JSON,
    the overlay figure and (``--ship``) the shipped model."""
    import datetime as dt
    import os
    import platform
    import shlex

    import torch

    from aemia.evaluate.froc import froc
    from aemia.evaluate.metrics import dice
    from aemia.runs import RunFolder
    from aemia.utils.io import write_json_atomic

    done = [r for r in ALL_RUNS if (WORK / r / "trained.txt").exists()]
    if not done:
        raise SystemExit("no finished run to evaluate: train first (--stage train)")
    results = {r: evaluate_run(r, args.variants, args.per_bin) for r in done}
    loo = [results[r] for r in done if r.startswith("loo-")]
    syn_items = [it for res in loo for it in res["synthetic"]]
    if syn_items:
        rule, rule_table = choose_rule(syn_items)
        rule_no_rim, _ = choose_rule(syn_items, (0.0,))
    else:
        rule, rule_table, rule_no_rim = Rule(), {}, Rule()
    liver_loo, liver_loo_raw = {}, {}
    for res in loo:
        h = res["held_out_case"]
        liver_loo[res["held_out"]] = held_out_liver_dice(res, rule)
        liver_loo_raw[res["held_out"]] = round(dice(h["raw"][0] > 0, h["truth"] > 0), 4)
    seeds = [{"run": res["run"], "seed": res["seed"], "held_out": res["held_out"],
              **synthetic_summary(res["synthetic"], rule)} for res in loo]
    same_liver = same_liver_summary(args, rule, results)
    per_run = {r: ircad_summary(results[r]["ircad"], rule) for r in done}
    # the same runs under the plain argmax (no tumour threshold, no confidence or rim cut), to show what the rule
    # changes; and under the best rule without the rim cut (the rule family before the rim rule was added)
    per_run_argmax = {r: _public(ircad_summary(results[r]["ircad"], Rule(None, rule.min_mm3))) for r in done}
    no_rim = {"rule": rule_no_rim.as_postprocess(), "synthetic_validation": rule_table.get(rule_no_rim.key()),
              "ircad_17_per_run": {r: _public(ircad_summary(results[r]["ircad"], rule_no_rim)) for r in done}}
    main_run = "full-s0" if "full-s0" in per_run else done[0]
    trained = RunFolder(WORK / main_run).config()
    ircad = {"model": main_run, **{k: v for k, v in per_run[main_run].items() if k != "_labels"}}
    fig = overlay_figure(results[main_run]["ircad"]["hu"], results[main_run]["ircad"]["truth"],
                         per_run[main_run]["_labels"], args.figure,
                         f"3D-IRCADb-01 patient 17 (real tumours, never trained on), model {main_run}: liver Dice "
                         f"{ircad['liver_dice']:.3f}, tumour Dice {ircad['tumor_dice']:.3f}")
    pooled = froc([score(*it["raw"], it["truth"], it["spacing"], Rule(rule.threshold, rule.min_mm3))["candidates"]
                   for it in syn_items])  # before the confidence and rim cuts
    lesions = ircad["lesions"]
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    result: dict[str, Any] = {
        "liver_dice_leave_one_out": liver_loo,
        "liver_dice_leave_one_out_before_largest_component": liver_loo_raw,
        "ircad_17": ircad,
        "synthetic_validation": {
            "seeds": seeds,
            "spread": {k: _spread([sd[k] for sd in seeds]) for k in ("tumor_dice", "sensitivity", "fp_per_case")},
            "froc_pooled": [[round(f, 3), round(se, 4)] for _, f, se in pooled],
            "note": "each seed is a leave-one-case-out run (seed k holds out TRAIN_CASES[k]), so the spread mixes "
                    "the seed and the held-out liver; synthetic validation tumours are made in that held-out "
                    "healthy liver at its own resolution"},
        "synthetic_validation_same_liver": same_liver,
        "ircad_17_per_run": {r: {k: v for k, v in d.items() if k != "_labels"} for r, d in per_run.items()},
        "ircad_17_spread": {k: _spread([d[k] for d in per_run.values()]) for k in ("liver_dice", "tumor_dice")},
        "ircad_17_shipped_recipe_seeds": {
            "runs": [r for r in FULL_RUNS if r in per_run],
            **{k: _spread([per_run[r][k] for r in FULL_RUNS if r in per_run])
               for k in ("liver_dice", "tumor_dice", "false_positives")},
            "both_tumours_detected": [all(x["detected"] for x in per_run[r]["lesions"]) for r in FULL_RUNS
                                      if r in per_run]},
        "ircad_17_per_run_argmax": per_run_argmax,
        "postprocess": {**rule.as_postprocess(),
                        "synthetic_validation_by_rule": rule_table,
                        "rule_key": "tumour probability threshold | minimum tumour volume (mm^3) | minimum "
                                    "lesion confidence (maximum tumour probability) | minimum mean depth inside "
                                    "the predicted liver (mm)",
                        "chosen_on": "pooled synthetic validation of the leave-one-out runs only (lesion F1, ties "
                                     "to tumour Dice, then the higher threshold, the smaller volume, the "
                                     "lower confidence and the smaller depth)",
                        "rim_rule_origin": RIM_RULE_ORIGIN},
        "postprocess_without_rim_rule": no_rim,
        "ircad_17_before_rim_rule": {"model": main_run, "rule": rule_no_rim.as_postprocess(),
                                     **{k: v for k, v in no_rim["ircad_17_per_run"][main_run].items()
                                        if k in ("liver_dice", "tumor_dice", "false_positives", "lesions")}},
        "targets_ircad_17": {"liver_dice>=0.90": ircad["liver_dice"] >= 0.90,
                             "both_tumours_detected": bool(lesions) and all(x["detected"] for x in lesions),
                             "false_positives<=2": ircad["false_positives"] <= 2,
                             "tumor_dice>=0.40": ircad["tumor_dice"] >= 0.40},
        "note": args.note,
        "runs_finished": done, "runs_missing": [r for r in ALL_RUNS if r not in done],
        "train_minutes": {r: train_minutes(r) for r in ALL_RUNS},
        "setup": {"data": "train: chaos_ct_sample (expert liver), ts_example_ct + ts_example_ct_dicom "
                          "(TotalSegmentator liver pseudo-labels); test: ircad_17 (never trained on)",
                  "tumour_annotations_used": 0, "model": "3D U-Net, cpu preset (16,16,32,64,128)",
                  # the recipe as the main run was trained (its config), not this command's flags
                  "spacing_mm": (f"{trained.spacing[0]:g}" if len(set(trained.spacing)) == 1
                                 else ",".join(f"{v:g}" for v in trained.spacing)),
                  "patch": ",".join(str(v) for v in trained.patch), "epochs": args.epochs,
                  "min_steps": args.min_steps, "loss": args.loss, "augment": args.augment,
                  "patches_per_epoch": args.patches_per_epoch, "amp": args.amp,
                  "inference_amp": args.infer_amp,
                  "synthetic_versions_per_held_out_case": args.variants, "tumours_per_size_bin": args.per_bin,
                  "figure": str(fig.resolve().relative_to(ROOT)) if fig.resolve().is_relative_to(ROOT) else str(fig)},
        "command": " ".join(shlex.quote(a) for a in [sys.executable, "benchmarks/real_tumor_transfer.py", *argv]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
                    "python": platform.python_version(), "threads": 1,
                    "note": "runs trained two at a time, one thread each"},
    }
    previous = json.loads(args.out.read_text()) if args.out.is_file() else {}
    result = merge_previous(result, previous)
    write_json_atomic(args.out, result)
    if args.ship and "full-s0" in done:
        ship(WORK / "full-s0", args.ship_dir, rule, model_card(result))
    return result


RIM_RULE_ORIGIN = (
    "the minimum-depth (rim) cut was added after ircad_17_false_positive_diagnosis showed the shipped model's "
    "three false positives at a mean depth of 3.0-4.5 mm inside the predicted liver (the real tumour 14.5 mm): "
    "its value is chosen on synthetic validation only, like the other cuts, but the idea came from the test "
    "case, so ircad_17 is no longer a blind test of this rule family; postprocess_without_rim_rule is the best "
    "rule without it")


def _public(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k != "_labels"}


def merge_previous(result: dict[str, Any], previous: dict[str, Any]) -> dict[str, Any]:
    """``result`` with the keys other stages wrote into ``previous`` kept (diagnosis, pilots, the rim stage's
    re-run, same-liver seeds when none was re-scored here)."""
    out = {k: v for k, v in previous.items() if k not in result} | result
    if not result.get("synthetic_validation_same_liver") and previous.get("synthetic_validation_same_liver"):
        out["synthetic_validation_same_liver"] = previous["synthetic_validation_same_liver"]
    return out


def _confidence_words(pp: dict[str, Any]) -> str:
    c, d = float(pp.get("min_confidence", 0.0)), float(pp.get("min_depth_mm", 0.0))
    words = ("(no minimum confidence" if c <= 0 else
             f"and so do those whose confidence (maximum tumour probability) is below {c:g}")
    if d > 0:
        return words + (f"{')' if c <= 0 else ''} and those whose mean depth inside the predicted liver is below "
                        f"{d:g} mm (the rim rule: it also removes real tumours lying mostly within {d:g} mm of the "
                        "liver surface)")
    return words + (": every remaining component is kept)" if c <= 0 else "")


def _rim_words(r: dict[str, Any]) -> str:
    """The rim rule's provenance, when the chosen rule uses it (the card must say the test case inspired it)."""
    if float(r["postprocess"].get("min_depth_mm", 0.0)) <= 0:
        return ""
    fps = (r.get("ircad_17_before_rim_rule") or {}).get("false_positives")
    how = (r["postprocess"].get("rim_cut") or {}).get("chosen_on")
    return (("\n  The rim cut was chosen afterwards on " + how + "." if how else "") +
            "\n  It was added after this model's false positives on the real-tumour case were seen at the "
            "liver's rim, so that case is no longer a blind test of it" +
            (f"; without the cut this model has {fps} false positive(s) there." if fps is not None else "."))


def _thr(pp: dict[str, Any]) -> str:
    t = pp.get("tumor_threshold")
    return "the argmax's (no lower threshold)" if t is None else f"{t:g}"


TARGET_WORDS = {"liver_dice>=0.90": "liver Dice >= 0.90", "both_tumours_detected": "both tumours detected",
                "false_positives<=2": "at most 2 false positives", "tumor_dice>=0.40": "tumour Dice >= 0.40"}


def _verdict(r: dict[str, Any]) -> str:
    """One honest sentence on what the tumour output is good for, from the ircad_17 targets."""
    t = r["targets_ircad_17"]
    if all(t.values()):
        return "On the real-tumour case it meets every issue-17 target."
    if t["both_tumours_detected"]:
        missed = ", ".join(TARGET_WORDS.get(k, k) for k, v in t.items() if not v)
        return (f"It detects both real tumours of the test case but does not meet the target(s) {missed}: treat "
                "the tumour mask as a detection aid to be checked by a reader, not a measurement.")
    return ("Its tumour output does not yet find the real tumours: treat the tumour mask and lesion table as a "
            "demonstration of the pipeline, not a detector.")


def _seeds_line(r: dict[str, Any]) -> str:
    sd = r.get("ircad_17_shipped_recipe_seeds") or {}
    if not sd.get("runs"):
        return "not measured"

    def fmt(k: str, digits: int) -> str:
        v = sd[k]
        if v.get("n", 0) < 2:
            return f"{v.get('mean')}"
        return f"{v['mean']:.{digits}f} ± {v['sd']:.{digits}f} ({v['min']:.{digits}f}-{v['max']:.{digits}f})"
    found = sum(sd["both_tumours_detected"])
    return (f"liver Dice {fmt('liver_dice', 3)}, tumour Dice {fmt('tumor_dice', 3)}, false positives "
            f"{fmt('false_positives', 1)}; both real tumours detected by {found} of {len(sd['runs'])}")


def model_card(r: dict[str, Any]) -> str:
    """MODEL_CARD.md of the shipped liver-tumor model, from the measured figures."""
    ir = r["ircad_17"]
    les = "; ".join(f"{x['diameter_mm']} mm ({x['volume_ml']} mL): {'detected' if x['detected'] else 'missed'}"
                    + (f", confidence {x['confidence']:.2f}" if x["confidence"] is not None else "")
                    for x in ir["lesions"])
    seeds = r["synthetic_validation"]["seeds"]
    syn = "\n".join(f"| {sd['run']} (seed {sd['seed']}) | {sd['held_out']} | {sd['tumor_dice']:.3f} "
                     f"[{sd['tumor_dice_ci'][0]:.3f}, {sd['tumor_dice_ci'][1]:.3f}] | {sd['sensitivity']:.2f} "
                     f"[{sd['sensitivity_ci'][0]:.2f}, {sd['sensitivity_ci'][1]:.2f}] | {sd['fp_per_case']:.1f} |"
                     for sd in seeds) or "| (no leave-one-out run finished) | | | | |"
    loo = ", ".join(f"{k} {v:.3f}" for k, v in r["liver_dice_leave_one_out"].items()) or "not measured"
    st = dict(r["setup"])
    if len(set(str(st["spacing_mm"]).split(","))) == 1:  # "2,2,2" -> "2"
        st["spacing_mm"] = str(st["spacing_mm"]).split(",")[0]
    return f"""# liver-tumor: liver + liver-tumour CT segmentation trained without a tumour annotation

`aemia predict --pretrained liver-tumor --input CT --out DIR` (NIfTI file or DICOM folder, any orientation and
spacing) writes `DIR/<case>.nii.gz` (0 background, 1 liver, 2 liver tumour; the input's grid and affine) and
`DIR/<case>_lesions.csv` (one row per tumour: centre in voxels and mm, equivalent diameter, volume, `confidence` =
maximum and `confidence_mean` = mean tumour probability over the lesion).

## Model
- 3D U-Net (aemia `unet`, widths 16-16-32-64-128, 1 input channel, 3 classes), safetensors,
  trained by `benchmarks/real_tumor_transfer.py` (run `full-s0`, seed 0), at least {st.get('min_steps', 0)} optimiser
  steps of batch 2 ({st['patches_per_epoch']} patches of {st['patch']} voxels per epoch, epochs raised to reach the
  step count) at {st['spacing_mm']} mm, AdamW 1e-3, warm-up + cosine, EMA 0.99, `--amp {st['amp']}`;
  {r['train_minutes'].get('full-s0')} min single-threaded on a 2-core machine.
- Preprocessing: canonical RAS orientation, resampling to {st['spacing_mm']} mm isotropic (a CPU compromise: the
  paper uses 1 mm), HU window [-21, 189] -> [0, 1]; sliding window with Gaussian blending (overlap 0.5);
  probabilities resampled to the input grid.
- Decision rule: the argmax, with every voxel whose tumour probability reaches {_thr(r['postprocess'])} called
  tumour; then the largest connected liver component (liver + tumour voxels) is kept, tumour voxels outside it
  are removed, tumour components smaller than {r['postprocess']['min_tumor_mm3']:g} mm^3 become liver
  {_confidence_words(r['postprocess'])}. The
  cuts were chosen together by lesion F1 on synthetic validation tumours in held-out healthy livers only
  (never on the real-tumour case); `config.json` records them under `postprocess`.{_rim_words(r)}

## Training data (no tumour label anywhere)
Tumours are synthesized on the fly in healthy livers (Hu et al., "Label-Free Liver Tumor Segmentation",
CVPR 2023; `aemia.synth.transform.RandTumorSynthesisd`, probability 0.9). Healthy livers:
- CHAOS CT sample (`chaos_ct_sample`, expert liver mask), CC BY-SA 4.0. Kavur A.E. et al., Medical Image
  Analysis 69 (2021) 101950.
- TotalSegmentator example CT (3 mm) and its DICOM series (TotalSegmentator liver pseudo-labels), repository
  Apache-2.0, data CC BY 4.0 as far as known. Wasserthal J. et al., Radiology: AI 2023.
Augmentation: HU scale ±15 %, shift ±40 HU, noise (scanner / contrast phase), rotation ±15° about every axis,
zoom ±20 % (spacing jitter), 3D elastic (p 0.2), flips, brightness/contrast, gamma.

## Measured (benchmarks/results/real_tumor_transfer.json, {r['date'][:10]})
Real tumours, 3D-IRCADb-01 patient 17 (`ircad_17`, never trained on; CC BY-NC-ND 4.0, used for testing only):
- liver Dice {ir['liver_dice']:.3f}; tumour Dice {ir['tumor_dice']:.3f}; {ir['false_positives']} false-positive
  tumour component(s);
- real tumours: {les or 'none found'}.

The same recipe with seeds 0, 1, 2 (`full-s0` is this model): {_seeds_line(r)}.

Leave-one-case-out liver Dice (the case held out of training): {loo}.

Synthetic validation tumours in the held-out healthy liver (tumour Dice with a 95% bootstrap CI over the
validation versions, lesion sensitivity with a CI over lesions, false positives per case):

| run | held-out liver | tumour Dice | sensitivity | FP / case |
|---|---|---|---|---|
{syn}

Issue-17 targets on ircad_17: {", ".join(f"{TARGET_WORDS.get(k, k)} {'met' if v else 'NOT met'}"
                                        for k, v in r["targets_ircad_17"].items())}.

## Limitations (read before use)
{r.get("note") or ""}

For comparison, the paper reports DSC 59.8 on real LiTS tumours, trained on dozens of healthy livers at 1 mm
on GPUs for thousands of epochs; this model saw three healthy livers (two of them the same TotalSegmentator CT in
two formats; one expert mask) at {st['spacing_mm']} mm for about {st.get('min_steps', 0)} steps on a CPU.
{_verdict(r)} Figures come from one real-tumour case and are not a clinical validation.

## Licence and use
Research use. The weights derive from CC BY-SA 4.0 (CHAOS) and CC BY 4.0 / Apache-2.0 (TotalSegmentator) data;
attribute those sources. Not a medical device.
"""


def diagnose(out: Path, argv: list[str]) -> dict[str, Any]:
    """Where the shipped model's tumour components on ``ircad_17`` lie against the expert masks.

    Runs the product path (``aemia predict --pretrained liver-tumor``, a fresh process) on the CT, then for each
    predicted tumour component: volume, confidence (the CSV's), the fraction of its voxels that are expert tumour,
    expert liver and outside the expert liver, and its mean HU; and the predicted liver's precision and recall
    against the expert liver + tumours. Merged into ``out`` as ``ircad_17_false_positive_diagnosis``. It reads
    the test case's masks, so nothing here may feed a post-processing choice: it explains, it does not tune."""
    import csv
    import os
    import subprocess
    import tempfile
    from datetime import datetime, timezone

    import nibabel as nib
    import numpy as np
    from scipy import ndimage

    from aemia.data.catalog import data_root
    from aemia.utils.io import write_json_atomic

    case = data_root() / "liver_ct_real" / "ircad_17"
    missing = [f for f in ("ct.nii.gz", "label.nii.gz") if not (case / f).is_file()]
    if missing:
        raise SystemExit(f"{case}: {', '.join(missing)} not found (the real-tumour test case; see its SOURCE.md)")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "aemia.cli.main", "predict", "--pretrained", "liver-tumor",
               "--input", str(case / "ct.nii.gz"), "--out", tmp]
        subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        pred = np.asarray(nib.load(Path(tmp) / "ct.nii.gz").dataobj)
        with (Path(tmp) / "ct_lesions.csv").open() as fh:
            rows = list(csv.DictReader(fh))
    ct = nib.load(case / "ct.nii.gz")
    hu = np.asarray(ct.dataobj, dtype=np.float32)
    truth = np.asarray(nib.load(case / "label.nii.gz").dataobj)
    voxel_ml = float(np.prod(ct.header.get_zooms()[:3])) / 1000.0
    comps, n = ndimage.label(pred == 2)
    # how deep inside the predicted liver each component lies (mm to its surface): a leak at the liver's edge or a
    # lesion inside the organ
    depth = ndimage.distance_transform_edt(pred > 0, sampling=[float(z) for z in ct.header.get_zooms()[:3]])
    table, fragments = [], 0
    for i in range(1, n + 1):
        m = comps == i
        k = int(m.sum())
        if k * voxel_ml < 0.1:  # resampling slivers of a component at the model's 2 mm grid, not in the CSV
            fragments += 1
            continue
        centre = np.array(ndimage.center_of_mass(m))
        csv_row = min(rows, key=lambda r: float(np.linalg.norm(centre - [float(r[f"centre_voxel_{a}"]) for a in "xyz"])))
        table.append({"volume_ml": round(k * voxel_ml, 2), "confidence": float(csv_row["confidence"]),
                      "expert_tumour": round(float((truth[m] == 2).mean()), 3),
                      "expert_liver": round(float((truth[m] == 1).mean()), 3),
                      "outside_expert_liver": round(float((truth[m] == 0).mean()), 3),
                      "mean_hu": round(float(hu[m].mean()), 1),
                      "mean_depth_in_predicted_liver_mm": round(float(depth[m].mean()), 1),
                      "max_depth_in_predicted_liver_mm": round(float(depth[m].max()), 1),
                      "true_positive": bool((truth[m] == 2).any())})
    table.sort(key=lambda r: -r["volume_ml"])
    organ, ref = pred > 0, truth > 0
    fps = [r for r in table if not r["true_positive"]]
    result = {
        "components": table,
        "predicted_liver_precision": round(float((organ & ref).sum() / organ.sum()), 4),
        "predicted_liver_recall": round(float((organ & ref).sum() / ref.sum()), 4),
        "mean_hu_expert_liver": round(float(hu[truth == 1].mean()), 1),
        "mean_hu_expert_tumour": round(float(hu[truth == 2].mean()), 1),
        "false_positive_voxels_outside_expert_liver": round(float(
            sum(r["outside_expert_liver"] * r["volume_ml"] for r in fps) / max(1e-9, sum(r["volume_ml"] for r in fps))), 3),
        "fragments_below_0.1_ml": fragments,
        "model": "src/aemia/shipped/liver-tumor (full-s0)",
        "command": "python benchmarks/real_tumor_transfer.py " + " ".join(argv),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    outside = result["false_positive_voxels_outside_expert_liver"]
    result["reading"] = (
        f"{outside:.0%} of the false-positive tumour voxels lie outside the expert liver, where the predicted liver "
        "extends beyond it: the false positives are mostly a liver-segmentation error" if outside > 0.5 else
        f"{1 - outside:.0%} of the false-positive tumour voxels lie inside the expert liver: the false positives are "
        "mostly a tumour-detection error")
    data = json.loads(out.read_text()) if out.is_file() else {}
    data["ircad_17_false_positive_diagnosis"] = result
    write_json_atomic(out, data)
    return result


def main(argv: list[str] | None = None) -> int:
    global WORK, INFER_AMP
    example = "  OMP_NUM_THREADS=1 python benchmarks/real_tumor_transfer.py"
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=f"examples:\n{example} --stage train --runs full-s0,loo-chaos_ct_sample\n"
                                        f"{example} --stage eval --ship\n"
                                        f"{example} --stage diagnose\n"
                                        f"{example} --stage train --runs loo-chaos_ct_sample-s0,loo-chaos_ct_sample-s2\n"
                                        f"{example} --stage seeds   # the seeds on one held-out liver, shipped rule\n"
                                        f"{example} --stage rim --variants 8   # the rim cut for the shipped rule")
    ap.add_argument("--stage", choices=("train", "predict", "eval", "all", "diagnose", "seeds", "rim"), default="all",
                    help="predict: cache one run's predictions (parallel-friendly); eval: score all finished runs; "
                         "diagnose: where the shipped model's tumour components on ircad_17 lie (explains, never tunes); "
                         "seeds: the loo-<case>-s<k> runs' synthetic validation under the shipped rule; "
                         "rim: add the rim cut, chosen on the finished leave-one-out runs, to the shipped rule")
    ap.add_argument("--runs", default=",".join(ALL_RUNS),
                    help="comma-separated: " + ", ".join(ALL_RUNS) + ", or loo-<case>-s<seed>")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--patches-per-epoch", type=int, default=48)
    ap.add_argument("--patch", default="64,64,48")
    ap.add_argument("--spacing", default="2,2,2")
    ap.add_argument("--amp", default="auto")
    ap.add_argument("--loss", default="dice_ce", help="dice_ce (per-sample Dice) or dice_ce_batch (nnU-Net batch Dice)")
    ap.add_argument("--min-steps", type=int, default=1500,
                    help="at least this many optimiser steps (epochs raised); the recipe's default, as aemia train")
    ap.add_argument("--augment", default="strong", help="strong (STRONG_3D + HU jitter), light (pre-wave-2) or none")
    ap.add_argument("--variants", type=int, default=3, help="synthetic validation versions of each held-out case")
    ap.add_argument("--per-bin", type=int, default=2, help="synthetic validation tumours per size bin")
    ap.add_argument("--ship", action="store_true", help="write the shipped model (--ship-dir) from full-s0")
    ap.add_argument("--ship-dir", type=Path, default=ROOT / "src" / "aemia" / "shipped" / "liver-tumor")
    ap.add_argument("--work", type=Path, default=WORK, help="folder of the run folders")
    ap.add_argument("--infer-amp", default="none", choices=("none", "bf16"),
                    help="inference precision of the benchmark's predictions (the CLI default is none)")
    ap.add_argument("--note", default="", help="a note recorded in the JSON (e.g. how a run was resumed)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "real_tumor_transfer.json")
    ap.add_argument("--figure", type=Path, default=ROOT / "docs" / "figures" / "liver_tumor_ircad17.png",
                    help="the ircad_17 overlay figure of the eval stage (give another path for a variant recipe)")
    args = ap.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    WORK = args.work
    INFER_AMP = args.infer_amp
    import torch

    torch.set_num_threads(1)
    runs = [r for r in args.runs.split(",") if r]
    if args.stage == "diagnose":
        print(json.dumps(diagnose(args.out, argv), indent=1))
        return 0
    if args.stage == "rim":
        data = rim_stage(args, argv)
        print(json.dumps({"min_depth_mm": data["postprocess"]["min_depth_mm"], "ircad_17": {
            k: data["ircad_17"][k] for k in ("liver_dice", "tumor_dice", "false_positives")},
            "targets": data["targets_ircad_17"]}, indent=1))
        return 0
    if args.stage == "seeds":
        res = seeds_stage(args.out, argv, args)
        print(json.dumps({c: v["agree_within_ci"] for c, v in res.items() if isinstance(v, dict) and "seeds" in v},
                         indent=1))
        return 0
    if args.stage in ("train", "all"):
        for name in runs:
            print(f"training {name}", flush=True)
            train(name, args)
    if args.stage == "predict":
        for name in runs:
            evaluate_run(name, args.variants, args.per_bin)
    if args.stage in ("eval", "all"):
        result = assemble(args, argv)
        print(json.dumps({k: result[k] for k in ("liver_dice_leave_one_out", "targets_ircad_17")}, indent=1))
        print(f"ircad_17: liver Dice {result['ircad_17']['liver_dice']}, tumour Dice {result['ircad_17']['tumor_dice']}, "
              f"lesions {result['ircad_17']['lesions']}, false positives {result['ircad_17']['false_positives']}")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
