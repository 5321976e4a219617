"""Scoring the unlabelled pool for a query (ACFT: Zhou et al. CVPR 2017 / MedIA 2021,
``reference/METHODS.md`` §5.1; the other strategies of :mod:`aemia.active.strategies`).

Scoring inputs per strategy (see :mod:`aemia.active.strategies`): ACFT uses ``m = 8`` copies of each image,
the 8 flips/rotations by 90° (exactly invertible, so segmentation maps are mapped back to the original
frame); BALD uses 8 MC-dropout passes (needs a project made with ``dropout > 0``); core-set uses the globally
average-pooled deepest encoder features (segmentation) or the classifier's pooled features.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from aemia.active.ledger import LedgerItem
from aemia.active.project import Project
from aemia.active.strategies import ACFT, BALD, CoreSet, EmbeddingPool, ForegroundRandom, RandomStrategy, Strategy
from aemia.errors import InputError

__all__ = [
    "MC_SAMPLES",
    "N_COPIES",
    "score_images",
    "score_pool",
]

N_COPIES = 8  # ACFT copies: the dihedral group of the square (4 rotations x optional flip)
MC_SAMPLES = 8  # BALD forward passes


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


def _embeddings(model: Any, x: Any) -> np.ndarray:
    import torch

    if not hasattr(model, "forward_features"):
        raise InputError(None, f"core-set needs embeddings; {type(model).__name__} exposes none")
    model.eval()
    with torch.no_grad():
        x = x.to(next(model.parameters()).device)
        return model.forward_features(x)["embedding"].float().cpu().numpy()


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
