"""Per-band normalization statistics of the training scenes.

Statistics are streamed over a random subsample of windows of the training regions, valid
pixels only (nodata and padding are skipped), so memory stays bounded whatever the scene size.
The result is stored in the bundle, and training and prediction both apply it through
:func:`geopsp.model.inputs.model_input`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from geopsp.config.schema import NormalizationConfig
from geopsp.errors import InputRasterError
from geopsp.model.inputs import model_input
from geopsp.model.meta import Normalization
from geopsp.train.reader import SceneReader
from geopsp.train.sampling import read_region_window
from geopsp.train.split import Region

__all__ = ["compute_normalization", "normalize_window"]

logger = logging.getLogger(__name__)


def compute_normalization(
    readers: Sequence[SceneReader],
    regions: Sequence[Region],
    config: NormalizationConfig,
    *,
    bands: int,
    window: int,
    rng: np.random.Generator,
) -> Normalization:
    """Compute per-band statistics on ``config.windows`` random windows of ``regions``.

    Parameters
    ----------
    readers : sequence of SceneReader
        Scene readers indexed by ``Region.scene``.
    regions : sequence of Region
        Training regions (validation data must not leak into the statistics).
    config : NormalizationConfig
        ``meanstd`` (mean and standard deviation) or ``percentile`` (2-98 by default).
    bands : int
        Number of model input bands.
    window : int
        Window edge in pixels.
    rng : numpy.random.Generator
        Picks the windows.

    Returns
    -------
    Normalization

    Raises
    ------
    InputRasterError
        If the sampled windows hold no valid pixel.
    """
    if config.method == "none":
        return Normalization.identity(bands)
    areas = np.array([r.height * r.width for r in regions], dtype=np.float64)
    picks = rng.choice(len(regions), size=config.windows, p=areas / areas.sum())
    total = np.zeros(bands)
    total_sq = np.zeros(bands)
    count = 0
    per_window = max(1, config.max_pixels // config.windows)
    samples: list[NDArray[np.float32]] = []
    for k in picks.tolist():
        reg = regions[k]
        size_r, size_c = min(window, reg.height), min(window, reg.width)
        row = reg.row + int(rng.integers(0, reg.height - size_r + 1))
        col = reg.col + int(rng.integers(0, reg.width - size_c + 1))
        image, _ = read_region_window(readers[reg.scene], reg, row, col, max(size_r, size_c))
        flat = image.reshape(bands, -1)
        flat = flat[:, np.all(np.isfinite(flat), axis=0)].astype(np.float64)
        if flat.shape[1] == 0:
            continue
        total += flat.sum(axis=1)
        total_sq += (flat**2).sum(axis=1)
        count += flat.shape[1]
        if config.method == "percentile":
            take = rng.choice(flat.shape[1], size=min(per_window, flat.shape[1]), replace=False)
            samples.append(flat[:, take].astype(np.float32))
    if count == 0:
        raise InputRasterError("the training windows sampled for normalization hold no valid pixel; check nodata")
    if config.method == "meanstd":
        mean = total / count
        var = np.maximum(total_sq / count - mean**2, 0.0)
        std = np.sqrt(var)
        std = np.where(std > 1e-6 * np.maximum(np.abs(mean), 1.0), std, 1.0)
        logger.info("normalization mean %s std %s from %d pixels", np.round(mean, 3), np.round(std, 3), count)
        return Normalization.from_stats(mean.tolist(), std.tolist())
    values = np.concatenate(samples, axis=1)
    lo, hi = np.percentile(values, config.percentiles, axis=1)
    hi = np.where(hi > lo, hi, lo + 1.0)
    logger.info("normalization p%s %s .. %s", config.percentiles, np.round(lo, 3), np.round(hi, 3))
    return Normalization.from_percentiles(lo.tolist(), hi.tolist())


def normalize_window(image: NDArray[np.float32], norm: Normalization) -> NDArray[np.float32]:
    """Normalize a (C, H, W) raw window as prediction does (:func:`geopsp.model.inputs.model_input`).

    The training readers mark pixels without data (nodata, masked, transparent, not finite,
    padding) NaN in every band; they get :data:`~geopsp.model.inputs.MODEL_FILL`.

    Examples
    --------
    >>> n = Normalization.from_stats([10.0], [2.0])
    >>> normalize_window(np.array([[[12.0, np.nan]]], dtype="float32"), n).tolist()
    [[[1.0, 0.0]]]
    """
    return model_input(image, None, norm)
