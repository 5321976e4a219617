"""Check a data set folder or file before training: report every problem, never stop at the first.

Accepted inputs: an MSD / nnU-Net folder (``dataset.json``), a plain folder of images (searched recursively;
DICOM series folders count as one image), or a single image file / DICOM folder.

Checks: readability (and header sanity, :mod:`aemia.data.header`), NIfTI/NRRD being 3D (4D only with the channels
``dataset.json`` lists), an MSD layout without ``dataset.json``, NaN/inf voxels, image/label shape and spacing agreement (relative tolerance 1e-3), channels
agreeing with each other, label values allowed by ``dataset.json``, empty (all-zero) label maps, missing files,
non-image files in image folders, empty folders. Nothing is written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aemia.data.dataset import MSDCase, read_msd
from aemia.data.image import Image
from aemia.data.io import image_kind, is_dicom_file, read_image, read_npz_split
from aemia.errors import InputError

SPACING_RTOL = 1e-3
MSD_FOLDERS = ("imagesTr", "labelsTr", "imagesTs")
VOLUME_KINDS = ("nifti", "itk")  # formats that hold 3D volumes; 2D data come as pictures
# Files that may sit in a plain image folder without being images.
METADATA_SUFFIXES = (".json", ".csv", ".txt", ".md", ".tsv", ".xlsx", ".xls", ".yaml", ".yml", ".pdf", ".html")


@dataclass(frozen=True)
class Problem:
    """One problem with one file or folder."""

    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


@dataclass(frozen=True)
class CheckCase:
    """A unit of checking: images (one per channel) and optionally a label map."""

    id: str
    images: tuple[Path, ...]
    label: Path | None = None


class Checker:
    """Plan the checks for ``path`` (``cases`` + problems found while planning), then run them per case.

    ``check_path`` is the one-call form; the CLI uses this class to show progress over ``cases``.
    ``spatial_dims`` (2 or 3), when given, also requires every image to have that many spatial dimensions
    (``pretrain --dims``); ``purpose`` names the use in that message.
    """

    def __init__(self, path: str | Path, spatial_dims: int | None = None, purpose: str = "") -> None:
        self.path = Path(path)
        self.spatial_dims = spatial_dims
        self.purpose = purpose
        self.problems: list[Problem] = []
        self.cases: list[CheckCase] = []
        self.allowed_labels: set[int] | None = None
        self.msd_channels: int | None = None
        self._plan()

    # ------------------------------------------------------------------ planning
    def _add(self, path: str | Path, problem: str) -> None:
        self.problems.append(Problem(str(path), problem))

    def _plan(self) -> None:
        p = self.path
        if not p.exists():
            self._add(p, "file or folder not found")
        elif p.is_file() or image_kind(p) == "dicom":
            self.cases.append(CheckCase(p.name, (p,)))
        elif not any(p.iterdir()):
            self._add(p, "folder is empty")
        elif (p / "dataset.json").exists():
            self._plan_msd(p)
        elif any((p / sub).is_dir() for sub in MSD_FOLDERS):
            self._add(p, "has imagesTr/labelsTr but no dataset.json: an MSD / nnU-Net folder needs one (labels, "
                         "channels, file ending); masks in labelsTr would otherwise be taken for images")
        else:
            self._plan_plain(p)

    def _plan_msd(self, root: Path) -> None:
        try:
            ds = read_msd(root)
        except InputError as exc:
            self._add(exc.path or root, exc.problem)
            return
        self.allowed_labels = set(ds.labels)
        self.msd_channels = max(1, len(ds.channels))
        listed: set[Path] = set()
        for case in ds.training + ds.test:
            self.cases.append(self._msd_case(case))
            listed.update(case.images)
            if case.label is not None:
                listed.add(case.label)
        for sub in ("imagesTr", "labelsTr", "imagesTs"):
            folder = root / sub
            if not folder.is_dir():
                continue
            for f in sorted(folder.iterdir()):
                if f.name.startswith("."):
                    continue
                if image_kind(f) is None:
                    self._add(f, "not a recognised image format")
                elif f.resolve() not in listed and f not in listed:
                    self._add(f, "file is not part of any case (name does not follow CASE_XXXX / dataset.json)")
        if not ds.training and not ds.test:
            self._add(root, "no cases found (dataset.json lists none and imagesTr has no *_0000 files)")

    def _msd_case(self, case: MSDCase) -> CheckCase:
        return CheckCase(case.id, case.images, case.label)

    def _plan_plain(self, root: Path) -> None:
        dicom_dirs: set[Path] = set()
        for f in sorted(root.rglob("*")):
            if any(part.startswith(".") for part in f.relative_to(root).parts):
                continue
            if any(d in f.parents for d in dicom_dirs):
                continue
            if f.is_dir():
                if any(is_dicom_file(x) for x in sorted(f.iterdir())[:20]):
                    dicom_dirs.add(f)
                    self.cases.append(CheckCase(str(f.relative_to(root)), (f,)))
                continue
            if f.name.lower().endswith(METADATA_SUFFIXES):
                continue
            kind = image_kind(f)
            if kind is None:
                self._add(f, "not a recognised image format")
            else:
                self.cases.append(CheckCase(str(f.relative_to(root)), (f,)))
        if not self.cases and not self.problems:
            self._add(root, "no images found in folder")

    # ------------------------------------------------------------------ checking
    def check_case(self, case: CheckCase) -> list[Problem]:
        """Run every check on one case and return its problems (also appended to ``self.problems``)."""
        found: list[Problem] = []
        images: list[Image] = []
        if len(case.images) == 1 and image_kind(case.images[0]) == "npz":
            _check_npz(Path(case.images[0]), found)
            self.problems.extend(found)
            return found
        per_file = self._channels_per_file(len(case.images))
        for f in case.images:
            img = _read(f, found)
            if img is not None:
                _check_finite(img, f, found)
                if self.spatial_dims is not None and img.spatial_dims != self.spatial_dims:
                    kind = "3D volume" if img.spatial_dims == 3 else "2D picture"
                    found.append(Problem(str(f), f"is a {kind} {img.spatial_shape}; expected {self.spatial_dims}D "
                                                 f"images{' (' + self.purpose + ')' if self.purpose else ''}"))
                else:
                    _check_volume(img, Path(f), per_file, found)
                images.append(img)
        ref = images[0] if images else None
        for img, f in zip(images[1:], case.images[1:]):
            _check_geometry(img, ref, Path(f), "channel", found)
        if case.label is not None:
            lab = _read(case.label, found)
            if lab is not None:
                _check_finite(lab, case.label, found)
                if ref is not None:
                    _check_geometry(lab, ref, case.label, "label", found)
                self._check_label_values(lab, case.label, found)
        self.problems.extend(found)
        return found

    def _channels_per_file(self, n_files: int) -> int | None:
        """Channels each image file must hold: MSD's one 4D file per case holds every channel of dataset.json,
        nnU-Net's CASE_000C files hold one each; None (plain folders) means one 3D volume per file."""
        if self.msd_channels is None:
            return None
        return self.msd_channels if n_files == 1 else 1

    def _check_label_values(self, lab: Image, path: Path, found: list[Problem]) -> None:
        arr = lab.array
        if np.issubdtype(arr.dtype, np.floating):
            arr = np.nan_to_num(arr)
            if not np.array_equal(arr, np.round(arr)):
                found.append(Problem(str(path), "label map has non-integer values"))
                return
        values = np.unique(arr)
        if lab.channels != 1:
            found.append(Problem(str(path), f"label map has {lab.channels} channels; expected 1"))
        if values.size and not np.any(values != 0):
            found.append(Problem(str(path), "label map is empty (all voxels 0)"))
        if self.allowed_labels is not None:
            bad = sorted(int(v) for v in values if int(v) not in self.allowed_labels)
            if bad:
                found.append(Problem(str(path), f"label values {bad} not in dataset.json labels {sorted(self.allowed_labels)}"))

    def run(self, on_case: Callable[[CheckCase], None] | None = None) -> list[Problem]:
        """Check every case (calling ``on_case`` after each) and return all problems."""
        for case in self.cases:
            self.check_case(case)
            if on_case is not None:
                on_case(case)
        return list(self.problems)


def _read(path: Path, found: list[Problem]) -> Image | None:
    if not Path(path).exists():
        found.append(Problem(str(path), "file not found"))
        return None
    try:
        return read_image(path)
    except InputError as exc:
        found.append(Problem(exc.path or str(path), exc.problem))
        return None


def _check_npz(path: Path, found: list[Problem]) -> None:
    """A MedMNIST-layout npz: every ``<split>_images`` needs matching ``<split>_labels``."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            splits = sorted(k[: -len("_images")] for k in npz.files if k.endswith("_images"))
    except Exception as exc:
        found.append(Problem(str(path), f"cannot read: file is truncated or corrupt ({type(exc).__name__})"))
        return
    if not splits:
        found.append(Problem(str(path), "npz has no '<split>_images' arrays (not MedMNIST layout)"))
    for split in splits:
        try:
            read_npz_split(path, split)
        except InputError as exc:
            found.append(Problem(str(path), exc.problem))


def _check_finite(img: Image, path: Path, found: list[Problem]) -> None:
    if np.issubdtype(img.array.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(img.array)))
        if bad:
            n_nan = int(np.count_nonzero(np.isnan(img.array)))
            found.append(Problem(str(path), f"{bad} voxels are not finite ({n_nan} NaN, {bad - n_nan} inf)"))


def _check_volume(img: Image, path: Path, channels: int | None, found: list[Problem]) -> None:
    """A NIfTI/NRRD must be one 3D volume (or, in an MSD folder, hold the channels dataset.json lists)."""
    if image_kind(path) not in VOLUME_KINDS:
        return
    if img.spatial_dims != 3:
        found.append(Problem(str(path), f"is a {img.spatial_dims}D image {img.spatial_shape}; a NIfTI/NRRD must "
                                        f"be a 3D volume (2D images go in as pictures: PNG/JPEG/TIFF)"))
    elif img.channels != (channels or 1):
        found.append(Problem(str(path), f"is 4D: {img.channels} volumes of {img.spatial_shape}; expected "
                                        f"{channels or 1} (one 3D volume per file, or the channels dataset.json "
                                        f"lists)"))


def _check_geometry(img: Image, ref: Image, path: Path, what: str, found: list[Problem]) -> None:
    if img.spatial_shape != ref.spatial_shape:
        found.append(Problem(str(path), f"{what} shape {img.spatial_shape} differs from image shape {ref.spatial_shape} ({Path(ref.path or '').name})"))
        return
    a, b = np.asarray(img.spacing, float), np.asarray(ref.spacing, float)
    if a.shape != b.shape or not np.allclose(a, b, rtol=SPACING_RTOL, atol=0):
        found.append(Problem(str(path), f"{what} spacing {tuple(round(float(v), 6) for v in a)} differs from image spacing {tuple(round(float(v), 6) for v in b)}"))


def check_path(path: str | Path) -> list[Problem]:
    """Check a data set folder or a single file; return every problem found (empty list = OK)."""
    return Checker(path).run()
