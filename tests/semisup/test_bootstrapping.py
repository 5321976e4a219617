"""MB-DCNN (Xie et al., TMI 2020): rank and hybrid losses, the 4-channel classifier, CAM injection, 9-crop
averaging, guided augmentation, folds, and a tiny end-to-end run on real PH2 images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from aemia.nets.registry import create_model
from aemia.nets.cam_unet import CamGuidedUNet
from aemia.semisup.bootstrapping import MBDCNNConfig
from aemia.semisup.mbdcnn_data import GuidedArrayDataset, stratified_folds
from aemia.semisup.mbdcnn_nets import (
    HybridSegLoss,
    class_activation_map,
    expand_input_channels,
    init_from_coarse,
    nine_crop_boxes,
    nine_crop_probs,
    rank_loss,
    rank_top_k,
)
from aemia.train.data import AugmentConfig

needs_ph2 = pytest.mark.needs_data("ph2_dermoscopy")
SEG_FEATURES = [8, 8, 16, 32, 64]
CLS = dict(features=[8, 16, 32, 64], blocks=[1, 1, 1, 1])


# ------------------------------------------------------------------------------------------ losses


def test_rank_loss_on_a_hand_made_example() -> None:
    # foreground probabilities and truth of one 2x3 image, k = 2
    p = torch.tensor([[[0.9, 0.2, 0.6], [0.4, 0.7, 0.1]]])
    t = torch.tensor([[[1, 0, 1], [0, 1, 0]]])
    # background pixels 0.2, 0.4, 0.1 -> hard negatives (2 highest) 0.4, 0.2
    # lesion pixels 0.9, 0.6, 0.7     -> hard positives (2 lowest)  0.6, 0.7
    # pairs max(0, n - p + 0.3): (0.4,0.6) 0.1; (0.4,0.7) 0.0; (0.2,0.6) 0 (-0.1); (0.2,0.7) 0 (-0.2)
    expected = (0.1 + 0.0 + 0.0 + 0.0) / 4
    assert rank_loss(p, t, k=2).item() == pytest.approx(expected, abs=1e-6)
    # k = 1: the single pair (0.4, 0.6) -> 0.1
    assert rank_loss(p, t, k=1).item() == pytest.approx(0.1, abs=1e-6)


def test_rank_loss_skips_images_without_lesion_and_uses_all_pixels_of_a_small_class() -> None:
    p = torch.tensor([[[0.9, 0.2, 0.6], [0.4, 0.7, 0.1]], [[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]])
    t = torch.tensor([[[1, 0, 1], [0, 1, 0]], [[0, 0, 0], [0, 0, 0]]])  # image 2 has no lesion: skipped
    assert rank_loss(p, t, k=2).item() == pytest.approx(0.025, abs=1e-6)
    # one lesion pixel (0.5) and k = 3 background pixels 0.8, 0.3, 0.1 (highest of 0.8, 0.3, 0.1, 0.0, 0.0)
    p1 = torch.tensor([[[0.5, 0.8, 0.3], [0.1, 0.0, 0.0]]])
    t1 = torch.tensor([[[1, 0, 0], [0, 0, 0]]])
    expected = (max(0, 0.8 - 0.5 + 0.3) + max(0, 0.3 - 0.5 + 0.3) + max(0, 0.1 - 0.5 + 0.3)) / 3
    assert rank_loss(p1, t1, k=3).item() == pytest.approx(expected, abs=1e-6)


def test_rank_k_scales_with_the_pixel_count() -> None:
    assert rank_top_k(224, 224) == 30
    assert rank_top_k(128, 128) == round(30 * 128 * 128 / 224**2) == 10
    assert rank_top_k(8, 8) == 1


def test_dice_part_is_zero_for_a_perfect_prediction_and_the_hybrid_loss_penalises_errors() -> None:
    g = torch.Generator().manual_seed(0)
    y = (torch.rand(2, 32, 32, generator=g) > 0.6).long()
    perfect = torch.stack([(1 - y) * 40.0 - 20.0, y * 40.0 - 20.0], 1)
    loss = HybridSegLoss()
    assert loss.dice_part(perfect, y).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(perfect, y).item() == pytest.approx(0.0, abs=1e-6)  # margins of 1 - 0 > 0.3: no rank loss either
    wrong = -perfect
    assert loss.dice_part(wrong, y).item() == pytest.approx(1.0, abs=1e-4)
    assert loss.rank_part(wrong, y).item() == pytest.approx(1.3, abs=1e-4)  # p_neg 1, p_pos 0
    assert loss(wrong, y).item() == pytest.approx(1.0 + 0.05 * 1.3, abs=1e-4)


def test_hybrid_loss_gives_gradients() -> None:
    logits = torch.randn(2, 2, 16, 16, requires_grad=True)
    y = torch.zeros(2, 16, 16, dtype=torch.long)
    y[:, 4:10, 4:10] = 1
    HybridSegLoss()(logits, y).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------- networks


def test_classifier_expanded_to_four_channels_adds_the_mean_rgb_filter() -> None:
    torch.manual_seed(0)
    plain = create_model("resnet", 2, 3, 3, **CLS).eval()
    guided = expand_input_channels(plain).eval()
    w3, w4 = plain.stem[0].weight, guided.stem[0].weight
    assert tuple(w4.shape) == (w3.shape[0], 4, *w3.shape[2:])
    assert torch.equal(w4[:, :3], w3)
    assert torch.allclose(w4[:, 3], w3.mean(1), atol=1e-7)
    assert plain.stem[0].weight.shape[1] == 3 and plain.in_channels == 3  # the original is untouched
    assert guided.in_channels == 4 and guided.config["in_channels"] == 4
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert guided(torch.cat([x, torch.rand(2, 1, 32, 32)], 1)).shape == (2, 3)
        # an all-zero mask channel adds nothing: the expanded model then equals the 3-channel one
        assert torch.allclose(guided(torch.cat([x, torch.zeros(2, 1, 32, 32)], 1)), plain(x), atol=1e-5)
    with pytest.raises(ValueError, match="4 input channels"):
        guided(x)


def test_cam_is_the_predicted_class_map_divided_by_its_positive_max() -> None:
    torch.manual_seed(1)
    clf = create_model("resnet", 2, 4, 3, **CLS).eval()
    x = torch.rand(3, 4, 32, 32)
    cam, probs = class_activation_map(clf, x)
    with torch.no_grad():
        maps = clf.forward_features(x)["bottleneck"]
        logits = clf(x)
    assert torch.allclose(probs, logits.softmax(1), atol=1e-5)
    for i in range(3):
        raw = torch.einsum("k,khw->hw", clf.fc.weight[logits[i].argmax()], maps[i])
        assert torch.allclose(cam[i, 0], raw / raw.clamp_min(0).max(), atol=1e-5)
        assert cam[i].max().item() == pytest.approx(1.0, abs=1e-6)
    assert cam.shape == (3, 1, 4, 4)


def _enhanced(inject_init: str = "random") -> CamGuidedUNet:
    torch.manual_seed(2)
    net = create_model("unet-cam", 2, 3, 2, features=SEG_FEATURES, inject_init=inject_init)
    assert isinstance(net, CamGuidedUNet)
    return net


def test_enhanced_net_output_shape_and_the_cam_changes_the_output() -> None:
    for mode in ("random", "identity"):
        # train mode: batch statistics keep activations at unit scale (an untrained net's eval-mode running
        # statistics shrink them layer by layer, hiding any change at the bottleneck)
        net = _enhanced(mode).train()
        if mode == "identity":  # its CAM weights start near 0 (N(0, 0.01)); give them a visible value
            with torch.no_grad():
                net.inject.weight[:, -1] = 1.0
        image = torch.rand(2, 3, 32, 32)
        cam_a, cam_b = torch.zeros(2, 1, 32, 32), torch.rand(2, 1, 8, 8)  # any CAM resolution
        with torch.no_grad():
            out_a = net(torch.cat([image, cam_a], 1))
            out_b = net(torch.cat([image, torch.nn.functional.interpolate(cam_b, 32)], 1))
        assert out_a.shape == (2, 2, 32, 32)
        assert (out_a - out_b).abs().max() > 1e-3, mode
    net = _enhanced().train()
    x = torch.cat([torch.rand(2, 3, 32, 32), torch.rand(2, 1, 32, 32)], 1)
    y = torch.randint(0, 2, (2, 32, 32))
    HybridSegLoss()(net(x), y).backward()
    grad = net.inject.weight.grad
    assert grad is not None and grad[:, -1].abs().sum() > 0  # the CAM column of the 1x1 conv learns
    with pytest.raises(ValueError, match="CAM"):
        net(torch.rand(1, 3, 32, 32))


def test_enhanced_net_initialised_from_coarse_starts_as_coarse() -> None:
    torch.manual_seed(3)
    coarse = create_model("unet", 2, 3, 2, features=SEG_FEATURES).eval()
    net = _enhanced("identity").eval()
    missing = init_from_coarse(net, coarse)
    assert sorted(missing) == ["inject.bias", "inject.weight"]
    width = SEG_FEATURES[-1]
    assert net.inject.weight.shape == (width, width + 1, 1, 1)
    with torch.no_grad():
        net.inject.weight[:, -1] = 0.0  # identity injection with the CAM switched off
        image = torch.rand(2, 3, 32, 32)
        assert torch.allclose(net(torch.cat([image, torch.rand(2, 1, 32, 32)], 1)), coarse(image), atol=1e-5)
    with pytest.raises(ValueError, match="does not fit"):
        init_from_coarse(net, create_model("unet", 2, 3, 2, features=[8, 16, 32]))


# ------------------------------------------------------------------------------------- 9-crop TTA


class _Constant(nn.Module):
    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1)


def test_nine_crop_boxes_are_corners_edges_and_centre() -> None:
    boxes = nine_crop_boxes((128, 128), 0.875)
    assert len(set(boxes)) == 9
    assert all((h, w) == (112, 112) for _, _, h, w in boxes)
    assert {(t, lft) for t, lft, _, _ in boxes} == {(a, b) for a in (0, 8, 16) for b in (0, 8, 16)}


def test_nine_crop_probs_sum_to_one_and_equal_single_crop_for_a_constant_model() -> None:
    x = torch.rand(5, 4, 32, 32)
    const = _Constant([0.3, -1.0, 2.0])
    single = const(x).softmax(1)
    probs = nine_crop_probs(const, x)
    assert probs.shape == (5, 3)
    assert torch.allclose(probs, single, atol=1e-6)
    torch.manual_seed(4)
    clf = create_model("resnet", 2, 4, 3, **CLS)
    p = nine_crop_probs(clf, x, batch_size=2)
    assert torch.allclose(p.sum(1), torch.ones(5), atol=1e-5)
    assert (p >= 0).all()


# ------------------------------------------------------------------------------------ data, folds


def test_guide_channel_follows_the_image_augmentation_without_intensity_change() -> None:
    rng = np.random.default_rng(0)
    images = rng.random((6, 3, 16, 16), dtype=np.float32)
    guides = images[:, :1].copy()  # the guide is a copy of channel 0: it must stay equal to it
    ds = GuidedArrayDataset(images, guides, targets=np.arange(6), augment=AugmentConfig(intensity=0.0, gamma=0.0), seed=3)
    changed = 0
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(6):
            x, target = ds[i]
            assert x.shape == (4, 16, 16) and int(target) == i
            assert torch.equal(x[3], x[0])
            changed += int(not torch.equal(x[0], torch.from_numpy(images[i, 0])))
    assert changed > 0  # augmentation did happen
    labelled = GuidedArrayDataset(images, guides * 0.5, labels=(images[:, 0] > 0.5).astype(np.uint8),
                                  augment=AugmentConfig(intensity=0.1), seed=3)
    x, y = labelled[2]
    assert torch.equal(x[3], x[3].clamp(0, 0.5))  # guide values unscaled (no intensity change)
    assert y.shape == (16, 16)


def test_stratified_folds_partition_and_balance_classes() -> None:
    ids = [f"c{i:03d}" for i in range(50)]
    strata = [0] * 20 + [1] * 20 + [2] * 10
    folds = stratified_folds(ids, strata, 5, seed=0)
    assert sorted(c for f in folds for c in f) == sorted(ids)
    for f in folds:
        assert len(f) == 10
        counts = np.bincount([strata[ids.index(c)] for c in f], minlength=3)
        assert counts.tolist() == [4, 4, 2]
    assert folds == stratified_folds(ids, strata, 5, seed=0)
    assert folds != stratified_folds(ids, strata, 5, seed=1)


def test_config_checks() -> None:
    with pytest.raises(ValueError):
        MBDCNNConfig(size=100)
    with pytest.raises(ValueError):
        MBDCNNConfig(mask_cn_init="imagenet")
    paper = MBDCNNConfig.paper()
    assert (paper.lr_seg, paper.lr_cls, paper.lr_enh, paper.size) == (1e-4, 1e-4, 5e-5, 224)
    assert MBDCNNConfig.cpu().train_config("enhanced").schedule == "poly"


# ---------------------------------------------------------------------------------- end to end


@needs_ph2
def test_tiny_end_to_end_run_on_ph2(tmp_path: Path) -> None:
    from aemia.cli.main import main
    from aemia.semisup.bootstrapping import run_mbdcnn
    from aemia.semisup.mbdcnn_data import case_table

    ids, targets, classes, _ = case_table("ph2")
    by_class = {c: [i for i, t in zip(ids, targets) if t == c] for c in range(3)}
    chosen = [i for c in range(3) for i in by_class[c][:4]]  # 12 images, 4 per class
    test_ids = [by_class[0][0], by_class[1][0], by_class[2][0], by_class[2][1]]
    train_ids = [i for i in chosen if i not in test_ids]
    cfg = MBDCNNConfig(size=64, epochs_seg=1, epochs_cls=1, epochs_enh=1, batch_seg=4, batch_cls=4, batch_enh=4,
                       progress=False, n_bootstrap=50, figure_cases=2)
    run = tmp_path / "mb"
    metrics = run_mbdcnn(cfg, run, train_ids, test_ids)
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["n_train"] == 8 and saved["n_test"] == 4 and saved["positive_class"] == "melanoma"
    for arm in ("coarse", "enhanced"):
        j = saved["jaccard"][arm]
        assert 0.0 <= j["mean"] <= 1.0 and j["n"] == 4
    for arm in ("plain", "mask_guided", "mask_guided_9crop"):
        assert 0.0 <= saved["auc_melanoma"][arm]["mean"] <= 1.0
    assert len(metrics["per_case"]) == 4
    rows = (run / "per_case.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[0].startswith("id,target,class,jaccard_coarse,jaccard_enhanced")
    probs = np.array([[r[f"p_mask_guided_9crop_{c}"] for c in range(3)] for r in metrics["per_case"]])
    assert np.allclose(probs.sum(1), 1.0, atol=1e-4)
    assert (run / "figures" / "mbdcnn.png").stat().st_size > 0
    from aemia.runs.folder import RunFolder

    assert not (run / "config.json").exists() and RunFolder(run).config_dict()["method"] == "MB-DCNN"  # run contract
    for stage in ("coarse", "plain_cls", "mask_cn", "enhanced"):
        assert (run / stage / "checkpoints" / "best.safetensors").is_file()
        assert json.loads((run / stage / "checkpoints" / "best.json").read_text())["model"]["name"]
    assert json.loads((run / "mask_cn" / "checkpoints" / "best.json").read_text())["model"]["in_channels"] == 4
    # a second run into the same folder needs --resume; with it, finished stages are reused (same numbers)
    with pytest.raises(Exception, match="--resume"):
        run_mbdcnn(cfg, run, train_ids, test_ids)
    again = run_mbdcnn(cfg, run, train_ids, test_ids, resume=True)
    assert again["jaccard"] == saved["jaccard"]
    # the CLI refuses a data set without classes (exit 2, one line)
    assert main(["semi", "mbdcnn", "--dataset", "kvasir", "--run", str(tmp_path / "kv")]) == 2
