"""``aemia data``: list the bundled data sets and check data folders."""

from __future__ import annotations

from pathlib import Path

import typer



def register(app: typer.Typer) -> None:
    """Add the ``data`` command group to the main app."""
    data_app = typer.Typer(
        name="data",
        help="Bundled data sets and data checks.\n\nExample: aemia data list",
        no_args_is_help=True,
        rich_markup_mode="rich",
    )
    data_app.command("list")(list_cmd)
    data_app.command("check")(check_cmd)
    app.add_typer(data_app, name="data")


def list_cmd() -> None:
    """List the bundled real data sets: task, dimensions, cases per split, licence.

    Example: aemia data list
    """
    from rich.console import Console
    from rich.table import Table

    from aemia.data.catalog import data_root, get_dataset, list_datasets
    from aemia.errors import InputError

    root = data_root()
    table = Table(title=f"Data sets in {root}")
    for col in ("name", "task", "dims", "train", "val", "test", "licence"):
        table.add_column(col, overflow="fold", justify="right" if col in ("dims", "train", "val", "test") else "left")
    for name in list_datasets():
        try:
            ds = get_dataset(name, root)
        except InputError as exc:
            table.add_row(name, "[red]unavailable[/red]", "", "", "", "", exc.problem)
            continue
        counts = ds.counts()
        table.add_row(name, ds.task, str(ds.dims), *(str(counts.get(s, 0)) for s in ("train", "val", "test")),
                      ds.licence)
    Console(width=max(Console().width, 120)).print(table)


def check_cmd(
    path: Path = typer.Argument(..., help="Data set folder (MSD/nnU-Net or plain image folder) or image file."),
) -> None:
    """Check a data folder or image file and print every problem as "PATH: problem".

    Checks readability, NaN/inf, image/label shape and spacing agreement, label values against dataset.json,
    empty masks and non-image files. Exit code 2 if any problem is found.

    Example: aemia data check ../shared/data/totalsegmentator_example_ct/example_ct.nii.gz
    """
    from rich.console import Console

    from aemia.data.check import Checker
    from aemia.utils.progress import Bar
    from aemia.errors import InputError

    checker = Checker(path)
    err = Console(stderr=True)
    with Bar("checking", total=len(checker.cases), enabled=err.is_terminal) as bar:
        problems = checker.run(on_case=lambda c: bar.advance(description=f"checking {c.id}"))
    for p in problems:
        typer.echo(str(p))
    if problems:
        # An AemiaError (not typer.Exit) so the exit code is 2 however the CLI is invoked.
        raise InputError(path, f"{len(problems)} problem(s) in {len(checker.cases)} case(s)")
    typer.echo(f"OK: {len(checker.cases)} cases checked")
