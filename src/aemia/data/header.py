"""Header sanity: what a file declares about its size is checked before any voxel is allocated.

A NIfTI header is 348 bytes that anyone can edit; a 1.4 KB file claiming 1024³ float32 voxels would make a reader
allocate 4 GB before finding out the data is missing. :func:`check_header` reads only the header and refuses

* a declared voxel count above :func:`max_voxels` (``AEMIA_MAX_VOXELS``, default 512 Mi voxels: a float32
  volume of 2 GiB, a comfortable size for a 24 GB machine), and
* a NIfTI whose payload (``.nii``: file size after ``vox_offset``; ``.nii.gz``: the uncompressed size) is shorter
  than the header's shape × data type says,

each as one :class:`aemia.errors.InputError` naming the file. NRRD/MetaImage and pictures get the voxel limit
(their readers know the size from the header without decoding).
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aemia.errors import InputError

#: Environment variable overriding the voxel limit (an integer; suffixes K, M, G = 2**10, 2**20, 2**30).
MAX_VOXELS_ENV = "AEMIA_MAX_VOXELS"
DEFAULT_MAX_VOXELS = 512 * 2**20
_CORRUPT = "cannot read: file is truncated or corrupt"


def _short(exc: BaseException, path: Path) -> str:
    """The last line of an exception's text without the file name (the error names the file already)."""
    lines = [ln for ln in str(exc).replace(str(path), "the file").strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:160]


@dataclass(frozen=True)
class Header:
    """What a file declares, read without its voxel data."""

    path: str
    kind: str
    shape: tuple[int, ...]  # as stored (NIfTI: x, y, z[, t, c]; ITK: x, y[, z]; picture: w, h)
    components: int  # channels per voxel (ITK vector pixels, picture bands); 1 for NIfTI (channels are an axis)
    itemsize: int
    spacing: tuple[float, ...]

    @property
    def voxels(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.components if self.shape else 0


def max_voxels() -> int:
    """The largest declared volume (voxels × components) aemia will read: ``AEMIA_MAX_VOXELS`` or 512 Mi."""
    text = os.environ.get(MAX_VOXELS_ENV, "").strip().upper()
    if not text:
        return DEFAULT_MAX_VOXELS
    scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1], 1)
    try:
        value = int(float(text[:-1] if scale > 1 else text) * scale)
    except ValueError:
        raise InputError(None, f"{MAX_VOXELS_ENV} must be a number of voxels such as 536870912 or 512M, "
                               f"got {text!r}") from None
    if value < 1:
        raise InputError(None, f"{MAX_VOXELS_ENV} must be >= 1, got {text!r}")
    return value


def _gzip_size(path: Path, stop_after: int) -> int:
    """Uncompressed size of a gzip file, counting at most ``stop_after`` bytes (streams; little memory)."""
    with open(path, "rb") as fh:
        fh.seek(-4, os.SEEK_END)
        isize = int.from_bytes(fh.read(4), "little")  # size mod 2**32 of the last member
    if isize == stop_after % 2**32:
        return stop_after
    total = 0
    try:
        with gzip.open(path, "rb") as fh:
            while total < stop_after:
                chunk = fh.read(min(1 << 16, stop_after - total))
                if not chunk:
                    break
                total += len(chunk)
    except (OSError, EOFError, zlib.error):
        pass  # a truncated stream: ``total`` is what could be decompressed
    return total


def _nifti_header(path: Path) -> Header:
    import nibabel as nib

    try:
        img = nib.load(str(path))  # reads the header only; the data stay on disk behind a proxy
        hdr = img.header
        shape = tuple(int(s) for s in hdr.get_data_shape())
        itemsize = int(np.dtype(hdr.get_data_dtype()).itemsize)
        offset = int(hdr.get_data_offset())
        zooms = tuple(float(z) for z in hdr.get_zooms())
    except Exception as exc:  # nibabel raises many types for a broken header
        raise InputError(path, f"{_CORRUPT} ({type(exc).__name__}: {_short(exc, path)})") from exc
    head = Header(str(path), "nifti", shape, 1, itemsize, zooms)
    _check_limit(path, head)
    need = offset + head.voxels * itemsize
    if path.name.lower().endswith(".gz"):
        have = _gzip_size(path, need)
        where = "uncompressed data"
    else:
        have = path.stat().st_size
        where = "file"
    if have < need:
        raise InputError(path, f"{_CORRUPT} (header declares {'x'.join(map(str, shape))} voxels of {itemsize} "
                               f"byte(s), {need:,} bytes with the header, but the {where} holds {have:,})")
    return head


def _itk_header(path: Path) -> Header:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except Exception as exc:
        raise InputError(path, f"{_CORRUPT} ({_short(exc, path)})") from exc
    shape = tuple(int(s) for s in reader.GetSize())
    head = Header(str(path), "itk", shape, int(reader.GetNumberOfComponents()), 1,
                  tuple(float(s) for s in reader.GetSpacing()))
    _check_limit(path, head)
    return head


def _picture_header(path: Path) -> Header:
    import warnings

    from PIL import Image as PILImage

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's own decompression-bomb warning: we apply our limit below
            with PILImage.open(path) as pic:  # lazy: reads the header only
                shape, bands = tuple(int(s) for s in pic.size), len(pic.getbands())
    except PILImage.DecompressionBombError as exc:
        raise InputError(path, f"declared picture size is too large ({exc})") from exc
    except Exception:
        return Header(str(path), "picture", (), 1, 1, (1.0, 1.0))  # the reader reports the real problem
    head = Header(str(path), "picture", shape, bands, 1, (1.0, 1.0))
    _check_limit(path, head)
    return head


def _check_limit(path: Path, head: Header) -> None:
    limit = max_voxels()
    if head.voxels > limit:
        raise InputError(path, f"header declares {'x'.join(map(str, head.shape))} "
                               f"{'x ' + str(head.components) + ' ' if head.components > 1 else ''}voxels "
                               f"({head.voxels:,}), more than the limit of {limit:,} (set {MAX_VOXELS_ENV} to "
                               f"read larger images)")


_READERS = {"nifti": _nifti_header, "itk": _itk_header, "picture": _picture_header}


def check_header(path: str | Path, kind: str) -> Header | None:
    """Read and check the header of ``path`` (of :func:`aemia.data.io.image_kind` ``kind``) without its data.

    Returns the header, or None for kinds without a cheap header (DICOM, npz). Raises :class:`InputError`.
    """
    reader = _READERS.get(kind)
    return None if reader is None else reader(Path(path))
