"""Apply a trained run to images of any size and geometry.

``Predictor.from_run("runs/demo")`` rebuilds the preprocessing recorded in the run's ``config.yaml`` (the
normaliser, 2D resize, 3D working spacing and sliding-window size) and the best checkpoint. Run folders written
before the normaliser was recorded get :func:`aemia.data.normalise.default_normaliser` of the data set's
modality and the run's window. ``prune=d`` replaces a UNet++ with its exact sub-network L_d (fast mode); ``tta``
averages over spatial flips. Segmentation outputs are label maps in the input's grid (2D: resized back; 3D: the
voxels of the RAS-ordered input, which :func:`aemia.data.orientation.to_source` returns to the input's stored
orientation and affine, as :func:`aemia.infer.batch.predict_path` does before writing).
``Predictor.from_shipped("liver-tumor")`` loads a model shipped in the package (:mod:`aemia.runs.shipped`): its
``config.json`` records the model, preprocessing, classes and post-processing (``postprocess``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aemia.data.image import Image
from aemia.data.normalise import default_normaliser, normalise
from aemia.errors import InputError
from aemia.nets.predict import predict_probs, resolve_device
from aemia.nets import load_checkpoint
from aemia.runs.config import class_names
from aemia.runs.folder import RunFolder


@dataclass
class Prepared:
    """A network input (``x``: ``(1, C, *S')``) and the spatial shape of the image it came from."""

    x: torch.Tensor
    shape: tuple[int, ...]


def labels_from_probs(probs: np.ndarray) -> np.ndarray:
    """Label map of ``(K, *S)`` probabilities: argmax over classes, or ``> 0.5`` for a single channel."""
    return probs.argmax(0).astype(np.uint8) if probs.shape[0] > 1 else (probs[0] > 0.5).astype(np.uint8)


def is_model_folder(path: str | Path) -> bool:
    """A shipped-layout model folder (``model.safetensors`` + ``config.json``, no run folder's checkpoints)."""
    p = Path(path)
    return (p / "model.safetensors").is_file() and (p / "config.json").is_file() and not (p / "checkpoints").is_dir()


@dataclass
class Predictor:
    model: nn.Module
    spatial_dims: int
    size: int | None = None
    patch: list[int] | None = None
    normaliser: str = "none"  # aemia.data.normalise spec the model was trained with
    spacing: list[float] | None = None  # 3D working voxel size (mm) the model was trained at
    task: str = "segmentation"
    classes: dict[int, str] | None = None  # output index → class name (segmentation runs)
    tta: bool = False
    amp: str = "none"
    channels_last: bool = False
    # e.g. {"kind": "liver_tumor", "min_tumor_mm3": 100.0, "tumor_threshold": 0.3, "min_confidence": 0.5,
    #       "min_depth_mm": 4.0}
    postprocess: dict[str, Any] | None = None

    @classmethod
    def from_shipped(cls, name: str, tta: bool = False, device: str = "auto", amp: str | None = None) -> "Predictor":
        """The model shipped as ``src/aemia/shipped/<name>/`` (one-line InputError naming the shipped ones if not)."""
        from aemia.runs.shipped import shipped_model_dir

        return cls.from_model_folder(shipped_model_dir(name), tta=tta, device=device, amp=amp)

    @classmethod
    def from_model_folder(cls, folder: str | Path, tta: bool = False, device: str = "auto",
                          amp: str | None = None) -> "Predictor":
        """A shipped-layout folder (``model.safetensors`` + ``config.json`` recording the model, preprocessing,
        classes and post-processing)."""
        import json

        from aemia.errors import CheckpointError
        from aemia.nets.checkpoint import load_weights
        from aemia.nets.registry import model_from_config

        folder = Path(folder)
        try:
            cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            model = model_from_config(cfg["model"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(folder / "config.json", f"not a shipped model config ({exc})") from None
        load_weights(model, folder / "model", strict=True)
        model = model.to(resolve_device(device)).eval()
        classes = {int(k): str(v) for k, v in cfg.get("classes", {}).items()} or None
        return cls(model=model, spatial_dims=model.spatial_dims, patch=cfg.get("patch"),
                   normaliser=cfg.get("normaliser", "none"), task=cfg.get("task", "segmentation"),
                   spacing=cfg.get("spacing"), classes=classes, tta=tta, amp=amp or "none",
                   postprocess=cfg.get("postprocess"))

    @classmethod
    def from_run(cls, run_dir: str | Path, prune: int | None = None, tta: bool | None = None,
                 device: str = "auto", amp: str | None = None) -> "Predictor":
        """A run folder's best checkpoint, or a shipped-layout model folder (:meth:`from_model_folder`)."""
        from aemia.data.catalog import get_dataset

        if is_model_folder(run_dir):
            if prune is not None:
                raise InputError(run_dir, "--prune needs a UNet++ run folder, not a shipped model")
            return cls.from_model_folder(run_dir, tta=bool(tta), device=device, amp=amp)
        run = RunFolder(run_dir)
        cfg = run.config()
        model, meta = load_checkpoint(run.checkpoint("best"), device=resolve_device(device))
        if prune is not None:
            if not hasattr(model, "prune"):
                raise InputError(run_dir, f"--prune needs a UNet++ run; this run's model is '{cfg.model}'")
            if not 1 <= prune <= model.depth:
                raise InputError(run_dir, f"--prune must be in 1..{model.depth} for this model, got {prune}")
            model = model.prune(prune)
        model.eval()
        try:
            modality = get_dataset(cfg.dataset).modality
        except InputError:
            modality = ""
        classes = None
        try:
            classes = class_names(cfg, get_dataset(cfg.dataset)) if meta.get("task", "segmentation") == "segmentation" else None
        except InputError:
            pass
        normaliser = cfg.normaliser or default_normaliser(modality, model.spatial_dims, cfg.window)
        return cls(model=model, spatial_dims=model.spatial_dims, size=cfg.size, patch=cfg.patch,
                   normaliser=normaliser, task=meta.get("task", "segmentation"), spacing=cfg.spacing, classes=classes,
                   tta=cfg.tta if tta is None else tta, amp=amp or "none", postprocess=cfg.postprocess)

    @property
    def in_channels(self) -> int:
        return int(self.model.in_channels)

    def prepare(self, image: Image) -> "Prepared":
        """The network input of ``image`` (checks, normalisation, 3D resampling to the training spacing or 2D
        resize / padding): the CPU work before the model, which :mod:`aemia.infer.pool` runs ahead (prefetch)."""
        arr = image.array
        if arr.shape[0] != self.in_channels:
            raise InputError(image.path, f"has {arr.shape[0]} channel(s); the model expects {self.in_channels}")
        if image.spatial_dims != self.spatial_dims:
            raise InputError(image.path, f"is {image.spatial_dims}D; the model is {self.spatial_dims}D")
        if not np.isfinite(arr).all():
            raise InputError(image.path, "contains NaN or infinite values")
        shape = tuple(int(s) for s in image.spatial_shape)
        if self.spatial_dims == 3:
            from aemia.data.transforms import resample_to_spacing

            vol = normalise(arr, self.normaliser)
            if self.spacing:  # to the training voxel size and back: works for any input spacing
                vol = resample_to_spacing(vol, image.spacing, self.spacing, order=1)
            return Prepared(torch.from_numpy(np.ascontiguousarray(vol))[None], shape)
        x = torch.from_numpy(np.ascontiguousarray(normalise(arr, self.normaliser)))[None]
        if self.size is not None:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        else:
            m = 2 ** getattr(self.model, "depth", 0)
            pad = [(-s) % m for s in shape]
            x = F.pad(x, (0, pad[1], 0, pad[0]), mode="replicate")
        return Prepared(x, shape)

    def forward(self, prepared: "Prepared") -> torch.Tensor:
        """The model on a prepared input: probabilities ``(1, K, *S')`` in the network's grid."""
        roi = (self.patch or [64, 64, 64]) if self.spatial_dims == 3 else None
        return predict_probs(self.model, prepared.x, roi_size=roi, tta=self.tta, amp=self.amp)

    def restore(self, prepared: "Prepared", probs: torch.Tensor) -> np.ndarray:
        """Network-grid probabilities back in the input grid: ``(K, *S)`` (segmentation) or ``(K,)``."""
        if self.spatial_dims == 3:
            from aemia.data.transforms import resize

            return resize(probs[0].cpu().numpy(), prepared.shape, order=1)
        if self.task == "classification":
            return probs[0].cpu().numpy()
        if self.size is not None:
            probs = F.interpolate(probs, size=prepared.shape, mode="bilinear", align_corners=False)
        else:
            probs = probs[..., : prepared.shape[0], : prepared.shape[1]]
        return probs[0].cpu().numpy()

    def probabilities(self, image: Image) -> np.ndarray:
        """Class probabilities (K, *S) in the input's grid (segmentation) or (K,) (classification)."""
        prepared = self.prepare(image)
        return self.restore(prepared, self.forward(prepared))

    def predict(self, image: Image) -> np.ndarray:
        """Label map in the input grid (segmentation) or class probabilities (classification)."""
        if self.task == "classification":
            return self.probabilities(image)
        return self.segment(image)[0]

    def label_map(self, probs: np.ndarray, spacing: Any) -> np.ndarray:
        """The label map of ``(K, *S)`` probabilities in the input grid, with the model's post-processing
        (:func:`aemia.infer.lesions.liver_tumor_labels` for ``kind: liver_tumor``: an optional tumour
        probability threshold, the largest liver component, small, unconfident and rim tumours dropped)."""
        pp = self.postprocess or {}
        if pp.get("kind") == "liver_tumor":
            from aemia.infer.lesions import liver_tumor_labels

            threshold = pp.get("tumor_threshold")
            return liver_tumor_labels(probs, spacing, None if threshold is None else float(threshold),
                                      float(pp.get("min_tumor_mm3", 0.0)), organ=int(pp.get("organ", 1)),
                                      tumor=int(pp.get("tumor", 2)),
                                      min_confidence=float(pp.get("min_confidence", 0.0)),
                                      min_depth_mm=float(pp.get("min_depth_mm", 0.0)))
        return labels_from_probs(probs)

    def segment(self, image: Image) -> tuple[np.ndarray, np.ndarray]:
        """(label map after the model's post-processing, class probabilities (K, *S)) in the input grid."""
        probs = self.probabilities(image)
        return self.label_map(probs, image.spacing), probs

    def describe(self) -> dict[str, Any]:
        return {"spatial_dims": self.spatial_dims, "size": self.size, "patch": self.patch, "tta": self.tta,
                "parameters": sum(p.numel() for p in self.model.parameters())}
