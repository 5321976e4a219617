"""2D pictures of the active-learning loop (the active-learning cycle, :mod:`aemia.cli.active`): pool images → network inputs, label
pictures → integer masks.

Scope: pictures (``.png .jpg .jpeg .tif .tiff .gif .bmp``, grey or RGB) for segmentation
(integer label masks; binary masks as 0/1 or 0/255, JPEG masks thresholded) and for image classification.
3D volumes (NIfTI, DICOM, NRRD) are the other kind of project (:mod:`aemia.active.volumes`); they share
:func:`decode_mask`. Images are resized to ``size × size`` for the network (bilinear; labels nearest); labels
are always validated at the image's own size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aemia.data.normalise import picture_scale
from aemia.errors import InputError

__all__ = [
    "LOSSY",
    "PICTURES",
    "case_id_of",
    "decode_mask",
    "list_pictures",
    "to_network_input",
]

PICTURES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".bmp")
LOSSY = (".jpg", ".jpeg")


def to_network_input(array: np.ndarray, in_channels: int, size: int) -> np.ndarray:
    """``(C, H, W)`` picture → ``(in_channels, size, size)`` float32: scaled by the ``picture`` normaliser
    (:mod:`aemia.data.normalise`); grey repeated to RGB or RGB averaged to grey as the project needs; bilinear resize."""
    from aemia.data.transforms import resize

    a = np.asarray(array)
    if a.ndim != 3:
        raise InputError(None, f"expected a 2D picture (C, H, W), got array shape {a.shape}")
    x = picture_scale(a)
    if x.shape[0] != in_channels:
        x = np.repeat(x[:1], in_channels, axis=0) if x.shape[0] == 1 else x.mean(axis=0, keepdims=True).repeat(in_channels, 0)
    return np.ascontiguousarray(resize(x, (size, size), order=1), dtype=np.float32)


def list_pictures(folder: Path) -> list[Path]:
    """The pictures at the top level of ``folder`` (hidden files skipped), sorted."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(PICTURES) and not p.name.startswith("."))


def case_id_of(path: Path) -> str:
    """The case id of a pool picture: its file name without suffix."""
    from aemia.data.io import case_id

    return case_id(path)


def decode_mask(array: np.ndarray, n_classes: int, lossy: bool) -> tuple[np.ndarray | None, str | None]:
    """A label picture ``(C, H, W)`` → integer mask ``(H, W)``, or ``(None, problem)``; a label volume
    ``(1, X, Y, Z)`` → ``(X, Y, Z)`` by the same value rules.

    Accepted: values in ``0..n_classes-1``; for two classes also 0/255. Colour labels must have equal
    channels. Lossy (JPEG) masks are accepted for two classes only: grey > 127 is foreground, provided the
    picture looks like a mask (at most 5% of pixels between 48 and 207; JPEG ringing stays far below that).
    """
    a = np.asarray(array)
    if a.ndim == 4:
        if a.shape[0] != 1:
            return None, f"a label volume has one channel, got {a.shape[0]} (array shape {a.shape})"
    elif a.ndim != 3:
        return None, f"expected a 2D label picture or a 3D label volume, got shape {a.shape}"
    if a.shape[0] > 1:
        if lossy:
            a = a.astype(np.float64).mean(axis=0, keepdims=True)
        elif not all(np.array_equal(a[0], a[c]) for c in range(1, a.shape[0])):
            return None, "colour label (its channels differ); save the mask as a greyscale/indexed picture"
    g = a[0]
    if lossy:
        if n_classes != 2:
            return None, "JPEG changes label values: save multi-class masks as PNG"
        mid = float(((g > 48) & (g < 207)).mean())
        if mid > 0.05:
            return None, f"does not look like a mask ({mid:.0%} of pixels are mid-grey); save masks as PNG"
        return (g > 127).astype(np.int64), None
    if np.issubdtype(g.dtype, np.floating):
        if not np.all(np.isfinite(g)) or not np.all(g == np.round(g)):
            return None, "label values must be whole numbers"
    values = np.unique(g)
    if values.min() >= 0 and values.max() <= n_classes - 1:
        return g.astype(np.int64), None
    if n_classes == 2 and set(values.tolist()) <= {0, 255}:
        return (g == 255).astype(np.int64), None
    allowed = f"0..{n_classes - 1}" + (" or 0/255" if n_classes == 2 else "")
    shown = ", ".join(str(v) for v in values[:6].tolist()) + (", ..." if len(values) > 6 else "")
    return None, f"label values {{{shown}}} are not allowed (expected {allowed})"
