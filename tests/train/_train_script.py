"""Small deterministic training job used by the trainer tests (run as a subprocess or under torchrun)."""

from __future__ import annotations

import sys

import numpy as np
import torch

from aemia.nets import create_model
from aemia.train import ArrayDataset, AugmentConfig, Hook, TrainConfig, Trainer


def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    n = 24
    images = rng.normal(size=(n, 1, 32, 32)).astype(np.float32)
    labels = np.zeros((n, 32, 32), np.uint8)
    for i in range(n):
        r, c = rng.integers(6, 26, 2)
        labels[i, r - 5 : r + 5, c - 5 : c + 5] = 1
        images[i, 0][labels[i] == 1] += 1.5
    return images, labels


class KillAt(Hook):
    """SIGKILLs its own process right after optimiser step ``step``: a deterministic mid-epoch kill."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_batch_end(self, trainer: Trainer, step: int, loss: float) -> None:
        if trainer.global_step == self.step:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGKILL)


def main(run_dir: str, epochs: int, resume: bool, kill_at: int) -> None:
    torch.manual_seed(0)
    images, labels = data()
    model = create_model("unetpp", 2, 1, 2, features=(4, 8, 16), deep_supervision=True)
    trainer = Trainer(
        model,
        ArrayDataset(images[:16], labels[:16], augment=AugmentConfig(), seed=0),
        ArrayDataset(images[16:], labels[16:]),
        TrainConfig(epochs=epochs, batch_size=4, lr=3e-3, progress=False, amp="none"),
        run_dir,
        hooks=[KillAt(kill_at)] if kill_at else [],
    )
    trainer.fit(resume=resume)
    if trainer.world_size > 1:
        flat = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
        from pathlib import Path

        Path(run_dir, f"rank{trainer.rank}.txt").write_text(f"{float(flat.double().sum()):.10f} {trainer.global_step}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3] == "resume", int(sys.argv[4]))
