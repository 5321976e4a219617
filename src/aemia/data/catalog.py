"""The bundled real data sets (``../shared/data``): cases, fixed splits, labels, licences.

Every data set is described by a :class:`CatalogDataset` built from the files on disk (nothing is copied).
Splits are fixed: official where the source has one, otherwise a seeded (stratified) shuffle of the sorted ids,
so the same ids land in the same split on every machine. Write :meth:`CatalogDataset.split_manifest` into run
folders so results can be traced.

Example::

    ds = get_dataset("kvasir")
    x, y, _ = ds.arrays("train", size=128)   # float32 (N,3,128,128) in [0,1], uint8 (N,128,128)
"""

from __future__ import annotations

import csv
import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aemia.data.image import Image
from aemia.data.io import read_image, read_npz_split
from aemia.data.normalise import picture_scale
from aemia.errors import InputError

SPLITS = ("train", "val", "test")


def data_root() -> Path:
    """The data folder: ``$AEMIA_DATA`` or ``<repo>/../shared/data`` (falling back to ``./../shared/data``)."""
    env = os.environ.get("AEMIA_DATA")
    if env:
        root = Path(env).expanduser()
        if not root.is_dir():
            raise InputError(root, "AEMIA_DATA does not point to a folder")
        return root.resolve()
    here = Path(__file__).resolve()
    candidates = [p.parent / "shared" / "data" for p in here.parents if (p / "pyproject.toml").is_file()]
    candidates.append(Path.cwd().parent / "shared" / "data")
    for cand in candidates:
        if cand.is_dir():
            return cand.resolve()
    raise InputError(candidates[-1], "data root not found; set AEMIA_DATA to the shared data folder")


@dataclass(frozen=True)
class Case:
    """One case: ``images`` one path per channel (``file.npz#split/index`` for MedMNIST), ``label`` or None."""

    id: str
    images: tuple[str, ...]
    label: str | None
    target: int | None = None


@dataclass
class Sample:
    """A loaded case. ``image`` float32 channels-first; ``label`` int spatial map (no channel axis) or None.

    ``extra`` holds additional per-case arrays, e.g. DRIVE's field-of-view mask ``extra["fov"]`` (bool) and the
    second observer ``extra["label2"]`` (test split only).
    """

    image: Image
    label: np.ndarray | None
    target: int | None
    id: str
    extra: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class CatalogDataset:
    """A bundled data set with its fixed splits. Use :func:`get_dataset` to obtain one."""

    name: str
    task: str  # "segmentation" | "classification" | "segmentation+classification"
    dims: int
    modality: str
    licence: str
    citation: str
    labels: dict[int, str]
    classes: list[str]
    splits: dict[str, list[Case]]
    seed: int | None = None
    split_method: str = ""
    notes: str = ""
    root: Path | None = None
    label_threshold: int | None = None  # 2D masks: label = first channel > threshold
    label_map: dict[int, int] | None = None  # applied to every label map (e.g. whole tumour)
    case_label_maps: dict[str, dict[int, int]] = field(default_factory=dict)  # per case id
    scale_255: bool = False  # pictures: scale by bit depth (the ``picture`` normaliser)
    extra_files: dict[str, dict[str, str]] = field(default_factory=dict)  # case id -> {key: mask path}
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    # ------------------------------------------------------------------ loading
    def case_ids(self, split: str) -> list[str]:
        return [c.id for c in self._split(split)]

    def _split(self, split: str) -> list[Case]:
        if split not in self.splits:
            raise InputError(None, f"data set '{self.name}' has no split '{split}' (splits: {list(self.splits)})")
        return self.splits[split]

    def load(self, case: Case) -> Sample:
        """Read one case: image float32 (2D pictures scaled to [0,1], volumes in their own units), label int."""
        if case.images and "#" in case.images[0]:
            image = self._npz_image(case.images[0])
        else:
            parts = [read_image(p) for p in case.images]
            first = parts[0]
            for p in parts[1:]:
                if p.spatial_shape != first.spatial_shape:
                    raise InputError(p.path, f"shape {p.spatial_shape} differs from {first.path} {first.spatial_shape}")
            arr = np.concatenate([p.array for p in parts], axis=0)
            arr = picture_scale(arr) if self.scale_255 else arr.astype(np.float32)
            image = Image(arr, first.spacing, first.affine, first.path, first.source_affine)
        label = None if case.label is None else self._read_label(case.label, case.id)
        if label is not None and label.shape != image.spatial_shape:
            raise InputError(case.label, f"label shape {label.shape} differs from image shape {image.spatial_shape}")
        extra = {k: read_image(p).array[0] > 127 for k, p in self.extra_files.get(case.id, {}).items()}
        return Sample(image=image, label=label, target=case.target, id=case.id, extra=extra)

    def _read_label(self, path: str, case_id: str) -> np.ndarray:
        arr = read_image(path).array[0]
        if self.label_threshold is not None:
            return (arr > self.label_threshold).astype(np.uint8)
        lab = np.rint(arr).astype(np.int16 if arr.size and np.max(arr) > 255 else np.uint8)
        for mapping in (self.case_label_maps.get(case_id), self.label_map):
            if mapping:
                lut = np.zeros(max(int(lab.max()), max(mapping)) + 1, dtype=lab.dtype)
                lut[: len(lut)] = np.arange(len(lut))
                for src, dst in mapping.items():
                    lut[src] = dst
                lab = lut[lab]
        return lab

    def _npz_image(self, pseudo: str) -> Image:
        file, _, item = pseudo.partition("#")
        split, _, index = item.partition("/")
        images, _ = self._npz(file, split)
        arr = images[int(index)]
        arr = np.moveaxis(arr, -1, 0) if arr.ndim == 3 else arr[None]
        return Image(picture_scale(arr), (1.0, 1.0), np.eye(4), pseudo)

    def _npz(self, file: str, split: str) -> tuple[np.ndarray, np.ndarray]:
        key = ("npz", file, split)
        if key not in self._cache:
            self._cache[key] = read_npz_split(file, split)
        return self._cache[key]

    # ------------------------------------------------------------------ arrays for 2D training
    def arrays(self, split: str, size: int | None = None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Whole split as arrays (2D sets only), cached per ``(split, size)``; do not modify them in place.

        Returns images float32 ``(N, C, H, W)`` in [0, 1], labels uint8 ``(N, H, W)`` or None, targets int64
        ``(N,)`` or None. ``size`` resizes to ``size x size`` (bilinear images, nearest labels); it is required
        when images differ in size (PH2).
        """
        if self.dims != 2:
            raise InputError(None, f"arrays() is for 2D data sets; '{self.name}' is {self.dims}D: use load(case)")
        key = ("arrays", split, size)
        if key not in self._cache:
            self._cache[key] = self._build_arrays(split, size)
        return self._cache[key]

    def _build_arrays(self, split: str, size: int | None):
        cases = self._split(split)
        targets = np.array([c.target for c in cases], dtype=np.int64) if self.classes else None
        if cases and "#" in cases[0].images[0]:
            file, _, item = cases[0].images[0].partition("#")
            images, _ = self._npz(file, item.partition("/")[0])
            idx = [int(c.images[0].rpartition("/")[2]) for c in cases]
            x = images[idx]
            x = np.moveaxis(x, -1, 1) if x.ndim == 4 else x[:, None]
            x = picture_scale(x)
            return (_resize_stack(x, size, nearest=False) if size else x), None, targets
        xs, ys = [], []
        for case in cases:
            s = self.load(case)
            xs.append(_resize_stack(s.image.array[None], size, False)[0] if size else s.image.array)
            if s.label is not None:
                ys.append(_resize_stack(s.label[None, None], size, True)[0, 0] if size else s.label)
        shapes = {x.shape for x in xs}
        if len(shapes) > 1:
            raise InputError(None, f"'{self.name}' images differ in size ({len(shapes)} shapes): choose a training size with --size (e.g. --size 256)")
        x = np.stack(xs).astype(np.float32) if xs else np.zeros((0, 0, 0, 0), np.float32)
        y = np.stack(ys).astype(np.uint8) if ys and len(ys) == len(xs) else None
        return x, y, targets

    # ------------------------------------------------------------------ provenance
    def split_manifest(self) -> dict:
        """``{"dataset", "seed", "method", "splits": {split: [ids]}}`` to write into a run folder."""
        return {
            "dataset": self.name,
            "seed": self.seed,
            "method": self.split_method,
            "splits": {k: [c.id for c in v] for k, v in self.splits.items()},
        }

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.splits.items()}


def _resize_stack(x: np.ndarray, size: int, nearest: bool) -> np.ndarray:
    """Resize ``(N, C, H, W)`` to ``(N, C, size, size)`` with Pillow (bilinear with antialias, or nearest)."""
    from PIL import Image as PILImage

    n, c, h, w = x.shape
    if (h, w) == (size, size):
        return x
    out = np.empty((n, c, size, size), dtype=x.dtype)
    method = PILImage.NEAREST if nearest else PILImage.BILINEAR
    for i in range(n):
        for j in range(c):
            src = x[i, j].astype(np.float32 if not nearest else np.int32)
            pic = PILImage.fromarray(src, mode="F" if not nearest else "I")
            out[i, j] = np.asarray(pic.resize((size, size), method)).astype(x.dtype)
    return out


# ---------------------------------------------------------------------------------------- split helpers


def seeded_split(ids: list[str], fractions: tuple[float, ...], seed: int,
                 strata: list[Any] | None = None) -> list[list[str]]:
    """Shuffle sorted ``ids`` with ``seed`` and cut by ``fractions`` (per stratum if ``strata`` is given).

    Sizes are rounded per part, the last part takes the rest. Output ids are sorted within each part.
    """
    groups: dict[Any, list[str]] = {}
    for i, sid in sorted(zip(ids, strata if strata is not None else [None] * len(ids)), key=lambda t: t[0]):
        groups.setdefault(sid, []).append(i)
    rng = np.random.default_rng(seed)
    parts: list[list[str]] = [[] for _ in fractions]
    for key in sorted(groups, key=str):
        members = groups[key]
        perm = [members[k] for k in rng.permutation(len(members))]
        start = 0
        for p, frac in enumerate(fractions):
            n = len(perm) - start if p == len(fractions) - 1 else int(round(frac * len(perm)))
            parts[p].extend(perm[start:start + n])
            start += n
    return [sorted(p) for p in parts]


def _need(path: Path) -> Path:
    if not path.exists():
        raise InputError(path, "missing from the data folder (see its SOURCE.md)")
    return path


# ---------------------------------------------------------------------------------------- builders

_KVASIR_CITE = 'Jha D. et al., "Kvasir-SEG: A Segmented Polyp Dataset", MMM 2020 (arXiv:1911.07069)'
_PH2_CITE = ('Mendonca T. et al., "PH2 - A dermoscopic image database for research and benchmarking", '
             "IEEE EMBC 2013")
_DRIVE_CITE = ('Staal J. et al., "Ridge-based vessel segmentation in color images of the retina", '
               "IEEE TMI 23(4) 2004")
_MEDMNIST_CITE = 'Yang J. et al., "MedMNIST v2", Scientific Data 10, 41 (2023)'
_BUSI_CITE = 'Al-Dhabyani W. et al., "Dataset of breast ultrasound images", Data in Brief 28 (2020) 104863'
_BRATS_CITE = ('Menze B.H. et al., "The Multimodal Brain Tumor Image Segmentation Benchmark (BRATS)", '
               "IEEE TMI 34(10) 2015")
_TS_CITE = ('Wasserthal J. et al., "TotalSegmentator: Robust Segmentation of 104 Anatomic Structures in CT '
            'Images", Radiology: Artificial Intelligence 2023, doi:10.1148/ryai.230024')
_RESEARCH = "research use only (no licence file; cite the paper)"


def _kvasir(root: Path) -> CatalogDataset:
    base = _need(root / "kvasir_seg_256")
    ids = sorted(p.stem for p in (base / "images").glob("*.jpg"))
    cases = {i: Case(i, (str(base / "images" / f"{i}.jpg"),), str(base / "masks" / f"{i}.jpg")) for i in ids}
    parts = seeded_split(ids, (0.8, 0.1, 0.1), seed=0)
    return CatalogDataset(
        name="kvasir", task="segmentation", dims=2, modality="colonoscopy (RGB)", licence=_RESEARCH,
        citation=_KVASIR_CITE, labels={0: "background", 1: "polyp"}, classes=[],
        splits={s: [cases[i] for i in p] for s, p in zip(SPLITS, parts)}, seed=0,
        split_method="seeded shuffle of sorted ids, 80/10/10", root=base, label_threshold=127, scale_255=True,
        notes="256x256 (aspect ratio not kept); JPEG masks binarised at 127 on the first channel")


def _ph2(root: Path) -> CatalogDataset:
    base = _need(root / "ph2_dermoscopy")
    classes = ["common nevus", "atypical nevus", "melanoma"]
    diag: dict[str, int] = {}
    with open(_need(base / "PH2_dataset.csv"), encoding="utf-8-sig", newline="") as fh:
        for row in csv.DictReader(fh):
            name = (row.get("Name") or "").strip()
            if name.startswith("IMD") and (row.get("Clinical Diagnosis") or "").strip().isdigit():
                diag[name] = int(row["Clinical Diagnosis"])
    ids = sorted(i for i in diag if (base / "images" / f"{i}.jpg").exists())
    cases = {i: Case(i, (str(base / "images" / f"{i}.jpg"),), str(base / "masks" / f"{i}_lesion.png"), diag[i])
             for i in ids}
    parts = seeded_split(ids, (0.7, 0.1, 0.2), seed=0, strata=[diag[i] for i in ids])
    return CatalogDataset(
        name="ph2", task="segmentation+classification", dims=2, modality="dermoscopy (RGB)", licence=_RESEARCH,
        citation=_PH2_CITE, labels={0: "background", 1: "lesion"}, classes=classes,
        splits={s: [cases[i] for i in p] for s, p in zip(SPLITS, parts)}, seed=0,
        split_method="seeded shuffle stratified by diagnosis, 70/10/20", root=base, label_threshold=127,
        scale_255=True, notes="images ~767x576 and vary slightly: arrays() needs size=")


def _drive(root: Path) -> CatalogDataset:
    base = _need(root / "drive_retina")
    cases: dict[str, Case] = {}
    extra: dict[str, dict[str, str]] = {}
    for folder, tag in (("training", "training"), ("test", "test")):
        for img in sorted((base / folder / "images").glob(f"*_{tag}.tif")):
            num = img.name.split("_")[0]
            cid = f"{num}_{tag}"
            cases[cid] = Case(cid, (str(img),), str(base / folder / "1st_manual" / f"{num}_manual1.gif"))
            extra[cid] = {"fov": str(base / folder / "mask" / f"{num}_{tag}_mask.gif")}
            # second observer: NN_manual2.gif, but 01-04 and 14 are stored as vessel(N).gif
            for second in (base / folder / "2nd_manual" / f"{num}_manual2.gif",
                           base / folder / "2nd_manual" / f"vessel({int(num)}).gif"):
                if second.exists():
                    extra[cid]["label2"] = str(second)
                    break
    training = sorted(c for c in cases if c.endswith("_training"))
    train, val = seeded_split(training, (0.8, 0.2), seed=0)
    test = sorted(c for c in cases if c.endswith("_test"))
    return CatalogDataset(
        name="drive", task="segmentation", dims=2, modality="retinal fundus photograph (RGB)",
        licence="research only after registration with the organisers (redistribution status unclear)",
        citation=_DRIVE_CITE, labels={0: "background", 1: "vessel"}, classes=[],
        splits={"train": [cases[i] for i in train], "val": [cases[i] for i in val], "test": [cases[i] for i in test]},
        seed=0, split_method="official training/test; 4 of 20 training images held out as val (seeded)",
        root=base, label_threshold=127, scale_255=True, extra_files=extra,
        notes="565x584; Sample.extra['fov'] = field-of-view mask, extra['label2'] = second observer (test)")


def _medmnist(root: Path, name: str, folder: str, file: str, classes: list[str], modality: str,
              citation: str) -> CatalogDataset:
    path = _need(root / folder / file)
    splits = {}
    for split in SPLITS:
        _, labels = read_npz_split(path, split)
        splits[split] = [Case(f"{split}_{i:05d}", (f"{path}#{split}/{i}",), None, int(t))
                         for i, t in enumerate(labels)]
    return CatalogDataset(
        name=name, task="classification", dims=2, modality=modality, licence="CC BY 4.0", citation=citation,
        labels={}, classes=classes, splits=splits, seed=None, split_method="official MedMNIST split",
        root=path.parent, scale_255=True, notes="28x28 grey; ids are <split>_<index in the npz>")


def _pneumoniamnist(root: Path) -> CatalogDataset:
    return _medmnist(root, "pneumoniamnist", "pneumoniamnist", "pneumoniamnist_reconstructed.npz",
                     ["normal", "pneumonia"], "chest X-ray",
                     f"Kermany D. et al., Cell 172(5) 2018; {_MEDMNIST_CITE}")


def _breastmnist(root: Path) -> CatalogDataset:
    return _medmnist(root, "breastmnist", "breastmnist", "breastmnist.npz",
                     ["malignant", "normal+benign"], "breast ultrasound", f"{_BUSI_CITE}; {_MEDMNIST_CITE}")


def _busi(root: Path) -> CatalogDataset:
    base = _need(root / "busi_classification")
    classes = ["normal", "benign", "malignant"]
    cases: dict[str, Case] = {}
    for k, cls in enumerate(classes):
        for img in sorted((base / cls).glob("*.png")):
            cid = img.stem.replace(" ", "").replace("(", "_").replace(")", "")  # "benign (1)" -> "benign_1"
            cases[cid] = Case(cid, (str(img),), None, k)
    ids = sorted(cases)
    parts = seeded_split(ids, (0.7, 0.1, 0.2), seed=0, strata=[cases[i].target for i in ids])
    return CatalogDataset(
        name="busi", task="classification", dims=2, modality="breast ultrasound (RGB PNG)",
        licence="CC BY 4.0 (as far as known; research use)", citation=_BUSI_CITE, labels={}, classes=classes,
        splits={s: [cases[i] for i in p] for s, p in zip(SPLITS, parts)}, seed=0,
        split_method="seeded shuffle stratified by class, 70/10/20", root=base, scale_255=True,
        notes="256x256, no masks; same patients as breastmnist - never mix the two across splits")


_BRATS_LABELS = {0: "background", 1: "necrosis", 2: "edema", 3: "non-enhancing tumour", 4: "enhancing tumour"}


def _brats(root: Path, whole_tumour: bool = False) -> CatalogDataset:
    base = _need(root / "brats2015_deepmedic_sample")
    splits: dict[str, list[Case]] = {}
    for split, folder in (("train", "train"), ("val", "validation"), ("test", "test")):
        splits[split] = [
            Case(d.name, (str(d / "Flair_subtrMeanDivStd.nii.gz"), str(d / "T1c_subtrMeanDivStd.nii.gz")),
                 str(d / "OTMultiClass.nii.gz"))
            for d in sorted((base / folder).iterdir()) if d.is_dir()
        ]
    return CatalogDataset(
        name="brats_wt" if whole_tumour else "brats", task="segmentation", dims=3, modality="MRI (FLAIR, T1c)",
        licence="CC BY-NC-SA 3.0 (non-commercial)", citation=_BRATS_CITE,
        labels={0: "background", 1: "whole tumour"} if whole_tumour else dict(_BRATS_LABELS), classes=[],
        splits=splits, seed=None, split_method="as given (train/validation/test folders)", root=base,
        label_map={1: 1, 2: 1, 3: 1, 4: 1} if whole_tumour else None,
        notes="240x240x155, 1 mm; channels Flair, T1c (z-scored inside the brain)")


def _totalseg(root: Path) -> CatalogDataset:
    base = _need(root / "totalsegmentator_example_ct")
    maps = json.loads(_need(base / "labels.json").read_text(encoding="utf-8"))
    v1 = {int(k): v for k, v in next(m for k, m in maps.items() if k.startswith("total_v1")).items()}
    v2 = {int(k): v for k, v in next(m for k, m in maps.items() if k.startswith("total ")).items()}
    by_name = {name: i for i, name in v1.items()}
    v2_to_v1 = {i: by_name.get(name, 0) for i, name in v2.items()}
    train = Case("example_ct", (str(base / "example_ct.nii.gz"),), str(base / "example_ct_seg_totalv1.nii.gz"))
    test = Case("example_ct_dicom", (str(base / "example_ct_dicom"),), str(base / "example_seg_dicom.nii.gz"))
    return CatalogDataset(
        name="totalseg_ct", task="segmentation", dims=3, modality="CT (HU)",
        licence="Apache-2.0 (repository); CT data CC BY 4.0 as far as known", citation=_TS_CITE,
        labels={0: "background", **dict(sorted(v1.items()))}, classes=[],
        splits={"train": [train], "val": [], "test": [test]}, seed=None,
        split_method="fixed: train = 3 mm CT (v1 labels), test = DICOM CT (v2 labels mapped to v1 ids)",
        root=base, case_label_maps={"example_ct_dicom": v2_to_v1},
        notes="pseudo-labels (model outputs); v2-only classes (heart, spinal_cord, sternum, costal_cartilages, "
              "...) become 0 in the DICOM case")


_CHAOS_CITE = ('Kavur A.E. et al., "CHAOS Challenge - combined (CT-MR) healthy abdominal organ segmentation", '
               "Medical Image Analysis 69 (2021) 101950")
_IRCAD_CITE = 'Soler L. et al., "3D image reconstruction for comparison of algorithm database", IRCAD 2010'


def _liver_ct(root: Path) -> CatalogDataset:
    """Every healthy liver mask we have (training) and the real-tumour case ircad_17 (test only).

    Labels: 0 background, 1 liver, 2 liver tumour (ircad_17 only). The TotalSegmentator cases keep only their
    liver (v1 id 5 for the 3 mm CT, v2 id 5 for the DICOM series); every other organ becomes background."""
    real = _need(root / "liver_ct_real")
    ts = _need(root / "totalsegmentator_example_ct")
    liver_only = {k: (1 if k == 5 else 0) for k in range(1, 256)}
    train = [Case("chaos_ct_sample", (str(real / "chaos_ct_sample" / "ct.nii.gz"),),
                  str(real / "chaos_ct_sample" / "label.nii.gz")),
             Case("ts_example_ct", (str(ts / "example_ct.nii.gz"),), str(ts / "example_ct_seg_totalv1.nii.gz")),
             Case("ts_example_ct_dicom", (str(ts / "example_ct_dicom"),), str(ts / "example_seg_dicom.nii.gz"))]
    test = [Case("ircad_17", (str(real / "ircad_17" / "ct.nii.gz"),), str(real / "ircad_17" / "label.nii.gz"))]
    return CatalogDataset(
        name="liver_ct", task="segmentation", dims=3, modality="CT (HU)",
        licence="CHAOS CC BY-SA 4.0; TotalSegmentator Apache-2.0 / CC BY 4.0; 3D-IRCADb-01 CC BY-NC-ND 4.0 "
                "(non-commercial, test only)",
        citation=f"{_CHAOS_CITE}; {_TS_CITE}; {_IRCAD_CITE}",
        labels={0: "background", 1: "liver", 2: "liver tumor"}, classes=[],
        splits={"train": train, "val": [], "test": test}, seed=None,
        split_method="fixed: train = every healthy liver mask (CHAOS + the two TotalSegmentator CTs), "
                     "test = ircad_17 (real tumours; never trained on)",
        root=real, case_label_maps={"ts_example_ct": liver_only, "ts_example_ct_dicom": liver_only},
        notes="TotalSegmentator livers are pseudo-labels (model outputs); CHAOS and ircad_17 are expert masks")


_BUILDERS: dict[str, Callable[[Path], CatalogDataset]] = {
    "kvasir": _kvasir,
    "ph2": _ph2,
    "drive": _drive,
    "pneumoniamnist": _pneumoniamnist,
    "breastmnist": _breastmnist,
    "busi": _busi,
    "brats": _brats,
    "brats_wt": functools.partial(_brats, whole_tumour=True),
    "totalseg_ct": _totalseg,
    "liver_ct": _liver_ct,
}


def list_datasets() -> list[str]:
    """Names accepted by :func:`get_dataset`."""
    return list(_BUILDERS)


@functools.lru_cache(maxsize=32)
def _get_cached(name: str, root: Path) -> CatalogDataset:
    return _BUILDERS[name](root)


def from_msd(folder: str | Path, seed: int = 0) -> CatalogDataset:
    """A user's MSD / nnU-Net folder as a data set: ``imagesTr``/``labelsTr`` split 80/10/10 with ``seed``
    (``imagesTs`` is not used: it has no labels). 2D if the images are pictures, 3D otherwise."""
    from aemia.data.dataset import read_msd
    from aemia.data.io import image_kind

    msd = read_msd(folder)
    cases = {c.id: Case(c.id, tuple(str(p) for p in c.images), str(c.label) if c.label else None)
             for c in msd.training if c.label is not None}
    if len(cases) < 3:
        raise InputError(folder, f"needs at least 3 labelled training cases, found {len(cases)}")
    parts = seeded_split(sorted(cases), (0.8, 0.1, 0.1), seed=seed)
    first = next(iter(cases.values())).images[0]
    dims = 2 if image_kind(first) == "picture" else 3
    modality = " ".join(msd.channels.values()) if msd.channels else ""
    return CatalogDataset(
        name=Path(folder).name, task="segmentation", dims=dims, modality=modality, licence="(your data)",
        citation="", labels=dict(msd.labels) or {0: "background", 1: "foreground"}, classes=[],
        splits={s: [cases[i] for i in p] for s, p in zip(SPLITS, parts)}, seed=seed,
        split_method=f"seeded shuffle of sorted training ids, 80/10/10 (seed {seed})", root=Path(folder),
        scale_255=dims == 2)


def get_dataset(name: str, root: Path | None = None) -> CatalogDataset:
    """The catalog entry ``name`` built from ``root`` (default :func:`data_root`), or — when ``name`` is a
    folder holding a ``dataset.json`` — that MSD / nnU-Net data set. Cached per (name, root)."""
    if name not in _BUILDERS and (Path(name) / "dataset.json").is_file():
        return from_msd(name)
    if name not in _BUILDERS:
        raise InputError(None, f"unknown data set '{name}'; known: {', '.join(_BUILDERS)}")
    return _get_cached(name, Path(root).resolve() if root is not None else data_root())
