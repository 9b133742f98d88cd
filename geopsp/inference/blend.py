"""Blend weights: how much each pixel of a tile counts where tiles overlap.

A kernel is a function ``(n, floor) -> float64 array of n weights in [floor, 1]``; the 2-D
weight of a tile is the outer product of the row and column kernels. Tile borders, where the
model sees the least context, get the smallest weights; the ``floor`` keeps every weight
positive so pixels at the scene edge, covered by one tile only, still count. The mosaic
divides the weighted sum of probabilities by the summed weights, so the effective weights of
the tiles covering a pixel always add up to 1.

Add a kernel by putting a function into :data:`KERNELS`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from geopsp.errors import ConfigError

__all__ = ["KERNELS", "cosine_kernel", "gaussian_kernel", "tile_weights", "uniform_kernel"]

Kernel = Callable[[int, float], NDArray[np.float64]]


def _centres(n: int) -> NDArray[np.float64]:
    """Pixel centres mapped to (0, 1)."""
    return (np.arange(n, dtype=np.float64) + 0.5) / n


def cosine_kernel(n: int, floor: float) -> NDArray[np.float64]:
    """Hann (raised cosine) window lifted to ``floor``: ``floor + (1 - floor) * sin^2(pi t)``.

    Examples
    --------
    >>> w = cosine_kernel(4, 0.1)
    >>> bool(w.min() >= 0.1 and w.max() <= 1.0), bool(np.allclose(w, w[::-1]))
    (True, True)
    """
    return floor + (1.0 - floor) * np.sin(np.pi * _centres(n)) ** 2


def uniform_kernel(n: int, floor: float) -> NDArray[np.float64]:
    """Equal weights (plain averaging of overlapping tiles)."""
    return np.ones(n, dtype=np.float64)


def gaussian_kernel(n: int, floor: float, sigma: float = 0.25) -> NDArray[np.float64]:
    """Gaussian centred on the tile with standard deviation ``sigma * n``, lifted to ``floor``."""
    t = _centres(n) - 0.5
    return floor + (1.0 - floor) * np.exp(-0.5 * (t / sigma) ** 2)


KERNELS: dict[str, Kernel] = {
    "cosine": cosine_kernel,
    "uniform": uniform_kernel,
    "gaussian": gaussian_kernel,
}
"""Blend kernels by name (``PredictConfig.blend``)."""


def tile_weights(size: int, *, kernel: str = "cosine", floor: float = 0.001) -> NDArray[np.float32]:
    """Return the 2-D blend weight of a ``size`` x ``size`` tile.

    Parameters
    ----------
    size : int
        Tile edge.
    kernel : str
        A name in :data:`KERNELS`.
    floor : float
        Smallest weight, in (0, 1].

    Returns
    -------
    ndarray of float32, shape (size, size)
        Weights in ``[floor ** 2, 1]`` (``floor`` per axis); all strictly positive.

    Raises
    ------
    ConfigError
        For an unknown kernel or a floor outside (0, 1].
    """
    fn = KERNELS.get(kernel)
    if fn is None:
        raise ConfigError(f"unknown blend kernel {kernel!r}; choose one of {', '.join(sorted(KERNELS))}")
    if not 0.0 < floor <= 1.0:
        raise ConfigError(f"blend floor must be in (0, 1], got {floor}")
    w1 = np.asarray(fn(size, floor), dtype=np.float64)
    if w1.shape != (size,) or not np.all(w1 > 0):
        raise ConfigError(f"blend kernel {kernel!r} must return {size} positive weights")
    return np.outer(w1, w1).astype(np.float32)
