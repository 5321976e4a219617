"""Scoring dispatches on what a strategy declares it needs (``Strategy.needs``), not on its class."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from aemia.active.scoring import INPUTS, N_COPIES, embeddings, score_images
from aemia.active.strategies import (
    AUGMENTED_COPIES,
    EMBEDDINGS,
    MC_SAMPLES,
    NEEDS,
    POOL_SIZE,
    PROBABILITIES,
    EmbeddingPool,
    Strategy,
    available_strategies,
    get_strategy,
)
from aemia.errors import InputError
from aemia.nets import create_model

torch.set_num_threads(1)


@dataclass(frozen=True)
class _Recorder(Strategy):
    """A strategy the scoring layer has never heard of: returns what it was given, summarised."""

    name: ClassVar[str] = "recorder"
    needs: ClassVar[str] = PROBABILITIES
    seen: list = None  # type: ignore[assignment]

    def score(self, predictions: Any) -> np.ndarray:
        self.seen.append(predictions)
        n = len(predictions.pool) if isinstance(predictions, EmbeddingPool) else np.shape(predictions)[
            1 if self.needs == MC_SAMPLES else 0]
        return np.arange(n, dtype=float)


def _model(dropout: float = 0.0) -> Any:
    torch.manual_seed(0)
    return create_model("resnet", 2, 1, 3, features=[4, 8], dropout=dropout).eval()


def _load(x: np.ndarray) -> Any:
    return lambda a, b: x[a:b]


def test_every_builtin_strategy_declares_a_need_the_scoring_layer_provides() -> None:
    for name in available_strategies():
        needs = get_strategy(name).needs
        assert needs in NEEDS and (needs == POOL_SIZE or needs in INPUTS), name


@pytest.mark.parametrize("needs,shape", [(PROBABILITIES, (5, 3)), (AUGMENTED_COPIES, (5, N_COPIES, 3)),
                                         (EMBEDDINGS, None)])
def test_a_new_strategy_gets_its_declared_input(needs: str, shape: tuple[int, ...] | None) -> None:
    cls = type("R", (_Recorder,), {"needs": needs, "__annotations__": {}})
    strat = dataclass(frozen=True)(cls)(seen=[])
    x = np.random.default_rng(0).random((5, 1, 16, 16)).astype(np.float32)
    model = _model()
    scores = score_images(model, strat, "classification", 5, _load(x), n_labelled=2, load_labelled=_load(x[:2]),
                          batch_size=2, progress=False)
    assert scores.shape == (5,)
    if needs == EMBEDDINGS:  # whole pool at once, with the labelled cases' embeddings
        (pool,) = strat.seen
        assert isinstance(pool, EmbeddingPool) and pool.pool.shape[0] == 5 and pool.labelled.shape[0] == 2
        assert np.allclose(pool.pool, embeddings(model, torch.from_numpy(x)), atol=1e-5)
    else:  # per batch of 2: 2 + 2 + 1 cases
        assert [s.shape for s in strat.seen] == [(2, *shape[1:]), (2, *shape[1:]), (1, *shape[1:])]


def test_needs_and_tasks_are_checked() -> None:
    x = np.zeros((2, 1, 16, 16), np.float32)
    with pytest.raises(InputError, match="segmentation"):
        score_images(_model(), get_strategy("fg-random"), "classification", 2, _load(x), progress=False)
    with pytest.raises(InputError, match="dropout"):
        score_images(_model(), get_strategy("bald"), "classification", 2, _load(x), progress=False)
    strange = dataclass(frozen=True)(type("S", (_Recorder,), {"needs": "telepathy", "__annotations__": {}}))(seen=[])
    with pytest.raises(InputError, match="telepathy"):
        score_images(_model(), strange, "classification", 2, _load(x), progress=False)
    mc = score_images(_model(dropout=0.3), get_strategy("bald"), "classification", 2, _load(x), progress=False)
    assert mc.shape == (2,) and np.isfinite(mc).all()
