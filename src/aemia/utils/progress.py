"""Progress bars that never run a repaint thread.

rich's default 10 Hz refresh thread preempts PyTorch's OpenMP workers mid-barrier; on a 2-core machine that
made training about 6x slower. These bars repaint from the caller's thread, at most ``min_interval`` seconds
apart, so they cost nothing measurable.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class Bar:
    """``with Bar("predicting", total=n) as bar: ... bar.advance()``; disabled bars do nothing."""

    def __init__(self, description: str, total: int | None, enabled: bool = True, transient: bool = True,
                 stderr: bool = True, min_interval: float = 0.5) -> None:
        self.enabled = enabled
        self.min_interval = min_interval
        self._last = 0.0
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), console=Console(stderr=stderr), transient=transient, auto_refresh=False,
            disable=not enabled,
        )
        self._task: TaskID | None = None
        self._description, self._total = description, total

    def __enter__(self) -> "Bar":
        self._progress.__enter__()
        self._task = self._progress.add_task(self._description, total=self._total)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.refresh()
        self._progress.__exit__(*exc)

    def add_task(self, description: str, total: int | None) -> TaskID:
        """Start another bar in the same display (e.g. one per epoch)."""
        self._task = self._progress.add_task(description, total=total)
        self._last = 0.0
        return self._task

    def advance(self, n: int = 1, description: str | None = None, force: bool = False) -> None:
        if self._task is None:
            return
        kwargs = {"description": description} if description is not None else {}
        self._progress.update(self._task, advance=n, **kwargs)
        now = time.monotonic()
        if self.enabled and (force or now - self._last >= self.min_interval):
            self._progress.refresh()
            self._last = now

    def describe(self, description: str) -> None:
        if self._task is not None:
            self._progress.update(self._task, description=description)
            self._progress.refresh()


class EpochProgress:
    """One progress bar per epoch with the running loss; validation scores appended at the epoch's end."""

    def __init__(self, enabled: bool) -> None:
        self._bar = Bar("training", total=None, enabled=enabled, transient=False, stderr=False)
        self._bar_open = False

    def __enter__(self) -> "EpochProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar_open:
            self._bar.__exit__(*exc)

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        self._label = f"epoch {epoch + 1}/{epochs}"
        if not self._bar_open:
            self._bar._description, self._bar._total = self._label, steps
            self._bar.__enter__()
            self._bar_open = True
        else:
            self._bar.add_task(self._label, total=steps)

    def advance(self, loss: float) -> None:
        self._bar.advance(description=f"{self._label} loss {loss:.4f}")

    def end_epoch(self, logs: dict[str, Any]) -> None:
        extra = " ".join(f"{k} {v:.4f}" for k, v in logs.items() if k.startswith("val_") and k != "val_metric")
        self._bar.describe(f"{self._label} loss {logs['train_loss']:.4f} {extra}")
