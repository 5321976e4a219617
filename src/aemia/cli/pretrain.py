"""``aemia pretrain``: self-supervised pretraining on unlabelled images."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Optional

import typer

from aemia.cli import validate as v

from aemia.cli.common import console, parse_ints

pretrain_app = typer.Typer(help="Self-supervised pretraining on unlabelled images (Models Genesis, TransVW, DiRA, CAiD).",
                           no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(pretrain_app, name="pretrain")


def _common(method: str, data: str, out: Path, dims: int, model: str, preset: str, features: Optional[str],
            size: Optional[str], patches_per_image: int, epochs: int, batch_size: int, optimizer: str,
            lr: Optional[float], amp: str, seed: int, device: str, resume: bool, words: Optional[dict] = None) -> None:
    from aemia.pretrain.restore import PretrainConfig, pretrain
    from aemia.train.trainer import TrainConfig

    if not resume:  # a resumed run reads the data its config.yaml names
        from aemia.data.catalog import list_datasets
        from aemia.data.preflight import pretraining_images, require

        require(pretraining_images(data, dims, list_datasets()), data)  # every problem listed, before any work
    sizes = parse_ints(size, "--size") or ([128, 128] if dims == 2 else [32, 32, 16])
    if optimizer == "adam" and method == "transvw":
        tcfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr or 1e-3, optimizer="adam", schedule="step",
                           step_epochs=40, step_gamma=0.5, deep_supervision=False, amp=amp, device=device, seed=seed)
    elif optimizer == "sgd":
        tcfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr or 1.0, optimizer="sgd", momentum=0.9,
                           nesterov=False, schedule="step", step_epochs=40, step_gamma=0.5, deep_supervision=False,
                           amp=amp, device=device, seed=seed)
    else:
        tcfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr or 1e-3, optimizer=optimizer, schedule="cosine",
                           deep_supervision=False, amp=amp, device=device, seed=seed)
    cfg = PretrainConfig(data=data, dims=dims, method=method, model=model, preset=preset, features=parse_ints(features, "--features"),
                         size=sizes, patches_per_image=patches_per_image, seed=seed, words=words, train=tcfg)
    summary = pretrain(cfg, out, resume=resume)
    if "visual_words" in summary:
        console.print(f"visual words: {summary['visual_words']} classes, {summary['instances']} instances; "
                      f"self-classification accuracy {summary.get('val_class_acc', float('nan')):.2f} "
                      f"(chance {summary['chance_class_acc']:.2f})")
    console.print(f"[green]pretrained[/]: validation MSE {summary['first_val_mse']:.4f} → {summary['best_val_mse']:.4f} "
                  f"(best epoch {summary['best_epoch'] + 1}) on {summary['patches']['train']} patches")
    console.print(f"figure: {summary['figure']}")
    console.print(f"fine-tune with: aemia train --init {out} --model {model} --preset {preset} ...")


_OPTS = dict(
    data=typer.Option(..., "--data", "--dataset", "-d", help="A bundled data set (its training images) or a folder of images."),
    out=typer.Option(..., "--out", "--run", "-o", "-r", help="Run folder to write.", callback=v.out_folder),
    dims=typer.Option(2, "--dims", help="2 (images/slices) or 3 (volumes → cubes).", callback=v.choice((2, 3))),
    model=typer.Option("unetpp", help="Encoder-decoder: unetpp or unet (the fine-tuning architecture).", callback=v.choice(v.models("segmentation"))),
    preset=typer.Option("cpu", help="Width preset: cpu, tiny, paper.", callback=v.choice(v.presets)),
    features=typer.Option(None, help="Level widths, e.g. 16,16,32,64,128.", callback=v.int_list()),
    size=typer.Option(None, help="2D image size (default 128,128) or 3D cube (default 32,32,16).", callback=v.int_list((2, 3), lo=8)),
    patches_per_image=typer.Option(0, help="2D: random crops per image (0 = whole resized images).", callback=v.non_negative),
    batch_size=typer.Option(6, help="Batch size (Genesis: 6; TransVW: 12).", callback=v.at_least_one),
    lr=typer.Option(None, help="Learning rate (default: 1.0 for sgd, 1e-3 for adam).", callback=v.positive),
    amp=typer.Option("auto", help="Mixed precision: auto, bf16, none.", callback=v.amp),
    seed=typer.Option(0, help="Seed.", callback=v.non_negative),
    device=typer.Option("auto", help="auto, cpu or cuda.", callback=v.device),
    resume=typer.Option(False, "--resume", help="Continue a killed pretraining run."),
)


@pretrain_app.command("genesis")
def genesis(
    data: str = _OPTS["data"], out: Path = _OPTS["out"], dims: int = _OPTS["dims"], model: str = _OPTS["model"],
    preset: str = _OPTS["preset"], features: Optional[str] = _OPTS["features"], size: Optional[str] = _OPTS["size"],
    patches_per_image: int = _OPTS["patches_per_image"],
    epochs: int = typer.Option(100, help="Epochs (paper: up to 10,000 with early stopping).", callback=v.at_least_one),
    batch_size: int = _OPTS["batch_size"],
    optimizer: str = typer.Option("sgd", help="sgd (paper: lr 1.0, momentum 0.9, halved every 40 epochs) or adam.", callback=v.choice(v.optimizers)),
    lr: Optional[float] = _OPTS["lr"], amp: str = _OPTS["amp"], seed: int = _OPTS["seed"], device: str = _OPTS["device"],
    resume: bool = _OPTS["resume"],
) -> None:
    """Models Genesis self-restoration: learn to undo flips, local shuffling, non-linear intensity and painting.

    Fine-tune from the result with `aemia train ... --init OUT` (same --model and --preset).

    Example: aemia pretrain genesis --data kvasir --dims 2 --epochs 20 --optimizer adam --out runs/genesis_kvasir
    """
    _common("genesis", data, out, dims, model, preset, features, size, patches_per_image, epochs, batch_size,
            optimizer, lr, amp, seed, device, resume)


@pretrain_app.command("transvw")
def transvw(
    data: str = _OPTS["data"], out: Path = _OPTS["out"], dims: int = _OPTS["dims"], model: str = _OPTS["model"],
    preset: str = _OPTS["preset"], features: Optional[str] = _OPTS["features"], size: Optional[str] = _OPTS["size"],
    patches_per_image: int = _OPTS["patches_per_image"],
    epochs: int = typer.Option(100, help="Epochs (paper: early stopping at patience 50).", callback=v.at_least_one),
    batch_size: int = typer.Option(12, help="Batch size (TransVW config: 12).", callback=v.at_least_one),
    optimizer: str = typer.Option("adam", help="adam (paper: lr 1e-3, halved every 40 epochs) or sgd.", callback=v.choice(v.optimizers)),
    lr: Optional[float] = _OPTS["lr"], amp: str = _OPTS["amp"], seed: int = _OPTS["seed"], device: str = _OPTS["device"],
    resume: bool = _OPTS["resume"],
    elastic: bool = typer.Option(False, "--elastic/--no-elastic",
                                 help="Elastically deform patches first (the paper's option; α 991 / σ 8, 2D α 180)."),
) -> None:
    """TransVW / Semantic Genesis: self-discover visual words, then learn to classify and restore them.

    Fine-tune from the result with `aemia train ... --init OUT` (same --model and --preset).

    Example: aemia pretrain transvw --data kvasir --dims 2 --epochs 20 --out runs/transvw_kvasir
    """
    _common("transvw", data, out, dims, model, preset, features, size, patches_per_image, epochs, batch_size,
            optimizer, lr, amp, seed, device, resume, words={"elastic": True} if elastic else None)


def _contrastive(method: str, data: str, out: Path, model: str, preset: str, features: Optional[str], size: int,
                 epochs: int, batch_size: int, optimizer: str, lr: Optional[float], queue: int, momentum: float,
                 temperature: float, key_bn_group: int, amp: str, seed: int, device: str, resume: bool) -> None:
    from aemia.pretrain.moco import ContrastiveConfig, pretrain_contrastive
    from aemia.train.trainer import TrainConfig

    if not resume:
        from aemia.data.catalog import list_datasets
        from aemia.data.preflight import pretraining_images, require

        require(pretraining_images(data, 2, list_datasets()), data)
    cfg = ContrastiveConfig.cpu(method, data, size=size, epochs=epochs, model=model, preset=preset,
                                features=parse_ints(features, "--features"), queue=queue, momentum=momentum,
                                temperature=temperature, key_bn_group=key_bn_group, seed=seed)
    if optimizer == "sgd":  # the paper's: lr 0.03, momentum 0.9, weight decay 1e-4, cosine
        cfg.train = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr or 0.03, optimizer="sgd", momentum=0.9,
                                nesterov=False, weight_decay=1e-4, schedule="cosine", warmup=0.0, ema=0.0,
                                deep_supervision=False)
    else:
        cfg.train.batch_size, cfg.train.optimizer, cfg.train.lr = batch_size, optimizer, lr or cfg.train.lr
    cfg.train.amp, cfg.train.device, cfg.train.seed = amp, device, seed
    summary = pretrain_contrastive(cfg, out, resume=resume)
    console.print(f"[green]pretrained {method}[/]: instance discrimination {summary['final_train_nce']:.3f} NCE, "
                  f"top-1 {summary['final_instance_accuracy']:.2f} (chance {summary['chance_instance_accuracy']:.3f}); "
                  f"validation restoration MSE {summary['first_val_mse']:.4f} → {summary['best_val_mse']:.4f} "
                  f"on {summary['images']['train']} images")
    console.print(f"fine-tune with: aemia train --init {out} --model {model} --preset {preset} ...")


_MOCO = dict(
    size=typer.Option(128, help="Image size (whole images resized; a multiple of 16).", callback=v.multiple_of(16, 32)),
    epochs=typer.Option(50, help="Epochs (paper: 400 DiRA stage 2, 800 CAiD).", callback=v.at_least_one),
    batch_size=typer.Option(16, help="Batch size (CPU preset 16; paper 256).", callback=v.at_least_one),
    optimizer=typer.Option("adam", help="adam (CPU preset: lr 1e-3, cosine) or sgd (paper: lr 0.03, momentum 0.9, "
                                        "weight decay 1e-4, cosine).", callback=v.choice(v.optimizers)),
    queue=typer.Option(256, help="Negative-key queue length (CPU preset 256; paper 65,536).", callback=v.at_least_one),
    momentum=typer.Option(0.99, help="Key-encoder momentum m in [0, 1) (CPU preset 0.99; paper 0.999).",
                          callback=v.number(0, 1, hi_open=True)),
    temperature=typer.Option(0.2, help="InfoNCE temperature (paper 0.2).", callback=v.positive),
    key_bn_group=typer.Option(8, help="Key-encoder batch norm (the shuffle-BN replacement): batch statistics over "
                                      "shuffled groups of G keys (CPU preset 8; 1, and 0 = the query's running "
                                      "statistics, collapse to chance).",
                              callback=v.non_negative),
)


_CONTRASTIVE_DOCS = {
    "dira": """DiRA (2D): MoCo-v2 instance discrimination + restoration by the query's decoder + a patch-discriminator
    adversary; loss 1·NCE + 10·MSE + 0.001·adversarial (the adversary joins after half the epochs).

    Fine-tune from the result with `aemia train ... --init OUT` (same --model and --preset).

    Example: aemia pretrain dira --data kvasir --epochs 12 --size 64 --out runs/dira_kvasir
    """,
    "caid": """CAiD (2D): context-aware instance discrimination, MoCo-v2 + context restoration by the query's decoder;
    loss 1·NCE + 10·MSE.

    Fine-tune from the result with `aemia train ... --init OUT` (same --model and --preset).

    Example: aemia pretrain caid --data kvasir --epochs 12 --size 64 --out runs/caid_kvasir
    """,
}


def _contrastive_command(method: str) -> None:
    """Register ``aemia pretrain METHOD`` (DiRA and CAiD share every option; only the method differs)."""

    def command(
        data: str = _OPTS["data"], out: Path = _OPTS["out"], model: str = _OPTS["model"], preset: str = _OPTS["preset"],
        features: Optional[str] = _OPTS["features"], size: int = _MOCO["size"], epochs: int = _MOCO["epochs"],
        batch_size: int = _MOCO["batch_size"], optimizer: str = _MOCO["optimizer"], lr: Optional[float] = _OPTS["lr"],
        queue: int = _MOCO["queue"], momentum: float = _MOCO["momentum"], temperature: float = _MOCO["temperature"],
        key_bn_group: int = _MOCO["key_bn_group"], amp: str = _OPTS["amp"], seed: int = _OPTS["seed"],
        device: str = _OPTS["device"], resume: bool = _OPTS["resume"],
    ) -> None:
        _contrastive(method, data, out, model, preset, features, size, epochs, batch_size, optimizer, lr, queue,
                     momentum, temperature, key_bn_group, amp, seed, device, resume)

    command.__name__ = command.__qualname__ = method
    command.__doc__ = inspect.cleandoc(_CONTRASTIVE_DOCS[method])
    pretrain_app.command(method)(command)


for _method in _CONTRASTIVE_DOCS:
    _contrastive_command(_method)
