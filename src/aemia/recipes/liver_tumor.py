"""Liver + tumor segmentation trained without a single tumor annotation (label-free tumor segmentation).

Hu et al., "Label-Free Liver Tumor Segmentation", CVPR 2023 (``reference/METHODS.md`` §3.1): a segmentation
network learns liver (1) and tumor (2) from CTs whose labels contain only the liver; every training sample gets
synthetic tumors (:func:`aemia.synth.tumor.synthesize_tumors`) with probability 0.9, drawn fresh for every
sample, worker and epoch. Published recipe, and what we keep:

* intensities: raw HU during synthesis, then the window [-21, 189] HU → [0, 1] (the paper's
  ``ScaleIntensityRanged``), also at prediction time (stored in the run's config as ``window``);
* working spacing: the paper resamples to 1 mm; we resample to ``RunConfig.spacing`` (default 2 mm isotropic for
  this task, a CPU compromise: the bundled CT is 3 mm) and the synthesis converts its mm sizes to voxels at that
  spacing, so tumor diameters are right at any spacing;
* patches: the paper's 96³ crops with positive/negative sampling; here ``patch`` (CPU default 64×64×48), a third
  centred on a synthetic tumor voxel, a third on a liver voxel, the rest anywhere in the body (so the liver
  segmentation learns what is *not* liver); the paper's flips and intensity jitter widened for transfer across
  scanners (issue 17): :class:`ScannerJitter` in HU (contrast phase / scanner), then :data:`STRONG_3D` (rotation
  about every axis, ±20 % zoom as spacing jitter, 3D elastic, gamma); ``RunConfig.augment`` picks it
  (:func:`augmentation`: ``strong``, the default, ``light`` or ``none``);
* loss Dice + CE over 3 classes, AdamW (the paper: lr 4e-4, warm-up cosine) — the run's TrainConfig.

The synthesis is :class:`aemia.synth.transform.RandTumorSynthesisd`, the MONAI dictionary transform a MONAI
pipeline would use, applied to the liver's bounding box: one synthesis per ``patches_per_synthesis`` patches
(default 2; about 0.2 s at 2 mm), cached until the next draw. Its generator is seeded by ``[seed, worker, epoch,
volume·2²⁰ + group]``, so killing and resuming a run reproduces the same tumors.

Evaluation (:func:`evaluate_liver_tumor`): the test CTs are never used in training; each gets ``val_variants``
synthetic *validation* versions (:func:`aemia.synth.tumor.synthesize_validation_tumors`: a fixed number of
separate tumors per size bin ≤5, 5–10, 10–20, >20 mm) in its own geometry, and the model is scored on them:
liver and tumor Dice with CIs, lesion-wise sensitivity per size bin and false positives per case. Real tumors
are the real test (not bundled): ``aemia predict`` writes the liver/tumor mask and a per-lesion CSV for any CT.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from aemia.data.catalog import CatalogDataset
from aemia.data.normalise import ct_window as window
from aemia.data.transforms import resample_to_spacing
from aemia.errors import InputError
from aemia.runs.config import TUMOR_CLASS
from aemia.runs.folder import RunFolder
from aemia.synth.transform import RandTumorSynthesisd
from aemia.synth.tumor import TumorConfig, synthesize_validation_tumors
from aemia.train.data import AugmentConfig, EpochDataset, augment, sample_rng
from aemia.utils.io import write_text_atomic

if TYPE_CHECKING:
    from aemia.runs.config import RunConfig

#: The paper's intensity window for liver tumors (ScaleIntensityRanged a_min=-21, a_max=189).
LIVER_TUMOR_WINDOW: tuple[float, float] = (-21.0, 189.0)
#: CPU defaults for the task (the paper: 1 mm, 96³ patches).
DEFAULT_SPACING: tuple[float, float, float] = (2.0, 2.0, 2.0)
DEFAULT_PATCH: tuple[int, int, int] = (64, 64, 48)


def organ_label(ds: CatalogDataset, name: str = "liver") -> int:
    """The data set's label value of the organ called ``name`` (InputError if it has none)."""
    for k, v in ds.labels.items():
        if str(v).strip().lower() == name:
            return int(k)
    raise InputError(None, f"data set '{ds.name}' has no '{name}' label: the liver-tumor task needs a liver mask")


def _bbox(mask: np.ndarray, margin: Sequence[int] = (0, 0, 0)) -> tuple[slice, ...]:
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - np.asarray(margin), 0)
    hi = np.minimum(idx.max(0) + 1 + np.asarray(margin), mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _load_case(ds: CatalogDataset, case: Any, organ: int) -> tuple[Any, np.ndarray, np.ndarray]:
    """The sample, its raw HU volume (X, Y, Z) float32 and organ mask (InputError if the organ is absent)."""
    s = ds.load(case)
    organ_mask = s.label == organ
    if not organ_mask.any():
        raise InputError(case.label, f"has no voxel of the organ label {organ}")
    return s, s.image.array[0].astype(np.float32), organ_mask


def load_hu_and_organ(ds: CatalogDataset, case: Any, organ: int,
                      spacing: Sequence[float] | None) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Raw HU volume (X, Y, Z) float32 and organ mask (bool), resampled to ``spacing`` when given."""
    s, hu, organ_mask = _load_case(ds, case, organ)
    sp = tuple(float(v) for v in s.image.spacing)
    if spacing is not None:
        hu = resample_to_spacing(hu[None], sp, spacing, order=1)[0]
        organ_mask = resample_to_spacing(organ_mask[None].astype(np.uint8), sp, spacing, order=0)[0] > 0
        sp = tuple(float(v) for v in spacing)
    return hu, organ_mask, sp


#: Strong 3D augmentation for a liver model that has to hold across scanners: rotation about every axis (±15°),
#: zoom ±20% (a random change of the voxel size: spacing jitter), 3D elastic deformation, brightness/contrast and
#: gamma; the scanner/contrast-phase HU shift is :class:`ScannerJitter`, applied in HU before the window.
STRONG_3D = AugmentConfig(rot90=False, rotate=15.0, rotate_all_axes=True, scale=0.2, affine_prob=0.5, intensity=0.1,
                          gamma=0.3, elastic3d=0.2)



def augmentation(name: str) -> tuple[AugmentConfig | None, "ScannerJitter | None"]:
    """(patch augmentation, HU jitter) of ``RunConfig.augment`` for this task: ``strong`` is :data:`STRONG_3D` with
    :class:`ScannerJitter` (for transfer across scanners, issue 17); ``light`` the pre-wave-2 recipe (flips, 90°
    rotations, brightness/contrast; no HU jitter), under which the 2000-step run of 2026-11-22 found 13/32
    synthetic validation tumours; ``none`` neither."""
    presets = {"strong": (STRONG_3D, ScannerJitter()), "light": (AugmentConfig.light(), None), "none": (None, None)}
    if name not in presets:
        raise InputError(None, f"unknown augmentation {name!r} for --task liver-tumor; choose one of "
                               f"{', '.join(presets)}")
    return presets[name]


@dataclass(frozen=True)
class ScannerJitter:
    """Per-patch HU changes between scanners and contrast phases, applied in raw HU before windowing:
    ``hu' = hu·a + b + noise`` with a ~ U(1 ± scale), b ~ U(± shift_hu) and Gaussian noise of σ ~ U(0, noise_hu).
    The defaults cover the liver's mean HU on our cases (CHAOS 141, 3D-IRCADb 99: a 40 HU gap)."""

    scale: float = 0.15
    shift_hu: float = 40.0
    noise_hu: float = 15.0

    def apply(self, hu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        a = 1.0 + rng.uniform(-self.scale, self.scale)
        b = rng.uniform(-self.shift_hu, self.shift_hu)
        sigma = rng.uniform(0.0, self.noise_hu)
        out = hu * np.float32(a) + np.float32(b)
        if sigma > 0:
            out += rng.normal(0.0, sigma, size=hu.shape).astype(np.float32)
        return out


def body_box(hu: np.ndarray, threshold_hu: float = -500.0) -> tuple[slice, ...]:
    """Bounding box of the voxels denser than ``threshold_hu`` (the body; drops the air around it)."""
    body = hu > threshold_hu
    return _bbox(body) if body.any() else tuple(slice(0, s) for s in hu.shape)


class SyntheticTumorPatches(EpochDataset):
    """Training patches from healthy livers with synthetic tumors (the label-free recipe).

    ``volumes``: (HU volume (X, Y, Z), organ mask) pairs at ``spacing``. Each volume is cropped to the body (so the
    network also sees the organs it must *not* call liver). Samples come in groups of ``patches_per_synthesis``
    that share one synthesis (probability ``prob`` of tumors, else the healthy liver), made in the liver's
    bounding box. A third of the patches are centred on a synthetic tumor voxel, a third on a liver voxel, the rest
    anywhere in the body. Each patch gets ``jitter`` (:class:`ScannerJitter`, None: off) in HU, the window, then
    ``augment_cfg`` (default :data:`STRONG_3D`; None: no augmentation). Returns (image (1, *patch) in [0, 1], label (*patch): 0 background, 1 organ,
    2 tumor).
    """

    def __init__(self, volumes: Sequence[tuple[np.ndarray, np.ndarray]], spacing: Sequence[float],
                 patch_size: Sequence[int], patches_per_volume: int = 16, patches_per_synthesis: int = 2,
                 prob: float = 0.9, window_hu: Sequence[float] = LIVER_TUMOR_WINDOW,
                 tumor_config: TumorConfig | None = None, augment_cfg: AugmentConfig | None = STRONG_3D,
                 jitter: ScannerJitter | None = ScannerJitter(), seed: int = 0) -> None:
        self.patch = tuple(int(p) for p in patch_size)
        self.spacing = tuple(float(s) for s in spacing)
        self.per_volume = int(patches_per_volume)
        self.group = max(1, int(patches_per_synthesis))
        self.prob = float(prob)
        self.window = (float(window_hu[0]), float(window_hu[1]))
        self.tumor_config = tumor_config or TumorConfig()
        self.augment_cfg = augment_cfg
        self.jitter = jitter
        self.seed = int(seed)
        self.volumes: list[tuple[np.ndarray, np.ndarray, tuple[slice, ...]]] = []
        self.organ_points: list[np.ndarray] = []
        for hu, organ_mask in volumes:
            if not organ_mask.any():
                raise InputError(None, "a training volume has an empty organ mask")
            crop = body_box(hu)
            h, m = hu[crop], organ_mask[crop]
            pads = [(0, max(0, p - s)) for p, s in zip(self.patch, m.shape)]
            if any(b for _, b in pads):
                h = np.pad(h, pads, mode="constant", constant_values=-1024.0)
                m = np.pad(m, pads, mode="constant")
            self.volumes.append((np.ascontiguousarray(h, np.float32), m, _bbox(m)))
            self.organ_points.append(np.argwhere(m[tuple(slice(None, None, 2) for _ in m.shape)]) * 2)
        self._cache: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        # The MONAI dictionary transform does the synthesis (p = prob, only on healthy labels, its own per-call
        # generator from [seed, worker, epoch, index]); index = volume × 2**20 + group.
        self.transform = RandTumorSynthesisd(keys=("image", "label"), prob=self.prob, seed=self.seed,
                                             spacing=self.spacing, config=self.tumor_config)

    def __len__(self) -> int:
        return len(self.volumes) * self.per_volume

    def synthesized(self, v: int, group: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(HU image, label, tumor voxel coordinates) of volume ``v``'s draw ``group`` this epoch."""
        key = (v, self.epoch, group)
        if key in self._cache:
            return self._cache[key]
        hu, organ_mask, box = self.volumes[v]
        image = hu
        label = organ_mask.astype(np.int64)
        self.transform.set_epoch(self.epoch)
        out = self.transform({"image": hu[box][None], "label": organ_mask[box][None].astype(np.uint8),
                              "index": v * 2**20 + group})
        if self.transform.last_result is not None:
            image = hu.copy()
            image[box] = out["image"][0]
            label[box] = out["label"][0]
        tumor = np.argwhere(label == 2)
        result = (image, label, tumor)
        if len(self._cache) > 4 * len(self.volumes):
            self._cache.clear()
        self._cache[key] = result
        return result

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        v = idx % len(self.volumes)
        image, label, tumor = self.synthesized(v, (idx // len(self.volumes)) // self.group)
        rng = sample_rng(self.seed, self.epoch, idx)
        u = rng.random()
        shape = label.shape
        if u < 1 / 3 and len(tumor):
            centre = tumor[rng.integers(len(tumor))]
        elif u < 2 / 3:
            pts = self.organ_points[v]
            centre = pts[rng.integers(len(pts))]
        else:
            centre = np.array([rng.integers(0, s) for s in shape])
        start = [int(np.clip(c - p // 2, 0, s - p)) for c, p, s in zip(centre, self.patch, shape)]
        sl = tuple(slice(s, s + p) for s, p in zip(start, self.patch))
        phu, plab = image[sl], label[sl]
        if self.jitter is not None:
            phu = self.jitter.apply(phu, rng)
        pimg = window(phu, *self.window)[None]
        if self.augment_cfg is not None:
            pimg, plab = augment(pimg, plab, rng, self.augment_cfg)
        return (torch.from_numpy(np.ascontiguousarray(pimg, np.float32)),
                torch.from_numpy(np.ascontiguousarray(plab).astype(np.int64)))


def validation_case(hu: np.ndarray, organ_mask: np.ndarray, spacing: Sequence[float], seed: int,
                    per_bin: int = 2, affine: np.ndarray | None = None,
                    tumor_config: TumorConfig | None = None) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    """A synthetic validation version of a CT: (HU image, label 0/1/2, tumors) with ``per_bin`` tumors per size
    bin, synthesized in the organ's bounding box at ``spacing``."""
    box = _bbox(organ_mask)
    rng = np.random.default_rng([int(seed), 4242])
    res = synthesize_validation_tumors(hu[box], organ_mask[box], rng, per_bin=per_bin, spacing=spacing,
                                       config=tumor_config)
    image = hu.copy()
    label = organ_mask.astype(np.int64)
    image[box] = res.image
    label[box] = res.label
    return image, label, res.tumors


def training_validation_cases(volumes: Sequence[tuple[np.ndarray, np.ndarray]], patch: Sequence[int],
                              spacing: Sequence[float], seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """One synthetic validation version (HU image, label) of each training CT at the working spacing, cropped to
    its liver plus half a patch: the model-selection set, tumours unlike any training draw (fixed seed)."""
    cases = []
    for k, (hu, organ_mask) in enumerate(volumes):
        box = _bbox(organ_mask, [p // 2 for p in patch])
        img, lab, _ = validation_case(hu[box], organ_mask[box], spacing, seed=10_000 + 97 * seed + k)
        cases.append((img, lab))
    return cases


TUMOR_LABEL = 2
#: Tumour probability thresholds tried by :func:`choose_tumor_threshold` (None: the argmax alone).
TUMOR_THRESHOLDS: tuple[float | None, ...] = (None, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1)


def choose_tumor_threshold(predictor: Any, cases: Sequence[tuple[np.ndarray, np.ndarray]],
                           spacing: Sequence[float],
                           thresholds: Sequence[float | None] = TUMOR_THRESHOLDS) -> tuple[float | None, dict[str, float]]:
    """The tumour probability threshold with the best mean tumour Dice on synthetic validation ``cases``
    ((HU image, label) at ``spacing``), after :func:`aemia.infer.lesions.liver_tumor_labels`; ties go to the
    higher threshold (fewer false positives). Returns (threshold, {threshold: mean tumour Dice})."""
    from aemia.data.image import Image
    from aemia.evaluate.metrics import dice
    from aemia.infer.lesions import liver_tumor_labels

    probs = [predictor.probabilities(Image(np.asarray(img, np.float32)[None], tuple(spacing))) for img, _ in cases]
    table: dict[str, float] = {}
    best: tuple[float, float | None] = (-1.0, None)
    for th in thresholds:
        scores = [dice(liver_tumor_labels(p, spacing, th) == TUMOR_LABEL, lab == TUMOR_LABEL)
                  for p, (_, lab) in zip(probs, cases)]
        table["argmax" if th is None else f"{th:g}"] = round(float(np.mean(scores)), 4)
        if float(np.mean(scores)) > best[0] + 1e-9:
            best = (float(np.mean(scores)), th)
    return best[1], table


class _WindowedVolumes:
    """(image, label) tensors for the trainer's sliding-window validation."""

    def __init__(self, cases: list[tuple[np.ndarray, np.ndarray]], window_hu: Sequence[float]) -> None:
        self.cases = [(window(img, *window_hu)[None], lab) for img, lab in cases]

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img, lab = self.cases[i]
        return torch.from_numpy(np.ascontiguousarray(img)), torch.from_numpy(lab.astype(np.int64))


def build_liver_tumor(cfg: "RunConfig", ds: CatalogDataset, labelled: list[str]) -> tuple[torch.nn.Module, Any, Any, str]:
    """Model (3 classes), synthetic-tumor training set and a synthetic validation set for a liver-tumor run.

    Validation uses one synthetic validation version of each *training* CT (fixed seed, tumors unlike the
    training draws): the test CTs stay unseen until :func:`evaluate_liver_tumor`."""
    from aemia.nets import create_model

    if ds.dims != 3:
        raise InputError(None, f"--task liver-tumor needs 3D CT; data set '{ds.name}' is {ds.dims}D")
    if not cfg.synthetic_tumors:
        raise InputError(None, f"data set '{ds.name}' has no tumor annotations: pass --synthetic-tumors to train on "
                               "synthetic tumors in its healthy livers")
    organ = organ_label(ds)
    cfg.labels = {organ: "liver"}
    cfg.spacing = list(cfg.spacing or DEFAULT_SPACING)
    cfg.patch = list(cfg.patch or DEFAULT_PATCH)
    cfg.window = list(cfg.window or LIVER_TUMOR_WINDOW)
    cfg.train.val_roi = list(cfg.patch)
    cases = [c for c in ds.splits["train"] if c.id in set(labelled)]
    vols = [load_hu_and_organ(ds, c, organ, cfg.spacing)[:2] for c in cases]
    seed = cfg.train.seed
    aug, jitter = augmentation(cfg.augment)
    train_set = SyntheticTumorPatches(vols, cfg.spacing, cfg.patch, cfg.patches_per_volume, prob=0.9,
                                      window_hu=cfg.window, augment_cfg=aug, jitter=jitter, seed=seed)
    val_set = _WindowedVolumes(training_validation_cases(vols, cfg.patch, cfg.spacing, seed), cfg.window)
    torch.manual_seed(seed)
    model = create_model(cfg.model, 3, 1, 3, features=cfg.widths(),
                         deep_supervision=cfg.model == "unetpp" and cfg.train.deep_supervision)
    return model, train_set, val_set, "segmentation"


def evaluate_liver_tumor(run_dir: str | Path, cfg: "RunConfig", ds: CatalogDataset, history: list[dict[str, Any]],
                         labelled: list[str], progress: bool = True, val_variants: int = 3,
                         per_bin: int = 2) -> dict[str, Any]:
    """Score the run on synthetic validation tumors in the held-out test CTs (their own geometry).

    First, if the run has no ``postprocess`` yet, its decision rule is chosen and saved in its config: the tumour
    probability threshold (:func:`choose_tumor_threshold`) on the training CTs' synthetic validation versions,
    plus the largest liver component (:func:`aemia.infer.lesions.liver_tumor_labels`); ``aemia predict`` uses the
    same rule.

    Writes metrics.json (liver / tumor Dice with CIs, lesion-wise sensitivity per size bin with CIs, false
    positives per case), per_case.csv, tumors.csv (every validation tumor: bin, diameter, detected) and
    report.html."""
    from aemia.evaluate.evaluate import EvalCase, evaluate_cases
    from aemia.infer.predictor import Predictor
    from aemia.data.image import Image
    from aemia.recipes.report import _curves, _recipe

    run_dir = Path(run_dir)
    organ = organ_label(ds)
    predictor = Predictor.from_run(run_dir, device=cfg.train.device)
    if cfg.postprocess is None:  # choose the decision rule on the training CTs' synthetic validation, never on test
        cases = [c for c in ds.splits["train"] if c.id in set(labelled)]
        vols = [load_hu_and_organ(ds, c, organ, cfg.spacing)[:2] for c in cases]
        val = training_validation_cases(vols, cfg.patch, cfg.spacing, cfg.train.seed)
        threshold, table = choose_tumor_threshold(predictor, val, cfg.spacing)
        cfg.postprocess = {"kind": "liver_tumor", "organ": 1, "tumor": TUMOR_LABEL, "min_tumor_mm3": 0.0,
                           "tumor_threshold": threshold, "tumor_dice_by_threshold": table,
                           "chosen_on": "synthetic validation versions of the training CTs"}
        RunFolder(run_dir).save_config(cfg)
        predictor.postprocess = cfg.postprocess
    cases: list[EvalCase] = []
    tumor_rows: list[dict[str, Any]] = []
    from aemia.utils.progress import Bar

    test = ds.splits[cfg.eval_split]
    if not test:
        raise InputError(None, f"data set '{ds.name}' has no {cfg.eval_split} split to evaluate on")
    with Bar("synthetic validation", total=len(test) * val_variants, enabled=progress) as bar:
        for case in test:
            s, hu, organ_mask = _load_case(ds, case, organ)
            spacing = tuple(float(v) for v in s.image.spacing)
            for k in range(val_variants):
                img, lab, tumors = validation_case(hu, organ_mask, spacing, seed=1_000_003 + k, per_bin=per_bin)
                image = Image(img[None], spacing, s.image.affine, s.image.path)
                pred = predictor.predict(image).astype(np.int64)
                cid = f"{case.id}_synth{k}"
                cases.append(EvalCase(cid, pred, lab, spacing, window(img, *cfg.window or LIVER_TUMOR_WINDOW)))
                for t in tumors:
                    tumor_rows.append({"case": cid, "tumor": t.id, "size_bin": t.size_bin,
                                       "diameter_mm": round(t.diameter_mm, 2), "type": t.type,
                                       "hu_drop": round(t.mean_hu_drop, 1)})
                bar.advance()
    classes = {0: "background", 1: "liver", 2: TUMOR_CLASS}
    recipe = _recipe(cfg, labelled, history)
    recipe.update({"validation": f"{val_variants} synthetic validation versions of each held-out {cfg.eval_split} "
                                 f"CT, {per_bin} tumors per size bin", "tumor_annotations_used": 0,
                   "postprocess": cfg.postprocess})
    title = f"aemia run: liver + tumor {cfg.model} trained on synthetic tumors only ({ds.name})"
    summary = evaluate_cases(cases, run_dir, classes, progress=progress, title=title, extra={"run": recipe},
                             curves=_curves(history), lesions=True, lesion_label=2)
    write_text_atomic(run_dir / "tumors.csv", _csv(tumor_rows))
    tumor = summary["segmentation"][TUMOR_CLASS]["dice"]
    les = summary.get("lesion_detection", {})
    sens = les.get("overall", {})
    fp = les.get("false_positives_per_case", {})
    summary["headline"] = (f"synthetic validation tumors: tumor Dice {tumor['mean']:.3f}, lesion sensitivity "
                           f"{_fmt(sens)}, {_fmt(fp)} false positives per case; liver Dice "
                           f"{summary['segmentation']['liver']['dice']['mean']:.3f}")
    RunFolder(run_dir).save_metrics({k: v for k, v in summary.items() if k != "outputs"})
    return summary


def _fmt(d: Any) -> str:
    if isinstance(d, dict) and "mean" in d:
        return f"{d['mean']:.2f}"
    if isinstance(d, dict) and "sensitivity" in d:
        return f"{d['sensitivity']:.2f} ({d['n_detected']}/{d['n_lesions']})"
    return str(d)


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return buf.getvalue()
