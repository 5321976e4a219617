"""Where several models' soft predictions call for human review: the AbdomenAtlas-8K attention procedure.

Paper: Qu et al., "AbdomenAtlas-8K: Annotating 8,000 CT Volumes for Multi-Organ Segmentation in Three Weeks",
NeurIPS 2023 Datasets & Benchmarks. Facts used here are in ``reference/METHODS.md`` §5.2 (procedure) and §0 item 7
(the "uncertainty" is ``entr(p) = -p ln p`` on each organ's soft prediction, not the full binary entropy).

For every case and target organ, with ``M`` models' probability maps ``p_1..p_M`` of that organ:

* **inconsistency** = per-voxel population standard deviation across models (``ddof=0``; 0 with one model);
  binary map ``std > 0.1`` then morphological opening.
* **uncertainty** = ``mean_m entr(p_m)``; binary map ``> 0.05`` then the same opening.
* **overlap** = voxels where the organ's pseudo-label (mean over models ``> 0.5``) coincides with the pseudo-label of
  any other organ of the overlap set. As in §5.2 it is *not* opened (the opening is only described for the two maps
  above, and it would erase the thin overlap band between touching organs); ``open_overlap=True`` opens it too.
* **attention** = union of the three binary maps. The float inconsistency / uncertainty maps are zeroed outside their
  binary maps and the organ's **heat map** is ``(std + entropy + overlap) / max`` (uint8 when written).

**Opening** = binary erosion then binary dilation, each ``iterations=2`` times, with the 3x3x3 structuring element of
full (26-) connectivity (``scipy.ndimage.generate_binary_structure(3, 3)``); outside the volume counts as background.
A blob survives only if a 5x5x5 cube fits inside it; isolated voxels and bands thinner than 5 voxels vanish.

**Case priority** = the sum over target organs of each organ's attention volume (voxels x voxel volume in mm³; a
voxel flagged for two organs counts twice, as the paper sums per-organ maps). Cases are sorted by it, descending.
Organs of a case are listed by attention volume; the paper's order (by the sum of the heat map) is kept as well.

:func:`compute_case` works on arrays (one organ loaded at a time); reading a predictions folder is
:mod:`aemia.active.prediction_set`, ranking a folder and writing the review files :mod:`aemia.active.review`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from aemia.errors import InputError

# The eight organs annotated in AbdomenAtlas-8K (METHODS.md §5.2, "Labels").
ABDOMENATLAS_ORGANS: tuple[str, ...] = (
    "spleen", "liver", "kidney_right", "kidney_left", "stomach", "gallbladder", "pancreas", "aorta",
    "inferior_vena_cava",
)
# Bit flags of the per-case ``<case>_flags.nii.gz`` map.
FLAG_INCONSISTENCY = 1
FLAG_UNCERTAINTY = 2
FLAG_OVERLAP = 4
FLAG_NAMES = {FLAG_INCONSISTENCY: "inconsistency", FLAG_UNCERTAINTY: "uncertainty", FLAG_OVERLAP: "overlap"}


@dataclass(frozen=True)
class ReviewConfig:
    """Parameters of the attention maps; defaults are the paper's (METHODS.md §5.2).

    Attributes:
        std_threshold: inconsistency binary map is ``std across models > std_threshold`` (paper: 0.1).
        entropy_threshold: uncertainty binary map is ``mean over models of -p ln p > entropy_threshold`` (paper: 0.05).
        opening_iterations: erosion iterations followed by as many dilation iterations (paper: 2).
        connectivity: structuring element ``generate_binary_structure(3, connectivity)``; 3 = the full 3x3x3 cube
            used by the paper (26-neighbourhood).
        pseudo_label_threshold: an organ's pseudo-label is ``mean over models > threshold``. §5.2 says the average
            of the models gives the pseudo-label; 0.5 is the usual sigmoid cut (assumption, not stated in §5.2).
        open_overlap: also open the overlap map (paper: no, see the module docstring).
        overlap_organs: the "other" organs whose pseudo-labels each target organ is checked against (the paper's
            ``ORGAN_NAME_OVERLAP``); ``None`` = all target organs of the case.
    """

    std_threshold: float = 0.1
    entropy_threshold: float = 0.05
    opening_iterations: int = 2
    connectivity: int = 3
    pseudo_label_threshold: float = 0.5
    open_overlap: bool = False
    overlap_organs: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("std_threshold", "entropy_threshold", "pseudo_label_threshold"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value >= 0):
                flag = "--" + name.replace("_", "-")
                raise InputError(None, f"{name} ({flag}) must be a finite number >= 0, got {value!r}")
        if not (isinstance(self.opening_iterations, int) and self.opening_iterations >= 0):
            raise InputError(None, f"opening_iterations must be an integer >= 0, got {self.opening_iterations!r}")
        if self.connectivity not in (1, 2, 3):
            raise InputError(None, f"connectivity must be 1, 2 or 3, got {self.connectivity!r}")


@dataclass(frozen=True)
class Organ:
    """A target organ. ``label`` is the ``--organs`` key: the organ's channel (0-based) in a 4D probability file,
    or its label in the per-organ layout. ``value`` is what the organ map stores for it (default: ``label``)."""

    label: int
    name: str
    value: int | None = None

    @property
    def map_value(self) -> int:
        return self.label if self.value is None else self.value


@dataclass
class OrganAttention:
    """Voxel counts of one organ's binary maps in one case (after opening)."""

    inconsistency: int = 0
    uncertainty: int = 0
    overlap: int = 0
    attention: int = 0
    heat_sum: float = 0.0  # sum of the organ's heat map (std + entropy + overlap) / max, the paper's organ order


@dataclass
class CaseAttention:
    """Attention of one case: per-organ counts plus case-level maps (spatial shape ``(X, Y, Z)``).

    ``flags``: uint8 bit flags, union over organs (1 inconsistency, 2 uncertainty, 4 overlap).
    ``organ_map``: the label of the organ whose attention covers the voxel (the one with the highest heat if
    several), 0 elsewhere. ``heat``: float32 in [0, 1], voxel-wise max over organs of their normalised heat maps.
    ``probability``: float32, voxel-wise max over organs of the mean probability (the figure's background when no
    CT is given).
    """

    organs: dict[str, OrganAttention]
    flags: np.ndarray
    organ_map: np.ndarray
    heat: np.ndarray
    voxel_volume_mm3: float = 1.0
    probability: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=np.float32))

    @property
    def attention_voxels(self) -> int:
        """The paper's case score: attention voxels summed over organs."""
        return int(sum(o.attention for o in self.organs.values()))

    @property
    def attention_mm3(self) -> float:
        return self.attention_voxels * self.voxel_volume_mm3

    def volume_mm3(self, kind: str) -> float:
        """Summed volume over organs of one map: ``inconsistency``, ``uncertainty``, ``overlap`` or ``attention``."""
        return float(sum(getattr(o, kind) for o in self.organs.values())) * self.voxel_volume_mm3

    def organs_by_volume(self) -> list[tuple[str, float]]:
        """Organs with attention, largest attention volume first (ties: name)."""
        items = [(n, o.attention * self.voxel_volume_mm3) for n, o in self.organs.items() if o.attention > 0]
        return sorted(items, key=lambda t: (-t[1], t[0]))

    def organs_by_heat(self) -> list[str]:
        """Organs with a non-zero heat map, largest heat-map sum first (the paper's ``priority.csv`` order)."""
        items = [(n, o.heat_sum) for n, o in self.organs.items() if o.heat_sum > 0]
        return [n for n, _ in sorted(items, key=lambda t: (-t[1], t[0]))]

    def top_slice(self, axis: int = 2) -> int:
        """Index along ``axis`` (2 = axial for NIfTI voxel order) of the slice with the most attention voxels."""
        other = tuple(a for a in range(self.flags.ndim) if a != axis)
        return int(np.argmax((self.flags > 0).sum(axis=other)))


# --------------------------------------------------------------------------------------------- computation


def open_mask(mask: np.ndarray, iterations: int = 2, connectivity: int = 3) -> np.ndarray:
    """Binary opening: ``iterations`` erosions then ``iterations`` dilations (METHODS.md §5.2: 2 and 3x3x3 full).

    Works for 2D masks too (the element is then the 3x3 square of the same connectivity, capped at 2).
    """
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    if iterations <= 0 or not mask.any():
        return mask.copy()
    struct = ndimage.generate_binary_structure(mask.ndim, min(connectivity, mask.ndim))
    eroded = ndimage.binary_erosion(mask, structure=struct, iterations=iterations, border_value=0)
    if not eroded.any():
        return eroded
    return ndimage.binary_dilation(eroded, structure=struct, iterations=iterations)


def entropy_map(probs: np.ndarray) -> np.ndarray:
    """``entr(p) = -p ln p`` (0 at p = 0), i.e. ``scipy.special.entr`` / ``torch.special.entr`` (METHODS.md §0.7)."""
    from scipy.special import entr

    return entr(np.asarray(probs, dtype=np.float32)).astype(np.float32, copy=False)


def organ_statistics(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From one organ's maps of ``M`` models, shape ``(M, ...)``: (std across models (ddof=0), mean over models of
    ``-p ln p``, mean probability). With one model the std is 0 (METHODS.md §5.2)."""
    p = np.asarray(probs, dtype=np.float32)
    if p.ndim < 2:
        raise ValueError(f"expected (models, ...) probabilities, got shape {p.shape}")
    mean = p.mean(axis=0)
    std = p.std(axis=0) if p.shape[0] > 1 else np.zeros_like(mean)
    ent = entropy_map(p).mean(axis=0)
    return std, ent, mean


def compute_case(
    organs: Sequence[Organ],
    load: Callable[[Organ], np.ndarray],
    config: ReviewConfig | None = None,
    voxel_volume_mm3: float = 1.0,
) -> CaseAttention:
    """Attention maps of one case. ``load(organ)`` returns that organ's probabilities, shape ``(M, X, Y, Z)``.

    Organs are loaded one at a time (memory: ``M`` maps of one organ plus a few masks per organ).
    """
    cfg = config or ReviewConfig()
    if not organs:
        raise InputError(None, "no target organs")
    opened: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # name -> (incons bin, uncert bin, float sum)
    pseudo: dict[str, np.ndarray] = {}
    probability: np.ndarray | None = None
    shape: tuple[int, ...] | None = None
    for organ in organs:
        p = np.asarray(load(organ))
        if shape is None:
            shape = p.shape[1:]
        elif p.shape[1:] != shape:
            raise InputError(None, f"organ '{organ.name}' has shape {p.shape[1:]}, other organs {shape}")
        std, ent, mean = organ_statistics(p)
        del p
        inc = open_mask(std > cfg.std_threshold, cfg.opening_iterations, cfg.connectivity)
        unc = open_mask(ent > cfg.entropy_threshold, cfg.opening_iterations, cfg.connectivity)
        # Float maps zeroed outside their binary maps (§5.2), summed for the heat map.
        heat_float = np.where(inc, std, np.float32(0)) + np.where(unc, ent, np.float32(0))
        opened[organ.name] = (inc, unc, heat_float.astype(np.float32, copy=False))
        pseudo[organ.name] = mean > cfg.pseudo_label_threshold
        probability = mean if probability is None else np.maximum(probability, mean)
    assert shape is not None and probability is not None
    overlap_set = [o.name for o in organs if cfg.overlap_organs is None or o.name in cfg.overlap_organs]
    count = np.zeros(shape, dtype=np.uint8)
    for name in overlap_set:
        count += pseudo[name]

    flags = np.zeros(shape, dtype=np.uint8)
    best_heat = np.zeros(shape, dtype=np.float32)
    organ_map = np.zeros(shape, dtype=np.int32)
    stats: dict[str, OrganAttention] = {}
    for organ in organs:
        inc, unc, heat_float = opened.pop(organ.name)
        own = pseudo[organ.name]
        others = count - own.astype(np.uint8) if organ.name in overlap_set else count
        ovl = own & (others > 0)
        if cfg.open_overlap:
            ovl = open_mask(ovl, cfg.opening_iterations, cfg.connectivity)
        att = inc | unc | ovl
        heat = heat_float + ovl.astype(np.float32)
        peak = float(heat.max()) if heat.size else 0.0
        if peak > 0:
            heat /= peak
        stats[organ.name] = OrganAttention(
            inconsistency=int(inc.sum()), uncertainty=int(unc.sum()), overlap=int(ovl.sum()),
            attention=int(att.sum()), heat_sum=float(heat.sum(dtype=np.float64)),
        )
        flags |= inc.astype(np.uint8) * FLAG_INCONSISTENCY
        flags |= unc.astype(np.uint8) * FLAG_UNCERTAINTY
        flags |= ovl.astype(np.uint8) * FLAG_OVERLAP
        # Organ map: attention voxels go to the organ with the highest heat (first organ on ties).
        take = att & ((organ_map == 0) | (heat > best_heat))
        organ_map[take] = organ.map_value
        best_heat[take] = heat[take]
    return CaseAttention(organs=stats, flags=flags, organ_map=organ_map, heat=best_heat,
                         voxel_volume_mm3=float(voxel_volume_mm3), probability=probability)


def compute_case_arrays(
    probs: Mapping[str, np.ndarray], config: ReviewConfig | None = None, voxel_volume_mm3: float = 1.0,
) -> CaseAttention:
    """:func:`compute_case` for in-memory arrays: ``{organ name: (M, X, Y, Z) probabilities}``, labels 1..K."""
    organs = [Organ(label=i + 1, name=n) for i, n in enumerate(probs)]
    return compute_case(organs, lambda o: np.asarray(probs[o.name]), config, voxel_volume_mm3)


def rank_cases(results: Mapping[str, CaseAttention]) -> list[str]:
    """Case ids by attention volume, largest first (ties: case id)."""
    return sorted(results, key=lambda c: (-results[c].attention_mm3, c))
