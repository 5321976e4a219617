"""Effective rank (Roy & Vetterli 2007) and encoder feature ranks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aemia.nets import create_model
from aemia.pretrain.diagnostics import effective_rank, encoder_feature_ranks


def test_effective_rank_known_values() -> None:
    rng = np.random.default_rng(0)
    line = np.outer(rng.normal(size=500), rng.normal(size=8))  # every sample on one direction
    assert effective_rank(line) == pytest.approx(1.0, abs=1e-6)
    iso = rng.normal(size=(20_000, 8))
    assert 7.8 < effective_rank(iso) <= 8.0
    two = np.zeros((100, 4))
    two[:50, 0], two[50:, 1] = 1.0, 1.0  # two equal, orthogonal clusters after centring: one direction
    assert effective_rank(two) == pytest.approx(1.0, abs=1e-6)
    assert effective_rank(np.ones((10, 3))) == 0.0
    with pytest.raises(ValueError):
        effective_rank(np.zeros(5))


@pytest.mark.parametrize("name", ["unetpp", "unet"])
def test_encoder_feature_ranks_per_level_and_no_side_effects(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, 2, 3, 2, features=(8, 16, 32)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ranks = encoder_feature_ranks(model, torch.rand(4, 3, 32, 32))
    assert len(ranks) == 3 and all(0 < r <= c for r, c in zip(ranks.values(), (8, 16, 32)))
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
