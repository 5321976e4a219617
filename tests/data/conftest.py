"""Shared fixtures for the data-layer tests: real data root (or skip) and synthetic MSD folders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from aemia.data.image import Image
from aemia.data.io import write_nifti


def _real_root() -> Path | None:
    env = os.environ.get("AEMIA_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"
    return root if (root / "README.md").is_file() else None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real shared data folder; tests using it are skipped when it is absent."""
    root = _real_root()
    if root is None:
        pytest.skip("real data root not found (set AEMIA_DATA or place data in <repo>/../shared/data)")
    return root


def affine_for(spacing: tuple[float, float, float]) -> np.ndarray:
    aff = np.diag([*spacing, 1.0])
    aff[:3, 3] = (-10.0, 5.0, 2.5)
    return aff


@pytest.fixture
def make_msd(tmp_path: Path):
    """Build a small valid MSD/nnU-Net folder with ``n`` cases; returns its path."""

    def build(n: int = 3, name: str = "Dataset001_Test") -> Path:
        root = tmp_path / name
        rng = np.random.default_rng(0)
        for i in range(n):
            cid = f"case_{i:03d}"
            img = Image(rng.normal(size=(1, 8, 9, 5)).astype(np.float32), (1.0, 1.5, 2.0), affine_for((1.0, 1.5, 2.0)))
            lab = np.zeros((8, 9, 5), np.uint8)
            lab[2:5, 3:6, 1:3] = 1
            lab[5, 5, 3] = 2
            write_nifti(img, root / "imagesTr" / f"{cid}_0000.nii.gz")
            write_nifti(lab, root / "labelsTr" / f"{cid}.nii.gz", like=img)
        (root / "dataset.json").write_text(
            '{"name": "Test", "channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumour": 2},'
            f' "numTraining": {n}, "file_ending": ".nii.gz"}}'
        )
        return root

    return build


@pytest.fixture
def snapshot():
    """Function listing every file under a folder with size and mtime (to prove a command wrote nothing)."""

    def take(folder: Path) -> dict[str, tuple[int, float]]:
        return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
                for p in folder.rglob("*")}

    return take
