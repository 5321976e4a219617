"""Predictor geometry (2D resize and back, 3D sliding window), flip TTA and UNet++ pruning on tiny networks."""

from __future__ import annotations

import itertools
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from torch import nn

from aemia.data.image import Image
from aemia.errors import InputError
from aemia.infer.batch import predict_path
from aemia.nets.predict import predict_probs
from aemia.infer.predictor import Predictor


@pytest.mark.parametrize("size", [32, None])
def test_2d_mask_has_the_input_size(make_run, tmp_path: Path, size: int | None) -> None:
    """Resized to the training size (or padded to whole UNet levels) and back: the mask is H x W of the input."""
    run = make_run(2, size=size, normaliser="picture")
    pic = np.random.default_rng(0).integers(0, 256, (37, 50), dtype=np.uint8)
    PILImage.fromarray(pic).save(tmp_path / "p.png")
    out = predict_path(run, tmp_path / "p.png", tmp_path / "pred", progress=False)
    assert np.array(PILImage.open(out[0])).shape == (37, 50)
    probs = Predictor.from_run(run, device="cpu").probabilities(Image(pic[None], (1.0, 1.0)))
    assert probs.shape == (2, 37, 50) and np.allclose(probs.sum(0), 1, atol=1e-5)


def test_2d_picture_is_scaled_by_bit_depth_not_guessed(make_run) -> None:
    """A dark 8-bit picture (max 1) is divided by 255 like any other (the old max() > 1.5 guess did not)."""
    pred = Predictor.from_run(make_run(2, normaliser="picture"), device="cpu")
    dark = np.random.default_rng(1).integers(0, 2, (1, 16, 16), dtype=np.uint8)
    as_float = Image((dark / 255.0).astype(np.float32), (1.0, 1.0))
    np.testing.assert_allclose(pred.probabilities(Image(dark, (1.0, 1.0))), pred.probabilities(as_float), atol=1e-6)


def test_3d_sliding_window_keeps_geometry(make_run, tmp_path: Path) -> None:
    """Volume larger than the patch, another spacing than the working one: same shape, affine and zooms."""
    run = make_run(3, normaliser="mri-percentile", patch=[8, 8, 8], spacing=[2.0, 2.0, 2.0])
    aff = np.array([[0.0, 0.0, 2.5, -20.0], [1.2, 0.0, 0.0, 4.0], [0.0, 0.9, 0.0, 7.0], [0, 0, 0, 1]])
    vol = np.random.default_rng(0).normal(size=(21, 17, 13)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, aff), str(tmp_path / "v.nii.gz"))
    out = nib.load(str(predict_path(run, tmp_path / "v.nii.gz", tmp_path / "pred", progress=False)[0]))
    assert out.shape == vol.shape
    np.testing.assert_allclose(out.affine, aff, atol=1e-5)
    np.testing.assert_allclose(out.header.get_zooms(), (1.2, 0.9, 2.5), rtol=1e-5)


def test_flip_tta_is_the_mean_of_flipped_predictions() -> None:
    torch.manual_seed(0)
    from aemia.nets import create_model

    model = create_model("unet", 3, 1, 2, features=[4, 8]).eval()
    x = torch.randn(1, 1, 8, 12, 8)
    flips = [f for r in range(4) for f in itertools.combinations((2, 3, 4), r)]
    want = torch.stack([torch.flip(predict_probs(model, torch.flip(x, f)), f) for f in flips]).mean(0)
    torch.testing.assert_close(predict_probs(model, x, tta=True), want, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(predict_probs(model, x, tta=True), predict_probs(model, x), atol=1e-4)


def test_flip_tta_changes_nothing_for_a_flip_equivariant_network() -> None:
    torch.manual_seed(0)
    pointwise = nn.Conv2d(1, 3, kernel_size=1)
    x = torch.randn(2, 1, 9, 7)
    torch.testing.assert_close(predict_probs(pointwise, x, tta=True), predict_probs(pointwise, x), atol=1e-6, rtol=1e-5)


def test_pruned_unetpp_equals_head_d(make_run) -> None:
    run = make_run(2, model="unetpp", features=[4, 8, 16], normaliser="none")
    full = Predictor.from_run(run, device="cpu").model
    img = Image(np.random.default_rng(0).normal(size=(1, 16, 16)).astype(np.float32), (1.0, 1.0))
    with torch.no_grad():
        heads = full.forward_heads(torch.from_numpy(img.array)[None])
    for d in (1, 2):
        got = Predictor.from_run(run, prune=d, device="cpu").probabilities(img)
        np.testing.assert_allclose(got, heads[d - 1].softmax(1)[0].numpy(), atol=1e-6)
    with pytest.raises(InputError, match="--prune must be in 1..2"):
        Predictor.from_run(run, prune=3, device="cpu")
