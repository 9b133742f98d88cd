"""Blend tile probabilities into class rows with a strip accumulator that streams rows out.

Tiles arrive in the grid's visiting order, band by band (a band is a grid row, or the last
two when the last one was snapped; see :class:`~geopsp.tiling.windows.TileGrid`), left to
right within a band. For a band whose top is ``y`` and whose successor starts at ``y_next``,
the rows ``[y, y_next)`` receive no more tiles once the band is done, and a column of them is
complete as soon as the band's tiles start to its right. The :class:`Mosaicker` exploits both:

* the accumulator (weighted sum of class probabilities, ``K`` float32 channels, the summed
  weights and the input's valid mask) is kept in column chunks of ``tile_size`` width; a chunk
  is created when a tile first touches it;
* when the tiles of a band have moved past a chunk, its rows above ``y_next`` are reduced
  at once (argmax, class ids, nodata, winning probability) into a small integer row buffer,
  and the chunk shrinks to the rows below ``y_next`` (the overlap the next band still adds
  to);
* when the band is done its finished rows go to the sink (the writer).

So the float state is about ``overlap x width`` plus a few ``tile x tile`` chunks, and the
integer row buffer ``stride x width``: peak memory grows with the width and the tile size,
never with the scene height. Each pixel's sum is accumulated in the same order whether the
whole scene or a strip of it (``row_range``) is run, so strips stitch together bit for bit.

The same arithmetic runs on CPU and CUDA tensors; only finished rows leave the device.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

from geopsp.encoding import PROBABILITY_NODATA, encode_probability
from geopsp.inference.blend import tile_weights
from geopsp.tiling.windows import Tile, TileGrid

__all__ = ["Mosaicker", "RowSink"]

RowSink = Callable[[int, NDArray[np.generic], NDArray[np.uint8] | None], None]
"""Receives ``(scene_row, class_rows, probability_rows)`` for finished rows, top to bottom."""


@contextlib.contextmanager
def _host_ops(device: torch.device) -> Iterator[None]:
    """Run the small blend ops single-threaded on the CPU.

    Each op touches a tile or less; waking torch's OpenMP team for it costs more than the op
    (milliseconds instead of tens of microseconds on a busy 2-core machine).
    """
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass
class _Chunk:
    """Accumulator of one column chunk, rows ``[row0, row0 + rows)``."""

    row0: int
    acc: torch.Tensor  # (K, rows, width) float32: sum of weight * probability
    wsum: torch.Tensor  # (rows, width) float32: sum of weights
    valid: torch.Tensor  # (rows, width) bool

    @property
    def rows(self) -> int:
        return int(self.wsum.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.acc.nbytes + self.wsum.nbytes + self.valid.nbytes)


class Mosaicker:
    """Weighted average of overlapping tile probabilities, emitted row block by row block.

    Parameters
    ----------
    grid : TileGrid
        The scene's tile grid; tiles must be added in its visiting order (``grid.tiles()``);
        any tile may be missing, e.g. skipped because it holds only nodata.
    class_ids : sequence of int
        Class id written for output channel ``i``.
    nodata : int
        Class value where the input is nodata (or no tile covered the pixel).
    sink : callable
        Called as ``sink(scene_row, class_rows, probability_rows)`` with finished rows.
    device : torch.device or str
        Where the accumulator lives (the model's device).
    kernel : str
        Blend kernel name (:data:`geopsp.inference.blend.KERNELS`).
    floor : float
        Blend weight floor.
    row_range : (int, int), optional
        Emit only scene rows ``[r0, r1)``; add all tiles of ``grid.tiles(row_range)``.
    probabilities : bool
        Also compute the winning class probability rows, encoded by
        :func:`~geopsp.encoding.encode_probability` (uint8 ``round(p * PROBABILITY_SCALE)``, at
        least 1, and :data:`PROBABILITY_NODATA` where the class is nodata or ``p`` is NaN).
    out_dtype : str
        NumPy dtype of the class rows (``uint8`` or ``uint16``).
    """

    def __init__(
        self,
        grid: TileGrid,
        *,
        class_ids: Sequence[int],
        nodata: int,
        sink: RowSink,
        device: torch.device | str = "cpu",
        kernel: str = "cosine",
        floor: float = 0.001,
        row_range: tuple[int, int] | None = None,
        probabilities: bool = False,
        out_dtype: str = "uint8",
    ) -> None:
        self.grid = grid
        self.device = torch.device(device)
        self.num_classes = len(class_ids)
        self.nodata = int(nodata)
        self.sink = sink
        self.probabilities = probabilities
        self.out_dtype = np.dtype(out_dtype)
        self.r0, self.r1 = grid.check_row_range(row_range)
        self.seconds = 0.0
        self.peak_bytes = 0
        self._cw = grid.tile_size
        self._weights = torch.from_numpy(tile_weights(grid.tile_size, kernel=kernel, floor=floor)).to(self.device)
        # uint8 ids stay uint8 on the device; wider ids use int32 (torch has no full uint16)
        self._cls_dtype = torch.uint8 if self.out_dtype == np.uint8 else torch.int32
        self._lut = torch.as_tensor(list(class_ids), dtype=self._cls_dtype, device=self.device)
        self._chunks: dict[int, _Chunk] = {}
        self._bands = [b for b, _ in grid.band_rows((self.r0, self.r1))]
        self._band_of = {r: b for b, rows in enumerate(grid.bands) for r in rows}
        self._pos = 0  # index into _bands of the current band
        self._done_upto = 0  # chunks [0, _done_upto) are finished for the current band
        self._finished = False
        self._pending_cls: torch.Tensor | None = None
        self._pending_prob: torch.Tensor | None = None
        if self._bands:
            self._start_band(0)

    # -- public --------------------------------------------------------------------------------

    @property
    def strip_bytes(self) -> int:
        """Peak bytes held by the accumulator chunks and the finished-row buffers."""
        return self.peak_bytes

    def add(self, tiles: Sequence[Tile], probs: torch.Tensor, valid: torch.Tensor) -> None:
        """Blend a batch of tiles.

        Parameters
        ----------
        tiles : sequence of Tile
            The batch's tiles, in grid order and after all tiles added before.
        probs : Tensor, shape (N, K, size, size), float32
            Class probabilities on the accumulator's device.
        valid : Tensor, shape (N, size, size), bool
            Input valid mask of each tile (padding is False).
        """
        start = time.perf_counter()
        with _host_ops(self.device):
            self._add(tiles, probs, valid)
        self.seconds += time.perf_counter() - start

    def _add(self, tiles: Sequence[Tile], probs: torch.Tensor, valid: torch.Tensor) -> None:
        for n, tile in enumerate(tiles):
            band = self._band_of[tile.grid_row]
            if band not in self._bands:
                raise ValueError(f"tile {tile.index} is outside the row range ({self.r0}, {self.r1})")
            current = self._bands[self._pos]
            if band < current or (band == current and tile.col < self._done_upto * self._cw):
                raise ValueError(f"tile {tile.index} arrived out of grid order; add tiles in grid order")
            while band > self._bands[self._pos]:
                self._end_band()
                self._start_band(self._pos + 1)
            self._finish_chunks_before(tile.col // self._cw)
            self._add_tile(tile, probs[n], valid[n])

    def finish(self) -> None:
        """Emit every remaining row of the range; call once after the last tile."""
        if self._finished:
            return
        start = time.perf_counter()
        with _host_ops(self.device):
            self._finish_all()
        self._chunks.clear()
        self._finished = True
        self.seconds += time.perf_counter() - start

    def _finish_all(self) -> None:
        if self._bands:
            while True:
                self._end_band()
                if self._pos + 1 >= len(self._bands):
                    break
                self._start_band(self._pos + 1)

    # -- bands -------------------------------------------------------------------------------

    def _span(self) -> tuple[int, int, int, int]:
        """``(y, y_next, e0, e1)``: the current band's top, its successor's top, its emitted rows."""
        y, y_next = self.grid.band_span(self._bands[self._pos])
        e0, e1 = max(y, self.r0), min(y_next, self.r1)
        return y, y_next, e0, max(e0, e1)

    def _start_band(self, pos: int) -> None:
        self._pos = pos
        self._done_upto = 0
        _, _, e0, e1 = self._span()
        w = self.grid.width
        self._pending_cls = torch.full((e1 - e0, w), self.nodata, dtype=self._cls_dtype, device=self.device)
        self._pending_prob = (
            torch.full((e1 - e0, w), PROBABILITY_NODATA, dtype=torch.uint8, device=self.device)
            if self.probabilities
            else None
        )
        self._track()

    def _end_band(self) -> None:
        """Finish every chunk for the current band and emit its finished rows."""
        self._finish_chunks_before(-(-self.grid.width // self._cw))
        _, _, e0, e1 = self._span()
        if e1 > e0 and self._pending_cls is not None:
            cls = self._pending_cls.cpu().numpy()
            if cls.dtype != self.out_dtype:
                cls = cls.astype(self.out_dtype)
            prob = None if self._pending_prob is None else self._pending_prob.cpu().numpy()
            self.sink(e0, cls, prob)
        self._pending_cls = None
        self._pending_prob = None

    # -- chunks --------------------------------------------------------------------------------

    def _finish_chunks_before(self, j_stop: int) -> None:
        """Chunks left of ``j_stop`` get no more tiles in this band: finish them."""
        for j in range(self._done_upto, j_stop):
            if j in self._chunks:
                self._finish_chunk(j)
        self._done_upto = max(self._done_upto, j_stop)

    def _finish_chunk(self, j: int) -> None:
        """Reduce a chunk's rows above ``y_next`` into the row buffer; keep only the rows below."""
        chunk = self._chunks[j]
        y, y_next, e0, e1 = self._span()
        if chunk.row0 != y:
            return  # already finished for this band
        x0 = j * self._cw
        width = chunk.wsum.shape[1]
        # rows of the chunk that are final and emitted: [max(y, e0), min(y_next, e1, y + rows))
        a, b = max(y, e0), min(y_next, e1, y + chunk.rows)
        if b > a and self._pending_cls is not None:
            self._reduce_into(chunk, a - y, b - y, a - e0, x0, width)
        keep = chunk.rows - (y_next - y)
        if keep > 0:
            s = y_next - y
            self._chunks[j] = _Chunk(y_next, chunk.acc[:, s:].clone(), chunk.wsum[s:].clone(), chunk.valid[s:].clone())
        else:
            del self._chunks[j]

    def _chunk_for(self, j: int, rows: int) -> _Chunk:
        """Return chunk ``j``, holding at least ``rows`` rows from the current band's top."""
        y = self._span()[0]
        width = min(self._cw, self.grid.width - j * self._cw)
        chunk = self._chunks.get(j)
        if chunk is not None and chunk.row0 != y:
            raise AssertionError(f"chunk {j} starts at row {chunk.row0}, expected {y}")
        if chunk is None or chunk.rows < rows:
            k = self.num_classes
            acc = torch.zeros((k, rows, width), dtype=torch.float32, device=self.device)
            wsum = torch.zeros((rows, width), dtype=torch.float32, device=self.device)
            valid = torch.zeros((rows, width), dtype=torch.bool, device=self.device)
            if chunk is not None:
                acc[:, : chunk.rows] = chunk.acc
                wsum[: chunk.rows] = chunk.wsum
                valid[: chunk.rows] = chunk.valid
            chunk = _Chunk(y, acc, wsum, valid)
            self._chunks[j] = chunk
            self._track()
        return chunk

    def _add_tile(self, tile: Tile, probs: torch.Tensor, valid: torch.Tensor) -> None:
        h, w = tile.height, tile.width
        wt = self._weights[:h, :w]
        x = tile.col
        y0 = tile.row - self._span()[0]
        y1 = y0 + h
        for j in range(x // self._cw, (x + w - 1) // self._cw + 1):
            c0 = j * self._cw
            lo, hi = max(x, c0), min(x + w, c0 + self._cw)  # scene columns of the tile in chunk j
            chunk = self._chunk_for(j, y1)
            t0, t1 = lo - x, hi - x
            k0, k1 = lo - c0, hi - c0
            chunk.acc[:, y0:y1, k0:k1].addcmul_(probs[:, :h, t0:t1], wt[:, t0:t1])
            chunk.wsum[y0:y1, k0:k1].add_(wt[:, t0:t1])
            chunk.valid[y0:y1, k0:k1].logical_or_(valid[:h, t0:t1])

    def _reduce_into(self, chunk: _Chunk, lo: int, hi: int, out_row: int, x0: int, width: int) -> None:
        """Class ids (and probabilities) of chunk rows ``[lo, hi)`` into the row buffer."""
        acc = chunk.acc[:, lo:hi]
        wsum = chunk.wsum[lo:hi]
        invalid = ~chunk.valid[lo:hi] | (wsum <= 0)
        best, idx = acc.max(dim=0)
        cls = self._lut[idx].masked_fill_(invalid, self.nodata)
        assert self._pending_cls is not None
        self._pending_cls[out_row : out_row + hi - lo, x0 : x0 + width] = cls
        if self._pending_prob is not None:
            p = best.div_(wsum.clamp_min(1e-12))
            self._pending_prob[out_row : out_row + hi - lo, x0 : x0 + width] = encode_probability(p, invalid=invalid)

    def _track(self) -> None:
        held = sum(c.nbytes for c in self._chunks.values())
        for t in (self._pending_cls, self._pending_prob):
            if t is not None:
                held += int(t.nbytes)
        self.peak_bytes = max(self.peak_bytes, held)
