"""The human-in-the-loop active-learning cycle: init → query → annotate → import → train → query …

A *project* is a folder::

    P/project.json              task, working size, classes, network, seed, validation rule (written by init)
    P/ledger.sqlite             the annotation ledger (:mod:`aemia.active.ledger`), the source of truth
    P/rounds/NN/worklist.csv    case, image_path, score, rank (rank 1 = most worth annotating)
    P/rounds/NN/to_annotate/    copies of the queried images, for the annotator
    P/rounds/NN/README.txt      what to do with them
    P/labels/                   accepted labels, content-addressed (``<case>.<sha256[:12]><ext>``)
    P/validation.json           the fixed held-out validation cases (chosen at the first ``train``)
    P/models/round_NN/          one trained model per round: ``model.safetensors`` + ``model.json`` (the
                                model of the round), ``summary.json`` (what it was trained on, from which
                                weights, its validation score), the trainer's ``checkpoints/`` and ``log.jsonl``
    P/learning_curve.png/.csv   validation metric vs number of training labels (``status``)

Scope: **2D only** — pictures (``.png .jpg .jpeg .tif .tiff .gif .bmp``, grey or RGB) for segmentation
(integer label masks; binary masks as 0/1 or 0/255, JPEG masks thresholded) and for image classification.
3D volumes (NIfTI, DICOM, NRRD) are refused with a clear message: patch-based 3D scoring and training are
not implemented for the active-learning loop yet. Images are resized to ``size × size`` for the network
(bilinear; labels nearest); labels are always validated at the image's own size.

Continual fine-tuning (ACFT, Zhou et al. CVPR'17 / MedIA'21; ``reference/METHODS.md`` §5.1). Round ``t``'s
model ``M_t`` is trained, according to ``mode``:

* ``continual`` (default, ACFT(HQ)): initialised from ``M_{t-1}`` (the latest trained model) and trained on
  **Q** = the training labels ``M_{t-1}`` had not seen, plus **H** = the labels ``M_{t-1}`` had seen and
  gets *wrong*: for segmentation a case whose Dice (mean over foreground classes, both-empty = 1) of
  ``M_{t-1}``'s prediction is below ``hard_threshold`` (default 0.5); for classification a misclassified
  case (arg-max ≠ label). Cases the model already gets right are not revisited.
* ``all-labelled`` (ACFT(LQ)): from ``M_{t-1}``, on every training label.
* ``new-only`` (ACFT(Q)): from ``M_{t-1}``, on Q only.
* ``from-scratch`` (AFT / RFT): from ``M_0`` (the same seeded initialisation, or ``pretrained`` weights,
  every round), on every training label.

The first model (no ``M_{t-1}``) starts from ``M_0`` on every training label in every mode.
The model of a round is its **last epoch**; the validation set is never used to pick epochs or models,
only to measure, so the learning curve is not optimistically biased.

Validation set: at the first ``train``, ``floor(val_fraction · n0)`` cases are drawn (seeded) from the
``n0`` annotated cases of the earliest annotated round and frozen in ``validation.json``; they never enter
training. Round 0 is chosen at random (cold start, below), so this is an unbiased sample of the pool,
whereas later rounds are biased by the strategy. Fewer than 1 → no validation set, no learning curve.

Cold start: before any model exists, ``query`` falls back to uniform random selection
(:class:`~aemia.active.strategies.RandomStrategy` with seed ``project seed + round``) whatever strategy is
asked for, and records that in the ledger (``"random (cold start; asked acft)"``).

Scoring inputs per strategy (see :mod:`aemia.active.strategies`): ACFT uses ``m = 8`` copies of each image,
the 8 flips/rotations by 90° (exactly invertible, so segmentation maps are mapped back to the original
frame); BALD uses 8 MC-dropout passes (needs a project made with ``dropout > 0``); core-set uses the globally
average-pooled deepest encoder features (segmentation) or the classifier's pooled features.
"""

from __future__ import annotations

import csv
import dataclasses
import getpass
import io
import json
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from aemia.active.ledger import Ledger, LedgerItem, PoolItem, file_sha256, ledger_path
from aemia.active.strategies import (
    ACFT,
    BALD,
    CoreSet,
    EmbeddingPool,
    ForegroundRandom,
    RandomStrategy,
    Strategy,
    get_strategy,
)
from aemia.errors import InputError
from aemia.utils.io import atomic_path, write_json_atomic, write_text_atomic

__all__ = [
    "MODES",
    "TASKS",
    "ImportResult",
    "Project",
    "ProjectConfig",
    "QueryResult",
    "decode_mask",
    "fit_model",
    "hard_cases",
    "import_labels",
    "init_project",
    "initial_model",
    "learning_curve",
    "project_status",
    "query_round",
    "score_images",
    "score_pool",
    "train_round",
]

PROJECT_FILE = "project.json"
VALIDATION_FILE = "validation.json"
TASKS = ("segmentation", "classification")
MODES = ("continual", "all-labelled", "new-only", "from-scratch")
_MODE_ALIASES = {"hq": "continual", "acft": "continual", "lq": "all-labelled", "all": "all-labelled",
                 "q": "new-only", "scratch": "from-scratch"}
PICTURES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".bmp")
LOSSY = (".jpg", ".jpeg")
N_COPIES = 8  # ACFT copies: the dihedral group of the square (4 rotations x optional flip)
MC_SAMPLES = 8  # BALD forward passes
_THREE_D = "3D volumes are not supported by `aemia active` yet (2D pictures only: .png .jpg .jpeg .tif .bmp ...)"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


# ------------------------------------------------------------------------------------------ project


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

        from aemia.nets import create_model, load_weights

        cfg = self.config
        torch.manual_seed(cfg.seed)
        model = create_model(cfg.model, 2, cfg.in_channels, self.n_classes, features=cfg.features,
                             deep_supervision=cfg.model == "unetpp", dropout=cfg.dropout)
        if cfg.pretrained:
            load_weights(model, cfg.pretrained, strict=False)
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

    def load_model(self, summary: dict[str, Any]) -> Any:
        from aemia.nets import load_checkpoint

        model, _ = load_checkpoint(self.model_dir(summary["round"]) / "model")
        return model


def _open_project(project: str | Path | Project) -> Project:
    return project if isinstance(project, Project) else Project.open(project)


def to_network_input(array: np.ndarray, in_channels: int, size: int) -> np.ndarray:
    """``(C, H, W)`` picture → ``(in_channels, size, size)`` float32: uint8 / 255, other types min–max
    scaled to [0, 1]; grey repeated to RGB or RGB averaged to grey as the project needs; bilinear resize."""
    from aemia.data.transforms import resize

    a = np.asarray(array)
    if a.ndim != 3:
        raise InputError(None, _THREE_D)
    if a.dtype == np.uint8:
        x = a.astype(np.float32) / 255.0
    elif a.dtype == bool:
        x = a.astype(np.float32)
    else:
        x = a.astype(np.float32)
        lo, hi = float(np.nanmin(x)), float(np.nanmax(x))
        x = np.nan_to_num((x - lo) / (hi - lo) if hi > lo else x * 0.0)
    if x.shape[0] != in_channels:
        x = np.repeat(x[:1], in_channels, axis=0) if x.shape[0] == 1 else x.mean(axis=0, keepdims=True).repeat(in_channels, 0)
    return np.ascontiguousarray(resize(x, (size, size), order=1), dtype=np.float32)


def _pictures(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(PICTURES) and not p.name.startswith("."))


# ------------------------------------------------------------------------------------------ init


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
    from aemia.data.io import image_kind, read_image
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
    three_d = [p for p in entries if image_kind(p) in ("nifti", "itk", "dicom")]
    if three_d:
        raise InputError(three_d[0], _THREE_D)
    paths = _pictures(images)
    if not paths:
        raise InputError(images, f"no pictures found ({' '.join(PICTURES)})")
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
    channels = 1
    items: list[PoolItem] = []
    with Bar("checking images", total=len(paths), enabled=progress) as bar:
        for p in paths:
            arr = read_image(p).array
            if arr.ndim != 3 or arr.shape[0] not in (1, 3):
                raise InputError(p, f"expected a grey or RGB picture, got array shape {arr.shape}")
            channels = max(channels, arr.shape[0])
            items.append(PoolItem(_case_id(p), str(p.resolve())))
            bar.advance()
    cfg = ProjectConfig(task=task, size=int(size), classes=classes, in_channels=channels, model=model,
                        features=features, dropout=float(dropout), seed=int(seed), val_fraction=float(val_fraction),
                        images=str(images.resolve()), pretrained=str(Path(pretrained).resolve()) if pretrained else None,
                        created_at=_now())
    root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(root / PROJECT_FILE, asdict(cfg))
    Ledger.create(root, items).close()  # the commit point: a crash before it leaves no ledger, init can rerun
    return Project(root, cfg)


def _case_id(path: Path) -> str:
    from aemia.data.io import case_id

    return case_id(path)


# ------------------------------------------------------------------------------------------ scoring


def _dihedral(x: Any, t: int) -> Any:
    """Transform ``t`` in 0..7 of the square's symmetry group on the last two axes (t ≥ 4: flip first)."""
    import torch

    if t >= 4:
        x = torch.flip(x, (-1,))
    return torch.rot90(x, t % 4, (-2, -1))


def _dihedral_inverse(x: Any, t: int) -> Any:
    import torch

    x = torch.rot90(x, -(t % 4), (-2, -1))
    return torch.flip(x, (-1,)) if t >= 4 else x


def _probs(model: Any, x: Any) -> Any:
    from aemia.infer.predict import predict_probs

    return predict_probs(model, x, amp="none").float().cpu()


def _embedding_module(model: Any) -> Any:
    if hasattr(model, "encoder"):  # UNet
        return model.encoder[-1]
    if hasattr(model, "nodes") and hasattr(model, "depth"):  # UNet++
        return model.nodes[f"x{model.depth}_0"]
    raise InputError(None, f"core-set needs embeddings; {type(model).__name__} exposes none")


def _embeddings(model: Any, x: Any) -> np.ndarray:
    import torch

    model.eval()
    with torch.no_grad():
        x = x.to(next(model.parameters()).device)
        if hasattr(model, "forward_features"):
            return model.forward_features(x).float().cpu().numpy()
        grabbed: list[Any] = []
        handle = _embedding_module(model).register_forward_hook(lambda m, i, o: grabbed.append(o))
        try:
            model(x)
        finally:
            handle.remove()
        return grabbed[-1].float().mean(dim=tuple(range(2, grabbed[-1].ndim))).cpu().numpy()


def _mc_dropout_probs(model: Any, x: Any, samples: int) -> Any:
    import torch

    drops = [m for m in model.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)]
    if not drops:
        raise InputError(None, "bald needs MC dropout, but the project's network has no dropout: "
                               "create the project with --dropout 0.2 (or choose another --strategy)")
    model.eval()
    for m in drops:
        m.train()
    try:
        with torch.no_grad():
            x = x.to(next(model.parameters()).device)
            return torch.stack([_forward_softmax(model, x) for _ in range(samples)])
    finally:
        model.eval()


def _forward_softmax(model: Any, x: Any) -> Any:
    logits = model(x).float()
    return logits.softmax(1).cpu()


def score_images(
    model: Any,
    strategy: Strategy,
    task: str,
    n: int,
    load: Callable[[int, int], np.ndarray],
    *,
    n_labelled: int = 0,
    load_labelled: Callable[[int, int], np.ndarray] | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> np.ndarray:
    """Scores of ``n`` pool images (higher = more worth annotating) by ``strategy`` with ``model``.

    The array-level core of :func:`score_pool` (also used by :mod:`aemia.active.simulate`): ``load(a, b)``
    returns pool images ``a..b-1`` as float32 ``(b - a, C, H, W)``; ``load_labelled`` likewise the
    ``n_labelled`` labelled images (core-set only). Images are read and scored batch by batch (memory stays
    bounded); every built-in strategy except fg-random and core-set scores each image independently, so
    per-batch scores equal whole-pool ones. fg-random gets the pool's arg-max maps at once, core-set the
    pool's and the labelled embeddings.
    """
    import torch

    from aemia.utils.progress import Bar

    if isinstance(strategy, RandomStrategy):
        return strategy.score(n)
    seg = task == "segmentation"
    if isinstance(strategy, ForegroundRandom) and not seg:
        raise InputError(None, "fg-random is for segmentation projects")
    scores: list[np.ndarray] = []
    maps: list[np.ndarray] = []
    embeds: list[np.ndarray] = []
    with Bar(f"scoring pool ({strategy.name})", total=n, enabled=progress) as bar:
        for start in range(0, n, batch_size):
            x = torch.from_numpy(np.ascontiguousarray(load(start, min(start + batch_size, n))))
            if isinstance(strategy, ACFT):
                copies = []
                for t in range(N_COPIES):
                    p = _probs(model, _dihedral(x, t))
                    copies.append(_dihedral_inverse(p, t) if seg else p)
                scores.append(strategy.score(torch.stack(copies, dim=1).numpy()))
            elif isinstance(strategy, BALD):
                scores.append(strategy.score(_mc_dropout_probs(model, x, MC_SAMPLES).numpy()))
            elif isinstance(strategy, ForegroundRandom):
                maps.append(_probs(model, x).argmax(1).to(torch.uint8).numpy())
            elif isinstance(strategy, CoreSet):
                embeds.append(_embeddings(model, x))
            else:
                scores.append(strategy.score(_probs(model, x).numpy()))
            bar.advance(len(x))
    if isinstance(strategy, ForegroundRandom):
        return strategy.score(np.concatenate(maps))
    if isinstance(strategy, CoreSet):
        lab = [
            _embeddings(model, torch.from_numpy(np.ascontiguousarray(load_labelled(s, min(s + batch_size, n_labelled)))))
            for s in range(0, n_labelled if load_labelled is not None else 0, batch_size)
        ]
        pool = np.concatenate(embeds)
        return strategy.score(EmbeddingPool(pool, np.concatenate(lab) if lab else None))
    return np.concatenate(scores) if scores else np.zeros(0)


def score_pool(
    project: Project,
    model: Any,
    strategy: Strategy,
    items: Sequence[LedgerItem],
    *,
    labelled: Sequence[LedgerItem] = (),
    batch_size: int = 8,
    progress: bool = True,
) -> np.ndarray:
    """Scores of ``items`` (higher = more worth annotating) by ``strategy`` with ``model``
    (:func:`score_images` on the project's pictures; core-set also embeds the ``labelled`` cases)."""

    def loader(seq: Sequence[LedgerItem]) -> Callable[[int, int], np.ndarray]:
        return lambda a, b: project.load_images([it.image_path for it in seq[a:b]])

    return score_images(model, strategy, project.config.task, len(items), loader(items),
                        n_labelled=len(labelled), load_labelled=loader(labelled), batch_size=batch_size,
                        progress=progress)


# ------------------------------------------------------------------------------------------ query


@dataclass
class QueryResult:
    """What ``query`` did."""

    round: int
    strategy: str  # as recorded in the ledger (says "cold start" when it fell back to random)
    model_round: int | None
    cases: list[str]
    scores: list[float]
    worklist: Path
    folder: Path
    pending: int  # queried cases of earlier rounds still waiting for labels


def query_round(
    project: str | Path | Project,
    strategy: str = "acft",
    k: int = 20,
    *,
    progress: bool = True,
    batch_size: int = 8,
    **strategy_params: Any,
) -> QueryResult:
    """Score the unlabelled pool with the current model and queue the ``k`` best cases as a new round.

    Writes ``rounds/NN/worklist.csv`` and copies the images into ``rounds/NN/to_annotate/`` *before*
    recording the query in the ledger (one transaction): a crash before the commit leaves no round, and a
    rerun rewrites the same folder. Before any model exists the selection is random (cold start).
    """
    proj = _open_project(project)
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise InputError(None, f"--k must be a positive integer, got {k!r}")
    try:
        strat = get_strategy(strategy, **strategy_params)
    except ValueError as exc:
        raise InputError(None, str(exc)) from None
    with proj.ledger() as led:
        pool = led.items("unlabelled")
        if not pool:
            raise InputError(proj.root, "the pool has no unlabelled cases left")
        pending = led.status_counts()["queried"]
        r = led.next_round()
        summary = proj.latest_model()
        if summary is None and not isinstance(strat, RandomStrategy):
            used: Strategy = RandomStrategy(seed=proj.config.seed + r)
            label = f"random (cold start; asked {strat.name})"
            model = None
        else:
            used = strat
            if hasattr(strat, "seed") and "seed" not in strategy_params:  # a fresh random draw every round
                used = dataclasses.replace(strat, seed=proj.config.seed + r)
            label = used.name if not strategy_params else f"{used.name} {json.dumps(strategy_params, sort_keys=True)}"
            model = None if summary is None else proj.load_model(summary)
        scores = score_pool(proj, model, used, pool, labelled=led.items("annotated"), batch_size=batch_size,
                            progress=progress)
        order = used.rank(scores, int(k))
        chosen = [pool[i] for i in order]
        folder = proj.round_dir(r)
        target = folder / "to_annotate"
        if target.exists():  # left by a query that crashed before its ledger commit (round r is not recorded)
            shutil.rmtree(target)
        target.mkdir(parents=True)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["case", "image_path", "score", "rank"])
        for rank_, (i, it) in enumerate(zip(order, chosen), start=1):
            w.writerow([it.case_id, it.image_path, f"{float(scores[i]):.6g}", rank_])
            src = Path(it.image_path)
            with atomic_path(target / src.name, suffix=src.suffix) as tmp:
                shutil.copyfile(src, tmp)
        write_text_atomic(folder / "worklist.csv", buf.getvalue())
        write_text_atomic(folder / "README.txt", _round_readme(proj, r, label, summary, len(chosen)))
        led.query([it.case_id for it in chosen], r, strategy=label)
    return QueryResult(r, label, None if summary is None else int(summary["round"]), [c.case_id for c in chosen],
                       [float(scores[i]) for i in order], folder / "worklist.csv", target, pending)


def _round_readme(proj: Project, r: int, strategy: str, summary: dict[str, Any] | None, n: int) -> str:
    cfg = proj.config
    if cfg.task == "segmentation":
        how = (f"Draw a mask for each image in to_annotate/ and save it as <case>.png (same file name stem as the\n"
               f"image, same width and height). Pixel values: 0..{len(cfg.classes) - 1} = {', '.join(cfg.classes)}"
               + (" (a binary mask may also use 0/255)." if len(cfg.classes) == 2 else "."))
    else:
        how = (f"Write a CSV with a header line 'case,label' and one row per image; label is one of: "
               f"{', '.join(cfg.classes)} (or its index).")
    model = "none (random cold start)" if summary is None else f"models/round_{summary['round']:02d}"
    return (f"aemia active learning, round {r:02d}: {n} cases, strategy {strategy}, model {model}.\n"
            f"worklist.csv lists them, most informative first.\n\n{how}\n\n"
            f"Then: aemia active import --project {proj.root} --labels <your label folder or CSV>\n")


# ------------------------------------------------------------------------------------------ import


def decode_mask(array: np.ndarray, n_classes: int, lossy: bool) -> tuple[np.ndarray | None, str | None]:
    """A label picture ``(C, H, W)`` → integer mask ``(H, W)``, or ``(None, problem)``.

    Accepted: values in ``0..n_classes-1``; for two classes also 0/255. Colour labels must have equal
    channels. Lossy (JPEG) masks are accepted for two classes only: grey > 127 is foreground, provided the
    picture looks like a mask (at most 5% of pixels between 48 and 207; JPEG ringing stays far below that).
    """
    a = np.asarray(array)
    if a.ndim != 3:
        return None, f"expected a 2D label picture, got shape {a.shape}"
    if a.shape[0] > 1:
        if lossy:
            a = a.astype(np.float64).mean(axis=0, keepdims=True)
        elif not all(np.array_equal(a[0], a[c]) for c in range(1, a.shape[0])):
            return None, "colour label (its channels differ); save the mask as a greyscale/indexed picture"
    g = a[0]
    if lossy:
        if n_classes != 2:
            return None, "JPEG changes label values: save multi-class masks as PNG"
        mid = float(((g > 48) & (g < 207)).mean())
        if mid > 0.05:
            return None, f"does not look like a mask ({mid:.0%} of pixels are mid-grey); save masks as PNG"
        return (g > 127).astype(np.int64), None
    if np.issubdtype(g.dtype, np.floating):
        if not np.all(np.isfinite(g)) or not np.all(g == np.round(g)):
            return None, "label values must be whole numbers"
    values = np.unique(g)
    if values.min() >= 0 and values.max() <= n_classes - 1:
        return g.astype(np.int64), None
    if n_classes == 2 and set(values.tolist()) <= {0, 255}:
        return (g == 255).astype(np.int64), None
    allowed = f"0..{n_classes - 1}" + (" or 0/255" if n_classes == 2 else "")
    shown = ", ".join(str(v) for v in values[:6].tolist()) + (", ..." if len(values) > 6 else "")
    return None, f"label values {{{shown}}} are not allowed (expected {allowed})"


@dataclass
class ImportResult:
    """What ``import`` did: case ids per action (``annotated``, ``unchanged``, ``reannotated``)."""

    annotated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    reannotated: list[str] = field(default_factory=list)


def _read_label_csv(path: Path) -> list[tuple[str, str, int]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read ({exc})") from None
    rows = list(csv.reader(text.splitlines()))
    if not rows or [c.strip().lower() for c in rows[0][:2]] != ["case", "label"]:
        raise InputError(path, "expected a CSV with the header 'case,label'")
    return [(r[0].strip(), r[1].strip() if len(r) > 1 else "", n) for n, r in enumerate(rows[1:], start=2) if r and any(r)]


def import_labels(
    project: str | Path | Project,
    labels: str | Path,
    *,
    annotator: str | None = None,
    replace: bool = False,
    progress: bool = True,
) -> ImportResult:
    """Validate **every** label, then accept all of them in one ledger transaction — or none.

    Segmentation: ``labels`` is a folder of masks named ``<case>.<picture suffix>``; each must be readable,
    2D, the same width × height as its image, with allowed values (:func:`decode_mask`). Classification:
    ``labels`` is a CSV ``case,label`` (or a folder holding exactly one CSV); a label is a class name or
    index. Every case must be in the pool and queried (or already annotated: the same label again is a
    no-op, a different one needs ``replace``). All problems are collected and reported together, naming
    each case; then nothing is imported. Accepted labels are copied into ``P/labels/`` under a
    content-addressed name before the ledger commit, so a crash in between leaves only an unused file and a
    rerun is idempotent.
    """
    from aemia.data.io import read_image
    from aemia.utils.progress import Bar

    proj = _open_project(project)
    labels = Path(labels)
    annotator = annotator or _user()
    cls = proj.config.task == "classification"
    problems: list[str] = []
    accepted: list[tuple[str, str, bytes | Path]] = []  # (case, suffix, content bytes or source file)
    with proj.ledger() as led:
        known = {it.case_id: it for it in led.items()}
        if cls:
            csv_path = labels
            if labels.is_dir():
                found = sorted(labels.glob("*.csv"))
                if len(found) != 1:
                    raise InputError(labels, f"expected exactly one CSV (case,label) in the folder, found {len(found)}")
                csv_path = found[0]
            if not csv_path.is_file():
                raise InputError(labels, "no such CSV file (case,label)")
            entries = _read_label_csv(csv_path)
            if not entries:
                raise InputError(csv_path, "no labels in the CSV")
            seen: set[str] = set()
            for cid, value, line in entries:
                where = f"case {cid!r} (line {line})"
                if cid in seen:
                    problems.append(f"{where}: appears twice")
                    continue
                seen.add(cid)
                problem = _case_problem(known, cid)
                if problem is None:
                    name = _class_name(proj.config.classes, value)
                    if name is None:
                        problem = f"label {value!r} is not a class ({', '.join(proj.config.classes)} or 0..{len(proj.config.classes) - 1})"
                    else:
                        content = (name + "\n").encode()
                        problem = _hash_problem(known[cid], _sha(content), replace)
                        accepted.append((cid, ".txt", content))
                if problem:
                    problems.append(f"{where}: {problem}")
        else:
            if not labels.is_dir():
                raise InputError(labels, "--labels must be a folder of masks named like the images (<case>.png)")
            files = _pictures(labels)
            if not files:
                others = [p.name for p in labels.iterdir() if p.is_file()][:3]
                raise InputError(labels, "no label pictures found" + (f" (found {', '.join(others)})" if others else ""))
            by_case: dict[str, list[Path]] = {}
            for f in files:
                by_case.setdefault(_case_id(f), []).append(f)
            with Bar("validating labels", total=len(by_case), enabled=progress) as bar:
                for cid, fs in by_case.items():
                    bar.advance()
                    if len(fs) > 1:
                        problems.append(f"case {cid!r}: several label files ({', '.join(f.name for f in fs)})")
                        continue
                    f = fs[0]
                    problem = _case_problem(known, cid)
                    if problem is None:
                        problem = _mask_problem(read_image, f, known[cid], proj.n_classes)
                    if problem is None:
                        problem = _hash_problem(known[cid], file_sha256(f), replace)
                    if problem:
                        problems.append(f"case {cid!r} ({f.name}): {problem}")
                    else:
                        accepted.append((cid, f.suffix.lower(), f))
        if problems:
            total = len(problems) + len(accepted)
            shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
            raise InputError(labels, f"{len(problems)} of {total} labels rejected, nothing imported: {shown}")
        records = []
        for cid, suffix, content in accepted:
            data = content if isinstance(content, bytes) else None
            digest = _sha(data) if data is not None else file_sha256(content)  # type: ignore[arg-type]
            dest = proj.labels_dir / f"{cid}.{digest[:12]}{suffix}"
            if not dest.exists():
                with atomic_path(dest, suffix=suffix) as tmp:
                    if data is not None:
                        tmp.write_bytes(data)
                    else:
                        shutil.copyfile(content, tmp)  # type: ignore[arg-type]
            records.append((cid, dest, annotator))
        results = led.annotate_many(records, replace=replace)
    out = ImportResult()
    for res in results:
        getattr(out, res.action).append(res.case_id)
    return out


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name in some containers
        return "unknown"


def _class_name(classes: Sequence[str], value: str) -> str | None:
    if value in classes:
        return value
    if value.isdigit() and int(value) < len(classes):
        return classes[int(value)]
    return None


def _case_problem(known: dict[str, LedgerItem], cid: str) -> str | None:
    if cid not in known:
        return "not in the project pool (unknown case)"
    if known[cid].status == "unlabelled":
        return "was never queried (status unlabelled); only queried cases can be imported"
    return None


def _hash_problem(item: LedgerItem, digest: str, replace: bool) -> str | None:
    if item.status == "annotated" and item.label_hash != digest and not replace:
        return "already annotated with a different label; pass --replace to record a re-annotation"
    return None


def _mask_problem(read_image: Callable[[Path], Any], path: Path, item: LedgerItem, n_classes: int) -> str | None:
    try:
        lab = read_image(path).array
    except InputError as exc:
        return exc.problem
    try:
        img = read_image(item.image_path).array
    except InputError as exc:
        return f"its image cannot be read ({exc})"
    if lab.ndim != 3 or tuple(lab.shape[1:]) != tuple(img.shape[1:]):
        got = "x".join(str(s) for s in lab.shape[1:][::-1])
        want = "x".join(str(s) for s in img.shape[1:][::-1])
        return f"size {got} differs from its image {want} (width x height)"
    _, problem = decode_mask(lab, n_classes, path.name.lower().endswith(LOSSY))
    return problem


# ------------------------------------------------------------------------------------------ train


def _normalise_mode(mode: str) -> str:
    key = mode.strip().lower().replace("_", "-")
    key = _MODE_ALIASES.get(key, key)
    if key not in MODES:
        raise InputError(None, f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    return key


def validation_cases(proj: Project, annotated: Sequence[LedgerItem]) -> list[str]:
    """The frozen held-out validation cases (chosen and written at the first call; see module docstring)."""
    path = proj.root / VALIDATION_FILE
    if path.is_file():
        return list(json.loads(path.read_text())["cases"])
    first = min(it.round for it in annotated if it.round is not None)
    pool = sorted(it.case_id for it in annotated if it.round == first)
    n_val = int(math.floor(proj.config.val_fraction * len(pool) + 1e-9))
    order = np.random.default_rng(proj.config.seed).permutation(len(pool))
    cases = sorted(pool[i] for i in order[:n_val])
    write_json_atomic(path, {
        "cases": cases, "from_round": first, "fraction": proj.config.val_fraction, "created_at": _now(),
        "rule": "floor(fraction x n) cases drawn with the project seed from the n annotated cases of the first "
                "annotated round (a random cold-start round); frozen, never used for training or model selection",
    })
    return cases


def _predict_all(model: Any, x: np.ndarray, batch_size: int = 16) -> np.ndarray:
    import torch

    out = [_probs(model, torch.from_numpy(x[s : s + batch_size])).numpy() for s in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros((0,))


def case_scores(task: str, probs: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-case score: Dice (mean over foreground classes, both empty = 1) or 1/0 correct (classification)."""
    if task == "classification":
        return (probs.argmax(1) == y).astype(np.float64)
    import torch

    from aemia.train.trainer import case_mean_dice

    pred = probs.argmax(1)
    return np.array([case_mean_dice(torch.from_numpy(p), torch.from_numpy(t), n_classes) for p, t in zip(pred, y)])


def _validation_metrics(task: str, probs: np.ndarray, y: np.ndarray, n_classes: int) -> dict[str, Any]:
    if len(y) == 0:
        return {}
    per_case = case_scores(task, probs, y, n_classes)
    if task == "segmentation":
        return {"metric": "dice", "value": float(per_case.mean()), "n": int(len(y))}
    from aemia.evaluate.metrics import auc

    try:
        value: float | None = float(auc(y, probs[:, 1] if probs.shape[1] == 2 else probs))
    except ValueError:
        value = None  # a single class among the validation cases
    return {"metric": "auc", "value": value, "accuracy": float(per_case.mean()), "n": int(len(y))}


def hard_cases(task: str, probs: np.ndarray, y: np.ndarray, ids: Sequence[str], n_classes: int,
               hard_threshold: float = 0.5) -> dict[str, float]:
    """ACFT's **H**: the previously labelled cases ``ids`` the model gets wrong, ``{case: score}``.

    ``probs`` are the model's predictions for them and ``y`` their labels. Segmentation: case Dice below
    ``hard_threshold``; classification: misclassified (:func:`case_scores` is 1 / 0).
    """
    sc = case_scores(task, probs, y, n_classes)
    threshold = hard_threshold if task == "segmentation" else 0.5  # correct = 1, wrong = 0
    return {c: float(s) for c, s in zip(ids, sc) if s < threshold}


def fit_model(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    task: str,
    run_dir: str | Path,
    *,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 8,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    ids: Sequence[str] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """One round's training recipe: ``epochs`` of Adam (cosine) with light augmentation on ``x, y`` (class
    indices for classification, masks for segmentation), no validation, the last epoch is the model.

    Returns ``(model on the CPU, the trainer's fit report)``; checkpoints and ``log.jsonl`` go to ``run_dir``.
    """
    from aemia.train.data import ArrayDataset, AugmentConfig
    from aemia.train.trainer import TrainConfig, Trainer

    aug = AugmentConfig()
    train_set = (ArrayDataset(x, targets=y, augment=aug, seed=seed, ids=ids) if task == "classification"
                 else ArrayDataset(x, y, augment=aug, seed=seed, ids=ids))
    unetpp = getattr(model, "config", {}).get("name") == "unetpp"
    tcfg = TrainConfig(epochs=int(epochs), batch_size=int(batch_size), lr=float(lr), seed=seed, amp="none",
                       device=device, progress=progress, deep_supervision=unetpp)
    trainer = Trainer(model, train_set, None, tcfg, run_dir, task=task)
    fit = trainer.fit()
    return trainer.model.cpu(), fit


def initial_model(proj: Project, mode: str, parent: dict[str, Any] | None) -> tuple[Any, dict[str, Any]]:
    """The weights a round starts from: ``M_{t-1}`` (``parent``) for the continual modes, else ``M_0``.

    Returns ``(model, init)``; ``init`` says where the weights came from and, when a checkpoint was loaded,
    how many tensors were loaded / missing / unexpected / shape-mismatched (``load_weights``' report).
    """
    from aemia.nets import load_weights

    model = proj.new_model()
    if mode == "from-scratch" or parent is None:
        src = proj.config.pretrained
        return model, {"from": "pretrained" if src else "M0", "path": src, "seed": proj.config.seed}
    path = proj.model_dir(parent["round"]) / "model"
    report = load_weights(model, path, strict=True)
    return model, {"from": f"round_{parent['round']:02d}", "path": str(path), "loaded": len(report.loaded),
                   "missing": len(report.missing), "unexpected": len(report.unexpected),
                   "mismatched": len(report.mismatched), "summary": report.summary()}


def train_round(
    project: str | Path | Project,
    *,
    epochs: int = 20,
    mode: str = "continual",
    hard_threshold: float = 0.5,
    lr: float = 1e-3,
    batch_size: int = 8,
    overwrite: bool = False,
    device: str = "auto",
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train the model of the latest annotated round (``models/round_NN``); returns its ``summary.json``.

    See the module docstring for the modes, the hard-case rule and the validation set. Refuses when that
    round already has a model (``overwrite`` retrains it) and, in ``continual`` / ``new-only`` mode, when
    there are no labels the previous model has not seen.
    """
    say = log or (lambda _msg: None)
    proj = _open_project(project)
    mode = _normalise_mode(mode)
    if epochs < 1:
        raise InputError(None, f"--epochs must be at least 1, got {epochs}")
    cfg = proj.config
    with proj.ledger() as led:
        annotated = led.items("annotated")
        counts = led.status_counts()
    if not annotated:
        raise InputError(proj.root, "no annotated cases yet: query, annotate and import labels first")
    r = max(it.round for it in annotated if it.round is not None)
    out_dir = proj.model_dir(r)
    if (out_dir / "summary.json").is_file() and not overwrite:
        raise InputError(out_dir, f"round {r:02d} already has a model; query and import new labels first, "
                                  "or pass --overwrite to retrain this round")
    val_ids = set(validation_cases(proj, annotated))
    by_id = {it.case_id: it for it in annotated}
    labelled = sorted(c for c in by_id if c not in val_ids)
    if not labelled:
        raise InputError(proj.root, "every annotated case is in the validation set; annotate more cases")
    parent = proj.latest_model(before=r)
    hard: dict[str, float] = {}
    new = sorted(set(labelled) - set(parent["labelled"])) if parent else labelled
    if parent is None or mode in ("from-scratch", "all-labelled"):
        train_ids = labelled
    else:
        if not new:
            raise InputError(proj.root, f"no labels that round_{parent['round']:02d}'s model has not seen; "
                                        "import new labels, or use --mode all-labelled / from-scratch")
        train_ids = list(new)
        seen = sorted(set(parent["labelled"]) & set(labelled))
        if mode == "continual" and seen:
            prev = proj.load_model(parent)
            x, y = proj.dataset_arrays([by_id[c] for c in seen], progress)
            hard = hard_cases(cfg.task, _predict_all(prev, x), y, seen, proj.n_classes, hard_threshold)
            train_ids = sorted(set(new) | set(hard))
    model, init = initial_model(proj, mode, parent)
    say(f"round {r:02d} ({mode}): init from {init['from']}"
        + (f" ({init['summary']})" if "summary" in init else "")
        + f"; training on {len(train_ids)} cases ({len(new) if parent else len(train_ids)} new"
        + (f", {len(hard)} hard" if parent and mode == "continual" else "") + f"); {len(val_ids)} validation cases")
    if out_dir.exists():
        shutil.rmtree(out_dir)  # an overwritten round, or one whose training was interrupted (no summary.json)
    out_dir.mkdir(parents=True)
    x, y = proj.dataset_arrays([by_id[c] for c in train_ids], progress)
    trained, fit = fit_model(model, x, y, cfg.task, out_dir, epochs=epochs, lr=lr, batch_size=batch_size,
                             seed=cfg.seed + r, device=device, progress=progress, ids=train_ids)
    from aemia.nets import save_checkpoint

    val_items = [by_id[c] for c in sorted(val_ids)]
    val: dict[str, Any] = {}
    if val_items:
        vx, vy = proj.dataset_arrays(val_items)
        val = _validation_metrics(cfg.task, _predict_all(trained, vx), vy, proj.n_classes)
    summary = {
        "round": r, "mode": mode, "task": cfg.task, "created_at": _now(), "init": init,
        "parent": None if parent is None else parent["round"],
        "labelled": labelled, "trained_on": train_ids, "new": new if parent else train_ids,
        "hard": hard, "hard_threshold": hard_threshold if cfg.task == "segmentation" else "misclassified",
        "n_labels": len(by_id), "n_train_labels": len(labelled), "n_validation": len(val_ids),
        "pending": counts["queried"], "epochs": int(epochs), "lr": float(lr), "batch_size": int(batch_size),
        "final_train_loss": fit["history"][-1]["train_loss"] if fit["history"] else None,
        "validation": val,
    }
    save_checkpoint(trained, out_dir / "model", {"round": r, "mode": mode, "task": cfg.task,
                                                 "classes": cfg.classes, "size": cfg.size, "validation": val})
    write_json_atomic(out_dir / "summary.json", summary)  # the round's commit point
    return summary


# ------------------------------------------------------------------------------------------ status


def learning_curve(project: str | Path | Project) -> list[dict[str, Any]]:
    """One row per trained round: round, mode, labels, training labels, validation metric."""
    proj = _open_project(project)
    rows = []
    for s in proj.model_summaries():
        v = s.get("validation") or {}
        rows.append({"round": s["round"], "mode": s["mode"], "n_labels": s["n_labels"],
                     "n_train_labels": s["n_train_labels"], "n_trained_on": len(s["trained_on"]),
                     "n_validation": s["n_validation"], "metric": v.get("metric"), "value": v.get("value"),
                     "accuracy": v.get("accuracy")})
    return rows


def _plot_curve(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [r for r in rows if r["value"] is not None]
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    xs, ys = [r["n_train_labels"] for r in pts], [r["value"] for r in pts]
    ax.plot(xs, ys, "o-", color="tab:blue")
    for r in pts:
        ax.annotate(f"r{r['round']}", (r["n_train_labels"], r["value"]), textcoords="offset points", xytext=(4, 4),
                    fontsize=8)
    metric = pts[0]["metric"] if pts else "metric"
    ax.set_xlabel("annotated training cases")
    ax.set_ylabel(f"validation {metric} (n = {pts[-1]['n_validation'] if pts else 0})")
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def project_status(project: str | Path | Project, *, plot: bool = True) -> dict[str, Any]:
    """Counts per status, the query rounds, the trained models and the learning curve.

    With ``plot``, writes ``learning_curve.png`` and ``learning_curve.csv`` when at least one model has a
    validation score (a held-out validation set exists); ``"curve_png"`` is then its path, else ``None``
    and ``"note"`` says why.
    """
    proj = _open_project(project)
    with proj.ledger() as led:
        counts = led.status_counts()
        rounds = [asdict(ri) for ri in led.rounds()]
    rows = learning_curve(proj)
    png: Path | None = None
    note = None
    if not rows:
        note = "no model trained yet (aemia active train)"
    elif not any(r["value"] is not None for r in rows):
        note = "no validation score yet (the validation set is empty or has a single class)"
    elif plot:
        png = proj.root / "learning_curve.png"
        _plot_curve(rows, png, f"{proj.root.name}: {proj.config.task}")
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        write_text_atomic(proj.root / "learning_curve.csv", buf.getvalue())
    return {"project": str(proj.root), "task": proj.config.task, "counts": counts, "rounds": rounds,
            "curve": rows, "curve_png": png, "note": note}
