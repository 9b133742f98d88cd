"""Batches of tiles cut straight into reused (pinned, on CUDA) buffers by several threads.

:meth:`geopsp.tiling.reader.TileReader.batches` hands out :class:`TileBatch` objects: ``n``
tiles of the grid, in its visiting order, already stacked as the model takes them. The
buffers come from a small ring (:class:`SlotRing`) allocated once per run by the model's
:class:`TilePreparer` (page-locked on CUDA, so the copy to the device runs without blocking,
on a side stream), so no tile, batch or stack is allocated per tile: a fresh multi-megabyte
array per tile is a fresh mapping the kernel must fault in page by page, which cost more than
the copy itself. A batch's buffer returns to the ring when its consumer calls
:meth:`TileBatch.release`, with a wait that tells when the device has finished reading it.

The work per tile is split so the reader thread does only what must be serial:

* reader thread: read block rows once (GDAL decodes them in parallel), write the tile's
  valid mask into its slot, skip all-nodata tiles, note where the tile's data lies;
* cutter threads (``threads`` of them): copy the data into the slot, pad by reflection in
  place, and prepare it (normalize on the CPU; cast only, where the device normalizes).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from geopsp.tiling.windows import Tile

__all__ = ["NumpyPreparer", "SlotRing", "SlotSet", "TileBatch", "TilePreparer"]


class TilePreparer(Protocol):
    """What the model's side tells the reader: the buffers' type and memory, and how to prepare a tile.

    :class:`geopsp.inference.predict.Predictor` and :class:`geopsp.inference.ort.OrtPredictor`
    implement it.
    """

    def host_dtype(self, dtype: np.dtype[Any]) -> np.dtype[Any]:
        """Return the dtype of a batch buffer for tiles read as ``dtype``."""
        ...

    def host_array(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> NDArray[Any]:
        """Allocate one batch buffer (page-locked where the model runs on CUDA)."""
        ...

    @property
    def casts_only(self) -> bool:
        """True when preparing a tile is only a cast into the buffer (the device normalizes)."""
        ...

    def prepare_into(self, tile: Tile, raw: NDArray[Any], valid: NDArray[np.bool_], out: NDArray[Any]) -> None:
        """Prepare one padded ``(C, rows, cols)`` tile into ``out`` (a slot of a batch buffer)."""
        ...


class NumpyPreparer:
    """A :class:`TilePreparer` that copies raw tiles unchanged (readers without a model, tests)."""

    casts_only = True

    def host_dtype(self, dtype: np.dtype[Any]) -> np.dtype[Any]:
        """Return ``dtype``: tiles keep the scene's type."""
        return dtype

    def host_array(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> NDArray[Any]:
        """Allocate an ordinary array."""
        return np.empty(shape, dtype=dtype)

    def prepare_into(self, tile: Tile, raw: NDArray[Any], valid: NDArray[np.bool_], out: NDArray[Any]) -> None:
        """Copy ``raw`` into ``out`` (nothing to do when they are the same array)."""
        if raw is not out:
            np.copyto(out, raw, casting="unsafe")


@dataclass(eq=False)
class SlotSet:
    """One batch buffer: ``data (B, C, rows, cols)`` and ``valid (B, rows, cols)``."""

    data: NDArray[Any]
    valid: NDArray[np.bool_]
    ready: Callable[[], None] | None = None  # waits until the device has read the last batch in it


class SlotRing:
    """A fixed ring of :class:`SlotSet` batch buffers; :meth:`acquire` blocks until one is free.

    Parameters
    ----------
    count : int
        Buffers in the ring (at least 2: one being filled while another is used).
    make : callable
        ``make() -> SlotSet``, called ``count`` times, lazily.
    stop : threading.Event
        When set, :meth:`acquire` gives up and returns None.
    """

    def __init__(self, count: int, make: Callable[[], SlotSet], stop: threading.Event) -> None:
        self._make = make
        self._count = max(2, int(count))
        self._made = 0
        self._free: list[SlotSet] = []
        self._cond = threading.Condition()
        self._stop = stop

    @property
    def allocated(self) -> int:
        """Buffers allocated so far."""
        return self._made

    def acquire(self) -> SlotSet | None:
        """Return a free buffer (waiting until the device has read it), or None once stopped."""
        with self._cond:
            while not self._free and self._made >= self._count:
                if self._stop.is_set():
                    return None
                self._cond.wait(timeout=0.1)
            if self._free:
                slots = self._free.pop()
            else:
                self._made += 1
                slots = self._make()
        if slots.ready is not None:
            slots.ready()  # outside the lock: a CUDA event wait
            slots.ready = None
        return slots

    def release(self, slots: SlotSet, ready: Callable[[], None] | None = None) -> None:
        """Give a buffer back; ``ready()`` is called before it is filled again."""
        slots.ready = ready
        with self._cond:
            self._free.append(slots)
            self._cond.notify()


@dataclass(eq=False)
class TileBatch:
    """Tiles of the grid ready for the model, stacked in a reused buffer.

    Attributes
    ----------
    tiles : list of Tile
        The tiles to run, in grid order (possibly none, at the end of a scene).
    skipped : list of Tile
        All-nodata tiles met since the previous batch (not prepared, not in ``data``).
    data : ndarray, shape (n, C, rows, cols)
        The prepared tiles (float32 normalized, or raw integers where the device normalizes).
    valid : ndarray of bool, shape (n, rows, cols)
        Their valid masks (padding copies the validity of the pixels it reflects).
    """

    tiles: list[Tile]
    skipped: list[Tile]
    data: NDArray[Any]
    valid: NDArray[np.bool_]
    _ring: SlotRing | None = field(default=None, repr=False)
    _slots: SlotSet | None = field(default=None, repr=False)

    def release(self, ready: Callable[[], None] | None = None) -> None:
        """Hand the buffer back to the reader; call once the arrays are no longer read.

        Parameters
        ----------
        ready : callable, optional
            Blocks until a device is done reading the buffer (e.g. a CUDA event's
            ``synchronize`` after a non-blocking copy); called before the buffer is refilled.
        """
        if self._ring is not None and self._slots is not None:
            self._ring.release(self._slots, ready)
        self._ring = self._slots = None


def slot_arrays(
    preparer: TilePreparer, batch: int, bands: int, shape: tuple[int, int], dtype: np.dtype[Any]
) -> SlotSet:
    """Allocate one :class:`SlotSet` of ``batch`` tiles through ``preparer``."""
    host = preparer.host_dtype(dtype)
    data = preparer.host_array((batch, bands, *shape), host)
    valid = preparer.host_array((batch, *shape), np.dtype(np.bool_))
    return SlotSet(data, valid)
