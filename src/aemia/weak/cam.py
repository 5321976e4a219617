"""Class activation maps (Zhou, Khosla, Lapedriza, Oliva, Torralba, "Learning Deep Features for Discriminative
Localization", CVPR 2016) as weak localisation from image-level labels.

For a network ending in global average pooling and one linear layer, the map of class c is::

    CAM_c(u) = Σ_k w_{c,k} f_k(u)

with f_k the last convolutional feature maps (``forward_features(x)["bottleneck"]``) and w_{c,k} the linear layer's
weights, so that logit_c = mean_u CAM_c(u) + b_c (computed in :mod:`aemia.nets.cam`, shared with MB-DCNN). The map is upsampled bilinearly to the image (Zhou et al.), its negative
part set to 0 and divided by its positive maximum (as MB-DCNN feeds CAMs to its segmentation network, METHODS.md
§7.2); a map with no positive value is all zeros. A CAM becomes a mask by keeping the pixels at or above
``threshold`` × its maximum (default 0.5 of the max as asked here; Zhou et al. used 0.2 for bounding boxes),
optionally only the largest connected component (8-connectivity), and is scored against true masks by per-image
IoU and Dice with case-bootstrap 95% intervals (:mod:`aemia.evaluate.metrics`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from aemia.evaluate.metrics import bootstrap_ci, ci_dict, dice, iou
from aemia.nets.cam import cam_from_maps, classifier_cam, normalise_cams, supports_cam

__all__ = ["CamConfig", "CamOutput", "cam_from_maps", "class_activation_maps", "largest_component", "normalise_cams",
           "plot_cams", "run_cams", "score_masks", "supports_cam", "threshold_cam", "threshold_cams"]


@dataclass
class CamConfig:
    """How CAMs become masks. ``threshold``: fraction of each map's maximum (0.5 by default; Zhou et al. 0.2)."""

    threshold: float = 0.5
    largest_component: bool = False
    batch_size: int = 16

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")


@dataclass
class CamOutput:
    """Normalised CAMs (N, H, W) in [0, 1], the class each map is of (N,) and the class probabilities (N, C)."""

    cams: np.ndarray
    classes: np.ndarray
    probs: np.ndarray


@torch.no_grad()
def class_activation_maps(
    model: nn.Module,
    images: np.ndarray | torch.Tensor,
    classes: int | Sequence[int] | np.ndarray | None = None,
    size: tuple[int, int] | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> CamOutput:
    """CAMs of ``images`` (N, C, H, W) for ``classes``: ``None`` = each image's predicted class, an int = that
    class for every image, a sequence = one class per image. Maps are upsampled to ``size`` (default: the images'
    own H, W) and normalised (:func:`normalise_cams`). The model is put in eval mode. ``progress`` shows a bar
    over the batches."""
    if not supports_cam(model):
        raise ValueError(f"{type(model).__name__} has no feature maps + linear fc head: no class activation maps")
    model.eval()
    x_all = torch.as_tensor(np.asarray(images, dtype=np.float32) if isinstance(images, np.ndarray) else images).float()
    if x_all.ndim != 4:
        raise ValueError(f"CAMs are for 2D images (N, C, H, W); got shape {tuple(x_all.shape)}")
    n = x_all.shape[0]
    out_size = tuple(size) if size is not None else tuple(x_all.shape[2:])
    fc: nn.Linear = model.fc  # type: ignore[assignment]
    n_classes = fc.out_features
    if classes is None:
        wanted: np.ndarray | None = None
    else:
        wanted = np.broadcast_to(np.asarray(classes, dtype=np.int64), (n,)).copy()
        if wanted.size and (wanted.min() < 0 or wanted.max() >= n_classes):
            raise ValueError(f"class index out of range 0..{n_classes - 1}")
    device = next(model.parameters()).device
    cams, chosen, probs = [], [], []
    from aemia.utils.progress import Bar

    with Bar("class activation maps", total=-(-n // batch_size), enabled=progress) as bar:
        for start in range(0, n, batch_size):
            _cam_batch(model, x_all[start : start + batch_size].to(device), wanted, start, out_size, device,
                       cams, chosen, probs)
            bar.advance()
    if not cams:
        empty = np.zeros((0, *out_size), np.float32)
        return CamOutput(empty, np.zeros(0, np.int64), np.zeros((0, n_classes), np.float32))
    return CamOutput(torch.cat(cams).numpy().astype(np.float32), torch.cat(chosen).numpy().astype(np.int64),
                     torch.cat(probs).numpy().astype(np.float32))


def _cam_batch(model: nn.Module, x: torch.Tensor, wanted: np.ndarray | None, start: int,
               out_size: tuple[int, ...], device: torch.device, cams: list, chosen: list, probs: list) -> None:
    """One batch of :func:`class_activation_maps` (appends to ``cams``, ``chosen``, ``probs``)."""
    picked = None if wanted is None else torch.from_numpy(wanted[start : start + x.shape[0]]).to(device)
    sel, logits = classifier_cam(model, x, picked)
    p = logits.softmax(1)
    cls = p.argmax(1) if picked is None else picked
    up = F.interpolate(sel, size=out_size, mode="bilinear", align_corners=False)
    cams.append(normalise_cams(up)[:, 0].cpu())
    chosen.append(cls.cpu())
    probs.append(p.cpu())


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected (full connectivity) component of a boolean mask; empty stays empty."""
    mask = np.asarray(mask, dtype=bool)
    lab, n = ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, mask.ndim))
    if n <= 1:
        return mask.copy()
    sizes = np.bincount(lab.ravel())[1:]
    return lab == (int(np.argmax(sizes)) + 1)


def threshold_cam(cam: np.ndarray, threshold: float = 0.5, largest: bool = False) -> np.ndarray:
    """Boolean mask of the pixels with ``cam >= threshold · max(cam)``; empty when the map has no positive value."""
    cam = np.asarray(cam, dtype=float)
    peak = float(cam.max()) if cam.size else 0.0
    if peak <= 0:
        return np.zeros(cam.shape, dtype=bool)
    mask = cam >= threshold * peak
    return largest_component(mask) if largest else mask


def threshold_cams(cams: np.ndarray, config: CamConfig | None = None) -> np.ndarray:
    """:func:`threshold_cam` over a stack (N, H, W)."""
    cfg = config or CamConfig()
    return np.stack([threshold_cam(c, cfg.threshold, cfg.largest_component) for c in cams]) if len(cams) else \
        np.zeros(np.shape(cams), dtype=bool)


def score_masks(preds: np.ndarray, truths: np.ndarray, n_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Per-image IoU and Dice of predicted vs true masks, with their means and bootstrap 95% CIs:
    ``{"iou": {"mean", "ci", "n", "n_excluded"}, "dice": {...}, "per_image": [{"iou", "dice"}, ...]}``."""
    if len(preds) != len(truths):
        raise ValueError(f"{len(preds)} predicted masks for {len(truths)} true masks")
    per = [{"iou": iou(p, g), "dice": dice(p, g)} for p, g in zip(preds, truths)]
    return {
        "iou": ci_dict(bootstrap_ci([r["iou"] for r in per], n_resamples, seed)),
        "dice": ci_dict(bootstrap_ci([r["dice"] for r in per], n_resamples, seed)),
        "per_image": per,
    }


def _contour(ax: Any, mask: np.ndarray, color: str) -> None:
    """Outline of a mask, drawn on a one-pixel zero border so a mask touching the image edge stays closed."""
    m = np.pad(np.asarray(mask, dtype=float), 1)
    if m.any():
        h, w = m.shape
        ax.contour(np.arange(-1, w - 1), np.arange(-1, h - 1), m, levels=[0.5], colors=color, linewidths=1.2)


def plot_cams(
    images: np.ndarray,
    cams: np.ndarray,
    preds: np.ndarray,
    truths: np.ndarray | None,
    path: str | Path,
    titles: Sequence[str] | None = None,
    max_images: int = 16,
    columns: int = 4,
) -> Path:
    """A grid: each image with its CAM overlaid (jet), the thresholded CAM's contour (magenta) and the true mask's
    contour (green). ``images`` (N, C, H, W) in [0, 1]; written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from aemia.utils.io import write_with

    n = min(len(images), max_images)
    cols = max(1, min(columns, n))
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 3.1 * rows + 0.4), squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i >= n:
            continue
        img = np.asarray(images[i], dtype=float)
        shown = np.clip(np.moveaxis(img[:3], 0, -1), 0, 1) if img.shape[0] >= 3 else img[0]
        ax.imshow(shown, cmap=None if img.shape[0] >= 3 else "gray", vmin=0, vmax=1)
        ax.imshow(cams[i], cmap="jet", alpha=0.4, vmin=0, vmax=1)
        _contour(ax, preds[i], "magenta")
        if truths is not None:
            _contour(ax, truths[i], "lime")
        h, w = np.shape(cams[i])
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
    handles = [Line2D([], [], color="magenta", label="thresholded CAM")]
    if truths is not None:
        handles.append(Line2D([], [], color="lime", label="true mask"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    path = Path(path)
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------ a trained run

TARGETS_HELP = "predicted (each image's predicted class), all (the predicted class, then every class) or a class name"


def _resolve_targets(target: str, classes: list[str]) -> list[tuple[str, int | None]]:
    """(key, class index or None for the predicted class) for each CAM to compute."""
    from aemia.errors import InputError

    t = target.strip().lower()
    if t == "predicted":
        return [("predicted", None)]
    if t == "all":
        return [("predicted", None)] + [(name, k) for k, name in enumerate(classes)]
    lowered = [c.lower() for c in classes]
    if t in lowered:
        k = lowered.index(t)
        return [(classes[k], k)]
    raise InputError(None, f"unknown class {target!r}; choose {TARGETS_HELP}: {', '.join(classes)}")


def run_cams(
    run_dir: str | Path,
    out_dir: str | Path,
    dataset: str | None = None,
    split: str = "test",
    target: str = "predicted",
    config: CamConfig | None = None,
    max_figure_images: int = 16,
    progress: bool = True,
) -> dict[str, Any]:
    """CAMs of a trained classification run on a split of a data set with masks, scored against the masks.

    Images are resized to the run's training size, as in its own evaluation; masks likewise (nearest). Writes
    ``cam_metrics.json`` (IoU, Dice and the pointing game — the CAM's peak inside the mask — with 95% CIs),
    ``per_image.csv`` and ``cams.png`` into ``out_dir``; returns the metrics. Raises ``InputError`` for a run
    that is not a classification run, a model without CAM support, or a data set without masks.
    """
    import csv
    import io

    from aemia.data.catalog import get_dataset
    from aemia.errors import InputError
    from aemia.infer.predictor import Predictor
    from aemia.runs.folder import RunFolder
    from aemia.utils.io import write_json_atomic, write_text_atomic

    cfg_cam = config or CamConfig()
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    cfg = RunFolder(run_dir).config()
    predictor = Predictor.from_run(run_dir, device="cpu")
    if predictor.task != "classification":
        raise InputError(run_dir, f"not a classification run (task: {predictor.task}, model: {cfg.model}); "
                                  "CAMs need an image classifier, e.g. --model resnet or arl-resnet")
    model = predictor.model
    if not supports_cam(model) or predictor.spatial_dims != 2:
        raise InputError(run_dir, f"model '{cfg.model}' has no 2D feature map + linear head: no class activation maps")
    ds = get_dataset(dataset or cfg.dataset)
    if not ds.labels or ds.task == "classification":
        raise InputError(ds.root, f"data set '{ds.name}' has no masks: CAMs cannot be scored (use e.g. --dataset ph2)")
    run_classes = list(get_dataset(cfg.dataset).classes) if ds.name != cfg.dataset else list(ds.classes)
    if len(run_classes) != model.fc.out_features:
        run_classes = [f"class_{k}" for k in range(model.fc.out_features)]
    targets = _resolve_targets(target, run_classes)
    x, y, t = ds.arrays(split, predictor.size)
    if y is None:
        raise InputError(ds.root, f"data set '{ds.name}' has no masks in split '{split}': CAMs cannot be scored")
    truth = y > 0
    ids = ds.case_ids(split)
    names = list(ds.classes)

    results: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    first: tuple[CamOutput, np.ndarray, list[dict[str, float]]] | None = None
    for key, cls in targets:
        out = class_activation_maps(model, x, cls, batch_size=cfg_cam.batch_size, progress=progress)
        masks = threshold_cams(out.cams, cfg_cam)
        scores = score_masks(masks, truth)
        pointing = [float(truth[i].ravel()[int(np.argmax(out.cams[i]))]) if out.cams[i].max() > 0 else 0.0
                    for i in range(len(ids))]
        results[key] = {"iou": scores["iou"], "dice": scores["dice"], "pointing": ci_dict(bootstrap_ci(pointing))}
        predicted = out.probs.argmax(1)
        for i, cid in enumerate(ids):
            per = scores["per_image"][i]
            rows.append({"case": cid, "cam": key, "target": names[int(t[i])] if t is not None and names else "",
                         "predicted": run_classes[int(predicted[i])], "cam_class": run_classes[int(out.classes[i])],
                         "p_cam_class": round(float(out.probs[i, out.classes[i]]), 6),
                         "iou": round(per["iou"], 6), "dice": round(per["dice"], 6), "pointing": int(pointing[i]),
                         "mask_fraction": round(float(masks[i].mean()), 6)})
        if first is None:
            first = (out, masks, scores["per_image"])
    head_key = targets[0][0]
    head = results[head_key]
    headline = (f"CAM ({head_key} class) vs {ds.name} masks, split {split}, n={len(ids)}, "
                f"threshold {cfg_cam.threshold:g}: "
                f"IoU {head['iou']['mean']:.3f} (95% CI {head['iou']['ci'][0]:.3f}-{head['iou']['ci'][1]:.3f}), "
                f"Dice {head['dice']['mean']:.3f} (95% CI {head['dice']['ci'][0]:.3f}-{head['dice']['ci'][1]:.3f})")
    summary = {"run": str(run_dir), "model": cfg.model, "dataset": ds.name, "split": split, "n_images": len(ids),
               "size": predictor.size, "threshold": cfg_cam.threshold, "largest_component": cfg_cam.largest_component,
               "target": target, "classes": run_classes, "cams": results, "headline": headline}
    out_dir.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["case"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out_dir / "per_image.csv", buf.getvalue())
    if first is not None and len(ids):
        out, masks, per = first
        titles = [f"{cid}: {run_classes[int(c)]} IoU {r['iou']:.2f}" for cid, c, r in zip(ids, out.classes, per)]
        plot_cams(x, out.cams, masks, truth, out_dir / "cams.png", titles=titles, max_images=max_figure_images)
    write_json_atomic(out_dir / "cam_metrics.json", summary)
    return summary
