"""Issue 13 removed four unused functions; nothing in the package or its tests called them. This keeps them
from coming back as unused copies (the idea each duplicated lives elsewhere)."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize("module,name", [
    ("aemia.active.attention", "structuring_element"),  # open_mask builds its own element
    ("aemia.semisup.bootstrapping", "load_metrics"),
    ("aemia.data.transforms", "pad_to_multiple"),
    ("aemia.data.io", "is_image_path"),  # image_kind(path) is not None says the same
])
def test_dead_function_is_gone(module: str, name: str) -> None:
    assert not hasattr(importlib.import_module(module), name)
