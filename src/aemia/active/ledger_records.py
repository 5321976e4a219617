"""The records of the annotation ledger (:mod:`aemia.active.ledger`): its SQLite schema, the dataclasses a
ledger returns, and the small helpers both the ledger and its effort tables use (file hashes, timestamps)."""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from aemia.errors import InputError

__all__ = [
    "LEDGER_FILENAME",
    "SCHEMA_VERSION",
    "STATUSES",
    "AnnotateResult",
    "Event",
    "LedgerItem",
    "PoolItem",
    "RoundInfo",
    "file_sha256",
    "ledger_path",
]

SCHEMA_VERSION = 2  # 2 added the ``efforts`` table (:mod:`aemia.active.ledger_effort`); version 1 is migrated on open
LEDGER_FILENAME = "ledger.sqlite"
STATUSES: tuple[str, ...] = ("unlabelled", "queried", "annotated")

Status = Literal["unlabelled", "queried", "annotated"]
Action = Literal["annotated", "unchanged", "reannotated"]


LEDGER_SCHEMA = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE rounds (
    round      INTEGER PRIMARY KEY CHECK (round >= 0),
    strategy   TEXT,
    created_at TEXT NOT NULL
);
CREATE TABLE items (
    case_id      TEXT PRIMARY KEY,
    image_path   TEXT NOT NULL,
    image_hash   TEXT NOT NULL,
    status       TEXT NOT NULL DEFAULT 'unlabelled' CHECK (status IN ('unlabelled', 'queried', 'annotated')),
    round        INTEGER REFERENCES rounds(round),
    queried_at   TEXT,
    annotator    TEXT,
    annotated_at TEXT,
    label_path   TEXT,
    label_hash   TEXT,
    added_at     TEXT NOT NULL,
    CHECK ((status = 'unlabelled') = (round IS NULL)),
    CHECK ((status = 'annotated') = (label_hash IS NOT NULL))
);
CREATE TABLE events (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    at            TEXT NOT NULL,
    case_id       TEXT NOT NULL REFERENCES items(case_id),
    kind          TEXT NOT NULL CHECK (kind IN ('added', 'queried', 'released', 'annotated', 'reannotated')),
    round         INTEGER,
    annotator     TEXT,
    label_path    TEXT,
    label_hash    TEXT,
    previous_hash TEXT
);
CREATE INDEX events_by_case ON events(case_id);
CREATE INDEX items_by_status ON items(status);
"""


# ------------------------------------------------------------------------------------------ records


@dataclass(frozen=True)
class PoolItem:
    """A case to put in the pool. ``image_hash=None`` hashes ``image_path`` (which must then exist)."""

    case_id: str
    image_path: str | Path
    image_hash: str | None = None


@dataclass(frozen=True)
class LedgerItem:
    """One case as recorded in the ledger."""

    case_id: str
    image_path: str
    image_hash: str
    status: Status
    round: int | None
    queried_at: str | None
    annotator: str | None
    annotated_at: str | None
    label_path: str | None
    label_hash: str | None
    added_at: str


@dataclass(frozen=True)
class RoundInfo:
    """A query round: when, with which strategy, how many of its cases are queried / annotated now."""

    round: int
    strategy: str | None
    created_at: str
    n_queried: int
    n_annotated: int


@dataclass(frozen=True)
class Event:
    """One row of the append-only event log."""

    seq: int
    at: str
    case_id: str
    kind: str
    round: int | None
    annotator: str | None
    label_path: str | None
    label_hash: str | None
    previous_hash: str | None


@dataclass(frozen=True)
class AnnotateResult:
    """What :meth:`Ledger.annotate` did: ``annotated`` (first label), ``unchanged`` (same hash, no-op) or
    ``reannotated`` (different hash with ``replace=True``)."""

    case_id: str
    action: Action
    label_hash: str


# ------------------------------------------------------------------------------------------ helpers


def ledger_path(project: str | Path) -> Path:
    """The ledger file of a project folder: ``<project>/ledger.sqlite``."""
    return Path(project) / LEDGER_FILENAME


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes; ``InputError`` if it cannot be read."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except IsADirectoryError:
        raise InputError(path, "is a folder, expected a file") from None
    except OSError as e:
        raise InputError(path, f"cannot be read ({e.strerror or e})") from None
    return h.hexdigest()


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def item_from_row(row: sqlite3.Row) -> LedgerItem:
    return LedgerItem(**{k: row[k] for k in LedgerItem.__dataclass_fields__})
