"""Stream tiles of a scene in grid order, reading each compressed block once.

A background thread reads the scene in block-aligned pieces (``geopsp.io.raster.read_rows``
over groups of whole blocks, as the tiles reach them) into a row buffer that slides down the
scene (:class:`~geopsp.tiling.rows.RowBuffer`). Windowed reads of overlapping tiles would
decode every block several times (about 4x slower on compressed scenes); here each block is
decoded exactly once, and rows are forgotten as soon as no later tile needs them. Tiles
that hold only nodata are reported as skipped and never preprocessed. The reader thread only
cuts each tile's valid mask; a pool of ``threads`` workers copies the tile's data out of the
buffer, pads it (by reflection) and preprocesses it while the model runs, and the consumer
receives the tiles in grid order: one by one (iterating the reader), or stacked in batches
in reused buffers (:meth:`TileReader.batches`, :mod:`geopsp.tiling.batches`).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from geopsp.tiling.batches import NumpyPreparer, SlotRing, SlotSet, TileBatch, TilePreparer, slot_arrays
from geopsp.tiling.rows import Piece, ReadRows, RowBuffer, assemble, pad_in_place
from geopsp.tiling.windows import Tile, TileGrid

__all__ = ["PreparedTile", "RowBuffer", "TileReader", "pad_tile"]

logger = logging.getLogger(__name__)


Prepare = Callable[[Tile, NDArray[Any], NDArray[np.bool_]], tuple[NDArray[Any], NDArray[np.bool_]]]


@dataclass(frozen=True, slots=True)
class PreparedTile:
    """A tile ready for the model, or a skipped one (``data is None``)."""

    tile: Tile
    data: NDArray[Any] | None
    valid: NDArray[np.bool_] | None

    @property
    def skipped(self) -> bool:
        """True when the tile held only nodata and was not prepared."""
        return self.data is None


def pad_tile(
    data: NDArray[Any], valid: NDArray[np.bool_], size: int | tuple[int, int]
) -> tuple[NDArray[Any], NDArray[np.bool_]]:
    """Pad a ``(C, h, w)`` window to ``(C, rows, cols)`` by reflection (bottom and right).

    ``size`` is ``(rows, cols)`` or one edge for both. The valid mask is reflected with the
    data, so a padding pixel is valid exactly where the pixel it copies is, and the model input
    (:func:`geopsp.model.inputs.model_input`) is the same whether padding or normalization comes
    first. Padding never reaches the output: the mosaic keeps only the tile's own extent.
    Reflection of an axis of length 1 repeats it.

    Examples
    --------
    >>> d, v = pad_tile(np.arange(3, dtype=np.uint8).reshape(1, 1, 3), np.array([[True, False, True]]), 5)
    >>> d[0, 0].tolist(), v[0].tolist()
    ([0, 1, 2, 1, 0], [True, False, True, False, True])
    """
    rows, cols = (size, size) if isinstance(size, int) else size
    _, h, w = data.shape
    if h == rows and w == cols:
        return data, valid
    out = np.pad(data, ((0, 0), (0, rows - h), (0, cols - w)), mode="reflect")
    vout = np.pad(valid, ((0, rows - h), (0, cols - w)), mode="reflect")
    return out, vout


_DONE = object()


class TileReader:
    """Iterate :class:`PreparedTile` of a grid (or a strip of it) in the grid's visiting order.

    Parameters
    ----------
    src, info : objects
        An open dataset and its ``SceneInfo`` (``geopsp.io.raster.open_scene``).
    grid : TileGrid
        The tile grid.
    bands : sequence of int
        1-based bands the model reads.
    prepare : callable, optional
        ``prepare(tile, data, valid) -> (array, valid)`` run in the worker threads on the
        tile padded to ``(C, *grid.input_shape)`` (for instance normalization). Default: identity.
    row_range : (int, int), optional
        Only tiles overlapping scene rows ``[r0, r1)``.
    threads : int
        Worker threads preparing tiles (reading itself is one background thread).
    prefetch : int
        Tiles prepared ahead of the consumer (bounds memory).
    read_rows : callable, optional
        Row reader; default ``geopsp.io.raster.read_rows``.
    block_rows, block_cols : int, optional
        Rows and columns per file block; default from ``info.block_shape``.
    ring_size : int
        Batch buffers of :meth:`batches` (one filling, one queued, one in use, one being
        copied to a device).
    """

    def __init__(
        self,
        src: Any,
        info: Any,
        grid: TileGrid,
        bands: Sequence[int],
        *,
        prepare: Prepare | None = None,
        row_range: tuple[int, int] | None = None,
        threads: int = 2,
        prefetch: int = 8,
        read_rows: ReadRows | None = None,
        block_rows: int | None = None,
        block_cols: int | None = None,
        ring_size: int = 4,
    ) -> None:
        if read_rows is None:
            from geopsp.io.raster import read_rows as _read_rows

            read_rows = _read_rows
        shape = getattr(info, "block_shape", None)
        if block_rows is None:
            block_rows = int(shape[0]) if shape else 1
        if block_cols is None and shape:
            block_cols = int(shape[1])
        self.grid = grid
        self.row_range = grid.check_row_range(row_range)
        self.prepare = prepare
        self.buffer = RowBuffer(
            read_rows,
            src,
            info,
            height=grid.height,
            width=grid.width,
            bands=bands,
            block_rows=block_rows,
            max_align=4 * grid.tile_size,
            block_cols=block_cols,
            # each read spans at least as many blocks as GDAL has decode threads
            group_cols=max(2048, (block_cols or 0) * (os.cpu_count() or 1)),
        )
        self.total = grid.count(self.row_range)
        self.skipped = 0
        self.prepare_seconds = 0.0
        self.wait_seconds = 0.0
        self._lock = threading.Lock()
        self.threads = max(1, int(threads))
        self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="geopsp-prep")
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, prefetch))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._local = threading.local()
        self._ring: SlotRing | None = None
        self._ring_size = max(2, int(ring_size))

    @property
    def read_seconds(self) -> float:
        """Seconds spent in ``read_rows`` (decoding)."""
        return self.buffer.read_seconds

    def __enter__(self) -> TileReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[PreparedTile]:
        """Iterate :class:`PreparedTile` one by one (each in arrays of its own)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._produce, name="geopsp-reader", daemon=True)
            self._thread.start()
        for item, t0 in self._take():
            if isinstance(item, PreparedTile):
                self.wait_seconds += time.perf_counter() - t0
                yield item
                continue
            result = item.result()
            self.wait_seconds += time.perf_counter() - t0
            yield result

    def _take(self) -> Iterator[tuple[Any, float]]:
        """Yield what the reader thread queues, with when the wait began, until it is done (raising its error)."""
        while True:
            t0 = time.perf_counter()
            item = self._queue.get()
            if item is _DONE:
                self.wait_seconds += time.perf_counter() - t0
                return
            if isinstance(item, BaseException):
                raise item
            yield item, t0

    def close(self) -> None:
        """Stop the background threads (safe to call at any time, also mid-iteration)."""
        self._stop.set()
        while self._thread is not None and self._thread.is_alive():
            try:
                while True:
                    self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(timeout=0.05)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _walk(self) -> Iterator[Tile]:
        """Yield the tiles in grid order with their rows promised; forget rows behind each one after it."""
        bands = [self.grid.band_tiles(rows) for _, rows in self.grid.band_rows(self.row_range)]
        for k, tiles in enumerate(bands):
            self.buffer.ensure(min(t.row for t in tiles), max(t.row_end for t in tiles))
            # rows the next band starts at: the groups that tiles have passed keep only those
            keep = min(t.row for t in bands[k + 1]) if k + 1 < len(bands) else self.grid.height
            for n, tile in enumerate(tiles):
                if self._stop.is_set():
                    return
                yield tile
                self.buffer.release(tiles[n + 1].col if n + 1 < len(tiles) else self.grid.width, keep)

    def _produce(self) -> None:
        try:
            for tile in self._walk():
                valid = np.empty((tile.height, tile.width), dtype=np.bool_)
                pieces = self.buffer.cut_valid(tile.row, tile.row_end, tile.col, tile.col_end, valid)
                if not valid.any():
                    self.skipped += 1
                    if not self._put(PreparedTile(tile, None, None)):
                        return
                    continue
                fut = self._pool.submit(self._prepare, tile, pieces, valid)
                if not self._put(fut):
                    fut.cancel()
                    return
            self._put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)

    def _prepare(self, tile: Tile, pieces: list[Piece], valid: NDArray[np.bool_]) -> PreparedTile:
        t0 = time.perf_counter()
        data = np.empty((len(self.buffer.bands), tile.height, tile.width), dtype=pieces[0][2].dtype)
        assemble(pieces, data)
        d, v = pad_tile(data, valid, self.grid.input_shape)
        if self.prepare is not None:
            d, v = self.prepare(tile, d, v)
        else:
            d = np.ascontiguousarray(d)
        with self._lock:
            self.prepare_seconds += time.perf_counter() - t0
        return PreparedTile(tile, d, np.ascontiguousarray(v))

    # -- batches -------------------------------------------------------------------------------

    def batches(self, batch_size: int, preparer: TilePreparer | None = None) -> Iterator[TileBatch]:
        """Iterate :class:`~geopsp.tiling.batches.TileBatch` of up to ``batch_size`` tiles, in grid order.

        The tiles are cut, padded and prepared by the worker threads straight into buffers of a
        small ring allocated by ``preparer`` (default: raw tiles in ordinary arrays); release
        each batch (:meth:`TileBatch.release`) once done with its arrays, or the reader waits.
        The last batch may hold no tiles, only skipped ones. ``prepare`` of the constructor is
        not used here: ``preparer`` prepares.
        """
        if self._thread is not None:
            raise RuntimeError("a TileReader iterates once")
        prep: TilePreparer = preparer if preparer is not None else NumpyPreparer()
        size = max(1, int(batch_size))
        self._thread = threading.Thread(
            target=self._produce_batches, args=(size, prep), name="geopsp-reader", daemon=True
        )
        self._thread.start()
        for item, t0 in self._take():
            tiles, skipped, futures, slots = item
            try:
                for fut in futures:
                    fut.result()
            except BaseException:
                self._ring_release(slots)
                raise
            self.wait_seconds += time.perf_counter() - t0
            n = len(tiles)
            yield TileBatch(tiles, skipped, slots.data[:n], slots.valid[:n], self._ring, slots)

    def _ring_release(self, slots: SlotSet) -> None:
        if self._ring is not None:
            self._ring.release(slots)

    def _produce_batches(self, size: int, prep: TilePreparer) -> None:
        try:
            slots: SlotSet | None = None
            tiles: list[Tile] = []
            skipped: list[Tile] = []
            futures: list[Future[None]] = []
            for tile in self._walk():
                if slots is None:
                    slots = self._first_slots(tile, size, prep)
                    if slots is None:
                        return
                i = len(tiles)
                pieces = self.buffer.cut_valid(tile.row, tile.row_end, tile.col, tile.col_end, slots.valid[i])
                if not slots.valid[i, : tile.height, : tile.width].any():
                    self.skipped += 1
                    skipped.append(tile)
                    continue
                futures.append(self._pool.submit(self._fill, tile, pieces, slots, i, prep))
                tiles.append(tile)
                if len(tiles) == size:
                    if not self._put((tiles, skipped, futures, slots)):
                        return
                    tiles, skipped, futures = [], [], []
                    slots = self._ring.acquire() if self._ring is not None else None
                    if slots is None:
                        return
            if tiles or skipped:
                if slots is None:  # only skipped tiles: an empty batch
                    empty = np.empty((0,), dtype=np.uint8)
                    slots = SlotSet(empty, empty.astype(np.bool_))
                if not self._put((tiles, skipped, futures, slots)):
                    return
            elif slots is not None:
                self._ring_release(slots)
            self._put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)

    def _first_slots(self, tile: Tile, size: int, prep: TilePreparer) -> SlotSet | None:
        """Make the ring, now that the type of the rows is known (a cast reader may change it)."""
        probe = np.empty((tile.height, tile.width), dtype=np.bool_)
        dtype = self.buffer.cut_valid(tile.row, tile.row_end, tile.col, tile.col_end, probe)[0][2].dtype
        shape = self.grid.input_shape
        n_bands = len(self.buffer.bands)
        self._ring = SlotRing(self._ring_size, lambda: slot_arrays(prep, size, n_bands, shape, dtype), self._stop)
        return self._ring.acquire()

    def _fill(self, tile: Tile, pieces: list[Piece], slots: SlotSet, i: int, prep: TilePreparer) -> None:
        """Cut one tile into slot ``i``: copy, pad by reflection, prepare (a worker thread)."""
        t0 = time.perf_counter()
        out, valid = slots.data[i], slots.valid[i]
        h, w = tile.height, tile.width
        if prep.casts_only:
            raw = out  # the copy casts: no scratch tile
        else:
            raw = self._scratch(out.shape, pieces[0][2].dtype)
        assemble(pieces, raw)
        pad_in_place(raw, h, w)
        pad_in_place(valid, h, w)
        if raw is not out:
            prep.prepare_into(tile, raw, valid, out)
        with self._lock:
            self.prepare_seconds += time.perf_counter() - t0

    def _scratch(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> NDArray[Any]:
        """Return a tile-sized array of this thread's, reused tile after tile."""
        held = getattr(self._local, "scratch", None)
        if held is None or held.shape != shape or held.dtype != dtype:
            held = np.empty(shape, dtype=dtype)
            self._local.scratch = held
        return held
