"""``aemia pretrain``: self-supervised pretraining on unlabelled images."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from aemia.cli.common import console, parse_ints

pretrain_app = typer.Typer(help="Self-supervised pretraining on unlabelled images (Models Genesis).",
                           no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(pretrain_app, name="pretrain")


@pretrain_app.command("genesis")
def genesis(
    data: str = typer.Option(..., "--data", help="A bundled data set (its training images) or a folder of images."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder to write."),
    dims: int = typer.Option(2, "--dims", help="2 (images/slices) or 3 (volumes → cubes)."),
    model: str = typer.Option("unetpp", help="Encoder-decoder: unetpp or unet (the fine-tuning architecture)."),
    preset: str = typer.Option("cpu", help="Width preset: cpu, tiny, paper."),
    features: Optional[str] = typer.Option(None, help="Level widths, e.g. 16,16,32,64,128."),
    size: Optional[str] = typer.Option(None, help="2D image size (default 128,128) or 3D cube (default 32,32,16)."),
    patches_per_image: int = typer.Option(0, help="2D: random crops per image (0 = whole resized images)."),
    epochs: int = typer.Option(100, help="Epochs (paper: up to 10,000 with early stopping)."),
    batch_size: int = typer.Option(6, help="Batch size (paper: 6)."),
    optimizer: str = typer.Option("sgd", help="sgd (paper: lr 1.0, momentum 0.9, halved every 40 epochs) or adam."),
    lr: Optional[float] = typer.Option(None, help="Learning rate (default: 1.0 for sgd, 1e-3 for adam)."),
    amp: str = typer.Option("auto", help="Mixed precision: auto, bf16, none."),
    seed: int = typer.Option(0, help="Seed."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    resume: bool = typer.Option(False, "--resume", help="Continue a killed pretraining run."),
) -> None:
    """Models Genesis self-restoration: learn to undo flips, local shuffling, non-linear intensity and painting.

    Fine-tune from the result with `aemia train ... --init OUT` (same --model and --preset).

    Example: aemia pretrain genesis --data kvasir --dims 2 --epochs 20 --optimizer adam --out runs/genesis_kvasir
    """
    from aemia.pretrain.restore import PretrainConfig, pretrain
    from aemia.train.trainer import TrainConfig

    sizes = parse_ints(size, "--size") or ([128, 128] if dims == 2 else [32, 32, 16])
    if optimizer == "sgd":
        tcfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr or 1.0, optimizer="sgd", momentum=0.9,
                           nesterov=False, schedule="step", step_epochs=40, step_gamma=0.5, deep_supervision=False,
                           amp=amp, device=device, seed=seed)
    else:
        tcfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr or 1e-3, optimizer=optimizer, schedule="cosine",
                           deep_supervision=False, amp=amp, device=device, seed=seed)
    cfg = PretrainConfig(data=data, dims=dims, model=model, preset=preset, features=parse_ints(features, "--features"),
                         size=sizes, patches_per_image=patches_per_image, seed=seed, train=tcfg)
    summary = pretrain(cfg, out, resume=resume)
    console.print(f"[green]pretrained[/]: validation MSE {summary['first_val_mse']:.4f} → {summary['best_val_mse']:.4f} "
                  f"(best epoch {summary['best_epoch'] + 1}) on {summary['patches']['train']} patches")
    console.print(f"figure: {summary['figure']}")
    console.print(f"fine-tune with: aemia train --init {out} --model {model} --preset {preset} ...")
