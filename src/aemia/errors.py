"""Errors that the CLI turns into one-line messages and exit code 2."""

from __future__ import annotations

from pathlib import Path


class AemiaError(Exception):
    """Base class for errors aemia reports to a person without a traceback."""

    exit_code = 2


class InputError(AemiaError):
    """A file or folder given to aemia cannot be used; names the path and the problem."""

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class CheckpointError(InputError):
    """A checkpoint cannot be loaded into the requested model (missing/unexpected keys, shapes)."""
