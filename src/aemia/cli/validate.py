"""Parse-time checks of option values, shared by every verb.

Each factory returns a typer option callback. A bad value raises :class:`typer.BadParameter`, which
``aemia.cli.main`` prints as one line (``aemia: error: ...``) with exit code 2 before the verb does any work or
writes anything. Choices that a registry owns (models, optimisers, losses) are read from it lazily, so the
CLI keeps a single source of truth and ``--help`` stays fast.

This module deliberately has no ``from __future__ import annotations``: typer reads the callbacks' parameter
annotations to tell the value from the context.
"""

import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Optional, Union

import typer

Callback = Callable[[Any], Any]
Values = Union[Iterable[str], Callable[[], Iterable[str]]]


def _bad(message: str) -> typer.BadParameter:
    return typer.BadParameter(message)


def number(lo: Optional[float] = None, hi: Optional[float] = None, *, lo_open: bool = False,
           hi_open: bool = False) -> Callback:
    """A finite int/float in [lo, hi] (``lo_open``/``hi_open`` exclude the bound); ``None`` passes."""

    def check(value: Any) -> Any:
        if value is None:
            return value
        if isinstance(value, float) and not math.isfinite(value):
            raise _bad(f"must be a finite number, got {value}")
        if lo is not None and (value < lo or (lo_open and value == lo)):
            raise _bad(f"must be {'>' if lo_open else '>='} {lo}, got {value}")
        if hi is not None and (value > hi or (hi_open and value == hi)):
            raise _bad(f"must be {'<' if hi_open else '<='} {hi}, got {value}")
        return value

    return check


positive = number(0, lo_open=True)
at_least_one = number(1)
non_negative = number(0)
fraction = number(0, 1)  # [0, 1]
open_fraction = number(0, 1, lo_open=True)  # (0, 1]


def multiple_of(m: int, lo: int) -> Callback:
    """An integer >= ``lo`` divisible by ``m`` (e.g. an image size an encoder pools ``log2 m`` times)."""
    at_least = number(lo)

    def check(value: Any) -> Any:
        value = at_least(value)
        if value is not None and value % m:
            raise _bad(f"must be a multiple of {m}, got {value}")
        return value

    return check


def choice(values: Values, *, allow_none: bool = True) -> Callback:
    """One of ``values`` (an iterable or a function returning one, read when the option is parsed)."""

    def check(value: Any) -> Any:
        if value is None and allow_none:
            return value
        allowed = list(values() if callable(values) else values)
        if value not in allowed:
            raise _bad(f"must be one of {', '.join(map(str, allowed))}; got {value!r}")
        return value

    return check


def int_list(count: Optional[Iterable[int]] = None, lo: int = 1, what: str = "integers") -> Callback:
    """A comma-separated list of integers >= ``lo`` (``"64,64,32"``; ``x`` also separates), ``count`` items."""
    counts = None if count is None else tuple(count)

    def check(value: Any) -> Any:
        if value is None or value == "":
            return None
        try:
            items = [int(t) for t in str(value).replace("x", ",").split(",") if t.strip()]
        except ValueError:
            raise _bad(f"must be comma-separated {what}, e.g. 64,64,32; got {value!r}") from None
        if not items:
            raise _bad(f"must be comma-separated {what}; got {value!r}")
        if counts is not None and len(items) not in counts:
            raise _bad(f"needs {' or '.join(map(str, counts))} values, got {len(items)} ({value!r})")
        small = [v for v in items if v < lo]
        if small:
            raise _bad(f"every value must be >= {lo}, got {value!r}")
        return value

    return check


def float_list(count: Optional[Iterable[int]] = None, positive_only: bool = True) -> Callback:
    """A comma-separated list of finite floats (> 0 unless ``positive_only`` is False)."""
    counts = None if count is None else tuple(count)

    def check(value: Any) -> Any:
        if value is None or value == "":
            return None
        try:
            items = [float(t) for t in str(value).split(",") if t.strip()]
        except ValueError:
            raise _bad(f"must be comma-separated numbers, e.g. 2,2,2; got {value!r}") from None
        if counts is not None and len(items) not in counts:
            raise _bad(f"needs {' or '.join(map(str, counts))} values, got {len(items)} ({value!r})")
        if not items or any(not math.isfinite(v) or (positive_only and v <= 0) for v in items):
            raise _bad(f"every value must be a finite number{' > 0' if positive_only else ''}, got {value!r}")
        return value

    return check


def _device_ok(value: str) -> bool:
    if value in ("auto", "cpu", "cuda", "mps"):
        return True
    head, _, index = value.partition(":")
    return head == "cuda" and index.isdigit()


def device(value: Any) -> Any:
    """auto, cpu, cuda, cuda:N or mps."""
    if value is not None and not _device_ok(str(value)):
        raise _bad(f"must be auto, cpu, cuda, cuda:N or mps; got {value!r}")
    return value


AMP_MODES = ("auto", "bf16", "fp16", "none")
amp = choice(AMP_MODES)


def _writable_ancestor(path: Path) -> Optional[Path]:
    """The nearest existing folder at or above ``path``."""
    for p in [path, *path.parents]:
        if p.exists():
            return p
    return None


def output_folder_problem(path: Path) -> Optional[str]:
    """Why ``path`` cannot become an output folder (existing file, under a file, not writable); else None."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        return "exists and is a file, not a folder"
    base = _writable_ancestor(path.absolute())
    if base is None:
        return "no existing parent folder"
    if not base.is_dir():
        return f"cannot create a folder under the file {base}"
    if not os.access(base, os.W_OK | os.X_OK):
        return f"folder {base} is not writable"
    return _probe_problem(base)


def _probe_problem(folder: Path) -> Optional[str]:
    """Create and remove an empty hidden folder in ``folder``: the only check that also holds for root (whom
    ``os.access`` always allows), read-only mounts and pseudo file systems such as /proc."""
    import tempfile

    try:
        os.rmdir(tempfile.mkdtemp(prefix=".aemia_write_check_", dir=folder))
    except OSError as exc:
        return f"folder {folder} is not writable ({exc.strerror or type(exc).__name__})"
    return None


def out_folder(value: Any) -> Any:
    """A folder to write into: not an existing file, and creatable/writable by this user."""
    if value is None:
        return value
    problem = output_folder_problem(Path(value))
    if problem:
        raise _bad(f"{value}: {problem}")
    return value


def existing(value: Any) -> Any:
    """An input path that exists (file or folder)."""
    if value is not None and not Path(value).expanduser().exists():
        raise _bad(f"{value}: does not exist")
    return value


def existing_list(value: Any) -> Any:
    """A comma-separated list of existing paths (``runs/a,runs/b``); ``None`` passes."""
    if value is None:
        return value
    items = [v.strip() for v in str(value).split(",") if v.strip()]
    if not items:
        raise _bad("give at least one path")
    for item in items:
        existing(item)
    return items


def checkpoint(value: Any) -> Any:
    """Pretrained weights: a run folder, a ``.safetensors`` file, its stem (``.../best``) or a shipped model's name
    (``universal``, ``universal2d-no-kvasir``)."""
    if value is None:
        return value
    path = Path(value).expanduser()
    if path.is_dir():
        return value
    if path.is_file():
        if not path.name.endswith((".safetensors", ".json")):
            raise _bad(f"{value}: not a checkpoint (expected a run folder or a .safetensors file)")
        return value
    if Path(str(path) + ".safetensors").is_file():
        return value
    if "/" not in str(value) and "\\" not in str(value):  # a shipped model's name, e.g. universal
        from aemia.errors import InputError
        from aemia.runs.init import resolve_init

        try:
            resolve_init(str(value))
        except InputError as exc:
            raise _bad(exc.problem) from None
        return value
    raise _bad(f"{value}: does not exist")


def models(task: Optional[str] = None) -> Callable[[], list[str]]:
    """The registered network names (optionally of one task), read when the option is parsed."""

    def names() -> list[str]:
        from aemia.nets import registry

        names = list(registry.available_models())
        for lazy in getattr(registry, "_LAZY", {}):  # models registered by recipe modules on first use
            if lazy not in names:
                try:
                    registry._ensure(lazy)
                except Exception:  # noqa: BLE001 - a recipe that cannot load is simply not offered
                    pass
        return [m for m in registry.available_models() if task is None or registry.model_task(m) == task]

    return names


def optimizers() -> tuple[str, ...]:
    from aemia.train.trainer import OPTIMIZERS

    return OPTIMIZERS


def schedules() -> tuple[str, ...]:
    from aemia.train.trainer import SCHEDULES

    return SCHEDULES


def losses() -> list[str]:
    from aemia.train.losses import LOSSES

    return sorted(LOSSES)


def presets() -> list[str]:
    from aemia.runs.config import PRESETS

    return sorted(PRESETS)


def run_tasks() -> tuple[str, ...]:
    from aemia.runs.config import RUN_TASKS

    return RUN_TASKS


def given(**values: Any) -> dict[str, Any]:
    """The options the user set (not None): pass them on so the dataclass supplies the rest."""
    return {k: v for k, v in values.items() if v is not None}


def active_modes() -> tuple[str, ...]:
    from aemia.active.continual import MODES

    return MODES


def promotion_rules() -> list[str]:
    from aemia.active.validation import PROMOTION_RULES

    return list(PROMOTION_RULES)


def tumor_types() -> list[str]:
    from aemia.synth.tumor import TUMOR_TYPES

    return [*TUMOR_TYPES, "random"]


def strategy_list(value: Any) -> Any:
    """One or more active-learning strategy names, comma-separated (aliases accepted)."""
    if value is None:
        return value
    from aemia.active.strategies import get_strategy

    for name in str(value).split(","):
        try:
            get_strategy(name)
        except ValueError as exc:  # its message lists the available strategies
            raise _bad(str(exc) or f"unknown strategy {name.strip()!r}") from None
    return value


def serve_token(ctx: typer.Context, value: Any) -> Any:
    """``aemia serve --token``: required (at least 16 characters) when ``--host`` is not a loopback address."""
    from aemia.serve.security import is_loopback

    host = ctx.params.get("host", "127.0.0.1")
    if value is None and not is_loopback(str(host)):
        raise _bad(f"--host {host} serves other machines: give --token (e.g. --token $(openssl rand -hex 16))")
    if value is not None and len(value) < 16:
        raise _bad("must be at least 16 characters (e.g. --token $(openssl rand -hex 16))")
    return value


def shipped(value: Any) -> Any:
    """The name of a model shipped in the package (``src/aemia/shipped/<name>/``); ``None`` passes."""
    if value is None:
        return value
    from aemia.runs.shipped import shipped_models

    have = shipped_models()
    if value not in have:
        raise _bad(f"no shipped model {value!r}; shipped: {', '.join(have) or 'none'}")
    return value
