"""DiRA's adversary: a patch discriminator on restored images (Haghighi, Taher, Gotway, Liang; CVPR 2022,
``fhaghighi/DiRA``; ``../shared/reference/METHODS.md`` §6.2).

DiRA = MoCo-v2 instance discrimination + restoration from the query decoder (:mod:`aemia.pretrain.moco`) +
an adversarial term. Generator loss ``1·L_NCE + 10·L_MSE + 0.001·L_adv``. The discriminator (1-channel
images): conv(64, stride 2, no norm) → conv(128, s2, InstanceNorm) → conv(256, s2, IN) → conv(512, s1, IN) →
conv → a 1-channel patch map, LeakyReLU 0.2, weights ~ N(0, 0.02), 4×4 kernels; LSGAN objectives (MSE to 1
or 0); ``D loss = 0.5·(real + fake)``; Adam lr 2e-4 (torch's default betas: the betas were not recorded).
The paper first trains without the adversary (stage ``dir``) and then with it (stage ``dira``); here the
adversary joins after ``adv_start`` of the epochs (CPU preset: half), in one run.

:class:`AdversarialHook` does both sides inside the one Trainer: ``on_loss`` adds ``w·MSE(D(G(x)), 1)`` with the
discriminator's parameters frozen (its gradient reaches the generator only), ``on_step_end`` then takes one
discriminator step on the real target and the detached restoration (its gradient reaches the discriminator
only). The discriminator's weights and optimiser are checkpointed with the run (resumable).

    aemia pretrain dira --data kvasir --epochs 12 --out runs/dira_kvasir
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from aemia.train.hooks import Hook

if TYPE_CHECKING:
    from aemia.train.trainer import Trainer

#: METHODS §6.2: generator loss = 1·L_NCE + 10·L_MSE + 0.001·L_adv.
DIRA_WEIGHTS: dict[str, float] = {"w_nce": 1.0, "w_rec": 10.0, "w_adv": 0.001}


class PatchDiscriminator(nn.Module):
    """The pix2pix-style patch discriminator DiRA uses; ``width`` 64 is the paper's (CPU preset 16)."""

    def __init__(self, channels: int = 1, width: int = 64) -> None:
        super().__init__()
        w = width
        layers: list[nn.Module] = [nn.Conv2d(channels, w, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        for cin, cout, stride in ((w, 2 * w, 2), (2 * w, 4 * w, 2), (4 * w, 8 * w, 1)):
            layers += [nn.Conv2d(cin, cout, 4, stride, 1), nn.InstanceNorm2d(cout), nn.LeakyReLU(0.2, inplace=True)]
        layers.append(nn.Conv2d(8 * w, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def lsgan(pred: torch.Tensor, real: bool) -> torch.Tensor:
    """LSGAN objective: MSE of the patch map to 1 (real) or 0 (fake)."""
    return F.mse_loss(pred, torch.full_like(pred, 1.0 if real else 0.0))


class AdversarialHook(Hook):
    """Adds ``weight·L_adv`` to the generator's loss and trains the discriminator after each step."""

    def __init__(self, weight: float = 0.001, lr: float = 2e-4, start_epoch: int = 0, width: int = 64,
                 seed: int = 0, channels: int = 1) -> None:
        self.weight, self.start_epoch = weight, start_epoch
        with torch.random.fork_rng():
            torch.manual_seed(seed + 7919)  # the discriminator's initialisation does not move the run's RNG
            self.disc = PatchDiscriminator(channels, width)
        self.opt = torch.optim.Adam(self.disc.parameters(), lr=lr)
        self.active = start_epoch <= 0
        self._pair: tuple[torch.Tensor, torch.Tensor] | None = None
        self.sums: dict[str, list[float]] = {}

    def on_fit_start(self, trainer: "Trainer") -> None:
        self.disc.to(trainer.device)

    def on_epoch_start(self, trainer: "Trainer", epoch: int) -> None:
        self.active = epoch >= self.start_epoch
        self.sums = {}

    def on_loss(self, trainer: "Trainer", batch: tuple[torch.Tensor, ...], outputs: Any, loss: torch.Tensor) -> torch.Tensor:
        if not self.active or self.weight == 0:
            return loss
        fake = torch.sigmoid(outputs[0].float())
        self.disc.requires_grad_(False)  # the generator's term moves the generator only
        try:
            adv = lsgan(self.disc(fake), real=True)
        finally:
            self.disc.requires_grad_(True)
        self._pair = (batch[1].to(fake.device).float(), fake.detach())
        self.sums.setdefault("adv", []).append(float(adv.detach()))
        return loss + self.weight * adv

    def on_step_end(self, trainer: "Trainer", batch: tuple[torch.Tensor, ...], outputs: Any) -> None:
        if self._pair is None:
            return
        real, fake = self._pair
        self._pair = None
        self.disc.train()
        self.opt.zero_grad(set_to_none=True)
        d_loss = 0.5 * (lsgan(self.disc(real), True) + lsgan(self.disc(fake), False))
        d_loss.backward()
        self.opt.step()
        self.sums.setdefault("disc", []).append(float(d_loss.detach()))

    def on_epoch_end(self, trainer: "Trainer", epoch: int, logs: dict[str, Any]) -> None:
        logs.update({f"train_{k}": sum(v) / len(v) for k, v in self.sums.items()})
        logs["adversary"] = self.active

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {f"disc.{k}": v for k, v in self.disc.state_dict().items()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        state = {k[len("disc."):]: v for k, v in tensors.items() if k.startswith("disc.")}
        if state:
            self.disc.load_state_dict(state)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"disc": self.opt}


__all__ = ["AdversarialHook", "DIRA_WEIGHTS", "PatchDiscriminator", "lsgan"]
