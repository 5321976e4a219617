"""``aemia semi mbdcnn``: MB-DCNN (Xie et al., TMI 2020) on a data set with lesion masks and diagnoses (PH2)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from aemia.cli import validate as v

MBDCNN_HELP = (
    "Mutual bootstrapping of segmentation and classification (MB-DCNN, Xie, Zhang, Xia, Shen, IEEE TMI 2020; "
    "METHODS.md §7.2), CPU-sized: a width-16 U-Net Coarse-SN (Dice + 0.05 rank loss), a mask-guided ResNet "
    "classifier on RGB + coarse mask (Mask-CN), and an Enhanced-SN that takes Mask-CN's class activation map at "
    "its bottleneck, initialised from Coarse-SN.\n\n"
    "Trains on the training part and evaluates on the held-out part: without --fold, the data set's train + val "
    "splits vs its test split; with --fold K, a seeded stratified --folds-fold split of all cases (by class), fold K "
    "held out. Reports the per-image Jaccard (mean, bootstrap 95% CI) of the coarse (= plain U-Net) and enhanced "
    "segmentations, and the melanoma-vs-rest and macro AUC of the plain classifier (image only) vs Mask-CN, "
    "with and without 9-crop averaging (crops of 0.875 of the side at the 4 corners, 4 edge midpoints and "
    "centre, resized back).\n\n"
    "Writes into --run: metrics.json, per_case.csv, figures/mbdcnn.png (image, coarse mask, CAM, enhanced mask, "
    "truth), splits.json, config.yaml and one folder per stage with checkpoints/best.safetensors + .json.\n\n"
    "Example: aemia semi mbdcnn --dataset ph2 --run runs/mbdcnn --size 128 --fold 0 --folds 5"
)


def register(semi_app: typer.Typer) -> None:
    """Add ``mbdcnn`` to the ``semi`` command group."""
    semi_app.command("mbdcnn", help=MBDCNN_HELP)(mbdcnn_cmd)


def mbdcnn_cmd(
    dataset: str = typer.Option("ph2", "--dataset", "--data", "-d", help="Data set with masks and image classes (ph2)."),
    run: Path = typer.Option(..., "--run", "--out", "-r", "-o", help="Run folder to create (or resume).", callback=v.out_folder),
    size: Optional[int] = typer.Option(None, "--size", help="Images resized to SIZE x SIZE (cpu preset: 128).", callback=v.number(16)),
    epochs_seg: Optional[int] = typer.Option(None, "--epochs-seg", help="Coarse-SN epochs (cpu preset: 25).", callback=v.at_least_one),
    epochs_cls: Optional[int] = typer.Option(None, "--epochs-cls", help="Epochs of each classifier (cpu preset: 20).", callback=v.at_least_one),
    epochs_enh: Optional[int] = typer.Option(None, "--epochs-enh", help="Enhanced-SN epochs (cpu preset: 10).", callback=v.at_least_one),
    fold: Optional[int] = typer.Option(None, "--fold", help="Hold out fold K (0-based) of a stratified split.", callback=v.non_negative),
    folds: int = typer.Option(5, "--folds", help="Number of folds for --fold.", callback=v.number(2)),
    seed: int = typer.Option(0, "--seed", help="Seed for the folds, initialisation and augmentation.", callback=v.non_negative),
    preset: str = typer.Option("cpu", "--preset", help="cpu (from scratch, small) or paper (224 px, paper rates "
                               "and epochs; GPU-sized).", callback=v.choice(("cpu", "paper"))),
    mask_cn_init: str = typer.Option("scratch", "--mask-cn-init", help="scratch (same budget as the plain "
                                     "classifier) or plain (expand the trained plain classifier to 4 channels).", callback=v.choice(("scratch", "plain"))),
    control: bool = typer.Option(False, "--control", help="Also fine-tune Coarse-SN without the CAM for the "
                                 "Enhanced-SN budget (separates the CAM's effect from more training)."),
    init: Optional[str] = typer.Option(None, "--init", help="Start Coarse-SN from pretrained weights: a run folder, "
                                       "a checkpoint or a shipped model (universal).", callback=v.checkpoint),
    amp: str = typer.Option("auto", "--amp", help="Mixed precision for training: auto, bf16, fp16 or none.", callback=v.amp),
    resume: bool = typer.Option(False, "--resume", help="Reuse finished stages and continue an interrupted one."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    from aemia.cli.common import console
    from aemia.errors import InputError
    from aemia.semisup.bootstrapping import MBDCNNConfig, run_mbdcnn
    from aemia.semisup.mbdcnn_data import case_table, stratified_folds

    if preset not in ("cpu", "paper"):
        raise InputError(None, f"--preset must be cpu or paper, got {preset!r}")
    overrides = {k: v for k, v in dict(size=size, epochs_seg=epochs_seg, epochs_cls=epochs_cls,
                                       epochs_enh=epochs_enh).items() if v is not None}
    try:
        factory = MBDCNNConfig.paper if preset == "paper" else MBDCNNConfig.cpu
        cfg = factory(dataset=dataset, seed=seed, mask_cn_init=mask_cn_init, continued_control=control, amp=amp, init=init,
                      progress=not quiet, **overrides)
    except ValueError as exc:
        raise InputError(None, str(exc)) from None
    ids, targets, _, splits = case_table(dataset)  # checks masks and classes before anything is trained
    if fold is None:
        test_ids = splits.get("test", [])
        train_ids = [c for s, members in splits.items() if s != "test" for c in members]
        if not test_ids:
            raise InputError(None, f"'{dataset}' has no test split: choose a held-out fold with --fold K")
        split = f"{dataset} train+val ({len(train_ids)}) vs test ({len(test_ids)})"
    else:
        if folds < 2 or not 0 <= fold < folds:
            raise InputError(None, f"--fold must be in 0..{folds - 1} with --folds >= 2")
        parts = stratified_folds(ids, targets, folds, seed)
        test_ids = parts[fold]
        train_ids = [c for k, p in enumerate(parts) if k != fold for c in p]
        split = f"{dataset} fold {fold}/{folds} (train {len(train_ids)}, test {len(test_ids)})"
    console.print(f"MB-DCNN on {split}, {cfg.size} px, epochs seg/cls/enh {cfg.epochs_seg}/{cfg.epochs_cls}/"
                  f"{cfg.epochs_enh}")
    metrics = run_mbdcnn(cfg, run, train_ids, test_ids, resume=resume)
    console.print(f"[bold green]done[/]: {metrics['headline']}")
    console.print(f"metrics: {Path(run) / 'metrics.json'}  figure: {Path(run) / 'figures' / 'mbdcnn.png'}")
