"""Diagnostics for transfer from pretraining: how many feature directions does each encoder level really use?

The *effective rank* of a feature matrix F (samples x channels, centred) is ``exp(H(p))`` with ``p`` its singular
values normalised to sum 1 and ``H`` the Shannon entropy (Roy & Vetterli, "The effective rank: a measure of
effective dimensionality", EUSIPCO 2007): C for isotropic features over C channels, 1 for features on one line.
A pretrained encoder whose shallow levels have collapsed to a few directions gives fine-tuning fewer features
to build on; comparing the ranks at random initialisation, after pretraining and after fine-tuning shows whether
that happened and whether fine-tuning recovered them (``benchmarks/ssl_label_efficiency.py`` records them).

    ranks = encoder_feature_ranks(model, images)   # {"x0_0": 13.1, "x1_0": 15.0, ...} for UNet++ / U-Net
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def effective_rank(features: torch.Tensor | np.ndarray) -> float:
    """Effective rank of ``features`` (N, C): ``exp`` of the entropy of the normalised singular values of the
    centred matrix; 0.0 for all-constant features."""
    f = torch.as_tensor(features, dtype=torch.float64)
    if f.ndim != 2:
        raise ValueError(f"features must be (samples, channels), got shape {tuple(f.shape)}")
    s = torch.linalg.svdvals(f - f.mean(0, keepdim=True))
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(torch.exp(-(p * torch.log(p)).sum()))


def _encoder_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The encoder levels of our UNet++ (``nodes.x{i}_0``) or U-Net (``encoder.{i}``), shallow to deep."""
    net = getattr(model, "backbone", model)
    if hasattr(net, "nodes"):
        return {k: m for k, m in net.nodes.items() if k.endswith("_0")}
    if hasattr(net, "encoder"):
        return {f"encoder.{i}": m for i, m in enumerate(net.encoder)}
    raise ValueError(f"{type(net).__name__} has no UNet/UNet++ encoder to inspect")


@torch.no_grad()
def encoder_feature_ranks(model: nn.Module, images: torch.Tensor | np.ndarray, train_mode: bool = True,
                          max_positions: int = 200_000, seed: int = 0) -> dict[str, float]:
    """Effective rank of every encoder level's output on ``images`` (N, C, *S), all positions of all images
    as samples (a random subset of ``max_positions`` when there are more). ``train_mode`` uses batch statistics
    in batch norm (what fine-tuning starts from); the model's mode and running statistics are restored."""
    x = torch.as_tensor(np.asarray(images, dtype=np.float32) if isinstance(images, np.ndarray) else images).float()
    modules = _encoder_modules(model)
    outputs: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_hook(lambda _m, _i, o, k=k: outputs.__setitem__(k, o.detach().float()))
               for k, m in modules.items()]
    was_training = model.training
    buffers = {k: b.clone() for k, b in model.named_buffers()}  # batch norm running statistics stay untouched
    model.train(train_mode)
    try:
        model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
        for k, b in model.named_buffers():
            b.copy_(buffers[k])
    g = torch.Generator().manual_seed(seed)
    ranks = {}
    for k in modules:
        f = outputs[k].movedim(1, -1).reshape(-1, outputs[k].shape[1])
        if len(f) > max_positions:
            f = f[torch.randperm(len(f), generator=g)[:max_positions]]
        ranks[k] = round(effective_rank(f), 2)
    return ranks


__all__ = ["effective_rank", "encoder_feature_ranks"]
