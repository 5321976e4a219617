"""``aemia train``: train a segmentation or classification model on a bundled data set."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from aemia.cli import validate as v
from aemia.cli.common import console, parse_ints, parse_labels

RECIPE = "(default: the TrainConfig recipe)"
DEFAULT_MIN_STEPS_2D = 3000  # measured: Kvasir 10% labels, 600 -> 3000 steps (training_stability.json)
DEFAULT_MIN_STEPS_LIVER_TUMOR = 1500  # measured: 800 steps found 0/32 synthetic tumours, 1500 steps 12/32 (liver_tumor)


def register(app: typer.Typer) -> None:
    app.command("train")(train)


def train(
    ctx: typer.Context,
    dataset: str = typer.Option(..., "--dataset", "--data", "-d", help="Bundled data set (see `aemia data list`)."),
    run: Path = typer.Option(..., "--run", "--out", "-r", "-o", help="Run folder to create (or resume).",
                           callback=v.out_folder),
    model: str = typer.Option("unetpp", callback=v.choice(v.models()), help="Network: unetpp, unet (segmentation); resnet or arl-resnet (classification)."),
    preset: str = typer.Option("cpu", callback=v.choice(v.presets), help="Width preset: cpu (16,16,32,64,128), tiny, paper (32..512)."),
    features: Optional[str] = typer.Option(None, callback=v.int_list(), help="Level widths, e.g. 16,32,64,128 (overrides --preset)."),
    label_fraction: float = typer.Option(1.0, callback=v.open_fraction, help="Fraction of the training split whose labels are used."),
    task: str = typer.Option("auto", callback=v.choice(v.run_tasks), help="auto (the data set's task), segmentation, classification (e.g. PH2 diagnosis), "
                                          "or liver-tumor (3D CT: liver + tumor; with --synthetic-tumors)."),
    synthetic_tumors: bool = typer.Option(False, "--synthetic-tumors",
                                          help="liver-tumor: synthetic tumors in the healthy livers instead of tumor "
                                               "labels (Hu et al. CVPR 2023). Example: aemia train --dataset "
                                               "totalseg_ct --task liver-tumor --synthetic-tumors --run runs/lt"),
    spacing: Optional[str] = typer.Option(None, callback=v.float_list((1, 2, 3)), help="3D: working voxel size in mm, e.g. 2,2,2 (default: the "
                                                     "training cases' median; liver-tumor: 2,2,2)."),
    epochs: Optional[int] = typer.Option(None, callback=v.at_least_one, help=f"Epochs {RECIPE}."),
    min_steps: Optional[int] = typer.Option(None, callback=v.non_negative, help="At least this many optimiser steps "
                                            "(epochs raised to fit). Default when --epochs is not given: 3000 for 2D data "
                                            "(small labelled sets underfit in 50 epochs), 1500 for --task liver-tumor, "
                                            "else 0."),
    batch_size: Optional[int] = typer.Option(None, callback=v.at_least_one, help=f"Batch size {RECIPE}."),
    lr: Optional[float] = typer.Option(None, callback=v.positive, help=f"Peak learning rate {RECIPE}."),
    optimizer: Optional[str] = typer.Option(None, callback=v.choice(v.optimizers), help=f"adam, adamw or sgd {RECIPE}."),
    schedule: Optional[str] = typer.Option(None, callback=v.choice(v.schedules), help=f"cosine, poly or constant {RECIPE}."),
    loss: Optional[str] = typer.Option(None, callback=v.choice(v.losses), help=f"dice_ce, dice_ce_batch (Dice pooled over the batch, nnU-Net's batch_dice), or bce_dice (the UNet++ paper's 0.5*BCE + Dice) {RECIPE}."),
    deep_supervision: Optional[bool] = typer.Option(None, "--deep-supervision/--no-deep-supervision", help="UNet++: loss summed over all heads (equal weights) " + RECIPE + "."),
    size: Optional[int] = typer.Option(None, callback=v.number(16), help="2D: resize images to SIZE x SIZE for training."),
    patch: Optional[str] = typer.Option(None, callback=v.int_list((3,), lo=8), help="3D: patch size, e.g. 64,64,64."),
    labels: Optional[str] = typer.Option(None, help="3D: keep only these labels, e.g. 5:liver,1:spleen."),
    early_stopping: Optional[int] = typer.Option(None, callback=v.non_negative, help="Stop after N epochs without validation improvement (0 = off)."),
    amp: Optional[str] = typer.Option(None, callback=v.amp, help="Mixed precision: auto (bf16 where native), bf16, fp16 or none."),
    init: Optional[Path] = typer.Option(None, callback=v.checkpoint, help="Start from pretrained weights: a run folder, a checkpoint, or a shipped model (universal, universal2d-no-kvasir; --model unet --preset cpu)."),
    semi: Optional[str] = typer.Option(
        None, help="2D semi-supervised training on the unlabelled rest of the training split: mean-teacher or "
                   "pseudo-label. Example: aemia train -d pneumoniamnist --model resnet --label-fraction 0.05 "
                   "--semi mean-teacher --run runs/pn_mt"),
    semi_weight: Optional[float] = typer.Option(
        None, callback=v.non_negative, help="Max weight of the unlabelled loss after the ramp-up (default: mean-teacher 10 classification / 0.1 segmentation, pseudo-label 1)."),
    semi_threshold: Optional[float] = typer.Option(
        None, callback=v.open_fraction, help="Pseudo-label confidence threshold (default: 0.95 classification, 0.9 per pixel segmentation)."),
    augment: str = typer.Option("strong", callback=v.choice(("strong", "light", "none")),
                                help="Training augmentation: strong (flips, 90° turns, rotation, scaling, brightness/"
                                     "contrast, gamma), light (flips, 90° turns, brightness/contrast) or none."),
    seed: Optional[int] = typer.Option(None, callback=v.non_negative, help="Seed for splits, subsets, augmentation and initialisation."),
    subset_seed: Optional[int] = typer.Option(None, callback=v.non_negative, help="Seed that picks the labelled subset "
                                              "(default: --seed). Fix it to vary only the training with --seed."),
    device: Optional[str] = typer.Option(None, callback=v.device, help="auto, cpu or cuda."),
    resume: bool = typer.Option(False, "--resume", help="Continue a killed run from its last checkpoint."),
) -> None:
    """Train a model and evaluate it on the test split (metrics with 95% CIs, report.html).

    Example: aemia train --dataset kvasir --model unetpp --label-fraction 0.1 --epochs 20 --size 128 --run runs/kv10
    """
    import aemia.semisup  # noqa: F401 - registers the --semi implementations (recipes do not import semisup)
    from aemia.recipes.run import train_run
    from aemia.runs.config import RunConfig
    from aemia.train.trainer import TrainConfig

    try:
        tcfg = TrainConfig(**v.given(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                                     schedule=schedule, loss=loss, deep_supervision=deep_supervision,
                                     early_stopping=early_stopping, seed=seed, amp=amp, device=device))
        cfg = RunConfig(dataset=dataset, model=model, preset=preset, features=parse_ints(features, "--features"),
                        label_fraction=label_fraction, subset_seed=subset_seed, size=size, patch=parse_ints(patch, "--patch"),
                        labels=parse_labels(labels), task=task, synthetic_tumors=synthetic_tumors,
                        spacing=[float(v) for v in spacing.split(",")] if spacing else None,
                        init=str(init) if init else None, semi=semi, augment=augment,
                        semi_weight=semi_weight, semi_threshold=semi_threshold, train=tcfg)
    except ValueError as exc:  # a bad option value: one-line error, exit 2
        from aemia.errors import InputError

        raise InputError(None, str(exc)) from None
    from aemia.data.catalog import list_datasets
    from aemia.data.preflight import require, training_data

    require(training_data(dataset, list_datasets()), dataset)  # every problem listed, before any work
    if min_steps is None and epochs is None and not resume:
        from aemia.data.catalog import get_dataset

        min_steps = (DEFAULT_MIN_STEPS_2D if get_dataset(dataset).dims == 2
                     else DEFAULT_MIN_STEPS_LIVER_TUMOR if task == "liver-tumor" else 0)
    if min_steps:
        cfg.train.min_steps = int(min_steps)
    if resume:
        from aemia.runs.resume_check import check_resume

        given = [n for n in ctx.params if getattr(ctx.get_parameter_source(n), "name", "") == "COMMANDLINE"]
        check_resume(run, cfg, given)
    metrics = train_run(cfg, run, resume=resume)
    if metrics:
        console.print(f"[bold green]done[/]: {metrics.get('headline', '')}")
        console.print(f"report: {run / 'report.html'}")
