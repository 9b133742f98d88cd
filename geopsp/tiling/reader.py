"""Stream tiles of a scene in grid order, reading each compressed block once.

A background thread reads the scene in block-aligned pieces (``geopsp.io.raster.read_rows``
over groups of whole blocks, as the tiles reach them) into a row buffer that slides down the
scene, and cuts each band's tiles from memory. Windowed reads of overlapping tiles would
decode every block several times (about 4x slower on compressed scenes); here each block is
decoded exactly once, and rows are forgotten as soon as no later tile needs them. Tiles
that hold only nodata are reported as skipped and never preprocessed. A pool of ``threads``
workers pads (by reflection) and preprocesses the other tiles while the model runs; the
consumer receives them in grid order.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from geopsp.tiling.windows import Tile, TileGrid

__all__ = ["PreparedTile", "RowBuffer", "TileReader", "pad_tile"]

logger = logging.getLogger(__name__)


class ReadRows(Protocol):
    """A row reader: :func:`geopsp.io.scene.read_rows` or a stand-in with its signature."""

    def __call__(
        self,
        src: Any,
        info: Any,
        row_off: int,
        height: int,
        bands: Sequence[int],
        col_off: int = 0,
        width: int | None = None,
    ) -> tuple[NDArray[Any], NDArray[np.bool_]]: ...


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


class _Group:
    """The buffered rows of one column group ``[c0, c1)``: chunks as read, rows ``< stop``."""

    __slots__ = ("c0", "c1", "chunks", "stop")

    def __init__(self, c0: int, c1: int) -> None:
        self.c0 = c0
        self.c1 = c1
        self.stop = 0
        # (first row, data (C, h, c1 - c0), valid mask packed 8 columns a byte)
        self.chunks: list[tuple[int, NDArray[Any], NDArray[np.uint8]]] = []

    def drop_above(self, row: int) -> None:
        """Forget rows above ``row``; a chunk partly above it is cut down to a copy."""
        if not self.chunks or self.chunks[0][0] >= row:
            return  # chunks are in row order: nothing lies above (e.g. released already)
        kept = []
        for r0, d, v in self.chunks:
            if r0 + d.shape[1] <= row:
                continue
            if r0 < row:
                d, v = d[:, row - r0 :].copy(), v[row - r0 :].copy()
                r0 = row
            kept.append((r0, d, v))
        self.chunks = kept


class RowBuffer:
    """Rows of the selected bands, read in block-aligned pieces and cut into tiles.

    The scene's columns are split into groups of whole blocks (``group_cols`` wide or more; a
    file of full-width strips is one group). :meth:`ensure` names the rows a band of tiles
    needs; a group's new rows are read only when the first tile reaching into it is cut, and
    reads end on block rows, so each block is decoded exactly once. Rows no tile needs any
    more are forgotten: those above the band at :meth:`ensure`, and, as tiles move right,
    those above the next band in the groups left of them (:meth:`release`). The valid mask is
    stored packed, eight pixels a byte. So a band starts with only the rows it shares with
    the previous one (at most ``tile`` rows) in memory, and the buffer stays near
    ``tile x width x (bands + 1/8)`` bytes, plus a few groups of ``tile + block_rows`` rows,
    whatever the scene height.

    Parameters
    ----------
    read_rows : callable
        ``read_rows(src, info, row_off, height, bands, col_off=, width=) -> (data (C, h, w),
        valid (h, w))``, as :func:`geopsp.io.scene.read_rows`.
    src, info : objects
        Passed through to ``read_rows``.
    height, width : int
        Scene size.
    bands : sequence of int
        1-based bands to read.
    block_rows : int
        Rows per block (or strip) of the file; reads end on multiples of it so no block is
        decoded twice. Blocks taller than ``max_align`` rows (whole-image strips) are not
        aligned to.
    max_align : int
        See ``block_rows``.
    block_cols : int, optional
        Columns per block; groups are whole blocks. Default (or blocks at least as wide as
        the scene): one group of every column.
    group_cols : int
        Smallest group width. Each read covers a group, so GDAL can decode its blocks in
        parallel (``GDAL_NUM_THREADS``).
    """

    def __init__(
        self,
        read_rows: ReadRows,
        src: Any,
        info: Any,
        *,
        height: int,
        width: int,
        bands: Sequence[int],
        block_rows: int,
        max_align: int,
        block_cols: int | None = None,
        group_cols: int = 2048,
    ) -> None:
        self._read_rows = read_rows
        self._src = src
        self._info = info
        self.height = height
        self.width = width
        self.bands = list(bands)
        self.block_rows = max(1, int(block_rows))
        self.max_align = max_align
        if not block_cols or block_cols >= width:
            step = width
        else:
            step = int(block_cols) * max(1, -(-group_cols // int(block_cols)))
        self._groups = [_Group(c, min(width, c + step)) for c in range(0, width, step)]
        self.start = 0  # rows above are forgotten
        self.need = 0  # rows below are not promised (ensure)
        self.read_seconds = 0.0
        self.reads: list[tuple[int, int, int, int]] = []  # (row_off, height, col_off, width)
        self.peak_bytes = 0

    @property
    def nbytes(self) -> int:
        """Bytes held by the chunks."""
        return sum(d.nbytes + v.nbytes for g in self._groups for _, d, v in g.chunks)

    def ensure(self, start: int, stop: int) -> None:
        """Promise rows ``[start, stop)`` to :meth:`cut`; forget every row above ``start``."""
        if start < self.start:  # going back up: start over
            for g in self._groups:
                g.chunks.clear()
                g.stop = start
        for g in self._groups:
            if start >= g.stop:  # nothing buffered is still needed; read on from `start`
                g.chunks.clear()
                g.stop = start
            else:
                g.drop_above(start)
        self.start = start
        self.need = stop

    def release(self, col: int, keep_from: int) -> None:
        """Forget rows above ``keep_from`` in the groups left of column ``col``.

        Call it when every tile still to come starts at column ``col`` or later, or at row
        ``keep_from`` or lower (the next band).
        """
        for g in self._groups:
            if g.c1 > col:
                break
            g.drop_above(keep_from)

    def _fill(self, g: _Group) -> None:
        """Read the group's rows up to the promised stop, extended to a block row's end."""
        if g.stop >= self.need:
            return
        end = self.need
        if self.block_rows <= self.max_align:
            end = min(self.height, -(-end // self.block_rows) * self.block_rows)
        t0 = time.perf_counter()
        data, valid = self._read_rows(
            self._src, self._info, g.stop, end - g.stop, self.bands, col_off=g.c0, width=g.c1 - g.c0
        )
        self.read_seconds += time.perf_counter() - t0
        self.reads.append((g.stop, end - g.stop, g.c0, g.c1 - g.c0))
        g.chunks.append((g.stop, data, np.packbits(valid, axis=1)))
        g.stop = end
        self.peak_bytes = max(self.peak_bytes, self.nbytes)

    def cut(self, row: int, row_end: int, col: int, col_end: int) -> tuple[NDArray[Any], NDArray[np.bool_]]:
        """Copy rows ``[row, row_end)`` x columns ``[col, col_end)``, reading them if needed.

        Returns
        -------
        data : ndarray, shape (C, rows, cols)
        valid : ndarray of bool, shape (rows, cols)
        """
        if row < self.start or row_end > self.need:
            raise ValueError(f"rows {row}..{row_end} are not buffered ({self.start}..{self.need})")
        data: NDArray[Any] | None = None
        valid = np.empty((row_end - row, col_end - col), dtype=np.bool_)
        for g in self._groups:
            lo, hi = max(col, g.c0), min(col_end, g.c1)
            if lo >= hi:
                continue
            self._fill(g)
            b0, shift = (lo - g.c0) // 8, (lo - g.c0) % 8
            covered = 0
            for r0, d, v in g.chunks:
                a, b = max(row, r0), min(row_end, r0 + d.shape[1])
                if a >= b:
                    continue
                covered += b - a
                if data is None:
                    data = np.empty((d.shape[0], row_end - row, col_end - col), dtype=d.dtype)
                data[:, a - row : b - row, lo - col : hi - col] = d[:, a - r0 : b - r0, lo - g.c0 : hi - g.c0]
                bits = np.unpackbits(v[a - r0 : b - r0, b0 : -(-(hi - g.c0) // 8)], axis=1)
                valid[a - row : b - row, lo - col : hi - col] = bits[:, shift : shift + hi - lo].view(np.bool_)
            if covered != row_end - row:
                raise ValueError(f"rows {row}..{row_end} of columns {lo}..{hi} were released")
        assert data is not None
        return data, valid


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
            bands = [self.grid.band_tiles(rows) for _, rows in self.grid.band_rows(self.row_range)]
            for k, tiles in enumerate(bands):
                self.buffer.ensure(min(t.row for t in tiles), max(t.row_end for t in tiles))
                # rows the next band starts at: the groups that tiles have passed keep only those
                keep = min(t.row for t in bands[k + 1]) if k + 1 < len(bands) else self.grid.height
                for n, tile in enumerate(tiles):
                    if self._stop.is_set():
                        return
                    d, v = self.buffer.cut(tile.row, tile.row_end, tile.col, tile.col_end)
                    self.buffer.release(tiles[n + 1].col if n + 1 < len(tiles) else self.grid.width, keep)
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
