"""Class activation maps from feature maps and classifier weights: the one home of the CAM computation.

Zhou, Khosla, Lapedriza, Oliva, Torralba, "Learning Deep Features for Discriminative Localization", CVPR 2016.
For a network ending in global average pooling and one linear layer (weights w, (C, K)), the map of class c is::

    CAM_c(u) = Σ_k w_{c,k} f_k(u)

with f the last feature maps (``forward_features(x)["bottleneck"]``), so that logit_c = mean_u CAM_c(u) + b_c.
Only tensors are needed, so both weak localisation (:mod:`aemia.weak.cam`) and MB-DCNN's CAM-guided segmentation
(:mod:`aemia.semisup.mbdcnn_nets`) build on this module.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["cam_from_maps", "classifier_cam", "normalise_cams", "supports_cam"]


def cam_from_maps(maps: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Raw CAMs Σ_k w_{c,k} f_k: ``maps`` (N, K, *S) and ``weights`` (C, K) → (N, C, *S)."""
    if maps.shape[1] != weights.shape[1]:
        raise ValueError(f"maps have {maps.shape[1]} channels but the weights expect {weights.shape[1]}")
    return torch.einsum("nk...,ck->nc...", maps, weights.to(maps.dtype))


def normalise_cams(cams: torch.Tensor, spatial_dims: int = 2, keep_negative: bool = False) -> torch.Tensor:
    """Each map (over its trailing ``spatial_dims`` dims) divided by its positive maximum; a map without a
    positive value becomes all zeros. Negative values are set to 0 first unless ``keep_negative`` (MB-DCNN
    feeds the divided map with its negative part)."""
    pos = cams.clamp(min=0)
    peak = pos.flatten(-spatial_dims).amax(-1)
    peak = peak.reshape(*peak.shape, *([1] * spatial_dims))
    src = cams if keep_negative else pos
    return torch.where(peak > 0, src / peak.clamp(min=torch.finfo(pos.dtype).tiny), torch.zeros_like(src))


def supports_cam(model: nn.Module) -> bool:
    """True for networks with ``forward_features`` (a ``bottleneck`` map) and a linear ``fc`` head on its pooled
    ``embedding``."""
    return callable(getattr(model, "forward_features", None)) and isinstance(getattr(model, "fc", None), nn.Linear)


def classifier_cam(model: nn.Module, x: torch.Tensor,
                   classes: torch.Tensor | Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw CAM of one class per image at the feature-map resolution, and the logits.

    ``classes`` (N,) picks each image's class; ``None`` = its predicted class. Returns (cam (N, 1, *S') float32,
    logits (N, C) float32). Runs the model as it is (call ``eval()`` first for inference statistics)."""
    if not supports_cam(model):
        raise ValueError(f"{type(model).__name__} has no feature maps + linear fc head: no class activation maps")
    feats = model.forward_features(x)  # type: ignore[operator]
    maps = feats["bottleneck"].float()
    fc: nn.Linear = model.fc  # type: ignore[assignment]
    logits = fc(feats["embedding"].float())  # the pooled vector the network's own linear layer reads
    cls = logits.argmax(1) if classes is None else torch.as_tensor(classes, device=logits.device).long()
    raw = cam_from_maps(maps, fc.weight.float())
    return raw[torch.arange(raw.shape[0], device=raw.device), cls][:, None], logits
