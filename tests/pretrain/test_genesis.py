"""Models Genesis transformations and cube extraction (METHODS.md §1.1, §1.2)."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pytest

from aemia.data.image import Image
from aemia.data.normalise import CT_WINDOW_GENESIS, ct_window
from aemia.pretrain import genesis as G
from aemia.pretrain.cubes import (
    CPU_CUBES,
    PAPER_CUBES,
    extract_cubes,
    extract_patches_2d,
    normalize_image,
    passes_tissue_filter,
    tissue_fraction,
)
from aemia.pretrain.genesis import Box, GenesisTransform, ShuffleBlocks

SHAPES = [(1, 16, 16, 8), (2, 20, 12)]  # 3D (C, X, Y, Z) and 2D (C, H, W), small and non-square
NO_TRANSFORM = dict(flip_rate=0.0, local_rate=0.0, nonlinear_rate=0.0, paint_rate=0.0)


def _ct_path() -> Path:
    env = os.environ.get("AEMIA_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"
    path = root / "totalsegmentator_example_ct" / "example_ct.nii.gz"
    if not path.is_file():
        pytest.skip(f"real CT not found: {path}")
    return path


@pytest.fixture(scope="module")
def ct_image() -> Image:
    from aemia.data.io import read_image

    return read_image(_ct_path())


@pytest.fixture(scope="module")
def ct_cubes(ct_image: Image) -> np.ndarray:
    """A few real 64x64x32 abdominal cubes (tissue-rich filter: the published one rejects abdomen)."""
    batch = extract_cubes(ct_image, np.random.default_rng(0), PAPER_CUBES.tissue_rich())
    return batch.array[:3]


def _smooth(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A float32 array in [0, 1] with smooth structure and many distinct values."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(0, 3, s) for s in shape[1:]], indexing="ij")
    base = 0.5 + 0.25 * np.sin(sum(grids)) + 0.2 * rng.random(shape[1:])
    return np.clip(np.broadcast_to(base, shape), 0, 1).astype(np.float32)


# ------------------------------------------------------------------------------------------- pipeline
@pytest.mark.parametrize("shape", SHAPES)
def test_shapes_dtype_and_range_preserved(shape: tuple[int, ...]) -> None:
    x = _smooth(shape)
    for seed in range(20):
        for tf in (GenesisTransform(), GenesisTransform(flip_rate=0.9, local_rate=1, nonlinear_rate=1, paint_rate=1)):
            inp, tgt = tf(x, np.random.default_rng(seed))
            assert inp.shape == tgt.shape == x.shape
            assert inp.dtype == tgt.dtype == np.float32
            assert 0.0 <= inp.min() and inp.max() <= 1.0
            assert 0.0 <= tgt.min() and tgt.max() <= 1.0
    assert np.array_equal(x, _smooth(shape))  # the input is never modified


@pytest.mark.needs_data("totalsegmentator_example_ct/example_ct.nii.gz")
def test_real_cubes_pipeline(ct_cubes: np.ndarray) -> None:
    assert ct_cubes.shape[1:] == (1, 64, 64, 32)
    tf = GenesisTransform(local_rate=1, nonlinear_rate=1, paint_rate=1)
    for i, cube in enumerate(ct_cubes):
        res = tf.apply(cube, np.random.default_rng(i))
        assert res.input.shape == cube.shape and 0 <= res.input.min() and res.input.max() <= 1
        assert res.applied["local_shuffle"] and res.applied["nonlinear"] and res.applied["paint"]
        assert not np.array_equal(res.input, res.target)


@pytest.mark.parametrize("shape", [(1, 32, 32, 16), (3, 48, 40)])
def test_pipeline_equals_the_composition_of_its_steps(shape: tuple[int, ...]) -> None:
    """The pipeline draws everything first and, under out-painting, computes the shuffle and the intensity
    map inside the surviving windows only: the result must equal the plain step-by-step composition."""
    x = _smooth(shape, seed=4)
    tf = GenesisTransform(local_rate=0.7)
    seen = set()
    for seed in range(40):
        got = tf.apply(x, np.random.default_rng(seed))
        r = np.random.default_rng(seed)
        xi, y, _ = G.flip(x, x, r)
        if r.random() < 0.7:
            xi = G.local_pixel_shuffle(xi, r)
        if r.random() < 0.9:
            xi = G.nonlinear_transform(xi, r)
        if r.random() < 0.9:
            xi = G.in_paint(xi, r) if r.random() < 0.2 else G.out_paint(xi, r)
        assert np.array_equal(got.input, xi) and np.array_equal(got.target, y), seed
        seen.add((got.applied["local_shuffle"], got.applied["paint"]))
    assert {(True, "out"), (True, "in"), (False, "out")} <= seen


@pytest.mark.parametrize("shape", SHAPES)
def test_same_seed_same_output(shape: tuple[int, ...]) -> None:
    x = _smooth(shape)
    tf = GenesisTransform(local_rate=1, nonlinear_rate=1, paint_rate=1)
    a = tf(x, np.random.default_rng(7))
    b = tf(x, np.random.default_rng(7))
    c = tf(x, np.random.default_rng(8))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("shape", SHAPES)
def test_flips_identical_on_input_and_target(shape: tuple[int, ...]) -> None:
    x = _smooth(shape)
    ndim = len(shape) - 1
    flips_only = GenesisTransform(**{**NO_TRANSFORM, "flip_rate": 0.9})
    seen = set()
    for seed in range(40):
        res = flips_only.apply(x, np.random.default_rng(seed))
        assert np.array_equal(res.input, res.target)
        expected = x
        for axis in res.applied["flips"]:
            assert 0 <= axis < ndim
            expected = np.flip(expected, axis=1 + axis)
        assert np.array_equal(res.target, expected)
        assert len(res.applied["flips"]) <= 3
        seen.update(res.applied["flips"])
    assert seen == set(range(ndim))  # every spatial axis gets flipped, never the channel axis
    # with the other transforms on, the target is still exactly the flipped original
    full = GenesisTransform(flip_rate=0.9, local_rate=1, nonlinear_rate=1, paint_rate=1)
    for seed in range(10):
        res = full.apply(x, np.random.default_rng(seed))
        expected = x
        for axis in res.applied["flips"]:
            expected = np.flip(expected, axis=1 + axis)
        assert np.array_equal(res.target, expected)


def test_probabilities_match_the_paper() -> None:
    """Over 2000 draws: flip at least once 0.4, shuffle 0.5, non-linear 0.9 (half inverted), paint 0.9, of which
    in-painting 0.2 (METHODS §1.2). Cheap settings for the parts that do not affect the coins."""
    tf = GenesisTransform(shuffle_blocks=10, bezier_samples=200)
    x = _smooth((1, 12, 12))
    n = 2000
    rng = np.random.default_rng(123)
    records = [tf.apply(x, rng).applied for _ in range(n)]
    flip = np.mean([len(r["flips"]) > 0 for r in records])
    shuffle = np.mean([r["local_shuffle"] for r in records])
    nonlinear = [r["nonlinear"] for r in records]
    nl_rate = np.mean([v is not None for v in nonlinear])
    inverted = np.mean([v == "inverted" for v in nonlinear if v is not None])
    paint = [r["paint"] for r in records]
    paint_rate = np.mean([p is not None for p in paint])
    inpaint = np.mean([p == "in" for p in paint if p is not None])
    # about 4.5 standard errors
    assert abs(flip - 0.4) < 0.05
    assert abs(shuffle - 0.5) < 0.05
    assert abs(nl_rate - 0.9) < 0.03
    assert abs(inverted - 0.5) < 0.06
    assert abs(paint_rate - 0.9) < 0.03
    assert abs(inpaint - 0.2) < 0.045
    three = np.mean([len(r["flips"]) == 3 for r in records])
    assert abs(three - 0.4 ** 3) < 0.03


# --------------------------------------------------------------------------------------- local shuffle
@pytest.mark.parametrize("shape", SHAPES)
def test_local_shuffle_keeps_each_blocks_multiset(shape: tuple[int, ...]) -> None:
    x = np.random.default_rng(1).random(shape, dtype=np.float32)  # all values distinct
    ndim = len(shape) - 1
    # disjoint blocks: every block is a permutation of itself, everything else untouched
    if ndim == 3:
        blocks = ShuffleBlocks(np.array([[0, 0, 0], [5, 5, 2], [10, 0, 4]]), np.array([[3, 4, 2], [4, 4, 3], [5, 6, 4]]))
    else:
        blocks = ShuffleBlocks(np.array([[0, 0], [6, 3], [12, 8]]), np.array([[5, 3], [4, 4], [8, 4]]))
    out = G.local_pixel_shuffle(x, np.random.default_rng(2), blocks=blocks)
    inside = np.zeros(shape[1:], bool)
    for o, s in zip(blocks.origins, blocks.sizes):
        sl = tuple(slice(a, a + b) for a, b in zip(o, s))
        inside[sl] = True
        for c in range(shape[0]):
            assert np.array_equal(np.sort(out[c][sl], axis=None), np.sort(x[c][sl], axis=None))
        assert not np.array_equal(out[(slice(None), *sl)], x[(slice(None), *sl)])
        # channels share the spatial permutation: where channel 0's value came from, channel 1's did too
        if shape[0] > 1:
            where = {float(v): i for i, v in enumerate(x[0][sl].ravel())}
            came_from = [where[float(v)] for v in out[0][sl].ravel()]
            assert np.array_equal(out[1][sl].ravel(), x[1][sl].ravel()[came_from])
    assert np.array_equal(out[:, ~inside], x[:, ~inside])


def test_local_shuffle_paper_blocks_last_writer_wins() -> None:
    """With the paper's 10,000 overlapping blocks the last block is a permutation of its original values, the
    uncovered voxels are untouched and every value comes from the original."""
    x = np.random.default_rng(3).random((1, 30, 30, 20), dtype=np.float32)
    blocks = G.sample_shuffle_blocks(x.shape[1:], np.random.default_rng(4))
    assert blocks.sizes.shape == (10_000, 3)
    assert blocks.sizes.min() == 1 and tuple(blocks.sizes.max(axis=0)) == (3, 3, 2)  # randint(1, dim // 10)
    out = G.local_pixel_shuffle(x, np.random.default_rng(5), blocks=blocks)
    covered = np.zeros(x.shape[1:], bool)
    for o, s in zip(blocks.origins, blocks.sizes):
        covered[tuple(slice(a, a + b) for a, b in zip(o, s))] = True
    assert np.array_equal(out[0][~covered], x[0][~covered])
    last = tuple(slice(a, a + b) for a, b in zip(blocks.origins[-1], blocks.sizes[-1]))
    assert np.array_equal(np.sort(out[0][last], axis=None), np.sort(x[0][last], axis=None))
    assert np.isin(out, x).all()
    assert (out != x).mean() > 0.3


def test_local_shuffle_matches_a_sequential_loop() -> None:
    """Overlapping blocks processed one by one (read the original, write the output) give the same result
    when the loop uses the same per-block permutations."""
    x = np.random.default_rng(6).random((1, 12, 10, 8), dtype=np.float32)
    blocks = G.sample_shuffle_blocks(x.shape[1:], np.random.default_rng(7), num_blocks=300, divisor=3)
    out = G.local_pixel_shuffle(x, np.random.default_rng(8), blocks=blocks)
    # the documented draws: one raw 64-bit word per block voxel; a block's order is that of its words' top bits
    counts = blocks.sizes.prod(axis=1)
    key_bits = 63 - int(counts.max() - 1).bit_length() - int(counts.size - 1).bit_length()
    keys = np.random.default_rng(8).bit_generator.random_raw(int(counts.sum())) >> np.uint64(64 - key_bits)
    ref = x.copy()
    start = 0
    for (o0, o1, o2), (s0, s1, s2) in zip(blocks.origins, blocks.sizes):
        n = s0 * s1 * s2
        window = x[0, o0:o0 + s0, o1:o1 + s1, o2:o2 + s2].reshape(-1)
        order = np.lexsort((np.arange(n), keys[start:start + n]))
        ref[0, o0:o0 + s0, o1:o1 + s1, o2:o2 + s2] = window[order].reshape(s0, s1, s2)
        start += n
    assert np.array_equal(out, ref)


def test_local_shuffle_permutations_are_uniform() -> None:
    x = np.array([[[0.1, 0.2, 0.3]]], dtype=np.float32)  # (1, 1, 3): one block of 3 voxels
    blocks = ShuffleBlocks(np.array([[0, 0]]), np.array([[1, 3]]))
    rng = np.random.default_rng(9)
    counts: dict[tuple[float, ...], int] = {}
    n = 3000
    for _ in range(n):
        key = tuple(G.local_pixel_shuffle(x, rng, blocks=blocks).ravel().tolist())
        counts[key] = counts.get(key, 0) + 1
    assert len(counts) == 6
    assert all(abs(c / n - 1 / 6) < 0.03 for c in counts.values())


def test_local_shuffle_general_index_path_equals_table_path(monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.random.default_rng(10).random((1, 40, 30, 20), dtype=np.float32)
    blocks = G.sample_shuffle_blocks(x.shape[1:], np.random.default_rng(11), num_blocks=500)
    a = G.local_pixel_shuffle(x, np.random.default_rng(12), blocks=blocks)
    G._offset_table.cache_clear()
    monkeypatch.setattr(G, "_TABLE_LIMIT", 0)
    b = G.local_pixel_shuffle(x, np.random.default_rng(12), blocks=blocks)
    G._offset_table.cache_clear()
    assert np.array_equal(a, b)


# --------------------------------------------------------------------------------------- non-linear
def test_nonlinear_map_is_monotone_and_maps_endpoints() -> None:
    grid = np.linspace(0, 1, 2001)
    kinds = set()
    for seed in range(100):
        xp, fp, inverted = G.intensity_curve(np.random.default_rng(seed), 100_000)
        y = np.interp(grid, xp, fp)
        d = np.diff(y)
        ends = (float(np.interp(0.0, xp, fp)), float(np.interp(1.0, xp, fp)))
        if inverted:
            assert (d <= 1e-12).all() and ends == (1.0, 0.0)
        else:
            assert (d >= -1e-12).all() and ends == (0.0, 1.0)
        assert 0 <= y.min() and y.max() <= 1
        kinds.add(inverted)
    assert kinds == {True, False}


def test_nonlinear_apply_equals_np_interp() -> None:
    x = _smooth((1, 16, 16, 8))
    xp, fp, _ = G.intensity_curve(np.random.default_rng(0))
    assert np.array_equal(G.apply_curve(x, xp, fp), np.interp(x, xp, fp).astype(np.float32))
    out = G.nonlinear_transform(x, np.random.default_rng(0))
    assert out.dtype == np.float32 and out.shape == x.shape


@pytest.mark.parametrize("kind", ["ct_quantised", "continuous", "float64", "2d", "with_nan"])
def test_fast_apply_curve_is_exactly_np_interp(kind: str) -> None:
    """The radix-ordered / run-length path (arrays of >= 4096 voxels) gives np.interp's values bit for bit."""
    rng = np.random.default_rng(3)
    shape = (1, 32, 32, 16) if kind != "2d" else (3, 64, 64)
    if kind == "ct_quantised":  # integer HU through the [-1000, 1000] window: few distinct values
        x = ((np.round(rng.normal(0, 300, shape)) + 1000).clip(0, 2000) / 2000).astype(np.float32)
    else:
        x = rng.random(shape).astype(np.float64 if kind == "float64" else np.float32)
    if kind == "with_nan":
        x[0, 0, 0, :3] = np.nan
    for seed in range(4):
        xp, fp, _ = G.intensity_curve(np.random.default_rng(seed))
        want = np.interp(x, xp, fp).astype(x.dtype)
        got = G.apply_curve(x, xp, fp)
        assert got.dtype == x.dtype and got.shape == x.shape
        assert np.array_equal(got, want, equal_nan=True)


def test_bezier_curve_matches_the_bernstein_form() -> None:
    t = np.linspace(0.0, 1.0, 1000)
    p1, p2 = (0.3, 0.8), (0.6, 0.1)
    xs, ys = G.bezier_curve(p1, p2, 1000)
    bern = [(1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t ** 2, t ** 3]
    assert np.allclose(xs, bern[1] * p1[0] + bern[2] * p2[0] + bern[3], atol=1e-14)
    assert np.allclose(ys, bern[1] * p1[1] + bern[2] * p2[1] + bern[3], atol=1e-14)
    assert xs[0] == 0.0 and xs[-1] == 1.0 and ys[0] == 0.0 and ys[-1] == 1.0
    xs[0] = 5.0  # the returned arrays are the caller's own (the cached basis is not exposed)
    assert G.bezier_curve(p1, p2, 1000)[0][0] == 0.0


# ------------------------------------------------------------------------------------------ painting
@pytest.mark.parametrize("shape", [(1, 64, 64, 32), (3, 48, 40)])
def test_inpainting_changes_only_inside_its_blocks(shape: tuple[int, ...]) -> None:
    x = _smooth(shape)
    for seed in range(10):
        boxes = G.sample_inpaint_boxes(shape[1:], np.random.default_rng(seed))
        assert len(boxes) <= 5
        inside = np.zeros(shape[1:], bool)
        for box in boxes:
            for d, o, s in zip(shape[1:], box.origin, box.size):
                assert d // 6 <= s <= d // 3 and 3 <= o <= d - s - 3
            inside[box.slices] = True
        out = G.in_paint(x, np.random.default_rng(100 + seed), boxes)
        assert np.array_equal(out[:, ~inside], x[:, ~inside])
        if boxes:
            assert (out[:, inside] != x[:, inside]).mean() > 0.99
            assert np.array_equal(out[0][inside], out[-1][inside])  # noise shared by channels
        # without explicit boxes, in_paint draws the same boxes first (same seed), then the noise
        again = G.in_paint(x, np.random.default_rng(seed))
        assert np.array_equal(again[:, ~inside], x[:, ~inside])
        if boxes:
            assert (again[:, inside] != x[:, inside]).mean() > 0.99


@pytest.mark.parametrize("shape", [(1, 64, 64, 32), (3, 48, 40)])
def test_outpainting_keeps_its_windows_identical(shape: tuple[int, ...]) -> None:
    x = _smooth(shape)
    for seed in range(10):
        boxes = G.sample_outpaint_boxes(shape[1:], np.random.default_rng(seed))
        assert 1 <= len(boxes) <= 5
        inside = np.zeros(shape[1:], bool)
        for box in boxes:
            for d, o, s in zip(shape[1:], box.origin, box.size):
                assert d - 4 * d // 7 <= s <= d - 3 * d // 7 and 3 <= o <= d - s - 3
            assert np.array_equal(x[(slice(None), *box.slices)],
                                  G.out_paint(x, np.random.default_rng(1), [box])[(slice(None), *box.slices)])
            inside[box.slices] = True
        out = G.out_paint(x, np.random.default_rng(200 + seed), boxes)
        assert np.array_equal(out[:, inside], x[:, inside])
        assert (out[:, ~inside] != x[:, ~inside]).mean() > 0.99
        assert 0 <= out.min() and out.max() <= 1 and out.dtype == np.float32


def test_painting_sizes_scale_with_small_patches() -> None:
    """CPU cubes (32x32x16) and tiny 2D patches: sizes stay relative and valid (margin shrinks if needed)."""
    for spatial in [(32, 32, 16), (8, 8), (5, 7)]:
        for seed in range(30):
            rng = np.random.default_rng(seed)
            for box in G.sample_inpaint_boxes(spatial, rng) + G.sample_outpaint_boxes(spatial, rng):
                assert all(s >= 1 and o >= 0 and o + s <= d for d, o, s in zip(spatial, box.origin, box.size))
    x = _smooth((1, 5, 7))
    out, _ = GenesisTransform(local_rate=1, nonlinear_rate=1, paint_rate=1)(x, np.random.default_rng(0))
    assert out.shape == x.shape


def test_box_slices() -> None:
    assert Box((1, 2), (3, 4)).slices == (slice(1, 4), slice(2, 6))


# ------------------------------------------------------------------------------------- cubes / filter
def _tissue_loop(window: np.ndarray, depth: int, thr: float = 0.425, look: int = 3) -> float:
    """The published per-voxel rule written as a plain loop (for a small window)."""
    total = 0.0
    nx, ny = window.shape[:2]
    for d, i, j in itertools.product(range(depth), range(nx), range(ny)):
        k_found = look - 1
        for k in range(look):
            if window[i, j, d + k] >= thr:
                k_found = k
                break
        total += 1.0 - k_found / (look - 1)
    return total / (nx * ny * depth)


def test_tissue_fraction_matches_the_loop_rule() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        w = (rng.random((6, 5, 7)) < 0.4) * 0.5 + rng.random((6, 5, 7)) * 0.3
        assert tissue_fraction(w, 4) == pytest.approx(_tissue_loop(w, 4), abs=1e-12)


@pytest.mark.needs_data("totalsegmentator_example_ct/example_ct.nii.gz")
def test_tissue_filter_air_and_abdomen(ct_image: Image) -> None:
    """Published rule (max 0.15, for chest CT): all-air cube kept, soft-tissue abdominal cube rejected.
    The tissue-rich variant (our extension for non-chest CT) does the opposite."""
    air = ct_window(np.full((64, 64, 35), -1000.0), *CT_WINDOW_GENESIS)
    vol = ct_window(ct_image.array, *CT_WINDOW_GENESIS)[0]
    cx, cy, cz = (s // 2 for s in vol.shape)
    abdomen = vol[cx - 32:cx + 32, cy - 32:cy + 32, cz - 17:cz + 18]
    assert tissue_fraction(air, 32) == 0.0
    assert tissue_fraction(abdomen, 32) > 0.5
    paper = dict(depth=32, max_fraction=PAPER_CUBES.max_tissue_fraction, min_fraction=PAPER_CUBES.min_tissue_fraction)
    assert PAPER_CUBES.tissue_threshold == pytest.approx(0.425)
    assert passes_tissue_filter(air, **paper)
    assert not passes_tissue_filter(abdomen, **paper)
    rich = PAPER_CUBES.tissue_rich()
    body = dict(depth=32, max_fraction=rich.max_tissue_fraction, min_fraction=rich.min_tissue_fraction)
    assert not passes_tissue_filter(air, **body)
    assert passes_tissue_filter(abdomen, **body)


@pytest.mark.needs_data("totalsegmentator_example_ct/example_ct.nii.gz")
def test_extract_cubes_real_ct(ct_image: Image) -> None:
    rng = np.random.default_rng(0)
    paper = extract_cubes(ct_image, rng, PAPER_CUBES)
    assert paper.modality == "ct" and paper.array.shape[1:] == (1, 64, 64, 32)
    assert paper.rejected == paper.tries - len(paper.array) and paper.tries <= 50 * 32
    rich = extract_cubes(ct_image, rng, CPU_CUBES.tissue_rich())
    assert rich.array.shape == (32, 1, 32, 32, 16) and rich.array.dtype == np.float32
    assert 0 <= rich.array.min() and rich.array.max() <= 1
    vol = ct_window(ct_image.array, *CT_WINDOW_GENESIS)
    for cube, (x0, y0, z0) in zip(rich.array[:3], rich.origins[:3]):
        assert np.array_equal(cube, vol[:, x0:x0 + 32, y0:y0 + 32, z0:z0 + 16])
        assert tissue_fraction(vol[0, x0:x0 + 32, y0:y0 + 32, z0:z0 + 19], 16) >= 0.15


def test_intensity_normalisation_and_padding() -> None:
    ct = Image(np.array([[[[-2000, -1000, 0, 1000, 3000]]]], dtype=np.int16), (1.0, 1.0, 1.0))
    assert np.allclose(normalize_image(ct), [0, 0, 0.5, 1, 1])
    rng = np.random.default_rng(0)
    mri = Image(rng.normal(100, 20, (2, 20, 18, 10)).astype(np.float32), (1.0, 1.0, 1.0))
    mri.array[1] *= 50
    n = normalize_image(mri)
    assert n.min() == 0 and n.max() == 1 and np.allclose(n[0].mean(), n[1].mean(), atol=0.05)
    batch = extract_cubes(mri, rng, CPU_CUBES)  # smaller than the cube in x, y, z: padded
    assert batch.modality == "mri" and batch.array.shape == (32, 2, 32, 32, 16) and batch.rejected == 0
    pic = Image(rng.integers(0, 256, (3, 50, 40), dtype=np.uint8), (1.0, 1.0))
    patches = extract_patches_2d(pic, rng, (32, 32), n=4)
    assert patches.shape == (4, 3, 32, 32) and patches.max() <= 1 and patches.dtype == np.float32
    assert np.allclose(normalize_image(pic), pic.array / 255.0)
