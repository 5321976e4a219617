"""Models Genesis input transformations (Zhou et al., MICCAI 2019; Medical Image Analysis 2021).

A cube (3D, ``(C, X, Y, Z)``) or patch (2D, ``(C, H, W)``) with values in [0, 1] is turned into a pair
``(input, target)``: the network learns to restore ``target`` from ``input``. The four transformations and their
parameters are the published ones (``../shared/reference/METHODS.md`` §1.2, read from the original
``pytorch/utils.py`` and ``config.py``), applied in the published order:

1. **flip** (input *and* target): while ``rand < 0.4`` and fewer than 3 flips, flip a random spatial axis;
2. **local pixel shuffling**, p 0.5: 10,000 blocks, size per axis ``randint(1, dim // 10)`` (inclusive), uniform
   position; the voxels of each block are permuted, reading from the unshuffled cube, later blocks overwrite
   earlier ones;
3. **non-linear intensity transform**, p 0.9: a cubic Bézier curve through (0,0), (u1,u2), (u3,u4), (1,1),
   ``u ~ U(0,1)``, sampled at 100,000 points and applied with ``np.interp``; half of the curves are inverting
   (see :func:`intensity_curve`);
4. **painting**, p 0.9: in-painting with p 0.2 (up to 5 blocks of U(0,1) noise, continuing while ``rand < 0.95``,
   size ``randint(dim // 6, dim // 3)``, origin ``randint(3, dim - size - 3)``), otherwise out-painting (the cube
   becomes U(0,1) noise and the original is pasted back in one window of size ``dim - randint(3 dim // 7,
   4 dim // 7)`` plus up to 4 more windows while ``rand < 0.95``).

The target is the original cube including any flip. Every size is relative to the patch (``dim // 10``,
``dim // 6`` ...), so the rules scale from the paper's 64x64x32 cubes to 32x32x16 CPU cubes and to 2D patches.
Every function takes a :class:`numpy.random.Generator`; the same seed gives the same output. Nothing here loops
over voxels or shuffle blocks in Python (the original loops over the 10,000 blocks).

Use :class:`GenesisTransform`::

    tf = GenesisTransform()                       # the paper's probabilities
    x_in, x_target = tf(cube, np.random.default_rng(0))
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "Box",
    "GenesisResult",
    "GenesisTransform",
    "ShuffleBlocks",
    "apply_curve",
    "bezier_curve",
    "flip",
    "in_paint",
    "intensity_curve",
    "local_pixel_shuffle",
    "nonlinear_transform",
    "out_paint",
    "sample_inpaint_boxes",
    "sample_outpaint_boxes",
    "sample_shuffle_blocks",
]


# --------------------------------------------------------------------------------------------------- helpers
@dataclass(frozen=True)
class Box:
    """An axis-aligned box in spatial coordinates: ``origin`` (inclusive) and ``size``, one value per axis."""

    origin: tuple[int, ...]
    size: tuple[int, ...]

    @property
    def slices(self) -> tuple[slice, ...]:
        """Spatial slices (prepend ``slice(None)`` / ``...`` for the channel axis)."""
        return tuple(slice(o, o + s) for o, s in zip(self.origin, self.size))


def _check(x: np.ndarray) -> int:
    """Return the number of spatial axes of a channels-first 2D/3D array, or raise ValueError."""
    if x.ndim not in (3, 4):
        raise ValueError(f"expected a channels-first 2D (C, H, W) or 3D (C, X, Y, Z) array, got shape {x.shape}")
    return x.ndim - 1


def _randint(rng: np.random.Generator, lo: int, hi: int) -> int:
    """Inclusive ``randint(lo, hi)`` as in Python's :func:`random.randint` (used by the original code)."""
    return int(rng.integers(lo, hi + 1))


def _margin(dim: int, size: int, margin: int) -> int:
    """The published 3-voxel margin, reduced only when the axis is too short to leave it on both sides."""
    return max(0, min(margin, (dim - size) // 2))


# --------------------------------------------------------------------------------------------------- 1. flip
def flip(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, rate: float = 0.4,
         max_flips: int = 3) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Flip input and target identically (METHODS §1.2 step 1: ``while rand < 0.4`` and < 3 flips).

    Each flip is along a spatial axis drawn uniformly (3D: X, Y, Z; 2D: H, W). Returns ``(x, y, axes)`` with
    ``axes`` the spatial axes flipped in order (0-based, not counting the channel axis). Copies, never views.
    """
    ndim = _check(x)
    if x.shape != y.shape:
        raise ValueError(f"input {x.shape} and target {y.shape} differ")
    axes: list[int] = []
    while len(axes) < max_flips and rng.random() < rate:
        axes.append(int(rng.integers(ndim)))
    # flipping an axis twice is the identity: apply each axis' net parity once
    net = tuple(1 + a for a in sorted(set(axes)) if axes.count(a) % 2 == 1)
    if not net:
        return x.copy(), y.copy(), axes
    return np.ascontiguousarray(np.flip(x, axis=net)), np.ascontiguousarray(np.flip(y, axis=net)), axes


# -------------------------------------------------------------------------------------- 2. local shuffling
@dataclass(frozen=True)
class ShuffleBlocks:
    """The blocks of one local-pixel-shuffle: ``origins`` and ``sizes``, both int arrays of shape (B, ndim)."""

    origins: np.ndarray
    sizes: np.ndarray


def sample_shuffle_blocks(spatial_shape: tuple[int, ...], rng: np.random.Generator, num_blocks: int = 10_000,
                          divisor: int = 10) -> ShuffleBlocks:
    """Draw the shuffle blocks (METHODS §1.2 step 2): size per axis ``randint(1, dim // 10)``, uniform origin.

    ``dim // divisor`` is raised to 1 for axes shorter than ``divisor`` (the original would fail there).
    Draw order: ``U(0,1)`` of shape ``(B, ndim)`` for the sizes, then another for the origins; a uniform
    integer in ``[0, n)`` is ``floor(u·n)`` (bias < 2^-45 for these n; a third of the cost of ``integers``
    with per-block bounds).
    """
    dims = np.asarray(spatial_shape, dtype=np.int64)
    hi = np.maximum(dims // divisor, 1)
    sizes = 1 + _uniform_below(rng.random((num_blocks, dims.size)), hi)
    origins = _uniform_below(rng.random((num_blocks, dims.size)), dims - sizes + 1)
    return ShuffleBlocks(origins=origins, sizes=sizes)


def _uniform_below(u: np.ndarray, n: np.ndarray) -> np.ndarray:
    """``floor(u·n)`` for ``u`` in [0, 1): a uniform integer in ``[0, n)`` (clamped against rounding up)."""
    return np.minimum((u * n).astype(np.int64), n - 1)


_TABLE_LIMIT = 2_000_000  # entries; larger block-shape tables fall back to index arithmetic


@functools.lru_cache(maxsize=16)
def _offset_table(max_sizes: tuple[int, ...], strides: tuple[int, ...]) -> np.ndarray | None:
    """Flat voxel offsets (C order) inside every block shape, padded to the largest block: (shapes * M,)."""
    m = int(np.prod(max_sizes))
    if m * m > _TABLE_LIMIT:
        return None
    table = np.zeros((m, m), dtype=np.int64)
    for shape_id, shape in enumerate(np.ndindex(*max_sizes)):
        size = tuple(s + 1 for s in shape)
        grids = np.indices(size).reshape(len(size), -1)
        table[shape_id, : grids.shape[1]] = np.tensordot(np.asarray(strides), grids, axes=1)
    table.setflags(write=False)
    return table.reshape(-1)


def _block_voxels(blocks: ShuffleBlocks, spatial_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat voxel index of every (block, position-in-block) entry (blocks in order, C order inside a block),
    and per block its entry count and first entry index."""
    sizes, origins = blocks.sizes.astype(np.int64), blocks.origins.astype(np.int64)
    strides = tuple(int(np.prod(spatial_shape[i + 1:])) for i in range(len(spatial_shape)))
    counts = np.prod(sizes, axis=1)
    ends = np.cumsum(counts)
    total = int(ends[-1])
    starts = ends - counts
    base = origins @ np.asarray(strides, dtype=np.int64)
    max_sizes = tuple(int(v) for v in sizes.max(axis=0))
    table = _offset_table(max_sizes, strides)
    if table is not None:
        m = int(np.prod(max_sizes))
        shape_id = np.ravel_multi_index(tuple((sizes - 1).T), max_sizes)
        idx = np.arange(total, dtype=np.int64) + np.repeat(shape_id * m - starts, counts)
        return np.repeat(base, counts) + np.take(table, idx), counts, starts
    # general path: decompose the position inside the block into per-axis coordinates
    local = np.arange(total, dtype=np.int64) - np.repeat(starts, counts)
    offset = np.repeat(base, counts)
    for axis in range(len(spatial_shape) - 1, -1, -1):
        s = np.repeat(sizes[:, axis], counts)
        offset += (local % s) * strides[axis]
        local //= s
    return offset, counts, starts


@dataclass(frozen=True)
class ShuffleKeys:
    """The random sort keys of one local-pixel-shuffle, one per block voxel (entries in block order, C order
    inside a block), already shifted left by ``local_bits``; ``None`` keys mean the argsort fallback."""

    keys: np.ndarray | None
    local_bits: int
    fallback: np.ndarray | None = None  # the fallback's U(0,1) draws


def draw_shuffle_keys(blocks: ShuffleBlocks, rng: np.random.Generator) -> ShuffleKeys:
    """Draw the permutations of :func:`local_pixel_shuffle`'s blocks: ``total`` raw 64-bit words
    (``rng.bit_generator.random_raw``, one per block voxel); a block's permutation is the order of its words'
    top ``key_bits = 63 - local_bits - block_bits`` bits, two equal keys (probability < 1e-9 per block at the
    paper's sizes) ordered by position. With fewer than 30 key bits it draws ``U(0,1)`` per voxel instead."""
    counts = np.prod(blocks.sizes.astype(np.int64), axis=1)
    total = int(counts.sum())
    local_bits = max(1, int(counts.max() - 1).bit_length())
    key_bits = 63 - local_bits - max(1, int(counts.size - 1).bit_length())
    if key_bits < 30:
        return ShuffleKeys(None, local_bits, rng.random(total))
    keys = (rng.bit_generator.random_raw(total) >> np.uint64(64 - key_bits)).view(np.int64)
    keys <<= local_bits
    return ShuffleKeys(keys, local_bits)


def _blocks_touching(blocks: ShuffleBlocks, region: Sequence[Box]) -> np.ndarray:
    """Boolean per block: does it overlap any box of ``region``?"""
    starts = [np.ascontiguousarray(a) for a in blocks.origins.T]
    ends = [a + s for a, s in zip(starts, blocks.sizes.T)]
    hit = np.zeros(len(blocks.sizes), dtype=bool)
    for box in region:
        inside = np.ones(len(blocks.sizes), dtype=bool)
        for a, e, o, s in zip(starts, ends, box.origin, box.size):
            inside &= a < o + s
            inside &= e > o
        hit |= inside
    return hit


def _shuffle_plan(blocks: ShuffleBlocks, spatial_shape: tuple[int, ...], drawn: ShuffleKeys,
                  subset: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per entry (block ``b``, position ``p`` in C order; blocks in order) of the blocks in ``subset`` (a
    boolean mask; all blocks by default): the flat voxel it writes (``dest``) and the entry of the same block
    whose voxel's original value it receives (``source``).

    Blocks are processed in groups of equal entry count: each group is a ``(blocks, count)`` matrix of
    ``key << local_bits | position`` values sorted along its rows, so the sort works on rows of at most
    ``count`` entries (the paper's blocks: 1-108) instead of one global sort of all ~245,000 entries (3x
    faster, identical result).
    """
    counts = np.prod(blocks.sizes.astype(np.int64), axis=1)
    starts = np.cumsum(counts) - counts  # of every block in the drawn keys
    if subset is not None:
        blocks = ShuffleBlocks(blocks.origins[subset], blocks.sizes[subset])
        counts, key_starts = counts[subset], starts[subset]
        starts = np.cumsum(counts) - counts
    else:
        key_starts = starts
    dest = _block_voxels(blocks, spatial_shape)[0]
    if drawn.keys is None:  # fallback: argsort of block + U(0,1)
        block = np.repeat(np.arange(counts.size, dtype=np.float64), counts)
        u = drawn.fallback[np.repeat(key_starts - starts, counts) + np.arange(dest.size)]
        return dest, np.argsort(block + u)
    mask = (1 << drawn.local_bits) - 1
    src = np.empty(dest.size, dtype=np.int64)
    by_count = np.argsort(counts, kind="stable")
    edges = np.concatenate(([0], np.flatnonzero(np.diff(counts[by_count])) + 1, [counts.size]))
    for lo, hi in zip(edges[:-1], edges[1:]):
        group = by_count[lo:hi]
        position = np.arange(int(counts[group[0]]), dtype=np.int64)
        packed = np.take(drawn.keys, key_starts[group][:, None] + position)  # (blocks, count): a row per block
        packed |= position
        packed.sort(axis=1)  # the values of a row are unique: any sort gives the (key, position) order
        packed &= mask
        first = starts[group][:, None]
        packed += first
        src[first + position] = packed
    return dest, src


def local_pixel_shuffle(x: np.ndarray, rng: np.random.Generator | None, num_blocks: int = 10_000,
                        divisor: int = 10, blocks: ShuffleBlocks | None = None, keys: ShuffleKeys | None = None,
                        region: Sequence[Box] | None = None) -> np.ndarray:
    """Local pixel shuffling (METHODS §1.2 step 2), vectorised.

    For each of ``num_blocks`` blocks (drawn by :func:`sample_shuffle_blocks` unless ``blocks`` is given), the
    voxels of the block in the *unshuffled* ``x`` are permuted uniformly at random and written to the output;
    later blocks overwrite earlier ones exactly as in the sequential original. All channels share the spatial
    permutation. Draw order: blocks, then the keys (:func:`draw_shuffle_keys`; pass ``keys`` drawn earlier to
    draw nothing here).

    ``region``: only the voxels inside these boxes are needed (out-painting replaces the rest by noise), so
    blocks that miss every box are skipped; outside the region the output then is unspecified. The draws are
    the same with and without a region.
    """
    ndim = _check(x)
    spatial = x.shape[1:]
    if blocks is None:
        blocks = sample_shuffle_blocks(spatial, rng, num_blocks, divisor)
    if blocks.sizes.shape[0] == 0:
        return x.copy()
    if blocks.sizes.shape[1] != ndim:
        raise ValueError(f"blocks have {blocks.sizes.shape[1]} axes, the array has {ndim} spatial axes")
    if keys is None:
        if rng is None:
            raise ValueError("local_pixel_shuffle needs rng or pre-drawn keys")
        keys = draw_shuffle_keys(blocks, rng)
    subset = _blocks_touching(blocks, region) if region is not None else None
    flat = x.reshape(x.shape[0], -1)
    out = flat.copy()
    if subset is not None and not subset.any():
        return out.reshape(x.shape)
    dest, source = _shuffle_plan(blocks, spatial, keys, subset)
    # last writer wins: a voxel keeps what the highest entry (= latest block) covering it wrote
    winner = np.full(int(np.prod(spatial)), -1, dtype=np.int64)
    np.maximum.at(winner, dest, np.arange(dest.size, dtype=np.int64))
    voxels = np.flatnonzero(winner >= 0)
    src = np.take(dest, np.take(source, np.take(winner, voxels)))  # np.take: cheaper than [] on 1-D
    if x.shape[0] == 1:
        out[0, voxels] = np.take(flat[0], src)
    else:
        out[:, voxels] = flat[:, src]
    return out.reshape(x.shape)


# ----------------------------------------------------------------------------------- 3. non-linear intensity
@functools.lru_cache(maxsize=4)
def _bernstein(n_samples: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The inner cubic Bernstein terms ``3 s^2 t``, ``3 s t^2``, ``t^3`` (``s = 1 - t``) at ``n_samples`` t in
    [0, 1]; they do not depend on the control points, so they are computed once (read-only)."""
    t = np.linspace(0.0, 1.0, n_samples)
    s = 1.0 - t
    terms = (3.0 * s * s * t, 3.0 * s * t * t, t * t * t)
    for a in terms:
        a.setflags(write=False)
    return terms


def bezier_curve(p1: tuple[float, float], p2: tuple[float, float],
                 n_samples: int = 100_000) -> tuple[np.ndarray, np.ndarray]:
    """A cubic Bézier curve from (0, 0) through control points ``p1``, ``p2`` to (1, 1), at ``n_samples`` t."""
    b1, b2, b3 = _bernstein(n_samples)

    def axis(c1: float, c2: float) -> np.ndarray:
        out = np.multiply(b1, c1)
        out += np.multiply(b2, c2)
        out += b3
        return out

    return axis(p1[0], p2[0]), axis(p1[1], p2[1])


def intensity_curve(rng: np.random.Generator, n_samples: int = 100_000) -> tuple[np.ndarray, np.ndarray, bool]:
    """Draw the non-linear intensity map (METHODS §1.2 step 3); returns ``(xp, fp, inverted)`` for ``np.interp``.

    Draws ``u1..u4 ~ U(0,1)`` (control points (u1,u2), (u3,u4)), then ``rand < 0.5`` = inverted. With the curve
    ``(X(t), Y(t))``, the increasing map sends ``X(t) -> Y(t)``; the inverting map sends ``X(t) -> Y(1 - t)``.
    The latter is what "sorting only the x values" does in the original, whose Bernstein basis runs from
    (1, 1) at the first sample to (0, 0) at the last. Both are monotone (X and Y are monotone for control
    points in [0, 1]) and send {0, 1} to {0, 1} resp. {1, 0} exactly.
    """
    u = rng.random(4)
    inverted = bool(rng.random() < 0.5)
    xs, ys = bezier_curve((u[0], u[1]), (u[2], u[3]), n_samples)
    xp = _sorted(xs)
    fp = ys[::-1].copy() if inverted else _sorted(ys)
    return xp, fp, inverted


def _sorted(a: np.ndarray) -> np.ndarray:
    """``np.sort(a)``, skipping the sort when ``a`` is already sorted (the usual case: X(t), Y(t) are monotone)."""
    return a if bool(np.all(a[1:] >= a[:-1])) else np.sort(a)


def apply_curve(x: np.ndarray, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """``np.interp(x, xp, fp)`` in ``x.dtype`` with identical values, computed faster on real scans.

    ``np.interp`` is exact for any order of its input, but its search starts from the previous voxel's knot, so
    on (nearly) sorted voxels each search is a short step instead of a walk down 100,000 knots. Each voxel gets
    a 16-bit key (its value x 65535). Quantised images (CT: integer HU, 2,001 values in [0, 1]) rarely put two
    distinct values under one key: then every key's value is interpolated once and the voxels look it up.
    Otherwise the voxels are ordered by key with NumPy's radix sort (cheaper than a full argsort), and runs of
    equal values in that order are interpolated once and repeated.
    """
    flat = x.reshape(-1)
    if not np.issubdtype(flat.dtype, np.floating) or flat.size < 4096:
        return np.interp(flat, xp, fp).astype(x.dtype, copy=False).reshape(x.shape)
    scale = 65535.0
    key = np.multiply(flat, scale, dtype=np.float32)
    np.clip(key, 0.0, scale, out=key)
    with np.errstate(invalid="ignore"):  # a NaN's key is arbitrary; np.interp still maps it to NaN
        key16 = key.astype(np.uint16)
    # quantised images (CT: integer HU) rarely put two distinct values in one 16-bit bin: if no bin does,
    # interpolate each bin's value once and look the voxels up (no sort at all)
    bins = key16.astype(np.intp)  # converted once: uint16 fancy indices are converted on every use
    value = np.empty(65536, dtype=flat.dtype)
    value[bins] = flat
    if np.array_equal(np.take(value, bins), flat):
        used = np.zeros(65536, dtype=bool)
        used[bins] = True
        used = np.flatnonzero(used)
        table = np.empty(65536, dtype=x.dtype)
        table[used] = np.interp(value[used], xp, fp)
        return np.take(table, bins).reshape(x.shape)
    order = np.argsort(key16, kind="stable")
    ordered = flat[order]
    changes = ordered[1:] != ordered[:-1]
    if np.count_nonzero(changes) < flat.size // 4:  # few distinct runs: interpolate each run's value once
        starts = np.concatenate(([0], np.flatnonzero(changes) + 1))
        values = np.interp(ordered[starts], xp, fp)
        mapped = np.repeat(values, np.diff(starts, append=flat.size))
    else:
        mapped = np.interp(ordered, xp, fp)
    out = np.empty(flat.size, dtype=x.dtype)
    out[order] = mapped
    return out.reshape(x.shape)


def nonlinear_transform(x: np.ndarray, rng: np.random.Generator, n_samples: int = 100_000) -> np.ndarray:
    """Apply a freshly drawn :func:`intensity_curve` to every voxel (all channels); keeps ``x.dtype``."""
    xp, fp, _ = intensity_curve(rng, n_samples)
    return apply_curve(x, xp, fp)


# ---------------------------------------------------------------------------------------------- 4. painting
def sample_inpaint_boxes(spatial_shape: tuple[int, ...], rng: np.random.Generator, max_blocks: int = 5,
                         continue_rate: float = 0.95, margin: int = 3) -> list[Box]:
    """In-painting blocks (METHODS §1.2 step 4): while ``rand < 0.95`` and fewer than 5 blocks, size per axis
    ``randint(dim // 6, dim // 3)`` and origin ``randint(3, dim - size - 3)``.

    Per block the draws are: the continue coin, the sizes (axis order), the origins (axis order). Sizes are at
    least 1 and the 3-voxel margin shrinks only if an axis is too short for it.
    """
    boxes: list[Box] = []
    while len(boxes) < max_blocks and rng.random() < continue_rate:
        sizes = tuple(_randint(rng, max(1, d // 6), max(1, d // 6, d // 3)) for d in spatial_shape)
        origins = tuple(_randint(rng, _margin(d, s, margin), d - s - _margin(d, s, margin))
                        for d, s in zip(spatial_shape, sizes))
        boxes.append(Box(origins, sizes))
    return boxes


def in_paint(x: np.ndarray, rng: np.random.Generator, boxes: list[Box] | None = None) -> np.ndarray:
    """Fill each in-painting box with U(0,1) noise (shared by all channels, as in the original).

    ``boxes`` defaults to :func:`sample_inpaint_boxes`; the noise is drawn after the boxes, one box at a time.
    """
    _check(x)
    if boxes is None:
        boxes = sample_inpaint_boxes(x.shape[1:], rng)
    out = x.copy()
    for box in boxes:
        out[(slice(None), *box.slices)] = rng.random(box.size, dtype=_noise_dtype(x))
    return out


def sample_outpaint_boxes(spatial_shape: tuple[int, ...], rng: np.random.Generator, max_extra: int = 4,
                          continue_rate: float = 0.95, margin: int = 3) -> list[Box]:
    """Out-painting windows (METHODS §1.2 step 4): one window, then up to 4 more while ``rand < 0.95``.

    Window size per axis ``dim - randint(3 dim // 7, 4 dim // 7)``, origin ``randint(3, dim - size - 3)``.
    Draws per window: (continue coin for the extra ones,) sizes, origins.
    """
    def one() -> Box:
        sizes = tuple(max(1, d - _randint(rng, 3 * d // 7, 4 * d // 7)) for d in spatial_shape)
        origins = tuple(_randint(rng, _margin(d, s, margin), d - s - _margin(d, s, margin))
                        for d, s in zip(spatial_shape, sizes))
        return Box(origins, sizes)

    boxes = [one()]
    while len(boxes) < 1 + max_extra and rng.random() < continue_rate:
        boxes.append(one())
    return boxes


def out_paint(x: np.ndarray, rng: np.random.Generator, boxes: list[Box] | None = None) -> np.ndarray:
    """Replace the cube by U(0,1) noise (independent per channel) and paste the original back in the windows.

    ``boxes`` defaults to :func:`sample_outpaint_boxes`; the noise is drawn after the windows.
    """
    _check(x)
    if boxes is None:
        boxes = sample_outpaint_boxes(x.shape[1:], rng)
    return _paste(rng.random(x.shape, dtype=_noise_dtype(x)), x, boxes)


def _paste(noise: np.ndarray, x: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
    """``noise`` with ``x`` pasted back inside every box, in ``x.dtype``."""
    for box in boxes:
        sl = (slice(None), *box.slices)
        noise[sl] = x[sl]
    return noise.astype(x.dtype, copy=False)


def _curve_in_region(x: np.ndarray, xp: np.ndarray, fp: np.ndarray, region: Sequence[Box] | None) -> np.ndarray:
    """:func:`apply_curve` on the voxels inside ``region`` only (all voxels when ``None``); outside it the
    output holds the input."""
    if region is None:
        return apply_curve(x, xp, fp)
    inside = np.zeros(x.shape[1:], dtype=bool)
    for box in region:
        inside[box.slices] = True
    idx = np.flatnonzero(inside)
    flat = x.reshape(x.shape[0], -1)
    out = flat.copy()
    out[:, idx] = apply_curve(flat[:, idx], xp, fp)
    return out.reshape(x.shape)


def _noise_dtype(x: np.ndarray) -> type:
    return np.float32 if x.dtype == np.float32 else np.float64


# ------------------------------------------------------------------------------------------------ pipeline
@dataclass
class GenesisResult:
    """One transformed sample and what was applied (for tests, figures and debugging).

    ``applied`` keys: ``flips`` (spatial axes), ``local_shuffle`` (bool), ``nonlinear`` (None, "increasing" or
    "inverted"), ``paint`` (None, "in" or "out") and ``boxes`` (the painting boxes / windows).
    """

    input: np.ndarray
    target: np.ndarray
    applied: dict[str, Any] = field(default_factory=dict)


@dataclass
class GenesisTransform:
    """The Models Genesis transformation pipeline with the paper's settings as defaults.

    Source: METHODS.md §1.2 (original ``config.py``: ``flip_rate`` 0.4, ``local_rate`` 0.5, ``nonlinear_rate``
    0.9, ``paint_rate`` 0.9, ``outpaint_rate`` 0.8 so ``inpaint_rate`` 0.2; ``pytorch/utils.py``: 3 flips,
    10,000 shuffle blocks of ``dim // 10``, 100,000 Bézier samples, 5 in-painting blocks, 1 + 4 out-painting
    windows, continue rate 0.95, 3-voxel margin). Works on 3D ``(C, X, Y, Z)`` and 2D ``(C, H, W)`` float
    arrays in [0, 1]; the output has the input's shape, dtype and range.

    Draw order per call (so a loop implementation fed the same seed reproduces it): flip coins/axes; shuffle
    coin, blocks, keys; non-linear coin, ``u1..u4``, inversion coin; paint coin, in-paint coin, boxes, noise.
    """

    flip_rate: float = 0.4
    max_flips: int = 3
    local_rate: float = 0.5
    shuffle_blocks: int = 10_000
    shuffle_divisor: int = 10
    nonlinear_rate: float = 0.9
    bezier_samples: int = 100_000
    paint_rate: float = 0.9
    inpaint_rate: float = 0.2
    inpaint_max_blocks: int = 5
    outpaint_max_extra: int = 4
    paint_continue_rate: float = 0.95
    paint_margin: int = 3

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(input, target)`` for the cube/patch ``x`` (not modified)."""
        result = self.apply(x, rng)
        return result.input, result.target

    def apply(self, x: np.ndarray, rng: np.random.Generator) -> GenesisResult:
        """Like ``__call__`` but also reports which transformations were applied.

        Every random number is drawn in the published order first; the work comes after, so that with
        out-painting (72% of samples) the shuffle and the intensity map are computed only inside the windows
        that survive it (the output is the same as computing everything)."""
        _check(x)
        spatial = x.shape[1:]
        x_in, target, axes = flip(x, x, rng, self.flip_rate, self.max_flips)
        applied: dict[str, Any] = {"flips": axes, "local_shuffle": False, "nonlinear": None, "paint": None,
                                   "boxes": []}
        shuffle: tuple[ShuffleBlocks, ShuffleKeys] | None = None
        if rng.random() < self.local_rate:
            blocks = sample_shuffle_blocks(spatial, rng, self.shuffle_blocks, self.shuffle_divisor)
            shuffle = (blocks, draw_shuffle_keys(blocks, rng))
            applied["local_shuffle"] = True
        curve = None
        if rng.random() < self.nonlinear_rate:
            xp, fp, inverted = intensity_curve(rng, self.bezier_samples)
            curve = (xp, fp)
            applied["nonlinear"] = "inverted" if inverted else "increasing"
        noise = None
        if rng.random() < self.paint_rate:
            if rng.random() < self.inpaint_rate:
                applied["paint"] = "in"
                applied["boxes"] = sample_inpaint_boxes(spatial, rng, self.inpaint_max_blocks,
                                                        self.paint_continue_rate, self.paint_margin)
            else:
                applied["paint"] = "out"
                applied["boxes"] = sample_outpaint_boxes(spatial, rng, self.outpaint_max_extra,
                                                         self.paint_continue_rate, self.paint_margin)
                noise = rng.random(x.shape, dtype=_noise_dtype(x))  # out_paint's draw
        region = applied["boxes"] if noise is not None else None
        if shuffle is not None:
            x_in = local_pixel_shuffle(x_in, None, blocks=shuffle[0], keys=shuffle[1], region=region)
        if curve is not None:
            x_in = _curve_in_region(x_in, curve[0], curve[1], region)
        if applied["paint"] == "in":
            x_in = in_paint(x_in, rng, applied["boxes"])
        elif noise is not None:
            x_in = _paste(noise, x_in, applied["boxes"])
        return GenesisResult(input=x_in, target=target, applied=applied)

    def pair_batch(self, cubes: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Transform a batch ``(N, C, ...)`` cube by cube; returns stacked ``(inputs, targets)``."""
        pairs = [self(c, rng) for c in cubes]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
