"""The ``needs_data`` marker (tests/conftest.py): a real-data test is skipped, not failed, when the data folder or
one of its named data sets is absent, and runs when they are there."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

INNER = '''
import pytest

@pytest.mark.needs_data
def test_folder():
    assert False, "ran"

@pytest.mark.needs_data("kvasir_seg_256")
def test_named():
    assert False, "ran"
'''


def _run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, data: Path) -> dict[str, int]:
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makeini("[pytest]\nmarkers =\n    needs_data: real data\n")
    pytester.makepyfile(test_inner=INNER)
    monkeypatch.setenv("AEMIA_DATA", str(data))
    return pytester.runpytest_inprocess("-p", "no:cacheprovider").parseoutcomes()


def test_absent_folder_skips_every_marked_test(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _run(pytester, monkeypatch, pytester.path / "nonexistent") == {"skipped": 2}


def test_present_folder_runs_and_missing_data_set_skips(pytester: pytest.Pytester,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    data = pytester.mkdir("data")
    assert _run(pytester, monkeypatch, data) == {"failed": 1, "skipped": 1}  # test_folder ran (and failed)
    (data / "kvasir_seg_256").mkdir()
    assert _run(pytester, monkeypatch, data) == {"failed": 2}
