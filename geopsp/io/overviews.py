"""Overview levels computed as rows stream in: GDAL's MODE and AVERAGE, reproduced in NumPy.

A COG's overview levels are halvings of the full resolution: each level is ``width // 2`` by
``height // 2`` of the one above (at least 1), until both edges fit in one block
(:func:`overview_sizes`, the COG driver's rule). Each level is computed from the level above
it, as GDAL does, so a level needs only a few rows of its parent at a time:
:class:`OverviewPyramid` takes the full-resolution rows in order and hands every finished row
of every level to a sink, holding at most three rows per level.

The windows are GDAL's (``GDALResampleChunk_Mode`` and ``..._AverageOrRMS`` in GDAL 3.10):
along an axis of even length ``n``, output pixel ``i`` reads pixels ``2i, 2i + 1``; along an
odd length it reads ``2i, 2i + 1, 2i + 2`` (the ratio ``n / (n // 2)`` is a little above 2, so
GDAL's window reaches into the next pixel); an axis of length 1 stays 1.

- :func:`mode_reduce` (classes): the most frequent valid value of the window; a tie goes to
  the value that reaches the top count first in row-major order (GDAL's histogram scan);
  nodata pixels do not count, and a window of nodata only is nodata. Every output is a value
  of its window: no class is invented.
- :func:`average_reduce` (probabilities): the mean of the valid pixels, each weighted by the
  share of it the output pixel covers (on an odd axis the outer pixels are partly covered:
  ``1 - i / m`` and ``(i + 1) / m`` for ``m = n // 2``), rounded half up.

Both equal GDAL's overviews of the same raster pixel for pixel (``tests/test_io_overviews.py``
compares them with GDAL's COG driver).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

__all__ = ["OverviewPyramid", "average_reduce", "mode_reduce", "overview_sizes", "reducer"]

Reduce = Callable[[NDArray[Any], int, int, int], NDArray[Any]]
"""``reduce(rows, row0, height, nodata)``: the output rows whose windows ``rows`` holds."""


def overview_sizes(width: int, height: int, blocksize: int) -> list[tuple[int, int]]:
    """Return the ``(width, height)`` of each overview level GDAL's COG driver makes, largest first.

    Levels halve (rounding down, at least 1 pixel) until both edges are at most ``blocksize``.

    Examples
    --------
    >>> overview_sizes(1537, 1001, 256)
    [(768, 500), (384, 250), (192, 125)]
    >>> overview_sizes(512, 512, 512)
    []
    """
    sizes: list[tuple[int, int]] = []
    while width > blocksize or height > blocksize:
        width, height = max(1, width // 2), max(1, height // 2)
        sizes.append((width, height))
    return sizes


def _window(n: int) -> int:
    """Return how many pixels along an axis of length ``n`` one output pixel reads (1, 2 or 3)."""
    return 1 if n == 1 else 3 if n % 2 else 2


def _planes(rows: NDArray[Any], n_out: int, k_y: int, k_x: int) -> list[NDArray[Any]]:
    """Return the window's pixels as ``k_y * k_x`` arrays of shape ``(n_out, width // 2)``, row-major."""
    w = max(1, rows.shape[1] // 2)
    # contiguous copies: NumPy compares strided uint8 views several times slower than a copy costs
    return [
        np.ascontiguousarray(rows[dy : dy + 2 * n_out - 1 : 2, dx : dx + 2 * w - 1 : 2])
        for dy in range(k_y)
        for dx in range(k_x)
    ]


def _mode_scan(planes: Sequence[NDArray[Any]], nodata: int) -> NDArray[Any]:
    """Return the mode of the windows whose pixels are ``planes`` (same shape, row-major order).

    GDAL's scan, vectorised: pixel ``j``'s value has been seen ``count_j`` times up to ``j``; it
    becomes the answer when that beats the best count so far, so the first value to reach the
    top count wins a tie. Nodata pixels never do; windows of nodata only stay nodata.
    """
    best = np.full(planes[0].shape, nodata, dtype=planes[0].dtype)
    best_count = np.zeros(planes[0].shape, dtype=np.uint8)
    for j, p in enumerate(planes):
        count = np.ones(p.shape, dtype=np.uint8)
        for q in planes[:j]:
            count += p == q
        better = (count > best_count) & (p != nodata)
        best = np.where(better, p, best)
        best_count = np.where(better, count, best_count)
    return best


def mode_reduce(rows: NDArray[Any], row0: int, height: int, nodata: int) -> NDArray[Any]:
    """Return the MODE overview rows of ``rows`` (see the module docstring for the rule).

    Parameters
    ----------
    rows : ndarray of int
        ``(h, width)`` consecutive rows of the level above: exactly the windows of the output
        rows (``2 * n`` rows, ``2 * n + 1`` when ``height`` is odd, ``1`` when it is 1).
    row0 : int
        The first output row (unused by MODE; AVERAGE weights depend on it).
    height : int
        The height of the whole level above (its parity decides the window).
    nodata : int
        Pixels of this value are not counted.

    Returns
    -------
    ndarray
        ``(n, max(1, width // 2))`` of ``rows``' dtype.

    Examples
    --------
    >>> a = np.array([[1, 1, 2, 3], [2, 2, 2, 2]], dtype=np.uint8)
    >>> mode_reduce(a, 0, 2, nodata=255)  # left: a tie, and 1 reaches two first
    array([[1, 2]], dtype=uint8)
    """
    k_y, k_x = _window(height), _window(rows.shape[1])
    n_out = 1 if k_y == 1 else (rows.shape[0] - k_y) // 2 + 1
    planes = _planes(rows, n_out, k_y, k_x)
    first = planes[0]
    mixed = np.zeros(first.shape, dtype=np.bool_)
    for p in planes[1:]:
        mixed |= p != first
    where = np.nonzero(mixed)
    if where[0].size > mixed.size // 4:  # a noisy map: count everywhere
        return _mode_scan(planes, nodata)
    out = first.copy()
    if where[0].size:  # only windows of more than one value need counting (few in a class map)
        out[where] = _mode_scan([p[where] for p in planes], nodata)
    return out


def _weights(n: int, n_out: int, i0: int = 0) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Return GDAL's weights of the first and last window pixel along an axis of length ``n``.

    The arithmetic is GDAL's, step by step, so the rounding matches: output ``i`` covers
    ``[i * r, (i + 1) * r)`` source pixels for ``r = n / (n // 2)``.
    """
    i = np.arange(i0, i0 + n_out, dtype=np.float64)
    ratio = n / max(1, n // 2) if n > 1 else 1.0
    start, stop = i * ratio, (i + 1) * ratio
    first = np.floor(start + 1e-8)
    last = np.ceil(stop - 1e-8)
    left = np.where(last == first + 1, 1.0, 1.0 - (start - first))
    right = 1.0 - (last - stop)
    return left, right


def _average_whole(planes: Sequence[NDArray[Any]], nodata: int) -> NDArray[Any]:
    """Return the rounded-half-up mean of the valid pixels of windows of whole pixels (2 x 2 or less)."""
    k = len(planes)  # 1, 2 or 4
    acc = np.uint16 if planes[0].dtype == np.uint8 else np.int64  # 4 * 65535 does not fit uint16
    total: NDArray[np.integer[Any]] = planes[0].astype(acc)
    for p in planes[1:]:
        total += p
    total += k // 2
    total >>= k.bit_length() - 1
    out = total.astype(planes[0].dtype)
    holes = planes[0] == nodata
    for p in planes[1:]:
        holes |= p == nodata
    out[(out == nodata) & ~holes] = _neighbour(nodata, out.dtype)
    where = np.nonzero(holes)
    if where[0].size:  # windows with nodata: the mean of the others (few: along nodata's edges)
        values = np.stack([p[where] for p in planes]).astype(np.int64)
        ok = values != nodata
        count = ok.sum(axis=0)
        mean = (2 * np.where(ok, values, 0).sum(axis=0) + count) // np.maximum(2 * count, 1)
        mean[(count > 0) & (mean == nodata)] = _neighbour(nodata, out.dtype)
        out[where] = np.where(count > 0, mean, nodata)
    return out


def _neighbour(nodata: int, dtype: np.dtype[Any]) -> int:
    """Return what GDAL stores for a mean that rounds to ``nodata``."""
    return nodata - 1 if nodata == np.iinfo(dtype).max else nodata + 1


def average_reduce(rows: NDArray[Any], row0: int, height: int, nodata: int) -> NDArray[Any]:
    """Return the AVERAGE overview rows of ``rows`` (see the module docstring for the rule).

    Parameters are those of :func:`mode_reduce`; ``row0`` places the rows for the weights.
    A mean that rounds to ``nodata`` is stored as its neighbour (``nodata + 1``, or
    ``nodata - 1`` at the top of the dtype), as GDAL does.

    Examples
    --------
    >>> a = np.array([[10, 20, 0, 0], [30, 41, 0, 7]], dtype=np.uint8)
    >>> average_reduce(a, 0, 2, nodata=0)  # 25.25 -> 25; nodata left out: 7
    array([[25,  7]], dtype=uint8)
    """
    k_y, k_x = _window(height), _window(rows.shape[1])
    n_out = 1 if k_y == 1 else (rows.shape[0] - k_y) // 2 + 1
    planes = _planes(rows, n_out, k_y, k_x)
    if k_y < 3 and k_x < 3:  # whole pixels only: exact in integers
        return _average_whole(planes, nodata)
    shape = planes[0].shape
    valid = [p != nodata for p in planes]
    # GDAL's sums, in GDAL's order: each row's weighted sum, then the rows weighted
    y_first, y_last = _weights(height, n_out, row0)
    x_first, x_last = _weights(rows.shape[1], shape[1])
    wx = [x_first, *([np.ones(shape[1])] * (k_x - 2)), x_last][:k_x]
    wy = [y_first, *([np.ones(n_out)] * (k_y - 2)), y_last][:k_y]
    num = np.zeros(shape, dtype=np.float64)
    den = np.zeros(shape, dtype=np.float64)
    for dy in range(k_y):
        line = np.zeros(shape, dtype=np.float64)
        line_w = np.zeros(shape, dtype=np.float64)
        for dx in range(k_x):
            p, v = planes[dy * k_x + dx], valid[dy * k_x + dx]
            line += np.where(v, p * wx[dx][None, :], 0.0)
            line_w += np.where(v, wx[dx][None, :], 0.0)
        num += line * wy[dy][:, None]
        den += line_w * wy[dy][:, None]
    found = den > 0
    mean = np.floor(num / np.where(found, den, 1.0) + 0.5)
    out = np.where(found, mean, nodata).astype(rows.dtype)
    out[found & (out == nodata)] = _neighbour(nodata, out.dtype)
    return out


def reducer(resampling: Literal["MODE", "AVERAGE"]) -> Reduce:
    """Return the reduction of a resampling name (``MODE`` for classes, ``AVERAGE`` for probabilities)."""
    table: dict[str, Reduce] = {"MODE": mode_reduce, "AVERAGE": average_reduce}
    try:
        return table[resampling.upper()]
    except KeyError:
        raise ValueError(f"resampling must be one of {', '.join(table)}, got {resampling!r}") from None


class OverviewPyramid:
    """Compute every overview level of a raster from its full-resolution rows, streamed in order.

    Parameters
    ----------
    width, height : int
        Full-resolution size.
    sizes : sequence of (int, int)
        The levels' ``(width, height)``, largest first (:func:`overview_sizes`).
    reduce : callable
        :func:`mode_reduce` or :func:`average_reduce`.
    nodata : int
        The raster's nodata value.
    sink : callable
        ``sink(level, row_off, rows)`` receives each level's finished rows in order; ``level``
        is 1 for the first overview.

    Notes
    -----
    Memory: at most ``2 * n + 1`` rows of a level wait for their windows to complete, where
    ``n`` is the number of rows of the level below completed by one :meth:`push`.
    """

    def __init__(
        self,
        width: int,
        height: int,
        sizes: Sequence[tuple[int, int]],
        *,
        reduce: Reduce,
        nodata: int,
        sink: Callable[[int, int, NDArray[Any]], None],
    ) -> None:
        self._shapes = [(int(width), int(height)), *((int(w), int(h)) for w, h in sizes)]
        for (w0, h0), (w1, h1) in zip(self._shapes, self._shapes[1:], strict=False):
            if (w1, h1) != (max(1, w0 // 2), max(1, h0 // 2)):
                raise ValueError(f"overview {w1} x {h1} is not the halving of {w0} x {h0}")
        self._reduce = reduce
        self._nodata = nodata
        self._sink = sink
        levels = len(self._shapes)
        self._carry: list[NDArray[Any] | None] = [None] * levels  # rows waiting, per level
        self._carry_row = [0] * levels  # level row of the carry's first row
        self._rows_in = [0] * levels  # rows received per level
        self._rows_out = [0] * levels  # rows of the next level made from each level

    @property
    def levels(self) -> int:
        """Return the number of overview levels."""
        return len(self._shapes) - 1

    @property
    def complete(self) -> bool:
        """Whether every row of every level was made."""
        return all(self._rows_in[k] == h for k, (_, h) in enumerate(self._shapes))

    def push(self, rows: NDArray[Any]) -> None:
        """Take the next full-resolution rows (``(n, width)``, in order from row 0)."""
        self._take(0, rows)

    def push_level(self, level: int, rows: NDArray[Any]) -> None:
        """Take the next rows of overview ``level`` made elsewhere; the coarser levels follow from them.

        Rows of a level are either pushed here or computed from the level above, never both.
        """
        self._take(level, rows)

    def _take(self, level: int, rows: NDArray[Any]) -> None:
        w, h = self._shapes[level]
        if rows.ndim != 2 or rows.shape[1] != w:
            raise ValueError(f"level {level} rows must have shape (n, {w}), got {rows.shape}")
        if self._rows_in[level] + rows.shape[0] > h:
            raise ValueError(f"level {level} has {h} rows; got rows past its end")
        self._rows_in[level] += rows.shape[0]
        if level > 0:
            self._sink(level, self._rows_in[level] - rows.shape[0], rows)
        if level + 1 == len(self._shapes):
            return
        carry = self._carry[level]
        buf = rows if carry is None else np.concatenate([carry, rows])
        k_y = _window(h)
        first = self._rows_out[level]  # next output row; its window starts at level row 2 * first
        have = self._carry_row[level] + buf.shape[0]  # rows of this level available up to here
        last = (have - k_y) // 2 if k_y > 1 else have - 1  # last output row whose window is complete
        n_out = min(last, self._shapes[level + 1][1] - 1) - first + 1
        if n_out <= 0:
            self._carry[level] = buf
            return
        lo = 2 * first - self._carry_row[level]
        hi = lo + (2 * (n_out - 1) + k_y if k_y > 1 else 1)
        out = self._reduce(buf[lo:hi], first, h, self._nodata)
        self._rows_out[level] = first + n_out
        keep = 2 * (first + n_out) - self._carry_row[level]  # the next window's first row
        self._carry[level] = buf[keep:].copy() if keep < buf.shape[0] else None
        self._carry_row[level] += min(keep, buf.shape[0])
        self._take(level + 1, out)
