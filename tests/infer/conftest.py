"""Tiny run folders for the inference tests: a seeded small network, its checkpoint and a config.yaml."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from aemia.nets import create_model
from aemia.nets.checkpoint import save_checkpoint
from aemia.runs import RunConfig, RunFolder


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real shared data folder; tests using it are skipped when it is absent."""
    env = os.environ.get("AEMIA_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"
    if not (root / "README.md").is_file():
        pytest.skip("real data root not found (set AEMIA_DATA or place data in <repo>/../shared/data)")
    return root


@pytest.fixture
def make_run(tmp_path: Path) -> Callable[..., Path]:
    """``make_run(dims, model="unet", features=[4, 8], out=2, **config)`` → a run folder with a seeded model.

    With ``calibrate`` (a normalised network input (C, *S)) the last layer's class-1 bias is shifted so that
    about half of that input's voxels are predicted foreground: a random network then gives a non-trivial mask."""

    def build(dims: int, model: str = "unet", features: list[int] | None = None, out: int = 2, in_channels: int = 1,
              name: str = "run", calibrate: np.ndarray | None = None, **config: object) -> Path:
        torch.manual_seed(0)
        net = create_model(model, dims, in_channels, out, features=features or [4, 8]).eval()
        if calibrate is not None:
            with torch.no_grad():
                crop = (slice(None),) + tuple(slice(0, n - n % 8) for n in calibrate.shape[1:])  # whole UNet levels
                logits = net(torch.from_numpy(np.ascontiguousarray(calibrate[crop], dtype=np.float32))[None])
                last = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))][-1]
                last.bias[1] -= float((logits[0, 1] - logits[0, 0]).median())
        run = tmp_path / name
        (run / "checkpoints").mkdir(parents=True)
        save_checkpoint(net, run / "checkpoints" / "best", {"task": "segmentation"})
        RunFolder(run).save_config(RunConfig(dataset="no-such-dataset", model=model, features=features or [4, 8],
                                             **config))
        return run

    return build
