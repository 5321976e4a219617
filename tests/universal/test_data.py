"""Ark's cyclic sampler: one data set per Trainer epoch, every image seen before any repeats, targets per TEMPLATE."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import aemia.universal.data as udata
from aemia.universal.data import CyclicSet, class_union


def test_cyclic_set_serves_one_data_set_per_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    fake = {"kvasir": (rng.random((7, 3, 32, 32), dtype=np.float32), (rng.random((7, 32, 32)) > 0.5).astype(np.uint8), None),
            "breastmnist": (rng.random((5, 3, 16, 16), dtype=np.float32), None, np.arange(5) % 2)}
    monkeypatch.setattr(udata, "split_arrays", lambda name, split: fake[name])
    names = ["kvasir", "breastmnist"]
    assert class_union(names) == ["polyp"]
    ds = CyclicSet(names, ["skin lesion", "polyp"], samples_per_turn=3)
    seen = [ds.source_index(e, i) for e in (1, 3) for i in range(3)]  # breastmnist's first two turns
    assert sorted(seen[:5]) == list(range(5))  # a full pass before any repeat
    ds.set_epoch(1)
    x, (masks, annotated, d, target), x2 = ds[0]
    assert x.shape == (3, 16, 16) and x2.shape == x.shape and not torch.equal(x, x2)
    assert int(d) == 1 and int(target) == ds.source_index(1, 0) % 2 and not annotated.any()
    ds.set_epoch(2)
    x, (masks, annotated, d, target), _ = ds[1]
    assert int(d) == 0 and int(target) == -1 and annotated.tolist() == [False, True] and masks.shape == (2, 32, 32)
    assert not masks[0].any()  # the class kvasir does not annotate stays empty (and unsupervised)
