"""Scoring the unlabelled pool for a query (ACFT: Zhou et al. CVPR 2017 / MedIA 2021,
``reference/METHODS.md`` §5.1; the other strategies of :mod:`aemia.active.strategies`).

Scoring inputs per strategy (see :mod:`aemia.active.strategies`): ACFT uses ``m = 8`` copies of each image,
the 8 flips/rotations by 90° (exactly invertible, so segmentation maps are mapped back to the original
frame); BALD uses 8 MC-dropout passes (needs a project made with ``dropout > 0``); core-set uses the globally
average-pooled deepest encoder features (segmentation) or the classifier's pooled features.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from aemia.active.ledger import LedgerItem
from aemia.active.project import Project
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

__all__ = [
    "INPUTS",
    "N_COPIES",
    "N_MC",
    "embeddings",
    "mc_dropout",
    "predict_probabilities",
    "score_images",
    "score_pool",
]

N_COPIES = 8  # ACFT copies: the dihedral group of the square (4 rotations x optional flip)
N_MC = 8  # BALD forward passes


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


def predict_probabilities(model: Any, x: Any) -> Any:
    """Softmax probabilities of the batch ``x`` on the CPU in fp32 (no autocast)."""
    from aemia.nets.predict import predict_probs

    return predict_probs(model, x, amp="none").float().cpu()


def embeddings(model: Any, x: Any) -> np.ndarray:
    """``(N, C)`` float embeddings of the batch ``x`` (core-set's input): the network's
    ``forward_features(x)["embedding"]``, computed without gradients."""
    import torch

    if not hasattr(model, "forward_features"):
        raise InputError(None, f"core-set needs embeddings; {type(model).__name__} exposes none")
    model.eval()
    with torch.no_grad():
        x = x.to(next(model.parameters()).device)
        return model.forward_features(x)["embedding"].float().cpu().numpy()


@contextlib.contextmanager
def mc_dropout(model: Any) -> Iterator[None]:
    """The model in eval mode with its dropout layers sampling (MC dropout), gradients off; eval mode after.
    ``InputError`` when the network has no dropout (BALD needs it)."""
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
            yield
    finally:
        model.eval()


def _mc_dropout_probs(model: Any, x: Any, samples: int) -> Any:
    import torch

    with mc_dropout(model):
        x = x.to(next(model.parameters()).device)
        return torch.stack([_forward_softmax(model, x) for _ in range(samples)])


def _forward_softmax(model: Any, x: Any) -> Any:
    logits = model(x).float()
    return logits.softmax(1).cpu()


def _augmented_copies(model: Any, x: Any, seg: bool) -> np.ndarray:
    import torch

    copies = []
    for t in range(N_COPIES):
        p = predict_probabilities(model, _dihedral(x, t))
        copies.append(_dihedral_inverse(p, t) if seg else p)
    return torch.stack(copies, dim=1).numpy()


def _label_maps(model: Any, x: Any, seg: bool) -> np.ndarray:
    import torch

    return predict_probabilities(model, x).argmax(1).to(torch.uint8).numpy()


@dataclass(frozen=True)
class _Input:
    """How one kind of strategy input (``Strategy.needs``) is computed for a batch and joined over batches."""

    compute: Callable[[Any, Any, bool], np.ndarray]
    axis: int = 0  # the case axis, along which batches are concatenated


# Strategy.needs → its forward passes; POOL_SIZE needs none and EMBEDDINGS also embeds the labelled cases.
INPUTS: dict[str, _Input] = {
    PROBABILITIES: _Input(lambda model, x, seg: predict_probabilities(model, x).numpy()),
    AUGMENTED_COPIES: _Input(_augmented_copies),
    MC_SAMPLES: _Input(lambda model, x, seg: _mc_dropout_probs(model, x, N_MC).numpy(), axis=1),
    LABEL_MAPS: _Input(_label_maps),
    EMBEDDINGS: _Input(lambda model, x, seg: embeddings(model, x)),
}


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
    ``n_labelled`` labelled images (embeddings only). What is computed per image is the strategy's
    ``needs`` (:data:`INPUTS`). Images are read batch by batch (memory stays bounded); a strategy that scores
    each image independently is scored per batch (equal to whole-pool scores), the others (label maps,
    embeddings) get the whole pool's inputs at once.
    """
    import torch

    from aemia.utils.progress import Bar

    if task not in strategy.tasks:
        raise InputError(None, f"{strategy.name} is for {' and '.join(strategy.tasks)} projects, not {task}")
    if strategy.needs == POOL_SIZE:
        return strategy.score(n)
    if strategy.needs not in INPUTS:
        raise InputError(None, f"strategy {strategy.name} needs {strategy.needs!r}; scoring provides "
                               f"{', '.join(sorted(INPUTS))}")
    spec = INPUTS[strategy.needs]
    seg = task == "segmentation"
    whole_pool = strategy.needs in (LABEL_MAPS, EMBEDDINGS)
    parts: list[np.ndarray] = []

    def batch(loader: Callable[[int, int], np.ndarray], a: int, b: int) -> Any:
        return torch.from_numpy(np.ascontiguousarray(loader(a, b)))

    with Bar(f"scoring pool ({strategy.name})", total=n, enabled=progress) as bar:
        for start in range(0, n, batch_size):
            x = batch(load, start, min(start + batch_size, n))
            inputs = spec.compute(model, x, seg)
            parts.append(inputs if whole_pool else strategy.score(inputs))
            bar.advance(len(x))
    if not whole_pool:
        return np.concatenate(parts) if parts else np.zeros(0)
    pool = np.concatenate(parts, axis=spec.axis)
    if strategy.needs != EMBEDDINGS:
        return strategy.score(pool)
    lab = [spec.compute(model, batch(load_labelled, s, min(s + batch_size, n_labelled)), seg)
           for s in range(0, n_labelled if load_labelled is not None else 0, batch_size)]
    return strategy.score(EmbeddingPool(pool, np.concatenate(lab) if lab else None))


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
    (:func:`score_images` on the project's pictures, :func:`aemia.active.volume_scoring.score_volumes` on a 3D
    project's volumes; core-set also embeds the ``labelled`` cases)."""
    if project.is_3d:
        from aemia.active.volume_scoring import score_volumes

        def volume(seq: Sequence[LedgerItem]) -> Callable[[int], np.ndarray]:
            return lambda i: project.load_image(seq[i].image_path)

        return score_volumes(model, strategy, len(items), volume(items), project.config.patch or [48, 48, 48],
                             n_labelled=len(labelled), load_labelled=volume(labelled), progress=progress)

    def loader(seq: Sequence[LedgerItem]) -> Callable[[int, int], np.ndarray]:
        return lambda a, b: project.load_images([it.image_path for it in seq[a:b]])

    return score_images(model, strategy, project.config.task, len(items), loader(items),
                        n_labelled=len(labelled), load_labelled=loader(labelled), batch_size=batch_size,
                        progress=progress)
