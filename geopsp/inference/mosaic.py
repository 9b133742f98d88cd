"""Blend tile probabilities into class rows with a strip accumulator that streams rows out.

The :class:`Mosaicker` keeps one strip of ``tile_size`` full-width rows on the model's device:
the weighted sum of class probabilities (``K x tile_size x width`` float32), the summed
weights and the input's valid mask. Tiles arrive in grid order; when the first tile of a new
grid row arrives, every scene row above that row's top is final (no later tile reaches it):
those rows are reduced to class ids (argmax, nodata where the input was nodata) and, if asked,
the winning probability, copied to the host and handed to the sink, and the strip slides down.
Peak memory therefore depends on ``width x tile_size`` only, never on the scene height.

The same arithmetic runs on CPU and CUDA tensors; only the final rows leave the device.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from numpy.typing import NDArray

from geopsp.inference.blend import tile_weights
from geopsp.io.raster import PROBABILITY_NODATA, PROBABILITY_SCALE
from geopsp.tiling.windows import Tile, TileGrid

__all__ = ["PROBABILITY_NODATA", "PROBABILITY_SCALE", "Mosaicker", "RowSink"]

RowSink = Callable[[int, NDArray[np.generic], NDArray[np.uint8] | None], None]
"""Receives ``(scene_row, class_rows, probability_rows)`` for finished rows, top to bottom."""


class Mosaicker:
    """Weighted average of overlapping tile probabilities, emitted row block by row block.

    Parameters
    ----------
    grid : TileGrid
        The scene's tile grid; tiles must be added in its row-major order (tiles of a grid
        row may be missing, e.g. skipped because they hold only nodata).
    class_ids : sequence of int
        Class id written for output channel ``i``.
    nodata : int
        Class value where the input is nodata (or no tile covered the pixel).
    sink : callable
        Called as ``sink(scene_row, class_rows, probability_rows)`` with finished rows.
    device : torch.device or str
        Where the strip lives (the model's device).
    kernel : str
        Blend kernel name (:data:`geopsp.inference.blend.KERNELS`).
    floor : float
        Blend weight floor.
    row_range : (int, int), optional
        Emit only scene rows ``[r0, r1)``; tiles outside still contribute to those rows.
    probabilities : bool
        Also compute the winning class probability rows, uint8 ``round(p * PROBABILITY_SCALE)``
        (at least 1) and :data:`PROBABILITY_NODATA` where the class is nodata (the encoding of
        :mod:`geopsp.io.raster`).
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
        floor: float = 0.05,
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
        t = grid.tile_size
        w = grid.width
        strip = min(t, grid.height)
        self._strip = strip
        self._acc = torch.zeros((self.num_classes, strip, w), dtype=torch.float32, device=self.device)
        self._wsum = torch.zeros((strip, w), dtype=torch.float32, device=self.device)
        self._valid = torch.zeros((strip, w), dtype=torch.bool, device=self.device)
        self._weights = torch.from_numpy(tile_weights(t, kernel=kernel, floor=floor)).to(self.device)
        self._lut = torch.as_tensor(list(class_ids), dtype=torch.int64, device=self.device)
        rows = grid.grid_rows((self.r0, self.r1))
        self._grid_row = rows.start if len(rows) else 0
        self._base = grid.row_offsets[self._grid_row] if len(rows) else self.r0
        self._emitted = self.r0
        self._finished = False

    @property
    def strip_bytes(self) -> int:
        """Bytes held by the strip accumulator."""
        return int(self._acc.nbytes + self._wsum.nbytes + self._valid.nbytes)

    def add(self, tiles: Sequence[Tile], probs: torch.Tensor, valid: torch.Tensor) -> None:
        """Blend a batch of tiles.

        Parameters
        ----------
        tiles : sequence of Tile
            The batch's tiles, in grid order and after all tiles added before.
        probs : Tensor, shape (N, K, size, size), float32
            Class probabilities on the strip's device.
        valid : Tensor, shape (N, size, size), bool
            Input valid mask of each tile (padding is False).
        """
        start = time.perf_counter()
        for n, tile in enumerate(tiles):
            if tile.grid_row < self._grid_row:
                raise ValueError(f"tile {tile.index} arrived after grid row {self._grid_row}; add tiles in grid order")
            if tile.grid_row > self._grid_row:
                self._advance(tile.grid_row)
            y = tile.row - self._base
            h, w = tile.height, tile.width
            x0, x1 = tile.col, tile.col + w
            wt = self._weights[:h, :w]
            self._acc[:, y : y + h, x0:x1].addcmul_(probs[n, :, :h, :w], wt)
            self._wsum[y : y + h, x0:x1].add_(wt)
            self._valid[y : y + h, x0:x1].logical_or_(valid[n, :h, :w])
        self.seconds += time.perf_counter() - start

    def finish(self) -> None:
        """Emit every remaining row of the range; call once after the last tile."""
        if self._finished:
            return
        start = time.perf_counter()
        self._emit_until(self.r1)
        self._finished = True
        self.seconds += time.perf_counter() - start

    def _advance(self, grid_row: int) -> None:
        """Rows above ``grid_row``'s top are final: emit them and slide the strip down."""
        top = self.grid.row_offsets[grid_row]
        self._emit_until(min(top, self.r1))
        shift = top - self._base
        if shift >= self._strip:
            self._acc.zero_()
            self._wsum.zero_()
            self._valid.zero_()
        elif shift > 0:
            keep = self._strip - shift
            self._acc[:, :keep] = self._acc[:, shift:].clone()
            self._acc[:, keep:].zero_()
            self._wsum[:keep] = self._wsum[shift:].clone()
            self._wsum[keep:].zero_()
            self._valid[:keep] = self._valid[shift:].clone()
            self._valid[keep:].zero_()
        self._base = top
        self._grid_row = grid_row

    def _emit_until(self, stop: int) -> None:
        """Reduce and hand out rows ``[emitted, stop)``."""
        a = max(self._emitted, self.r0)
        if stop <= a:
            return
        in_strip = min(stop, self._base + self._strip)
        if in_strip > a:
            lo, hi = a - self._base, in_strip - self._base
            cls, prob = self._reduce(lo, hi)
            self.sink(a, cls, prob)
        if stop > max(in_strip, a):
            # Rows no tile reached (only possible when whole grid rows were skipped).
            b = max(in_strip, a)
            h = stop - b
            cls_nd = np.full((h, self.grid.width), self.nodata, dtype=self.out_dtype)
            prob_nd = np.full((h, self.grid.width), PROBABILITY_NODATA, dtype=np.uint8) if self.probabilities else None
            self.sink(b, cls_nd, prob_nd)
        self._emitted = stop

    def _reduce(self, lo: int, hi: int) -> tuple[NDArray[np.generic], NDArray[np.uint8] | None]:
        acc = self._acc[:, lo:hi]
        wsum = self._wsum[lo:hi]
        invalid = ~self._valid[lo:hi] | (wsum <= 0)
        best, idx = acc.max(dim=0)
        cls = torch.where(invalid, torch.full_like(idx, self.nodata), self._lut[idx])
        cls_np = cls.to(torch.int32).cpu().numpy().astype(self.out_dtype)
        prob_np: NDArray[np.uint8] | None = None
        if self.probabilities:
            p = best / wsum.clamp_min(1e-12)
            q = torch.round(p.clamp(0.0, 1.0) * PROBABILITY_SCALE).clamp_(min=1).to(torch.uint8)
            q = torch.where(invalid, torch.full_like(q, PROBABILITY_NODATA), q)
            prob_np = q.cpu().numpy()
        return cls_np, prob_np
