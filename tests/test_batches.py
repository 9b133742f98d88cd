"""Batches cut straight into reused buffers by several threads, and the clocks and sizes of a run."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geopsp.inference.mosaic import Mosaicker
from geopsp.inference.predict import Predictor
from geopsp.inference.sizing import CPU_BATCH_SIZE, cuda_batch_size
from geopsp.inference.timing import StageClock
from geopsp.model.meta import Normalization
from geopsp.tiling import TileGrid
from geopsp.tiling.reader import TileReader, pad_tile
from geopsp.tiling.rows import pad_in_place
from tests.test_predict import make_meta
from tests.test_tiling import ArrayScene, grids


@given(grids(), st.integers(1, 7), st.integers(1, 48), st.data())
@settings(max_examples=40, deadline=None)
def test_batches_hold_the_tiles_one_by_one_iteration_gives(grid, batch_size, block_rows, data):
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 65535, size=(2, grid.height, grid.width), dtype=np.uint16)
    valid = rng.random((grid.height, grid.width)) < 0.95
    valid[: grid.height // 3] = False  # whole tiles of nodata are skipped
    rr = None
    if data.draw(st.booleans()):
        r0 = data.draw(st.integers(0, grid.height - 1))
        rr = (r0, data.draw(st.integers(r0 + 1, grid.height)))
    scene = ArrayScene(arr, valid, block_rows)
    with TileReader(None, None, grid, [2, 1], row_range=rr, read_rows=scene.read_rows, block_rows=block_rows) as one:
        expected = list(one)
    scene = ArrayScene(arr, valid, block_rows)
    seen_run, seen_skipped = [], []
    with TileReader(
        None, None, grid, [2, 1], row_range=rr, read_rows=scene.read_rows, block_rows=block_rows, threads=3
    ) as reader:
        for batch in reader.batches(batch_size):
            assert len(batch.tiles) <= batch_size
            assert batch.data.shape == (len(batch.tiles), 2, *grid.input_shape)
            assert batch.valid.shape == (len(batch.tiles), *grid.input_shape)
            for i, tile in enumerate(batch.tiles):
                seen_run.append((tile.index, batch.data[i].copy(), batch.valid[i].copy()))
            seen_skipped += [t.index for t in batch.skipped]
            batch.release()
    assert [i for i, _, _ in seen_run] == [it.tile.index for it in expected if not it.skipped]
    assert seen_skipped == [it.tile.index for it in expected if it.skipped]
    for (_, d, v), it in zip(seen_run, [it for it in expected if not it.skipped], strict=True):
        np.testing.assert_array_equal(d, it.data)
        np.testing.assert_array_equal(v, it.valid)


def test_reader_waits_for_released_buffers_and_calls_their_wait_first():
    grid = TileGrid(256, 64, 32, 0)  # 16 tiles
    scene = ArrayScene(np.ones((1, 256, 64), np.uint8), np.ones((256, 64), bool), 32)
    waits = []
    reader = TileReader(None, None, grid, [1], read_rows=scene.read_rows, block_rows=32, prefetch=1, ring_size=3)
    held = []
    it = reader.batches(2)
    held.append(next(it))
    held.append(next(it))
    time.sleep(0.3)  # the reader fills the third buffer, then must wait
    assert reader._ring.allocated == 3
    tiles_read = max(off + h for off, h, _, _ in scene.reads)
    assert tiles_read < 256  # it stopped: no buffer is free
    held[0].release(lambda: waits.append("waited"))
    rest = []
    for batch in it:
        rest.append(len(batch.tiles))
        batch.release()
    held[1].release()
    reader.close()
    assert waits == ["waited"]  # the returned buffer's wait ran before it was refilled
    assert sum(rest) + 4 == 16 and reader._ring.allocated == 3


def test_closing_a_batch_reader_mid_scene_stops_its_threads():
    grid = TileGrid(4000, 64, 32, 4)
    scene = ArrayScene(np.zeros((1, 4000, 64), np.uint8), np.ones((4000, 64), bool), 8)
    reader = TileReader(None, None, grid, [1], read_rows=scene.read_rows, block_rows=8, ring_size=2)
    it = reader.batches(4)
    next(it)  # held, never released: the reader blocks on the ring
    reader.close()
    assert reader._thread is not None and not reader._thread.is_alive()
    assert max(off + h for off, h, _, _ in scene.reads) < 4000


def test_batch_reader_errors_reach_the_consumer():
    grid = TileGrid(100, 50, 32, 4)

    def broken(src, info, row_off, height, bands, col_off=0, width=None):
        if row_off > 30:
            raise OSError("block failed to decode")
        return np.zeros((1, height, width), np.uint8), np.ones((height, width), bool)

    reader = TileReader(None, None, grid, [1], read_rows=broken, block_rows=8)
    with pytest.raises(OSError, match="decode"), reader:
        for batch in reader.batches(2):
            batch.release()


@given(st.integers(1, 40), st.integers(1, 40), st.integers(1, 40), st.integers(1, 40))
@settings(max_examples=200, deadline=None)
def test_pad_in_place_reflects_like_pad_tile(h, w, extra_h, extra_w):
    rng = np.random.default_rng(h * 41 + w)
    x = np.zeros((2, h + extra_h, w + extra_w), np.int32)
    x[:, :h, :w] = rng.integers(0, 100, size=(2, h, w))
    v = np.zeros((h + extra_h, w + extra_w), bool)
    v[:h, :w] = rng.random((h, w)) < 0.5
    want, want_v = pad_tile(x[:, :h, :w].copy(), v[:h, :w].copy(), (h + extra_h, w + extra_w))
    pad_in_place(x, h, w)
    pad_in_place(v, h, w)
    np.testing.assert_array_equal(x, want)
    np.testing.assert_array_equal(v, want_v)


def test_predictor_prepares_into_a_slot_the_bits_of_prepare():
    meta = make_meta(3, classes=2, dtype="uint16", norm=Normalization.from_stats([100.0] * 3, [20.0] * 3))
    pred = Predictor(torch.nn.Conv2d(3, 2, 1), meta, device="cpu")
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 4000, size=(3, 32, 32)).astype(np.uint16)
    valid = rng.random((32, 32)) < 0.8
    slot = np.full((3, 32, 32), np.nan, np.float32)
    pred.prepare_into(None, raw, valid, slot)  # type: ignore[arg-type]
    want, _ = pred.prepare(None, raw, valid)  # type: ignore[arg-type]
    np.testing.assert_array_equal(slot, want)
    assert pred.host_dtype(np.dtype("uint16")) == np.float32 and not pred.casts_only
    assert pred.batch_size_for(None, (32, 32)) == CPU_BATCH_SIZE and pred.batch_size_for(7, (32, 32)) == 7
    x, _ = pred.to_device(np.stack([slot]), valid[None])
    assert np.shares_memory(x.numpy(), slot) is False  # stacked here: a copy of the one slot
    batch = np.stack([slot, slot])
    x, _ = pred.to_device(batch, np.stack([valid, valid]))
    assert np.shares_memory(x.numpy(), batch)  # a stacked buffer is used as it is


def test_mosaic_sends_rows_a_band_late_in_order_and_unchanged():
    grid = TileGrid(90, 70, 32, 8)
    rng = np.random.default_rng(5)
    out = {}
    for lag in (0, 1):
        got: list[tuple[int, np.ndarray]] = []
        calls = []
        mosaic = Mosaicker(grid, class_ids=[1, 2, 3], nodata=0, sink=lambda r, c, p, got=got: got.append((r, c)))
        mosaic._lag = lag
        for t in grid.tiles():
            probs = torch.from_numpy(rng.random((1, 3, 32, 32), dtype=np.float32))
            mosaic.add([t], probs, torch.ones((1, 32, 32), dtype=torch.bool))
            calls.append(len(got))
        mosaic.finish()
        rows = [r for r, _ in got]
        assert rows == sorted(rows)
        out[lag] = (np.concatenate([c for _, c in got]), calls)
        rng = np.random.default_rng(5)
    np.testing.assert_array_equal(out[0][0], out[1][0])
    assert out[1][1] != out[0][1]  # rows left a band later


def test_stage_clock_sums_host_time_per_stage():
    clock = StageClock("cpu")
    for _ in range(3):
        with clock.time("model"):
            time.sleep(0.01)
    clock.add("blend", 0.5)
    assert 0.03 <= clock.seconds("model") < 0.5
    assert clock.seconds("blend") == 0.5 and clock.seconds("other") == 0.0
    assert not clock.cuda and StageClock("cuda:1").cuda


@pytest.mark.parametrize(
    ("free_gib", "one_mb", "two_mb", "want"),
    [(139, 900, 1500, 64), (24, 900, 1500, 16), (10, 900, 1500, 8), (1, 900, 1500, 1), (80, 100, 100, 64)],
)
def test_cuda_batch_is_the_largest_power_of_two_half_the_free_memory_holds(free_gib, one_mb, two_mb, want):
    n = cuda_batch_size(free_bytes=free_gib << 30, one_tile_bytes=one_mb << 20, two_tile_bytes=two_mb << 20)
    assert n == want
    per, fixed = (two_mb - one_mb) << 20, (2 * one_mb - two_mb) << 20
    if 1 < n < 64:
        assert fixed + n * per <= (free_gib << 30) / 2 < fixed + 2 * n * per


def test_reader_cutters_run_in_parallel_threads():
    grid = TileGrid(512, 512, 64, 8)
    scene = ArrayScene(np.ones((3, 512, 512), np.uint8), np.ones((512, 512), bool), 64)
    names = set()

    class Slow:
        casts_only = False

        def host_dtype(self, dtype):
            return np.dtype(np.float32)

        def host_array(self, shape, dtype):
            return np.empty(shape, dtype)

        def prepare_into(self, tile, raw, valid, out):
            names.add(threading.current_thread().name)
            time.sleep(0.002)
            out[...] = raw

    with TileReader(None, None, grid, [1, 2, 3], read_rows=scene.read_rows, block_rows=64, threads=3) as reader:
        n = 0
        for batch in reader.batches(8, Slow()):
            n += len(batch.tiles)
            batch.release()
    assert n == len(grid) and len([x for x in names if x.startswith("geopsp-prep")]) >= 2


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_fused_argmax_of_the_cuda_path_gives_the_classes_of_the_where_passes(backend):
    grid = TileGrid(100, 120, 32, 8)
    rng = np.random.default_rng(9)
    rows = {}
    for fused in (False, True):
        got = []
        mosaic = Mosaicker(
            grid, class_ids=[3, 1, 7, 5], nodata=0, backend=backend, probabilities=True,
            sink=lambda r, c, q, got=got: got.append((c, q["probability"])),
        )  # fmt: skip
        mosaic._fused_argmax = fused
        for t in grid.tiles():
            p = rng.integers(0, 3, size=(1, 4, 32, 32)).astype(np.float32)  # many exact ties
            v = rng.random((1, 32, 32)) < 0.9
            mosaic.add(
                [t], torch.from_numpy(p) if backend == "torch" else p, torch.from_numpy(v) if backend == "torch" else v
            )
        mosaic.finish()
        rows[fused] = (np.concatenate([c for c, _ in got]), np.concatenate([p for _, p in got]))
        rng = np.random.default_rng(9)
    np.testing.assert_array_equal(rows[True][0], rows[False][0])
    np.testing.assert_array_equal(rows[True][1], rows[False][1])
    assert set(np.unique(rows[True][0])) <= {0, 1, 3, 5, 7}
