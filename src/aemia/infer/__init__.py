"""Inference: batched 2D prediction, sliding-window 3D prediction, flip TTA, pruned fast mode."""

from aemia.infer.predict import autocast_context, predict_probs, resolve_device

__all__ = ["autocast_context", "predict_probs", "resolve_device"]
