"""Named augmentation recipes (``aemia train --augment``)."""

from __future__ import annotations

import pytest


def test_named_augmentation_presets_and_an_unknown_name_is_refused():
    from aemia.runs.config import RunConfig
    from aemia.train.augment import AUGMENT_PRESETS, AugmentConfig, augment_preset

    assert augment_preset("strong") == AugmentConfig()
    assert augment_preset("light") == AugmentConfig.light()
    assert augment_preset("none") is None
    assert RunConfig(dataset="kvasir").augment == "strong"
    with pytest.raises(ValueError, match="unknown augmentation 'heavy'; choose one of strong, light, none"):
        RunConfig(dataset="kvasir", augment="heavy")
    assert set(AUGMENT_PRESETS) == {"strong", "light", "none"}
