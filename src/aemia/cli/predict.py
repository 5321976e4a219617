"""``aemia predict``: apply a trained run to an image, a volume or a folder of them."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from aemia.cli import validate as v

from aemia.cli.common import console


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)


def predict(
    run: Optional[Path] = typer.Option(None, "--run", "-r", help="A run folder written by `aemia train` or `aemia demo`.", callback=v.existing),
    pretrained: Optional[str] = typer.Option(None, "--pretrained", help="A model shipped with aemia instead of --run, e.g. liver-tumor (liver + tumour CT model: mask and lesion CSV with a confidence per lesion).", callback=v.shipped),
    input: Path = typer.Option(..., "--input", "-i", help="Image file, DICOM folder, or a folder of images.", callback=v.existing),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (masks keep the input's geometry).", callback=v.out_folder),
    tta: bool = typer.Option(False, help="Average over flipped copies (test-time augmentation)."),
    prune: Optional[int] = typer.Option(None, help="UNet++ fast mode: use the exact sub-network L_d (1..depth).", callback=v.at_least_one),
    device: str = typer.Option("auto", help="auto, cpu or cuda.", callback=v.device),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Predict the good inputs and list the bad ones in "
                                                            "OUT/failures.csv (exit code 2) instead of refusing all."),
    amp: str = typer.Option("none", help="Mixed precision for inference: none, bf16, auto.", callback=v.choice(("none","bf16","auto"))),
) -> None:
    """Predict masks (PNG for pictures, NIfTI for volumes) or class probabilities (predictions.csv).

    Every input is checked first; if any is bad nothing is written (or, with --skip-bad, the good ones are
    predicted and OUT/failures.csv lists the rest).

    Example: aemia predict --run runs/demo --input ../shared/data/kvasir_seg_256/images --out runs/demo/pred --prune 3

    Example: aemia predict --pretrained liver-tumor --input ct.nii.gz --out pred   (any CT: NIfTI or DICOM folder)
    """
    from aemia.errors import InputError
    from aemia.infer.batch import predict_path

    if (run is None) == (pretrained is None):
        raise InputError(None, "give exactly one of --run (a run folder) and --pretrained (a shipped model)")
    written = predict_path(run, input, out, tta=tta, prune=prune, device=device, amp=amp, skip_bad=skip_bad,
                           pretrained=pretrained)
    console.print(f"wrote {len(written)} prediction(s) to {out}")
