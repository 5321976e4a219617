"""Review priority from several models' soft predictions: the AbdomenAtlas-8K attention procedure.

Paper: Qu et al., "AbdomenAtlas-8K: Annotating 8,000 CT Volumes for Multi-Organ Segmentation in Three Weeks",
NeurIPS 2023 Datasets & Benchmarks. Facts used here are in ``reference/METHODS.md`` §5.2 (procedure) and §0 item 7
(the "uncertainty" is ``entr(p) = -p ln p`` on each organ's soft prediction, not the full binary entropy).

For every case and target organ, with ``M`` models' probability maps ``p_1..p_M`` of that organ:

* **inconsistency** = per-voxel population standard deviation across models (``ddof=0``; 0 with one model);
  binary map ``std > 0.1`` then morphological opening.
* **uncertainty** = ``mean_m entr(p_m)``; binary map ``> 0.05`` then the same opening.
* **overlap** = voxels where the organ's pseudo-label (mean over models ``> 0.5``) coincides with the pseudo-label of
  any other organ of the overlap set. As in §5.2 it is *not* opened (the opening is only described for the two maps
  above, and it would erase the thin overlap band between touching organs); ``open_overlap=True`` opens it too.
* **attention** = union of the three binary maps. The float inconsistency / uncertainty maps are zeroed outside their
  binary maps and the organ's **heat map** is ``(std + entropy + overlap) / max`` (uint8 when written).

**Opening** = binary erosion then binary dilation, each ``iterations=2`` times, with the 3x3x3 structuring element of
full (26-) connectivity (``scipy.ndimage.generate_binary_structure(3, 3)``); outside the volume counts as background.
A blob survives only if a 5x5x5 cube fits inside it; isolated voxels and bands thinner than 5 voxels vanish.

**Case priority** = the sum over target organs of each organ's attention volume (voxels x voxel volume in mm³; a
voxel flagged for two organs counts twice, as the paper sums per-organ maps). Cases are sorted by it, descending.
Organs of a case are listed by attention volume; the paper's order (by the sum of the heat map) is kept as well.

:func:`compute_case` works on arrays; :func:`prioritize` reads a predictions folder (layout in
:class:`PredictionSet`), validates it, and writes ``priority.csv``, ``review.json``, ``priority.png`` and per-case
NIfTI maps (see :func:`prioritize`).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from aemia.errors import InputError
from aemia.utils.io import atomic_path, write_json_atomic, write_text_atomic

# The eight organs annotated in AbdomenAtlas-8K (METHODS.md §5.2, "Labels").
ABDOMENATLAS_ORGANS: tuple[str, ...] = (
    "spleen", "liver", "kidney_right", "kidney_left", "stomach", "gallbladder", "pancreas", "aorta",
    "inferior_vena_cava",
)
# Bit flags of the per-case ``<case>_flags.nii.gz`` map.
FLAG_INCONSISTENCY = 1
FLAG_UNCERTAINTY = 2
FLAG_OVERLAP = 4
FLAG_NAMES = {FLAG_INCONSISTENCY: "inconsistency", FLAG_UNCERTAINTY: "uncertainty", FLAG_OVERLAP: "overlap"}

_PROB_TOLERANCE = 1e-4  # float rounding of stored probabilities (e.g. 1.00001) is accepted and clipped


@dataclass(frozen=True)
class ReviewConfig:
    """Parameters of the attention maps; defaults are the paper's (METHODS.md §5.2).

    Attributes:
        std_threshold: inconsistency binary map is ``std across models > std_threshold`` (paper: 0.1).
        entropy_threshold: uncertainty binary map is ``mean over models of -p ln p > entropy_threshold`` (paper: 0.05).
        opening_iterations: erosion iterations followed by as many dilation iterations (paper: 2).
        connectivity: structuring element ``generate_binary_structure(3, connectivity)``; 3 = the full 3x3x3 cube
            used by the paper (26-neighbourhood).
        pseudo_label_threshold: an organ's pseudo-label is ``mean over models > threshold``. §5.2 says the average
            of the models gives the pseudo-label; 0.5 is the usual sigmoid cut (assumption, not stated in §5.2).
        open_overlap: also open the overlap map (paper: no, see the module docstring).
        overlap_organs: the "other" organs whose pseudo-labels each target organ is checked against (the paper's
            ``ORGAN_NAME_OVERLAP``); ``None`` = all target organs of the case.
    """

    std_threshold: float = 0.1
    entropy_threshold: float = 0.05
    opening_iterations: int = 2
    connectivity: int = 3
    pseudo_label_threshold: float = 0.5
    open_overlap: bool = False
    overlap_organs: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("std_threshold", "entropy_threshold", "pseudo_label_threshold"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value >= 0):
                flag = "--" + name.replace("_", "-")
                raise InputError(None, f"{name} ({flag}) must be a finite number >= 0, got {value!r}")
        if not (isinstance(self.opening_iterations, int) and self.opening_iterations >= 0):
            raise InputError(None, f"opening_iterations must be an integer >= 0, got {self.opening_iterations!r}")
        if self.connectivity not in (1, 2, 3):
            raise InputError(None, f"connectivity must be 1, 2 or 3, got {self.connectivity!r}")


@dataclass(frozen=True)
class Organ:
    """A target organ. ``label`` is the ``--organs`` key: the organ's channel (0-based) in a 4D probability file,
    or its label in the per-organ layout. ``value`` is what the organ map stores for it (default: ``label``)."""

    label: int
    name: str
    value: int | None = None

    @property
    def map_value(self) -> int:
        return self.label if self.value is None else self.value


@dataclass
class OrganAttention:
    """Voxel counts of one organ's binary maps in one case (after opening)."""

    inconsistency: int = 0
    uncertainty: int = 0
    overlap: int = 0
    attention: int = 0
    heat_sum: float = 0.0  # sum of the organ's heat map (std + entropy + overlap) / max, the paper's organ order


@dataclass
class CaseAttention:
    """Attention of one case: per-organ counts plus case-level maps (spatial shape ``(X, Y, Z)``).

    ``flags``: uint8 bit flags, union over organs (1 inconsistency, 2 uncertainty, 4 overlap).
    ``organ_map``: the label of the organ whose attention covers the voxel (the one with the highest heat if
    several), 0 elsewhere. ``heat``: float32 in [0, 1], voxel-wise max over organs of their normalised heat maps.
    ``probability``: float32, voxel-wise max over organs of the mean probability (the figure's background when no
    CT is given).
    """

    organs: dict[str, OrganAttention]
    flags: np.ndarray
    organ_map: np.ndarray
    heat: np.ndarray
    voxel_volume_mm3: float = 1.0
    probability: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=np.float32))

    @property
    def attention_voxels(self) -> int:
        """The paper's case score: attention voxels summed over organs."""
        return int(sum(o.attention for o in self.organs.values()))

    @property
    def attention_mm3(self) -> float:
        return self.attention_voxels * self.voxel_volume_mm3

    def volume_mm3(self, kind: str) -> float:
        """Summed volume over organs of one map: ``inconsistency``, ``uncertainty``, ``overlap`` or ``attention``."""
        return float(sum(getattr(o, kind) for o in self.organs.values())) * self.voxel_volume_mm3

    def organs_by_volume(self) -> list[tuple[str, float]]:
        """Organs with attention, largest attention volume first (ties: name)."""
        items = [(n, o.attention * self.voxel_volume_mm3) for n, o in self.organs.items() if o.attention > 0]
        return sorted(items, key=lambda t: (-t[1], t[0]))

    def organs_by_heat(self) -> list[str]:
        """Organs with a non-zero heat map, largest heat-map sum first (the paper's ``priority.csv`` order)."""
        items = [(n, o.heat_sum) for n, o in self.organs.items() if o.heat_sum > 0]
        return [n for n, _ in sorted(items, key=lambda t: (-t[1], t[0]))]

    def top_slice(self, axis: int = 2) -> int:
        """Index along ``axis`` (2 = axial for NIfTI voxel order) of the slice with the most attention voxels."""
        other = tuple(a for a in range(self.flags.ndim) if a != axis)
        return int(np.argmax((self.flags > 0).sum(axis=other)))


# --------------------------------------------------------------------------------------------- computation


def open_mask(mask: np.ndarray, iterations: int = 2, connectivity: int = 3) -> np.ndarray:
    """Binary opening: ``iterations`` erosions then ``iterations`` dilations (METHODS.md §5.2: 2 and 3x3x3 full).

    Works for 2D masks too (the element is then the 3x3 square of the same connectivity, capped at 2).
    """
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    if iterations <= 0 or not mask.any():
        return mask.copy()
    struct = ndimage.generate_binary_structure(mask.ndim, min(connectivity, mask.ndim))
    eroded = ndimage.binary_erosion(mask, structure=struct, iterations=iterations, border_value=0)
    if not eroded.any():
        return eroded
    return ndimage.binary_dilation(eroded, structure=struct, iterations=iterations)


def entropy_map(probs: np.ndarray) -> np.ndarray:
    """``entr(p) = -p ln p`` (0 at p = 0), i.e. ``scipy.special.entr`` / ``torch.special.entr`` (METHODS.md §0.7)."""
    from scipy.special import entr

    return entr(np.asarray(probs, dtype=np.float32)).astype(np.float32, copy=False)


def organ_statistics(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From one organ's maps of ``M`` models, shape ``(M, ...)``: (std across models (ddof=0), mean over models of
    ``-p ln p``, mean probability). With one model the std is 0 (METHODS.md §5.2)."""
    p = np.asarray(probs, dtype=np.float32)
    if p.ndim < 2:
        raise ValueError(f"expected (models, ...) probabilities, got shape {p.shape}")
    mean = p.mean(axis=0)
    std = p.std(axis=0) if p.shape[0] > 1 else np.zeros_like(mean)
    ent = entropy_map(p).mean(axis=0)
    return std, ent, mean


def compute_case(
    organs: Sequence[Organ],
    load: Callable[[Organ], np.ndarray],
    config: ReviewConfig | None = None,
    voxel_volume_mm3: float = 1.0,
) -> CaseAttention:
    """Attention maps of one case. ``load(organ)`` returns that organ's probabilities, shape ``(M, X, Y, Z)``.

    Organs are loaded one at a time (memory: ``M`` maps of one organ plus a few masks per organ).
    """
    cfg = config or ReviewConfig()
    if not organs:
        raise InputError(None, "no target organs")
    opened: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # name -> (incons bin, uncert bin, float sum)
    pseudo: dict[str, np.ndarray] = {}
    probability: np.ndarray | None = None
    shape: tuple[int, ...] | None = None
    for organ in organs:
        p = np.asarray(load(organ))
        if shape is None:
            shape = p.shape[1:]
        elif p.shape[1:] != shape:
            raise InputError(None, f"organ '{organ.name}' has shape {p.shape[1:]}, other organs {shape}")
        std, ent, mean = organ_statistics(p)
        del p
        inc = open_mask(std > cfg.std_threshold, cfg.opening_iterations, cfg.connectivity)
        unc = open_mask(ent > cfg.entropy_threshold, cfg.opening_iterations, cfg.connectivity)
        # Float maps zeroed outside their binary maps (§5.2), summed for the heat map.
        heat_float = np.where(inc, std, np.float32(0)) + np.where(unc, ent, np.float32(0))
        opened[organ.name] = (inc, unc, heat_float.astype(np.float32, copy=False))
        pseudo[organ.name] = mean > cfg.pseudo_label_threshold
        probability = mean if probability is None else np.maximum(probability, mean)
    assert shape is not None and probability is not None
    overlap_set = [o.name for o in organs if cfg.overlap_organs is None or o.name in cfg.overlap_organs]
    count = np.zeros(shape, dtype=np.uint8)
    for name in overlap_set:
        count += pseudo[name]

    flags = np.zeros(shape, dtype=np.uint8)
    best_heat = np.zeros(shape, dtype=np.float32)
    organ_map = np.zeros(shape, dtype=np.int32)
    stats: dict[str, OrganAttention] = {}
    for organ in organs:
        inc, unc, heat_float = opened.pop(organ.name)
        own = pseudo[organ.name]
        others = count - own.astype(np.uint8) if organ.name in overlap_set else count
        ovl = own & (others > 0)
        if cfg.open_overlap:
            ovl = open_mask(ovl, cfg.opening_iterations, cfg.connectivity)
        att = inc | unc | ovl
        heat = heat_float + ovl.astype(np.float32)
        peak = float(heat.max()) if heat.size else 0.0
        if peak > 0:
            heat /= peak
        stats[organ.name] = OrganAttention(
            inconsistency=int(inc.sum()), uncertainty=int(unc.sum()), overlap=int(ovl.sum()),
            attention=int(att.sum()), heat_sum=float(heat.sum(dtype=np.float64)),
        )
        flags |= inc.astype(np.uint8) * FLAG_INCONSISTENCY
        flags |= unc.astype(np.uint8) * FLAG_UNCERTAINTY
        flags |= ovl.astype(np.uint8) * FLAG_OVERLAP
        # Organ map: attention voxels go to the organ with the highest heat (first organ on ties).
        take = att & ((organ_map == 0) | (heat > best_heat))
        organ_map[take] = organ.map_value
        best_heat[take] = heat[take]
    return CaseAttention(organs=stats, flags=flags, organ_map=organ_map, heat=best_heat,
                         voxel_volume_mm3=float(voxel_volume_mm3), probability=probability)


def compute_case_arrays(
    probs: Mapping[str, np.ndarray], config: ReviewConfig | None = None, voxel_volume_mm3: float = 1.0,
) -> CaseAttention:
    """:func:`compute_case` for in-memory arrays: ``{organ name: (M, X, Y, Z) probabilities}``, labels 1..K."""
    organs = [Organ(label=i + 1, name=n) for i, n in enumerate(probs)]
    return compute_case(organs, lambda o: np.asarray(probs[o.name]), config, voxel_volume_mm3)


def rank_cases(results: Mapping[str, CaseAttention]) -> list[str]:
    """Case ids by attention volume, largest first (ties: case id)."""
    return sorted(results, key=lambda c: (-results[c].attention_mm3, c))


# --------------------------------------------------------------------------------------------- input layout

_NIFTI = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)


def _strip_nifti(name: str) -> str | None:
    m = _NIFTI.search(name)
    return name[: m.start()] if m and m.start() > 0 else None


def parse_organs(text: str | None) -> list[Organ] | None:
    """``"1:spleen,5:liver"`` or a JSON file (``{"1": "spleen", "5": "liver"}`` or ``["spleen", "liver"]``)."""
    if text is None or not text.strip():
        return None
    path = Path(text)
    if text.lower().endswith(".json") or path.is_file():
        if not path.is_file():
            raise InputError(path, "organ JSON file not found")
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(path, f"cannot read organ JSON ({exc})") from None
        if isinstance(obj, list) and all(isinstance(n, str) for n in obj):
            return _check_organs([Organ(i + 1, n) for i, n in enumerate(obj)], path)
        if isinstance(obj, dict):
            try:
                return _check_organs([Organ(int(k), str(v)) for k, v in obj.items()], path)
            except ValueError:
                pass
        raise InputError(path, 'organ JSON must be {"1": "spleen", ...} or ["spleen", ...]')
    organs = []
    for item in text.split(","):
        key, sep, name = item.strip().partition(":")
        try:
            label = int(key)
        except ValueError:
            label = -1
        if not sep or label < 0 or not name.strip():
            raise InputError(None, f"--organs items must look like 5:liver, got {item.strip()!r}")
        organs.append(Organ(label, name.strip()))
    return _check_organs(organs, None)


def _check_organs(organs: list[Organ], path: Path | None) -> list[Organ]:
    names = [o.name for o in organs]
    labels = [o.label for o in organs]
    if not organs:
        raise InputError(path, "no organs given")
    if len(set(names)) != len(names) or len(set(labels)) != len(labels):
        raise InputError(path, f"organ names and labels must be unique, got {[(o.label, o.name) for o in organs]}")
    if any(o.label < 0 or o.label > 32767 for o in organs):
        raise InputError(path, "organ labels must be between 0 and 32767")
    for n in names:
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", n):
            raise InputError(path, f"organ name {n!r} may only hold letters, digits, '_', '-' and '.'")
    return organs


@dataclass
class _Source:
    """Where one model's predictions of one case are: a 4D file or a folder of per-organ files."""

    path: Path
    shape: tuple[int, ...]  # spatial (X, Y, Z)
    channels: int | None  # K for a 4D file, None for a folder
    affine: np.ndarray


@dataclass
class PredictionSet:
    """A predictions folder: ``DIR/<model>/<case>.nii.gz`` (4D probabilities ``(X, Y, Z, K)``, organ = channel
    index ``k``, 0-based) or ``DIR/<model>/<case>/<organ>.nii.gz`` (one 3D probability map per organ).

    Every model must hold the same cases, with the same spatial shape and affine; :meth:`scan` checks that from the
    file headers and raises :class:`InputError` naming the offending file. Values are checked when read.
    """

    root: Path
    models: list[str]
    cases: list[str]
    organs: list[Organ]
    sources: dict[tuple[str, str], _Source] = field(repr=False)

    @classmethod
    def scan(cls, root: str | Path, organs: Sequence[Organ] | None = None) -> "PredictionSet":
        root = Path(root)
        if not root.is_dir():
            raise InputError(root, "predictions folder not found")
        model_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not model_dirs:
            raise InputError(root, "no model sub-folders (expected DIR/<model>/<case>.nii.gz "
                                   "or DIR/<model>/<case>/<organ>.nii.gz)")
        entries: dict[str, dict[str, Path]] = {}
        for mdir in model_dirs:
            found: dict[str, Path] = {}
            for p in sorted(mdir.iterdir()):
                if p.name.startswith("."):
                    continue
                case = p.name if p.is_dir() else _strip_nifti(p.name)
                if case is None:
                    continue
                if case in found:
                    raise InputError(p, f"case '{case}' appears twice in model '{mdir.name}' ({found[case].name})")
                found[case] = p
            if not found:
                raise InputError(mdir, "model folder holds no <case>.nii.gz file or <case>/ folder")
            entries[mdir.name] = found
        models = [m.name for m in model_dirs]
        all_cases = sorted(set().union(*[set(e) for e in entries.values()]))
        for m in models:
            for c in all_cases:
                if c not in entries[m]:
                    has = next(o for o in models if c in entries[o])
                    expected = root / m / (c if entries[has][c].is_dir() else entries[has][c].name)
                    raise InputError(expected, f"case '{c}' is missing for model '{m}' (model '{has}' has it)")
        organ_list = list(organs) if organs is not None else None
        if organ_list is None:
            organ_list = cls._default_organs(root, entries[models[0]][all_cases[0]])
        if any(o.label == 0 for o in organ_list):  # channel 0 of a 4D file: 0 would be invisible in the organ map
            organ_list = [replace(o, value=o.label + 1) for o in organ_list]
        sources: dict[tuple[str, str], _Source] = {}
        for c in all_cases:
            ref: _Source | None = None
            for m in models:
                src = cls._inspect(entries[m][c], organ_list)
                if ref is None:
                    ref = src
                elif src.shape != ref.shape:
                    raise InputError(src.path, f"shape {src.shape} differs from model '{models[0]}' "
                                               f"({ref.path}: {ref.shape})")
                elif not np.allclose(src.affine, ref.affine, atol=1e-3):
                    raise InputError(src.path, f"affine differs from model '{models[0]}' ({ref.path}); "
                                               "predictions must be in the same geometry")
                sources[(m, c)] = src
        return cls(root=root, models=models, cases=all_cases, organs=organ_list, sources=sources)

    @staticmethod
    def _default_organs(root: Path, first: Path) -> list[Organ]:
        organs_json = root / "organs.json"
        if organs_json.is_file():
            parsed = parse_organs(str(organs_json))
            assert parsed is not None
            return parsed
        if first.is_dir():
            names = sorted(n for n in (_strip_nifti(p.name) for p in first.iterdir() if not p.name.startswith("."))
                           if n)
            if not names:
                raise InputError(first, "case folder holds no <organ>.nii.gz file")
            return _check_organs([Organ(i + 1, n) for i, n in enumerate(names)], first)
        raise InputError(first, "4D probability files need --organs (e.g. 1:spleen,5:liver: channel index:name) "
                                "or an organs.json in the predictions folder")

    @staticmethod
    def _header(path: Path) -> tuple[tuple[int, ...], np.ndarray]:
        import nibabel as nib

        if not path.is_file():
            raise InputError(path, "file not found")
        try:
            img = nib.load(str(path))
        except Exception as exc:
            raise InputError(path, f"cannot read NIfTI header ({type(exc).__name__}: {exc})") from None
        shape = tuple(int(s) for s in img.shape)
        if len(shape) == 5 and shape[3] == 1:
            shape = shape[:3] + shape[4:]
        return shape, np.asarray(img.affine, dtype=np.float64)

    @classmethod
    def _inspect(cls, path: Path, organs: Sequence[Organ]) -> _Source:
        if path.is_dir():
            shape = affine = None
            ref_file = None
            for organ in organs:
                f = cls._organ_file(path, organ)
                s, a = cls._header(f)
                if len(s) != 3:
                    raise InputError(f, f"expected a 3D probability map, got shape {s}")
                if shape is None:
                    shape, affine, ref_file = s, a, f
                elif s != shape:
                    raise InputError(f, f"shape {s} differs from {ref_file} {shape}")
            assert shape is not None and affine is not None
            return _Source(path, shape, None, affine)
        s, a = cls._header(path)
        if len(s) == 3:
            s = s + (1,)
        if len(s) != 4:
            raise InputError(path, f"expected a 4D (X, Y, Z, K) probability NIfTI, got shape {s}")
        k = s[3]
        bad = [o for o in organs if o.label >= k]
        if bad:
            raise InputError(path, f"has {k} channel(s) but organ '{bad[0].name}' asks for channel {bad[0].label}")
        return _Source(path, s[:3], k, a)

    @staticmethod
    def _organ_file(folder: Path, organ: Organ) -> Path:
        for suffix in (".nii.gz", ".nii"):
            f = folder / f"{organ.name}{suffix}"
            if f.is_file():
                return f
        return folder / f"{organ.name}.nii.gz"

    def voxel_volume_mm3(self, case: str) -> float:
        return float(abs(np.linalg.det(self.sources[(self.models[0], case)].affine[:3, :3])))

    def affine(self, case: str) -> np.ndarray:
        return self.sources[(self.models[0], case)].affine

    def load(self, case: str, organ: Organ) -> np.ndarray:
        """``(M, X, Y, Z)`` float32 probabilities of one organ; raises InputError outside [0, 1] or NaN."""
        maps = []
        for m in self.models:
            src = self.sources[(m, case)]
            path = self._organ_file(src.path, organ) if src.channels is None else src.path
            maps.append(_read_probability(path, None if src.channels is None else organ.label, src.shape))
        return np.stack(maps)


def _read_probability(path: Path, channel: int | None, shape: tuple[int, ...]) -> np.ndarray:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        proxy = img.dataobj
        if channel is None:
            data = np.asarray(proxy, dtype=np.float32)
        elif len(img.shape) == 3:
            data = np.asarray(proxy, dtype=np.float32)
        elif len(img.shape) == 5:
            data = np.asarray(proxy[:, :, :, 0, channel], dtype=np.float32)
        else:
            data = np.asarray(proxy[..., channel], dtype=np.float32)
    except Exception as exc:  # nibabel raises many types for truncated / corrupt files
        raise InputError(path, f"cannot read: file is truncated or corrupt ({type(exc).__name__})") from None
    where = "" if channel is None else f" (channel {channel})"
    if data.shape != shape:
        raise InputError(path, f"map{where} has shape {data.shape}, expected {shape}")
    if data.size:
        if not np.isfinite(data).all():
            raise InputError(path, f"map{where} holds NaN or inf; expected probabilities in [0, 1]")
        lo, hi = float(data.min()), float(data.max())
        if lo < -_PROB_TOLERANCE or hi > 1 + _PROB_TOLERANCE:
            raise InputError(path, f"values{where} must be probabilities in [0, 1], found {lo:g} .. {hi:g}")
        if lo < 0 or hi > 1:
            data = np.clip(data, 0.0, 1.0)
    return data


def _read_background(images: Path, case: str, shape: tuple[int, ...]) -> tuple[Path, np.ndarray]:
    from aemia.data.io import read_image

    for suffix in (".nii.gz", ".nii"):
        f = images / f"{case}{suffix}"
        if f.is_file():
            img = read_image(f)
            if img.spatial_shape != shape:
                raise InputError(f, f"image shape {img.spatial_shape} differs from the predictions {shape}")
            return f, np.asarray(img.array[0], dtype=np.float32)
    raise InputError(images / f"{case}.nii.gz", f"image for case '{case}' not found (--images)")


# --------------------------------------------------------------------------------------------- outputs


@dataclass
class PrioritizeResult:
    """What :func:`prioritize` wrote and the ranked cases (``rows`` as in ``priority.csv``)."""

    out_dir: Path
    rows: list[dict[str, Any]]
    files: dict[str, Path]


def _fmt_mm3(v: float) -> str:
    return f"{v:.1f}"


def _csv_rows(ranking: list[str], results: Mapping[str, CaseAttention],
              top_slices: Mapping[str, int] | None = None) -> list[dict[str, Any]]:
    rows = []
    for rank, case in enumerate(ranking, start=1):
        r = results[case]
        rows.append({
            "rank": rank,
            "case": case,
            "attention_mm3": round(r.attention_mm3, 3),
            "attention_voxels": r.attention_voxels,
            "organs": ";".join(f"{n}={_fmt_mm3(v)}" for n, v in r.organs_by_volume()),
            "inconsistency_mm3": round(r.volume_mm3("inconsistency"), 3),
            "uncertainty_mm3": round(r.volume_mm3("uncertainty"), 3),
            "overlap_mm3": round(r.volume_mm3("overlap"), 3),
            "organs_by_heat": ";".join(r.organs_by_heat()),
            "top_axial_slice": (top_slices or {}).get(case, r.top_slice(2)),
        })
    return rows


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    cols = ["rank", "case", "attention_mm3", "attention_voxels", "organs", "inconsistency_mm3", "uncertainty_mm3",
            "overlap_mm3", "organs_by_heat", "top_axial_slice"]
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (_fmt_mm3(row[k]) if k.endswith("_mm3") else row[k]) for k in cols})
    return buf.getvalue()


def _radiological(slice2d: np.ndarray) -> np.ndarray:
    """An axial slice of a RAS-oriented volume, ``[x, y]``, as displayed: anterior up, patient's right on the left."""
    return np.asarray(slice2d).T[::-1, ::-1]


def _to_ras(arr: np.ndarray, affine: np.ndarray) -> np.ndarray:
    from nibabel.orientations import apply_orientation, io_orientation

    return apply_orientation(arr, io_orientation(affine))


def _figure(panels: list[dict[str, Any]], path: Path) -> None:
    """Top cases: the axial slice with most attention, attention overlaid by kind."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    colours = {FLAG_INCONSISTENCY: (0.9, 0.1, 0.1), FLAG_UNCERTAINTY: (1.0, 0.8, 0.0), FLAG_OVERLAP: (0.0, 0.8, 1.0)}
    n = max(len(panels), 1)
    fig, axes = plt.subplots(1, n, figsize=(max(4.2 * n, 6.5), 4.8), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        bg = panel["background"]
        if panel.get("ct"):
            lo, hi = -160.0, 240.0  # abdominal soft-tissue window (level 40, width 400 HU)
        else:
            lo, hi = np.percentile(bg, [1, 99]) if bg.size else (0.0, 1.0)
        ax.imshow(np.clip((bg - lo) / (hi - lo if hi > lo else 1.0), 0, 1), cmap="gray", interpolation="nearest",
                  aspect=panel["aspect"])
        flags = panel["flags"]
        # Colour by the most specific kind present: overlap, then inconsistency, then uncertainty.
        kind = np.zeros(flags.shape, dtype=np.uint8)
        for i, bit in enumerate((FLAG_UNCERTAINTY, FLAG_INCONSISTENCY, FLAG_OVERLAP), start=1):
            kind[(flags & bit) > 0] = i
        cmap = ListedColormap([(0, 0, 0, 0)] + [(*colours[b], 0.55) for b in
                                                  (FLAG_UNCERTAINTY, FLAG_INCONSISTENCY, FLAG_OVERLAP)])
        ax.imshow(kind, cmap=cmap, vmin=0, vmax=3, interpolation="nearest", aspect=panel["aspect"])
        ax.set_title(panel["title"], fontsize=9)
        ax.text(0.02, 0.5, "R", transform=ax.transAxes, color="white", fontsize=9, va="center")
        ax.text(0.96, 0.5, "L", transform=ax.transAxes, color="white", fontsize=9, va="center")
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[0][len(panels):]:
        ax.axis("off")
    handles = [Patch(color=colours[b], label=FLAG_NAMES[b]) for b in (FLAG_INCONSISTENCY, FLAG_UNCERTAINTY,
                                                                        FLAG_OVERLAP)]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=9, frameon=False)
    fig.suptitle("Review priority: axial slice with the most attention (radiological view)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def prioritize(
    predictions: str | Path,
    out_dir: str | Path,
    organs: Sequence[Organ] | None = None,
    config: ReviewConfig | None = None,
    images: str | Path | None = None,
    figure_cases: int = 4,
    progress: bool = False,
    on_case: Callable[[str], None] | None = None,
) -> PrioritizeResult:
    """Rank the cases of a predictions folder (layout: :class:`PredictionSet`) for human review.

    Writes into ``out_dir``:

    * ``priority.csv``: rank, case, attention_mm3 (sum over organs), attention_voxels, organs (``name=mm³`` by
      attention volume), inconsistency/uncertainty/overlap_mm3, organs_by_heat (the paper's order),
      top_axial_slice;
    * ``review.json``: the configuration, models, organs and the same numbers per organ;
    * ``attention/<case>_flags.nii.gz``: uint8 bit flags (1 inconsistency, 2 uncertainty, 4 overlap; union over
      organs, so values 0..7), ``attention/<case>_organs.nii.gz``: label of the organ to revise there (``--organs``
      labels), ``attention/<case>_heat.nii.gz``: uint8 heat map 0..255 (max over organs) — all with the affine of
      the predictions;
    * ``priority.png``: the top ``figure_cases`` cases' axial slice with the most attention, attention overlaid
      (over the CT if ``images`` holds ``<case>.nii.gz``, else over the mean predicted organ probability).

    All files are first written in a staging folder inside ``out_dir`` and moved into place only when every case
    succeeded, so an error leaves no partial output (the staging folder is removed).
    """
    from aemia.data.io import write_nifti
    from aemia.data.image import Image
    from aemia.utils.progress import Bar

    cfg = config or ReviewConfig()
    pset = PredictionSet.scan(predictions, organs)
    if cfg.overlap_organs is not None:
        unknown = sorted(set(cfg.overlap_organs) - {o.name for o in pset.organs})
        if unknown:
            raise InputError(None, f"overlap organs {unknown} are not target organs {[o.name for o in pset.organs]}")
    images_dir = Path(images) if images is not None else None
    if images_dir is not None:
        if not images_dir.is_dir():
            raise InputError(images_dir, "images folder not found")
        for case in pset.cases:
            if not any((images_dir / f"{case}{s}").is_file() for s in (".nii.gz", ".nii")):
                raise InputError(images_dir / f"{case}.nii.gz", f"image for case '{case}' not found (--images)")
    out = Path(out_dir)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".review-staging-", dir=out))
    try:
        (staging / "attention").mkdir()
        results: dict[str, CaseAttention] = {}
        slices: dict[str, dict[str, Any]] = {}
        nifti_files: list[str] = []
        with Bar("prioritizing", total=len(pset.cases), enabled=progress) as bar:
            for case in pset.cases:
                res = compute_case(pset.organs, lambda o, c=case: pset.load(c, o), cfg, pset.voxel_volume_mm3(case))
                like = Image(np.zeros((1, *res.flags.shape), dtype=np.uint8),
                             spacing=tuple(float(s) for s in np.linalg.norm(pset.affine(case)[:3, :3], axis=0)),
                             affine=pset.affine(case))
                for suffix, arr in (("flags", res.flags), ("organs", res.organ_map),
                                    ("heat", np.round(res.heat * 255).astype(np.uint8))):
                    name = f"attention/{case}_{suffix}.nii.gz"
                    write_nifti(arr.astype(np.int16) if suffix == "organs" else arr, staging / name, like=like)
                    nifti_files.append(name)
                slices[case] = _keep_for_figure(res, pset.affine(case))
                # Keep only the numbers: memory stays flat however many cases there are.
                empty = np.zeros((0,), dtype=np.uint8)
                results[case] = replace(res, flags=empty, organ_map=empty, heat=empty, probability=empty)
                bar.advance(description=f"prioritizing {case}")
                if on_case is not None:
                    on_case(case)
        ranking = rank_cases(results)
        rows = _csv_rows(ranking, results, {c: k["z"] for c, k in slices.items()})
        panels = []
        for row in rows[: max(figure_cases, 0)]:
            case = row["case"]
            kept = slices[case]
            background = kept["background"]
            if images_dir is not None:
                _, ct = _read_background(images_dir, case, pset.sources[(pset.models[0], case)].shape)
                background = _radiological(_to_ras(ct, pset.affine(case))[:, :, kept["z_ras"]])
            top = row["organs"].split(";")[0].split("=")[0] if row["organs"] else "none"
            panels.append({
                "background": background, "flags": kept["flags"], "aspect": kept["aspect"],
                "ct": images_dir is not None and float(np.min(background)) < -200,  # looks like HU
                "title": f"#{row['rank']} {case}: {row['attention_mm3'] / 1000:.1f} cm³\n"
                         f"axial slice {kept['z']} (voxel axis {kept['axis']}), most: {top}",
            })
        if panels:
            with atomic_path(staging / "priority.png", suffix=".png") as tmp:
                _figure(panels, tmp)
        summary = {
            "method": "AbdomenAtlas-8K attention (Qu et al., NeurIPS 2023 D&B); METHODS.md §5.2",
            "predictions": str(pset.root),
            "models": pset.models,
            "organs": [{"name": o.name, "key": o.label, "organ_map_value": o.map_value} for o in pset.organs],
            "config": asdict(cfg),
            "flags": {str(b): n for b, n in FLAG_NAMES.items()},
            "cases": [
                dict(row, voxel_volume_mm3=results[row["case"]].voxel_volume_mm3,
                     per_organ={n: asdict(o) for n, o in results[row["case"]].organs.items()})
                for row in rows
            ],
        }
        # Move into place (same file system: each os.replace is atomic); the tables last, priority.csv at the very
        # end so its presence means the run finished.
        (out / "attention").mkdir(exist_ok=True)
        files: dict[str, Path] = {}
        for name in [*nifti_files, *(["priority.png"] if panels else [])]:
            os.replace(staging / name, out / name)
            files[name] = out / name
        write_json_atomic(out / "review.json", summary)
        files["review.json"] = out / "review.json"
        write_text_atomic(out / "priority.csv", _csv_text(rows))
        files["priority.csv"] = out / "priority.csv"
    except BaseException:
        if created:
            shutil.rmtree(staging, ignore_errors=True)
            for folder in (out / "attention", out):  # only if empty: we created them and nothing else is there
                with contextlib.suppress(OSError):
                    folder.rmdir()
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return PrioritizeResult(out_dir=out, rows=rows, files=files)


def _keep_for_figure(res: CaseAttention, affine: np.ndarray) -> dict[str, Any]:
    """The displayed axial slice of a case (RAS-reoriented), kept small so the figure needs no second pass.

    ``z`` is the index of that slice along the file's own axial voxel axis ``axis`` (what a viewer shows).
    """
    from nibabel.orientations import io_orientation

    ornt = io_orientation(affine)
    flags_ras = _to_ras(res.flags, affine)
    z_ras = int(np.argmax((flags_ras > 0).sum(axis=(0, 1))))
    axis = int(np.where(ornt[:, 0] == 2)[0][0])
    z = res.flags.shape[axis] - 1 - z_ras if ornt[axis, 1] < 0 else z_ras
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    sx, sy = (zooms[int(np.where(ornt[:, 0] == k)[0][0])] for k in (0, 1))
    return {"flags": _radiological(flags_ras[:, :, z_ras]),
            "background": _radiological(_to_ras(res.probability, affine)[:, :, z_ras]),
            "z_ras": z_ras, "z": int(z), "axis": axis, "aspect": float(sy / sx)}
