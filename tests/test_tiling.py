"""The tile grid, padding, the block-aligned row buffer and the streaming tile reader."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geopsp.errors import TilingError
from geopsp.tiling import TileGrid, axis_offsets
from geopsp.tiling.reader import RowBuffer, TileReader, pad_tile


@st.composite
def grids(draw):
    tile = draw(st.integers(4, 96))
    overlap = draw(st.integers(0, (tile - 1) // 2))
    height = draw(st.integers(1, 400))
    width = draw(st.integers(1, 400))
    return TileGrid(height, width, tile, overlap)


@given(grids())
@settings(max_examples=200, deadline=None)
def test_grid_covers_scene_and_snaps_inward(grid):
    cover = np.zeros((grid.height, grid.width), dtype=np.int32)
    seen = []
    for t in grid.tiles():
        seen.append(t.index)
        assert 0 <= t.row and t.row_end <= grid.height
        assert 0 <= t.col and t.col_end <= grid.width
        assert t.height == min(grid.tile_size, grid.height)
        assert t.width == min(grid.tile_size, grid.width)
        cover[t.row : t.row_end, t.col : t.col_end] += 1
    assert cover.min() >= 1
    assert sorted(seen) == list(range(len(grid)))
    for offs, length in ((grid.row_offsets, grid.height), (grid.col_offsets, grid.width)):
        assert offs[0] == 0
        assert all(b > a for a, b in itertools.pairwise(offs))
        assert min(offs[-1] + grid.tile_size, length) == length  # last tile ends at the scene edge
        # neighbours overlap by at least `overlap` (more only for the snapped last one)
        for a, b in itertools.pairwise(offs):
            assert a + grid.tile_size - b >= grid.overlap
        for a, b in itertools.pairwise(offs[:-1]):
            assert a + grid.tile_size - b == grid.overlap


@given(grids(), st.data())
@settings(max_examples=100, deadline=None)
def test_row_range_selects_exactly_the_tiles_touching_it(grid, data):
    r0 = data.draw(st.integers(0, grid.height - 1))
    r1 = data.draw(st.integers(r0 + 1, grid.height))
    chosen = {t.index for t in grid.tiles((r0, r1))}
    expected = {t.index for t in grid.tiles() if t.row < r1 and t.row_end > r0}
    assert chosen == expected
    assert grid.count((r0, r1)) == len(chosen)


def test_axis_offsets_examples():
    assert axis_offsets(1000, 512, 64) == (0, 448, 488)
    assert axis_offsets(512, 512, 64) == (0,)
    assert axis_offsets(513, 512, 64) == (0, 1)
    assert axis_offsets(10, 512, 64) == (0,)
    assert axis_offsets(896, 512, 64) == (0, 384)


def test_bands_join_the_snapped_last_row():
    g = TileGrid(1000, 100, 512, 64)  # rows at 0, 448 and (snapped) 488
    assert g.bands == ((0,), (1, 2))
    assert g.band_span(0) == (0, 448) and g.band_span(1) == (448, 1000)
    assert TileGrid(960, 100, 512, 64).bands == ((0,), (1,))  # last row not snapped: no join


@given(grids())
@settings(max_examples=200, deadline=None)
def test_bands_share_at_most_overlap_rows(grid):
    """Rows shared by a band and the next are at most `overlap` high, so the mosaic's carry is small."""
    for b in range(len(grid.bands) - 1):
        rows = grid.bands[b]
        bottom = max(min(grid.row_offsets[r] + grid.tile_size, grid.height) for r in rows)
        assert bottom - grid.band_span(b)[1] <= grid.overlap
    order = [(t.grid_row, t.grid_col) for t in grid.tiles()]
    for rows in grid.bands:
        band_tiles = [(r, c) for r, c in order if r in rows]
        assert band_tiles == [(r, c) for c in range(grid.shape[1]) for r in rows]


@pytest.mark.parametrize(("tile", "overlap"), [(64, 32), (64, 40), (0, 0), (16, -1)])
def test_bad_tiling_is_a_clear_error(tile, overlap):
    with pytest.raises(TilingError):
        TileGrid(100, 100, tile, overlap)


@pytest.mark.parametrize("rr", [(5, 5), (-1, 3), (0, 101), (50, 20)])
def test_bad_row_range(rr):
    with pytest.raises(TilingError, match="row range"):
        TileGrid(100, 100, 64, 8).check_row_range(rr)


@given(st.integers(1, 20), st.integers(1, 20), st.integers(20, 40))
@settings(max_examples=50, deadline=None)
def test_pad_tile_reflects_and_masks_padding(h, w, size):
    data = np.arange(2 * h * w, dtype=np.uint16).reshape(2, h, w)
    valid = np.ones((h, w), dtype=bool)
    d, v = pad_tile(data, valid, size)
    assert d.shape == (2, size, size) and v.shape == (size, size)
    np.testing.assert_array_equal(d[:, :h, :w], data)
    assert v[:h, :w].all() and v.sum() == h * w
    if h > 1 and size > h:
        np.testing.assert_array_equal(d[:, h, :w], data[:, h - 2])  # reflection, not edge repeat


class ArrayScene:
    """A real in-memory scene with a read_rows that records every row it decodes."""

    def __init__(self, data, valid, block_rows):
        self.data = data
        self.valid = valid
        self.block_rows = block_rows
        self.reads: list[tuple[int, int]] = []

    def read_rows(self, src, info, row_off, height, bands):
        self.reads.append((row_off, height))
        idx = [b - 1 for b in bands]
        return self.data[idx, row_off : row_off + height].copy(), self.valid[row_off : row_off + height].copy()


@given(grids(), st.integers(1, 64), st.data())
@settings(max_examples=60, deadline=None)
def test_reader_decodes_each_block_once_and_cuts_exact_tiles(grid, block_rows, data):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, size=(3, grid.height, grid.width), dtype=np.uint8)
    valid = np.ones((grid.height, grid.width), dtype=bool)
    use_range = data.draw(st.booleans())
    rr = None
    if use_range:
        r0 = data.draw(st.integers(0, grid.height - 1))
        rr = (r0, data.draw(st.integers(r0 + 1, grid.height)))
    scene = ArrayScene(arr, valid, block_rows)
    with TileReader(
        None, None, grid, [3, 1], row_range=rr, threads=2, prefetch=3, read_rows=scene.read_rows, block_rows=block_rows
    ) as reader:
        items = list(reader)
    assert [it.tile.index for it in items] == [t.index for t in grid.tiles(rr)]
    for it in items:
        t = it.tile
        assert it.data.shape == (2, *grid.input_shape)
        np.testing.assert_array_equal(
            it.data[:, : t.height, : t.width], arr[[2, 0], t.row : t.row_end, t.col : t.col_end]
        )
    # every row read at most once, reads contiguous and increasing
    rows = [r for off, h in scene.reads for r in range(off, off + h)]
    assert len(rows) == len(set(rows))
    assert rows == sorted(rows)
    # reads end on block boundaries (or the scene edge) unless blocks are huge
    if block_rows <= 4 * grid.tile_size:
        for off, h in scene.reads:
            assert (off + h) % block_rows == 0 or off + h == grid.height


def test_reader_skips_all_nodata_tiles():
    grid = TileGrid(100, 100, 32, 4)
    arr = np.ones((1, 100, 100), dtype=np.uint8)
    valid = np.zeros((100, 100), dtype=bool)
    valid[40:45, 40:45] = True  # one small valid patch
    scene = ArrayScene(arr, valid, 16)
    with TileReader(None, None, grid, [1], read_rows=scene.read_rows, block_rows=16) as reader:
        items = list(reader)
    run = [it for it in items if not it.skipped]
    assert len(items) == len(grid)
    assert reader.skipped == len(grid) - len(run)
    assert {it.tile.index for it in run} == {
        t.index for t in grid.tiles() if t.row < 45 and t.row_end > 40 and t.col < 45 and t.col_end > 40
    }


def test_reader_error_surfaces_in_consumer():
    grid = TileGrid(100, 50, 32, 4)

    def broken(src, info, row_off, height, bands):
        if row_off > 30:
            raise OSError("block failed to decode")
        return np.zeros((1, height, 50), np.uint8), np.ones((height, 50), bool)

    reader = TileReader(None, None, grid, [1], read_rows=broken, block_rows=8)
    with pytest.raises(OSError, match="decode"), reader:
        for _ in reader:
            pass


def test_reader_close_mid_iteration_stops_threads():
    grid = TileGrid(2000, 64, 32, 4)
    scene = ArrayScene(np.zeros((1, 2000, 64), np.uint8), np.ones((2000, 64), bool), 8)
    reader = TileReader(None, None, grid, [1], read_rows=scene.read_rows, block_rows=8, prefetch=2)
    it = iter(reader)
    next(it)
    reader.close()
    assert reader._thread is not None and not reader._thread.is_alive()
    assert max(off + h for off, h in scene.reads) < 2000  # it stopped early


def test_row_buffer_reads_aligned_chunks_and_drops_passed_ones():
    data = np.arange(100 * 4, dtype=np.int32).reshape(1, 100, 4)
    scene = ArrayScene(data, np.ones((100, 4), bool), 10)
    buf = RowBuffer(scene.read_rows, None, None, height=100, bands=[1], block_rows=10, max_align=100)
    buf.ensure(0, 25)
    a, _ = buf.cut(0, 25, 1, 3)
    np.testing.assert_array_equal(a[0], data[0, 0:25, 1:3])
    buf.ensure(20, 55)
    b, v = buf.cut(20, 55, 0, 4)  # spans two chunks
    np.testing.assert_array_equal(b[0], data[0, 20:55])
    assert v.shape == (35, 4) and v.all()
    assert scene.reads == [(0, 30), (30, 30)]
    buf.ensure(40, 60)
    assert buf.nbytes == 30 * 4 * (4 + 1)  # the first chunk (rows 0-29) is gone
    with pytest.raises(ValueError, match="not buffered"):
        buf.cut(20, 30, 0, 4)
