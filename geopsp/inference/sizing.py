"""Tiles per forward pass and threads cutting them: ``predict.batch_size`` and ``reader_threads`` left null.

On the CPU a batch of :data:`CPU_BATCH_SIZE` tiles already keeps every core busy (a larger one
only holds more memory); on a GPU a batch must be large enough to fill the device, and as
large as its memory allows is the simplest rule that does: :func:`cuda_batch_size`.
"""

from __future__ import annotations

__all__ = ["CPU_BATCH_SIZE", "CUDA_MAX_BATCH", "CUDA_MEMORY_SHARE", "cuda_batch_size", "cutter_threads"]

CPU_BATCH_SIZE = 4
"""Tiles per forward pass on the CPU when none is asked for."""

CUDA_MAX_BATCH = 64
"""The largest batch :func:`cuda_batch_size` picks (beyond it a GPU is no faster, only fuller)."""

CUDA_MEMORY_SHARE = 0.5
"""Share of the free GPU memory the model's batches may take; the rest is for the mosaic's
strip accumulator, cuDNN workspaces and the allocator's fragmentation."""


def cuda_batch_size(*, free_bytes: int, one_tile_bytes: int, two_tile_bytes: int) -> int:
    """Return the batch that fits :data:`CUDA_MEMORY_SHARE` of the free memory, a power of two.

    Parameters
    ----------
    free_bytes : int
        GPU memory free for this run (free on the device plus what torch holds unused).
    one_tile_bytes, two_tile_bytes : int
        Peak memory of a forward pass over one and over two tiles: their difference is what
        each further tile costs, the rest is fixed (weights' workspaces).

    Examples
    --------
    >>> cuda_batch_size(free_bytes=80 << 30, one_tile_bytes=600 << 20, two_tile_bytes=1100 << 20)
    64
    >>> cuda_batch_size(free_bytes=8 << 30, one_tile_bytes=600 << 20, two_tile_bytes=1100 << 20)
    4
    >>> cuda_batch_size(free_bytes=512 << 20, one_tile_bytes=600 << 20, two_tile_bytes=1100 << 20)
    1
    """
    per_tile = max(1, two_tile_bytes - one_tile_bytes)
    fixed = max(0, one_tile_bytes - per_tile)
    budget = CUDA_MEMORY_SHARE * free_bytes - fixed
    n = int(budget // per_tile)
    if n < 2:
        return 1
    return min(CUDA_MAX_BATCH, 1 << (n.bit_length() - 1))


def cutter_threads(requested: int | None, *, cuda: bool, cores: int) -> int:
    """Return the threads that cut and prepare tiles: ``requested``, else sized to the device.

    On the CPU 2: the model's own threads need the cores, and two cutters keep up with it
    (``seconds.wait_for_tiles`` stays near zero). On CUDA the host does nothing else, and a
    GPU eats tiles tens of times faster: half the cores, 2 to 8.

    Examples
    --------
    >>> cutter_threads(None, cuda=False, cores=16), cutter_threads(None, cuda=True, cores=16)
    (2, 8)
    >>> cutter_threads(None, cuda=True, cores=2), cutter_threads(3, cuda=True, cores=64)
    (2, 3)
    """
    if requested is not None:
        return int(requested)
    return min(8, max(2, cores // 2)) if cuda else 2
