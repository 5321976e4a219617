"""Networks: UNet, UNet++ (deep supervision, exact pruning), ResNet / ARL classifiers, MB-DCNN's CAM-guided U-Net;
2D and 3D. Every registered network has ``forward_features(x)``: an ordered dict of named maps (``enc0..encN``
shallow to deep, ``bottleneck``, optional ``dec<i>``) and the pooled ``embedding`` (N, C); class activation maps
are computed from it in :mod:`aemia.nets.cam`. :mod:`aemia.nets.predict` runs a network over a tensor (batched 2D,
sliding-window 3D, flip TTA, autocast): the kernel of training's validation and of :mod:`aemia.infer`."""

from aemia.nets.checkpoint import load_checkpoint, load_weights, save_checkpoint
from aemia.nets.classifier import ResNetClassifier
from aemia.nets.registry import available_models, create_model, model_from_config, register_model
from aemia.nets.unet import UNet
from aemia.nets.unetpp import UNetPlusPlus

__all__ = [
    "ResNetClassifier",
    "UNet",
    "UNetPlusPlus",
    "available_models",
    "create_model",
    "load_checkpoint",
    "load_weights",
    "model_from_config",
    "register_model",
    "save_checkpoint",
]
