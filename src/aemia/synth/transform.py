"""MONAI dictionary transform: synthetic liver tumors on healthy training cases (METHODS.md §3.1, §8.7).

As in Hu et al., CVPR 2023 ("Label-Free Liver Tumor Segmentation"), tumors are added with probability
``prob`` (0.9) and only to cases whose label has no tumor (``max(label) ≤ healthy_max``, 1 by default:
background 0, organ 1). The image must be in raw HU (apply intensity windowing *after* this transform) with a
channel axis ``(1, X, Y, Z)``; numpy arrays, torch tensors and MONAI ``MetaTensor`` are accepted and returned as
the same kind (an image becomes float32; a ``MetaTensor`` keeps its metadata). The voxel spacing is read from a
``MetaTensor``'s affine, else from ``spacing=``, else 1 mm.

**Randomness that differs per worker and epoch** (the original seeds 0 in ``__init__``, so every data-loader
worker makes the same tumors): each call draws from a fresh ``numpy.random.Generator`` seeded by
``SeedSequence([seed, worker id + 1, epoch, index])`` where the worker id comes from
``torch.utils.data.get_worker_info()`` (0 in the main process), ``epoch`` from :meth:`set_epoch` and
``index`` from ``data[index_key]`` when present, else a per-process call counter (reset by ``set_epoch``).
Call ``set_epoch(e)`` on the transform before each epoch (with non-persistent workers the workers receive
the updated copy). :meth:`set_random_state` (called e.g. by ``monai.data.DataLoader``'s worker init with a
per-worker, per-epoch seed) replaces the base seed, so that route also gives distinct streams.

Example::

    from monai.transforms import Compose, ScaleIntensityRanged
    train_tf = Compose([RandTumorSynthesisd(keys=("image", "label"), prob=0.9, seed=0),
                        ScaleIntensityRanged("image", -21, 189, 0.0, 1.0, clip=True)])
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.transforms import MapTransform, RandomizableTransform

from aemia.synth.tumor import TumorConfig, spacing_from_affine, synthesize_tumors


def _worker_id() -> int:
    try:
        from torch.utils.data import get_worker_info
    except ImportError:  # pragma: no cover
        return -1
    info = get_worker_info()
    return -1 if info is None else int(info.id)


def _to_numpy(x: Any) -> np.ndarray:
    try:
        import torch

        if isinstance(x, torch.Tensor):
            return x.detach().cpu().numpy() if not hasattr(x, "as_tensor") else x.as_tensor().detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    return np.asarray(x)


def _like(new: np.ndarray, orig: Any, dtype: Any = None) -> Any:
    """``new`` converted to the kind of ``orig`` (numpy / torch / MetaTensor with its metadata)."""
    import torch

    if isinstance(orig, torch.Tensor):
        t = torch.as_tensor(np.ascontiguousarray(new), device=orig.device)
        if dtype is not None:
            t = t.to(dtype)
        if hasattr(orig, "meta"):  # MetaTensor: keep its metadata (affine, pixdim, applied operations)
            from copy import deepcopy

            from monai.data import MetaTensor

            return MetaTensor(t, meta=deepcopy(orig.meta), applied_operations=list(orig.applied_operations))
        return t
    return new if dtype is None else new.astype(dtype, copy=False)


class RandTumorSynthesisd(RandomizableTransform, MapTransform):
    """Add synthetic tumors to healthy-organ cases (dictionary transform, keys ``image`` and ``label``).

    ``keys``: ``(image_key, label_key)``. ``organ_label``: label value of the organ (1); tumors are written as
    ``tumor_label`` (2). ``healthy_max``: a case is synthesized only if ``max(label) ≤ healthy_max``; other cases
    are returned untouched. ``tumor_type``: fixed type or None for the paper's random draw. ``config``:
    :class:`~aemia.synth.tumor.TumorConfig`. After a call, ``last_result`` holds the
    :class:`~aemia.synth.tumor.SynthesisResult` (None if nothing was synthesized).
    """

    def __init__(self, keys: Sequence[Hashable] = ("image", "label"), prob: float = 0.9, *, seed: int = 0,
                 organ_label: int = 1, tumor_label: int = 2, healthy_max: int = 1, tumor_type: str | None = None,
                 spacing: Sequence[float] | None = None, config: TumorConfig | None = None,
                 index_key: str | None = "index", allow_missing_keys: bool = False) -> None:
        keys = tuple(keys)
        if len(keys) != 2:
            raise ValueError("keys must be (image_key, label_key)")
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.image_key, self.label_key = keys
        self.seed = int(seed)
        self.epoch = 0
        self._counter = 0
        self.organ_label, self.tumor_label, self.healthy_max = int(organ_label), int(tumor_label), int(healthy_max)
        self.tumor_type = tumor_type
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)
        self.config = config or TumorConfig()
        self.index_key = index_key
        self.last_result = None

    # ------------------------------------------------------------------ randomness
    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch``: later calls draw a new tumor stream (and the call counter restarts)."""
        self.epoch = int(epoch)
        self._counter = 0

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> "RandTumorSynthesisd":
        """MONAI API: ``seed`` becomes the base seed of the per-call generators (``state`` only feeds MONAI's ``R``)."""
        super().set_random_state(seed=seed, state=state)
        if seed is not None:
            self.seed = int(seed) % (2**32)
            self._counter = 0
        elif state is not None:
            self.seed = int(state.randint(0, 2**31 - 1))
            self._counter = 0
        return self

    def generator_for(self, index: int | None = None) -> np.random.Generator:
        """The generator of the next call: seeded by (seed, worker id + 1, epoch, index or call counter)."""
        if index is None:
            index = self._counter
            self._counter += 1
        entropy = [self.seed, _worker_id() + 1, self.epoch, int(index)]
        return np.random.default_rng(np.random.SeedSequence(entropy))

    def randomize(self, data: Any = None) -> None:  # MONAI API; the draw happens in __call__ with the generator
        return None

    # ------------------------------------------------------------------ call
    def _spacing_of(self, image: Any) -> tuple[float, float, float]:
        if self.spacing is not None:
            return (self.spacing[0], self.spacing[1], self.spacing[2])
        aff = getattr(image, "affine", None)
        if aff is not None:
            a = _to_numpy(aff)
            if a.shape == (4, 4):
                return spacing_from_affine(a)
        return (1.0, 1.0, 1.0)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.last_result = None
        if self.image_key not in d or self.label_key not in d:
            if self.allow_missing_keys:
                return d
            raise KeyError(f"RandTumorSynthesisd needs keys {self.image_key!r} and {self.label_key!r}")
        index = d.get(self.index_key) if self.index_key else None
        rng = self.generator_for(None if index is None else int(_to_numpy(index).reshape(-1)[0]))
        self._do_transform = bool(rng.random() < self.prob)
        if not self._do_transform:
            return d
        image, label = d[self.image_key], d[self.label_key]
        lab = _to_numpy(label)
        if lab.size == 0 or lab.max() > self.healthy_max:
            return d
        img = _to_numpy(image)
        if img.ndim != 4 or img.shape[0] != 1 or lab.shape[-3:] != img.shape[-3:]:
            raise ValueError(f"expected image (1, X, Y, Z) and a label of the same spatial shape; got "
                             f"{img.shape} and {lab.shape}")
        lab3 = lab.reshape(img.shape[1:])
        organ = lab3 == self.organ_label
        if not organ.any():
            return d
        affine = getattr(image, "affine", None)
        aff = _to_numpy(affine) if affine is not None else None
        res = synthesize_tumors(img[0], organ, rng, tumor_type=self.tumor_type, spacing=self._spacing_of(image),
                                affine=aff if aff is not None and aff.shape == (4, 4) else None, config=self.config)
        self.last_result = res
        new_lab = lab3.copy()
        new_lab[res.label == 2] = self.tumor_label
        d[self.image_key] = _like(res.image[None], image)
        d[self.label_key] = _like(new_lab.reshape(lab.shape).astype(lab.dtype, copy=False), label)
        return d
