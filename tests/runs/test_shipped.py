"""The shipped-model lookup: complete folders are found, anything else is a one-line error naming what is there."""

from __future__ import annotations

import pytest

from aemia.errors import InputError
from aemia.runs import shipped


def test_a_complete_folder_is_listed_and_an_incomplete_one_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(shipped, "SHIPPED_DIR", tmp_path)
    good, half = tmp_path / "good", tmp_path / "half"
    good.mkdir()
    half.mkdir()
    for f in shipped.SHIPPED_FILES:
        (good / f).write_text("x")
    (half / "config.json").write_text("{}")
    assert shipped.shipped_models() == ["good"]
    assert shipped.shipped_model_dir("good") == good
    with pytest.raises(InputError, match=r"no shipped model 'half' \(missing model.safetensors, MODEL_CARD.md\); "
                                         r"shipped: good"):
        shipped.shipped_model_dir("half")
