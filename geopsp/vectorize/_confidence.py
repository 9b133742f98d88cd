"""Per-polygon confidence from the QA rasters, gathered strip by strip and merged exactly.

The QA rasters (:mod:`geopsp.encoding`: uint8, ``max(1, round(255 * x))``, 0 = nodata) lie on
the class raster's grid. For every piece of a strip five integers are counted over its pixels
(:func:`piece_stats`): the sum and count of the stored confidence values, their minimum, and,
of the disagreement raster, how many pixels have a value (``>= 1``) and how many of those
disagree (``>= 2``). Integers add up exactly, so regions joined across seams
(:mod:`geopsp.vectorize._stitch`) and merged or filled into neighbours
(:mod:`geopsp.vectorize._eliminate`) get the same numbers as if the whole raster had been
read at once (:func:`merge_stats`, :func:`reduce_stats`); they are decoded to 0..1 only for
the attributes (:func:`decode_stats`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from geopsp.encoding import PROBABILITY_NODATA, PROBABILITY_SCALE
from geopsp.errors import InputRasterError

__all__ = [
    "CONF_MIN",
    "CONF_N",
    "CONF_SUM",
    "DIS_HIT",
    "DIS_N",
    "N_STATS",
    "QualityRasters",
    "conf_mean",
    "decode_stats",
    "empty_stats",
    "merge_stats",
    "open_quality",
    "piece_stats",
    "read_quality",
    "reduce_stats",
]

IntArray = NDArray[np.int64]

CONF_SUM, CONF_N, CONF_MIN, DIS_HIT, DIS_N = range(5)
"""Columns of a stats array: confidence sum, count and minimum (stored values); disagreeing and valid pixels."""
N_STATS = 5
_NO_MIN = PROBABILITY_SCALE + 1  # the minimum of no pixels: above every stored value
_DISAGREE = 2  # stored disagreement >= 2: some covering tile's own class differed
_BLOCK_PIXELS = 1 << 20  # pixels counted at a time (bounds the temporaries of piece_stats)


@dataclass(frozen=True)
class QualityRasters:
    """The QA rasters read beside a class raster, as GDAL opens them (picklable, for workers).

    Attributes
    ----------
    confidence : str or None
        The confidence (``<stem>_probability.tif``) raster.
    disagreement : str or None
        The tile disagreement (``<stem>_disagreement.tif``) raster.
    """

    confidence: str | None = None
    disagreement: str | None = None

    @property
    def given(self) -> bool:
        """Whether any QA raster is read."""
        return self.confidence is not None or self.disagreement is not None

    @classmethod
    def check(
        cls,
        class_raster: str,
        grid: Any,
        *,
        confidence: str | os.PathLike[str] | None = None,
        disagreement: str | os.PathLike[str] | None = None,
    ) -> QualityRasters:
        """Check that the QA rasters exist, hold geopsp's uint8 encoding and lie on ``grid``.

        Parameters
        ----------
        class_raster : str
            The class raster, for messages.
        grid : RasterSource
            Its size, transform and CRS.
        confidence, disagreement : str or os.PathLike, optional
            The QA rasters.

        Raises
        ------
        InputRasterError
            One line naming both files when a QA raster is missing, not uint8, or on another grid.
        """
        from geopsp.io.source import resolve_scene

        named: dict[str, str | None] = {}
        for what, path in (("confidence", confidence), ("disagreement", disagreement)):
            if path is None:
                named[what] = None
                continue
            source = resolve_scene(path)
            if source.given == grid.source.given:
                raise InputRasterError(
                    f"{source}: the {what} raster is the class raster itself; pass the QA raster written with it "
                    f"(<stem>_{'probability' if what == 'confidence' else what}.tif)"
                )
            _check_grid(source, class_raster, grid, what=f"{what} raster")
            named[what] = source.given
        return cls(named["confidence"], named["disagreement"])


def _check_grid(source: Any, class_raster: str, grid: Any, *, what: str) -> None:
    from geopsp.io.scene import open_raster

    with open_raster(source, what=what) as ds:
        dtype = ds.dtypes[0]
        problem = None
        if dtype != "uint8":
            problem = f"band 1 is {dtype}, not geopsp's uint8 QA encoding (255 x value, 0 = nodata)"
        elif (ds.width, ds.height) != (grid.width, grid.height):
            problem = f"{ds.width} x {ds.height} px, the class raster is {grid.width} x {grid.height}"
        elif (ds.crs is None) != (grid.crs is None) or (ds.crs is not None and ds.crs != grid.crs):
            problem = f"CRS {_crs_name(ds.crs)}, the class raster's is {_crs_name(grid.crs)}"
        elif not ds.transform.almost_equals(grid.transform):
            problem = f"transform {tuple(ds.transform)[:6]}, the class raster's is {tuple(grid.transform)[:6]}"
    if problem is not None:
        raise InputRasterError(
            f"{source}: {what} does not fit the class raster {class_raster}: {problem}; "
            "pass the QA raster written with that class raster (same grid)"
        )


def _crs_name(crs: Any) -> str:
    if crs is None:
        return "none"
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else "(custom WKT)"


@contextlib.contextmanager
def open_quality(rasters: QualityRasters) -> Iterator[tuple[Any, Any]]:
    """Open the QA rasters that are given; yield ``(confidence, disagreement)`` datasets or None."""
    from geopsp.io.scene import open_raster

    with contextlib.ExitStack() as stack:
        opened = [
            None if path is None else stack.enter_context(open_raster(path, what=f"{what} raster"))
            for what, path in (("confidence", rasters.confidence), ("disagreement", rasters.disagreement))
        ]
        yield opened[0], opened[1]


def read_quality(
    datasets: tuple[Any, Any], row0: int, row1: int
) -> tuple[NDArray[np.uint8] | None, NDArray[np.uint8] | None]:
    """Read rows ``row0:row1`` of the open QA rasters (band 1, stored values)."""
    from rasterio.windows import Window

    out: list[NDArray[np.uint8] | None] = []
    for ds in datasets:
        out.append(None if ds is None else ds.read(1, window=Window(0, row0, ds.width, row1 - row0)))
    return out[0], out[1]


def empty_stats(n: int = 0) -> IntArray:
    """Return the stats of ``n`` regions without pixels, shape ``(n, N_STATS)``."""
    out = np.zeros((n, N_STATS), dtype=np.int64)
    out[:, CONF_MIN] = _NO_MIN
    return out


def piece_stats(
    geoms: NDArray[np.object_],
    row0: int,
    conf: NDArray[np.uint8] | None,
    dis: NDArray[np.uint8] | None,
) -> IntArray:
    """Count the QA values under each piece of a strip.

    Parameters
    ----------
    geoms : ndarray of Polygon, shape (n,)
        Exact pixel-edge pieces of rows ``row0 : row0 + rows`` (pixel coordinates of the raster).
    row0 : int
        The strip's first row.
    conf, dis : ndarray of uint8, shape (rows, width), or None
        The strip's stored confidence and disagreement values.

    Returns
    -------
    ndarray of int64, shape (n, N_STATS)
        Per piece: confidence sum, count, minimum (of stored values, nodata excluded), and
        disagreeing and valid disagreement pixels.
    """
    from rasterio.features import rasterize
    from rasterio.transform import Affine

    n = len(geoms)
    stats = empty_stats(n)
    if n == 0 or (conf is None and dis is None):
        return stats
    shape = conf.shape if conf is not None else dis.shape  # type: ignore[union-attr]
    # Pixel centres never lie on a pixel-edge boundary, so burning the pieces is exact.
    labels = rasterize(
        zip(geoms, range(n), strict=True),
        out_shape=shape,
        transform=Affine.translation(0, row0),
        fill=-1,
        dtype="int32",
    ).ravel()
    # counted in row blocks: the temporaries (int64 and float64 copies of the values, masks)
    # stay a few MB whatever the strip's size, not several times the strip
    step = max(1, _BLOCK_PIXELS // max(1, shape[1])) * shape[1]
    low = np.full(n, _NO_MIN, dtype=np.int64)
    for start in range(0, labels.size, step):
        lab_all = labels[start : start + step]
        inside = lab_all >= 0
        if conf is not None:
            c = conf.ravel()[start : start + step]
            ok = inside & (c != PROBABILITY_NODATA)
            lab, val = lab_all[ok], c[ok]
            stats[:, CONF_SUM] += np.bincount(lab, weights=val, minlength=n).astype(np.int64)
            stats[:, CONF_N] += np.bincount(lab, minlength=n)
            np.minimum.at(low, lab, val.astype(np.int64))
        if dis is not None:
            d = dis.ravel()[start : start + step]
            ok = inside & (d != PROBABILITY_NODATA)
            stats[:, DIS_N] += np.bincount(lab_all[ok], minlength=n)
            stats[:, DIS_HIT] += np.bincount(lab_all[ok & (d >= _DISAGREE)], minlength=n)
    if conf is not None:
        stats[:, CONF_MIN] = low
    return stats


def merge_stats(stats: IntArray) -> IntArray:
    """Return the stats of the union of regions ``stats`` (shape ``(m, N_STATS)``), shape ``(N_STATS,)``.

    Examples
    --------
    >>> merge_stats(np.array([[510, 2, 200, 1, 2], [100, 1, 100, 0, 1]])).tolist()
    [610, 3, 100, 1, 3]
    """
    out: IntArray = stats.sum(axis=0, dtype=np.int64)
    out[CONF_MIN] = stats[:, CONF_MIN].min() if len(stats) else _NO_MIN
    return out


def reduce_stats(stats: IntArray, order: IntArray, starts: IntArray) -> IntArray:
    """Merge groups of rows: group ``k`` is ``stats[order[starts[k]:starts[k + 1]]]``."""
    rows = stats[order]
    out = np.add.reduceat(rows, starts, axis=0)
    out[:, CONF_MIN] = np.minimum.reduceat(rows[:, CONF_MIN], starts)
    return out


def conf_mean(stats: IntArray) -> NDArray[np.float64]:
    """Mean decoded confidence (0..1) of each region; NaN where it has no confidence pixels."""
    n = stats[:, CONF_N]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = stats[:, CONF_SUM] / (n * float(PROBABILITY_SCALE))
    return np.where(n > 0, mean, np.nan)


def decode_stats(stats: IntArray, *, confidence: bool, disagreement: bool) -> dict[str, NDArray[np.float64]]:
    """Return the attribute columns ``conf_mean``, ``conf_min`` and/or ``disagree_frac`` (0..1, NaN: no pixels).

    Examples
    --------
    >>> cols = decode_stats(np.array([[510, 2, 255, 1, 4]]), confidence=True, disagreement=True)
    >>> [(k, v.tolist()) for k, v in cols.items()]
    [('conf_mean', [1.0]), ('conf_min', [1.0]), ('disagree_frac', [0.25])]
    """
    out: dict[str, NDArray[np.float64]] = {}
    if confidence:
        low = stats[:, CONF_MIN]
        out["conf_mean"] = conf_mean(stats)
        out["conf_min"] = np.where(low < _NO_MIN, low / float(PROBABILITY_SCALE), np.nan)
    if disagreement:
        n = stats[:, DIS_N]
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = stats[:, DIS_HIT] / n
        out["disagree_frac"] = np.where(n > 0, frac, np.nan)
    return out
