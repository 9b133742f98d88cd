"""Blend kernels and the streaming strip mosaic."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geopsp.encoding import PROBABILITY_NODATA, PROBABILITY_SCALE
from geopsp.errors import ConfigError
from geopsp.inference.blend import KERNELS, tile_weights
from geopsp.inference.mosaic import Mosaicker
from geopsp.tiling import TileGrid


@st.composite
def grids(draw, max_side=200):
    tile = draw(st.integers(4, 64))
    overlap = draw(st.integers(0, (tile - 1) // 2))
    return TileGrid(draw(st.integers(1, max_side)), draw(st.integers(1, max_side)), tile, overlap)


@pytest.mark.parametrize("name", sorted(KERNELS))
@pytest.mark.parametrize("n", [1, 2, 7, 64, 512])
def test_kernels_positive_bounded_symmetric(name, n):
    w = tile_weights(n, kernel=name, floor=0.05)
    assert w.shape == (n, n) and w.dtype == np.float32
    assert w.min() >= 0.05**2 - 1e-7 and w.max() <= 1.0
    np.testing.assert_allclose(w, w[::-1, ::-1])
    np.testing.assert_allclose(w, w.T)


def test_cosine_is_smallest_at_borders():
    w = tile_weights(64, kernel="cosine", floor=0.1)
    assert w[0, 0] < w[0, 32] < w[32, 32]
    assert w[0, 0] == pytest.approx(0.1**2, rel=0.05)


def test_unknown_kernel_and_bad_floor():
    with pytest.raises(ConfigError, match="unknown blend kernel"):
        tile_weights(8, kernel="triangle")
    with pytest.raises(ConfigError, match="floor"):
        tile_weights(8, floor=0.0)


def _pixel_probs(height, width, k, seed=0):
    """Per-pixel class probabilities that depend only on the pixel (what a 1x1 model gives)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(k, height, width)).astype(np.float32) * 3
    return torch.softmax(torch.from_numpy(logits), 0)


def _run(
    grid, probs, valid, *, row_range=None, probabilities=True, kernel="cosine", floor=0.05, batch=3, class_ids=None
):
    """Mosaic ``probs``: scene probabilities ``(K, H, W)`` (what a 1x1 model gives), or one constant
    distribution of K values per tile, in the grid's visiting order."""
    per_tile = not isinstance(probs, torch.Tensor)
    k = len(probs[0]) if per_tile else probs.shape[0]
    class_ids = class_ids or list(range(k))
    rows: list[tuple[int, np.ndarray, np.ndarray | None]] = []
    m = Mosaicker(
        grid,
        class_ids=class_ids,
        nodata=255,
        sink=lambda r, c, q: rows.append((r, c, q.get("probability"))),
        kernel=kernel,
        floor=floor,
        row_range=row_range,
        probabilities=probabilities,
    )
    s = grid.tile_size
    tiles = [t for t in grid.tiles(row_range)]
    for i in range(0, len(tiles), batch):
        chunk = tiles[i : i + batch]
        p = torch.zeros((len(chunk), k, s, s))
        v = torch.zeros((len(chunk), s, s), dtype=torch.bool)
        for n, t in enumerate(chunk):
            if per_tile:
                p[n] = torch.tensor(probs[i + n], dtype=torch.float32).view(k, 1, 1)
            else:
                p[n, :, : t.height, : t.width] = probs[:, t.row : t.row_end, t.col : t.col_end]
            v[n, : t.height, : t.width] = valid[t.row : t.row_end, t.col : t.col_end]
        m.add(chunk, p, v)
    m.finish()
    return rows, m


def _stack(rows, width):
    cls = np.concatenate([c for _, c, _ in rows]) if rows else np.zeros((0, width), np.uint8)
    prob = np.concatenate([p for _, _, p in rows]) if rows and rows[0][2] is not None else None
    return cls, prob


def _run_tiles(grid, tile_probs, **kw):
    """Class and probability rows of tiles that each predict one constant distribution."""
    rows, _ = _run(grid, tile_probs, torch.ones((grid.height, grid.width), dtype=torch.bool), **kw)
    return _stack(rows, grid.width)


@given(grids(), st.sampled_from(sorted(KERNELS)), st.floats(0.01, 1.0))
@settings(max_examples=60, deadline=None)
def test_mosaic_of_constant_probabilities_is_exact(grid, kernel, floor):
    # every tile says 0.1 / 0.6 / 0.3: however the overlaps are weighted, the blend is the same
    cls, prob = _run_tiles(grid, [(0.1, 0.6, 0.3)] * len(grid), kernel=kernel, floor=floor, class_ids=[4, 7, 9])
    assert cls.shape == prob.shape == (grid.height, grid.width)
    assert (cls == 7).all()
    assert (prob == round(0.6 * PROBABILITY_SCALE)).all()


@pytest.mark.parametrize("kernel", ["cosine", "gaussian"])
def test_two_tiles_switch_class_where_their_weights_cross(kernel):
    # two tiles side by side, columns 0..31 and 24..55: the left one says class 5, the right one 9
    grid = TileGrid(8, 56, 32, 8)
    assert grid.col_offsets == (0, 24)
    left, right = (0.8, 0.2), (0.2, 0.8)
    cls, prob = _run_tiles(grid, [left, right], kernel=kernel, class_ids=[5, 9])
    # the blend weights of the two tiles cross half-way through the overlap, between columns 27 and 28
    w = tile_weights(32, kernel=kernel, floor=0.05).astype(np.float64)[0]
    wl = np.concatenate([w, np.zeros(24)])
    wr = np.concatenate([np.zeros(24), w])
    assert (wl[:28] > wr[:28]).all() and (wl[28:] < wr[28:]).all()
    expected = np.where(np.arange(56) < 28, 5, 9)
    np.testing.assert_array_equal(cls, np.broadcast_to(expected, (8, 56)))
    # the winning probability is the weighted average: 0.8 where one tile alone covers a column,
    # falling towards 0.5 at the crossing
    p = np.maximum(wl * 0.8 + wr * 0.2, wl * 0.2 + wr * 0.8) / (wl + wr)
    assert np.abs(prob.astype(int) - np.round(p * PROBABILITY_SCALE)[None]).max() <= 1
    assert (prob[:, :24] == 204).all() and (prob[:, 32:] == 204).all()
    assert (prob[:, 24:32] < 204).all() and prob[0, 27] == prob[0, 28] < prob[0, 26]


@given(grids(max_side=120), st.integers(1, 5), st.sampled_from(sorted(KERNELS)))
@settings(max_examples=40, deadline=None)
def test_mosaic_of_pixelwise_probabilities_equals_direct_argmax(grid, k, kernel):
    probs = _pixel_probs(grid.height, grid.width, k)
    valid = torch.ones((grid.height, grid.width), dtype=torch.bool)
    rows, _ = _run(grid, probs, valid, kernel=kernel)
    # rows come top to bottom, each once, full width
    starts = [r for r, _, _ in rows]
    assert starts == sorted(starts) and starts[0] == 0
    cls, prob = _stack(rows, grid.width)
    assert cls.shape == (grid.height, grid.width)
    np.testing.assert_array_equal(cls, probs.argmax(0).numpy())
    expected_p = np.round(probs.max(0).values.numpy() * PROBABILITY_SCALE)
    assert np.abs(prob.astype(int) - expected_p).max() <= 1


def test_mosaic_nodata_and_class_ids():
    grid = TileGrid(70, 90, 32, 6)
    probs = _pixel_probs(70, 90, 3)
    valid = torch.ones((70, 90), dtype=torch.bool)
    valid[:10] = False
    valid[30:35, 40:80] = False
    rows, _ = _run(grid, probs, valid, class_ids=[3, 7, 11])
    cls, prob = _stack(rows, 90)
    expected = np.array([3, 7, 11])[probs.argmax(0).numpy()]
    expected[~valid.numpy()] = 255
    np.testing.assert_array_equal(cls, expected)
    assert (prob[~valid.numpy()] == PROBABILITY_NODATA).all()
    assert (prob[valid.numpy()] <= PROBABILITY_SCALE).all()


@given(grids(max_side=100), st.data())
@settings(max_examples=40, deadline=None)
def test_mosaic_strips_equal_whole_bit_for_bit(grid, data):
    k = data.draw(st.integers(2, 4))
    probs = _pixel_probs(grid.height, grid.width, k, seed=1)
    valid = torch.ones((grid.height, grid.width), dtype=torch.bool)
    whole, _ = _run(grid, probs, valid)
    cls_w, prob_w = _stack(whole, grid.width)
    cut = data.draw(st.integers(1, grid.height)) if grid.height > 1 else 1
    parts = [(0, cut), (cut, grid.height)] if cut < grid.height else [(0, grid.height)]
    pieces = []
    for rr in parts:
        rows, _ = _run(grid, probs, valid, row_range=rr, batch=data.draw(st.integers(1, 4)))
        c, p = _stack(rows, grid.width)
        assert c.shape == (rr[1] - rr[0], grid.width)
        assert rows[0][0] == rr[0]
        pieces.append((c, p))
    np.testing.assert_array_equal(np.concatenate([c for c, _ in pieces]), cls_w)
    np.testing.assert_array_equal(np.concatenate([p for _, p in pieces]), prob_w)


def test_mosaic_blends_disagreeing_tiles_smoothly():
    """Two tiles that disagree: the class switches inside the overlap, where weights cross."""
    grid = TileGrid(16, 56, 32, 8)  # columns at 0 and 24: overlap 24..32
    rows: list = []
    m = Mosaicker(grid, class_ids=[0, 1], nodata=255, sink=lambda r, c, p: rows.append(c), probabilities=False)
    tiles = list(grid.tiles())
    p = torch.zeros((2, 2, 32, 32))
    p[0, 0] = 0.9
    p[0, 1] = 0.1  # left tile says class 0
    p[1, 0] = 0.1
    p[1, 1] = 0.9  # right tile says class 1
    v = torch.ones((2, 32, 32), dtype=torch.bool)
    m.add(tiles, p, v)
    m.finish()
    cls = np.concatenate(rows)
    assert (cls[:, :24] == 0).all() and (cls[:, 32:] == 1).all()
    switch = np.argmax(cls[0] == 1)
    assert 24 <= switch <= 32
    assert abs(switch - 28) <= 1  # weights cross at the middle of the overlap


def test_rows_no_tile_reached_become_nodata():
    grid = TileGrid(100, 20, 16, 2)
    rows: list = []
    m = Mosaicker(grid, class_ids=[0, 1], nodata=9, sink=lambda r, c, p: rows.append((r, c)))
    # only tiles of grid row 0 and the last grid row (middle rows skipped as all-nodata)
    last = grid.shape[0] - 1
    tiles = [t for t in grid.tiles() if t.grid_row in (0, last)]
    p = torch.zeros((len(tiles), 2, 16, 16))
    p[:, 1] = 1
    v = torch.ones((len(tiles), 16, 16), dtype=torch.bool)
    m.add(tiles, p, v)
    m.finish()
    cls = np.concatenate([c for _, c in rows])
    assert cls.shape == (100, 20)
    assert (cls[:16] == 1).all() and (cls[grid.row_offsets[last] :] == 1).all()
    assert (cls[16 : grid.row_offsets[last]] == 9).all()


def test_out_of_order_tiles_are_refused():
    grid = TileGrid(100, 20, 16, 2)
    m = Mosaicker(grid, class_ids=[0], nodata=9, sink=lambda *a: None)
    tiles = list(grid.tiles())
    one = torch.ones((1, 1, 16, 16))
    v = torch.ones((1, 16, 16), dtype=torch.bool)
    m.add([tiles[5]], one, v)
    with pytest.raises(ValueError, match="grid order"):
        m.add([tiles[0]], one, v)


def test_accumulator_memory_depends_on_width_and_tile_not_height():
    k, t, o, w = 3, 128, 16, 1500
    per_px = 4 * k + 4 + 1  # float per class, float weight, bool valid
    full_strip = t * w * per_px  # what a tile-high, full-width float strip would hold
    peaks = {}
    for h in (600, 600 + 15 * (t - o), 700):  # the first two end with the same snapped band
        grid = TileGrid(h, w, t, o)
        m = Mosaicker(grid, class_ids=list(range(k)), nodata=9, sink=lambda *a: None)
        p = torch.full((1, k, t, t), 1.0 / k)
        v = torch.ones((1, t, t), dtype=torch.bool)
        for tile in grid.tiles():
            m.add([tile], p, v)
        m.finish()
        peaks[h] = m.strip_bytes
    assert peaks[600] == peaks[600 + 15 * (t - o)]
    assert max(peaks.values()) < 0.4 * full_strip
