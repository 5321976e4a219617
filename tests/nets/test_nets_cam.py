"""The one CAM computation (:mod:`aemia.nets.cam`, Zhou et al. CVPR 2016): the weighted sum of the last feature
maps, its link to the logits, the positive-maximum normalisation in both variants, and the class choice."""

from __future__ import annotations

import pytest
import torch

from aemia.nets import create_model
from aemia.nets.cam import cam_from_maps, classifier_cam, normalise_cams, supports_cam


def _classifier(dims: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("resnet", dims, 3, 4, features=(4, 6), blocks=(1, 1)).eval()


@pytest.mark.parametrize("dims", [2, 3])
def test_cam_mean_plus_bias_is_the_logit(dims: int) -> None:
    model = _classifier(dims)
    x = torch.rand((2, 3) + (8,) * dims)
    with torch.no_grad():
        cam, logits = classifier_cam(model, x)
        torch.testing.assert_close(logits, model(x))
        raw = cam_from_maps(model.forward_features(x)["bottleneck"], model.fc.weight)
    assert raw.shape == (2, 4) + (4,) * dims and cam.shape == (2, 1) + (4,) * dims
    picked = logits.argmax(1)
    for i in range(2):
        torch.testing.assert_close(cam[i, 0], raw[i, picked[i]])
        torch.testing.assert_close(cam[i, 0].mean() + model.fc.bias[picked[i]], logits[i, picked[i]])
    with torch.no_grad():
        chosen, _ = classifier_cam(model, x, [3, 0])
    torch.testing.assert_close(chosen[:, 0], torch.stack([raw[0, 3], raw[1, 0]]))


def test_known_values_and_both_normalisations() -> None:
    maps = torch.tensor([[[[1.0, -2.0]], [[0.5, 4.0]]]])  # (1, K=2, 1, 2)
    w = torch.tensor([[2.0, 0.0], [1.0, -1.0]])  # (C=2, K=2)
    raw = cam_from_maps(maps, w)
    torch.testing.assert_close(raw, torch.tensor([[[[2.0, -4.0]], [[0.5, -6.0]]]]))
    torch.testing.assert_close(normalise_cams(raw), torch.tensor([[[[1.0, 0.0]], [[1.0, 0.0]]]]))
    torch.testing.assert_close(normalise_cams(raw, keep_negative=True), torch.tensor([[[[1.0, -2.0]], [[1.0, -12.0]]]]))
    negative = -raw.abs() - 1
    assert torch.equal(normalise_cams(negative, keep_negative=True), torch.zeros_like(negative))
    with pytest.raises(ValueError, match="channels"):
        cam_from_maps(maps, torch.ones(2, 3))


def test_segmentation_networks_have_no_cam() -> None:
    unet = create_model("unet", 2, 1, 2, features=(4, 8))
    assert not supports_cam(unet) and supports_cam(_classifier())
    with pytest.raises(ValueError, match="no feature maps"):
        classifier_cam(unet, torch.rand(1, 1, 8, 8))
