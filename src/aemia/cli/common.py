"""Small helpers shared by the CLI verbs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import typer
from rich.console import Console

console = Console(stderr=False)
err_console = Console(stderr=True)


def parse_ints(text: str | None, what: str) -> list[int] | None:
    """``"16,32,64"`` → ``[16, 32, 64]``; a clear error otherwise."""
    if text is None or text == "":
        return None
    try:
        return [int(t) for t in text.replace("x", ",").split(",") if t.strip()]
    except ValueError:
        from aemia.errors import InputError

        raise InputError(None, f"{what} must be comma-separated integers, got {text!r}") from None


def parse_labels(text: str | None) -> dict[int, str] | None:
    """``"5:liver,1:spleen"`` → ``{5: "liver", 1: "spleen"}``."""
    if not text:
        return None
    from aemia.errors import InputError

    out: dict[int, str] = {}
    for item in text.split(","):
        key, _, name = item.partition(":")
        try:
            out[int(key)] = name or f"label_{key}"
        except ValueError:
            raise InputError(None, f"--labels items must look like 5:liver, got {item!r}") from None
    return out


def add_group(app: typer.Typer, name: str, help: str,
              commands: Mapping[str, tuple[Callable[..., Any], str | None]]) -> typer.Typer:
    """Add the command group ``aemia NAME`` to ``app`` (its help shown when called without a command), holding
    ``commands``: ``{verb: (function, help or None for the function's docstring)}``."""
    group = typer.Typer(name=name, help=help, no_args_is_help=True, rich_markup_mode="rich")
    for verb, (function, verb_help) in commands.items():
        group.command(verb, help=verb_help)(function)
    app.add_typer(group, name=name)
    return group


def part_options() -> tuple[Any, Any]:
    """``--num-parts`` and ``--part-id``, shared by the commands that split their cases into parts (job arrays;
    under torchrun the defaults are WORLD_SIZE and RANK)."""
    from aemia.cli import validate as v

    return (typer.Option(None, "--num-parts", help="Split the cases into N parts by sorted case id (job arrays); "
                         "default under torchrun: WORLD_SIZE.", callback=v.at_least_one),
            typer.Option(None, "--part-id", help="Which part this process works on (0..N-1); default under "
                         "torchrun: RANK.", callback=v.non_negative))
