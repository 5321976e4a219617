"""Pre-flight validation: every input of a verb is checked before any work starts or anything is written.

Each function returns the list of :class:`aemia.data.check.Problem` it found (all of them, not the first);
:func:`require` turns a non-empty list into one :class:`aemia.errors.ProblemsError`, which the CLI prints as the
list of problems (stdout) and one error line (stderr, exit 2). ``aemia data check`` runs the same
:class:`~aemia.data.check.Checker`, so the two agree.

* :func:`training_data` — ``train --dataset FOLDER``: the whole MSD / nnU-Net folder (readability, header sanity,
  3D volumes with the channels ``dataset.json`` lists, image/label shape and spacing agreement, label values
  against ``dataset.json``, NaN/inf). Bundled data sets are trusted.
* :func:`pretraining_images` — ``pretrain genesis|transvw --data FOLDER``: every image of the folder (readability,
  header sanity, NaN/inf, one 3D volume per NIfTI/NRRD) with the ``--dims`` the pretraining needs. Bundled data sets
  are trusted.
* :func:`pool_pictures` — ``active init``: every pool picture readable, one grey or RGB 2D picture, finite.
* :func:`pool_volumes` — ``active init`` on 3D volumes: every volume readable, 3D, finite, one channel count.
* :func:`label_geometry` — ``active import`` of a 3D mask: on its image's grid (shape, spacing, affine).
* :func:`model_inputs` — ``predict``: every input is read once and matched against the model (dimensionality
  first, then channels), NaN/inf refused.
* :func:`mask_pairs` — ``evaluate``: each prediction is one label map (not 4D), finite, integer, on the ground
  truth's grid (shape and spacing).
* :func:`ct_volume` — ``synth``: a finite single-channel 3D CT; :func:`label_map` — its organ and vessel masks
  (and each of ``evaluate``'s label maps): not 4D, finite, integer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from aemia.data.check import MSD_FOLDERS, Checker, Problem, _check_finite, _check_geometry
from aemia.data.image import Image
from aemia.data.io import read_image
from aemia.errors import InputError, ProblemsError


def require(problems: Sequence[Problem], subject: str | Path | None) -> None:
    """Raise :class:`ProblemsError` listing ``problems`` (nothing happens for an empty list)."""
    if problems:
        raise ProblemsError(subject, [str(p) for p in problems])


def _read(path: Path, found: list[Problem]) -> Image | None:
    try:
        return read_image(path)
    except InputError as exc:
        found.append(Problem(exc.path or str(path), exc.problem))
        return None


def training_data(dataset: str, bundled: Iterable[str] = ()) -> list[Problem]:
    """Problems of a training data folder (``--dataset FOLDER``); a bundled name or a non-folder gives none."""
    root = Path(dataset)
    if dataset in set(bundled) or not root.is_dir():
        return []
    if not (root / "dataset.json").is_file():
        if any((root / sub).is_dir() for sub in MSD_FOLDERS):
            return Checker(root).problems  # planning reports the missing dataset.json
        return [Problem(str(root), "is a folder without dataset.json: training needs an MSD / nnU-Net folder "
                                   "(imagesTr, labelsTr, dataset.json) or a bundled data set name")]
    return Checker(root).run()


def pretraining_images(data: str, dims: int, bundled: Iterable[str] = ()) -> list[Problem]:
    """Problems of an unlabelled image folder (or file) for ``dims``-D pretraining; a bundled name gives none."""
    if data in set(bundled):
        return []
    return Checker(Path(data), spatial_dims=dims, purpose=f"this is a {dims}D pretraining: --dims {dims}").run()


def pool_pictures(paths: Sequence[Path], on_picture: Callable[[Path], None] | None = None
                  ) -> tuple[list[Problem], dict[Path, int]]:
    """Read every picture of an active-learning pool: (problems, channels of each good picture); ``on_picture``
    is called after each (progress)."""
    found: list[Problem] = []
    channels: dict[Path, int] = {}
    for path in paths:
        before = len(found)
        img = _read(Path(path), found)
        if img is not None:
            if img.spatial_dims != 2 or img.channels not in (1, 3):
                found.append(Problem(str(path), f"expected a grey or RGB picture, got array shape {img.array.shape}"))
            _check_finite(img, Path(path), found)
            if len(found) == before:
                channels[Path(path)] = img.channels
        if on_picture is not None:
            on_picture(Path(path))
    return found, channels


def pool_volumes(paths: Sequence[Path], on_volume: Callable[[Path], None] | None = None
                 ) -> tuple[list[Problem], dict[Path, Image]]:
    """Read every volume of a 3D active-learning pool: (problems, the header-only :class:`Image` of each good
    volume: its array replaced by ``(channels, min, max)`` of the voxels); ``on_volume`` is called after each."""
    found: list[Problem] = []
    good: dict[Path, Image] = {}
    for path in paths:
        before = len(found)
        img = _read(Path(path), found)
        if img is not None:
            if img.spatial_dims != 3:
                found.append(Problem(str(path), f"expected a 3D volume, got array shape {img.array.shape}"))
            _check_finite(img, Path(path), found)
            if len(found) == before:
                a = img.array
                summary = np.array([a.shape[0], float(a.min()), float(a.max())], np.float64)
                good[Path(path)] = Image(summary, img.spacing, img.affine, img.path)
        if on_volume is not None:
            on_volume(Path(path))
    return found, good


#: Voxel-to-world matrices of a mask and its image must agree to this many mm (origin) / units (direction).
AFFINE_ATOL = 1e-3


def label_geometry(path: Path, label: Image, image: Image) -> list[Problem]:
    """A 3D mask on its image's grid: same shape and spacing, and the same voxel-to-world affine (origin and
    axis directions, both compared in RAS voxel order as :func:`aemia.data.io.read_image` returns them)."""
    found: list[Problem] = []
    if label.spatial_dims != image.spatial_dims:
        return [Problem(str(path), f"is {label.spatial_dims}D; its image is {image.spatial_dims}D")]
    _check_geometry(label, image, Path(path), "label", found)
    if not found and not np.allclose(label.affine, image.affine, rtol=0, atol=AFFINE_ATOL):
        lo, io_ = np.round(label.affine[:3, 3], 2).tolist(), np.round(image.affine[:3, 3], 2).tolist()
        found.append(Problem(str(path), f"label affine differs from its image's (origin {lo} vs {io_} mm, or the "
                                        f"axis directions): not on the same grid"))
    return found


def model_inputs(paths: Sequence[Path], spatial_dims: int, in_channels: int) -> list[Problem]:
    """Read every input and check it fits a model of ``spatial_dims`` D with ``in_channels`` channels."""
    found: list[Problem] = []
    for path in paths:
        problems = image_problems(path, spatial_dims, in_channels)
        found.extend(problems)
    return found


def image_problems(path: Path, spatial_dims: int, in_channels: int) -> list[Problem]:
    """The problems of one model input (empty when it can be predicted)."""
    found: list[Problem] = []
    img = _read(Path(path), found)
    if img is None:
        return found
    if img.spatial_dims != spatial_dims:
        kind = "3D volume" if img.spatial_dims == 3 else "2D picture"
        found.append(Problem(str(path), f"is a {kind} {img.spatial_shape}; the model is {spatial_dims}D "
                                        f"(use a run trained on {img.spatial_dims}D data)"))
    elif img.channels != in_channels:
        found.append(Problem(str(path), f"has {img.channels} channel(s); the model expects {in_channels}"))
    _check_finite(img, Path(path), found)
    return found


def mask_pairs(pairs: Iterable[tuple[Path, Path]]) -> list[Problem]:
    """(prediction, ground truth) label maps: readable, one channel, finite, integer, on the same grid."""
    found: list[Problem] = []
    for pred_path, gt_path in pairs:
        before = len(found)
        pred, gt = _read(Path(pred_path), found), _read(Path(gt_path), found)
        for img, path in ((pred, pred_path), (gt, gt_path)):
            if img is not None:
                found.extend(label_map(Path(path), img))
        if pred is not None and gt is not None and len(found) == before and pred.spatial_dims == 3:
            _check_geometry(pred, gt, Path(pred_path), "prediction", found)
    return found


def label_map(path: Path, img: Image) -> list[Problem]:
    """A label map: one volume or picture (not 4D), every value finite and an integer."""
    found: list[Problem] = []
    if img.channels != 1 and img.spatial_dims == 3:
        found.append(Problem(str(path), f"is 4D ({img.channels} volumes): a label map is one 3D volume"))
    _check_finite(img, Path(path), found)
    arr = img.array
    if not found and np.issubdtype(arr.dtype, np.floating) and not np.array_equal(arr, np.round(arr)):
        found.append(Problem(str(path), "label map has non-integer values"))
    return found


def ct_volume(path: Path, img: Image) -> list[Problem]:
    """A CT for lesion synthesis: single-channel 3D, every voxel finite."""
    found: list[Problem] = []
    if img.spatial_dims != 3 or img.channels != 1:
        found.append(Problem(str(path), f"expected a single-channel 3D CT, got array shape {img.array.shape}"))
    _check_finite(img, Path(path), found)
    return found
