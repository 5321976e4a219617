"""Models Genesis restoration pretraining and fine-tuning from it (issue 3 items 3 and 5)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from aemia.cli.main import main
from aemia.errors import CheckpointError
from aemia.nets import create_model, load_weights, save_checkpoint
from aemia.pretrain.genesis import GenesisTransform
from aemia.pretrain.restore import PretrainConfig, RestorationDataset, pretrain
from aemia.train.trainer import TrainConfig



def test_restoration_pairs_are_reproducible_and_differ_per_epoch() -> None:
    pool = np.random.default_rng(0).random((4, 1, 32, 32)).astype(np.float32)
    ds = RestorationDataset(pool, GenesisTransform(), seed=3)
    a, b = ds[1], ds[1]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    ds.set_epoch(1)
    assert not torch.equal(ds[1][0], a[0])
    assert a[0].shape == a[1].shape == (1, 32, 32)


@pytest.mark.needs_data("kvasir_seg_256")
def test_restoration_loss_falls_on_real_images_and_fine_tuning_loads_it(tmp_path: Path, capsys) -> None:
    cfg = PretrainConfig(data="kvasir", dims=2, preset="tiny", size=[32, 32], seed=0,
                         train=TrainConfig(epochs=4, batch_size=16, lr=3e-3, optimizer="adam", schedule="constant",
                                           deep_supervision=False, progress=False))
    summary = pretrain(cfg, tmp_path / "gen", progress=False)
    log = [json.loads(line) for line in (tmp_path / "gen" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    assert summary["best_val_mse"] < summary["first_val_mse"]
    assert (tmp_path / "gen" / "figures" / "restoration.png").is_file()
    rc = main(["train", "--dataset", "kvasir", "--init", str(tmp_path / "gen"), "--preset", "tiny", "--size", "32",
               "--epochs", "1", "--label-fraction", "0.02", "--run", str(tmp_path / "ft")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "loaded" in out and "skipped (shape differs" in out and "heads." in out
    # a checkpoint of another architecture: nothing matches → refuse instead of training from scratch
    other = tmp_path / "other"
    save_checkpoint(create_model("resnet", 2, 3, 2, features=(4, 8)), other / "checkpoints" / "best")
    rc = main(["train", "--dataset", "kvasir", "--init", str(other), "--preset", "tiny", "--size", "32",
               "--epochs", "1", "--label-fraction", "0.02", "--run", str(tmp_path / "ft2")])
    assert rc == 2
    assert "refusing to train from scratch" in capsys.readouterr().err
    assert not (tmp_path / "ft2" / "checkpoints").exists()


def test_checkpoint_saved_from_ddp_with_module_prefix_loads(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    src = create_model("unetpp", 2, 1, 1, features=(4, 8, 16))
    save_file({f"module.{k}": v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "m.safetensors"))
    dst = create_model("unetpp", 2, 1, 1, features=(4, 8, 16))
    report = load_weights(dst, tmp_path / "m", strict=True)
    assert not report.missing and all(torch.equal(dst.state_dict()[k], v) for k, v in src.state_dict().items())
    wrong = create_model("unetpp", 2, 1, 1, features=(8, 16, 32))
    with pytest.raises(CheckpointError, match="shape-mismatched"):
        load_weights(wrong, tmp_path / "m", strict=True)


def test_pretrain_cli_help_and_bad_size(tmp_path: Path, capsys) -> None:
    assert main(["pretrain", "genesis", "--help"]) == 0
    assert "Example: aemia pretrain genesis" in capsys.readouterr().out.replace("\n", " ")
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    from PIL import Image as PILImage

    for i in range(3):
        PILImage.fromarray((np.random.default_rng(i).random((40, 40)) * 255).astype(np.uint8)).save(img_dir / f"{i}.png")
    assert main(["pretrain", "genesis", "--data", str(img_dir), "--dims", "2", "--size", "32,32,16",
                 "--out", str(tmp_path / "o")]) == 2
    assert "--size needs 2 values" in capsys.readouterr().err
    assert main(["pretrain", "genesis", "--data", str(img_dir), "--dims", "2", "--size", "32,32", "--epochs", "1",
                 "--preset", "tiny", "--patches-per-image", "4", "--optimizer", "adam", "--out", str(tmp_path / "o")]) == 0
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["patches"]["shape"] == [1, 32, 32]
