"""The one in-memory image type every reader returns and every writer takes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Image:
    """An image or volume with its geometry.

    ``array`` is channels-first: ``(C, H, W)`` for 2D, ``(C, X, Y, Z)`` for 3D (NIfTI voxel order).
    ``spacing`` is the voxel size in millimetres, one value per spatial axis.
    ``affine`` is the 4x4 voxel-to-world (RAS, mm) matrix; for 2D images a diagonal built from spacing.
    ``source_affine`` is the affine as stored on disk when the reader brought the voxels to RAS order
    (:mod:`aemia.data.orientation`); ``None`` for images not read from a 3D file.
    """

    array: np.ndarray
    spacing: tuple[float, ...]
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    path: str | None = None
    source_affine: np.ndarray | None = None

    @property
    def spatial_dims(self) -> int:
        return self.array.ndim - 1

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.array.shape[1:])

    @property
    def channels(self) -> int:
        return int(self.array.shape[0])

    def with_array(self, array: np.ndarray) -> "Image":
        """Same geometry, new voxels (e.g. a prediction for this image)."""
        source = None if self.source_affine is None else self.source_affine.copy()
        return Image(array=array, spacing=self.spacing, affine=self.affine.copy(), path=self.path, source_affine=source)
