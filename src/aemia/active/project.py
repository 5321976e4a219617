"""An active-learning project (the active-learning cycle, :mod:`aemia.cli.active`): its folder, its settings and ``init``.

A *project* is a folder::

    P/project.json              task, working size, classes, network, seed, validation rule (written by init)
    P/ledger.sqlite             the annotation ledger (:mod:`aemia.active.ledger`), the source of truth
    P/rounds/NN/worklist.csv    case, image_path, score, rank (rank 1 = most worth annotating)
    P/rounds/NN/to_annotate/    copies of the queried images, for the annotator
    P/rounds/NN/README.txt      what to do with them
    P/labels/                   accepted labels, content-addressed (``<case>.<sha256[:12]><ext>``)
    P/validation.json           the held-out validation cases; the set grows with the labels
                                (:mod:`aemia.active.validation`)
    P/models/round_NN/          one trained model per round, also a run folder for ``aemia predict --run``:
                                ``model.safetensors`` + ``model.json`` and ``checkpoints/best.*`` (the model of
                                the round), ``config.yaml``, ``summary.json`` (what it was trained on, from which
                                weights, its validation score with 95% CI, whether it was promoted to be the
                                project's model), the trainer's ``checkpoints/last.*`` and ``log.jsonl``
    P/learning_curve.png/.csv   validation metric vs number of training labels (``status``)

A project is 2D (pictures: :mod:`aemia.active.pictures`, ``dims = 2``) or 3D (volumes for segmentation:
:mod:`aemia.active.volumes`, ``dims = 3``, with a working ``spacing``, a ``patch`` for training and sliding-window
prediction, and the intensity ``normaliser``), decided at ``init`` by what the images folder holds.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from aemia.active.ledger import Ledger, LedgerItem, PoolItem, ledger_path
from aemia.active.pictures import (
    LOSSY,
    PICTURES,
    case_id_of,
    list_pictures,
    decode_mask,
    to_network_input,
)
from aemia.errors import InputError
from aemia.utils.io import write_json_atomic

__all__ = [
    "PROJECT_FILE",
    "TASKS",
    "VALIDATION_FILE",
    "Project",
    "ProjectConfig",
    "init_project",
    "open_project",
    "utc_now",
]

PROJECT_FILE = "project.json"
VALIDATION_FILE = "validation.json"
TASKS = ("segmentation", "classification")


def utc_now() -> str:
    """Current UTC time as ``YYYY-MM-DDTHH:MM:SSZ`` (the project's timestamps)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class ProjectConfig:
    """Settings fixed at ``init`` (``P/project.json``)."""

    task: str = "segmentation"
    size: int = 128
    classes: list[str] = field(default_factory=lambda: ["background", "foreground"])
    in_channels: int = 3
    model: str = "unet"
    features: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    dropout: float = 0.0
    seed: int = 0
    val_fraction: float = 0.2
    images: str = ""
    pretrained: str | None = None
    created_at: str = ""
    version: int = 1
    dims: int = 2  # 2: pictures resized to size x size; 3: volumes at `spacing`, patches of `patch`
    spacing: list[float] | None = None  # 3D: working voxel size (mm)
    patch: list[int] | None = None  # 3D: training patch and sliding-window size (voxels)
    normaliser: str | None = None  # 3D: aemia.data.normalise spec (2D pictures: "picture")
    patches_per_volume: int = 8  # 3D: random patches per labelled volume per epoch

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProjectConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class Project:
    """An active-learning project folder (see the module docstring for its layout)."""

    root: Path
    config: ProjectConfig

    @classmethod
    def open(cls, root: str | Path) -> Project:
        root = Path(root)
        cfg_path = root / PROJECT_FILE
        if not cfg_path.is_file() or not ledger_path(root).is_file():
            raise InputError(root, "not an active-learning project (create it with `aemia active init`)")
        try:
            cfg = ProjectConfig.from_dict(json.loads(cfg_path.read_text()))
        except (json.JSONDecodeError, TypeError) as exc:
            raise InputError(cfg_path, f"invalid project file ({exc})") from None
        return cls(root, cfg)

    # ---------------------------------------------------------------- paths
    def ledger(self) -> Ledger:
        return Ledger.open(self.root)

    def round_dir(self, r: int) -> Path:
        return self.root / "rounds" / f"{r:02d}"

    def model_dir(self, r: int) -> Path:
        return self.root / "models" / f"round_{r:02d}"

    @property
    def labels_dir(self) -> Path:
        return self.root / "labels"

    @property
    def n_classes(self) -> int:
        return len(self.config.classes)

    @property
    def is_3d(self) -> bool:
        return self.config.dims == 3

    # ---------------------------------------------------------------- data
    def load_image(self, path: str | Path) -> np.ndarray:
        """Network input for one pool image: ``(C, size, size)`` float32 in [0, 1] (2D), or ``(C, *S)`` at the
        working spacing (3D, :func:`aemia.active.volumes.load_volume`)."""
        from aemia.data.io import read_image

        cfg = self.config
        if self.is_3d:
            from aemia.active.volumes import load_volume

            return load_volume(path, cfg.normaliser or "none", cfg.spacing or [1.0, 1.0, 1.0])
        return to_network_input(read_image(path).array, cfg.in_channels, cfg.size)

    def load_images(self, paths: Sequence[str], progress: bool = False,
                    what: str = "reading images") -> np.ndarray | list[np.ndarray]:
        """Network inputs of ``paths``: one ``(N, C, size, size)`` array (2D), or a list of volumes (3D: their
        shapes differ)."""
        from aemia.utils.progress import Bar

        c, s = self.config.in_channels, self.config.size
        out: Any = [] if self.is_3d else np.zeros((len(paths), c, s, s), np.float32)
        with Bar(what, total=len(paths), enabled=progress and len(paths) > 0) as bar:
            for i, p in enumerate(paths):
                if self.is_3d:
                    out.append(self.load_image(p))
                else:
                    out[i] = self.load_image(p)
                bar.advance()
        return out

    def load_label(self, item: LedgerItem) -> np.ndarray | int:
        """Training target of an annotated case: ``(size, size)`` int64 mask, or the class index."""
        if item.label_path is None:
            raise InputError(None, f"case {item.case_id!r} has no label")
        if self.config.task == "classification":
            name = Path(item.label_path).read_text(encoding="utf-8").strip()
            return self.config.classes.index(name)
        if self.is_3d:
            from aemia.active.volumes import load_volume_mask

            return load_volume_mask(item.label_path, self.n_classes, self.config.spacing or [1.0, 1.0, 1.0])
        from aemia.data.io import read_image
        from aemia.data.transforms import resize

        mask, problem = decode_mask(read_image(item.label_path).array, self.n_classes,
                                    item.label_path.lower().endswith(LOSSY))
        if mask is None:
            raise InputError(item.label_path, f"case {item.case_id!r}: {problem}")
        s = self.config.size
        return resize(mask[None].astype(np.int64), (s, s), order=0)[0].astype(np.int64)

    def dataset_arrays(self, items: Sequence[LedgerItem], progress: bool = False) -> tuple[Any, Any]:
        """Inputs and targets of annotated cases: arrays (2D), or lists of volumes and masks (3D)."""
        x = self.load_images([it.image_path for it in items], progress, "reading labelled cases")
        ys = [self.load_label(it) for it in items]
        if self.is_3d:
            return x, ys
        y = np.asarray(ys, dtype=np.int64) if self.config.task == "classification" else np.stack(ys) if ys else np.zeros((0,))
        return x, y

    def new_model(self) -> Any:
        """``M_0``: the seeded initialisation (plus ``pretrained`` weights if the project has them)."""
        import torch

        from aemia.nets import create_model
        from aemia.runs.init import init_weights

        cfg = self.config
        torch.manual_seed(cfg.seed)
        model = create_model(cfg.model, cfg.dims, cfg.in_channels, self.n_classes, features=cfg.features,
                             deep_supervision=cfg.model == "unetpp", dropout=cfg.dropout)
        if cfg.pretrained:
            init_weights(model, cfg.pretrained)
        return model

    # ---------------------------------------------------------------- models
    def model_summaries(self) -> list[dict[str, Any]]:
        """``summary.json`` of every completed model round, oldest first."""
        out = []
        base = self.root / "models"
        if base.is_dir():
            for d in sorted(base.glob("round_*")):
                s = d / "summary.json"
                if s.is_file():
                    out.append(json.loads(s.read_text()))
        return sorted(out, key=lambda s: s["round"])

    def latest_model(self, before: int | None = None) -> dict[str, Any] | None:
        """Summary of the latest completed model (with ``round < before`` if given), or None."""
        cands = [s for s in self.model_summaries() if before is None or s["round"] < before]
        return cands[-1] if cands else None

    def project_model(self, before: int | None = None) -> dict[str, Any] | None:
        """Summary of the project's model: the latest *promoted* round (``round < before`` if given), or None.

        A round whose model scored below the project model beyond its validation CI is not promoted
        (:mod:`aemia.active.validation`); summaries written before promotion existed count as promoted.
        """
        cands = [s for s in self.model_summaries()
                 if (before is None or s["round"] < before) and s.get("promoted", True)]
        return cands[-1] if cands else None

    def load_model(self, summary: dict[str, Any]) -> Any:
        from aemia.nets import load_checkpoint

        model, _ = load_checkpoint(self.model_dir(summary["round"]) / "model")
        return model


def open_project(project: str | Path | Project) -> Project:
    """``project`` itself, or the project folder at that path opened (``InputError`` if it is none)."""
    return project if isinstance(project, Project) else Project.open(project)


def init_project(
    project: str | Path,
    images: str | Path,
    *,
    task: str = "segmentation",
    size: int = 128,
    classes: Sequence[str] | None = None,
    model: str | None = None,
    features: Sequence[int] | None = None,
    dropout: float = 0.0,
    seed: int = 0,
    val_fraction: float = 0.2,
    pretrained: str | Path | None = None,
    spacing: Sequence[float] | None = None,
    patch: Sequence[int] | None = None,
    modality: str = "auto",
    progress: bool = True,
) -> Project:
    """Create project ``project`` whose pool is every picture, or every 3D volume, in ``images`` (top level, sorted).

    Every image is read once (readable, finite; pictures 2D with 1 or 3 channels, volumes 3D with one channel
    count) and hashed into the ledger; case id = file name without suffix (a DICOM series: its folder name).
    A folder of volumes makes a 3D segmentation project (:mod:`aemia.active.volumes`: ``spacing``, ``patch``
    and ``features`` default to the CPU preset, ``modality`` ``auto``/``ct``/``mr`` picks the normaliser); ``size``
    applies to pictures only. Refuses an existing project (``InputError``); nothing is written until every
    image has been checked. ``classes`` default: ``background,foreground`` (segmentation) or ``0,1``
    (classification). ``model`` default ``unet`` / ``resnet``; 2D ``features`` default ``16,32,64,128``.
    """
    from aemia.active.volumes import list_volumes

    root, images = Path(project), Path(images)
    if task not in TASKS:
        raise InputError(None, f"--task must be one of {', '.join(TASKS)}, got {task!r}")
    if ledger_path(root).exists() or (root / PROJECT_FILE).exists():
        raise InputError(root, "a project already exists here; use another --project folder (nothing changed)")
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise InputError(root, "exists and is not an empty folder; choose a new --project folder")
    if not images.is_dir():
        raise InputError(images, "not a folder of images")
    from aemia.data.check import Problem

    paths, volumes = list_pictures(images), list_volumes(images)
    if not paths and not volumes:
        raise InputError(images, f"no pictures ({' '.join(PICTURES)}) or 3D volumes (.nii .nii.gz, DICOM series "
                                 f"folders, .nrrd .mha) found")
    dims = 3 if len(volumes) > len(paths) else 2  # a mixed folder: the minority kind is listed as a problem
    mixed = [Problem(str(p), f"a 2D picture among {len(volumes)} 3D volumes; a project is pictures or volumes, not "
                             "both: move it out") for p in paths] if dims == 3 else \
            [Problem(str(p), f"a 3D volume among {len(paths)} 2D pictures; a project is pictures or volumes, not "
                             "both: move it out") for p in volumes]
    if dims == 3 and task != "segmentation":
        raise InputError(None, "3D volumes are for segmentation projects; --task classification takes 2D pictures")
    classes = list(classes) if classes else (["background", "foreground"] if task == "segmentation" else ["0", "1"])
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise InputError(None, f"--classes needs at least two distinct names, got {classes}")
    model = model or ("unet" if task == "segmentation" else "resnet")
    from aemia.nets.registry import available_models, model_task

    if model not in available_models():
        raise InputError(None, f"unknown --model {model!r}; available: {', '.join(available_models())}")
    if model_task(model) != task:
        raise InputError(None, f"--model {model} is for {model_task(model)}, not {task}")
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(None, f"validation fraction must be in [0, 1), got {val_fraction}")
    settings = (_check_volumes(volumes, images, spacing, patch, features, modality, progress, mixed) if dims == 3
                else _check_pictures(paths, images, task, size, features, progress, mixed))
    items = settings.pop("items")
    if pretrained:
        from aemia.runs.init import resolve_init  # a run folder, checkpoint or shipped name (``universal``)

        pretrained = resolve_init(pretrained)
    cfg = ProjectConfig(task=task, classes=classes, model=model, dropout=float(dropout), seed=int(seed),
                        val_fraction=float(val_fraction), images=str(images.resolve()),
                        pretrained=str(Path(pretrained).resolve()) if pretrained else None, created_at=utc_now(),
                        dims=dims, **settings)
    root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(root / PROJECT_FILE, asdict(cfg))
    Ledger.create(root, items).close()  # the commit point: a crash before it leaves no ledger, init can rerun
    return Project(root, cfg)


def _same_case_ids(paths: Sequence[Path]) -> list[Any]:
    """Problems for pool entries that would share a case id (a.png and a.jpg; ct.nii and ct.nii.gz)."""
    from aemia.data.check import Problem

    found, first_of = [], {}
    for p in paths:
        cid = case_id_of(p)
        if cid in first_of:
            found.append(Problem(str(p), f"same case id {cid!r} as {first_of[cid].name}: rename one of them"))
        first_of.setdefault(cid, p)
    return found


def _check_pictures(paths: Sequence[Path], images: Path, task: str, size: int, features: Sequence[int] | None,
                    progress: bool, found: Sequence[Any] = ()) -> dict[str, Any]:
    """Read every pool picture; the 2D settings of the project (and its ledger items) or ``ProblemsError``."""
    from aemia.data.preflight import pool_pictures, require
    from aemia.utils.progress import Bar

    features = [int(f) for f in (features or [16, 32, 64, 128])]
    if task == "segmentation":
        m = 2 ** (len(features) - 1)
        if size % m:
            raise InputError(None, f"--size {size} must be a multiple of {m} for {len(features)} network levels")
    if size < 8:
        raise InputError(None, f"--size must be at least 8, got {size}")
    with Bar("checking images", total=len(paths), enabled=progress) as bar:
        problems, per_picture = pool_pictures(paths, lambda _: bar.advance())  # every picture read once
    # nothing is written unless every picture is usable
    require(sorted([*found, *problems, *_same_case_ids(paths)], key=lambda q: q.path), images)
    return {"size": int(size), "features": features, "in_channels": max(per_picture.values(), default=1),
            "items": [PoolItem(case_id_of(p), str(p.resolve())) for p in paths]}


def _check_volumes(paths: Sequence[Path], images: Path, spacing: Sequence[float] | None, patch: Sequence[int] | None,
                   features: Sequence[int] | None, modality: str, progress: bool,
                   found: Sequence[Any] = ()) -> dict[str, Any]:
    """Read every pool volume; the 3D settings of the project (and its ledger items) or ``ProblemsError``."""
    from aemia.active.volumes import cpu_preset, detect_normaliser, volume_sha256
    from aemia.data.check import Problem
    from aemia.data.preflight import pool_volumes, require
    from aemia.utils.progress import Bar

    with Bar("checking volumes", total=len(paths), enabled=progress) as bar:
        problems, good = pool_volumes(paths, lambda _: bar.advance())  # every volume read once
    channels = {int(h.array[0]) for h in good.values()}
    if len(channels) > 1:
        first = {c: next(p for p, h in good.items() if int(h.array[0]) == c) for c in sorted(channels)}
        problems.append(Problem(str(images), "volumes with different channel counts: " +
                                ", ".join(f"{c} ({p.name})" for c, p in first.items())))
    require(sorted([*found, *problems, *_same_case_ids(paths)], key=lambda q: q.path), images)
    work, patch_, feats = cpu_preset([h.spacing for h in good.values()], spacing, patch, features)
    normaliser = detect_normaliser(min(float(h.array[1]) for h in good.values()), modality)
    items = [PoolItem(case_id_of(p), str(p.resolve()), volume_sha256(p)) for p in paths]
    return {"size": 0, "features": feats, "in_channels": channels.pop(), "spacing": work, "patch": patch_,
            "normaliser": normaliser, "items": items}
