"""MoCo-v2 with restoration from the query branch's decoder: the shared core of DiRA and CAiD.

Papers: Haghighi et al., "DiRA: Discriminative, Restorative, and Adversarial Learning for Self-supervised
Medical Image Analysis", CVPR 2022; Taher et al., "CAiD: Context-Aware Instance Discrimination for
Self-supervised Learning in Medical Imaging", MIDL 2022; both on MoCo-v2 (Chen et al. 2020). Facts from
``../shared/reference/METHODS.md`` §6.2–6.3:

* the **query** network is our encoder-decoder (UNet / UNet++, the fine-tuning architecture) with a 1-channel
  sigmoid restoration head; its bottleneck → global average → MLP (Linear c→c, ReLU, Linear c→``dim``) gives
  the query embedding;
* the **key** encoder is a momentum copy of the query's encoder and MLP (no decoder): after every optimiser
  step ``θ_k ← m·θ_k + (1 − m)·θ_q``; no gradient ever reaches it;
* InfoNCE over ``[q·k⁺, q·queue] / T`` with a FIFO queue of the last ``queue`` keys; paper: K 65,536,
  m 0.999, T 0.2 (the README and argparse value), dim 128, MLP head;
* loss ``w_nce·NCE + w_rec·MSE(sigmoid(decoder(query)), grayscale target)``, 1 and 10 for both methods; DiRA
  adds ``0.001·adversarial`` (:mod:`aemia.pretrain.dira`);
* paper optimiser SGD lr 0.03, momentum 0.9, weight decay 1e-4, cosine.

**Shuffle-BN, single process.** MoCo shuffles the key batch across GPUs so that a query and its key are
never normalised with the same batch statistics (otherwise the pair can be matched through the statistics
instead of the content). One process has no other GPU to shuffle to. Here the key encoder normalises
**shuffled groups of** ``key_bn_group`` **keys with their own batch statistics** (ghost BN), while the query
branch keeps ordinary batch norm over the whole batch, as in MoCo: a key's statistics come from a random subset
that differs from its query's. Default G = 32, the paper's per-GPU batch (256 over 8 GPUs); CPU preset G = 8,
half of its batch of 16.

**Why not running statistics (the earlier default, ``key_bn_group = 0``).** Keys normalised with the query
encoder's running statistics (eval mode) while queries use batch statistics (train mode) come from a different
function than their queries: at initialisation, with *identical* query and key images and ``m = 0``, a
positive's cosine was 0.65–0.78 while the in-batch negatives' averaged 0.92. Training never closes that gap, so
the instance discrimination stays at chance: NCE ≈ ln(1 + K) and every key the same vector, with or without
restoration (Kvasir, 32 px, identical views, ``m = 0``: identification accuracy fell from 0.51 to 0.12, while
batch-statistic keys reached 1.0 and NCE 1.8 in 6 epochs). That was the "MoCo collapse" of the first CPU runs.
G = 1 (per-sample statistics) also collapses: standardising each bottleneck channel over one image's positions,
then ReLU and global averaging, leaves nearly the same vector for every image (Kvasir, 64 px: key cosine
0.99998). Both stay available for the record (tests pin the difference).
The query branch keeps ordinary batch norm, as in MoCo.

**CPU preset** (:meth:`ContrastiveConfig.cpu`): queue 256, batch 16 (METHODS §6.2's smallest version),
m 0.99 (0.999 barely moves the key encoder in the few hundred steps a CPU run takes: 0.999^500 ≈ 0.61 of the
initial weights remain), Adam 1e-3 with cosine (the option §1.7 recommends for short CPU runs; ``sgd`` gives
the paper's optimiser), 128 px grayscale-restoring views of the data set's training images.

Training runs through :class:`aemia.train.trainer.Trainer`: :class:`MoCo` exposes ``forward_train`` (query
restoration + contrastive logits), :class:`MoCoHook` does the momentum update and the enqueue after each step,
and the method's hooks (DiRA's adversary) are added. The run folder is fine-tuned with
``aemia train --init RUN`` exactly as a Models Genesis one: its ``checkpoints/best`` holds ``backbone.*``
(the encoder-decoder) beside the key encoder, heads and queue, which ``--init`` leaves out and reports.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aemia.errors import InputError
from aemia.nets import create_model
from aemia.pretrain.caid import CAID_WEIGHTS
from aemia.pretrain.dira import DIRA_WEIGHTS, AdversarialHook
from aemia.runs.folder import RunFolder
from aemia.train.hooks import Hook
from aemia.train.trainer import TrainConfig, Trainer


@dataclass
class ContrastiveConfig:
    data: str
    method: str = "caid"
    model: str = "unetpp"
    preset: str = "cpu"
    features: list[int] | None = None
    size: int = 128
    dim: int = 128
    queue: int = 65_536
    momentum: float = 0.999
    temperature: float = 0.2
    key_bn_group: int = 32  # shuffle-BN replacement: ghost BN over shuffled groups of G keys (0, 1: collapse)
    w_nce: float = 1.0
    w_rec: float = 10.0
    w_adv: float = 0.0  # DiRA: 0.001
    adv_start: float = 0.5  # DiRA: fraction of the epochs trained without the adversary (stage "dir")
    disc_width: int = 64  # DiRA discriminator's first width (paper 64)
    disc_lr: float = 2e-4
    val_fraction: float = 0.1
    seed: int = 0
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=200, batch_size=256, lr=0.03, optimizer="sgd", momentum=0.9, nesterov=False, weight_decay=1e-4,
        schedule="cosine", warmup=0.0, ema=0.0, deep_supervision=False))

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(None, f"unknown contrastive method {self.method!r}; available: {', '.join(METHODS)}")
        if self.queue < 1 or self.key_bn_group < 0 or self.dim < 1:
            raise InputError(None, "queue and dim must be at least 1, key_bn_group at least 0")
        if not 0.0 <= self.momentum < 1.0 or self.temperature <= 0:
            raise InputError(None, "momentum must be in [0, 1) and temperature > 0")

    @classmethod
    def cpu(cls, method: str, data: str, size: int = 128, epochs: int = 12, **overrides: Any) -> "ContrastiveConfig":
        """The CPU preset of ``method`` (see the module docstring); ``overrides`` replace any field."""
        train = TrainConfig(epochs=epochs, batch_size=16, lr=1e-3, optimizer="adam", schedule="cosine", warmup=0.0,
                            ema=0.0, deep_supervision=False)
        base = cls(data=data, method=method, size=size, queue=256, momentum=0.99, disc_width=16, key_bn_group=8,
                   train=train, **METHODS[method].weights)
        return replace(base, **overrides)

    def widths(self) -> list[int]:
        from aemia.runs.config import PRESETS

        return list(self.features) if self.features else list(PRESETS[self.preset])


# ------------------------------------------------------------------------------------------ the network
def encoder_blocks(net: nn.Module) -> list[nn.Module]:
    """The encoder column of our UNet (``encoder``) or UNet++ (nodes ``x{i}_0``), shallow to deep."""
    if hasattr(net, "nodes"):
        return [net.nodes[f"x{i}_0"] for i in range(net.depth + 1)]
    return list(net.encoder)


def projection_head(width: int, dim: int) -> nn.Sequential:
    """MoCo-v2's MLP: Linear(c, c) → ReLU → Linear(c, dim)."""
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, dim))


class KeyEncoder(nn.Module):
    """The momentum encoder: copies of the query's encoder blocks and projection head."""

    def __init__(self, blocks: list[nn.Module], head: nn.Module) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(copy.deepcopy(b) for b in blocks)
        self.head = copy.deepcopy(head)
        for p in self.parameters():
            p.requires_grad_(False)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for i, block in enumerate(self.blocks):
            h = block(F.max_pool2d(h, 2) if i else h)
        return F.normalize(self.head(h.flatten(2).mean(-1)), dim=1)


def grouped_embed(encoder: KeyEncoder, x: torch.Tensor, group: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Key embeddings (the single-process shuffle-BN): ``group`` G ≥ 1 = batch statistics over sub-batches of G
    samples of a random permutation (the default; 1 = each sample alone: collapses); 0 = batch norm with running
    statistics (eval mode; each key depends on its own image only, but keys then come from another function than
    their queries and the discrimination stays at chance; see the module docstring).

    A group never spans the whole batch of 4 or more samples: ``G`` is capped at ``B // 2``, so every key is
    normalised over a random half (or less) of the batch while its query sees all of it, as shuffle-BN intends.
    Batches of 2 or 3 cannot be split without a one-sample group (which collapses) and use the whole batch; a
    trailing one-sample group (e.g. B = 9, G = 4) joins the group before it."""
    n = x.shape[0]
    if group == 0:
        was = encoder.training
        encoder.eval()
        try:
            return encoder.embed(x)
        finally:
            encoder.train(was)
    if n >= 4:
        group = min(group, n // 2)
    if group >= n:
        return encoder.embed(x)
    order = torch.randperm(n, generator=generator) if group > 1 else torch.arange(n)
    starts = list(range(0, n, group))
    if group > 1 and n - starts[-1] == 1:
        starts.pop()  # a trailing one-sample group would collapse its key: it joins the previous group
    ends = starts[1:] + [n]
    out = torch.cat([encoder.embed(x[order[a:b]]) for a, b in zip(starts, ends)])
    return out[torch.argsort(order)]


class MoCo(nn.Module):
    """Query encoder-decoder + projection head, momentum key encoder and the FIFO key queue (``queue``,
    ``(dim, K)``, and ``queue_ptr`` are buffers, so checkpoints and resumes keep them).

    ``forward(x)`` is the encoder-decoder's restoration logits (what validation and fine-tuning see);
    ``forward_train(cat[query, key])`` returns ``(restoration logits, contrastive logits (B, 1 + K))`` and keeps
    the batch's keys in ``last_keys`` for :meth:`enqueue`."""

    def __init__(self, backbone: nn.Module, dim: int = 128, queue: int = 65_536, momentum: float = 0.999,
                 temperature: float = 0.2, key_bn_group: int = 32) -> None:
        super().__init__()
        if backbone.spatial_dims != 2:
            raise InputError(None, "DiRA / CAiD pretraining is 2D")
        self.backbone = backbone
        self.spatial_dims, self.in_channels, self.depth = 2, backbone.in_channels, backbone.depth
        self.momentum, self.temperature, self.key_bn_group = momentum, temperature, key_bn_group
        width = backbone.levels[-1]
        self.head = projection_head(width, dim)
        self.key_encoder = KeyEncoder(encoder_blocks(backbone), self.head)
        self.register_buffer("queue", F.normalize(torch.randn(dim, queue), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self._bottleneck: torch.Tensor | None = None
        encoder_blocks(backbone)[-1].register_forward_hook(self._keep)
        self.last_keys: torch.Tensor | None = None
        self.config = {"name": "moco", "backbone": getattr(backbone, "config", {}), "dim": dim, "queue": queue}

    def _keep(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self._bottleneck = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.backbone(x)
        self._bottleneck = None
        return out

    def query_pairs(self) -> list[tuple[nn.Parameter, nn.Parameter]]:
        """(query parameter, key parameter) pairs of the momentum update, in the same order."""
        query = [p for b in encoder_blocks(self.backbone) for p in b.parameters()] + list(self.head.parameters())
        key = [p for b in self.key_encoder.blocks for p in b.parameters()] + list(self.key_encoder.head.parameters())
        return list(zip(query, key))

    def forward_train(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.in_channels
        q_in, k_in = x[:, :c], x[:, c:]
        rec = self.backbone(q_in)
        feats, self._bottleneck = self._bottleneck, None
        q = F.normalize(self.head(feats.flatten(2).mean(-1)), dim=1)
        with torch.no_grad():
            self.key_encoder.train(self.training)
            k = grouped_embed(self.key_encoder, k_in, self.key_bn_group)
        self.last_keys = k.detach()
        positive = (q * k).sum(1, keepdim=True)
        negative = q @ self.queue.clone().detach()
        return rec, torch.cat([positive, negative], dim=1) / self.temperature

    @torch.no_grad()
    def momentum_update(self) -> None:
        """θ_k ← m·θ_k + (1 − m)·θ_q for the encoder and projection head; the key encoder's batch-norm running
        statistics are copied from the query encoder (what the keys normalise with when ``key_bn_group`` is 0)."""
        for q, k in self.query_pairs():
            k.mul_(self.momentum).add_(q.detach(), alpha=1.0 - self.momentum)
        query = [b for blk in encoder_blocks(self.backbone) for b in blk.buffers()]
        for q, k in zip(query, (b for blk in self.key_encoder.blocks for b in blk.buffers())):
            k.copy_(q)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """FIFO: the oldest ``len(keys)`` entries are replaced (wrapping around the end of the queue)."""
        size = self.queue.shape[1]
        keys = keys[-size:]
        ptr = int(self.queue_ptr)
        idx = (ptr + torch.arange(keys.shape[0], device=keys.device)) % size
        self.queue[:, idx] = keys.T.to(self.queue.dtype)
        self.queue_ptr[0] = (ptr + keys.shape[0]) % size


class ContrastiveRestorationLoss(nn.Module):
    """``w_nce·InfoNCE + w_rec·MSE(sigmoid(restoration), target)``; the last batch's terms and the
    instance-discrimination accuracy (positive logit strictly above every negative: a collapsed embedding, all
    logits equal, scores 0, not 1 as ``argmax`` would give) are kept for logging."""

    def __init__(self, w_nce: float = 1.0, w_rec: float = 10.0) -> None:
        super().__init__()
        self.w_nce, self.w_rec = w_nce, w_rec
        self.last: dict[str, float] = {}

    def forward(self, outputs: tuple[torch.Tensor, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        rec, logits = outputs
        logits = logits.float()
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        nce = F.cross_entropy(logits, labels)
        mse = F.mse_loss(torch.sigmoid(rec.float()), target.float())
        self.last = {"nce": float(nce.detach()), "mse": float(mse.detach()),
                     "id_acc": float((logits[:, :1] > logits[:, 1:]).all(1).float().mean())}  # ties are misses
        return self.w_nce * nce + self.w_rec * mse


class MoCoHook(Hook):
    """After each optimiser step: momentum-update the key encoder, then enqueue the step's keys (MoCo's
    order: the next step's keys come from the updated key encoder); logs the loss terms per epoch."""

    def __init__(self, model: MoCo, loss: ContrastiveRestorationLoss) -> None:
        self.model, self.loss = model, loss
        self.sums: dict[str, list[float]] = {}

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        self.sums = {}

    def on_step_end(self, trainer: Trainer, batch: tuple[torch.Tensor, ...], outputs: Any) -> None:
        self.model.momentum_update()
        if self.model.last_keys is not None:
            self.model.enqueue(self.model.last_keys)
            self.model.last_keys = None
        for k, v in self.loss.last.items():
            self.sums.setdefault(k, []).append(v)

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, Any]) -> None:
        logs.update({f"train_{k}": float(np.mean(v)) for k, v in self.sums.items()})


@dataclass(frozen=True)
class Method:
    """A MoCo-plus-restoration method: its loss weights and the extra hooks it trains with."""

    weights: dict[str, float]
    hooks: Callable[[ContrastiveConfig, MoCo], list[Hook]]


def _no_hooks(cfg: ContrastiveConfig, model: MoCo) -> list[Hook]:
    return []


def _dira_hooks(cfg: ContrastiveConfig, model: MoCo) -> list[Hook]:
    return [AdversarialHook(cfg.w_adv, cfg.disc_lr, int(cfg.adv_start * cfg.train.epochs), cfg.disc_width, cfg.seed)]


#: CAiD = instance discrimination + context restoration (1·NCE + 10·MSE); DiRA adds the adversary (0.001).
METHODS: dict[str, Method] = {
    "caid": Method(CAID_WEIGHTS, _no_hooks),
    "dira": Method(DIRA_WEIGHTS, _dira_hooks),
}


def build(cfg: ContrastiveConfig, in_channels: int) -> MoCo:
    torch.manual_seed(cfg.seed)
    backbone = create_model(cfg.model, 2, in_channels, 1, features=cfg.widths())
    return MoCo(backbone, cfg.dim, cfg.queue, cfg.momentum, cfg.temperature, cfg.key_bn_group)


def pretrain_contrastive(cfg: ContrastiveConfig, run_dir: str | Path, resume: bool = False,
                         progress: bool = True) -> dict[str, Any]:
    """Pretrain DiRA or CAiD on ``cfg.data``'s unlabelled training images; writes the run folder
    (``config.yaml``, ``log.jsonl``, ``checkpoints/``, ``metrics.json``) and returns the summary."""
    from aemia.pretrain.restore import PretrainConfig, build_pool
    from aemia.pretrain.views import TwoViewDataset

    run_dir = Path(run_dir)
    folder = RunFolder(run_dir)
    if resume:
        cfg = load_contrastive_config(run_dir)
    elif folder.has_checkpoint("last"):
        raise InputError(run_dir, "run folder already holds a pretraining run: pass --resume or choose a new --out")
    pool = build_pool(PretrainConfig(data=cfg.data, dims=2, size=[cfg.size, cfg.size], seed=cfg.seed), progress)
    order = np.random.default_rng(cfg.seed).permutation(len(pool))
    n_val = max(1, int(round(cfg.val_fraction * len(pool))))
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    model = build(cfg, pool.shape[1])
    loss = ContrastiveRestorationLoss(cfg.w_nce, cfg.w_rec)
    hooks = [MoCoHook(model, loss), *METHODS[cfg.method].hooks(cfg, model)]
    run_dir.mkdir(parents=True, exist_ok=True)
    folder.save_config({**asdict(cfg), "kind": "contrastive"})
    cfg.train.seed = cfg.seed
    trainable = [p for p in model.parameters() if p.requires_grad]
    trainer = Trainer(model, TwoViewDataset(pool[train_idx], seed=cfg.seed),
                      TwoViewDataset(pool[val_idx], seed=cfg.seed + 1, pairs=False, fixed_epoch=0), cfg.train,
                      run_dir, hooks=hooks, task="restoration", loss=loss, param_groups=[{"params": trainable}])
    result = trainer.fit(resume=resume)
    history = result["history"]
    last = history[-1] if history else {}
    summary = {"method": cfg.method, "data": cfg.data, "images": {"train": len(train_idx), "val": len(val_idx)},
               "best_val_mse": -(result["best_metric"] or 0.0), "best_epoch": result["best_epoch"],
               "epochs_run": len(history), "first_val_mse": history[0].get("val_mse") if history else None,
               "final_train_nce": last.get("train_nce"), "final_instance_accuracy": last.get("train_id_acc"),
               "chance_instance_accuracy": 1.0 / (cfg.queue + 1), "loss_weights": {"nce": cfg.w_nce, "rec": cfg.w_rec,
                                                                                 "adv": cfg.w_adv}}
    if trainer.is_main:
        folder.save_metrics(summary)
    return summary


def load_contrastive_config(run_dir: str | Path) -> ContrastiveConfig:
    folder = RunFolder(run_dir)
    if not folder.is_run():
        raise InputError(folder.config_path, "not a pretraining run folder (config.yaml missing)")
    d = dict(folder.config_dict())
    d.pop("kind", None)
    train = TrainConfig(**d.pop("train", {}))
    return ContrastiveConfig(**d, train=train)


__all__ = ["ContrastiveConfig", "ContrastiveRestorationLoss", "KeyEncoder", "METHODS", "Method", "MoCo", "MoCoHook",
           "build", "encoder_blocks", "grouped_embed", "load_contrastive_config", "pretrain_contrastive",
           "projection_head"]
