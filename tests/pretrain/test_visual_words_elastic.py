"""Defect (issue 13): ``VisualWordsConfig.elastic_params`` was a ``@classmethod``, so it read the class defaults
(``elastic = False``) and ``aemia pretrain transvw --elastic`` trained without the deformation while
``visual_words.json`` recorded ``elastic: true``. The parameters now come from the instance, and a data set
built from them deforms its patches."""

from __future__ import annotations

import numpy as np
import torch

from aemia.pretrain import visual_words as V
from aemia.train.data import sample_rng


def test_elastic_params_come_from_the_instance() -> None:
    assert V.VisualWordsConfig().elastic_params() is None
    cfg = V.VisualWordsConfig(elastic=True, elastic_alpha=500.0, elastic_sigma=4.0)
    assert cfg.elastic_params() == (500.0, 4.0)
    assert V.config_dict(cfg)["elastic"] is True


def test_elastic_config_deforms_the_training_patches() -> None:
    cfg = V.VisualWordsConfig(elastic=True, elastic_alpha=991.0, elastic_sigma=4.0)
    patches = np.random.default_rng(5).random((3, 1, 24, 24)).astype(np.float32)
    words = V.VisualWords(patches, np.array([0, 1, 1]))
    ds = V.VisualWordDataset(words, np.arange(3), seed=7, elastic=cfg.elastic_params())
    for i in range(3):
        x, (target, _) = ds[i]
        assert torch.equal(target, torch.from_numpy(patches[i]))  # the target stays the undeformed patch
        rng = sample_rng(7, 0, i)
        deformed = V.elastic_deform(patches[i], rng, 991.0, 4.0)
        assert np.abs(deformed - patches[i]).mean() > 0.05  # the deformation really moves pixels
        expected = V.transvw_transform(deformed, rng, None)  # the same draws: deform, then one transformation
        np.testing.assert_array_equal(x.numpy(), expected)


def test_the_elastic_option_reaches_the_deformation() -> None:
    """``--elastic`` sets ``words={"elastic": True}``; the TransVW settings built from it turn the deformation on
    with the 2D preset's α (and it stays off without the option)."""
    from aemia.pretrain.restore import PretrainConfig, _words_config

    on = _words_config(PretrainConfig(data="unused", method="transvw", words={"elastic": True}))
    assert on.elastic_params() == (180.0, 8.0)
    assert _words_config(PretrainConfig(data="unused", method="transvw")).elastic_params() is None
