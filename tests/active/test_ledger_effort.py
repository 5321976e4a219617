"""Effort rows and optimistic concurrency in the ledger (schema 2): what the review app records per save."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from aemia.active.ledger import SCHEMA_VERSION, Ledger, PoolItem
from aemia.active.ledger_effort import StaleVersionError
from aemia.errors import InputError


def _ledger(tmp_path: Path) -> Ledger:
    led = Ledger.create(tmp_path / "p" / "ledger.sqlite", [PoolItem(c, f"/img/{c}.png", f"h{c}") for c in ("a", "b", "c")])
    led.query(["a", "b"], 0, strategy="random")
    return led


def _label(tmp_path: Path, name: str, content: bytes) -> Path:
    f = tmp_path / name
    f.write_bytes(content)
    return f


def test_save_records_label_and_effort_in_one_row(tmp_path: Path) -> None:
    with _ledger(tmp_path) as led:
        v = led.case_version("a")
        e = led.record_effort("a", "saved", "ann", base_version=v, seconds=12.5, started_at="2026-01-01T00:00:00Z",
                              label_path=_label(tmp_path, "a.png", b"m1"), changed_pixels=40, total_pixels=1000)
        assert e.version == led.case_version("a") > v
        item = led.item("a")
        assert item.status == "annotated" and item.annotator == "ann" and item.label_hash == e.label_hash
        ce = led.case_efforts()["a"]
        assert (ce.state, ce.seconds, ce.changed_pixels, ce.annotator) == ("in review", 12.5, 40, "ann")
        assert led.case_efforts()["b"].state == "to annotate"
        # a second save replaces the label (reannotated), seconds add up, changed pixels are the latest save's
        led.record_effort("a", "accepted", "ann2", base_version=e.version, seconds=2.0,
                          label_path=_label(tmp_path, "a2.png", b"m2"), changed_pixels=5, total_pixels=1000)
        ce = led.case_efforts()["a"]
        assert (ce.state, ce.seconds, ce.changed_pixels, ce.n_saves) == ("accepted", 14.5, 5, 2)
        assert [ev.kind for ev in led.events("a")][-2:] == ["annotated", "reannotated"]
        assert led.check() == []


def test_stale_save_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    with _ledger(tmp_path) as led:
        v = led.case_version("a")
        led.record_effort("a", "saved", "tab1", base_version=v, seconds=1, label_path=_label(tmp_path, "x", b"1"),
                          changed_pixels=1, total_pixels=4)
        before = (led.item("a"), led.efforts())
        with pytest.raises(StaleVersionError, match="changed by tab1 after you opened it"):
            led.record_effort("a", "saved", "tab2", base_version=v, seconds=1,
                              label_path=_label(tmp_path, "y", b"2"), changed_pixels=2, total_pixels=4)
        assert (led.item("a"), led.efforts()) == before


def test_reject_flag_and_bad_values(tmp_path: Path) -> None:
    with _ledger(tmp_path) as led:
        led.record_effort("b", "flagged", "ann", base_version=led.case_version("b"), seconds=3, comment="blurry")
        ce = led.case_efforts()["b"]
        assert (ce.state, ce.comment) == ("flagged", "blurry") and led.item("b").status == "queried"
        with pytest.raises(InputError, match="needs label"):
            led.record_effort("b", "saved", "ann", base_version=led.case_version("b"), seconds=1)
        with pytest.raises(InputError, match="seconds"):
            led.record_effort("b", "rejected", "ann", base_version=led.case_version("b"), seconds=-1)
        with pytest.raises(InputError, match="not been queried"):
            led.record_effort("c", "saved", "ann", base_version=led.case_version("c"), seconds=1,
                              label_path=_label(tmp_path, "c", b"c"))
        with pytest.raises(InputError, match="not in the project pool"):
            led.case_version("../etc")


def test_crash_between_label_and_effort_rolls_back_both(tmp_path: Path) -> None:
    with _ledger(tmp_path) as led:
        def hook(step: str) -> None:
            if step == "effort_logged":
                raise RuntimeError("killed")

        led._crash_hook = hook
        with pytest.raises(RuntimeError):
            led.record_effort("a", "saved", "ann", base_version=led.case_version("a"), seconds=1,
                              label_path=_label(tmp_path, "a", b"a"), changed_pixels=1, total_pixels=1)
        led._crash_hook = None
        assert led.item("a").status == "queried" and led.efforts() == []


def test_version_1_ledger_is_migrated_on_open(tmp_path: Path) -> None:
    _ledger(tmp_path).close()
    db = tmp_path / "p" / "ledger.sqlite"
    con = sqlite3.connect(db)
    con.execute("DROP TABLE efforts")
    con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with Ledger.open(db) as led:
        assert led.efforts() == [] and led.case_efforts()["a"].state == "to annotate"
    con = sqlite3.connect(db)
    assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)


def test_effort_curve_plots_quality_against_human_time(tmp_path: Path) -> None:
    from aemia.active.effort import plot_effort_curve

    curve = [{"round": 0, "human_seconds": 0.0, "value": 0.4, "metric": "dice"},
             {"round": 1, "human_seconds": 600.0, "value": 0.6, "metric": "dice"}]
    assert plot_effort_curve(curve[:1], tmp_path / "none.png", "t") is None  # no timed labels: no figure
    out = plot_effort_curve(curve, tmp_path / "effort.png", "t")
    assert out is not None and out.stat().st_size > 1000
