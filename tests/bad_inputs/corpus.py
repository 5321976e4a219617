"""A corpus of small bad inputs, as a new user would produce them (issue 18), and a harness that runs a CLI call
and reports whether it kept the error contract: exit 2, one error line, no traceback, nothing written.

Used by ``tests/bad_inputs/test_corpus.py`` and ``benchmarks/bad_inputs.py``.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from aemia.data.image import Image
from aemia.data.io import write_nifti

SPACING = (1.0, 1.5, 2.0)


def _affine(spacing: tuple[float, ...] = SPACING) -> np.ndarray:
    return np.diag([*spacing, 1.0])


def volume(path: Path, shape: tuple[int, ...] = (8, 9, 6), spacing: tuple[float, ...] = SPACING,
           nan: bool = False, channels: int = 1, value: float | None = None) -> Path:
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(channels, *shape)).astype(np.float32) if value is None else \
        np.full((channels, *shape), value, np.float32)
    if nan:
        arr[0, 1, 1, 1] = np.nan
    return write_nifti(Image(arr, spacing, _affine(spacing)), path)


def label_map(path: Path, shape: tuple[int, ...] = (8, 9, 6), spacing: tuple[float, ...] = SPACING,
              extra_value: int | None = None) -> Path:
    lab = np.zeros(shape, np.uint8)
    lab[2:5, 3:6, 1:3] = 1
    if extra_value is not None:
        lab[6, 6, 4] = extra_value
    return write_nifti(Image(lab[None], spacing, _affine(spacing)), path)


def picture(path: Path, size: int = 32, rgb: bool = True, value: int | None = None) -> Path:
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 255, size=(size, size, 3) if rgb else (size, size), dtype=np.uint8)
    if value is not None:
        arr[:] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(arr).save(path)
    return path


def lying_nifti(path: Path, dims: tuple[int, int, int] = (1024, 1024, 1024)) -> Path:
    """A valid 4x4x4 NIfTI whose header claims ``dims`` (the issue's 1.4 KB file claiming 1024³)."""
    import nibabel as nib

    raw = bytearray(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)).to_bytes())
    struct.pack_into("<8h", raw, 40, 3, *dims, 1, 1, 1, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(bytes(raw)))
    return path


def msd(root: Path, n: int = 2, defect: str | None = None) -> Path:
    """A small MSD / nnU-Net folder; ``defect`` breaks case 0: label-value, spacing, shape, nan, 4d, no-json."""
    for i in range(n):
        cid = f"case_{i:03d}"
        bad = i == 0 and defect
        volume(root / "imagesTr" / f"{cid}_0000.nii.gz", nan=bad == "nan", channels=2 if bad == "4d" else 1)
        label_map(root / "labelsTr" / f"{cid}.nii.gz", shape=(8, 9, 5) if bad == "shape" else (8, 9, 6),
                  spacing=(1.0, 1.5, 2.5) if bad == "spacing" else SPACING,
                  extra_value=7 if bad == "label-value" else None)
    if defect != "no-json":
        (root / "dataset.json").write_text(json.dumps({
            "name": "Bad", "channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1},
            "numTraining": n, "file_ending": ".nii.gz"}))
    return root


BAD_FILES: dict[str, Callable[[Path], Path]] = {
    "empty.nii.gz": lambda d: _write(d / "empty.nii.gz", b""),
    "truncated.nii.gz": lambda d: _truncate(volume(d / "truncated.nii.gz", shape=(20, 20, 20))),
    "text.png": lambda d: _write(d / "text.png", b"not a picture"),
    "truncated.png": lambda d: _truncate(picture(d / "truncated.png", size=64)),
    "nan.nii.gz": lambda d: volume(d / "nan.nii.gz", nan=True),
    "4d.nii.gz": lambda d: volume(d / "4d.nii.gz", channels=3),
    "2d.nii.gz": lambda d: _write(d / "2d.nii.gz", _nifti_bytes(np.zeros((8, 8), np.float32))),
    "liar.nii.gz": lambda d: lying_nifti(d / "liar.nii.gz"),
    "liar_big.nii.gz": lambda d: lying_nifti(d / "liar_big.nii.gz", (32767, 32767, 32767)),
    "liar_small.nii.gz": lambda d: lying_nifti(d / "liar_small.nii.gz", (64, 64, 64)),
}

MSD_DEFECTS = ("label-value", "spacing", "shape", "nan", "4d", "no-json")


def _nifti_bytes(arr: np.ndarray) -> bytes:
    import nibabel as nib

    return gzip.compress(nib.Nifti1Image(arr, np.eye(4)).to_bytes())


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def fake_run(run: Path, dims: int = 2, in_channels: int = 3) -> Path:
    """A run folder with an untrained tiny U-Net (enough for predict's checks and a real prediction)."""
    from aemia.nets.checkpoint import save_checkpoint
    from aemia.nets.registry import create_model
    from aemia.runs import RunConfig, RunFolder

    model = create_model("unet", spatial_dims=dims, in_channels=in_channels, out_channels=2, features=[4, 8, 16])
    save_checkpoint(model, run / "checkpoints" / "best", {"task": "segmentation"})
    RunFolder(run).save_config(RunConfig(dataset="kvasir", model="unet", size=32 if dims == 2 else None,
                                         patch=[16, 16, 16] if dims == 3 else None))
    return run


@dataclass
class Outcome:
    """What one CLI call did, against the error contract."""

    rc: int
    out: str
    err_lines: list[str]
    wrote: list[str]

    @property
    def traceback(self) -> bool:
        return "Traceback" in self.out or any("Traceback" in ln for ln in self.err_lines)

    @property
    def ok(self) -> bool:
        """Exit 2, exactly one error line, no traceback, nothing written."""
        return self.rc == 2 and len(self.err_lines) == 1 and not self.traceback and not self.wrote


def listing(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def run_cli(argv: list[str], watch: Path) -> Outcome:
    """Run ``aemia ARGV`` in-process; ``wrote`` lists files created or changed under ``watch``."""
    from aemia.cli.main import main

    before = listing(watch)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except BaseException as exc:  # noqa: BLE001 - a crash is a result here
            import traceback

            traceback.print_exc(file=err)
            rc = getattr(exc, "code", 1) if isinstance(exc, SystemExit) else 1
    after = listing(watch)
    wrote = sorted(k for k, v in after.items() if before.get(k) != v)
    return Outcome(int(rc or 0), out.getvalue(), [ln for ln in err.getvalue().splitlines() if ln.strip()], wrote)
