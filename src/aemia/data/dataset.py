"""Medical Segmentation Decathlon (MSD) / nnU-Net dataset folders.

Layout::

    Dataset/
      dataset.json
      imagesTr/CASE_0000.nii.gz   (one file per channel, nnU-Net v2 naming)  or  imagesTr/CASE.nii.gz (MSD 4D)
      labelsTr/CASE.nii.gz
      imagesTs/CASE_0000.nii.gz   (optional)

``dataset.json`` may use MSD keys (``modality``, ``labels`` as ``{"0": "background"}``, ``training`` list) or
nnU-Net v2 keys (``channel_names``, ``labels`` as ``{"background": 0}``, ``file_ending``, optional ``dataset``).
:func:`write_msd` writes both spellings so the folder works unchanged with nnU-Net v2 and with MSD readers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

from aemia.data.image import Image
from aemia.data.io import read_image, write_nifti
from aemia.errors import InputError
from aemia.utils.io import write_json_atomic

ImageLike = Union[Image, np.ndarray, str, Path]


@dataclass(frozen=True)
class MSDCase:
    """One case: ``images`` one file per channel (or a single 4D file), ``label`` the label map or None."""

    id: str
    images: tuple[Path, ...]
    label: Path | None


@dataclass
class MSDDataset:
    """A parsed MSD / nnU-Net dataset folder."""

    root: Path
    name: str
    labels: dict[int, str]
    channels: dict[int, str]
    file_ending: str = ".nii.gz"
    training: list[MSDCase] = field(default_factory=list)
    test: list[MSDCase] = field(default_factory=list)
    regions: dict[str, list[int]] = field(default_factory=dict)  # nnU-Net region labels, e.g. whole tumour
    description: str = ""
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def modality(self) -> dict[int, str]:
        """MSD spelling of :attr:`channels`."""
        return self.channels


def _parse_labels(path: Path, raw: Any) -> tuple[dict[int, str], dict[str, list[int]]]:
    """Accept ``{"0": "background"}`` (MSD) and ``{"background": 0}`` / ``{"tumour": [1, 2]}`` (nnU-Net v2)."""
    if not isinstance(raw, Mapping) or not raw:
        raise InputError(path, "dataset.json has no 'labels' mapping")
    labels: dict[int, str] = {}
    regions: dict[str, list[int]] = {}
    for key, value in raw.items():
        if re.fullmatch(r"-?\d+", str(key).strip()):
            labels[int(key)] = str(value)
        elif isinstance(value, bool):
            raise InputError(path, f"label '{key}' has a non-integer value {value!r}")
        elif isinstance(value, int):
            labels[int(value)] = str(key)
        elif isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value):
            if len(value) == 1:
                labels[int(value[0])] = str(key)
            else:
                regions[str(key)] = [int(v) for v in value]
        else:
            raise InputError(path, f"cannot parse label entry {key!r}: {value!r}")
    return dict(sorted(labels.items())), regions


def _parse_channels(raw: Mapping[str, Any]) -> dict[int, str]:
    chans = raw.get("channel_names", raw.get("modality", {})) or {}
    if isinstance(chans, Mapping):
        return {int(k): str(v) for k, v in chans.items()}
    if isinstance(chans, (list, tuple)):
        return {i: str(v) for i, v in enumerate(chans)}
    return {0: str(chans)}


def _channel_files(folder: Path, case_id: str, ending: str, n: int) -> tuple[Path, ...]:
    return tuple(folder / f"{case_id}_{c:04d}{ending}" for c in range(n))


def _strip_ending(name: str, ending: str) -> str:
    return name[: -len(ending)] if name.endswith(ending) else name


def _cases_from_list(root: Path, entries: Sequence[Any], ending: str, n_chan: int, labelled: bool) -> list[MSDCase]:
    cases = []
    for entry in entries:
        image_rel = entry.get("image") if isinstance(entry, Mapping) else entry
        label_rel = entry.get("label") if isinstance(entry, Mapping) else None
        image = (root / str(image_rel)).resolve()
        case_id = _strip_ending(image.name, ending)
        if image.exists():  # MSD: one (possibly 4D) file per case
            images: tuple[Path, ...] = (image,)
        else:  # nnU-Net: the list names CASE.nii.gz, the files are CASE_0000.nii.gz ...
            images = _channel_files(image.parent, case_id, ending, n_chan)
        label = (root / str(label_rel)).resolve() if (labelled and label_rel) else None
        cases.append(MSDCase(case_id, images, label))
    return cases


def _discover(root: Path, images_dir: str, labels_dir: str | None, ending: str, n_chan: int) -> list[MSDCase]:
    folder = root / images_dir
    if not folder.is_dir():
        return []
    ids = sorted({m.group(1) for p in folder.iterdir() if (m := re.fullmatch(rf"(.+)_\d{{4}}{re.escape(ending)}", p.name))})
    cases = []
    for cid in ids:
        label = (root / labels_dir / f"{cid}{ending}") if labels_dir else None
        cases.append(MSDCase(cid, _channel_files(folder, cid, ending, n_chan), label))
    return cases


def read_msd(folder: str | Path) -> MSDDataset:
    """Parse an MSD or nnU-Net dataset folder (``dataset.json`` + ``imagesTr``/``labelsTr``[/``imagesTs``]).

    Cases come from nnU-Net v2's ``dataset`` key, else the MSD ``training``/``test`` lists, else from the files
    ``imagesTr/*_0000{file_ending}``. Files are not opened here (see :mod:`aemia.data.check`).
    """
    root = Path(folder)
    if not root.is_dir():
        raise InputError(root, "not a folder")
    meta = root / "dataset.json"
    if not meta.is_file():
        raise InputError(root, "no dataset.json (not an MSD / nnU-Net dataset folder)")
    try:
        raw = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(meta, f"cannot parse JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise InputError(meta, "dataset.json must hold a JSON object")
    labels, regions = _parse_labels(meta, raw.get("labels"))
    channels = _parse_channels(raw) or {0: "image"}
    ending = str(raw.get("file_ending", ".nii.gz"))
    n_chan = max(len(channels), 1)
    if isinstance(raw.get("dataset"), Mapping):  # nnU-Net v2 explicit file lists
        training = [
            MSDCase(cid, tuple((root / p).resolve() for p in v.get("images", [])),
                    (root / v["label"]).resolve() if v.get("label") else None)
            for cid, v in raw["dataset"].items()
        ]
    elif raw.get("training"):
        training = _cases_from_list(root, raw["training"], ending, n_chan, labelled=True)
    else:
        training = _discover(root, "imagesTr", "labelsTr", ending, n_chan)
    test = _cases_from_list(root, raw["test"], ending, n_chan, False) if raw.get("test") else _discover(
        root, "imagesTs", None, ending, n_chan)
    return MSDDataset(root=root, name=str(raw.get("name", root.name)), labels=labels, channels=channels,
                      file_ending=ending, training=training, test=test, regions=regions,
                      description=str(raw.get("description", "")), raw=raw)


def _as_image(item: ImageLike, like: Image | None, what: str, target: Path) -> Image:
    if isinstance(item, Image):
        return item
    if isinstance(item, (str, Path)):
        return read_image(item)
    arr = np.asarray(item)
    if like is None:
        raise InputError(target, f"{what} given as a bare array needs geometry: pass an Image for the first channel")
    if arr.shape == like.spatial_shape:
        return like.with_array(arr[None])
    if arr.shape[1:] == like.spatial_shape:
        return like.with_array(arr)
    raise InputError(target, f"{what} shape {arr.shape} does not match image shape {like.spatial_shape}")


def write_msd(
    folder: str | Path,
    name: str,
    cases: Iterable[tuple[str, Sequence[ImageLike] | ImageLike, ImageLike | None]],
    labels: Mapping[int, str],
    modality: Mapping[int, str] | Sequence[str] | str,
    description: str = "",
) -> MSDDataset:
    """Write an nnU-Net v2 / MSD folder: ``imagesTr/CASE_0000.nii.gz``, ``labelsTr/CASE.nii.gz``, ``dataset.json``.

    ``cases`` yields ``(case_id, images, label)``; ``images`` is one Image/array/path per channel or a single
    multi-channel Image (split into ``_0000``, ``_0001`` ...). Arrays take the geometry of the first channel.
    ``label`` may be None (case goes to ``imagesTs``). Every file is written atomically and ``dataset.json``
    last, so an interrupted run never leaves a folder that looks complete. Returns :func:`read_msd` of it.
    """
    root = Path(folder)
    channels = _parse_channels({"modality": modality})
    ending = ".nii.gz"
    written: list[tuple[str, bool]] = []
    for case_id, images, label in cases:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", case_id) or case_id.endswith(ending):
            raise InputError(case_id, "case id must be letters, digits, '_', '-', '.' (no path, no suffix)")
        items = list(images) if isinstance(images, (list, tuple)) else [images]
        first = _as_image(items[0], None, "image", root / case_id)
        chans = [first.with_array(first.array[c:c + 1]) for c in range(first.channels)] if len(items) == 1 else [
            first] + [_as_image(x, first, "image", root / case_id) for x in items[1:]]
        if len(chans) != len(channels):
            raise InputError(root / case_id, f"{len(chans)} image channels but modality lists {len(channels)}")
        lab = None if label is None else _as_image(label, first, "label", root / case_id)
        for img in chans[1:] + ([lab] if lab is not None else []):
            if img.spatial_shape != first.spatial_shape:
                raise InputError(root / case_id, f"shape {img.spatial_shape} differs from first channel {first.spatial_shape}")
        sub = "imagesTr" if lab is not None else "imagesTs"
        for c, img in enumerate(chans):
            write_nifti(img, root / sub / f"{case_id}_{c:04d}{ending}", like=first)
        if lab is not None:
            lab_arr = np.asarray(lab.array[0])
            values = set(np.unique(lab_arr).tolist())
            unknown = sorted(v for v in values if v not in labels)
            if unknown:
                raise InputError(root / "labelsTr" / f"{case_id}{ending}", f"label values {unknown} not in labels {dict(labels)}")
            write_nifti(lab_arr.astype(np.uint8 if max(values, default=0) < 256 else np.int16), root / "labelsTr" / f"{case_id}{ending}", like=first)
        written.append((case_id, lab is not None))
    train_ids = [cid for cid, has_label in written if has_label]
    test_ids = [cid for cid, has_label in written if not has_label]
    meta = {
        "name": name,
        "description": description,
        "channel_names": {str(k): v for k, v in channels.items()},
        "modality": {str(k): v for k, v in channels.items()},
        "labels": {v: int(k) for k, v in sorted(labels.items())},
        "numTraining": len(train_ids),
        "numTest": len(test_ids),
        "file_ending": ending,
        "tensorImageSize": "3D",
        "training": [{"image": f"./imagesTr/{c}{ending}", "label": f"./labelsTr/{c}{ending}"} for c in train_ids],
        "test": [f"./imagesTs/{c}{ending}" for c in test_ids],
    }
    write_json_atomic(root / "dataset.json", meta)
    return read_msd(root)
