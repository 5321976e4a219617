"""Inference on files: a trained run (read through :class:`aemia.runs.RunFolder`) applied to images of any size,
geometry and orientation (:class:`~aemia.infer.predictor.Predictor`), batch prediction of folders
(:mod:`aemia.infer.batch`) and per-lesion tables (:mod:`aemia.infer.lesions`). The tensor-level kernel (batched
2D, sliding-window 3D, flip TTA, autocast) is :mod:`aemia.nets.predict`, which training uses too."""

from aemia.infer.predictor import Predictor

__all__ = ["Predictor"]
