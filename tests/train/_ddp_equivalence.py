"""Train the same small U-Net under torchrun (per-rank batch B) or in one process (batch 2B); write the weights.

Equivalence needs a loss that is a mean over samples (per-voxel cross-entropy; a batch-wide soft Dice is not) and
no batch statistics (instance norm; BatchNorm's per-rank statistics differ by design, SyncBatchNorm aside).
Augmentation is drawn per sample from (seed, epoch, index), so it is the same in both."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from aemia.nets import create_model
from aemia.train import ArrayDataset, AugmentConfig, TrainConfig, Trainer

sys.path.insert(0, str(Path(__file__).parent))
from _train_script import data  # noqa: E402


def main(run_dir: str, batch_size: int) -> None:
    torch.manual_seed(0)
    images, labels = data()
    model = create_model("unet", 2, 1, 2, features=(4, 8, 16), norm="instance")
    cfg = TrainConfig(epochs=2, batch_size=batch_size, lr=3e-3, progress=False, amp="none", loss="ce", ema=0.0,
                      deep_supervision=False, seed=0)
    trainer = Trainer(model, ArrayDataset(images[:16], labels[:16], augment=AugmentConfig(), seed=0),
                      ArrayDataset(images[16:], labels[16:]), cfg, run_dir)
    start = torch.cat([p.detach().flatten() for p in trainer.model.parameters()]).double().numpy()
    trainer.fit()
    np.save(Path(run_dir) / f"start_rank{trainer.rank}.npy", start)
    flat = torch.cat([p.detach().flatten() for p in trainer.model.parameters()]).double().numpy()
    np.save(Path(run_dir) / f"weights_rank{trainer.rank}.npy", flat)
    Path(run_dir, f"steps_rank{trainer.rank}.txt").write_text(str(trainer.global_step))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
