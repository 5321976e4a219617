"""``aemia active``: the human-in-the-loop active-learning cycle (init → query → import → train → status)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from aemia.cli import validate as v

from aemia.cli.common import console, parse_ints


def register(app: typer.Typer) -> None:
    """Add the ``active`` command group to the main app."""
    active_app = typer.Typer(
        name="active",
        help=(
            "Active learning with a person in the loop: choose the images most worth annotating, import the "
            "labels, fine-tune the model continually (ACFT), repeat. 2D pictures, or 3D volumes (NIfTI/DICOM) for "
            "segmentation.\n\n"
            "Example: aemia active init --images my_pictures/ --project polyps"
        ),
        no_args_is_help=True,
        rich_markup_mode="rich",
    )
    active_app.command("init")(init_cmd)
    active_app.command("query")(query_cmd)
    active_app.command("import")(import_cmd)
    active_app.command("train")(train_cmd)
    active_app.command("status")(status_cmd)
    active_app.command("simulate")(simulate_cmd)
    app.add_typer(active_app, name="active")


def init_cmd(
    images: Path = typer.Option(..., "--images", "-i", help="Folder of 2D pictures (.png .jpg ...) or of 3D volumes (.nii.gz, DICOM series folders, .nrrd): the unlabelled pool.", callback=v.existing),
    project: Path = typer.Option(..., "--project", "-p", help="Project folder to create (must not exist yet).", callback=v.out_folder),
    task: str = typer.Option("segmentation", help="segmentation or classification.", callback=v.choice(("segmentation", "classification"))),
    size: int = typer.Option(128, help="2D: images are resized to SIZE x SIZE for the network.", callback=v.number(16)),
    classes: Optional[str] = typer.Option(None, help="Class names, comma-separated (default background,foreground or 0,1)."),
    model: Optional[str] = typer.Option(None, help="Network: unet or unetpp (segmentation), resnet (classification).", callback=v.choice(v.models())),
    features: Optional[str] = typer.Option(None, help="Network widths per level (default 16,32,64,128; 3D 8,16,32,64).", callback=v.int_list()),
    spacing: Optional[str] = typer.Option(None, help="3D: working voxel size in mm, e.g. 2,2,2 (default: the pool's median, at least 2 mm per axis).", callback=v.float_list((3,))),
    patch: Optional[str] = typer.Option(None, help="3D: training patch and sliding-window size, e.g. 48,48,48 (the default).", callback=v.int_list((3,), lo=8)),
    modality: str = typer.Option("auto", help="3D: ct (abdominal HU window), mr (percentile window) or auto (CT when the darkest voxel is <= -500).", callback=v.choice(("auto", "ct", "mr"))),
    dropout: float = typer.Option(0.0, help="Dropout in the network (> 0 is needed by --strategy bald).", callback=v.number(0, 1, hi_open=True)),
    val_fraction: float = typer.Option(0.2, help="Fraction of the first round's labels held out for validation.", callback=v.number(0, 1, hi_open=True)),
    pretrained: Optional[Path] = typer.Option(None, "--init", "--pretrained", help="Start the first model (M0) from these weights: a run folder, a checkpoint or a shipped model (universal: --model unet --features 16,16,32,64,128).", callback=v.checkpoint),
    seed: int = typer.Option(0, help="Seed of the initialisation, cold-start draws and the validation split.", callback=v.non_negative),
) -> None:
    """Create a project: register and hash every picture (or 3D volume) of --images in a new annotation ledger.

    A folder of 3D volumes makes a 3D segmentation project: a 3D U-Net trained on random patches at a working
    voxel size, pool volumes scored by sliding window.

    Example: aemia active init --images my_pictures/ --project polyps --task segmentation --size 128

    Example (3D): aemia active init --images cts/ --project livers --classes background,liver --spacing 3,3,3
    """
    from aemia.active.project import init_project

    proj = init_project(project, images, task=task, size=size,
                        classes=[c.strip() for c in classes.split(",") if c.strip()] if classes else None,
                        model=model, features=parse_ints(features, "--features"), dropout=dropout, seed=seed,
                        val_fraction=val_fraction, pretrained=pretrained,
                        spacing=[float(x) for x in spacing.split(",")] if spacing else None,
                        patch=parse_ints(patch, "--patch"), modality=modality)
    with proj.ledger() as led:
        n = sum(led.status_counts().values())
    cfg = proj.config
    where = (f"3D {cfg.model} {cfg.features}, voxels {'x'.join(f'{s:g}' for s in cfg.spacing or [])} mm, patch "
             f"{'x'.join(map(str, cfg.patch or []))}, {cfg.normaliser}" if cfg.dims == 3
             else f"network {cfg.model} {cfg.features} at {cfg.size}x{cfg.size}")
    console.print(f"project {project}: {n} {'volumes' if cfg.dims == 3 else 'images'} ({cfg.task}, classes "
                  f"{', '.join(cfg.classes)}, {cfg.in_channels} channel(s), {where})")
    console.print(f"next: aemia active query --project {project} --strategy acft --k 20")


def query_cmd(
    project: Path = typer.Option(..., "--project", "-p", help="Project folder (aemia active init).", callback=v.existing),
    strategy: str = typer.Option("acft", help="acft, acft-entropy, acft-diversity, entropy, margin, least-confidence, "
                                              "bald, coreset, fg-random or random.", callback=v.strategy_list),
    k: int = typer.Option(20, "--k", "-k", help="Number of cases to annotate in this round.", callback=v.at_least_one),
    reduce: Optional[str] = typer.Option(None, help="Segmentation: per-image score = mean over all pixels (mean) or "
                                                    "over the predicted foreground (foreground) or over voxels with P(not background) >= 0.1 "
                                                    "(likely-foreground, the 3D default).", callback=v.choice(("mean", "foreground", "likely-foreground"))),
    batch_size: int = typer.Option(8, help="Images scored at once (3D: one volume at a time).", callback=v.at_least_one),
) -> None:
    """Choose the K unlabelled images most worth annotating and put them in a new round folder.

    Scores the pool with the latest model (before any model: random, the cold-start rule), writes
    P/rounds/NN/worklist.csv and copies the images into P/rounds/NN/to_annotate/. 3D projects score each
    volume from sliding-window predictions of the 3D network (every strategy applies).

    Example: aemia active query --project polyps --strategy acft --k 20
    """
    from aemia.active.query import query_round

    params = {"reduce": reduce} if reduce else {}
    res = query_round(project, strategy, k, batch_size=batch_size, **params)
    model = "no model yet" if res.model_round is None else f"model of round {res.model_round:02d}"
    console.print(f"round {res.round:02d}: {len(res.cases)} cases chosen by {res.strategy} ({model})")
    console.print(f"worklist: {res.worklist}")
    console.print(f"images to annotate: {res.folder}")
    if res.pending:
        console.print(f"[yellow]note[/]: {res.pending} cases of earlier rounds still wait for labels")
    console.print(f"next: aemia active import --project {project} --labels <folder of masks or CSV>")


def import_cmd(
    project: Path = typer.Option(..., "--project", "-p", help="Project folder.", callback=v.existing),
    labels: Path = typer.Option(..., "--labels", "-l", help="Segmentation: folder of masks named <case>.png (3D: "
                                                            "<case>.nii.gz, .nrrd or a DICOM folder <case>/, on the "
                                                            "image's grid); classification: CSV case,label.", callback=v.existing),
    annotator: Optional[str] = typer.Option(None, help="Who annotated (default: your login name)."),
    replace: bool = typer.Option(False, "--replace", help="Accept a different label for an already annotated case."),
) -> None:
    """Import labels: every label is checked against its image first, and if any is bad none is accepted.

    Example: aemia active import --project polyps --labels masks_round00/ --annotator alice
    """
    from aemia.active.importing import import_labels

    res = import_labels(project, labels, annotator=annotator, replace=replace)
    _report_cleaned(res.cleaned)
    console.print(f"imported {len(res.annotated)} new labels, {len(res.unchanged)} unchanged (already imported)"
                  + (f", {len(res.reannotated)} re-annotated" if res.reannotated else ""))
    console.print(f"next: aemia active train --project {project}")


def _report_cleaned(names: list[str]) -> None:
    if names:
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        console.print(f"[yellow]cleaned[/]: removed {len(names)} file(s) an interrupted import left in labels/: {shown}")


def train_cmd(
    project: Path = typer.Option(..., "--project", "-p", help="Project folder.", callback=v.existing),
    epochs: int = typer.Option(20, help="Epochs over this round's training cases (raised to reach --min-steps).",
                               callback=v.at_least_one),
    min_steps: Optional[int] = typer.Option(None, help="At least this many optimiser steps per round "
                                                       "[default: 1000 for 2D projects, 0 for 3D].",
                                            callback=v.non_negative),
    mode: str = typer.Option("all-labelled", help="all-labelled (ACFT(LQ): the project model fine-tuned on every "
                                                  "label so far), continual (ACFT(HQ): new + hard old cases only), "
                                                  "new-only, or from-scratch.", callback=v.choice(v.active_modes)),
    hard_threshold: float = typer.Option(0.5, help="Segmentation: an old case with Dice below this is 'hard' and "
                                                   "trained on again (classification: misclassified).", callback=v.fraction),
    lr: float = typer.Option(1e-3, help="Peak learning rate (Adam, cosine).", callback=v.positive),
    batch_size: int = typer.Option(8, help="Batch size.", callback=v.at_least_one),
    overwrite: bool = typer.Option(False, "--overwrite", help="Retrain a round that already has a model."),
    device: str = typer.Option("auto", help="auto, cpu or cuda.", callback=v.device),
    promotion: str = typer.Option("not-worse", help="When the new model replaces the project model: not-worse (its "
                                                    "validation mean is at least the project model's on the same "
                                                    "cases) or ci (unless the project model is above the new "
                                                    "model's 95% CI).", callback=v.choice(v.promotion_rules)),
) -> None:
    """Train one round: fine-tune the project model on the labels (ACFT), then keep it only if not worse.

    The model goes to P/models/round_NN/, a run folder for `aemia predict --run`. It becomes the project's
    model only if it scores at least as well as the current one on the same validation cases (--promotion).

    Example: aemia active train --project polyps --epochs 20
    """
    from aemia.active.continual import train_round
    from aemia.active.status import decision_line

    s = train_round(project, epochs=epochs, mode=mode, hard_threshold=hard_threshold, lr=lr, batch_size=batch_size,
                    overwrite=overwrite, device=device, log=console.print, promotion=promotion, min_steps=min_steps)
    v = s.get("validation") or {}
    score = f"validation {v['metric']} {v['value']:.3f} (n = {v['n']})" if v.get("value") is not None else "no validation score"
    console.print(f"[bold green]round {s['round']:02d} trained[/] on {len(s['trained_on'])} cases: {score}")
    console.print(decision_line(s), markup=False)
    run = Path(project) / "models" / f"round_{s['round']:02d}"
    console.print(f"run folder (aemia predict --run): {run}")


def status_cmd(
    project: Path = typer.Option(..., "--project", "-p", help="Project folder.", callback=v.existing),
) -> None:
    """Show counts per status, the rounds and the learning curve (written to P/learning_curve.png).

    Example: aemia active status --project polyps
    """
    from rich.table import Table

    from aemia.active.status import project_status

    from aemia.active.importing import clean_orphans

    _report_cleaned(clean_orphans(project))
    st = project_status(project)
    c = st["counts"]
    console.print(f"{st['project']} ({st['task']}): {c['unlabelled']} unlabelled, {c['queried']} queried, "
                  f"{c['annotated']} annotated")
    rounds = Table(title="query rounds")
    for col in ("round", "strategy", "queried", "annotated"):
        rounds.add_column(col)
    for r in st["rounds"]:
        rounds.add_row(f"{r['round']:02d}", str(r["strategy"]), str(r["n_queried"]), str(r["n_annotated"]))
    console.print(rounds)
    if st["curve"]:
        curve = Table(title="learning curve (models)")
        for col in ("round", "mode", "labels", "training labels", "trained on", "validation"):
            curve.add_column(col)
        for r in st["curve"]:
            val = "-" if r["value"] is None else f"{r['metric']} {r['value']:.3f} (n={r['n_validation']})"
            if r.get("accuracy") is not None:
                val += f", acc {r['accuracy']:.3f}"
            curve.add_row(f"{r['round']:02d}", r["mode"], str(r["n_labels"]), str(r["n_train_labels"]),
                          str(r["n_trained_on"]), val)
        console.print(curve)
    _print_effort(st["effort"], st["effort_png"])
    for line in st["decisions"]:
        console.print(line, markup=False, soft_wrap=True)
    if st["curve_png"] is not None:
        console.print(f"learning curve: {st['curve_png']}")
    elif st["note"]:
        console.print(f"learning curve: {st['note']}")


def _print_effort(effort: dict, png: Optional[Path]) -> None:
    """Human effort recorded by the review app (aemia serve): per round, per case, quality vs seconds."""
    from rich.table import Table

    if not effort["n_timed"]:
        return
    t = Table(title="human effort per round (aemia serve)")
    for col in ("round", "queried", "labels", "seconds", "changed px/vox", "untimed labels"):
        t.add_column(col)
    for r in effort["rounds"]:
        t.add_row(f"{r['round']:02d}", str(r["queried"]), str(r["labels"]), f"{r['seconds']:.0f}",
                  str(r["changed_pixels"]), str(r["untimed"]))
    console.print(t)
    c = Table(title="human effort per case")
    for col in ("case", "round", "state", "annotator", "seconds", "changed px/vox"):
        c.add_column(col)
    for row in effort["cases"][:30]:
        c.add_row(row["case"], "-" if row["round"] is None else f"{row['round']:02d}", row["state"],
                  str(row["annotator"] or "-"), f"{row['seconds']:.0f}", str(row["changed_pixels"]))
    console.print(c)
    for r in effort["curve"]:
        if r["value"] is not None:
            console.print(f"model round {r['round']:02d}: {r['metric']} {r['value']:.3f} after "
                          f"{r['human_seconds'] / 60:.1f} human minutes ({r['n_train_labels']} labels, "
                          f"{r['untimed_labels']} untimed)", markup=False)
    if png is not None:
        console.print(f"quality vs human time: {png}")


def simulate_cmd(
    dataset: str = typer.Option(..., "--dataset", "--data", "-d", help="pneumoniamnist (AUC), kvasir (Dice) or busi (AUC).", callback=v.choice(("pneumoniamnist", "kvasir", "busi"))),
    strategy: str = typer.Option("random,acft", "--strategy", "-s",
                                 help="Strategy name(s), comma-separated: random, fg-random (segmentation), entropy, "
                                      "margin, least-confidence, bald (needs --dropout), coreset, acft, "
                                      "acft-entropy, acft-diversity.", callback=v.strategy_list),
    initial: int = typer.Option(20, help="Random initial labelled set (round 0).", callback=v.at_least_one),
    per_round: int = typer.Option(20, "--per-round", help="Cases revealed per query round.", callback=v.at_least_one),
    rounds: int = typer.Option(5, help="Query rounds after round 0.", callback=v.at_least_one),
    seeds: int = typer.Option(3, help="Repeats with seeds 0..SEEDS-1 (initial set, initialisation, training).", callback=v.at_least_one),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: curves.json, curves.png, cached runs/.", callback=v.out_folder),
    mode: str = typer.Option("all-labelled", help="all-labelled (ACFT(LQ): previous model on every label so far), "
                                                  "continual (ACFT(HQ): new + hard old cases), new-only or from-scratch.",
                             callback=v.choice(v.active_modes)),
    epochs: int = typer.Option(10, help="Epochs per round.", callback=v.at_least_one),
    min_steps: int = typer.Option(0, help="At least this many optimiser steps per round.", callback=v.non_negative),
    size: Optional[int] = typer.Option(None, help="Working size (default 28 PneumoniaMNIST, 64 Kvasir/BUSI).", callback=v.number(16)),
    features: Optional[str] = typer.Option(None, help="Network widths, e.g. 16,32,64,128 (the default).", callback=v.int_list()),
    dropout: float = typer.Option(0.0, help="Network dropout (> 0 needed by bald; used for every strategy).", callback=v.number(0, 1, hi_open=True)),
    lr: float = typer.Option(1e-3, help="Peak learning rate per round (Adam, cosine).", callback=v.positive),
    reduce: Optional[str] = typer.Option(None, help="Segmentation: per-image score = mean over all pixels (mean) "
                                                    "or over the predicted foreground (foreground).", callback=v.choice(("mean", "foreground"))),
    pool_limit: Optional[int] = typer.Option(None, help="Use a fixed random subset of this many pool cases.", callback=v.at_least_one),
    test_limit: Optional[int] = typer.Option(None, help="Evaluate on a fixed random subset of this many test cases.", callback=v.at_least_one),
    device: str = typer.Option("auto", help="auto, cpu or cuda.", callback=v.device),
) -> None:
    """Benchmark strategies with a simulated annotator who reveals the ground truth of the queried cases.

    Per strategy and seed: a random initial set, then ROUNDS rounds of query, reveal, fine-tuning and test
    evaluation. Writes OUT/curves.json (metric vs labels, mean over seeds with a 95% bootstrap CI) and
    OUT/curves.png; finished curves are cached in OUT/runs/ and reused when rerun.

    Example: aemia active simulate --dataset pneumoniamnist --strategy random,acft --initial 20 --per-round 20 --rounds 5 --seeds 3 --out sim_pneumonia
    """
    from aemia.active.simulate import simulate

    settings = {"min_steps": min_steps, "dropout": dropout, "lr": lr, "reduce": reduce, "pool_limit": pool_limit,
                "test_limit": test_limit, "device": device}
    feats = parse_ints(features, "--features")
    if feats:
        settings["features"] = tuple(feats)
    res = simulate(dataset, strategy, initial=initial, per_round=per_round, rounds=rounds, seeds=seeds, mode=mode,
                   epochs_per_round=epochs, size=size, out_dir=out, log=console.print, **settings)
    metric = res["metric"]
    for name, summ in res["strategies"].items():
        pts = summ["points"]
        if pts:
            last = pts[-1]
            console.print(f"{name}: {metric} {last['mean']:.3f} (95% CI {last['ci'][0]:.3f}-{last['ci'][1]:.3f}) "
                          f"with {last['n_labels']} labels, {summ['n_seeds']} seed(s)")
    console.print(f"curves: {Path(out) / 'curves.json'}")
    console.print(f"plot: {Path(out) / 'curves.png'}")
