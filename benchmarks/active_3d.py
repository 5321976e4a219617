"""Benchmark: the 3D annotation loop on real CT (issue 15, part 5): init → query → import from the truth → train,
several rounds, with the measured Dice of every round's model.

Data (real, ``/work/shared/data``): liver masks of two abdominal CTs make the pool, a third patient is the test.

* pool: ``--crops`` liver-centred crops (``--crop-mm`` cubes, native spacing, each written as its own NIfTI case)
  of ``liver_ct_real/chaos_ct_sample`` (expert liver mask, 0.73 x 0.73 x 2 mm) and of
  ``totalsegmentator_example_ct/example_ct`` (TotalSegmentator v1 liver = label 5, a pseudo-label, 3 mm): crops
  of one patient overlap and are correlated, so this is a small, honest demonstration, not a strategy benchmark;
* test: ``liver_ct_real/ircad_17`` (another patient, expert mask; liver + tumour = liver), the whole
  512 x 512 x 119 abdomen predicted by ``aemia predict``'s :class:`~aemia.infer.predictor.Predictor` from the
  round's run folder (``P/models/round_NN``), Dice of the liver.

Loop (the same functions the CLI commands call): ``aemia active init --images POOL --project P --classes
background,liver --spacing 4,4,4 --patch 32,32,32`` (3D U-Net 8-16-32-64, CT window), then per round ``aemia active
query --strategy S --k K`` (round 0: the random cold start), the simulated annotator copies the truth of the
queried cases into a folder, ``aemia active import``, ``aemia active train --epochs E`` (ACFT(LQ): the project
model fine-tuned on every label). Per round it records the queried cases, label counts, the project's validation
Dice (its held-out labelled crops, with the bootstrap CI) and the test Dice on the unseen patient, and seconds.

    .venv/bin/python benchmarks/active_3d.py                       # acft and random arms, 3 rounds each
    .venv/bin/python benchmarks/active_3d.py --strategies acft --rounds 2 --epochs 5 --out /tmp/a3d.json  # quick

Output: ``benchmarks/results/active_3d.json`` (``{"arms": {strategy: {"rounds": [...]}}, "settings", "command",
"date", "machine"}``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import ROOT, provenance  # noqa: E402

DATA = Path(os.environ.get("AEMIA_DATA", ROOT.parent / "shared" / "data"))
SOURCES = {  # case prefix: (CT, label, liver label values)
    "chaos": (DATA / "liver_ct_real/chaos_ct_sample/ct.nii.gz", DATA / "liver_ct_real/chaos_ct_sample/label.nii.gz",
              (1,)),
    "tseg": (DATA / "totalsegmentator_example_ct/example_ct.nii.gz",
             DATA / "totalsegmentator_example_ct/example_ct_seg_totalv1.nii.gz", (5,)),
}
TEST = (DATA / "liver_ct_real/ircad_17/ct.nii.gz", DATA / "liver_ct_real/ircad_17/label.nii.gz", (1, 2))


def make_pool(out: Path, crops: int, crop_mm: float, seed: int) -> tuple[Path, Path]:
    """``out/images/<src>_NN.nii.gz`` and ``out/truth/`` (binary liver): crops centred on random liver voxels."""
    from aemia.data.image import Image
    from aemia.data.io import read_image, write_nifti

    images, truth = out / "images", out / "truth"
    images.mkdir(parents=True)
    truth.mkdir()
    rng = np.random.default_rng(seed)
    for name, (ct_path, lab_path, values) in SOURCES.items():
        ct, lab = read_image(ct_path), read_image(lab_path)
        liver = np.isin(lab.array[0], values)
        pts = np.argwhere(liver)
        size = [min(n, int(round(crop_mm / s))) for n, s in zip(ct.spatial_shape, ct.spacing)]
        for i in range(crops):
            centre = pts[rng.integers(len(pts))]
            start = [int(np.clip(c - w // 2, 0, n - w)) for c, w, n in zip(centre, size, ct.spatial_shape)]
            sl = tuple(slice(a, a + w) for a, w in zip(start, size))
            aff = ct.affine.copy()
            aff[:3, 3] = ct.affine[:3, :3] @ np.asarray(start, float) + ct.affine[:3, 3]
            case = f"{name}_{i:02d}"
            write_nifti(Image(ct.array[(slice(None),) + sl].astype(np.int16), ct.spacing, aff),
                        images / f"{case}.nii.gz")
            write_nifti(Image(liver[None][(slice(None),) + sl].astype(np.uint8), ct.spacing, aff),
                        truth / f"{case}.nii.gz")
    return images, truth


def test_dice(run: Path) -> float:
    """Liver Dice of the round's model on the whole test CT (another patient)."""
    from aemia.data.io import read_image
    from aemia.evaluate.metrics import dice
    from aemia.infer.predictor import Predictor

    ct, lab = read_image(TEST[0]), read_image(TEST[1])
    pred = Predictor.from_run(run, device="cpu").predict(ct)
    return float(dice(pred > 0, np.isin(lab.array[0], TEST[2])))


def run_arm(strategy: str, images: Path, truth: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from aemia.active.continual import train_round
    from aemia.active.importing import import_labels
    from aemia.active.project import init_project
    from aemia.active.query import query_round

    proj = init_project(work / f"P_{strategy}", images, classes=["background", "liver"], spacing=[args.spacing] * 3,
                        patch=[args.patch] * 3, seed=args.seed, progress=False)
    rounds = []
    for r in range(args.rounds):
        t0 = time.perf_counter()
        q = query_round(proj, strategy, args.k, progress=False)
        t1 = time.perf_counter()
        labels = work / f"labels_{strategy}_{r:02d}"
        labels.mkdir()
        for c in q.cases:
            shutil.copyfile(truth / f"{c}.nii.gz", labels / f"{c}.nii.gz")
        import_labels(proj, labels, annotator="simulated (ground truth)", progress=False)
        s = train_round(proj, epochs=args.epochs, batch_size=2, progress=False)
        t2 = time.perf_counter()
        v = s["validation"].get("score") or {}
        row = {"round": r, "strategy": q.strategy, "queried": q.cases, "scores": [round(x, 6) for x in q.scores],
               "n_labels": s["n_labels"], "n_train": s["n_train_labels"], "n_validation": s["n_validation"],
               "validation_dice": v.get("mean"), "validation_ci": v.get("ci"), "promoted": s["promoted"],
               "test_dice_ircad17": test_dice(proj.model_dir(r)), "query_s": round(t1 - t0, 1),
               "train_s": round(t2 - t1, 1)}
        print(json.dumps(row), flush=True)
        rounds.append(row)
    return {"rounds": rounds, "config": json.loads((proj.root / "project.json").read_text())}


def main(argv: list[str] | None = None) -> None:
    import torch

    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--strategies", default="acft,random")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--crops", type=int, default=8, help="crops per source CT")
    ap.add_argument("--crop-mm", type=float, default=160.0)
    ap.add_argument("--spacing", type=float, default=4.0)
    ap.add_argument("--patch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "active_3d.json")
    args = ap.parse_args(argv)
    missing = [p for p in [*(s[0] for s in SOURCES.values()), TEST[0]] if not p.is_file()]
    if missing:
        sys.exit(f"missing data: {', '.join(map(str, missing))}")
    result: dict[str, Any] = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                              **provenance(), "arms": {}}
    with tempfile.TemporaryDirectory(prefix="active3d-") as tmp:
        work = Path(tmp)
        images, truth = make_pool(work / "pool", args.crops, args.crop_mm, args.seed)
        for strategy in [s.strip() for s in args.strategies.split(",") if s.strip()]:
            result["arms"][strategy] = run_arm(strategy, images, truth, work, args)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=1) + "\n")  # after every arm: a partial result survives
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
