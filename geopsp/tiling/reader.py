"""Stream tiles of a scene in grid order, reading each compressed block once.

A background thread reads full-width bands of block rows (``geopsp.io.raster.read_rows``)
into a row buffer that slides down the scene, and cuts each band's tiles from memory.
Windowed reads of overlapping tiles would decode every block several times (about 4x slower
on compressed scenes); here reads are aligned to the file's block rows, so each block is
decoded exactly once. Tiles that hold only nodata are reported as skipped and never
preprocessed. A pool of ``threads`` workers pads (by reflection) and preprocesses the other
tiles while the model runs; the consumer receives them in grid order.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from geopsp.tiling.windows import Tile, TileGrid

__all__ = ["PreparedTile", "RowBuffer", "TileReader", "pad_tile"]

logger = logging.getLogger(__name__)

ReadRows = Callable[[Any, Any, int, int, Sequence[int]], tuple[NDArray[Any], NDArray[np.bool_]]]
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

    ``size`` is ``(rows, cols)`` or one edge for both. The valid mask is padded with False so
    padding never reaches the output. Reflection of an axis of length 1 repeats it.

    Examples
    --------
    >>> d, v = pad_tile(np.arange(3, dtype=np.uint8).reshape(1, 1, 3), np.ones((1, 3), bool), 5)
    >>> d[0, 0].tolist(), v.sum()
    ([0, 1, 2, 1, 0], np.int64(3))
    """
    rows, cols = (size, size) if isinstance(size, int) else size
    _, h, w = data.shape
    if h == rows and w == cols:
        return data, valid
    out = np.pad(data, ((0, 0), (0, rows - h), (0, cols - w)), mode="reflect")
    vout = np.zeros((rows, cols), dtype=bool)
    vout[:h, :w] = valid
    return out, vout


class RowBuffer:
    """Full-width rows of the selected bands, read in block-aligned chunks and cut into tiles.

    Rows are kept as the chunks ``read_rows`` returned (no concatenation, no copies of the
    band); a chunk is dropped as soon as every row of it lies above the rows still needed, and
    tiles are copied out of one or two chunks. Memory is therefore about
    ``(tile + block_rows) x width x (bands + 1)`` bytes, whatever the scene height.

    Parameters
    ----------
    read_rows : callable
        ``read_rows(src, info, row_off, height, bands) -> (data (C, h, W), valid (h, W))``.
    src, info : objects
        Passed through to ``read_rows``.
    height : int
        Scene height.
    bands : sequence of int
        1-based bands to read.
    block_rows : int
        Rows per block (or strip) of the file; reads end on multiples of it so no block is
        decoded twice. Blocks taller than ``max_align`` rows (whole-image strips) are not
        aligned to.
    max_align : int
        See ``block_rows``.
    """

    def __init__(
        self,
        read_rows: ReadRows,
        src: Any,
        info: Any,
        *,
        height: int,
        bands: Sequence[int],
        block_rows: int,
        max_align: int,
    ) -> None:
        self._read_rows = read_rows
        self._src = src
        self._info = info
        self.height = height
        self.bands = list(bands)
        self.block_rows = max(1, int(block_rows))
        self.max_align = max_align
        self.start = 0
        self.stop = 0
        self._chunks: list[tuple[int, NDArray[Any], NDArray[np.bool_]]] = []
        self.read_seconds = 0.0
        self.rows_read = 0
        self.reads: list[tuple[int, int]] = []

    @property
    def nbytes(self) -> int:
        """Bytes held by the chunks."""
        return sum(d.nbytes + v.nbytes for _, d, v in self._chunks)

    def ensure(self, start: int, stop: int) -> None:
        """Make rows ``[start, stop)`` available; forget chunks entirely above ``start``."""
        if start >= self.stop or start < self.start:
            self._chunks.clear()
            self.start = self.stop = start
        self._chunks = [c for c in self._chunks if c[0] + c[1].shape[1] > start]
        self.start = start
        if stop > self.stop:
            end = stop
            if self.block_rows <= self.max_align:
                end = min(self.height, -(-stop // self.block_rows) * self.block_rows)
            t0 = time.perf_counter()
            data, valid = self._read_rows(self._src, self._info, self.stop, end - self.stop, self.bands)
            self.read_seconds += time.perf_counter() - t0
            self.rows_read += end - self.stop
            self.reads.append((self.stop, end - self.stop))
            self._chunks.append((self.stop, data, valid))
            self.stop = end

    def cut(self, row: int, row_end: int, col: int, col_end: int) -> tuple[NDArray[Any], NDArray[np.bool_]]:
        """Copy rows ``[row, row_end)`` x columns ``[col, col_end)`` out of the chunks.

        Returns
        -------
        data : ndarray, shape (C, rows, cols)
        valid : ndarray of bool, shape (rows, cols)
        """
        if row < self.start or row_end > self.stop:
            raise ValueError(f"rows {row}..{row_end} are not buffered ({self.start}..{self.stop})")
        parts = []
        for r0, d, v in self._chunks:
            a, b = max(row, r0), min(row_end, r0 + d.shape[1])
            if a < b:
                parts.append((d[:, a - r0 : b - r0, col:col_end], v[a - r0 : b - r0, col:col_end]))
        if len(parts) == 1:
            return parts[0][0].copy(), parts[0][1].copy()
        return np.concatenate([p[0] for p in parts], axis=1), np.concatenate([p[1] for p in parts], axis=0)


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
    block_rows : int, optional
        Rows per file block; default from ``info.block_shape``.
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
    ) -> None:
        if read_rows is None:
            from geopsp.io.raster import read_rows as _read_rows

            read_rows = _read_rows
        if block_rows is None:
            shape = getattr(info, "block_shape", None)
            block_rows = int(shape[0]) if shape else 1
        self.grid = grid
        self.row_range = grid.check_row_range(row_range)
        self.prepare = prepare
        self.buffer = RowBuffer(
            read_rows,
            src,
            info,
            height=grid.height,
            bands=bands,
            block_rows=block_rows,
            max_align=4 * grid.tile_size,
        )
        self.total = grid.count(self.row_range)
        self.skipped = 0
        self.peak_buffer_bytes = 0
        self.prepare_seconds = 0.0
        self.wait_seconds = 0.0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="geopsp-prep")
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, prefetch))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def read_seconds(self) -> float:
        """Seconds spent in ``read_rows`` (decoding)."""
        return self.buffer.read_seconds

    def __enter__(self) -> TileReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[PreparedTile]:
        if self._thread is None:
            self._thread = threading.Thread(target=self._produce, name="geopsp-reader", daemon=True)
            self._thread.start()
        while True:
            t0 = time.perf_counter()
            item = self._queue.get()
            if item is _DONE:
                self.wait_seconds += time.perf_counter() - t0
                return
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, PreparedTile):
                self.wait_seconds += time.perf_counter() - t0
                yield item
                continue
            result = item.result()
            self.wait_seconds += time.perf_counter() - t0
            yield result

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

    def _produce(self) -> None:
        try:
            for _, grid_rows in self.grid.band_rows(self.row_range):
                tiles = self.grid.band_tiles(grid_rows)
                self.buffer.ensure(min(t.row for t in tiles), max(t.row_end for t in tiles))
                self.peak_buffer_bytes = max(self.peak_buffer_bytes, self.buffer.nbytes)
                for tile in tiles:
                    if self._stop.is_set():
                        return
                    d, v = self.buffer.cut(tile.row, tile.row_end, tile.col, tile.col_end)
                    if not v.any():
                        self.skipped += 1
                        if not self._put(PreparedTile(tile, None, None)):
                            return
                        continue
                    fut = self._pool.submit(self._prepare, tile, d, v)
                    if not self._put(fut):
                        fut.cancel()
                        return
            self._put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)

    def _prepare(self, tile: Tile, data: NDArray[Any], valid: NDArray[np.bool_]) -> PreparedTile:
        t0 = time.perf_counter()
        d, v = pad_tile(data, valid, self.grid.input_shape)
        if self.prepare is not None:
            d, v = self.prepare(tile, d, v)
        else:
            d = np.ascontiguousarray(d)
        with self._lock:
            self.prepare_seconds += time.perf_counter() - t0
        return PreparedTile(tile, d, np.ascontiguousarray(v))
