"""CAiD: context-aware instance discrimination (Taher, Haghighi, Gotway, Liang; MIDL 2022,
``MR-HosseinzadehTaher/CAiD``; ``../shared/reference/METHODS.md`` §6.3).

CAiD is DiRA's code base without the adversary: MoCo-v2 instance discrimination (the same views) plus context
restoration of the distorted query view by the query branch's U-Net decoder (:mod:`aemia.pretrain.views`,
:mod:`aemia.pretrain.moco`). Loss ``1·NCE + 10·MSE``; the paper trains 800 epochs with SGD lr 0.03. Its
mode ``id`` (plain instance discrimination) is ``w_rec = 0``.

    aemia pretrain caid --data kvasir --epochs 12 --out runs/caid_kvasir
"""

from __future__ import annotations

#: METHODS §6.3: Loss = 1·NCE + 10·MSE, no adversarial term.
CAID_WEIGHTS: dict[str, float] = {"w_nce": 1.0, "w_rec": 10.0, "w_adv": 0.0}

__all__ = ["CAID_WEIGHTS"]
