"""Entry point of the ``aemia`` command.

Each verb module exposes ``register(app)``. Every error a person can fix becomes one line on stderr
(``aemia: error: ...``) and exit code 2, never a traceback:

- :class:`aemia.errors.AemiaError` (bad files and folders, raised anywhere);
- usage errors and option values refused at parse time (:mod:`aemia.cli.validate`);
- a ``ValueError`` raised while checking arguments, i.e. by a config dataclass's ``__post_init__``.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from aemia.errors import AemiaError

app = typer.Typer(
    name="aemia",
    help="aemia: annotation-efficient medical image analysis.\n\nExample: aemia demo",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

# Verb modules, in pipeline order. A module that is missing is skipped so partial installs still run.
_VERB_MODULES = ("data", "pretrain", "synth", "train", "semi", "weak", "universal", "predict", "evaluate", "active",
                 "review", "serve", "demo")



@app.callback()
def _root() -> None:
    """aemia: annotation-efficient medical image analysis."""


for _name in _VERB_MODULES:
    try:
        _mod = importlib.import_module(f"aemia.cli.{_name}")
    except ModuleNotFoundError as exc:  # pragma: no cover - only during development
        if exc.name != f"aemia.cli.{_name}":
            raise
        continue
    _mod.register(app)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _from_argument_check(exc: BaseException) -> bool:
    """True when ``exc`` was raised by a config dataclass's ``__post_init__`` (checking option values)."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "__post_init__":
            return True
        tb = tb.tb_next
    return False


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (used by the console script and tests)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        rc = app(args=argv, standalone_mode=False, prog_name="aemia")
    except AemiaError as exc:
        problems = getattr(exc, "problems", [])
        if len(problems) > 1:
            print("\n".join(problems), flush=True)
        print(f"aemia: error: {_one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except typer.Exit as exc:
        return int(exc.exit_code or 0)
    except SystemExit as exc:  # click raises this for --help and usage errors
        return int(exc.code or 0)
    except KeyboardInterrupt:
        print("aemia: interrupted", file=sys.stderr)
        return 130
    except ValueError as exc:
        if not _from_argument_check(exc):
            raise
        print(f"aemia: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except Exception as exc:
        # Usage errors from the click that typer bundles (typer >= 0.20 vendors it privately, older versions
        # use the click package): recognised by their interface rather than an import.
        if hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int):
            ctx = getattr(exc, "ctx", None)
            where = f" ({ctx.command_path} --help)" if ctx is not None else ""
            print(f"aemia: error: {_one_line(exc.format_message())}{where}", file=sys.stderr)
            return int(exc.exit_code)
        if type(exc).__name__ == "Abort":
            return 1
        raise
    return int(rc) if isinstance(rc, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
