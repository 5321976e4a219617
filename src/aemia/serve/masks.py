"""Masks of a served case: the starting mask (the model's prediction, the pre-annotation), the current label,
the heat map, upload validation and the label file a save writes.

The **starting mask** is, in this order: an AI-made label the project holds for the case
(``P/predictions/<case>.nii.gz|.nii|.png``, e.g. written by ``aemia predict``), else the prediction of the project's
model (``models/round_NN``, run through :class:`aemia.infer.predictor.Predictor`; cached in
``P/predictions/model_round_NN/`` so that "changed pixels" is measured against the same prediction in every
session), else an empty mask. The **heat map** (0..255) is ``P/attention/<case>_heat.nii.gz|.png`` (``aemia review
prioritize`` writes these next to ``priority.csv``; the priority file's own ``attention/`` folder is also looked
in), else the model's normalised predictive entropy (uncertainty) from the same cache.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path

import numpy as np

from aemia.active.ledger import LedgerItem
from aemia.active.pictures import LOSSY, decode_mask
from aemia.active.project import Project
from aemia.errors import InputError
from aemia.serve.cases import CaseImage, flat_bytes, from_flat
from aemia.utils.io import atomic_path

__all__ = [
    "MAX_UPLOAD_BYTES",
    "current_mask",
    "decode_upload",
    "heat_map",
    "starting_mask",
    "write_label",
]

#: Largest accepted upload (compressed) and largest mask (voxels): a 1024×1024×1024 volume.
MAX_UPLOAD_BYTES = 256 * 1024 * 1024
MAX_VOXELS = 1024 ** 3
_MASK_SUFFIXES = (".nii.gz", ".nii", ".png")


def _find(folder: Path, stem: str) -> Path | None:
    for suffix in _MASK_SUFFIXES:
        f = folder / f"{stem}{suffix}"
        if f.is_file():
            return f
    return None


def read_mask(path: str | Path, case: CaseImage, n_classes: int) -> np.ndarray:
    """A label/prediction file as a uint8 mask of the case's shape; ``InputError`` if it does not fit."""
    from aemia.data.io import read_image

    arr = np.asarray(read_image(path, copy=False).array)
    if case.is3d:
        mask = arr[0]
        if mask.shape != case.mask_shape:
            raise InputError(path, f"mask shape {mask.shape} differs from the image {case.mask_shape}")
        if np.issubdtype(mask.dtype, np.floating) and not np.all(mask == np.round(mask)):
            raise InputError(path, "mask values must be whole numbers")
        if mask.min() < 0 or mask.max() >= n_classes:
            raise InputError(path, f"mask values {int(mask.min())}..{int(mask.max())} outside 0..{n_classes - 1}")
        return mask.astype(np.uint8)
    mask, problem = decode_mask(arr, n_classes, str(path).lower().endswith(LOSSY))
    if mask is None:
        raise InputError(path, problem or "not a mask")
    if mask.shape != case.mask_shape:
        raise InputError(path, f"mask shape {mask.shape} differs from the image {case.mask_shape}")
    return mask.astype(np.uint8)


def _model_cache(proj: Project, case: CaseImage, n_classes: int) -> tuple[Path, Path] | None:
    """Predict the case with the project's model once; returns (mask file, heat file) or None without a model."""
    from aemia.data.io import write_nifti

    summary = proj.project_model()
    if summary is None:
        return None
    folder = proj.root / "predictions" / f"model_round_{int(summary['round']):02d}"
    ext = ".nii.gz" if case.is3d else ".png"
    mask_f, heat_f = folder / f"{case.case_id}{ext}", folder / f"{case.case_id}_heat{ext}"
    if mask_f.is_file() and heat_f.is_file():
        return mask_f, heat_f
    from aemia.infer.predictor import Predictor

    pred = Predictor.from_run(proj.model_dir(int(summary["round"])), device="cpu")
    img = case.image
    if img.array.shape[0] != pred.in_channels:  # grey picture, RGB network or the reverse
        a = np.asarray(img.array, dtype=np.float32)
        a = np.repeat(a[:1], pred.in_channels, 0) if a.shape[0] == 1 else a.mean(0, keepdims=True)
        img = img.with_array(a)
    probs = np.clip(pred.probabilities(img), 1e-7, 1.0)
    mask = probs.argmax(0).astype(np.uint8)
    k = probs.shape[0]
    heat = np.round(255 * (-(probs * np.log(probs)).sum(0) / np.log(max(k, 2)))).clip(0, 255).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    if case.is3d:
        write_nifti(mask, mask_f, like=case.image)
        write_nifti(heat, heat_f, like=case.image)
    else:
        _write_png(mask, mask_f)
        _write_png(heat, heat_f)
    return mask_f, heat_f


def starting_mask(proj: Project, case: CaseImage, priority_dir: Path | None = None) -> tuple[np.ndarray, str]:
    """The pre-annotation and where it came from (see the module docstring)."""
    explicit = _find(proj.root / "predictions", case.case_id)
    if explicit is not None:
        return read_mask(explicit, case, proj.n_classes), f"AI label {explicit.relative_to(proj.root)}"
    cached = _model_cache(proj, case, proj.n_classes)
    if cached is not None:
        return read_mask(cached[0], case, proj.n_classes), f"prediction of {cached[0].parent.name}"
    return np.zeros(case.mask_shape, np.uint8), "empty (no model trained yet)"


def current_mask(proj: Project, item: LedgerItem, case: CaseImage, start: np.ndarray) -> np.ndarray:
    """The mask to edit: the case's label if it has one, else the starting mask."""
    if item.label_path:
        return read_mask(item.label_path, case, proj.n_classes)
    return start


def heat_map(proj: Project, case: CaseImage, priority_dir: Path | None = None) -> np.ndarray | None:
    """The attention/uncertainty heat map (uint8, the case's shape), or None."""
    from aemia.data.io import read_image

    folders = [proj.root / "attention"] + ([priority_dir / "attention"] if priority_dir is not None else [])
    found = next((f for d in folders if (f := _find(d, f"{case.case_id}_heat")) is not None), None)
    if found is None:
        cached = _model_cache(proj, case, proj.n_classes)
        found = None if cached is None else cached[1]
    if found is None:
        return None
    arr = np.asarray(read_image(found, copy=False).array)[0]
    if arr.shape != case.mask_shape:
        raise InputError(found, f"heat map shape {arr.shape} differs from the image {case.mask_shape}")
    return np.clip(arr, 0, 255).astype(np.uint8)


def _gunzip(body: bytes, limit: int) -> bytes:
    try:  # never inflate more than ``limit`` bytes: a zip bomb stops there
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(body, limit)
    except zlib.error as exc:
        raise InputError(None, f"upload is not valid gzip ({exc})") from None


def decode_upload(body: bytes, case: CaseImage, n_classes: int, encoding: str,
                  base: np.ndarray | None = None) -> np.ndarray:
    """An uploaded mask → array of the case's shape, validated before anything is written: compressed and
    decompressed size, the exact number of voxels, values ``0..n_classes-1``.

    Encodings: ``raw`` / ``gzip`` — the whole mask as flat uint8 (:func:`aemia.serve.cases.flat_bytes` order);
    ``diff`` — gzip of ``uint32 count, count × uint32 flat index, count × uint8 value`` (little-endian): the
    voxels that differ from ``base``, the mask the browser loaded (the caller has checked that the case has not
    changed since). A stroke on a 512×512×130 CT is a few kB instead of a 34 MB mask to compress.
    """
    n = int(np.prod(case.mask_shape))
    if len(body) > MAX_UPLOAD_BYTES:
        raise InputError(None, f"upload of {len(body)} bytes is over the {MAX_UPLOAD_BYTES} byte limit")
    if n > MAX_VOXELS:
        raise InputError(None, f"mask of {n} voxels is over the limit of {MAX_VOXELS}")
    if encoding == "diff":
        if base is None:
            raise InputError(None, "a diff upload needs the mask it was made against")
        data = _gunzip(body, 4 + 5 * n + 1)
        count = int(np.frombuffer(data[:4], "<u4")[0]) if len(data) >= 4 else -1
        if count < 0 or count > n or len(data) != 4 + 5 * count:
            raise InputError(None, f"diff upload of {len(data)} bytes does not hold the {count} changes it declares")
        index = np.frombuffer(data, "<u4", count, 4)
        values = np.frombuffer(data, np.uint8, count, 4 + 4 * count)
        if count and int(index.max()) >= n:
            raise InputError(None, f"diff index {int(index.max())} is outside the mask ({n} voxels)")
        flat = np.frombuffer(flat_bytes(base, case.is3d), np.uint8).copy()
        flat[index] = values
        data = flat.tobytes()
    elif encoding == "gzip":
        data = _gunzip(body, n + 1)
    elif encoding == "raw":
        data = body
    else:
        raise InputError(None, f"unknown upload encoding {encoding!r} (raw, gzip or diff)")
    if len(data) != n:
        raise InputError(None, f"mask has {len(data)}{'+' if len(data) > n else ''} values, the case needs "
                               f"{n} ({' x '.join(str(s) for s in case.mask_shape)})")
    mask = from_flat(data, case.mask_shape, case.is3d)
    top = int(mask.max()) if mask.size else 0
    if top >= n_classes:
        raise InputError(None, f"mask value {top} is not a class (0..{n_classes - 1})")
    return mask


def write_label(proj: Project, case: CaseImage, mask: np.ndarray) -> Path:
    """Write the mask as the case's label file, content-addressed like ``aemia active import``
    (``P/labels/<case>.<sha256[:12]>.png|.nii.gz``, in the image's own geometry); atomic."""
    from aemia.data.io import write_nifti
    from aemia.data.orientation import to_source

    digest = hashlib.sha256(mask.tobytes(order="F") + str(mask.shape).encode()).hexdigest()[:12]
    proj.labels_dir.mkdir(parents=True, exist_ok=True)
    if case.is3d:
        dest = proj.labels_dir / f"{case.case_id}.{digest}.nii.gz"
        if not dest.exists():
            write_nifti(to_source(case.image.with_array(mask[None]), copy=False), dest)
        return dest
    dest = proj.labels_dir / f"{case.case_id}.{digest}.png"
    if not dest.exists():
        _write_png(mask, dest)
    return dest


def _write_png(array: np.ndarray, path: Path) -> None:
    """A uint8 array as a PNG with its values unchanged (label values stay class indices); atomic."""
    from PIL import Image as PILImage

    with atomic_path(path, suffix=".png") as tmp:
        PILImage.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(tmp, format="PNG")


def gzip_bytes(data: bytes) -> bytes:
    """gzip at level 1 (masks are mostly zeros: fast and small)."""
    return gzip.compress(data, compresslevel=1, mtime=0)
