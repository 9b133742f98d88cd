"""The tile grid, padding, the block-aligned row buffer and the streaming tile reader."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geopsp.errors import TilingError
from geopsp.model.inputs import model_input
from geopsp.model.meta import Normalization
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


@given(st.integers(1, 20), st.integers(1, 20), st.integers(20, 40), st.integers(0, 2**32 - 1))
@settings(max_examples=50, deadline=None)
def test_pad_tile_reflects_data_and_validity_together(h, w, size, seed):
    data = np.arange(2 * h * w, dtype=np.uint16).reshape(2, h, w)
    valid = np.random.default_rng(seed).random((h, w)) > 0.3
    d, v = pad_tile(data, valid, size)
    assert d.shape == (2, size, size) and v.shape == (size, size)
    np.testing.assert_array_equal(d[:, :h, :w], data)
    np.testing.assert_array_equal(v[:h, :w], valid)
    if h > 1 and size > h:
        np.testing.assert_array_equal(d[:, h, :w], data[:, h - 2])  # reflection, not edge repeat
        np.testing.assert_array_equal(v[h, :w], valid[h - 2])  # a padding pixel is valid where its source is
    # so normalizing (and filling invalid pixels) commutes with padding
    norm = Normalization.from_stats([3.0, 5.0], [2.0, 4.0])
    pad_then_fill = model_input(d, v, norm)
    fill_then_pad, _ = pad_tile(model_input(data, valid, norm), valid, size)
    np.testing.assert_array_equal(pad_then_fill, fill_then_pad)


class ArrayScene:
    """A real in-memory scene with a read_rows that records every row it decodes."""

    def __init__(self, data, valid, block_rows):
        self.data = data
        self.valid = valid
        self.block_rows = block_rows
        self.reads: list[tuple[int, int, int, int]] = []

    def read_rows(self, src, info, row_off, height, bands, col_off=0, width=None):
        width = self.data.shape[2] - col_off if width is None else width
        self.reads.append((row_off, height, col_off, width))
        idx = [b - 1 for b in bands]
        rows, cols = slice(row_off, row_off + height), slice(col_off, col_off + width)
        return self.data[idx, rows, cols].copy(), self.valid[rows, cols].copy()


@given(grids(), st.integers(1, 64), st.integers(1, 80), st.data())
@settings(max_examples=60, deadline=None)
def test_reader_decodes_each_block_once_and_cuts_exact_tiles(grid, block_rows, block_cols, data):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, size=(3, grid.height, grid.width), dtype=np.uint8)
    valid = rng.random((grid.height, grid.width)) < 0.9  # the mask is stored bit-packed
    use_range = data.draw(st.booleans())
    rr = None
    if use_range:
        r0 = data.draw(st.integers(0, grid.height - 1))
        rr = (r0, data.draw(st.integers(r0 + 1, grid.height)))
    scene = ArrayScene(arr, valid, block_rows)
    with TileReader(
        None,
        None,
        grid,
        [3, 1],
        row_range=rr,
        threads=2,
        prefetch=3,
        read_rows=scene.read_rows,
        block_rows=block_rows,
        block_cols=block_cols,
    ) as reader:
        items = list(reader)
    assert [it.tile.index for it in items] == [t.index for t in grid.tiles(rr)]
    for it in items:
        t = it.tile
        assert it.data.shape == (2, *grid.input_shape)
        np.testing.assert_array_equal(
            it.data[:, : t.height, : t.width], arr[[2, 0], t.row : t.row_end, t.col : t.col_end]
        )
        np.testing.assert_array_equal(it.valid[: t.height, : t.width], valid[t.row : t.row_end, t.col : t.col_end])
        pad = ((0, it.valid.shape[0] - t.height), (0, it.valid.shape[1] - t.width))
        # padding copies the validity of the pixels it reflects (the mosaic crops it away)
        np.testing.assert_array_equal(it.valid, np.pad(it.valid[: t.height, : t.width], pad, mode="reflect"))
    # every pixel read at most once
    count = np.zeros((grid.height, grid.width), dtype=int)
    for off, h, c0, w in scene.reads:
        count[off : off + h, c0 : c0 + w] += 1
    assert count.max() == 1
    # reads cover whole blocks: columns on block columns, rows ending on block rows (or the
    # scene edge) unless blocks are huge
    for off, h, c0, w in scene.reads:
        assert c0 % block_cols == 0 and ((c0 + w) % block_cols == 0 or c0 + w == grid.width)
        if block_rows <= 4 * grid.tile_size:
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

    def broken(src, info, row_off, height, bands, col_off=0, width=None):
        if row_off > 30:
            raise OSError("block failed to decode")
        return np.zeros((1, height, width), np.uint8), np.ones((height, width), bool)

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
    assert max(off + h for off, h, _, _ in scene.reads) < 2000  # it stopped early


def test_row_buffer_reads_lazily_in_aligned_chunks_and_drops_passed_rows():
    data = np.arange(100 * 4, dtype=np.int32).reshape(1, 100, 4)
    scene = ArrayScene(data, np.ones((100, 4), bool), 10)
    buf = RowBuffer(scene.read_rows, None, None, height=100, width=4, bands=[1], block_rows=10, max_align=100)
    buf.ensure(0, 25)
    assert scene.reads == []  # nothing is read before a tile needs it
    a, _ = buf.cut(0, 25, 1, 3)
    np.testing.assert_array_equal(a[0], data[0, 0:25, 1:3])
    assert scene.reads == [(0, 30, 0, 4)]  # to the end of the block row
    buf.ensure(20, 55)
    # rows 0-19 are cut off the first chunk before the next read: 4 int32 columns and a
    # 1-byte packed mask a row
    assert buf.nbytes == 10 * (4 * 4 + 1)
    b, v = buf.cut(20, 55, 0, 4)  # spans two chunks
    np.testing.assert_array_equal(b[0], data[0, 20:55])
    assert v.shape == (35, 4) and v.all()
    assert scene.reads == [(0, 30, 0, 4), (30, 30, 0, 4)]
    assert buf.nbytes == 40 * (4 * 4 + 1)
    buf.ensure(40, 60)
    assert buf.nbytes == 20 * (4 * 4 + 1)  # the first chunk is gone, the second cut to rows 40-59
    with pytest.raises(ValueError, match="not buffered"):
        buf.cut(20, 30, 0, 4)


def test_row_buffer_reads_column_groups_on_demand_and_releases_passed_ones():
    rng = np.random.default_rng(1)
    data = rng.integers(0, 9, size=(2, 64, 40), dtype=np.uint8)
    valid = rng.random((64, 40)) < 0.7
    scene = ArrayScene(data, valid, 16)
    # blocks 16 x 8, groups of whole blocks at least 12 wide: [0, 16), [16, 32), [32, 40)
    buf = RowBuffer(
        scene.read_rows,
        None,
        None,
        height=64,
        width=40,
        bands=[2, 1],
        block_rows=16,
        max_align=64,
        block_cols=8,
        group_cols=12,
    )
    buf.ensure(0, 20)
    d, v = buf.cut(0, 20, 3, 14)
    np.testing.assert_array_equal(d, data[[1, 0], 0:20, 3:14])
    np.testing.assert_array_equal(v, valid[0:20, 3:14])
    assert scene.reads == [(0, 32, 0, 16)]  # only the group the tile lies in
    d, v = buf.cut(0, 20, 13, 35)  # three groups, read as the tile reaches them
    np.testing.assert_array_equal(d, data[[1, 0], 0:20, 13:35])
    np.testing.assert_array_equal(v, valid[0:20, 13:35])
    assert scene.reads == [(0, 32, 0, 16), (0, 32, 16, 16), (0, 32, 32, 8)]
    held = buf.nbytes
    buf.release(16, 12)  # tiles to come start at column 16 or later; the next band at row 12
    assert buf.nbytes == held - 12 * (16 * 2 + 2)  # group 0 lost rows 0-11 (2 bands, 2 mask bytes)
    with pytest.raises(ValueError, match="released"):
        buf.cut(0, 20, 10, 20)
    np.testing.assert_array_equal(buf.cut(12, 20, 10, 20)[0], data[[1, 0], 12:20, 10:20])
    buf.ensure(12, 40)
    d, v = buf.cut(12, 40, 0, 40)
    np.testing.assert_array_equal(d, data[[1, 0], 12:40, :])
    np.testing.assert_array_equal(v, valid[12:40, :])
    count = np.zeros((64, 40), int)
    for off, h, c0, w in scene.reads:
        count[off : off + h, c0 : c0 + w] += 1
    assert count.max() == 1 and count[:48].min() == 1  # every block read once, none twice


@pytest.mark.parametrize("width", [256, 2048])
def test_reader_buffer_holds_about_one_tile_of_rows_at_any_width(width):
    """Whole block-rows would peak at (tile + block) rows of the full width; the buffer holds
    about one tile's rows, plus the few column groups the current tile reaches into."""
    tile, overlap, block, group = 64, 8, 64, 128
    grid = TileGrid(640, width, tile, overlap)
    scene = ArrayScene(np.ones((3, 640, width), np.uint8), np.ones((640, width), bool), block)
    reader = TileReader(None, None, grid, [1, 2, 3], read_rows=scene.read_rows, block_rows=block, prefetch=2)
    reader.buffer = RowBuffer(
        scene.read_rows,
        None,
        None,
        height=640,
        width=width,
        bands=[1, 2, 3],
        block_rows=block,
        max_align=4 * tile,
        block_cols=block,
        group_cols=group,
    )
    with reader:
        assert sum(1 for _ in reader) == len(grid)
    per_px = 3 + 1 / 8
    assert reader.buffer.peak_bytes <= tile * width * per_px + 3 * (tile + block) * group * per_px
    if width == 2048:
        assert reader.buffer.peak_bytes < 0.7 * (tile + block) * width * per_px
