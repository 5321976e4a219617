"""The review app over a 3D project made by ``aemia active init`` (not a hand-built one): the query round's
worklist order, three views of each volume, the trained round model's prediction as the starting mask, and a save
that lands in the ledger with its effort row."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

from aemia.active.ledger import Ledger
from aemia.cli.main import main
from aemia.data.image import Image
from aemia.data.io import write_nifti
from aemia.serve.app import ServeConfig, create_app

CLIENT = {"X-Aemia-Client": "1"}


def _pool(folder: Path, n: int = 4, shape: tuple[int, int, int] = (24, 20, 16)) -> Path:
    """CT-like volumes (air around a ~60 HU ball) of a non-cubic shape, so axis mix-ups show."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    grid = np.indices(shape)
    for i in range(n):
        centre = rng.integers(6, np.array(shape) - 6)
        ball = sum((g - c) ** 2 for g, c in zip(grid, centre)) < 16
        ct = -1000.0 + 100.0 * rng.random(shape) + 1060.0 * ball
        write_nifti(Image(ct[None].astype(np.float32), (2.0, 2.0, 2.0), np.diag([2.0, 2.0, 2.0, 1.0])),
                    folder / f"v{i}.nii.gz")
    return folder


def test_serve_a_3d_project_made_by_active_init(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    images, proj = _pool(tmp_path / "images"), tmp_path / "P"
    tiny = ["--features", "4,8,16", "--patch", "16,16,16"]
    assert main(["active", "init", "--images", str(images), "--project", str(proj), *tiny]) == 0
    assert main(["active", "query", "--project", str(proj), "--strategy", "entropy", "--k", "3"]) == 0
    ranked = [r.split(",")[0] for r in (proj / "rounds" / "00" / "worklist.csv").read_text().splitlines()[1:]]

    c = TestClient(create_app(ServeConfig(project=proj)), base_url="http://127.0.0.1")
    work = c.get("/api/worklist").json()
    assert [w["case"] for w in work][: len(ranked)] == ranked  # the query round's order
    case = ranked[0]
    meta = c.get(f"/api/cases/{case}/meta").json()
    assert meta["is3d"] and sorted(meta["dims"]) == [16, 20, 24]
    assert set(meta["views"]) == {"axial", "coronal", "sagittal"}
    for view, info in meta["views"].items():
        r = c.get(f"/api/cases/{case}/slice", params={"view": view, "index": info["slices"] // 2})
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"

    r = c.get(f"/api/cases/{case}/mask", params={"which": "start"})
    assert r.status_code == 200, r.text
    start, version = np.frombuffer(r.content, np.uint8), int(r.headers["X-Case-Version"])
    assert start.size == 24 * 20 * 16
    edited = start.copy()
    edited[:50] = 1
    params = {"action": "saved", "base_version": version, "annotator": "rad", "seconds": 12.0,
              "started_at": "2026-12-03T10:00:00Z", "encoding": "gzip"}
    r = c.post(f"/api/cases/{case}/save", params=params, content=gzip.compress(edited.tobytes()), headers=CLIENT)
    assert r.status_code == 200, r.text
    with Ledger.open(proj) as led:
        effort = led.efforts(case)[-1]
        assert (effort.annotator, effort.seconds) == ("rad", 12.0)
        assert effort.changed_pixels == int(np.count_nonzero(edited != start)) > 0
        assert led.item(case).status == "annotated"
    assert json.loads((proj / "project.json").read_text())["dims"] == 3
