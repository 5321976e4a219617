"""Small 2D and 3D projects for the review app, built through the project and ledger APIs, and a live server."""

from __future__ import annotations

import csv
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from aemia.active.ledger import Ledger, PoolItem
from aemia.active.project import PROJECT_FILE, ProjectConfig, init_project, utc_now
from aemia.utils.io import write_json_atomic


def _disc(shape: tuple[int, ...], centre: tuple[float, ...], radius: float) -> np.ndarray:
    grid = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius ** 2


def make_2d_project(root: Path, n: int = 4) -> Path:
    """``n`` 64×48 grey pictures with a bright disc; round 0 queries 3 of them (random cold start); case 'img1'
    has an AI label (its disc, shifted) as the starting mask."""
    from PIL import Image as PILImage

    from aemia.active.query import query_round

    images = root / "pics"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        a = rng.integers(20, 60, (48, 64)).astype(np.uint8)
        a[_disc((48, 64), (24, 20 + 6 * i), 9)] = 200
        PILImage.fromarray(a).save(images / f"img{i}.png")
    proj = init_project(root / "proj2d", images, size=32, features=[8, 16], progress=False)
    res = query_round(proj, "random", k=3, progress=False)
    ai = res.cases[0]
    pred = _disc((48, 64), (24, 22), 9).astype(np.uint8)
    (proj.root / "predictions").mkdir()
    PILImage.fromarray(pred * 255).save(proj.root / "predictions" / f"{ai}.png")
    return proj.root


def make_3d_project(root: Path, n: int = 3, shape: tuple[int, int, int] = (40, 32, 24)) -> Path:
    """``n`` small CT-like NIfTI volumes (HU, spacing 1×1×2 mm) in a project written through ProjectConfig and the
    ledger (``aemia active init`` takes 3D volumes only once issue 15 part 5 lands), all queried in round 0,
    with AI labels in P/predictions/ (ct1 stored in LPS voxel order, the others RAS), heat maps in P/attention/ and a priority.csv ranking them in reverse order."""
    import nibabel as nib

    images = root / "vols"
    images.mkdir(parents=True)
    proj = root / "proj3d"
    (proj / "predictions").mkdir(parents=True)
    (proj / "attention").mkdir()
    cases = [f"ct{i}" for i in range(n)]
    for i, c in enumerate(cases):
        affine = np.diag([-1.0, -1.0, 2.0, 1.0] if i == 1 else [1.0, 1.0, 2.0, 1.0])  # ct1 stored LPS, the rest RAS
        vol = np.full(shape, -1000, np.int16)
        body = _disc(shape, tuple(s / 2 for s in shape), min(shape) / 2 - 1)
        vol[body] = 40
        organ = _disc(shape, (shape[0] / 2 + 3, shape[1] / 2, shape[2] / 2), 6 + i)
        vol[organ] = 120
        nib.save(nib.Nifti1Image(vol, affine), images / f"{c}.nii.gz")
        nib.save(nib.Nifti1Image(organ.astype(np.uint8), affine), proj / "predictions" / f"{c}.nii.gz")
        heat = np.zeros(shape, np.uint8)  # a 5-voxel cube crossing the middle slice of every view
        heat[tuple(slice(s // 2 - 2, s // 2 + 3) for s in shape)] = 255
        nib.save(nib.Nifti1Image(heat, affine), proj / "attention" / f"{c}_heat.nii.gz")
    cfg = ProjectConfig(task="segmentation", size=32, classes=["background", "liver"], in_channels=1,
                        images=str(images), created_at=utc_now())
    write_json_atomic(proj / PROJECT_FILE, asdict(cfg))
    with Ledger.create(proj / "ledger.sqlite", [PoolItem(c, str(images / f"{c}.nii.gz")) for c in cases]) as led:
        led.query(cases, 0, strategy="review prioritize")
    with open(proj / "priority.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["rank", "case", "attention_mm3"])
        for rank, c in enumerate(reversed(cases), start=1):
            w.writerow([rank, c, 1000.0 / rank])
    return proj


@pytest.fixture
def project_2d(tmp_path: Path) -> Path:
    return make_2d_project(tmp_path / "p2")


@pytest.fixture
def project_3d(tmp_path: Path) -> Path:
    return make_3d_project(tmp_path / "p3")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """uvicorn serving an app in a background thread on a free port."""

    def __init__(self, app: object, host: str = "127.0.0.1") -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"  # also when bound to every interface (0.0.0.0)
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        for _ in range(500):  # started is set once the socket listens
            if self.server.started:
                return self
            time.sleep(0.01)
        raise RuntimeError("uvicorn did not start")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def live_server() -> Iterator[type[LiveServer]]:
    yield LiveServer
