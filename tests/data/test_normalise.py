"""The one normaliser per modality: known values, constant images, the default rule, and the copies agree."""

from __future__ import annotations

import numpy as np
import pytest

from aemia.active.pictures import to_network_input
from aemia.data.image import Image
from aemia.data.normalise import NORMALISERS, default_normaliser, normalise, parse
from aemia.pretrain.cubes import normalize_image

SPECS = ["ct-window:-175.0,250.0", "mri-percentile", "mri-percentile:0,100", "picture", "none"]


def test_known_values() -> None:
    hu = np.array([[-2000.0, -175.0, 37.5, 250.0, 3000.0]])
    np.testing.assert_allclose(normalise(hu, "ct-window:-175,250"), [[0, 0, 0.5, 1, 1]], atol=1e-7)
    np.testing.assert_allclose(normalise(np.array([[0, 51, 255]], np.uint8), "picture"), [[0, 0.2, 1]], atol=1e-7)
    np.testing.assert_allclose(normalise(np.array([[0, 65535]], np.uint16), "picture"), [[0, 1]])
    mri = np.stack([np.arange(10.0), 1000 * np.arange(10.0)])
    np.testing.assert_allclose(normalise(mri, "mri-percentile:0,100"), np.stack([np.arange(10) / 9] * 2), atol=1e-6)
    assert normalise(np.array([[0.3, 0.7]]), "picture").dtype == np.float32


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("value", [0, 7, 200])
def test_constant_images_are_finite_and_range_based_ones_map_to_zero(spec: str, value: int) -> None:
    const = np.full((2, 4, 5), value, dtype=np.uint8 if spec == "picture" else np.float32)
    out = normalise(const, spec)
    assert out.dtype == np.float32 and np.isfinite(out).all() and len(np.unique(out)) == 1
    if spec.startswith("mri-percentile"):
        assert (out == 0).all()


def test_copies_agree_with_the_registry_on_constant_and_random_images() -> None:
    rng = np.random.default_rng(0)
    for arr in (np.full((1, 8, 8), 9, np.int16), rng.integers(-50, 50, (1, 8, 8)).astype(np.int16)):
        mri = Image(arr.astype(np.float32)[:, :, :, None].repeat(3, axis=3), (1.0, 1.0, 1.0))
        np.testing.assert_array_equal(normalize_image(mri, "mri"), normalise(mri.array, "mri-percentile"))
        np.testing.assert_array_equal(normalize_image(Image(arr, (1.0, 1.0)), "image"), normalise(arr, "picture"))
        np.testing.assert_allclose(to_network_input(arr, 1, 8), normalise(arr, "picture"), atol=1e-6)
    pic = rng.integers(0, 256, (3, 8, 8), dtype=np.uint8)
    np.testing.assert_allclose(to_network_input(pic, 3, 8), normalise(pic, "picture"), atol=1e-6)
    assert (normalise(np.full((1, 8, 8), 9, np.int16), "picture") == 0).all()  # min-max of a constant: 0


def test_default_rule() -> None:
    assert default_normaliser("CT", 3) == "ct-window:-175.0,250.0"
    assert default_normaliser("CT", 3, [-21, 189]) == "ct-window:-21.0,189.0"
    assert default_normaliser("MRI (T1, T2)", 3) == "mri-percentile"
    assert default_normaliser("dermoscopy", 2) == default_normaliser("", 2) == "picture"
    assert default_normaliser("", 3) == "none"
    assert {s.partition(":")[0] for s in SPECS} == set(NORMALISERS)


@pytest.mark.parametrize("bad", ["hu", "ct-window", "ct-window:5,1", "ct-window:a,b"])
def test_bad_specs_are_value_errors(bad: str) -> None:
    with pytest.raises(ValueError, match="normaliser"):
        parse(bad)
