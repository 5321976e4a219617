"""``aemia predict``: apply a trained run (or an ensemble of runs) to an image, a volume or a folder of them,
in one process or spread over worker processes, job-array parts or torchrun ranks (docs/scale.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from aemia.cli import validate as v

from aemia.cli.common import console, part_options


_PARTS = part_options()

def register(app: typer.Typer) -> None:
    app.command("predict")(predict)


def predict(
    run: Optional[Path] = typer.Option(None, "--run", "-r", help="A run folder written by `aemia train` or `aemia demo`.", callback=v.existing),
    pretrained: Optional[str] = typer.Option(None, "--pretrained", help="A model shipped with aemia instead of --run, e.g. liver-tumor (liver + tumour CT model: mask and lesion CSV with a confidence per lesion).", callback=v.shipped),
    input: Path = typer.Option(..., "--input", "-i", help="Image file, DICOM folder, or a folder of images.", callback=v.existing),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (masks keep the input's geometry).", callback=v.out_folder),
    runs: Optional[str] = typer.Option(None, "--runs", help="An ensemble: comma-separated run folders (R1,R2,R3); "
                                       "the mask is the argmax of their mean probabilities.", callback=v.existing_list),
    save_probs: bool = typer.Option(False, "--save-probs", help="Also write each model's probabilities as "
                                    "OUT/probs/<model>/<case>.nii.gz (quantised 4D NIfTI) + organs.json: the input "
                                    "of `aemia review prioritize --predictions OUT/probs` (3D runs)."),
    probs_dtype: str = typer.Option("uint8", "--probs-dtype", help="Stored probabilities: uint8 (q/255) or uint16 (q/65535).",
                                    callback=v.choice(("uint8", "uint16"))),
    workers: int = typer.Option(1, "--workers", "-w", help="Worker processes, each loading the model once and "
                                "using cores/W threads.", callback=v.at_least_one),
    num_parts: Optional[int] = _PARTS[0],
    part_id: Optional[int] = _PARTS[1],
    merge: bool = typer.Option(False, "--merge", help="Predict nothing: check that every case of --input finished "
                               "(all parts) and write OUT/summary.json; exit 2 listing failed/missing cases."),
    tta: bool = typer.Option(False, help="Average over flipped copies (test-time augmentation)."),
    prune: Optional[int] = typer.Option(None, help="UNet++ fast mode: use the exact sub-network L_d (1..depth).", callback=v.at_least_one),
    device: str = typer.Option("auto", help="auto, cpu or cuda.", callback=v.device),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Predict the good inputs and list the bad ones in "
                                                            "OUT/failures.csv (exit code 2) instead of refusing all."),
    amp: str = typer.Option("none", help="Mixed precision for inference: none, bf16, auto.", callback=v.choice(("none","bf16","auto"))),
) -> None:
    """Predict masks (PNG for pictures, NIfTI for volumes) or class probabilities (predictions.csv).

    Every input is checked first; if any is bad nothing is written (or, with --skip-bad, the good ones are
    predicted and OUT/failures.csv lists the rest). Finished cases are skipped, so a restart resumes; a case that
    fails while predicting is listed with its problem in OUT/failures.csv, the others go on, and the exit code is 2.
    OUT/summary.json says what finished.

    Example: aemia predict --run runs/demo --input ../shared/data/kvasir_seg_256/images --out runs/demo/pred --prune 3

    Shipped model: aemia predict --pretrained liver-tumor --input ct.nii.gz --out pred   (any CT: NIfTI or DICOM folder)

    Many CTs: aemia predict --runs runs/a,runs/b,runs/c --save-probs --workers 2 --num-parts 8 --part-id 0
    --input cts/ --out pred/  (then: aemia predict --merge ... and aemia review prioritize --predictions pred/probs)
    """
    from aemia.errors import InputError
    from aemia.infer.batch import merge_outputs, predict_path

    if sum(x is not None for x in (run, runs, pretrained)) != 1:
        raise InputError(None, "give exactly one of --run RUN, --runs R1,R2,... and --pretrained NAME (a shipped model)")
    if pretrained is not None:
        from aemia.runs.shipped import shipped_model_dir

        chosen = [str(shipped_model_dir(pretrained))]
    else:
        chosen = [str(run)] if run is not None else list(runs or [])
    if merge:
        report = merge_outputs(chosen, input, out, tta=tta, prune=prune, amp=amp, save_probs=save_probs,
                               probs_dtype=probs_dtype)
        console.print(f"all {report.cases} case(s) finished; summary: {out / 'summary.json'}")
        return
    written = predict_path(chosen if len(chosen) > 1 else chosen[0], input, out, tta=tta, prune=prune, device=device,
                           amp=amp, skip_bad=skip_bad, workers=workers, num_parts=num_parts, part_id=part_id,
                           save_probs=save_probs, probs_dtype=probs_dtype)
    console.print(f"{len(written)} prediction file(s) in {out}")
