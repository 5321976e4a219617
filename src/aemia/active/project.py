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

Pictures only (2D; see :mod:`aemia.active.pictures` for the accepted images and labels).
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
    THREE_D_UNSUPPORTED,
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

    # ---------------------------------------------------------------- data
    def load_image(self, path: str | Path) -> np.ndarray:
        """Network input ``(C, size, size)`` float32 in [0, 1] for one pool image."""
        from aemia.data.io import read_image

        return to_network_input(read_image(path).array, self.config.in_channels, self.config.size)

    def load_images(self, paths: Sequence[str], progress: bool = False, what: str = "reading images") -> np.ndarray:
        from aemia.utils.progress import Bar

        c, s = self.config.in_channels, self.config.size
        out = np.zeros((len(paths), c, s, s), np.float32)
        with Bar(what, total=len(paths), enabled=progress and len(paths) > 0) as bar:
            for i, p in enumerate(paths):
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
        from aemia.data.io import read_image
        from aemia.data.transforms import resize

        mask, problem = decode_mask(read_image(item.label_path).array, self.n_classes,
                                    item.label_path.lower().endswith(LOSSY))
        if mask is None:
            raise InputError(item.label_path, f"case {item.case_id!r}: {problem}")
        s = self.config.size
        return resize(mask[None].astype(np.int64), (s, s), order=0)[0].astype(np.int64)

    def dataset_arrays(self, items: Sequence[LedgerItem], progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        x = self.load_images([it.image_path for it in items], progress, "reading labelled cases")
        ys = [self.load_label(it) for it in items]
        y = np.asarray(ys, dtype=np.int64) if self.config.task == "classification" else np.stack(ys) if ys else np.zeros((0,))
        return x, y

    def new_model(self) -> Any:
        """``M_0``: the seeded initialisation (plus ``pretrained`` weights if the project has them)."""
        import torch

        from aemia.nets import create_model
        from aemia.runs.init import init_weights

        cfg = self.config
        torch.manual_seed(cfg.seed)
        model = create_model(cfg.model, 2, cfg.in_channels, self.n_classes, features=cfg.features,
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
    progress: bool = True,
) -> Project:
    """Create project ``project`` whose pool is every picture in ``images`` (top level, sorted).

    Every image is read once (readable, 2D, 1 or 3 channels) and hashed into the ledger; case id = file
    name without suffix. Refuses an existing project (``InputError``); nothing is written until every
    image has been checked. ``classes`` default: ``background,foreground`` (segmentation) or ``0,1``
    (classification). ``model`` default ``unet`` / ``resnet``; ``features`` default ``16,32,64,128``.
    """
    from aemia.data.check import Problem
    from aemia.data.io import image_kind
    from aemia.data.preflight import pool_pictures, require
    from aemia.utils.progress import Bar

    root, images = Path(project), Path(images)
    if task not in TASKS:
        raise InputError(None, f"--task must be one of {', '.join(TASKS)}, got {task!r}")
    if ledger_path(root).exists() or (root / PROJECT_FILE).exists():
        raise InputError(root, "a project already exists here; use another --project folder (nothing changed)")
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise InputError(root, "exists and is not an empty folder; choose a new --project folder")
    if not images.is_dir():
        raise InputError(images, "not a folder of images")
    entries = sorted(images.iterdir())
    found = [Problem(str(p), THREE_D_UNSUPPORTED) for p in entries if image_kind(p) in ("nifti", "itk", "dicom")]
    paths = list_pictures(images)
    if not paths:
        raise InputError(*(found[0].path, found[0].problem) if found else
                         (images, f"no pictures found ({' '.join(PICTURES)})"))
    classes = list(classes) if classes else (["background", "foreground"] if task == "segmentation" else ["0", "1"])
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise InputError(None, f"--classes needs at least two distinct names, got {classes}")
    model = model or ("unet" if task == "segmentation" else "resnet")
    features = [int(f) for f in (features or [16, 32, 64, 128])]
    from aemia.nets.registry import available_models, model_task

    if model not in available_models():
        raise InputError(None, f"unknown --model {model!r}; available: {', '.join(available_models())}")
    if model_task(model) != task:
        raise InputError(None, f"--model {model} is for {model_task(model)}, not {task}")
    if task == "segmentation":
        m = 2 ** (len(features) - 1)
        if size % m:
            raise InputError(None, f"--size {size} must be a multiple of {m} for {len(features)} network levels")
    if size < 8:
        raise InputError(None, f"--size must be at least 8, got {size}")
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(None, f"validation fraction must be in [0, 1), got {val_fraction}")
    with Bar("checking images", total=len(paths), enabled=progress) as bar:
        problems, per_picture = pool_pictures(paths, lambda _: bar.advance())  # every picture read once
    found += problems
    first_of: dict[str, Path] = {}
    for p in paths:  # a.png and a.jpg would be one case
        cid = case_id_of(p)
        if cid in first_of:
            found.append(Problem(str(p), f"same case id {cid!r} as {first_of[cid].name}: rename one of them"))
        first_of.setdefault(cid, p)
    require(sorted(found, key=lambda q: q.path), images)  # nothing is written unless every picture is usable
    channels = max(per_picture.values(), default=1)
    if pretrained:
        from aemia.runs.init import resolve_init  # a run folder, checkpoint or shipped name (``universal``)

        pretrained = resolve_init(pretrained)
    items = [PoolItem(case_id_of(p), str(p.resolve())) for p in paths]
    cfg = ProjectConfig(task=task, size=int(size), classes=classes, in_channels=channels, model=model,
                        features=features, dropout=float(dropout), seed=int(seed), val_fraction=float(val_fraction),
                        images=str(images.resolve()), pretrained=str(Path(pretrained).resolve()) if pretrained else None,
                        created_at=utc_now())
    root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(root / PROJECT_FILE, asdict(cfg))
    Ledger.create(root, items).close()  # the commit point: a crash before it leaves no ledger, init can rerun
    return Project(root, cfg)
