"""Human effort and review decisions in the annotation ledger (schema version 2), for the review app
(:mod:`aemia.serve`) and the effort report of ``aemia active status``.

AbdomenAtlas-8K (Qu et al., NeurIPS 2023 Datasets & Benchmarks; ``reference/METHODS.md`` §5.2) measures human
effort by what annotators *change* in the AI's prediction, and by the time they spend. Every save made in the
app is one row of the append-only ``efforts`` table: the action (``saved`` a corrected mask, ``accepted`` a mask
as is, ``rejected`` the case, ``flagged`` it with a comment), the annotator, when the case was opened
(``started_at``) and saved (``saved_at``, the ledger's clock), the seconds spent, and how many pixels/voxels of
the saved mask differ from the prediction that was the starting mask (``changed_pixels`` of ``total_pixels``).

**Optimistic concurrency.** Every case has a *version*: the number of its event-log rows plus its effort rows,
so any change to the case (a query, an import, an app save) increases it. A save names the version it started
from (``base_version``); if the case changed since, :class:`StaleVersionError` is raised inside the write
transaction and nothing is recorded — two tabs editing one case never overwrite each other silently.

A save with a label records the label through the ledger's ``_annotate_in_tx`` (``annotated`` or
``reannotated`` event, the label file's SHA-256) *and* the effort row in the same ``BEGIN IMMEDIATE``
transaction: both or neither.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from aemia.active.ledger_records import file_sha256, now_iso
from aemia.errors import InputError

__all__ = [
    "ACTIONS",
    "EFFORT_SCHEMA",
    "REVIEW_STATES",
    "CaseEffort",
    "Effort",
    "EffortLedgerMixin",
    "StaleVersionError",
]

ACTIONS: tuple[str, ...] = ("saved", "accepted", "rejected", "flagged")
#: What the worklist shows per case: no label yet, a label awaiting acceptance, or the last decision.
REVIEW_STATES: tuple[str, ...] = ("to annotate", "in review", "accepted", "rejected", "flagged")
EffortAction = Literal["saved", "accepted", "rejected", "flagged"]
MAX_SECONDS = 24 * 3600.0

EFFORT_SCHEMA = """
CREATE TABLE IF NOT EXISTS efforts (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    case_id        TEXT NOT NULL REFERENCES items(case_id),
    action         TEXT NOT NULL CHECK (action IN ('saved', 'accepted', 'rejected', 'flagged')),
    annotator      TEXT NOT NULL,
    started_at     TEXT,
    saved_at       TEXT NOT NULL,
    seconds        REAL NOT NULL CHECK (seconds >= 0),
    changed_pixels INTEGER CHECK (changed_pixels IS NULL OR changed_pixels >= 0),
    total_pixels   INTEGER CHECK (total_pixels IS NULL OR total_pixels >= 0),
    label_hash     TEXT,
    comment        TEXT,
    version        INTEGER NOT NULL,
    CHECK ((action IN ('saved', 'accepted')) = (label_hash IS NOT NULL))
);
CREATE INDEX IF NOT EXISTS efforts_by_case ON efforts(case_id);
"""


class StaleVersionError(InputError):
    """The case changed since the editor opened it (another tab or person saved first); nothing was saved."""

    def __init__(self, case_id: str, base_version: int, current: int, by: str | None) -> None:
        self.case_id, self.base_version, self.current = case_id, base_version, current
        who = f" by {by}" if by else ""
        super().__init__(None, f"case {case_id!r} was changed{who} after you opened it (version {base_version}, "
                               f"now {current}); nothing was saved: reload the case and redo your edit")


@dataclass(frozen=True)
class Effort:
    """One row of the ``efforts`` table."""

    seq: int
    case_id: str
    action: str
    annotator: str
    started_at: str | None
    saved_at: str
    seconds: float
    changed_pixels: int | None
    total_pixels: int | None
    label_hash: str | None
    comment: str | None
    version: int


@dataclass(frozen=True)
class CaseEffort:
    """A case's review state and human effort: seconds summed over its effort rows, ``changed_pixels`` of its
    latest save (each save is compared with the prediction as a whole, so saves are not summed)."""

    case_id: str
    state: str
    annotator: str | None
    seconds: float
    changed_pixels: int
    n_saves: int
    comment: str | None


def review_state(status: str, last_action: str | None) -> str:
    """The worklist state: the last app decision, else ``in review`` for a labelled case, else ``to annotate``."""
    if last_action is not None:
        return "in review" if last_action == "saved" else last_action
    return "in review" if status == "annotated" else "to annotate"


class EffortLedgerMixin:
    """The effort methods of :class:`aemia.active.ledger.Ledger` (which supplies the connection, the
    transaction and ``_annotate_in_tx``)."""

    path: Path
    _con: sqlite3.Connection
    _transaction: Callable[[], AbstractContextManager[sqlite3.Connection]]
    _annotate_in_tx: Callable[..., Any]
    _step: Callable[[str], None]

    def case_version(self, case_id: str) -> int:
        """The case's version (event-log rows + effort rows); ``InputError`` for an unknown case."""
        return _version(self._con, str(case_id), self.path)

    def check_version(self, case_id: str, base_version: int) -> None:
        """:class:`StaleVersionError` unless the case is still at ``base_version`` (a cheap early check; the
        authoritative one runs inside :meth:`record_effort`'s transaction)."""
        _check_version(self._con, str(case_id), int(base_version), self.path)

    def record_effort(
        self,
        case_id: str,
        action: EffortAction,
        annotator: str,
        *,
        base_version: int,
        seconds: float,
        started_at: str | None = None,
        label_path: str | Path | None = None,
        changed_pixels: int | None = None,
        total_pixels: int | None = None,
        comment: str | None = None,
    ) -> Effort:
        """Record one app action on ``case_id`` in one transaction (see the module docstring).

        ``saved`` / ``accepted`` need ``label_path`` (recorded as the case's label, replacing an earlier one);
        ``rejected`` / ``flagged`` must not have one. Raises :class:`StaleVersionError` when the case's version
        is not ``base_version``, ``InputError`` for an unknown or never-queried case or bad values.
        """
        cid = str(case_id)
        if action not in ACTIONS:
            raise InputError(None, f"action must be one of {', '.join(ACTIONS)}, got {action!r}")
        if (label_path is not None) != (action in ("saved", "accepted")):
            raise InputError(label_path, f"a {action!r} action {'needs' if label_path is None else 'takes no'} label")
        if not annotator or not str(annotator).strip():
            raise InputError(None, "the annotator's name is empty")
        seconds = float(seconds)
        if not 0.0 <= seconds <= MAX_SECONDS:
            raise InputError(None, f"seconds spent must be in 0..{MAX_SECONDS:.0f}, got {seconds}")
        label = digest = None
        if label_path is not None:
            label, digest = str(Path(label_path).resolve()), file_sha256(label_path)
        now = now_iso()
        with self._transaction() as con:
            _check_version(con, cid, int(base_version), self.path)
            if label is not None:
                row = con.execute("SELECT status FROM items WHERE case_id = ?", (cid,)).fetchone()
                if row["status"] == "unlabelled":
                    raise InputError(label, f"case {cid!r} has not been queried; only queried cases can be annotated")
                self._annotate_in_tx(cid, label, digest, str(annotator), True, now)
                self._step("label_recorded")
            version = _version(con, cid, self.path) + 1
            cur = con.execute(
                "INSERT INTO efforts (case_id, action, annotator, started_at, saved_at, seconds, changed_pixels,"
                " total_pixels, label_hash, comment, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (cid, action, str(annotator), started_at, now, seconds, changed_pixels, total_pixels, digest,
                 comment, version),
            )
            self._step("effort_logged")
            seq = int(cur.lastrowid or 0)
        return Effort(seq, cid, action, str(annotator), started_at, now, seconds, changed_pixels, total_pixels,
                      digest, comment, version)

    def efforts(self, case_id: str | None = None) -> list[Effort]:
        """Effort rows (optionally of one case), oldest first."""
        sql, args = "SELECT * FROM efforts", ()
        if case_id is not None:
            sql, args = sql + " WHERE case_id = ?", (str(case_id),)
        return [Effort(**dict(r)) for r in self._con.execute(sql + " ORDER BY seq", args)]

    def case_efforts(self) -> dict[str, CaseEffort]:
        """Every case's review state and summed effort, by case id."""
        rows = self._con.execute(
            "SELECT i.case_id, i.status, i.annotator AS item_annotator,"
            " (SELECT action FROM efforts e WHERE e.case_id = i.case_id ORDER BY seq DESC LIMIT 1) AS last_action,"
            " (SELECT annotator FROM efforts e WHERE e.case_id = i.case_id ORDER BY seq DESC LIMIT 1) AS last_by,"
            " (SELECT comment FROM efforts e WHERE e.case_id = i.case_id ORDER BY seq DESC LIMIT 1) AS comment,"
            " (SELECT COALESCE(SUM(seconds), 0) FROM efforts e WHERE e.case_id = i.case_id) AS seconds,"
            " (SELECT changed_pixels FROM efforts e WHERE e.case_id = i.case_id AND changed_pixels IS NOT NULL"
            "   ORDER BY seq DESC LIMIT 1) AS changed,"
            " (SELECT COUNT(*) FROM efforts e WHERE e.case_id = i.case_id) AS n"
            " FROM items i"
        ).fetchall()
        return {r["case_id"]: CaseEffort(r["case_id"], review_state(r["status"], r["last_action"]),
                                         r["last_by"] or r["item_annotator"], float(r["seconds"]),
                                         int(r["changed"] or 0), int(r["n"]), r["comment"]) for r in rows}


def _check_version(con: sqlite3.Connection, case_id: str, base_version: int, where: Path) -> None:
    current = _version(con, case_id, where)
    if current != base_version:
        last = con.execute("SELECT annotator FROM efforts WHERE case_id = ? ORDER BY seq DESC LIMIT 1",
                           (case_id,)).fetchone()
        raise StaleVersionError(case_id, base_version, current, last[0] if last else None)


def _version(con: sqlite3.Connection, case_id: str, where: Path) -> int:
    row = con.execute(
        "SELECT (SELECT COUNT(*) FROM events WHERE case_id = ?) + (SELECT COUNT(*) FROM efforts WHERE case_id = ?),"
        " EXISTS (SELECT 1 FROM items WHERE case_id = ?)", (case_id, case_id, case_id)).fetchone()
    if not row[1]:
        raise InputError(where, f"case {case_id!r} is not in the project pool")
    return int(row[0])
