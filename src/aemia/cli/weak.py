"""``aemia weak``: weak localisation from image-level labels (class activation maps of a trained classifier)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from aemia.cli import validate as v
from aemia.cli.common import add_group

CAM_HELP = (
    "Class activation maps (Zhou et al., CVPR 2016) of a trained classification run, thresholded into masks and "
    "scored against the data set's lesion masks.\n\n"
    "CAM_c = sum_k w_ck f_k (last feature maps, linear weights of class c), upsampled bilinearly to the run's "
    "image size and divided by its positive maximum; mask = CAM >= threshold x max. Outputs (--out): "
    "cam_metrics.json (IoU, Dice and pointing game with bootstrap 95% CIs), per_image.csv, cams.png.\n\n"
    "Example: aemia weak cam --run runs/ph2_arl --dataset ph2 --split test --threshold 0.5 --out runs/ph2_arl/cam"
)


def cam_cmd(
    run: Path = typer.Option(..., "--run", "-r", help="A trained classification run folder (aemia train)."),
    out: Path = typer.Option(..., "--out", help="Output folder.", callback=v.out_folder),
    dataset: Optional[str] = typer.Option(None, "--dataset", "--data", "-d", help="Data set with masks to score against "
                                          "(default: the run's data set)."),
    split: str = typer.Option("test", "--split", help="Split to map: train, val or test.", callback=v.choice(("train", "val", "test"))),
    cam_class: str = typer.Option("predicted", "--class", help="Whose CAM: predicted (each image's predicted "
                                  "class), a class name (e.g. melanoma) or all (every class in turn)."),
    threshold: float = typer.Option(0.5, "--threshold", help="Mask = CAM >= threshold x its maximum (0..1).", callback=v.fraction),
    largest_component: bool = typer.Option(False, "--largest-component", help="Keep only the largest connected "
                                           "component of each mask."),
    figure_images: int = typer.Option(16, "--figure-images", help="Images shown in cams.png.", callback=v.non_negative),
) -> None:
    from aemia.errors import InputError
    from aemia.weak.cam import CamConfig, run_cams

    if not 0.0 <= threshold <= 1.0:
        raise InputError(None, f"--threshold must be in [0, 1], got {threshold}")
    summary = run_cams(run, out, dataset=dataset, split=split, target=cam_class,
                       config=CamConfig(threshold=threshold, largest_component=largest_component),
                       max_figure_images=figure_images)
    typer.echo(summary["headline"])
    typer.echo(f"outputs: {out / 'cam_metrics.json'}, {out / 'per_image.csv'}, {out / 'cams.png'}")


def register(app: typer.Typer) -> None:
    """Add the ``weak`` command group to the aemia app."""
    add_group(app, "weak", "Weak localisation from image-level labels (class activation maps).\n\n"
              "Example: aemia weak cam --run runs/ph2_arl --out runs/ph2_arl/cam",
              {"cam": (cam_cmd, CAM_HELP)})
