"""Predict chosen classes with a trained universal model (a run folder or a shipped name).

2D pictures are scaled to [0, 1] by bit depth, grey ones repeated to RGB, resized to the model's training size,
and each requested class's sigmoid map is resized back, thresholded at 0.5 and post-processed
(:mod:`aemia.universal.postprocess`). ``predict_folder`` writes ``<out>/<case>_<class>.png`` (0/255).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from aemia.data.io import case_id, read_image, write_png
from aemia.data.normalise import picture_scale
from aemia.errors import InputError
from aemia.universal.data import IN_CHANNELS
from aemia.universal.model import UniversalModel
from aemia.universal.postprocess import post_process


def check_classes(model: UniversalModel, classes: Sequence[str]) -> list[int]:
    """Channel of each requested class; InputError naming the model's classes otherwise."""
    missing = [c for c in classes if c not in model.class_names]
    if missing:
        raise InputError(None, f"the model has no class {', '.join(map(repr, missing))}; "
                               f"its classes: {', '.join(model.class_names)}")
    return [model.class_names.index(c) for c in classes]


@torch.no_grad()
def class_probabilities(model: UniversalModel, image: np.ndarray, size: int = 128) -> np.ndarray:
    """(K, H, W) sigmoid maps of a (C, H, W) image in [0, 1], at the image's own size."""
    if image.ndim != 3:
        raise InputError(None, f"expected a 2D picture (C, H, W), got shape {image.shape}")
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    if x.shape[1] == 1:
        x = x.repeat(1, IN_CHANNELS, 1, 1)
    if x.shape[1] != IN_CHANNELS:
        raise InputError(None, f"expected 1 or {IN_CHANNELS} channels, got {x.shape[1]}")
    h, w = x.shape[2:]
    logits = model(F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False))
    probs = torch.sigmoid(F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False))
    return probs[0].numpy()


def predict_masks(model: UniversalModel, image: np.ndarray, classes: Sequence[str], size: int = 128,
                  postprocess: bool = True) -> dict[str, np.ndarray]:
    """Boolean mask per requested class (threshold 0.5, then the published post-processing)."""
    channels = check_classes(model, classes)
    probs = class_probabilities(model, image, size)
    masks = {c: probs[k] > 0.5 for c, k in zip(classes, channels)}
    return post_process(masks) if postprocess else masks


def predict_folder(model: UniversalModel, inputs: Sequence[Path], out: Path, classes: Sequence[str],
                   size: int = 128, postprocess: bool = True) -> list[Path]:
    check_classes(model, classes)
    images = [read_image(p) for p in inputs]  # every input is read (and refused) before anything is written
    for img in images:
        if img.array.ndim != 3:
            raise InputError(img.path, "universal predict takes 2D pictures")
    written = []
    for path, img in zip(inputs, images):
        masks = predict_masks(model, picture_scale(img.array), classes, size, postprocess)
        for name, mask in masks.items():
            written.append(write_png(mask, out / f"{case_id(path)}_{name.replace(' ', '_')}.png", labels=True))
    return written


__all__ = ["check_classes", "class_probabilities", "predict_folder", "predict_masks"]
