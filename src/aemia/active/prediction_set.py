"""The predictions folder of ``aemia review prioritize``: several models' soft predictions of the same cases
(:class:`PredictionSet`), and the ``--organs`` option that names the target organs (:func:`parse_organs`).

The attention procedure itself (AbdomenAtlas-8K, Qu et al., NeurIPS 2023 D&B) is :mod:`aemia.active.attention`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from aemia.active.attention import Organ
from aemia.errors import InputError

_PROB_TOLERANCE = 1e-4  # float rounding of stored probabilities (e.g. 1.00001) is accepted and clipped
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

