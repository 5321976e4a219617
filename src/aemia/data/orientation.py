"""Canonical voxel orientation: every 3D volume is brought to RAS on read and can be taken back.

RAS: voxel axes 0, 1, 2 run (as closely as the affine allows) towards patient Right, Anterior and Superior,
nibabel's "closest canonical" order. Only axis permutations and flips are applied, never resampling, so voxel
values are unchanged and an oblique affine stays oblique. :func:`to_ras` records the stored affine in
``Image.source_affine``; :func:`to_source` uses it to return an array (e.g. a prediction) to the stored voxel
order, spacing and affine.
"""

from __future__ import annotations

import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from aemia.data.image import Image

_RAS = axcodes2ornt(("R", "A", "S"))


def _reorient(image: Image, ornt: np.ndarray, affine: np.ndarray, source_affine: np.ndarray | None,
              copy: bool = True) -> Image:
    """Apply ``ornt`` (nibabel orientation transform) to the spatial axes of a channels-first image; ``copy=False``
    returns a view (permuted/negative strides) instead of a C-contiguous copy."""
    arr = np.moveaxis(np.asarray(image.array), 0, -1)  # channels last: apply_orientation works on leading axes
    arr = np.moveaxis(apply_orientation(arr, ornt), -1, 0)
    if copy:
        arr = np.ascontiguousarray(arr)
    spacing = [0.0] * 3
    for axis, (target, _) in enumerate(ornt):
        spacing[int(target)] = float(image.spacing[axis])
    return Image(arr, tuple(spacing), affine, image.path, source_affine)


def to_ras(image: Image, copy: bool = True) -> Image:
    """The 3D ``image`` with voxel axes in RAS order; 2D images are returned unchanged.

    ``source_affine`` is set to the stored affine (also when the image already is RAS). ``copy=False`` keeps a
    view of the stored array (no transposing copy of a whole volume; the review app's viewer uses it)."""
    if image.spatial_dims != 3:
        return image
    affine = np.asarray(image.affine, dtype=np.float64)
    ornt = io_orientation(affine)
    if np.array_equal(ornt, _RAS):
        return Image(image.array, tuple(image.spacing), affine, image.path, affine.copy())
    new_affine = affine @ inv_ornt_aff(ornt, image.spatial_shape)
    return _reorient(image, ornt, new_affine, affine.copy(), copy)


def to_source(image: Image, copy: bool = True) -> Image:
    """Inverse of :func:`to_ras`: ``image`` (in RAS order, e.g. ``ras_image.with_array(prediction)``) in the
    stored voxel order with the stored affine. Images that were not reoriented are returned unchanged.
    ``copy=False`` as in :func:`to_ras`."""
    if image.source_affine is None or image.spatial_dims != 3:
        return image
    source = np.asarray(image.source_affine, dtype=np.float64)
    ornt = ornt_transform(_RAS, io_orientation(source))
    if np.array_equal(ornt, _RAS):
        return Image(image.array, tuple(image.spacing), source.copy(), image.path)
    return _reorient(image, ornt, source.copy(), None, copy)

