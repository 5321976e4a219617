"""The review app's worklist: the project's queried cases in priority order, with state, score and effort.

Order: with a priority file (``aemia review prioritize``'s ``priority.csv``: AbdomenAtlas-8K attention, most
attention first; ``P/priority.csv`` is used when present), its ranks come first; then the cases of the latest
``aemia active query`` round by rank (``rounds/NN/worklist.csv``, rank 1 = most worth annotating), then the
earlier rounds, newest first. Cases the ledger has never queried are not on the list (only queried cases may
be labelled), and priority rows naming cases outside the ledger are ignored.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aemia.active.ledger import Ledger
from aemia.active.project import Project
from aemia.errors import InputError

__all__ = ["WorkItem", "build_worklist", "read_priority"]


@dataclass
class WorkItem:
    """One worklist row as the app shows it."""

    case: str
    position: int  # 1 = first to review
    score: float | None
    score_name: str  # "attention mm³" or the round's strategy score
    round: int | None
    state: str
    annotator: str | None
    seconds: float
    changed_pixels: int
    comment: str | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def read_priority(path: Path) -> list[tuple[str, float | None]]:
    """``(case, attention_mm3)`` in rank order from a ``priority.csv``; ``InputError`` if it is not one."""
    try:
        rows = list(csv.DictReader(path.read_text(encoding="utf-8").splitlines()))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read the priority list ({exc})") from None
    if rows and not {"rank", "case"} <= set(rows[0]):
        raise InputError(path, "not a priority list (expected columns rank, case, attention_mm3 as written by "
                               "`aemia review prioritize`)")
    try:
        rows.sort(key=lambda r: int(r["rank"]))
        return [(r["case"], float(r["attention_mm3"]) if r.get("attention_mm3") else None) for r in rows]
    except (TypeError, ValueError) as exc:
        raise InputError(path, f"bad rank or attention value ({exc})") from None


def _round_rows(proj: Project, r: int) -> list[tuple[str, float | None]]:
    f = proj.round_dir(r) / "worklist.csv"
    if not f.is_file():
        return []
    rows = list(csv.DictReader(f.read_text(encoding="utf-8").splitlines()))
    rows.sort(key=lambda row: int(row.get("rank") or 0))
    return [(row["case"], float(row["score"]) if row.get("score") not in (None, "") else None) for row in rows]


def build_worklist(proj: Project, led: Ledger, priority: Path | None) -> list[WorkItem]:
    """Every queried or annotated case in review order (module docstring), with state and effort."""
    items = {it.case_id: it for it in led.items() if it.status != "unlabelled"}
    effort = led.case_efforts()
    ordered: list[tuple[str, float | None, str]] = []
    seen: set[str] = set()
    if priority is not None:
        for case, att in read_priority(priority):
            if case in items and case not in seen:
                ordered.append((case, att, "attention mm³"))
                seen.add(case)
    for r in sorted({it.round for it in items.values() if it.round is not None}, reverse=True):
        for case, score in _round_rows(proj, r):
            if case in items and case not in seen:
                ordered.append((case, score, f"round {r:02d} score"))
                seen.add(case)
    for case in sorted(set(items) - seen):  # queried without a worklist file (e.g. a scripted ledger)
        ordered.append((case, None, ""))
    out = []
    for pos, (case, score, name) in enumerate(ordered, start=1):
        e = effort[case]
        out.append(WorkItem(case, pos, score, name, items[case].round, e.state, e.annotator, round(e.seconds, 1),
                            e.changed_pixels, e.comment))
    return out
