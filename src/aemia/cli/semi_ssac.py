"""``aemia semi ssac``: SSAC (Xie, Zhang, Xia, MedIA 2019), an adversarial-autoencoder semi-supervised classifier.

Phase 1 trains an adversarial autoencoder on every training image (labelled and unlabelled); phase 2 trains a
classifier fed with the autoencoder's encoder features through 1×1 transition layers, and the same classifier
alone as the baseline. See :mod:`aemia.semisup.ssac`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from aemia.cli import validate as v

from aemia.cli.common import console


def register(semi_app: typer.Typer) -> None:
    semi_app.command("ssac")(ssac)


def ssac(
    dataset: str = typer.Option(..., "--dataset", "--data", "-d",
                                help="Classification data set: pneumoniamnist, busi, breastmnist, ph2."),
    run: Path = typer.Option(..., "--run", "--out", "-r", "-o", help="Run folder to create (must not exist or be empty).", callback=v.out_folder),
    label_fraction: float = typer.Option(0.05, help="Fraction of the training split whose labels are used.", callback=v.open_fraction),
    epochs_aae: int = typer.Option(20, help="Phase 1: adversarial-autoencoder epochs over all training images.", callback=v.at_least_one),
    epochs_cls: int = typer.Option(40, help="Phase 2: classifier epochs over the labelled images.", callback=v.at_least_one),
    size: Optional[int] = typer.Option(None, help="Working size in pixels (default 28 for *MNIST, 64 otherwise).", callback=v.number(8)),
    latent_dim: int = typer.Option(16, help="Size of the autoencoder's latent code z.", callback=v.at_least_one),
    encoder: str = typer.Option("frozen", help="R's encoder in phase 2: frozen, or finetune (at 0.1x the lr).", callback=v.choice(("frozen", "finetune"))),
    max_unlabelled: Optional[int] = typer.Option(None, help="Use at most this many unlabelled images in phase 1.", callback=v.at_least_one),
    seed: int = typer.Option(0, help="Seed for the labelled subset, initialisation and batches.", callback=v.non_negative),
    amp: str = typer.Option("none", "--amp", help="Mixed precision for training: none, auto, bf16 or fp16.", callback=v.amp),
    resume: bool = typer.Option(False, "--resume", help="Continue a killed run (its config.yaml is used; the "
                                "other options are ignored)."),
) -> None:
    """Train SSAC and the classifier alone; print both test AUCs (95% CIs) and write metrics.json, figures, checkpoints.

    Example: aemia semi ssac --dataset pneumoniamnist --label-fraction 0.05 --run runs/ssac
    """
    from aemia.errors import InputError
    from aemia.semisup.ssac import SSACConfig, run_ssac

    try:
        cfg = SSACConfig(dataset=dataset, label_fraction=label_fraction, epochs_aae=epochs_aae, epochs_cls=epochs_cls,
                         size=size, latent_dim=latent_dim, encoder=encoder, max_unlabelled=max_unlabelled, seed=seed,
                         amp=amp)
    except ValueError as exc:
        raise InputError(None, str(exc)) from None
    metrics = run_ssac(None if resume else cfg, run, resume=resume)
    console.print(f"[bold green]done[/]: {metrics['headline']}")
    console.print(f"metrics: {run / 'metrics.json'}  figure: {run / 'figures' / 'ssac.png'}")
