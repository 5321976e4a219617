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


class ProblemsError(InputError):
    """Every problem a pre-flight check found (``problems``: ``"PATH: problem"`` lines).

    One problem is reported as that line; several are listed by the CLI (stdout) before one summary line.
    ``outcome`` (say, "nothing imported") replaces "nothing was started or written" and ends a single line too.
    """

    def __init__(self, path: str | Path | None, problems: list[str], outcome: str | None = None) -> None:
        self.problems = list(problems)
        if len(self.problems) == 1:
            super().__init__(None, self.problems[0] + (f"; {outcome}" if outcome else ""))
        else:
            super().__init__(path, f"{len(self.problems)} problems (listed above); "
                                   f"{outcome or 'nothing was started or written'}")
