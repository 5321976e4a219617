"""``active import`` crash hygiene (issue 18 items 7, 8): staged labels, orphans of a killed import cleaned and
reported by the next import / ``active status``, a failed ledger commit leaves no file, and a 0/1 mask equals
the same mask saved as 0/255."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from aemia.active.importing import STAGING_PREFIX, clean_orphans
from aemia.active.importing import import_labels
from aemia.cli.main import main
from aemia.data.io import write_png


@pytest.fixture
def project(tmp_path: Path) -> dict:
    images, masks = tmp_path / "images", tmp_path / "labels"
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    for i in range(6):
        mask = (yy - 16) ** 2 + (xx - 10 - i) ** 2 < 36
        write_png(np.clip(rng.random((32, 32)) * 0.4 + 0.5 * mask, 0, 1), images / f"case{i}.png")
    proj = tmp_path / "P"
    assert main(["active", "init", "--images", str(images), "--project", str(proj), "--size", "32",
                 "--features", "4,8,16"]) == 0
    assert main(["active", "query", "--project", str(proj), "--strategy", "random", "--k", "3"]) == 0
    cases = [r["case"] for r in csv.DictReader((proj / "rounds" / "00" / "worklist.csv").open())]
    from PIL import Image as PILImage

    masks.mkdir()
    for c in cases:  # raw 0/1 values (write_png would store 0/255)
        PILImage.fromarray(((yy - 16) ** 2 + (xx - 16) ** 2 < 36).astype(np.uint8)).save(masks / f"{c}.png")
    return {"proj": proj, "labels": masks, "cases": cases}


def test_orphans_of_a_killed_import_are_cleaned_and_reported(project: dict, capsys: pytest.CaptureFixture) -> None:
    proj, labels_dir = project["proj"], project["proj"] / "labels"
    labels_dir.mkdir(exist_ok=True)
    # what a kill -9 leaves: a staging folder of a dead process, a zero-byte temp, an unrecorded label file
    (labels_dir / f"{STAGING_PREFIX}999999999-abc").mkdir()
    (labels_dir / f"{STAGING_PREFIX}999999999-abc" / "x.png").write_bytes(b"partial")
    (labels_dir / ".case0.png.tmp123.png").write_bytes(b"")
    (labels_dir / "case0.0123456789ab.png").write_bytes(b"never recorded")
    res = import_labels(proj, project["labels"], progress=False)
    assert sorted(res.annotated) == sorted(project["cases"])
    assert len(res.cleaned) == 3
    names = sorted(p.name for p in labels_dir.iterdir())
    assert len(names) == 3 and not any(n.startswith(".") or n == "case0.0123456789ab.png" for n in names)
    (labels_dir / "stray.png").write_bytes(b"x")
    capsys.readouterr()
    assert main(["active", "status", "--project", str(proj)]) == 0
    assert "removed 1 file(s)" in capsys.readouterr().out and not (labels_dir / "stray.png").exists()
    assert clean_orphans(proj) == []  # recorded labels are never touched


def test_a_failed_ledger_commit_leaves_no_label_file(project: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from aemia.active.ledger import Ledger

    def boom(self, records, replace=False):  # noqa: ANN001, ANN202
        raise OSError("disk full")

    monkeypatch.setattr(Ledger, "annotate_many", boom)
    with pytest.raises(OSError):
        import_labels(project["proj"], project["labels"], progress=False)
    assert list((project["proj"] / "labels").iterdir()) == []


def test_same_mask_as_0_255_counts_as_unchanged(project: dict) -> None:
    first = import_labels(project["proj"], project["labels"], progress=False)
    assert len(first.annotated) == 3
    case = project["cases"][0]
    path = project["labels"] / f"{case}.png"
    from PIL import Image as PILImage

    before = path.read_bytes()
    arr = np.array(PILImage.open(path))
    assert arr.max() == 1
    PILImage.fromarray((arr > 0).astype(np.uint8) * 255).save(path)  # the same mask saved as 0/255
    assert path.read_bytes() != before
    again = import_labels(project["proj"], project["labels"], progress=False)
    assert sorted(again.unchanged) == sorted(project["cases"]) and again.reannotated == []


KILL_CHILD = """
import os, signal, sys
from aemia.active.ledger import Ledger
from aemia.active.importing import import_labels

def die(self, records, replace=False):  # the process dies after the labels are moved in, before the commit
    os.kill(os.getpid(), signal.SIGKILL)

Ledger.annotate_many = die
import_labels(sys.argv[1], sys.argv[2], progress=False)
"""


def test_kill_9_during_import_then_a_clean_reimport(project: dict) -> None:
    import os
    import signal
    import subprocess
    import sys

    src = str(Path(__file__).resolve().parents[2] / "src")
    proc = subprocess.run([sys.executable, "-c", KILL_CHILD, str(project["proj"]), str(project["labels"])],
                          env={**os.environ, "PYTHONPATH": src}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    left = sorted(p.name for p in (project["proj"] / "labels").iterdir())
    assert len(left) >= 3  # label files the ledger does not list (the defect of issue 18 item 7)
    res = import_labels(project["proj"], project["labels"], progress=False)
    assert sorted(res.annotated) == sorted(project["cases"])
    assert len(res.cleaned) >= 3
    labels_dir = project["proj"] / "labels"
    assert len(list(labels_dir.iterdir())) == 3 and clean_orphans(project["proj"]) == []


def test_every_rejected_label_is_listed_on_its_own_line(project: dict, tmp_path: Path) -> None:
    from corpus import run_cli

    labels, cases = project["labels"], project["cases"]
    write_png(np.zeros((20, 24), np.uint8), labels / f"{cases[0]}.png")  # wrong size
    (labels / f"{cases[1]}.png").write_bytes(b"not a picture")
    (labels / "no_such_case.png").write_bytes((labels / f"{cases[2]}.png").read_bytes())
    res = run_cli(["active", "import", "--project", project["proj"], "--labels", labels], project["proj"])
    assert res.ok, res
    lines = res.out.splitlines()
    assert len(lines) == 3 and all(str(labels) in ln for ln in lines), lines
    assert "cannot identify image file)" in res.out and "file file" not in res.out  # the reader's text, cleaned
    assert "3 problems" in res.err_lines[0] and "nothing imported (of 4 labels)" in res.err_lines[0]
