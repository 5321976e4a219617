"""The demo's synthetic-tumor stage writes a montage into the run and composes with the pruning extras."""

from __future__ import annotations

from pathlib import Path

import pytest

from aemia.cli.demo_stages import demo_extras
from aemia.evaluate.report import Figure


@pytest.mark.needs_data("totalsegmentator_example_ct")
def test_synth_stage_adds_montages_and_metrics(tmp_path: Path) -> None:
    calls = []

    def base(run_dir, cases):
        calls.append(run_dir)
        return {"pruning": [1]}, []

    metrics, figures = demo_extras(base, synth=True, active=False, device="cpu")(tmp_path, [])
    assert calls == [tmp_path] and metrics["pruning"] == [1]
    info = metrics["synthetic_tumors"]
    assert info["cases"] == 2 and info["tumors"] >= 2
    assert len(figures) == 2 and all(isinstance(f, Figure) and f.path.exists() for f in figures)
    assert sorted(p.name for p in (tmp_path / "synthetic_tumors" / "labels").iterdir()) == [
        "example_ct_synth000.nii.gz", "example_ct_synth001.nii.gz"]
