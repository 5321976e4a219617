"""The annotation ledger: one SQLite database per active-learning project.

It records the unlabelled pool (case id, image path, image hash), each case's status
(``unlabelled`` → ``queried`` → ``annotated``), the round it was queried in, the annotator, timestamps and the
SHA-256 of the imported label file, plus an append-only event log (``added``, ``queried``, ``released``,
``annotated``, ``reannotated``).

Guarantees and the choices behind them:

* **One transaction per change.** Every public method that writes runs inside one ``BEGIN IMMEDIATE`` …
  ``COMMIT``: the item row and its event row change together or not at all. Batch methods
  (:meth:`Ledger.create`, :meth:`Ledger.add_items`, :meth:`Ledger.query`, :meth:`Ledger.annotate_many`)
  are all-or-nothing for the whole batch; :meth:`Ledger.annotate` commits one label.
* **Crash safety.** SQLite's **rollback journal** (``journal_mode=DELETE``) with ``synchronous=FULL``: a
  process killed at any point (even mid-commit) leaves the database as of the last completed commit; the
  next connection rolls back the hot journal. The rollback journal rather than WAL because a project
  folder may live on a network or shared drive, where WAL's shared-memory index is unsupported, and because
  the idle database is then a single self-contained file; writes are small and rare (a person importing
  labels), so WAL's concurrent readers are not needed. Schema invariants are also ``CHECK`` constraints
  (an unlabelled case has no round; a case is annotated iff it has a label hash).
* **Concurrency.** ``BEGIN IMMEDIATE`` takes the write lock before any check is made, so two processes
  importing at once serialise (the second waits up to ``timeout`` seconds — SQLite's busy timeout — then
  fails with ``sqlite3.OperationalError: database is locked``) and no check can go stale before its write.
* **Idempotent import.** Importing a label whose file hash equals the recorded one is a no-op (result
  ``"unchanged"``, no event). A *different* file for an already annotated case is refused with an
  :class:`~aemia.errors.InputError` naming the case and both hashes, unless ``replace=True``, which records
  an explicit ``reannotated`` event (keeping the previous hash) and updates the case.
* **Bad labels are rejected** with ``InputError(label_path, problem)`` naming the case: unknown case id,
  a case never queried (status ``unlabelled``), or a missing label file.

Label *content* (shape, values, match with the image) is validated by the caller before import; the ledger
only records which file was accepted for which case.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from aemia.active.ledger_effort import EFFORT_SCHEMA, EffortLedgerMixin
from aemia.active.ledger_records import (
    LEDGER_FILENAME,
    LEDGER_SCHEMA,
    SCHEMA_VERSION,
    STATUSES,
    Action,
    AnnotateResult,
    Event,
    LedgerItem,
    PoolItem,
    RoundInfo,
    Status,
    file_sha256,
    ledger_path,
    now_iso,
)
from aemia.active.ledger_records import item_from_row as _item
from aemia.errors import InputError

__all__ = [
    "LEDGER_FILENAME",
    "SCHEMA_VERSION",
    "STATUSES",
    "Action",
    "AnnotateResult",
    "Event",
    "Ledger",
    "LedgerItem",
    "PoolItem",
    "RoundInfo",
    "Status",
    "file_sha256",
    "ledger_path",
]

def _connect(path: Path, timeout: float) -> sqlite3.Connection:
    con = sqlite3.connect(str(path), timeout=timeout, isolation_level=None)  # we issue BEGIN/COMMIT
    con.row_factory = sqlite3.Row
    con.execute("PRAGMA journal_mode=DELETE")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("PRAGMA foreign_keys=ON")
    con.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
    return con


def _migrate_v1(con: sqlite3.Connection) -> None:
    con.execute("BEGIN IMMEDIATE")
    try:
        if con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "1":
            for statement in EFFORT_SCHEMA.strip().split(";"):
                if statement.strip():
                    con.execute(statement)
            con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def _is_initialised(con: sqlite3.Connection) -> bool:
    row = con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
    return row is not None


# ------------------------------------------------------------------------------------------ ledger


class Ledger(EffortLedgerMixin):
    """The SQLite annotation ledger of one project (see the module docstring for the guarantees).

    Human effort and review decisions of the review app (:meth:`record_effort`, :meth:`case_efforts`, the
    per-case version that refuses stale saves) come from :class:`~aemia.active.ledger_effort.EffortLedgerMixin`.

    Open with :meth:`create` or :meth:`open`; use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: Path, con: sqlite3.Connection) -> None:
        self.path = path
        self._con = con
        # Testing hook: called with a step name at every point between two steps of a write, so tests can
        # kill the process there. Never set in normal use.
        self._crash_hook: Callable[[str], None] | None = None

    # ---------------------------------------------------------------- open / create / close

    @classmethod
    def create(cls, path: str | Path, items: Iterable[PoolItem], *, timeout: float = 30.0) -> Ledger:
        """Create the ledger at ``path`` holding ``items`` (all ``unlabelled``), in one transaction.

        A folder ``path`` means the project folder (:func:`ledger_path`). Refuses (``InputError``) if
        ``path`` already holds an initialised ledger. A file left empty by a
        crash during an earlier ``create`` is reused. Duplicate case ids raise ``InputError``.
        """
        path = Path(path)
        if path.is_dir():
            path = ledger_path(path)
        rows = cls._prepare_items(items)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            con = _connect(path, timeout)
        except sqlite3.DatabaseError as e:
            raise InputError(path, f"exists and is not a ledger database ({e})") from None
        ledger = cls(path, con)
        try:
            with ledger._transaction():
                if _is_initialised(con):
                    raise InputError(path, "a ledger already exists here; open it instead of creating it")
                for statement in (LEDGER_SCHEMA + EFFORT_SCHEMA).strip().split(";"):
                    if statement.strip():
                        con.execute(statement)
                ledger._step("schema")
                now = now_iso()
                con.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [("schema_version", str(SCHEMA_VERSION)), ("created_at", now)],
                )
                ledger._insert_items(rows, now)
        except BaseException:
            con.close()
            raise
        return ledger

    @classmethod
    def open(cls, path: str | Path, *, timeout: float = 30.0) -> Ledger:
        """Open an existing ledger (a folder means its :func:`ledger_path`).

        ``InputError`` if the file is missing, not SQLite, or not initialised.
        """
        path = Path(path)
        if path.is_dir():
            path = ledger_path(path)
        if not path.is_file():
            raise InputError(path, "no ledger here (create it first, e.g. `aemia active init`)")
        try:
            con = _connect(path, timeout)
            ok = _is_initialised(con)
        except sqlite3.DatabaseError as e:
            raise InputError(path, f"not a ledger database ({e})") from None
        if not ok:
            con.close()
            raise InputError(path, "the ledger was never initialised (was its creation interrupted?); create it again")
        version = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if version is not None and int(version[0]) == 1:  # add the efforts table, in one transaction
            _migrate_v1(con)
            version = (str(SCHEMA_VERSION),)
        if version is None or int(version[0]) != SCHEMA_VERSION:
            con.close()
            found = None if version is None else version[0]
            raise InputError(path, f"ledger schema version {found}, this aemia reads version {SCHEMA_VERSION}")
        return cls(path, con)

    def close(self) -> None:
        """Close the database connection."""
        self._con.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- internals

    def _step(self, name: str) -> None:
        if self._crash_hook is not None:
            self._crash_hook(name)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._con.execute("BEGIN IMMEDIATE")  # take the write lock now: concurrent writers serialise
        self._step("begun")
        try:
            yield self._con
            self._step("before_commit")
        except BaseException:
            self._con.execute("ROLLBACK")
            raise
        self._con.execute("COMMIT")
        self._step("committed")

    @staticmethod
    def _prepare_items(items: Iterable[PoolItem]) -> list[tuple[str, str, str]]:
        rows: list[tuple[str, str, str]] = []
        seen: set[str] = set()
        for it in items:
            cid = str(it.case_id)
            if not cid:
                raise InputError(it.image_path, "empty case id")
            if cid in seen:
                raise InputError(it.image_path, f"case {cid!r} appears twice in the pool")
            seen.add(cid)
            digest = it.image_hash if it.image_hash is not None else file_sha256(it.image_path)
            rows.append((cid, str(it.image_path), digest))
        return rows

    def _insert_items(self, rows: Sequence[tuple[str, str, str]], now: str) -> int:
        con = self._con
        added = 0
        for cid, image_path, digest in rows:
            existing = con.execute("SELECT image_path, image_hash FROM items WHERE case_id = ?", (cid,)).fetchone()
            if existing is not None:
                if existing["image_hash"] != digest:
                    raise InputError(
                        image_path,
                        f"case {cid!r} is already in the pool with a different image "
                        f"({existing['image_path']}, sha256 {existing['image_hash'][:12]}…)",
                    )
                continue
            con.execute(
                "INSERT INTO items (case_id, image_path, image_hash, added_at) VALUES (?, ?, ?, ?)",
                (cid, image_path, digest, now),
            )
            self._step("item_inserted")
            con.execute("INSERT INTO events (at, case_id, kind) VALUES (?, ?, 'added')", (now, cid))
            self._step("event_logged")
            added += 1
        return added

    def _annotate_in_tx(
        self, case_id: str, label_path: str, digest: str, annotator: str, replace: bool, now: str
    ) -> AnnotateResult:
        con = self._con
        row = con.execute("SELECT * FROM items WHERE case_id = ?", (case_id,)).fetchone()
        if row is None:
            raise InputError(label_path, f"case {case_id!r} is not in the project pool ({self.path})")
        status = row["status"]
        if status == "unlabelled":
            raise InputError(
                label_path,
                f"case {case_id!r} has not been queried (status unlabelled); only queried cases can be annotated",
            )
        if status == "annotated":
            if row["label_hash"] == digest:
                return AnnotateResult(case_id, "unchanged", digest)
            if not replace:
                raise InputError(
                    label_path,
                    f"case {case_id!r} is already annotated with a different label "
                    f"(sha256 {row['label_hash'][:12]}…, this file {digest[:12]}…); "
                    "import with replace to record a re-annotation",
                )
        kind: Action = "reannotated" if status == "annotated" else "annotated"
        con.execute(
            "UPDATE items SET status = 'annotated', annotator = ?, annotated_at = ?, label_path = ?, label_hash = ?"
            " WHERE case_id = ?",
            (annotator, now, label_path, digest, case_id),
        )
        self._step("item_updated")
        con.execute(
            "INSERT INTO events (at, case_id, kind, round, annotator, label_path, label_hash, previous_hash)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (now, case_id, kind, row["round"], annotator, label_path, digest, row["label_hash"]),
        )
        self._step("event_logged")
        return AnnotateResult(case_id, kind, digest)

    # ---------------------------------------------------------------- writes

    def add_items(self, items: Iterable[PoolItem]) -> int:
        """Add new cases to the pool in one transaction; returns how many were new.

        A case id already present with the same image hash is skipped; with a different hash it is an
        ``InputError`` (nothing is added).
        """
        rows = self._prepare_items(items)
        with self._transaction():
            return self._insert_items(rows, now_iso())

    def query(self, case_ids: Iterable[str], round: int, *, strategy: str | None = None) -> int:
        """Mark ``case_ids`` as queried in ``round`` (one transaction); returns how many changed.

        Re-querying a case already queried in the same round is a no-op (so a re-run after a crash is
        safe). Unknown cases, cases queried in another round and annotated cases raise ``InputError``
        naming the case, and nothing is changed.
        """
        ids = [str(c) for c in case_ids]
        if isinstance(round, bool) or int(round) != round or round < 0:
            raise ValueError(f"round must be a non-negative integer, got {round!r}")
        round = int(round)
        if not ids:
            return 0
        now = now_iso()
        changed = 0
        with self._transaction() as con:
            con.execute(
                "INSERT OR IGNORE INTO rounds (round, strategy, created_at) VALUES (?, ?, ?)",
                (round, strategy, now),
            )
            for cid in ids:
                row = con.execute("SELECT status, round FROM items WHERE case_id = ?", (cid,)).fetchone()
                if row is None:
                    raise InputError(self.path, f"case {cid!r} is not in the project pool")
                if row["status"] == "queried" and row["round"] == round:
                    continue
                if row["status"] != "unlabelled":
                    raise InputError(
                        self.path,
                        f"case {cid!r} cannot be queried in round {round}: it is {row['status']} "
                        f"(round {row['round']})",
                    )
                con.execute(
                    "UPDATE items SET status = 'queried', round = ?, queried_at = ? WHERE case_id = ?",
                    (round, now, cid),
                )
                self._step("item_updated")
                con.execute(
                    "INSERT INTO events (at, case_id, kind, round) VALUES (?, ?, 'queried', ?)", (now, cid, round)
                )
                self._step("event_logged")
                changed += 1
        return changed

    def release(self, case_ids: Iterable[str]) -> int:
        """Return queried (not yet annotated) cases to the unlabelled pool, e.g. an annotator gave up.

        One transaction; returns how many changed. Unlabelled cases are skipped; unknown or annotated
        cases raise ``InputError``.
        """
        ids = [str(c) for c in case_ids]
        now = now_iso()
        changed = 0
        with self._transaction() as con:
            for cid in ids:
                row = con.execute("SELECT status, round FROM items WHERE case_id = ?", (cid,)).fetchone()
                if row is None:
                    raise InputError(self.path, f"case {cid!r} is not in the project pool")
                if row["status"] == "unlabelled":
                    continue
                if row["status"] == "annotated":
                    raise InputError(self.path, f"case {cid!r} is already annotated and cannot be released")
                con.execute(
                    "UPDATE items SET status = 'unlabelled', round = NULL, queried_at = NULL WHERE case_id = ?",
                    (cid,),
                )
                con.execute(
                    "INSERT INTO events (at, case_id, kind, round) VALUES (?, ?, 'released', ?)",
                    (now, cid, row["round"]),
                )
                changed += 1
        return changed

    def annotate(
        self, case_id: str, label_path: str | Path, annotator: str, *, replace: bool = False
    ) -> AnnotateResult:
        """Record ``label_path`` (hashed with SHA-256) as the label of ``case_id``, in one transaction.

        Same hash as recorded → ``"unchanged"`` (no-op). Different hash → ``InputError`` unless
        ``replace=True`` (then a ``reannotated`` event keeps the previous hash). Unknown case, unqueried
        case or unreadable file → ``InputError(label_path, ...)`` naming the case.
        """
        label = str(Path(label_path).resolve())
        digest = file_sha256(label_path)
        self._step("hashed")
        with self._transaction():
            return self._annotate_in_tx(str(case_id), label, digest, str(annotator), replace, now_iso())

    def annotate_many(
        self, records: Iterable[tuple[str, str | Path, str]], *, replace: bool = False
    ) -> list[AnnotateResult]:
        """Annotate several ``(case_id, label_path, annotator)`` at once: all accepted or none.

        Every file is hashed first; the first bad record raises ``InputError`` and nothing is recorded.
        """
        prepared = []
        for case_id, label_path, annotator in records:
            prepared.append((str(case_id), str(Path(label_path).resolve()), file_sha256(label_path), str(annotator)))
        self._step("hashed")
        now = now_iso()
        with self._transaction():
            return [self._annotate_in_tx(c, p, d, a, replace, now) for c, p, d, a in prepared]

    # ---------------------------------------------------------------- reads

    def status_counts(self) -> dict[str, int]:
        """``{"unlabelled": n, "queried": n, "annotated": n}`` (zeros included)."""
        counts = dict.fromkeys(STATUSES, 0)
        for row in self._con.execute("SELECT status, COUNT(*) AS n FROM items GROUP BY status"):
            counts[row["status"]] = row["n"]
        return counts

    def items(self, status: Status | None = None, *, round: int | None = None) -> list[LedgerItem]:
        """Cases (optionally of one status and/or round), ordered by case id."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        sql, args = "SELECT * FROM items WHERE 1 = 1", []
        if status is not None:
            sql += " AND status = ?"
            args.append(status)
        if round is not None:
            sql += " AND round = ?"
            args.append(round)
        rows = self._con.execute(sql + " ORDER BY case_id", args).fetchall()
        return [_item(r) for r in rows]

    def item(self, case_id: str) -> LedgerItem:
        """One case; ``KeyError`` if unknown."""
        row = self._con.execute("SELECT * FROM items WHERE case_id = ?", (str(case_id),)).fetchone()
        if row is None:
            raise KeyError(case_id)
        return _item(row)

    def rounds(self) -> list[RoundInfo]:
        """Every query round in order, with its current queried / annotated counts."""
        rows = self._con.execute(
            "SELECT r.round, r.strategy, r.created_at,"
            " SUM(CASE WHEN i.status = 'queried' THEN 1 ELSE 0 END) AS n_queried,"
            " SUM(CASE WHEN i.status = 'annotated' THEN 1 ELSE 0 END) AS n_annotated"
            " FROM rounds r LEFT JOIN items i ON i.round = r.round GROUP BY r.round ORDER BY r.round"
        ).fetchall()
        return [
            RoundInfo(r["round"], r["strategy"], r["created_at"], r["n_queried"] or 0, r["n_annotated"] or 0)
            for r in rows
        ]

    def next_round(self) -> int:
        """One more than the last round, 0 for a new project."""
        row = self._con.execute("SELECT MAX(round) FROM rounds").fetchone()
        return 0 if row[0] is None else int(row[0]) + 1

    def events(self, case_id: str | None = None) -> list[Event]:
        """The event log (optionally of one case), oldest first."""
        if case_id is None:
            rows = self._con.execute("SELECT * FROM events ORDER BY seq").fetchall()
        else:
            rows = self._con.execute("SELECT * FROM events WHERE case_id = ? ORDER BY seq", (case_id,)).fetchall()
        return [Event(**dict(r)) for r in rows]

    def check(self) -> list[str]:
        """Consistency problems between the items and the event log (empty list = consistent)."""
        con = self._con
        problems = [f"integrity_check: {r[0]}" for r in con.execute("PRAGMA integrity_check") if r[0] != "ok"]
        for r in con.execute("PRAGMA foreign_key_check"):
            problems.append(f"foreign key violation in {r[0]} row {r[1]}")
        rows = con.execute(
            "SELECT i.case_id, i.status, i.label_hash,"
            " (SELECT COUNT(*) FROM events e WHERE e.case_id = i.case_id AND e.kind = 'added') AS n_added,"
            " (SELECT COUNT(*) FROM events e WHERE e.case_id = i.case_id AND e.kind = 'annotated') AS n_annotated,"
            " (SELECT e.label_hash FROM events e WHERE e.case_id = i.case_id"
            "   AND e.kind IN ('annotated', 'reannotated') ORDER BY e.seq DESC LIMIT 1) AS last_hash"
            " FROM items i"
        ).fetchall()
        for r in rows:
            cid = r["case_id"]
            if r["n_added"] != 1:
                problems.append(f"case {cid!r}: {r['n_added']} 'added' events (expected 1)")
            expected = 1 if r["status"] == "annotated" else 0
            if r["n_annotated"] != expected:
                problems.append(f"case {cid!r} ({r['status']}): {r['n_annotated']} 'annotated' events")
            if r["status"] == "annotated" and r["last_hash"] != r["label_hash"]:
                problems.append(f"case {cid!r}: label hash differs from its last annotation event")
        return problems
