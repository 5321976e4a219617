"""Header sanity: a file whose header lies about its size is refused before any voxel is allocated."""

from __future__ import annotations

import gzip
import struct
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image as PILImage

from aemia.data.header import MAX_VOXELS_ENV, check_header, max_voxels
from aemia.data.io import read_image
from aemia.errors import InputError


def lying_nifti(path: Path, dims: tuple[int, int, int], gz: bool = True) -> Path:
    """A valid 4x4x4 NIfTI whose header then claims ``dims`` (the data stay 256 bytes)."""
    raw = bytearray(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)).to_bytes())
    struct.pack_into("<8h", raw, 40, 3, *dims, 1, 1, 1, 1)
    path.write_bytes(gzip.compress(bytes(raw)) if gz else bytes(raw))
    return path


@pytest.mark.parametrize("dims,words", [((1024, 1024, 1024), "more than the limit"),
                                        ((32767, 32767, 32767), "more than the limit"),
                                        ((64, 64, 64), "uncompressed data holds")])
def test_lying_nifti_header_is_refused(tmp_path: Path, dims: tuple[int, int, int], words: str) -> None:
    path = lying_nifti(tmp_path / "liar.nii.gz", dims)
    with pytest.raises(InputError) as info:
        read_image(path)
    assert info.value.path == str(path) and words in info.value.problem


def test_truncated_uncompressed_nifti_is_refused(tmp_path: Path) -> None:
    path = lying_nifti(tmp_path / "liar.nii", (16, 16, 16), gz=False)
    with pytest.raises(InputError, match="file holds"):
        read_image(path)


def test_honest_files_pass_and_limit_is_configurable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vol = tmp_path / "ok.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), np.eye(4)), vol)
    pic = tmp_path / "ok.png"
    PILImage.fromarray(np.zeros((20, 30), np.uint8)).save(pic)
    assert check_header(vol, "nifti").shape == (8, 8, 8)
    assert check_header(pic, "picture").shape == (30, 20)
    assert read_image(vol).array.shape == (1, 8, 8, 8)
    monkeypatch.setenv(MAX_VOXELS_ENV, "256")
    assert max_voxels() == 256
    for path in (vol, pic):
        with pytest.raises(InputError, match="more than the limit of 256"):
            read_image(path)
    monkeypatch.setenv(MAX_VOXELS_ENV, "1K")
    assert max_voxels() == 1024
    monkeypatch.setenv(MAX_VOXELS_ENV, "lots")
    with pytest.raises(InputError, match=MAX_VOXELS_ENV):
        max_voxels()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_data_check_on_lying_header_stays_small(tmp_path: Path) -> None:
    """The issue's case: `aemia data check` on a 1.4 KB file claiming 1024³ used to allocate 4.26 GB."""
    path = lying_nifti(tmp_path / "liar.nii.gz", (1024, 1024, 1024))
    # VmHWM (peak RSS of this program image): ru_maxrss would include the forking pytest process's own size
    code = ("import re, sys; from aemia.cli.main import main; rc = main(['data', 'check', sys.argv[1]]); "
            "print(rc, re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))")
    src = str(Path(__file__).resolve().parents[2] / "src")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                         env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}, timeout=120)
    rc, maxrss_kb = (int(v) for v in out.stdout.split()[-2:])
    assert rc == 2 and "Traceback" not in out.stderr
    assert str(path) in out.stdout and "more than the limit" in out.stdout
    assert maxrss_kb < 200 * 1024, maxrss_kb
