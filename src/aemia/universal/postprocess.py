"""The Universal Model's published post-processing, where it fits (METHODS.md §4.3; ``utils/utils.py:
organ_post_process``): organs keep their largest connected component (26-connected in 3D, 8-connected in 2D),
paired organs their two largest, and a tumour is kept only inside its organ (the organ mask after binary
closing and dilation with a 5-voxel structuring element). Classes without a rule (polyps, of which an image
may hold several; vessels; brain tumours) are returned unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

Rule = Callable[[np.ndarray, dict[str, np.ndarray]], np.ndarray]


def largest_components(mask: np.ndarray, k: int = 1) -> np.ndarray:
    """The ``k`` largest connected components of a boolean mask (full connectivity)."""
    mask = mask.astype(bool)
    labels, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, bool))
    if n <= k:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.argsort(sizes)[::-1][:k] + 1
    return np.isin(labels, keep)


def inside_organ(tumour: np.ndarray, organ: np.ndarray) -> np.ndarray:
    """The tumour mask restricted to its organ, closed and dilated with a 5-wide cube (published)."""
    if not organ.any():
        return np.zeros_like(tumour, dtype=bool)
    box = np.ones((5,) * organ.ndim, bool)
    region = ndimage.binary_dilation(ndimage.binary_closing(organ.astype(bool), box), box)
    return tumour.astype(bool) & region


def _largest(k: int) -> Rule:
    return lambda m, _: largest_components(m, k)


def _inside(organ: str) -> Rule:
    return lambda m, masks: inside_organ(m, masks[organ]) if organ in masks else m.astype(bool)


#: Class name → rule (the published organ list as far as aemia has the classes; the skin lesion is one
#: connected structure per dermoscopy image, so it gets the organ rule too).
RULES: dict[str, Rule] = {
    "liver": _largest(1),
    "spleen": _largest(1),
    "pancreas": _largest(1),
    "kidney": _largest(2),
    "skin lesion": _largest(1),
    "liver tumor": _inside("liver"),
}


def post_process(masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Apply each class's rule; organ rules first, so a tumour is restricted by the cleaned organ."""
    out = {name: (RULES[name](m, masks) if name in RULES and "tumor" not in name else m.astype(bool))
           for name, m in masks.items()}
    for name, m in masks.items():
        if name in RULES and "tumor" in name:
            out[name] = RULES[name](m, out)
    return out


__all__ = ["RULES", "inside_organ", "largest_components", "post_process"]
