"""Label-free synthetic liver tumors (Hu et al., CVPR 2023, "Label-Free Liver Tumor Segmentation"; METHODS.md §3).

The published pipeline (METHODS §3.1), reimplemented from its description:

1. **Type** ``tiny | small | medium | large | mix``, each with probability 0.2.
2. **Count** per type (inclusive bounds): tiny 3–10, small 3–10, medium 2–5, large 1–3; ``mix`` draws tiny 3–10,
   small 5–10, medium 2–5 and large 1–3 tumors together.
3. **Location** of every tumor: a slice at ``z = round(U(0.3, 0.7)·(z_end − z_start)) + z_start`` of the organ's
   extent along the axial (superior–inferior) voxel axis; on that slice the organ is eroded in-plane with the
   5×5 kernel of the paper (half-width 2 mm) and a voxel of the eroded slice is drawn uniformly.
4. **Shape**: an ellipsoid with per-axis radii ``U(0.75 r, 1.25 r)`` around the base radius r = 4/8/16/32 mm, in a
   box of 4× the radii, deformed by a random-grid elastic deformation (3×3 control points, Gaussian displacements
   of standard deviation σ, cubic upsampling, nearest-neighbour resampling) applied successively on the axis
   pairs (0, 1), (1, 2), (0, 2); σ is U(0.5, 1) mm (tiny), {1, 2} mm (small), {3..6} mm (medium), {5..10} mm
   (large). The union of the tumors is cut to the organ.
5. **Texture** (the on-the-fly ``get_texture`` variant): ``a`` = Gaussian-filtered uniform noise (σ_a ~ U(3, 15)
   mm), min-max normalised and mapped to ``scale·a + base`` (scale ~ U(0.19, 0.21), base ~ U(0.04, 0.06));
   ``b = 1[a > U(0, 1)]`` (Bernoulli sampling) filtered again (σ_b ~ U(3, 5) mm with probability 0.7, else
   U(5, 8) mm); ``texture = clip(β·b, 0, 1)`` with ``β = u0 / mean(b[b > 0.12])``, u0 ~ U(0.5, 0.55).
6. **Intensity**: ``new = image − texture · G_σ(tumor) · Δ`` inside the organ only, with an edge blur
   σ ~ U(1, 2) mm and a hypo-attenuation Δ ~ U(65, 145) HU drawn once per case; voxels outside the organ never
   change. Labels: background 0, organ 1, tumor 2.

**Any voxel spacing.** Every size above is kept in millimetres (radii, elastic σ, texture σ, edge blur,
erosion) and converted to voxels *per axis* with the voxel spacing (``mm / spacing[axis]``), so anisotropic
volumes are handled without resampling; at 1 mm isotropic this is exactly the published setting, where the
paper's voxel units are millimetres. Nothing is resampled: the organ region is processed at its native grid.

**Memory and speed.** Nothing is precomputed: the texture is generated lazily, in float32, only over the
bounding box of the tumors (plus the edge-blur margin), which lies inside the organ's bounding box — not as ten
420×300×320 float64 volumes (3.2 GB) as in the original. The smooth field ``a`` is drawn on a grid coarser by
up to σ_a/2 voxels and upsampled linearly (it is band-limited at that scale), then min-max normalised.

**Randomness.** Every function takes a :class:`numpy.random.Generator`; nothing touches global RNG state.

**Optional realism extras** (METHODS §0.1: described in the paper, used only for its Visual Turing Test, off
by default here as in the training code):

* vessel avoidance (``avoid_vessels``, active only when a vessel mask is given): tumor centres are never drawn
  on vessel voxels, a placed tumor that overlaps a vessel is redrawn (up to ``max_attempts``), and as a last
  resort vessel voxels are removed from the tumor so a tumor never covers a vessel;
* capsule (``capsule=True``): a thin enhancing rim (``capsule_width_mm``, ``capsule_hu``) just outside each
  tumor, inside the organ;
* mass effect is **not** implemented.

Example::

    rng = np.random.default_rng(0)
    res = synthesize_tumors(ct_hu, liver_mask, rng, affine=img.affine, tumor_type="mix")
    res.image, res.label, [t.diameter_mm for t in res.tumors]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from aemia.errors import InputError

SIZE_TYPES: tuple[str, ...] = ("tiny", "small", "medium", "large")
TUMOR_TYPES: tuple[str, ...] = SIZE_TYPES + ("mix",)
# Lesion-wise evaluation bins on the equivalent diameter (mm): (name, low exclusive, high inclusive).
SIZE_BINS: tuple[tuple[str, float, float], ...] = (("<=5", 0.0, 5.0), ("5-10", 5.0, 10.0), ("10-20", 10.0, 20.0),
                                                   (">20", 20.0, math.inf))
# Target diameters (mm) drawn for each bin by the validation generator.
_BIN_TARGETS: dict[str, tuple[float, float]] = {"<=5": (3.0, 5.0), "5-10": (5.5, 9.5), "10-20": (11.0, 19.0),
                                                ">20": (22.0, 40.0)}


@dataclass(frozen=True)
class TumorConfig:
    """Parameters of the synthesis; the defaults are the paper's (METHODS §3.1). All lengths are in mm.

    ``elastic_sigma_mm`` gives, per size type, ``("uniform", lo, hi)`` or ``("int", lo, hi)`` (inclusive).
    ``size_scale`` multiplies every base radius (METHODS §3.4: allowed for small phantoms; 1.0 = paper).
    """

    type_probabilities: tuple[float, ...] = (0.2, 0.2, 0.2, 0.2, 0.2)  # over TUMOR_TYPES
    radius_mm: dict[str, float] = field(default_factory=lambda: {"tiny": 4.0, "small": 8.0, "medium": 16.0,
                                                                 "large": 32.0})
    counts: dict[str, tuple[int, int]] = field(default_factory=lambda: {"tiny": (3, 10), "small": (3, 10),
                                                                         "medium": (2, 5), "large": (1, 3)})
    mix_counts: dict[str, tuple[int, int]] = field(default_factory=lambda: {"tiny": (3, 10), "small": (5, 10),
                                                                             "medium": (2, 5), "large": (1, 3)})
    elastic_sigma_mm: dict[str, tuple[str, float, float]] = field(default_factory=lambda: {
        "tiny": ("uniform", 0.5, 1.0), "small": ("int", 1, 2), "medium": ("int", 3, 6), "large": ("int", 5, 10)})
    radius_jitter: tuple[float, float] = (0.75, 1.25)
    box_factor: float = 4.0  # the ellipsoid is drawn in a box of box_factor × radius per axis
    elastic_points: int = 3
    z_range: tuple[float, float] = (0.3, 0.7)
    erosion_mm: float = 2.0  # in-plane half-width of the 5×5 erosion kernel at 1 mm
    edge_blur_mm: tuple[float, float] = (1.0, 2.0)
    hu_drop: tuple[float, float] = (65.0, 145.0)
    texture_sigma_a_mm: tuple[float, float] = (3.0, 15.0)
    texture_sigma_b_mm: tuple[tuple[float, float], tuple[float, float]] = ((3.0, 5.0), (5.0, 8.0))
    texture_sigma_b_p_first: float = 0.7
    texture_scale: tuple[float, float] = (0.19, 0.21)
    texture_base: tuple[float, float] = (0.04, 0.06)
    texture_u0: tuple[float, float] = (0.5, 0.55)
    texture_threshold: float = 0.12
    size_scale: float = 1.0
    allow_overlap: bool = True  # the paper lets tumors overlap; validation sets keep them apart
    max_attempts: int = 20
    avoid_vessels: bool = True  # only used when a vessel mask is given
    capsule: bool = False
    capsule_width_mm: float = 1.5
    capsule_hu: tuple[float, float] = (10.0, 30.0)

    def __post_init__(self) -> None:
        if len(self.type_probabilities) != len(TUMOR_TYPES) or abs(sum(self.type_probabilities) - 1.0) > 1e-6:
            raise ValueError(f"type_probabilities must be {len(TUMOR_TYPES)} values summing to 1")


@dataclass
class SynthTumor:
    """One synthesized tumor. ``centre_voxel`` is the ellipsoid centre (an organ voxel), ``centre_mm`` its
    world (RAS, mm) position through the affine; diameters are equivalent-sphere diameters ``(6V/π)^(1/3)``
    of the tumor inside the organ (``diameter_mm``) and of the whole deformed shape (``shape_diameter_mm``)."""

    id: int
    type: str
    centre_voxel: tuple[int, int, int]
    centre_mm: tuple[float, float, float]
    diameter_mm: float
    shape_diameter_mm: float
    volume_mm3: float
    n_voxels: int
    mean_hu_drop: float
    size_bin: str


@dataclass
class SynthesisResult:
    """``image``: float32 HU with tumors; ``label``: uint8 0/1/2; ``instances``: tumor ids (uint8, int16 above 254 tumors) (0 = none; where
    tumors overlap the later one wins); ``hu_drop``: Δ of the case; ``tumor_type`` as drawn."""

    image: np.ndarray
    label: np.ndarray
    instances: np.ndarray
    tumors: list[SynthTumor]
    tumor_type: str
    hu_drop: float
    spacing: tuple[float, float, float]


@dataclass
class _Plan:
    type: str
    radius_mm: float
    sigma_mm: float
    jitter: tuple[float, float]
    bin: tuple[str, float, float] | None = None


# ----------------------------------------------------------------------------------------------- helpers


def spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size (mm) per axis: the norms of the affine's first three columns."""
    sp = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    return (float(sp[0]), float(sp[1]), float(sp[2]))


def axial_axis(affine: np.ndarray | None) -> int:
    """The voxel axis most aligned with the world superior–inferior axis (2 for the usual NIfTI layout)."""
    if affine is None:
        return 2
    a = np.asarray(affine, dtype=np.float64)[:3, :3]
    cos = np.abs(a[2]) / np.maximum(np.linalg.norm(a, axis=0), 1e-12)
    return int(np.argmax(cos))


def equivalent_diameter_mm(n_voxels: int, spacing: Sequence[float]) -> float:
    """Diameter of the sphere with the volume of ``n_voxels`` voxels of size ``spacing`` (mm)."""
    vol = float(n_voxels) * float(np.prod(spacing))
    return float((6.0 * vol / math.pi) ** (1.0 / 3.0))


def size_bin(diameter_mm: float) -> str:
    """Name of the lesion-size bin (``<=5``, ``5-10``, ``10-20``, ``>20`` mm) holding ``diameter_mm``."""
    for name, lo, hi in SIZE_BINS:
        if lo < diameter_mm <= hi:
            return name
    return SIZE_BINS[0][0]


def sample_tumor_type(rng: np.random.Generator, config: TumorConfig | None = None) -> str:
    """Draw ``tiny | small | medium | large | mix`` with the configured probabilities (0.2 each)."""
    cfg = config or TumorConfig()
    return str(rng.choice(TUMOR_TYPES, p=np.asarray(cfg.type_probabilities, dtype=np.float64)))


def _draw_sigma(rng: np.random.Generator, spec: tuple[str, float, float]) -> float:
    kind, lo, hi = spec
    if kind == "int":
        return float(rng.integers(int(lo), int(hi), endpoint=True))
    return float(rng.uniform(lo, hi))


def plan_tumors(rng: np.random.Generator, tumor_type: str, config: TumorConfig | None = None) -> list[tuple[str, float, float]]:
    """The tumors of one case as ``(size type, base radius mm, elastic σ mm)``; counts drawn per type."""
    cfg = config or TumorConfig()
    if tumor_type not in TUMOR_TYPES:
        raise ValueError(f"tumor type must be one of {', '.join(TUMOR_TYPES)}, got {tumor_type!r}")
    table = cfg.mix_counts if tumor_type == "mix" else {tumor_type: cfg.counts[tumor_type]}
    out: list[tuple[str, float, float]] = []
    for t in SIZE_TYPES:
        if t not in table:
            continue
        lo, hi = table[t]
        for _ in range(int(rng.integers(lo, hi, endpoint=True))):
            out.append((t, cfg.radius_mm[t] * cfg.size_scale, _draw_sigma(rng, cfg.elastic_sigma_mm[t])))
    return out


# ----------------------------------------------------------------------------------------------- shape


def elastic_deform_random_grid(mask: np.ndarray, rng: np.random.Generator, sigma_vox: Sequence[float],
                               points: int = 3,
                               axis_pairs: Sequence[tuple[int, int]] = ((0, 1), (1, 2), (0, 2))) -> np.ndarray:
    """Random-grid elastic deformation of a 3D mask, one axis pair at a time (nearest-neighbour resampling).

    For each pair (a, b): Gaussian displacements of standard deviation ``sigma_vox[a]`` / ``sigma_vox[b]`` voxels
    on a ``points × points`` control grid spanning the array (corners included) are upsampled with cubic splines
    to every (a, b) position; the same in-plane field applies along the third axis and
    ``out(x) = mask(round(x + d(x)))`` (zero outside), which is order-0 ``map_coordinates`` done by indexing.
    """
    out = np.asarray(mask, dtype=bool)
    for a, b in axis_pairs:
        na, nb = out.shape[a], out.shape[b]
        coarse = rng.normal(0.0, 1.0, size=(2, points, points))
        coarse[0] *= float(sigma_vox[a])
        coarse[1] *= float(sigma_vox[b])
        if na < 2 or nb < 2:
            continue
        ga, gb = np.meshgrid(np.linspace(0, points - 1, na), np.linspace(0, points - 1, nb), indexing="ij")
        da = ndimage.map_coordinates(coarse[0], [ga, gb], order=3, mode="nearest")
        db = ndimage.map_coordinates(coarse[1], [ga, gb], order=3, mode="nearest")
        ia, ib = np.meshgrid(np.arange(na), np.arange(nb), indexing="ij")
        sa = np.rint(ia + da).astype(np.int64)
        sb = np.rint(ib + db).astype(np.int64)
        valid = (sa >= 0) & (sa < na) & (sb >= 0) & (sb < nb)
        moved = np.moveaxis(out, (a, b), (0, 1))
        res = moved[np.clip(sa, 0, na - 1), np.clip(sb, 0, nb - 1)]
        res &= valid[..., None]
        out = np.moveaxis(res, (0, 1), (a, b))
    return np.ascontiguousarray(out)


def ellipsoid_tumor_shape(rng: np.random.Generator, radius_mm: float, sigma_mm: float,
                          spacing: Sequence[float], jitter: tuple[float, float] = (0.75, 1.25),
                          box_factor: float = 4.0, points: int = 3) -> np.ndarray:
    """A deformed ellipsoid (bool, odd box centred on the middle voxel) with per-axis radii ``U(jitter)·r`` mm.

    The box spans ``box_factor × radius`` per axis (as in the paper, so the elastic grid has the same scale);
    σ (mm) is converted to voxels per axis. The centre voxel is always inside the undeformed ellipsoid.
    """
    sp = np.asarray(spacing, dtype=np.float64)
    radii = rng.uniform(jitter[0] * radius_mm, jitter[1] * radius_mm, size=3)
    half = np.maximum(np.ceil(box_factor * radii / 2.0 / sp).astype(int), 1)
    grids = [(np.arange(-h, h + 1) * s / r) ** 2 for h, s, r in zip(half, sp, radii)]
    # one float32 box summed in place (a large tumor's box at 1 mm is about 161³ voxels)
    acc = (grids[0][:, None] + grids[1][None, :]).astype(np.float32)[:, :, None] + grids[2].astype(np.float32)[None, None, :]
    ell = acc <= 1.0
    del acc
    if sigma_mm > 0:
        ell = elastic_deform_random_grid(ell, rng, sigma_mm / sp, points=points)
    return ell


# ----------------------------------------------------------------------------------------------- location


def select_location(rng: np.random.Generator, organ: np.ndarray, spacing: Sequence[float], axis: int = 2,
                    config: TumorConfig | None = None, forbidden: np.ndarray | None = None) -> tuple[int, int, int]:
    """A tumor centre: slice at ``U(0.3, 0.7)`` of the organ's extent along ``axis``, organ slice eroded in-plane
    (5×5 at 1 mm = 2 mm half-width, converted per axis), uniform voxel of it. Voxels of ``forbidden`` (e.g.
    vessels) are never chosen. Falls back to the uneroded slice, then to any allowed organ voxel."""
    cfg = config or TumorConfig()
    allowed = organ if forbidden is None else organ & ~forbidden
    idx = np.nonzero(np.any(allowed, axis=tuple(i for i in range(3) if i != axis)))[0]
    if idx.size == 0:
        raise InputError(None, "organ mask has no voxel where a tumor can be placed")
    z0, z1 = int(idx[0]), int(idx[-1])
    inplane = [i for i in range(3) if i != axis]
    half = [int(round(cfg.erosion_mm / float(spacing[i]))) for i in inplane]
    struct = np.ones((2 * half[0] + 1, 2 * half[1] + 1), dtype=bool)
    for _ in range(cfg.max_attempts):
        z = int(round(rng.uniform(*cfg.z_range) * (z1 - z0))) + z0
        sl = np.take(organ, z, axis=axis)
        cand = ndimage.binary_erosion(sl, structure=struct) if struct.size > 1 else sl
        if forbidden is not None:
            fb = np.take(forbidden, z, axis=axis)
            cand = cand & ~fb
            sl = sl & ~fb
        if not cand.any():
            cand = sl
        pts = np.argwhere(cand)
        if len(pts):
            p = pts[int(rng.integers(len(pts)))]
            centre = [0, 0, 0]
            centre[axis], centre[inplane[0]], centre[inplane[1]] = z, int(p[0]), int(p[1])
            return (centre[0], centre[1], centre[2])
    pts = np.argwhere(allowed)
    p = pts[int(rng.integers(len(pts)))]
    return (int(p[0]), int(p[1]), int(p[2]))


# ----------------------------------------------------------------------------------------------- texture


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: np.ndarray) -> np.ndarray:
    """Gaussian-filtered uniform noise, drawn on a grid up to σ/2 coarser and upsampled linearly (float32)."""
    step = np.maximum(np.floor(sigma_vox / 2.0), 1).astype(int)
    coarse_shape = tuple(int(math.ceil((n - 1) / s)) + 1 for n, s in zip(shape, step))
    noise = rng.random(coarse_shape, dtype=np.float32)
    noise = ndimage.gaussian_filter(noise, sigma=sigma_vox / step, mode="reflect")
    if np.all(step == 1):
        return noise
    return _upsample_linear(noise, shape, step)


def _upsample_linear(arr: np.ndarray, shape: tuple[int, ...], step: np.ndarray) -> np.ndarray:
    """Separable linear interpolation of a coarse grid (node k at fine index k·step) to ``shape``."""
    out = arr
    for ax, (n, s) in enumerate(zip(shape, step)):
        if s == 1:
            continue
        x = np.arange(n, dtype=np.float32) / np.float32(s)
        i0 = np.minimum(np.floor(x).astype(np.int64), out.shape[ax] - 1)
        i1 = np.minimum(i0 + 1, out.shape[ax] - 1)
        w = (x - i0).astype(np.float32)
        wshape = [1] * out.ndim
        wshape[ax] = n
        w = w.reshape(wshape)
        lo = np.take(out, i0, axis=ax)
        lo *= 1.0 - w
        lo += np.take(out, i1, axis=ax) * w
        out = lo
    return np.ascontiguousarray(out, dtype=np.float32)


def generate_texture(rng: np.random.Generator, shape: tuple[int, int, int], spacing: Sequence[float],
                     config: TumorConfig | None = None) -> np.ndarray:
    """The tumor texture of METHODS §3.1 step 5 (``get_texture`` variant), float32 in [0, 1], of ``shape``.

    σ_a ~ U(3, 15) mm and σ_b ~ U(3, 5) mm (p 0.7) else U(5, 8) mm, converted to voxels per axis.
    """
    cfg = config or TumorConfig()
    sp = np.asarray(spacing, dtype=np.float64)
    sigma_a = rng.uniform(*cfg.texture_sigma_a_mm)
    first, second = cfg.texture_sigma_b_mm
    sigma_b = rng.uniform(*first) if rng.random() < cfg.texture_sigma_b_p_first else rng.uniform(*second)
    # in place where possible (same values as the out-of-place formulas): a large tumor's region at 1 mm is
    # several million voxels, and every temporary would be another 20 MB
    a = _smooth_noise(rng, shape, sigma_a / sp)
    lo, hi = float(a.min()), float(a.max())
    if hi > lo:
        a -= lo
        a /= hi - lo
    else:
        a[...] = 0.0
    a *= np.float32(rng.uniform(*cfg.texture_scale))
    a += np.float32(rng.uniform(*cfg.texture_base))
    r = rng.random(shape, dtype=np.float32)
    hit = a > r
    del a
    r[...] = hit  # Bernoulli samples as float32, in the uniform draws' buffer
    del hit
    b = ndimage.gaussian_filter(r, sigma=sigma_b / sp, mode="reflect")
    del r
    sel = b[b > cfg.texture_threshold]
    denom = float(sel.mean()) if sel.size else max(float(b.max()), 1e-6)
    del sel
    beta = rng.uniform(*cfg.texture_u0) / denom
    b *= np.float32(beta)
    return np.clip(b, 0.0, 1.0, out=b)


# ----------------------------------------------------------------------------------------------- synthesis


def _prepare(image: np.ndarray, organ_mask: np.ndarray, spacing: Sequence[float] | None,
             affine: np.ndarray | None, vessel_mask: np.ndarray | None):
    img = np.asarray(image)
    organ = np.asarray(organ_mask).astype(bool, copy=False)
    if img.ndim != 3:
        raise ValueError(f"image must be a 3D array (X, Y, Z), got shape {img.shape}")
    if organ.shape != img.shape:
        raise ValueError(f"organ mask shape {organ.shape} differs from image shape {img.shape}")
    if vessel_mask is not None and np.shape(vessel_mask) != img.shape:
        raise ValueError(f"vessel mask shape {np.shape(vessel_mask)} differs from image shape {img.shape}")
    if not organ.any():
        raise InputError(None, "organ mask has no voxels: cannot place tumors")
    if spacing is None:
        spacing = spacing_from_affine(affine) if affine is not None else (1.0, 1.0, 1.0)
    sp = tuple(float(s) for s in spacing)
    if len(sp) != 3 or min(sp) <= 0:
        raise ValueError(f"spacing must be 3 positive values in mm, got {spacing}")
    return img, organ, sp


def _paste_box(shape_box: np.ndarray, centre: Sequence[int], vol_shape: Sequence[int]):
    """Slices into the volume and into the box for a box centred on ``centre`` (clipped at the borders)."""
    vol_sl, box_sl = [], []
    for c, n, hb in zip(centre, vol_shape, shape_box.shape):
        h = hb // 2
        lo, hi = c - h, c + h + 1
        vol_sl.append(slice(max(lo, 0), min(hi, n)))
        box_sl.append(slice(max(lo, 0) - lo, hb - (hi - min(hi, n))))
    return tuple(vol_sl), tuple(box_sl)


def _synthesize(image: np.ndarray, organ_mask: np.ndarray, rng: np.random.Generator, plans: list[_Plan],
                tumor_type: str, spacing: Sequence[float] | None, affine: np.ndarray | None,
                config: TumorConfig, vessel_mask: np.ndarray | None, allow_overlap: bool,
                inplace: bool = False) -> SynthesisResult:
    img, organ_full, sp = _prepare(image, organ_mask, spacing, affine, vessel_mask)
    aff = np.asarray(affine, dtype=np.float64) if affine is not None else np.diag([*sp, 1.0])
    axis = axial_axis(affine)
    # Work inside the organ's bounding box only (from per-axis projections: no voxel coordinate lists).
    bb = []
    for ax in range(3):
        hit = np.flatnonzero(np.any(organ_full, axis=tuple(i for i in range(3) if i != ax)))
        bb.append(slice(int(hit[0]), int(hit[-1]) + 1))
    bb = tuple(bb)
    offset = np.array([s.start for s in bb])
    organ = organ_full[bb]
    vessels = None
    if vessel_mask is not None and config.avoid_vessels:
        vessels = np.asarray(vessel_mask).astype(bool)[bb] & organ
        if not vessels.any():
            vessels = None
    union = np.zeros(organ.shape, dtype=bool)
    id_dtype = np.uint8 if len(plans) < 255 else np.int16  # tumor ids; uint8 keeps a 1 mm volume small
    instances = np.zeros(organ.shape, dtype=id_dtype)
    # plan, centre (crop voxel), slices into the crop, tumor mask in those slices (cut to the organ), shape voxels
    kept: list[tuple[_Plan, tuple[int, int, int], tuple[slice, ...], np.ndarray, int]] = []
    for plan in plans:
        placed = None
        for attempt in range(config.max_attempts):
            last = attempt == config.max_attempts - 1
            centre = select_location(rng, organ, sp, axis=axis, config=config, forbidden=vessels)
            shape = ellipsoid_tumor_shape(rng, plan.radius_mm, plan.sigma_mm, sp, jitter=plan.jitter,
                                          box_factor=config.box_factor, points=config.elastic_points)
            n_shape = int(shape.sum())
            if n_shape == 0:
                continue
            vsl, bsl = _paste_box(shape, centre, organ.shape)
            m = shape[bsl] & organ[vsl]
            if vessels is not None and (m & vessels[vsl]).any():
                if not last:
                    continue
                m &= ~vessels[vsl]
            if not m.any():
                continue
            if not allow_overlap:
                grown = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(vsl, organ.shape))
                mm = np.zeros([g.stop - g.start for g in grown], dtype=bool)
                mm[tuple(slice(s.start - g.start, s.stop - g.start) for s, g in zip(vsl, grown))] = m
                if (ndimage.binary_dilation(mm) & union[grown]).any():
                    continue
            if plan.bin is not None:
                d = equivalent_diameter_mm(int(m.sum()), sp)
                if not plan.bin[1] < d <= plan.bin[2]:
                    continue
            placed = (centre, vsl, m, n_shape)
            break
        if placed is None:
            continue
        centre, vsl, m, n_shape = placed
        union[vsl] |= m
        instances[vsl][m] = len(kept) + 1
        kept.append((plan, centre, vsl, m, n_shape))

    delta = float(rng.uniform(*config.hu_drop))
    drop = np.zeros(organ.shape, dtype=np.float32)
    if union.any():
        blur_mm = float(rng.uniform(*config.edge_blur_mm))
        blur_vox = blur_mm / np.asarray(sp)
        margin = np.ceil(4.0 * blur_vox).astype(int) + 1
        if config.capsule:
            margin = margin + np.ceil(2 * config.capsule_width_mm / np.asarray(sp)).astype(int)
        tz = np.nonzero(union)
        rb = tuple(slice(max(int(ix.min()) - mg, 0), min(int(ix.max()) + 1 + mg, n))
                   for ix, mg, n in zip(tz, margin, organ.shape))
        region = union[rb]
        tex = generate_texture(rng, region.shape, sp, config)
        geo = ndimage.gaussian_filter(region.astype(np.float32), sigma=blur_vox, mode="constant")
        tex *= geo
        del geo
        tex *= np.float32(delta)
        tex *= organ[rb]
        drop[rb] = tex
        del tex
        if config.capsule:
            width = np.maximum(np.rint(config.capsule_width_mm / np.asarray(sp)).astype(int), 1)
            struct = np.ones(tuple(2 * w + 1 for w in width), dtype=bool)
            ring = ndimage.binary_dilation(region, structure=struct) & ~region & organ[rb]
            ring_f = ndimage.gaussian_filter(ring.astype(np.float32), sigma=0.5 * blur_vox) * organ[rb]
            drop[rb] -= ring_f * np.float32(rng.uniform(*config.capsule_hu))
    # full-size outputs only now, after the texture's temporaries are gone (peak memory at 1 mm)
    out = img if inplace and img.dtype == np.float32 else img.astype(np.float32, copy=True)
    label = organ_full.astype(np.uint8)
    inst_full = np.zeros(img.shape, dtype=id_dtype)
    if union.any():
        crop = out[bb]
        crop -= drop
        out[bb] = crop
        lab = label[bb]
        lab[union] = 2
        label[bb] = lab
        inst_full[bb] = instances

    tumors: list[SynthTumor] = []
    for k, (plan, centre, vsl, m, n_shape) in enumerate(kept, start=1):
        n = int(m.sum())
        cv = tuple(int(c + o) for c, o in zip(centre, offset))
        world = aff @ np.array([*cv, 1.0])
        d_mm = equivalent_diameter_mm(n, sp)
        tumors.append(SynthTumor(
            id=k, type=plan.type, centre_voxel=(cv[0], cv[1], cv[2]),
            centre_mm=(float(world[0]), float(world[1]), float(world[2])), diameter_mm=d_mm,
            shape_diameter_mm=equivalent_diameter_mm(n_shape, sp), volume_mm3=n * float(np.prod(sp)), n_voxels=n,
            mean_hu_drop=float(drop[vsl][m].mean()), size_bin=size_bin(d_mm)))
    return SynthesisResult(image=out, label=label, instances=inst_full, tumors=tumors, tumor_type=tumor_type,
                           hu_drop=delta, spacing=(sp[0], sp[1], sp[2]))


def synthesize_tumors(image: np.ndarray, organ_mask: np.ndarray, rng: np.random.Generator, *,
                      tumor_type: str | None = None, spacing: Sequence[float] | None = None,
                      affine: np.ndarray | None = None, config: TumorConfig | None = None,
                      vessel_mask: np.ndarray | None = None, inplace: bool = False) -> SynthesisResult:
    """Synthesize liver tumors into ``image`` (HU, 3D ``(X, Y, Z)``) inside ``organ_mask`` (METHODS §3.1).

    Hu et al., CVPR 2023 "Label-Free Liver Tumor Segmentation". ``tumor_type`` None draws one of
    ``tiny | small | medium | large | mix`` (p 0.2 each). ``spacing`` (mm per axis) defaults to the affine's
    column norms, else 1 mm; every size is converted from mm to voxels per axis (anisotropic grids are fine).
    ``affine`` maps voxels to world mm for the reported centres and tells which voxel axis is axial.
    ``vessel_mask`` enables vessel avoidance (see the module docstring). ``inplace=True`` writes the tumors into
    ``image`` itself when it is float32 (as the original transform writes into its data dictionary), saving one
    volume of memory; ``result.image`` is then ``image``. Raises
    :class:`aemia.errors.InputError` if the organ mask is empty.
    """
    cfg = config or TumorConfig()
    ttype = tumor_type if tumor_type is not None else sample_tumor_type(rng, cfg)
    plans = [_Plan(t, r, s, cfg.radius_jitter) for t, r, s in plan_tumors(rng, ttype, cfg)]
    return _synthesize(image, organ_mask, rng, plans, ttype, spacing, affine, cfg, vessel_mask, cfg.allow_overlap,
                       inplace)


def synthesize_validation_tumors(image: np.ndarray, organ_mask: np.ndarray, rng: np.random.Generator, *,
                                 per_bin: int = 2, bins: Sequence[str] | None = None,
                                 spacing: Sequence[float] | None = None, affine: np.ndarray | None = None,
                                 config: TumorConfig | None = None,
                                 vessel_mask: np.ndarray | None = None, inplace: bool = False) -> SynthesisResult:
    """A validation case with ``per_bin`` separate tumors in each size bin (``<=5``, ``5-10``, ``10-20``,
    ``>20`` mm equivalent diameter, measured inside the organ), so lesion-wise sensitivity per size can be
    measured. Same shape, texture and intensity model as :func:`synthesize_tumors`; radii jitter ±10 % around a
    target diameter drawn inside the bin, elastic σ of the nearest published size type, no overlap (tumors
    are at least one voxel apart), and a placement is redrawn until its measured diameter falls in its bin.
    Tumors that cannot be placed after ``max_attempts`` are left out (check ``len(result.tumors)``); large
    bins are placed first."""
    cfg = config or TumorConfig()
    names = list(bins) if bins is not None else [b[0] for b in SIZE_BINS]
    table = {b[0]: b for b in SIZE_BINS}
    plans: list[_Plan] = []
    for name in reversed(names):
        if name not in table:
            raise ValueError(f"unknown size bin {name!r}; expected one of {', '.join(table)}")
        for _ in range(per_bin):
            d = float(rng.uniform(*_BIN_TARGETS[name]))
            r = d / 2.0
            ttype = min(SIZE_TYPES, key=lambda t: abs(math.log(cfg.radius_mm[t] / r)))
            plans.append(_Plan(ttype, r, _draw_sigma(rng, cfg.elastic_sigma_mm[ttype]) * min(1.0, r / cfg.radius_mm[ttype]),
                               (0.9, 1.1), table[name]))
    return _synthesize(image, organ_mask, rng, plans, "validation", spacing, affine, cfg, vessel_mask, False, inplace)
