"""One training loop for every experiment; experiments differ by data, loss and hooks.

* Losses: Dice+CE (default), the UNet++ paper's 0.5·BCE + Dice, CE for classification; deep supervision sums
  the loss over every head with equal weights unless ``ds_weights`` says otherwise.
* Optimisers Adam / AdamW / SGD (Nesterov); learning rate set every step from a closed form (linear warm-up over
  ``warmup`` of the steps, then cosine, poly 0.9 or constant), so a resumed run sets exactly the same rates.
* Numerics: only the network's forward runs under autocast (bf16 covers convolutions and matmuls); the loss,
  its softmax/sigmoid and every metric run in fp32 outside it. A step whose loss or gradient is not finite
  never reaches the weights: it is skipped and counted (``skipped_steps`` in the log); after
  ``max_bad_steps`` in a row under autocast the run falls back to fp32 from the current weights (which the
  skipped steps never touched) and says so in one line. ``amp="auto"`` is bf16 only on CUDA or on a CPU
  with native bf16 (AVX512-BF16/AMX) and only if one batch's loss in bf16 agrees with fp32 (:func:`check_amp`).
* Weight averaging: with ``ema > 0`` validation, ``best`` checkpoints and the fitted model are an EMA of the
  weights (:mod:`aemia.train.averaging`); hooks that average weights themselves (mean teacher) turn it off.
* Determinism: data order from ``seed + epoch``, augmentation from ``[seed, epoch, index]``, torch RNG saved
  in every checkpoint. Killing a run and resuming with ``resume=True`` reproduces an uninterrupted run.
* Parameter groups: ``param_groups`` (dicts with ``params`` and optionally ``lr_scale``) replaces "all of the
  model's parameters"; each group steps at the scheduled rate × its ``lr_scale``.
* Checkpoints every epoch: ``checkpoints/last.safetensors`` holds the weights plus the optimiser state
  (``optim/…``), RNG (``rng/…``), the hooks' state (``hook/<i>/…``, :meth:`Hook.state_tensors`) and the
  optimisers the hooks own (``hookopt/<i>/<name>/…``, :meth:`Hook.optimizers`) in one
  atomically renamed file, its training state in the safetensors metadata; ``last.json`` / ``best.json``
  hold the model config. ``best`` is the best validation epoch.
* Distributed: under ``torchrun`` (WORLD_SIZE > 1) the model is wrapped in DistributedDataParallel (gloo on
  CPU, NCCL on CUDA); each rank takes an equal shard of every epoch's order; rank 0 writes.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Subset

from aemia.errors import CheckpointError
from aemia.evaluate.metrics import auc, mean_class_dice
from aemia.nets.predict import amp_dtype, autocast_context, memory_format, predict_probs, resolve_device
from aemia.nets.checkpoint import save_checkpoint, unwrap
from aemia.train.amp import as_float, check_amp
from aemia.train.averaging import WeightEMA
from aemia.train.data import EpochDataset
from aemia.train.hooks import EarlyStopping, Hook, JsonlLogger
from aemia.train.losses import DeepSupervisionLoss, get_loss
from aemia.train.optim_state import load_optimizer_state, optimizer_state_tensors
from aemia.utils.io import atomic_path, write_json_atomic
from aemia.utils.progress import EpochProgress

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "poly", "constant", "step")
TASKS = ("segmentation", "classification", "restoration")
AMP_MODES = ("auto", "none", "bf16", "fp16")
MAX_VALIDATIONS = 40  # validation passes when TrainConfig.with_min_steps raises the epochs
#: Names of what the Trainer writes into its run folder; :class:`aemia.runs.RunFolder` uses the same constants.
CHECKPOINTS_DIR = "checkpoints"
LOG_FILE = "log.jsonl"


@dataclass
class TrainConfig:
    """Training recipe. Defaults are a sensible small-data recipe; presets in :mod:`aemia.train.presets`."""

    epochs: int = 50
    batch_size: int = 8
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float | None = None  # None: the optimiser's default (AdamW 1e-2, else 0); 0 is a real 0
    momentum: float = 0.99  # SGD only (nnU-Net: 0.99, Nesterov)
    nesterov: bool = True  # SGD only (Models Genesis: plain momentum 0.9)
    schedule: str = "cosine"
    warmup: float = 0.05  # fraction of all steps with a linear learning-rate warm-up (not for "step")
    ema: float = 0.99  # decay of the evaluated weight average; 0 = evaluate the raw weights
    grad_clip: float = 0.0  # max global gradient norm; 0 = no clipping
    max_bad_steps: int = 3  # consecutive non-finite steps before falling back to fp32 (then: error)
    step_epochs: int = 40  # "step" schedule: multiply the rate by step_gamma every step_epochs (Genesis StepLR)
    step_gamma: float = 0.5
    loss: str = "dice_ce"
    deep_supervision: bool = True
    ds_weights: list[float] | None = None
    early_stopping: int = 0  # patience in epochs on validation metric; 0 = off
    seed: int = 0
    amp: str = "auto"  # none | bf16 | fp16 | auto
    channels_last: bool = True
    device: str = "auto"
    num_workers: int = 0
    val_every: int = 1
    min_steps: int = 0  # at least this many optimiser steps: epochs raised to fit (see with_min_steps)
    val_roi: list[int] | None = None  # sliding-window size for 3D validation (the training patch)
    progress: bool = True

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be at least 1")
        if not self.lr > 0:
            raise ValueError(f"learning rate must be > 0, got {self.lr}")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warmup must be a fraction in [0, 1), got {self.warmup}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema decay must be in [0, 1), got {self.ema}")
        if self.weight_decay is not None and self.weight_decay < 0:
            raise ValueError(f"weight decay must be >= 0, got {self.weight_decay}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if self.min_steps < 0 or self.val_every < 1:
            raise ValueError(f"min_steps must be >= 0 and val_every >= 1, got {self.min_steps} and {self.val_every}")

    def with_min_steps(self, steps_per_epoch: int, validations: int = MAX_VALIDATIONS) -> "TrainConfig":
        """This recipe with ``epochs`` raised to give at least ``min_steps`` optimiser steps at ``steps_per_epoch``.

        Measured on Kvasir (``training_stability.json``): a small labelled set trained for a fixed number of
        *epochs* gets few steps (10% of Kvasir, 50 epochs: 500) and underfits; the same 80 images trained for
        3,000 steps reach a far higher Dice. When epochs are raised, validation runs every
        ``epochs // validations`` epochs so it does not dominate the time. Unchanged when ``min_steps`` is 0 or
        already met; applying it twice changes nothing.
        """
        need = math.ceil(self.min_steps / max(int(steps_per_epoch), 1)) if self.min_steps > 0 else 0
        if need <= self.epochs:
            return self
        return replace(self, epochs=need, val_every=max(self.val_every, need // max(int(validations), 1)))


def lr_at(cfg: TrainConfig, step: int, total_steps: int, steps_per_epoch: int = 1) -> float:
    """Learning rate at optimiser step ``step`` (closed form, so a resumed run sets the same rates)."""
    if cfg.schedule == "step":
        return cfg.lr * cfg.step_gamma ** ((step // max(steps_per_epoch, 1)) // max(cfg.step_epochs, 1))
    warm = int(round(cfg.warmup * total_steps))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = min((step - warm) / max(total_steps - warm, 1), 1.0)
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * t))
    if cfg.schedule == "poly":
        return cfg.lr * (1.0 - t) ** 0.9
    return cfg.lr


def make_optimizer(cfg: TrainConfig, params: Any) -> torch.optim.Optimizer:
    wd = cfg.weight_decay
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=0.0 if wd is None else wd)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-2 if wd is None else wd)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                           weight_decay=0.0 if wd is None else wd)


@dataclass
class History:
    epochs: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    """Fits ``model`` on ``train_set``; validates on ``val_set``.

    ``task`` = ``segmentation`` (val metric: mean foreground Dice per case), ``classification``
    (val metric: AUC, macro one-vs-rest for more than two classes) or ``restoration`` (self-supervised
    targets are images: val metric = −MSE between sigmoid(output) and the target). ``val_set`` is a dataset of
    (image, label) tensors; for 3D volumes larger than ``val_roi`` a sliding window is used. ``param_groups``:
    optimise these groups (``params`` and optionally ``lr_scale``) instead of all of the model's parameters.
    """

    def __init__(
        self,
        model: nn.Module,
        train_set: EpochDataset,
        val_set: Any | None,
        config: TrainConfig,
        run_dir: str | Path,
        hooks: Sequence[Hook] = (),
        task: str = "segmentation",
        loss: nn.Module | None = None,
        param_groups: Iterable[dict[str, Any]] | None = None,
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        self.cfg = config
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / CHECKPOINTS_DIR
        self.task = task
        self.train_set = train_set
        self.val_set = val_set
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.cfg = config = config.with_min_steps(self.steps_per_epoch())
        self.is_main = self.rank == 0
        self.device = resolve_device(config.device)
        if self.world_size > 1 and not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend=backend)
            if self.device.type == "cuda":
                self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.manual_seed(config.seed)
        self.model = model.to(self.device)
        self.spatial_dims = getattr(model, "spatial_dims", 2)
        if config.channels_last:
            self.model = self.model.to(memory_format=memory_format(self.spatial_dims))
        default_loss = {"classification": "ce", "restoration": "restoration"}.get(task, config.loss)
        base = loss if loss is not None else get_loss(default_loss)
        self.deep_supervision = bool(config.deep_supervision and getattr(model, "deep_supervision", False))
        # What the loss sees goes through forward(), so DDP can synchronise gradients of every head.
        self.net: nn.Module = _TrainView(self.model, self.deep_supervision)
        if self.world_size > 1:
            self.net = nn.parallel.DistributedDataParallel(self.net)
        self.loss_fn = DeepSupervisionLoss(base, config.ds_weights) if self.deep_supervision else base
        self.optimizer = make_optimizer(config, self.model.parameters() if param_groups is None else list(param_groups))
        self.hooks: list[Hook] = list(hooks)
        self.amp = config.amp  # resolved to none/bf16/fp16 when fit starts (check_amp for "auto")
        self._amp_resolved = False
        self.bad_steps = 0  # consecutive non-finite steps
        self.skipped_steps = 0  # in the current epoch
        averaged_by_hook = any(getattr(h, "averages_weights", False) for h in self.hooks)
        self.ema = WeightEMA(self.model, config.ema) if config.ema > 0 and not averaged_by_hook else None
        if config.early_stopping > 0:
            self.hooks.append(EarlyStopping(config.early_stopping))
        # the logger goes last, so each epoch's line holds what the other hooks added to the logs
        self.hooks.append(JsonlLogger(self.run_dir / LOG_FILE))
        self.start_epoch = 0
        self.global_step = 0
        self.best_metric: float | None = None
        self.best_epoch: int | None = None
        self.history = History()
        self.should_stop = False

    # -- data ----------------------------------------------------------------------------------------
    def steps_per_epoch(self) -> int:
        per_rank = math.ceil(len(self.train_set) / self.world_size)
        return math.ceil(per_rank / self.cfg.batch_size)

    def epoch_indices(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        order = torch.randperm(len(self.train_set), generator=g).tolist()
        per_rank = math.ceil(len(order) / self.world_size)
        order = (order * (1 + per_rank * self.world_size // max(len(order), 1)))[: per_rank * self.world_size]
        return order[self.rank :: self.world_size]

    def _loader(self, epoch: int) -> DataLoader:
        self.train_set.set_epoch(epoch)
        subset = Subset(self.train_set, self.epoch_indices(epoch))
        return DataLoader(subset, batch_size=self.cfg.batch_size, shuffle=False, num_workers=self.cfg.num_workers,
                          drop_last=False)

    @property
    def eval_model(self) -> nn.Module:
        """The model that is validated and saved as ``best``: the weight average when there is one."""
        return self.ema.model if self.ema is not None else self.model

    def autocast(self) -> Any:
        """The run's autocast context (hooks wrap their own network forwards in it; losses stay outside)."""
        return autocast_context(self.amp, self.device)

    def compute_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Any]:
        with self.autocast():
            out = self.net(x)  # all heads under deep supervision, else the logits
        out = as_float(out)
        return self.loss_fn(out, y), out

    def _prepare(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, Any]:
        x, y = batch[0].to(self.device), _to_device(batch[1], self.device)
        if self.cfg.channels_last and x.ndim in (4, 5):
            x = x.contiguous(memory_format=memory_format(x.ndim - 2))
        return x, y

    def _all_finite(self, value: torch.Tensor) -> bool:
        flag = torch.tensor([1.0 if bool(torch.isfinite(value).all()) else 0.0])
        if self.world_size > 1:  # every rank skips together, or DDP would hang in backward
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item() > 0)

    def train_step(self, batch: tuple[torch.Tensor, ...], total_steps: int) -> float:
        """One optimiser step; returns the loss, or NaN when the step was skipped as non-finite."""
        x, y = self._prepare(batch)
        lr = lr_at(self.cfg, self.global_step, total_steps, self.steps_per_epoch())
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        self.net.train()
        buffers = {k: v.clone() for k, v in unwrap(self.model).named_buffers()}  # batch-norm statistics
        loss, outputs = self.compute_loss(x, y)
        for hook in self.hooks:
            loss = hook.on_loss(self, batch, outputs, loss)
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1  # skipped steps count too: the schedule does not depend on what was skipped
        if not self._all_finite(loss.detach()):
            return self._skip("loss", buffers)
        loss.backward()
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf"))
        if not self._all_finite(norm.detach()):
            self.optimizer.zero_grad(set_to_none=True)
            return self._skip("gradient", buffers)
        self.optimizer.step()
        self.bad_steps = 0
        if self.ema is not None:
            self.ema.update(self.model)
        for hook in self.hooks:
            hook.on_step_end(self, batch, outputs)
        return float(loss.detach())

    def _skip(self, what: str, buffers: dict[str, torch.Tensor]) -> float:
        """A non-finite step: nothing reaches the weights (the forward's batch-norm statistics are put back).
        Too many in a row: fp32, or give up if already fp32."""
        with torch.no_grad():
            for name, buf in unwrap(self.model).named_buffers():
                buf.copy_(buffers[name])
        self.bad_steps += 1
        self.skipped_steps += 1
        if self.bad_steps < self.cfg.max_bad_steps:
            return float("nan")
        if self.amp != "none":
            if self.is_main:
                print(f"non-finite {what} in {self.bad_steps} consecutive {self.amp} steps (step {self.global_step}): "
                      "continuing in fp32 from the last good weights", flush=True)
            self.amp, self.bad_steps = "none", 0
            return float("nan")
        raise FloatingPointError(f"training {what} was non-finite in {self.bad_steps} consecutive fp32 steps "
                                 f"(step {self.global_step}); lower --lr")

    def resolve_amp(self, batch: tuple[torch.Tensor, ...]) -> None:
        """Settle ``amp`` once per run: ``auto`` → bf16/fp16 only where native and (CPU) only if
        :func:`check_amp` agrees on ``batch``; explicit modes are kept."""
        if self._amp_resolved:
            return
        self._amp_resolved = True
        requested = self.cfg.amp
        dtype = amp_dtype(requested, self.device)
        if dtype is None:
            self.amp = "none"
            return
        self.amp = {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
        if requested != "auto" or self.device.type == "cuda" or self.task == "restoration":
            return
        x, y = self._prepare(batch)
        agrees, ref, low = check_amp(_TrainView(unwrap(self.model), self.deep_supervision), self.loss_fn, x, y, dtype)
        if self.world_size > 1:
            flag = torch.tensor([1.0 if agrees else 0.0])
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            agrees = bool(flag.item() > 0)
        if not agrees:
            self.amp = "none"
        if self.is_main and self.cfg.progress:
            verdict = f"{self.amp} (agrees with fp32" if agrees else "fp32 (bf16 disagrees with fp32"
            print(f"amp auto: {verdict} on the first batch: loss {ref:.4f} vs {low:.4f})", flush=True)

    # -- validation ----------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        if self.val_set is None or len(self.val_set) == 0:
            return {}
        model = self.eval_model
        model.eval()
        indices = list(range(self.rank, len(self.val_set), self.world_size))
        if self.task == "classification":
            scores, targets = [], []
            for start in range(0, len(indices), 64):
                chunk = [self.val_set[i] for i in indices[start : start + 64]]
                x = torch.stack([c[0] for c in chunk])
                probs = predict_probs(model, x, amp=self.amp, channels_last=self.cfg.channels_last)
                scores.append(probs.cpu())
                targets.append(torch.stack([c[1] for c in chunk]))
            p = torch.cat(scores)
            t = torch.cat(targets)
            p, t = self._gather(p), self._gather(t)
            probs = p.numpy()
            value = auc(t.numpy(), probs[:, 1] if probs.shape[1] == 2 else probs)
            acc = float((p.argmax(1) == t).float().mean())
            return {"val_auc": float(value), "val_acc": acc, "val_metric": float(value)}
        if self.task == "restoration":
            return self._validate_restoration(indices)
        dice_sum = torch.zeros(2, dtype=torch.float64)
        bs = self.cfg.batch_size if self.spatial_dims == 2 else 1
        for start in range(0, len(indices), bs):
            chunk = [self.val_set[i] for i in indices[start : start + bs]]
            x = torch.stack([c[0] for c in chunk])
            y = torch.stack([c[1] for c in chunk]).to(self.device)
            probs = predict_probs(model, x, roi_size=self.cfg.val_roi, amp=self.amp,
                                  channels_last=self.cfg.channels_last)
            pred = probs.argmax(1) if probs.shape[1] > 1 else (probs[:, 0] > 0.5).long()
            n_classes = max(probs.shape[1], 2)
            for b in range(pred.shape[0]):
                dice_sum += torch.tensor([mean_class_dice(pred[b].cpu().numpy(), y[b].cpu().numpy(), n_classes), 1.0],
                                         dtype=torch.float64)
        if self.world_size > 1:
            dist.all_reduce(dice_sum)
        val = float(dice_sum[0] / max(dice_sum[1], 1))
        return {"val_dice": val, "val_metric": val}

    def _validate_restoration(self, indices: list[int]) -> dict[str, float]:
        """Mean MSE of sigmoid(output) to the target image; with (image, class) targets (visual words) also
        the self-classification accuracy."""
        sums = torch.zeros(3, dtype=torch.float64)
        with_class = False
        for start in range(0, len(indices), self.cfg.batch_size):
            chunk = [self.val_set[i] for i in indices[start : start + self.cfg.batch_size]]
            x = torch.stack([c[0] for c in chunk]).to(self.device)
            with_class = isinstance(chunk[0][1], (tuple, list))
            y = torch.stack([c[1][0] if with_class else c[1] for c in chunk]).to(self.device)
            model = self.eval_model
            model.eval()
            with self.autocast():
                out = model.forward_train(x) if with_class else model(x)
            rec = out[0] if with_class else out
            restored = torch.sigmoid(rec.float())
            correct = 0.0
            if with_class:
                labels = torch.stack([torch.as_tensor(c[1][1]) for c in chunk]).to(self.device)
                correct = float((out[1].float().argmax(1) == labels).sum())
            sums += torch.tensor([float(((restored - y) ** 2).mean(dim=tuple(range(1, y.ndim))).sum()), len(chunk),
                                  correct], dtype=torch.float64)
        if self.world_size > 1:
            dist.all_reduce(sums)
        mse = float(sums[0] / max(sums[1], 1))
        logs = {"val_mse": mse, "val_metric": -mse}
        if with_class:
            logs["val_class_acc"] = float(sums[2] / max(sums[1], 1))
        return logs

    def _gather(self, t: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return t
        sizes = [torch.zeros(1, dtype=torch.long) for _ in range(self.world_size)]
        dist.all_gather(sizes, torch.tensor([t.shape[0]]))
        m = int(max(s.item() for s in sizes))
        pad = torch.zeros((m - t.shape[0],) + tuple(t.shape[1:]), dtype=t.dtype)
        out = [torch.zeros((m,) + tuple(t.shape[1:]), dtype=t.dtype) for _ in range(self.world_size)]
        dist.all_gather(out, torch.cat([t, pad]))
        return torch.cat([o[: int(s.item())] for o, s in zip(out, sizes)])

    # -- checkpoints ---------------------------------------------------------------------------------
    def _state_metadata(self, epoch: int) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "global_step": self.global_step,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "history": self.history.epochs,
            "train_config": asdict(self.cfg),
            "amp": self.amp,
        }

    def save_state(self, epoch: int) -> None:
        if not self.is_main:
            return
        tensors = {k: v.detach().contiguous().cpu() for k, v in unwrap(self.model).state_dict().items()}
        opt_tensors, opt_json = optimizer_state_tensors(self.optimizer, "optim")
        tensors.update(opt_tensors)
        hook_opts: dict[str, Any] = {}
        for prefix, optimizer in self._hook_optimizers():
            opt_tensors, hook_opts[prefix] = optimizer_state_tensors(optimizer, prefix)
            tensors.update(opt_tensors)
        tensors["rng/torch"] = torch.get_rng_state()
        if self.ema is not None:
            tensors.update(self.ema.state_tensors())
        for i, hook in enumerate(self.hooks):
            for name, val in hook.state_tensors().items():
                tensors[f"hook/{i}/{name}"] = val.detach().cpu().contiguous().clone()
        meta = {"aemia_state": json.dumps(self._state_metadata(epoch)), "optimizer": json.dumps(opt_json)}
        if hook_opts:
            meta["hook_optimizers"] = json.dumps(hook_opts)
        last = self.ckpt_dir / "last.safetensors"
        with atomic_path(last, suffix=".safetensors") as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        write_json_atomic(self.ckpt_dir / "last.json", {"model": getattr(unwrap(self.model), "config", {}), "epoch": epoch})

    def load_state(self) -> None:
        last = self.ckpt_dir / "last.safetensors"
        if not last.exists():
            raise CheckpointError(last, "cannot resume: no checkpoint in this run folder")
        from safetensors import safe_open

        try:
            with safe_open(str(last), framework="pt") as f:
                meta = f.metadata()
            tensors = load_file(str(last))
        except Exception as exc:  # noqa: BLE001 - any read failure is a bad checkpoint
            raise CheckpointError(last, f"cannot read checkpoint ({exc})") from None
        state = json.loads(meta["aemia_state"])
        opt_json = json.loads(meta["optimizer"])
        model_state = {k: v for k, v in tensors.items() if "/" not in k}
        missing, unexpected = unwrap(self.model).load_state_dict(model_state, strict=False)
        if missing or unexpected:
            raise CheckpointError(last, f"checkpoint does not fit the model: missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]}")
        load_optimizer_state(self.optimizer, "optim", tensors, opt_json, self.device)
        hook_opts = json.loads(meta.get("hook_optimizers", "{}"))
        for prefix, optimizer in self._hook_optimizers():
            if prefix in hook_opts:
                load_optimizer_state(optimizer, prefix, tensors, hook_opts[prefix], self.device)
        torch.set_rng_state(tensors["rng/torch"])
        if self.ema is not None:
            self.ema.load_state_tensors(tensors)
        if "amp" in state:  # the resumed run keeps the precision it had settled on (a fp32 fallback included)
            self.amp, self._amp_resolved = state["amp"], True
        for i, hook in enumerate(self.hooks):
            prefix = f"hook/{i}/"
            hook.load_state_tensors({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        self.start_epoch = int(state["epoch"]) + 1
        self.global_step = int(state["global_step"])
        self.best_metric = state["best_metric"]
        self.best_epoch = state["best_epoch"]
        self.history.epochs = list(state["history"])
        if any(h.get("early_stopped") for h in self.history.epochs):
            self.should_stop = True

    def _hook_optimizers(self) -> list[tuple[str, torch.optim.Optimizer]]:
        return [(f"hookopt/{i}/{name}", opt) for i, hook in enumerate(self.hooks) for name, opt in hook.optimizers().items()]

    # -- the loop ------------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict[str, Any]:
        if resume:
            self.load_state()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for hook in self.hooks:
            hook.on_fit_start(self)
        total_steps = self.cfg.epochs * self.steps_per_epoch()
        progress = EpochProgress(enabled=self.cfg.progress and self.is_main)
        with progress:
            for epoch in range(self.start_epoch, self.cfg.epochs):
                if self.should_stop:
                    break
                for hook in self.hooks:
                    hook.on_epoch_start(self, epoch)
                t0 = time.perf_counter()
                losses: list[float] = []
                progress.start_epoch(epoch, self.cfg.epochs, self.steps_per_epoch())
                self.skipped_steps = 0
                for step, batch in enumerate(self._loader(epoch)):
                    self.resolve_amp(batch)
                    loss = self.train_step(batch, total_steps)
                    if math.isfinite(loss):
                        losses.append(loss)
                    progress.advance(loss)
                    for hook in self.hooks:
                        hook.on_batch_end(self, step, loss)
                logs: dict[str, Any] = {"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else float("nan"),
                                        "lr": lr_at(self.cfg, self.global_step, total_steps, self.steps_per_epoch()),
                                        "seconds": round(time.perf_counter() - t0, 3), "amp": self.amp}
                if self.skipped_steps:
                    logs["skipped_steps"] = self.skipped_steps
                if (epoch + 1) % self.cfg.val_every == 0 or epoch == self.cfg.epochs - 1:
                    logs.update(self.validate())
                metric = logs.get("val_metric")
                if metric is not None and (self.best_metric is None or metric > self.best_metric):
                    self.best_metric, self.best_epoch = float(metric), epoch
                    if self.is_main:
                        save_checkpoint(self.eval_model, self.ckpt_dir / "best",
                                        {"epoch": epoch, "val_metric": metric, "task": self.task})
                for hook in self.hooks:
                    hook.on_epoch_end(self, epoch, logs)
                self.history.epochs.append(logs)
                progress.end_epoch(logs)
                self.save_state(epoch)
        if self.ema is not None:  # the fitted model is the evaluated one
            unwrap(self.model).load_state_dict(unwrap(self.ema.model).state_dict())
        if self.best_epoch is None and self.is_main:  # no validation set: the last epoch is the model
            save_checkpoint(self.model, self.ckpt_dir / "best", {"epoch": self.start_epoch + len(self.history.epochs) - 1,
                                                                 "val_metric": None, "task": self.task})
        for hook in self.hooks:
            hook.on_fit_end(self)
        if self.world_size > 1:
            dist.barrier()
        return {"best_metric": self.best_metric, "best_epoch": self.best_epoch, "history": self.history.epochs}


class _TrainView(nn.Module):
    """What the loss sees, as one ``forward`` (so DDP hooks every parameter): the network's ``forward_train``
    when it has one (multi-task pretraining), all heads under deep supervision, else ``forward``."""

    def __init__(self, model: nn.Module, deep_supervision: bool) -> None:
        super().__init__()
        self.model = model
        self.deep_supervision = deep_supervision

    def forward(self, x: torch.Tensor) -> Any:
        if hasattr(self.model, "forward_train"):
            return self.model.forward_train(x)
        if self.deep_supervision:
            return self.model.forward_heads(x)
        return self.model(x)


def _to_device(obj: Any, device: torch.device) -> Any:
    if torch.is_tensor(obj):
        return obj.to(device)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(o, device) for o in obj)
    return obj
