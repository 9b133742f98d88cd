"""The row buffer: a scene's rows read once, in block-aligned pieces, and cut into tile windows.

:class:`RowBuffer` holds the rows of the selected bands that tiles still need, reading them as
tiles reach them and forgetting them as soon as no later tile does; :meth:`RowBuffer.cut_valid`
cuts a window's valid mask and says where its data lies, so that several threads can copy
the data (:func:`assemble`) and pad it in place (:func:`pad_in_place`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

__all__ = ["Piece", "ReadRows", "RowBuffer", "assemble", "pad_in_place"]


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
    ) -> tuple[NDArray[Any], NDArray[np.bool_]]:
        """Return ``(data (C, height, width), valid (height, width))`` of a window of the scene."""
        ...


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
        valid = np.empty((row_end - row, col_end - col), dtype=np.bool_)
        pieces = self.cut_valid(row, row_end, col, col_end, valid)
        data = np.empty((len(self.bands), row_end - row, col_end - col), dtype=pieces[0][2].dtype)
        assemble(pieces, data)
        return data, valid

    def cut_valid(self, row: int, row_end: int, col: int, col_end: int, valid: NDArray[np.bool_]) -> list[Piece]:
        """Write the valid mask of a window into ``valid``; return where its data lies.

        The data is not copied: the returned pieces are views of the buffered chunks, which
        :func:`assemble` copies later (in another thread). Chunks stay alive while a piece
        refers to them, so rows released in the meantime remain readable through it.

        Parameters
        ----------
        row, row_end, col, col_end : int
            The window, in scene pixels.
        valid : ndarray of bool, shape (rows, cols) or larger
            Receives the mask in its top-left corner.

        Returns
        -------
        list of (row slice, column slice, view)
            ``data[:, rows, cols] = view`` for each piece assembles the window.
        """
        if row < self.start or row_end > self.need:
            raise ValueError(f"rows {row}..{row_end} are not buffered ({self.start}..{self.need})")
        pieces: list[Piece] = []
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
                rows, cols = slice(a - row, b - row), slice(lo - col, hi - col)
                pieces.append((rows, cols, d[:, a - r0 : b - r0, lo - g.c0 : hi - g.c0]))
                bits = np.unpackbits(v[a - r0 : b - r0, b0 : -(-(hi - g.c0) // 8)], axis=1)
                valid[rows, cols] = bits[:, shift : shift + hi - lo].view(np.bool_)
            if covered != row_end - row:
                raise ValueError(f"rows {row}..{row_end} of columns {lo}..{hi} were released")
        return pieces


Piece = tuple[slice, slice, NDArray[Any]]
"""Where a piece of a window's data goes (rows, columns of the window) and the buffered view holding it."""


def assemble(pieces: Sequence[Piece], out: NDArray[Any]) -> None:
    """Copy the pieces of :meth:`RowBuffer.cut_valid` into ``out`` (``(C, rows, cols)`` or larger), casting."""
    for rows, cols, view in pieces:
        np.copyto(out[:, rows, cols], view, casting="unsafe")


def pad_in_place(x: NDArray[Any], h: int, w: int) -> None:
    """Fill ``x[..., h:, :]`` and ``x[..., :, w:]`` by reflecting ``x[..., :h, :w]`` (as :func:`pad_tile`).

    Examples
    --------
    >>> x = np.zeros((1, 3, 5), dtype=np.uint8); x[0, :2, :3] = [[1, 2, 3], [4, 5, 6]]
    >>> pad_in_place(x, 2, 3); x[0].tolist()
    [[1, 2, 3, 2, 1], [4, 5, 6, 5, 4], [1, 2, 3, 2, 1]]
    """
    rows, cols = x.shape[-2], x.shape[-1]
    if h == rows and w == cols:
        return
    if rows - h >= h or cols - w >= w:  # reflection wraps more than once: let NumPy do it
        pad = [(0, 0)] * (x.ndim - 2) + [(0, rows - h), (0, cols - w)]
        x[...] = np.pad(x[..., :h, :w], pad, mode="reflect")
        return
    for k in range(cols - w):  # reflect, not repeat, the edge: column w + k copies w - 2 - k
        x[..., :h, w + k] = x[..., :h, w - 2 - k]
    for k in range(rows - h):
        x[..., h + k, :] = x[..., h - 2 - k, :]
