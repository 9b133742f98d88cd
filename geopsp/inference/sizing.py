"""How many tiles go into one forward pass: the one home of ``predict.batch_size: null``.

On the CPU a batch of :data:`CPU_BATCH_SIZE` tiles already keeps every core busy (a larger one
only holds more memory); on a GPU a batch must be large enough to fill the device, and as
large as its memory allows is the simplest rule that does: :func:`cuda_batch_size`.
"""

from __future__ import annotations

__all__ = ["CPU_BATCH_SIZE", "CUDA_MAX_BATCH", "CUDA_MEMORY_SHARE", "cuda_batch_size"]

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
