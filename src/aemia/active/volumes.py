"""3D volumes of the active-learning loop (the active-learning cycle, :mod:`aemia.cli.active`): pool volumes →
network inputs at the project's working spacing, label volumes → integer masks on the same grid.

Scope: segmentation of single- or multi-channel 3D volumes (NIfTI ``.nii``/``.nii.gz``, a DICOM series folder or
file, NRRD/MetaImage), one volume per case. Every volume is read through :func:`aemia.data.io.read_image`, so it
arrives in RAS voxel order (:mod:`aemia.data.orientation`); intensities go through the project's normaliser
(:mod:`aemia.data.normalise`: the CT abdominal window or the MR percentile window) and are resampled to the
project's working voxel size (linear; masks nearest), as ``aemia train`` does for 3D data sets and as
:class:`aemia.infer.predictor.Predictor` does when a round's model is applied.

Masks must lie on their image's grid: same shape, spacing and voxel-to-world affine
(:func:`aemia.data.preflight.label_geometry`); values ``0..K-1`` (or 0/255 for two classes). A mask that is not a
NIfTI file (a DICOM series, NRRD) is stored in the project as an uncompressed NIfTI with the same geometry.

CPU preset (:func:`cpu_preset`): working spacing = the pool's median voxel size, each axis at least 2 mm; patch
48³ (a multiple of the network's 2^depth); widths 8, 16, 32, 64.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from aemia.active.ledger import file_sha256
from aemia.errors import InputError

__all__ = [
    "CPU_FEATURES",
    "CPU_MIN_SPACING",
    "CPU_PATCH",
    "VOLUME_KINDS",
    "cpu_preset",
    "detect_normaliser",
    "is_volume",
    "list_volumes",
    "load_volume",
    "load_volume_mask",
    "mask_nifti_bytes",
    "volume_sha256",
]

VOLUME_KINDS = ("nifti", "itk", "dicom")
CPU_FEATURES = [8, 16, 32, 64]
CPU_PATCH = [48, 48, 48]
CPU_MIN_SPACING = 2.0  # mm, per axis
CT_MIN_HU = -500.0  # a volume whose darkest voxel is at or below this is taken as CT (air is -1000 HU)


def is_volume(path: Path) -> bool:
    """True for a 3D image file or a DICOM series folder (by name / DICOM marker; the content is read later)."""
    from aemia.data.io import image_kind

    return image_kind(path) in VOLUME_KINDS


def list_volumes(folder: Path) -> list[Path]:
    """The volumes (files and DICOM series folders) at the top level of ``folder`` (hidden entries skipped), sorted."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and is_volume(p))


def volume_sha256(path: str | Path) -> str:
    """SHA-256 of a volume: of the file's bytes, or for a DICOM series folder of its files' names and bytes."""
    path = Path(path)
    if not path.is_dir():
        return file_sha256(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + b"\0" + bytes.fromhex(file_sha256(f)))
    return h.hexdigest()


def cpu_preset(spacings: Sequence[Sequence[float]], spacing: Sequence[float] | None,
               patch: Sequence[int] | None, features: Sequence[int] | None) -> tuple[list[float], list[int], list[int]]:
    """Working spacing, patch and widths of a 3D project: the given ones, else the CPU preset (module docstring).

    ``InputError`` when the patch is not a multiple of the network's 2^depth."""
    if spacing is None:
        med = np.median(np.asarray(spacings, np.float64), axis=0)
        spacing = [float(max(CPU_MIN_SPACING, round(float(s), 4))) for s in med]
    feats = [int(f) for f in (features or CPU_FEATURES)]
    patch = [int(p) for p in (patch or CPU_PATCH)]
    m = 2 ** (len(feats) - 1)
    if len(patch) != 3 or any(p % m or p < m for p in patch):
        raise InputError(None, f"--patch {','.join(map(str, patch))} must be 3 multiples of {m} for "
                               f"{len(feats)} network levels")
    if len(spacing) != 3 or any(s <= 0 for s in spacing):
        raise InputError(None, f"--spacing needs 3 positive voxel sizes in mm, got {list(spacing)}")
    return [float(s) for s in spacing], patch, feats


def detect_normaliser(minimum: float, modality: str = "auto") -> str:
    """The project's intensity normaliser: ``ct`` → the abdominal HU window, ``mr`` → per-volume percentiles,
    ``auto`` → CT when the pool's darkest voxel is at or below :data:`CT_MIN_HU` (air in HU), else MR."""
    from aemia.data.normalise import default_normaliser

    if modality == "auto":
        modality = "ct" if minimum <= CT_MIN_HU else "mr"
    if modality not in ("ct", "mr"):
        raise InputError(None, f"--modality must be auto, ct or mr, got {modality!r}")
    return default_normaliser(modality, 3)


def load_volume(path: str | Path, normaliser: str, spacing: Sequence[float]) -> np.ndarray:
    """Network input ``(C, *S)`` float32: read (RAS order), normalised, resampled to ``spacing`` mm."""
    from aemia.data.io import read_image
    from aemia.data.normalise import normalise
    from aemia.data.transforms import resample_to_spacing

    img = read_image(path)
    if img.spatial_dims != 3:
        raise InputError(path, f"expected a 3D volume, got array shape {img.array.shape}")
    x = normalise(img.array, normaliser)
    return np.ascontiguousarray(resample_to_spacing(x, img.spacing, spacing, order=1), dtype=np.float32)


def load_volume_mask(path: str | Path, n_classes: int, spacing: Sequence[float]) -> np.ndarray:
    """Training target ``(*S)`` int64 of a stored 3D label, resampled (nearest) to ``spacing`` mm."""
    from aemia.active.pictures import decode_mask
    from aemia.data.io import read_image
    from aemia.data.transforms import resample_to_spacing

    lab = read_image(path)
    mask, problem = decode_mask(lab.array, n_classes, lossy=False)
    if mask is None:
        raise InputError(path, problem or "not a label volume")
    return resample_to_spacing(mask[None].astype(np.int64), lab.spacing, spacing, order=0)[0].astype(np.int64)


def mask_nifti_bytes(path: Path) -> bytes:
    """A non-NIfTI mask (DICOM series, NRRD) as the bytes of an uncompressed NIfTI with the same voxels and
    geometry (RAS order and affine), for storing in ``P/labels/``."""
    import tempfile

    from aemia.data.io import read_image, write_nifti

    img = read_image(path)
    with tempfile.TemporaryDirectory() as tmp:
        out = write_nifti(img.with_array(np.asarray(img.array).astype(np.int16)), Path(tmp) / "mask.nii")
        return out.read_bytes()
