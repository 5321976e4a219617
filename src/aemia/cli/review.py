"""``aemia review``: rank cases for human review from several models' soft predictions (AbdomenAtlas-8K)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from aemia.cli import validate as v
from aemia.cli.common import add_group, part_options

PRIORITIZE_HELP = (
    "Rank cases for review by the attention of several models' soft predictions (AbdomenAtlas-8K, Qu et al. "
    "NeurIPS'23; METHODS.md §5.2).\n\n"
    "Per case and organ: inconsistency = std across models > 0.1; uncertainty = mean over models of -p·ln(p) > 0.05; "
    "both opened (2 erosions then 2 dilations, 3x3x3 full-connectivity element); overlap = the organ's pseudo-label "
    "(mean probability > 0.5) inside another organ's pseudo-label (not opened, as in the paper); attention = their "
    "union. Cases are ranked by attention volume in mm³, summed over organs.\n\n"
    "Input layout (--predictions DIR): one sub-folder per model, the same cases and geometry in each, either\n\n"
    "* DIR/<model>/<case>.nii.gz: 4D probabilities (X, Y, Z, K); --organs maps CHANNEL:name, the 0-based channel "
    "along the 4th axis (e.g. 1:spleen,5:liver when channel = label), or\n\n"
    "* DIR/<model>/<case>/<organ>.nii.gz: one 3D probability map per organ; --organs maps LABEL:name (default: every "
    "organ file, labels 1..K in name order).\n\n"
    "--organs may also be a JSON file ({\"1\": \"spleen\", \"5\": \"liver\"}); without it, DIR/organs.json is "
    "used if present. Probabilities must lie in [0, 1].\n\n"
    "Outputs (--out): priority.csv (rank, case, attention_mm3, organs by attention volume as name=mm³, ...), "
    "review.json, priority.png (the top cases' axial slice with the most attention), and per case, with the "
    "predictions' affine: attention/<case>_flags.nii.gz (bit flags 1 inconsistency, 2 uncertainty, 4 overlap), "
    "attention/<case>_organs.nii.gz (the --organs key of the organ to revise there; every key + 1 if channel 0 is "
    "one of them, legend in review.json), attention/<case>_heat.nii.gz (0..255).\n\n"
    "Many cases: --num-parts N --part-id K (a SLURM array; under torchrun the rank) computes one part; the last "
    "step, --merge (automatic for one part and on torchrun rank 0), ranks all parts and writes the tables.\n\n"
    "Example: aemia review prioritize --predictions runs/ensemble "
    "--organs 1:spleen,2:kidney_right,3:kidney_left,5:liver,10:pancreas --out runs/review"
)


_PARTS = part_options()


def prioritize_cmd(
    predictions: Path = typer.Option(..., "--predictions", help="Folder with one sub-folder of probabilities per "
                                     "model (layout above).", callback=v.existing),
    out: Path = typer.Option(..., "--out", help="Output folder.", callback=v.out_folder),
    organs: Optional[str] = typer.Option(None, "--organs", help="Target organs: 'KEY:name,...' or a JSON file "
                                         "(KEY = channel for 4D files, label for per-organ files)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Folder of the CTs (<case>.nii.gz) to show under "
                                          "the attention in priority.png (default: mean organ probability).", callback=v.existing),
    std_threshold: float = typer.Option(0.1, "--std-threshold", help="Inconsistency: std across models > this.", callback=v.non_negative),
    entropy_threshold: float = typer.Option(0.05, "--entropy-threshold", help="Uncertainty: mean -p·ln(p) > this.", callback=v.non_negative),
    opening_iterations: int = typer.Option(2, "--opening-iterations", help="Erosions then dilations (3x3x3).", callback=v.non_negative),
    overlap_organs: Optional[str] = typer.Option(None, "--overlap-organs", help="Comma-separated organ names whose "
                                                 "pseudo-labels count for overlap (default: all target organs)."),
    figure_cases: int = typer.Option(4, "--figure-cases", help="Top cases shown in priority.png (0: no figure).", callback=v.non_negative),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar and no table."),
    num_parts: Optional[int] = _PARTS[0],
    part_id: Optional[int] = _PARTS[1],
    merge: bool = typer.Option(False, "--merge", help="Compute nothing: rank the finished parts and write the "
                               "tables and figure (after a job array)."),
) -> None:
    from rich.console import Console

    from aemia.active.attention import ReviewConfig
    from aemia.active.prediction_set import parse_organs
    from aemia.active.review import prioritize

    config = ReviewConfig(
        std_threshold=std_threshold, entropy_threshold=entropy_threshold, opening_iterations=opening_iterations,
        overlap_organs=tuple(n.strip() for n in overlap_organs.split(",") if n.strip()) if overlap_organs else None,
    )
    err = Console(stderr=True)
    result = prioritize(predictions, out, organs=parse_organs(organs), config=config, images=images,
                        figure_cases=figure_cases, progress=not quiet and err.is_terminal, num_parts=num_parts,
                        part_id=part_id, merge_only=merge)
    if not result.files:  # a part of a sharded run: the merge writes the tables
        typer.echo(f"Part done; rank all parts with: aemia review prioritize ... --merge --out {result.out_dir}")
        return
    if not quiet:
        _print_table(result.rows)
    typer.echo(f"Priority list: {result.out_dir / 'priority.csv'}")


def _print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Review priority ({len(rows)} cases)")
    for col in ("rank", "case", "attention cm³", "organs (cm³)"):
        table.add_column(col, justify="right" if col in ("rank", "attention cm³") else "left", overflow="fold")
    for row in rows[:20]:
        organs = ", ".join(f"{item.split('=')[0]} {float(item.split('=')[1]) / 1000:.1f}"
                           for item in row["organs"].split(";") if item)
        table.add_row(str(row["rank"]), row["case"], f"{row['attention_mm3'] / 1000:.1f}", organs or "–")
    Console().print(table)
    if len(rows) > 20:
        Console().print(f"... {len(rows) - 20} more in priority.csv")


def register(app: typer.Typer) -> None:
    """Add the ``review`` command group to the aemia app."""
    add_group(app, "review", "Prioritise cases for human review (AbdomenAtlas-8K attention maps).\n\n"
              "Example: aemia review prioritize --predictions runs/ensemble --out runs/review",
              {"prioritize": (prioritize_cmd, PRIORITIZE_HELP)})
