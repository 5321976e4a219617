"""Scoring 3D volumes for a query: patch-based (sliding-window) predictions of the project's 3D network, one
score per case by the same strategies as 2D (:mod:`aemia.active.strategies`; ACFT: Zhou et al. CVPR 2017 /
MedIA 2021, ``reference/METHODS.md`` §5.1).

Each volume is predicted whole by MONAI's Gaussian-blended sliding window over patches of the project's patch
size (:func:`aemia.nets.predict.predict_probs`, overlap 0.5 as nnU-Net), so every voxel's probabilities come from
the patches that cover it; the strategy's per-voxel score map is then reduced to one score per case
(:func:`aemia.active.strategies.reduce_voxel_scores`). What each strategy gets in 3D:

* ``entropy`` / ``margin`` / ``least-confidence``: the sliding-window probabilities ``(1, K, *S)``.
* ``acft`` (and ``acft-entropy`` / ``acft-diversity``): ``m = 8`` copies = the 8 combinations of flips of the three
  axes (exactly invertible, and the flips the 3D training augments with; 90° rotations are not used in 3D:
  working voxels need not be isotropic and the 3D recipe does not train on them), mapped back; α-majority,
  entropy and pairwise diversity per voxel as in 2D.
* ``bald``: 8 MC-dropout sliding-window passes (projects made with ``--dropout > 0``).
* ``fg-random``: the predicted label map of each volume (its foreground voxel count decides the group).
* ``coreset``: one embedding per volume, the mean of the network's bottleneck embedding over a grid of
  non-overlapping patches covering the volume (padded at the far edges by replication).
* ``random``: none (the pool size).

Default reduction in 3D: ``likely-foreground`` (the mean over the voxels whose predicted probability of not
being background is at least 0.1: the predicted organ and the voxels the model is unsure about; a volume with
none scores ``empty_score`` = 0), because a CT is mostly air and body far from any organ, whose near-zero
uncertainty would otherwise decide the mean; ``--reduce mean`` / ``foreground`` choose the others.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from aemia.active.strategies import (
    AUGMENTED_COPIES,
    EMBEDDINGS,
    LABEL_MAPS,
    MC_SAMPLES,
    POOL_SIZE,
    PROBABILITIES,
    EmbeddingPool,
    Strategy,
)
from aemia.errors import InputError

__all__ = ["N_FLIPS", "VOLUME_INPUTS", "default_reduce", "patch_embedding", "score_volumes"]

N_FLIPS = 8  # ACFT copies in 3D: every subset of the three axes flipped
N_MC = 8  # BALD passes


def _flip_axes(t: int) -> tuple[int, ...]:
    """Axes (of a (N, C, X, Y, Z) tensor) flipped by copy ``t`` in 0..7: bit a of ``t`` flips spatial axis a."""
    return tuple(2 + a for a in range(3) if t >> a & 1)


def _sliding_probs(model: Any, x: Any, patch: Sequence[int]) -> Any:
    from aemia.nets.predict import predict_probs

    return predict_probs(model, x, roi_size=list(patch), amp="none").float().cpu()


def _flipped_copies(model: Any, x: Any, patch: Sequence[int]) -> np.ndarray:
    import torch

    copies = []
    for t in range(N_FLIPS):
        axes = _flip_axes(t)
        p = _sliding_probs(model, torch.flip(x, axes) if axes else x, patch)
        copies.append(torch.flip(p, axes) if axes else p)
    return torch.stack(copies, dim=1).numpy()  # (1, m, K, *S)


def _mc_dropout(model: Any, x: Any, patch: Sequence[int]) -> np.ndarray:
    import torch
    from monai.inferers import sliding_window_inference

    from aemia.active.scoring import mc_dropout

    with mc_dropout(model):
        runs = [sliding_window_inference(x, roi_size=tuple(patch), sw_batch_size=2, overlap=0.5, mode="gaussian",
                                         predictor=lambda t: model(t).float().softmax(1)) for _ in range(N_MC)]
    return torch.stack(runs).cpu().numpy()  # (T, 1, K, *S)


def _label_map(model: Any, x: Any, patch: Sequence[int]) -> np.ndarray:
    import torch

    return _sliding_probs(model, x, patch).argmax(1).to(torch.uint8).numpy()[0]  # (*S): one volume's map


def patch_embedding(model: Any, x: Any, patch: Sequence[int]) -> np.ndarray:
    """``(1, D)``: the mean bottleneck embedding (``forward_features(...)["embedding"]``) over a grid of
    non-overlapping ``patch``-sized tiles covering the volume ``x`` ``(1, C, *S)`` (edge-replicated padding)."""
    import torch
    import torch.nn.functional as F

    if not hasattr(model, "forward_features"):
        raise InputError(None, f"core-set needs embeddings; {type(model).__name__} exposes none")
    pad = [(-s) % p for s, p in zip(x.shape[2:], patch)]
    xp = F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]), mode="replicate") if any(pad) else x
    starts = [range(0, s, p) for s, p in zip(xp.shape[2:], patch)]
    model.eval()
    with torch.no_grad():
        embs = [model.forward_features(xp[:, :, a:a + patch[0], b:b + patch[1], c:c + patch[2]])["embedding"]
                for a, b, c in itertools.product(*starts)]
    return torch.cat(embs).float().mean(0, keepdim=True).cpu().numpy()


# Strategy.needs → what one volume contributes; the whole-pool ones are joined as a list / an array.
VOLUME_INPUTS: dict[str, Callable[[Any, Any, Sequence[int]], Any]] = {
    PROBABILITIES: lambda model, x, patch: _sliding_probs(model, x, patch).numpy(),
    AUGMENTED_COPIES: _flipped_copies,
    MC_SAMPLES: _mc_dropout,
    LABEL_MAPS: _label_map,
    EMBEDDINGS: patch_embedding,
}


def default_reduce(strategy_name: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with ``reduce="likely-foreground"`` added for 3D (module docstring) when the strategy has a reduction
    and none was asked for."""
    from aemia.active.strategies import get_strategy

    if "reduce" in params or not hasattr(get_strategy(strategy_name), "reduce"):
        return dict(params)
    return {**params, "reduce": "likely-foreground"}


def score_volumes(
    model: Any,
    strategy: Strategy,
    n: int,
    load: Callable[[int], np.ndarray],
    patch: Sequence[int],
    *,
    n_labelled: int = 0,
    load_labelled: Callable[[int], np.ndarray] | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Scores of ``n`` pool volumes (higher = more worth annotating); ``load(i)`` returns volume ``i`` as float32
    ``(C, *S)`` at the working spacing, ``load_labelled`` likewise the labelled ones (core-set only).

    One volume at a time (memory stays at one volume's predictions); strategies that score each case on its own
    are scored per volume, fg-random and core-set get the whole pool's label maps / embeddings at once.
    """
    import torch

    from aemia.utils.progress import Bar

    if "segmentation" not in strategy.tasks:
        raise InputError(None, f"{strategy.name} is for {' and '.join(strategy.tasks)} projects, not 3D segmentation")
    if strategy.needs == POOL_SIZE:
        return strategy.score(n)
    if strategy.needs not in VOLUME_INPUTS:
        raise InputError(None, f"strategy {strategy.name} needs {strategy.needs!r}, which 3D scoring does not "
                               f"provide ({', '.join(sorted(VOLUME_INPUTS))})")
    compute = VOLUME_INPUTS[strategy.needs]
    whole_pool = strategy.needs in (LABEL_MAPS, EMBEDDINGS)

    def inputs(loader: Callable[[int], np.ndarray], i: int) -> Any:
        return compute(model, torch.from_numpy(np.ascontiguousarray(loader(i)))[None], patch)

    parts: list[Any] = []
    with Bar(f"scoring volumes ({strategy.name}, sliding window {'x'.join(map(str, patch))})", total=n,
             enabled=progress) as bar:
        for i in range(n):
            got = inputs(load, i)
            parts.append(got if whole_pool else strategy.score(got))
            bar.advance()
    if not whole_pool:
        return np.concatenate(parts) if parts else np.zeros(0)
    if strategy.needs == LABEL_MAPS:
        return strategy.score(parts)  # a list: the volumes' shapes differ
    lab = [inputs(load_labelled, i) for i in range(n_labelled if load_labelled is not None else 0)]
    return strategy.score(EmbeddingPool(np.concatenate(parts), np.concatenate(lab) if lab else None))
