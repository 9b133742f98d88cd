"""Split big scenes into row strips predicted in parallel, and stitch the strips back.

Strip boundaries sit on tile-grid row offsets, so each boundary costs one extra tile row of
compute. Because :func:`geopsp.pipeline.segment_raster` computes a strip's rows with the
scene's global tile grid, the stitched raster equals a single whole-scene run bit for bit.
"""

from __future__ import annotations

import itertools
import logging

from geopsp.tiling.windows import axis_offsets

__all__ = ["plan_strips"]

logger = logging.getLogger(__name__)


def plan_strips(height: int, width: int, tile_size: int, overlap: int, max_pixels: int) -> list[tuple[int, int]]:
    """Row ranges ``[r0, r1)`` covering a scene, each at most about ``max_pixels`` pixels.

    Parameters
    ----------
    height, width : int
        Scene size in pixels.
    tile_size, overlap : int
        The prediction tile grid.
    max_pixels : int
        Largest strip (``rows * width``) wanted; a strip is never thinner than one grid step.

    Returns
    -------
    list of (int, int)
        Consecutive row ranges from 0 to ``height``; a single ``(0, height)`` when the scene
        is small enough or has only one tile row.

    Examples
    --------
    >>> plan_strips(1000, 100, 256, 32, 10**6)
    [(0, 1000)]
    >>> plan_strips(1000, 100, 256, 32, 50_000)
    [(0, 448), (448, 744), (744, 1000)]
    """
    if height * width <= max_pixels:
        return [(0, height)]
    cuts = [o for o in axis_offsets(height, tile_size, overlap) if o > 0]
    target = max(1, max_pixels // max(1, width))
    bounds = [0]
    while height - bounds[-1] > target:
        start = bounds[-1]
        later = [c for c in cuts if c > start]
        if not later:
            break
        fitting = [c for c in later if c - start <= target]
        bounds.append(fitting[-1] if fitting else later[0])
    bounds.append(height)
    return list(itertools.pairwise(bounds))
