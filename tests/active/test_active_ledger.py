"""The annotation ledger: flow, bad labels, idempotency, crash safety (SIGKILL) and concurrent imports."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aemia.active.ledger import Ledger, PoolItem, file_sha256, ledger_path
from aemia.errors import InputError

WORKER = Path(__file__).with_name("_ledger_worker.py")
SRC = Path(__file__).resolve().parents[2] / "src"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _worker(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(WORKER), *args], capture_output=True, text=True, env=_env(), timeout=120, check=check
    )


def _cases(n: int) -> list[str]:
    return [f"case{i:03d}" for i in range(n)]


def _make_labels(folder: Path, cases: list[str], version: str = "v1") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for c in cases:
        (folder / f"{c}.txt").write_text(f"label of {c} {version}\n")
    return folder


def _new_project(tmp_path: Path, n: int, queried: int | None = None) -> tuple[Path, list[str]]:
    cases = _cases(n)
    db = tmp_path / "proj" / "ledger.sqlite"
    with Ledger.create(db, [PoolItem(c, f"/images/{c}.png", f"hash-{c}") for c in cases]) as ledger:
        ledger.query(cases[: n if queried is None else queried], 0, strategy="random")
    return db, cases


def _assert_consistent(db: Path) -> Ledger:
    ledger = Ledger.open(db)
    assert ledger.check() == []
    counts = ledger.status_counts()
    events = ledger.events()
    n_annotated_events = sum(e.kind == "annotated" for e in events)
    assert counts["annotated"] == n_annotated_events == len(ledger.items("annotated"))
    assert sum(counts.values()) == len(ledger.items())
    per_case = {}
    for e in events:
        if e.kind == "annotated":
            per_case[e.case_id] = per_case.get(e.case_id, 0) + 1
    assert all(v == 1 for v in per_case.values())
    return ledger


# ------------------------------------------------------------------------------------------ basic flow


def test_create_query_annotate_flow(tmp_path: Path) -> None:
    img = tmp_path / "img.png"
    img.write_bytes(b"pixels")
    items = [PoolItem("a", img), PoolItem("b", "/x/b.png", "hb"), PoolItem("c", "/x/c.png", "hc")]
    db = ledger_path(tmp_path / "proj")
    with Ledger.create(db, items) as ledger:
        assert ledger.item("a").image_hash == file_sha256(img)
        assert ledger.status_counts() == {"unlabelled": 3, "queried": 0, "annotated": 0}
        assert ledger.next_round() == 0
        assert ledger.query(["a", "b"], 0, strategy="acft") == 2
        assert ledger.query(["a", "b"], 0) == 0  # same round again: no-op
        assert ledger.next_round() == 1
        label = tmp_path / "a_label.txt"
        label.write_text("mask")
        r = ledger.annotate("a", label, "dr. x")
        assert (r.action, r.label_hash) == ("annotated", file_sha256(label))
        item = ledger.item("a")
        assert (item.status, item.annotator, item.round, item.label_path) == ("annotated", "dr. x", 0, str(label))
        assert item.annotated_at and item.queried_at and item.added_at
        assert ledger.status_counts() == {"unlabelled": 1, "queried": 1, "annotated": 1}
        assert [i.case_id for i in ledger.items("queried")] == ["b"]
        [rnd] = ledger.rounds()
        assert (rnd.round, rnd.strategy, rnd.n_queried, rnd.n_annotated) == (0, "acft", 1, 1)
        assert [e.kind for e in ledger.events("a")] == ["added", "queried", "annotated"]
        assert ledger.check() == []
    with Ledger.open(tmp_path / "proj") as again:  # a project folder opens its ledger
        assert again.status_counts()["annotated"] == 1


def test_create_refuses_existing_and_duplicates(tmp_path: Path) -> None:
    db, _ = _new_project(tmp_path, 2)
    with pytest.raises(InputError, match="already exists"):
        Ledger.create(db, [PoolItem("z", "/z.png", "hz")])
    with pytest.raises(InputError, match="'d'.*twice"):
        Ledger.create(tmp_path / "other.sqlite", [PoolItem("d", "/d1", "h1"), PoolItem("d", "/d2", "h2")])
    with pytest.raises(InputError, match="no ledger"):
        Ledger.open(tmp_path / "missing.sqlite")
    (tmp_path / "junk.sqlite").write_text("not a database, just text" * 100)
    with pytest.raises(InputError):
        Ledger.open(tmp_path / "junk.sqlite")
    with pytest.raises(InputError, match="file not found"):
        Ledger.create(tmp_path / "p2.sqlite", [PoolItem("m", tmp_path / "missing.png")])


def test_add_items(tmp_path: Path) -> None:
    db, _ = _new_project(tmp_path, 2)
    with Ledger.open(db) as ledger:
        same = PoolItem("case000", "/images/case000.png", "hash-case000")
        assert ledger.add_items([same, PoolItem("n", "/n", "hn")]) == 1
        with pytest.raises(InputError, match="case000.*different image"):
            ledger.add_items([PoolItem("case000", "/other.png", "other"), PoolItem("n2", "/n2", "hn2")])
        assert len(ledger.items()) == 3  # nothing of the failed batch was added
        assert ledger.check() == []


# ------------------------------------------------------------------------------------------ bad labels


def test_rejects_unknown_and_unqueried_cases_naming_them(tmp_path: Path) -> None:
    db, cases = _new_project(tmp_path, 4, queried=2)
    labels = _make_labels(tmp_path / "labels", ["ghost", cases[3]])
    with Ledger.open(db) as ledger:
        with pytest.raises(InputError) as e:
            ledger.annotate("ghost", labels / "ghost.txt", "x")
        assert "'ghost'" in str(e.value) and "not in the project pool" in e.value.problem
        assert e.value.path == str((labels / "ghost.txt").resolve())
        with pytest.raises(InputError) as e:
            ledger.annotate(cases[3], labels / f"{cases[3]}.txt", "x")
        assert repr(cases[3]) in str(e.value) and "not been queried" in e.value.problem
        with pytest.raises(InputError, match="file not found"):
            ledger.annotate(cases[0], tmp_path / "nowhere.txt", "x")
        # a batch with one bad record records nothing
        good = _make_labels(tmp_path / "good", cases[:2])
        with pytest.raises(InputError, match="ghost"):
            ledger.annotate_many(
                [(cases[0], good / f"{cases[0]}.txt", "x"), ("ghost", labels / "ghost.txt", "x")]
            )
        assert ledger.status_counts()["annotated"] == 0
        assert ledger.check() == []


def test_query_errors_name_the_case(tmp_path: Path) -> None:
    db, cases = _new_project(tmp_path, 4, queried=2)
    with Ledger.open(db) as ledger:
        with pytest.raises(InputError, match="'nope'"):
            ledger.query(["nope"], 1)
        with pytest.raises(InputError, match=f"'{cases[0]}'.*queried"):
            ledger.query([cases[2], cases[0]], 1)  # cases[0] is queried in round 0
        assert ledger.item(cases[2]).status == "unlabelled"  # the batch was all-or-nothing
        assert [r.round for r in ledger.rounds()] == [0]
        assert ledger.release([cases[0]]) == 1
        assert ledger.item(cases[0]).status == "unlabelled" and ledger.item(cases[0]).round is None
        assert ledger.query([cases[0]], 1) == 1
        assert ledger.check() == []


def test_reimport_is_idempotent_and_reannotation_is_explicit(tmp_path: Path) -> None:
    db, cases = _new_project(tmp_path, 3)
    labels = _make_labels(tmp_path / "labels", cases)
    copy = _make_labels(tmp_path / "copy", cases)  # same bytes, other path
    changed = _make_labels(tmp_path / "changed", cases, version="v2")
    c = cases[0]
    with Ledger.open(db) as ledger:
        assert ledger.annotate(c, labels / f"{c}.txt", "a").action == "annotated"
        assert ledger.annotate(c, labels / f"{c}.txt", "a").action == "unchanged"
        assert ledger.annotate(c, copy / f"{c}.txt", "b").action == "unchanged"
        assert [r.action for r in ledger.annotate_many([(c, labels / f"{c}.txt", "a")])] == ["unchanged"]
        assert [e.kind for e in ledger.events(c)] == ["added", "queried", "annotated"]
        with pytest.raises(InputError) as e:
            ledger.annotate(c, changed / f"{c}.txt", "b")
        assert repr(c) in str(e.value) and "different label" in e.value.problem
        assert ledger.item(c).label_hash == file_sha256(labels / f"{c}.txt")
        r = ledger.annotate(c, changed / f"{c}.txt", "b", replace=True)
        assert r.action == "reannotated"
        ev = ledger.events(c)[-1]
        assert (ev.kind, ev.previous_hash, ev.label_hash) == (
            "reannotated", file_sha256(labels / f"{c}.txt"), file_sha256(changed / f"{c}.txt"))
        assert ledger.item(c).annotator == "b"
        assert ledger.status_counts()["annotated"] == 1
        assert ledger.check() == []


# ------------------------------------------------------------------------------------------ crashes


ANNOTATE_STEPS = ["hashed", "begun", "item_updated", "event_logged", "before_commit", "committed"]


@pytest.mark.parametrize("step", ANNOTATE_STEPS)
def test_kill_between_any_two_steps_of_an_import(tmp_path: Path, step: str) -> None:
    db, cases = _new_project(tmp_path, 5)
    labels = _make_labels(tmp_path / "labels", cases)
    proc = _worker(str(db), "annotate", "--labels", str(labels), "--crash-step", step, "--crash-nth", "3")
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    ledger = _assert_consistent(db)
    # labels 1-2 committed; label 3 committed only if the kill came after its COMMIT
    expected = 3 if step == "committed" else 2
    assert ledger.status_counts() == {"unlabelled": 0, "queried": 5 - expected, "annotated": expected}
    # finishing the import afterwards loses nothing and duplicates nothing
    actions = [ledger.annotate(c, labels / f"{c}.txt", "worker").action for c in cases]
    assert actions.count("unchanged") == expected and actions.count("annotated") == 5 - expected
    ledger.close()
    assert _assert_consistent(db).status_counts()["annotated"] == 5


@pytest.mark.parametrize("step", ["begun", "item_updated", "event_logged", "before_commit"])
def test_kill_inside_a_batch_import_records_nothing(tmp_path: Path, step: str) -> None:
    db, cases = _new_project(tmp_path, 4)
    labels = _make_labels(tmp_path / "labels", cases)
    proc = _worker(str(db), "annotate", "--labels", str(labels), "--many", "--crash-step", step, "--crash-nth", "1")
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert _assert_consistent(db).status_counts()["annotated"] == 0


@pytest.mark.parametrize("step", ["begun", "item_updated", "event_logged", "before_commit"])
def test_kill_during_query_and_create(tmp_path: Path, step: str) -> None:
    db, cases = _new_project(tmp_path, 4, queried=0)
    proc = _worker(str(db), "query", "--cases", ",".join(cases[:3]), "--round", "1", "--crash-step", step)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    ledger = _assert_consistent(db)
    assert ledger.status_counts()["queried"] == 0 and ledger.rounds() == []  # the round row rolled back too
    ledger.close()

    fresh = tmp_path / "fresh.sqlite"
    create_step = {"begun": "schema", "item_updated": "item_inserted"}.get(step, step)
    proc = _worker(str(fresh), "create", "--cases", "a,b,c", "--crash-step", create_step, "--crash-nth", "1")
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with pytest.raises(InputError, match="never initialised"):
        Ledger.open(fresh)
    with Ledger.create(fresh, [PoolItem("a", "/a", "ha")]) as again:  # an interrupted create can be redone
        assert again.status_counts()["unlabelled"] == 1 and again.check() == []


def test_sigkill_at_a_random_moment_of_a_long_import(tmp_path: Path) -> None:
    db, cases = _new_project(tmp_path, 120)
    labels = _make_labels(tmp_path / "labels", cases)
    for delay_lines in (5, 40):
        proc = subprocess.Popen(
            [sys.executable, str(WORKER), str(db), "annotate", "--labels", str(labels)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
        )
        assert proc.stdout is not None
        reported = []
        for line in proc.stdout:
            reported.append(json.loads(line))
            if sum(r.get("action") == "annotated" for r in reported) >= delay_lines:
                break
        proc.send_signal(signal.SIGKILL)  # mid-import, wherever it happens to be
        proc.wait(timeout=60)
        proc.stdout.close()
        proc.stderr.close()  # type: ignore[union-attr]
        ledger = _assert_consistent(db)
        done = ledger.status_counts()["annotated"]
        assert done >= sum(r.get("action") == "annotated" for r in reported)  # nothing reported is lost
        assert done < len(cases) or delay_lines == 40
        ledger.close()
    ledger = Ledger.open(db)
    for c in cases:
        ledger.annotate(c, labels / f"{c}.txt", "worker")
    ledger.close()
    assert _assert_consistent(db).status_counts() == {"unlabelled": 0, "queried": 0, "annotated": 120}


# ------------------------------------------------------------------------------------------ concurrency


def test_concurrent_imports_serialise(tmp_path: Path) -> None:
    db, cases = _new_project(tmp_path, 100)
    labels = _make_labels(tmp_path / "labels", cases)
    start = f"{time.time() + 1.5:.3f}"
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(db), "annotate", "--labels", str(labels), "--annotator", name,
             "--start-at", start, *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
        )
        for name, extra in (("forward", []), ("backward", ["--reverse"]))
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err
    results = [json.loads(line) for out, _ in outs for line in out.splitlines()]
    assert not [r for r in results if "error" in r]
    assert len(results) == 200
    firsts = [r["case"] for r in results if r["action"] == "annotated"]
    assert sorted(firsts) == cases  # every case annotated exactly once, by whichever process came first
    ledger = _assert_consistent(db)
    assert ledger.status_counts()["annotated"] == 100
    by = {i.annotator for i in ledger.items("annotated")}
    assert by <= {"forward", "backward"}


def test_a_writer_waits_for_the_lock_then_proceeds(tmp_path: Path) -> None:
    db, cases = _new_project(tmp_path, 2)
    labels = _make_labels(tmp_path / "labels", cases)
    holder = sqlite3.connect(str(db), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process is in the middle of a write
    try:
        quick = _worker(str(db), "annotate", "--labels", str(labels), "--timeout", "0.2")
        assert quick.returncode != 0 and "locked" in quick.stderr
        waiting = subprocess.Popen(
            [sys.executable, str(WORKER), str(db), "annotate", "--labels", str(labels), "--timeout", "60"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
        )
        time.sleep(1.0)
        assert waiting.poll() is None  # blocked on the lock, not failed
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, err
    assert [json.loads(line)["action"] for line in out.splitlines()] == ["annotated", "annotated"]
    assert _assert_consistent(db).status_counts()["annotated"] == 2
