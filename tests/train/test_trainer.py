"""Trainer: kill-and-resume reproduces an uninterrupted run; DDP on 2 CPU processes; checkpoint errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aemia.errors import CheckpointError
from aemia.nets import create_model, load_checkpoint, load_weights, save_checkpoint
from aemia.train.trainer import TrainConfig, lr_at

SCRIPT = Path(__file__).with_name("_train_script.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]


def _run(run: Path, epochs: int, resume: bool = False, kill_at: int = 0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(run), str(epochs), "resume" if resume else "fresh", str(kill_at)],
                          env=ENV, capture_output=True, text=True, timeout=300, check=not kill_at)


def test_killed_run_resumes_to_the_same_result(tmp_path: Path) -> None:
    full, killed = tmp_path / "full", tmp_path / "killed"
    _run(full, 4)
    # 16 samples / batch 4 = 4 steps per epoch: step 10 is mid-epoch 2, after the checkpoints of epochs 0 and 1
    proc = _run(killed, 4, kill_at=10)
    assert proc.returncode == -signal.SIGKILL
    partial = _log(killed)
    assert len(partial) == 2, "the kill lands mid-epoch 2"
    _run(killed, 4, resume=True)
    a, b = _log(full), _log(killed)
    assert [r["epoch"] for r in b] == [0, 1, 2, 3]
    for ra, rb in zip(a, b):
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=0, abs=1e-6)
        assert ra["val_dice"] == pytest.approx(rb["val_dice"], abs=1e-9)
    wa = load_checkpoint(full / "checkpoints" / "best")[0].state_dict()
    wb = load_checkpoint(killed / "checkpoints" / "best")[0].state_dict()
    assert all(torch.allclose(wa[k].float(), wb[k].float(), atol=1e-6) for k in wa)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_uses_ddp_on_two_cpu_processes(tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", str(SCRIPT), str(run), "2", "fresh", "0"]
    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    (sum0, steps0), (sum1, steps1) = [(run / f"rank{r}.txt").read_text().split() for r in (0, 1)]
    assert sum0 == sum1, "DDP replicas must hold identical weights"
    assert steps0 == steps1 == "4", "16 samples / 2 ranks / batch 4 = 2 steps per epoch, 2 epochs"
    assert len(_log(run)) == 2  # only rank 0 writes
    assert (run / "checkpoints" / "best.safetensors").exists()


def test_lr_schedules_are_closed_form() -> None:
    cfg = TrainConfig(lr=1.0, schedule="cosine", warmup=0.0)
    assert lr_at(cfg, 0, 100) == 1.0 and lr_at(cfg, 50, 100) == pytest.approx(0.5) and lr_at(cfg, 100, 100) == pytest.approx(0)
    assert lr_at(TrainConfig(lr=1.0, schedule="poly", warmup=0.0), 50, 100) == pytest.approx(0.5**0.9)
    # linear warm-up over the first 10% of 100 steps, then cosine over the remaining 90
    warm = TrainConfig(lr=1.0, schedule="cosine", warmup=0.1)
    assert [lr_at(warm, s, 100) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert lr_at(warm, 10, 100) == 1.0 and lr_at(warm, 55, 100) == pytest.approx(0.5) and lr_at(warm, 100, 100) == pytest.approx(0)
    with pytest.raises(ValueError, match="warmup"):
        TrainConfig(warmup=1.0)
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="lion")


def test_checkpoint_round_trip_and_key_report(tmp_path: Path) -> None:
    model = create_model("unet", 2, 1, 2, features=(4, 8))
    save_checkpoint(model, tmp_path / "m", {"note": 1})
    clone, meta = load_checkpoint(tmp_path / "m")
    assert meta["note"] == 1 and all(torch.equal(clone.state_dict()[k], v) for k, v in model.state_dict().items())
    bigger = create_model("unet", 2, 1, 2, features=(4, 8, 16))
    with pytest.raises(CheckpointError, match="missing"):
        load_weights(bigger, tmp_path / "m", strict=True)
    report = load_weights(bigger, tmp_path / "m", strict=False)
    assert report.loaded and report.missing and not report.unexpected
    other = create_model("resnet", 2, 1, 2, features=(4, 8))
    with pytest.raises(CheckpointError, match="refusing to train from scratch"):
        load_weights(other, tmp_path / "m", strict=False)


def test_corrupt_checkpoint_is_a_one_line_error(tmp_path: Path) -> None:
    model = create_model("unet", 2, 1, 2, features=(4, 8))
    save_checkpoint(model, tmp_path / "m")
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "m.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "m")


def test_min_steps_raises_the_epochs_and_thins_validation(tmp_path: Path) -> None:
    """Small labelled sets train by steps (training_stability.json: Kvasir 10% underfits in 600 steps)."""
    import numpy as np

    from aemia.train.data import ArrayDataset
    from aemia.train.trainer import MAX_VALIDATIONS, Trainer

    base = TrainConfig(epochs=5, min_steps=1000)
    raised = base.with_min_steps(10)  # 10 steps per epoch -> 100 epochs, validation every 100 // 40 = 2 epochs
    assert raised.epochs == 100 and raised.val_every == 100 // MAX_VALIDATIONS and raised.min_steps == 1000
    assert raised.with_min_steps(10) == raised  # applying it again changes nothing
    assert base.with_min_steps(7).epochs == 143  # ceil(1000 / 7): never fewer steps than asked
    met = TrainConfig(epochs=200, min_steps=1000)
    assert met.with_min_steps(10) is met and TrainConfig(epochs=5).with_min_steps(1) == TrainConfig(epochs=5)
    with pytest.raises(ValueError, match="min_steps"):
        TrainConfig(min_steps=-1)
    # the trainer applies it: 12 images at batch 4 = 3 steps per epoch -> 34 epochs for 100 steps
    rng = np.random.default_rng(0)
    x = rng.random((12, 1, 16, 16), dtype=np.float32)
    y = (x[:, 0] > 0.5).astype(np.int64)
    model = create_model("unet", 2, 1, 2, features=[4, 4, 8, 8, 8])
    trainer = Trainer(model, ArrayDataset(x, y), None, TrainConfig(epochs=2, batch_size=4, min_steps=100, amp="none",
                                                                   progress=False), tmp_path)
    assert trainer.steps_per_epoch() == 3 and trainer.cfg.epochs == 34
