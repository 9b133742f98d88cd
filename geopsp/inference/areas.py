"""The class areas table: pixels, square metres, share and polygons of each class of a class raster.

:func:`class_areas` reads the class raster window by window (bounded memory, whatever its
size) and counts each class's pixels; nodata pixels are counted apart and never in a share.
How pixels become square metres depends on the raster's CRS (:mod:`geopsp.io.units`):

``"planar"``
    a projected CRS: every pixel has the area ``|det(transform)|`` in CRS units², times the
    square of the unit in metres (feet and US survey feet CRSs included);
``"geodesic"``
    a geographic CRS or a Mercator projection, whose units are no true metres: each row's
    cell is a polygon on the CRS's ellipsoid, measured with :class:`pyproj.Geod` (its
    east and west edges are meridians, its north and south edges parallels, densified to
    0.1° steps). On a north-up grid every cell of a row has the same area, so a class's area
    is the sum over rows of its pixels in the row times the row's cell area. A rotated or
    sheared grid there is refused (geopsp never writes one: scenes are read north-up);
    warp it north-up first;
``"none"``
    no CRS: pixels are counted, ``area_m2`` is None and shares are of pixels.

``percent`` is a class's share of the valid (non-nodata) area (of its pixels when there are
no square metres). ``polygon_count`` comes from the polygons written from the raster
(:func:`geopsp.io.vector.count_by_value` on ``class_id``); None when none were written.

The table, its sum over scenes and its CSV are :mod:`geopsp.inference.area_table`.
Nothing here imports torch.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from geopsp.classes import ClassTable, complete_classes
from geopsp.errors import InputRasterError
from geopsp.inference.area_table import AreaMethod, ClassArea, ClassAreas

if TYPE_CHECKING:
    from geopsp.io.source import SceneSource

__all__ = ["class_areas"]

logger = logging.getLogger(__name__)

_WINDOW_PIXELS = 1 << 20  # pixels read at once (1 Mi: with the per-pixel indices, some 20 MiB)
_PARALLEL_STEP_DEG = 0.1  # densify a cell's parallels to this step: they are no geodesics


def class_areas(
    class_raster: str | os.PathLike[str] | SceneSource,
    *,
    classes: ClassTable | None = None,
    polygons: str | os.PathLike[str] | None = None,
    polygons_layer: str | None = None,
) -> ClassAreas:
    """Measure each class of a class raster: pixels, square metres, share of the valid area, polygons.

    Parameters
    ----------
    class_raster : str, os.PathLike or SceneSource
        A single-band integer raster of class ids (a geopsp class raster, or any other),
        local or remote; read one window of about 1 Mi pixels at a time.
    classes : ClassTable, optional
        Names and order of the classes; default: the table stored in the raster by geopsp,
        else ``class_<id>`` names. Every class gets a row, with 0 pixels if absent; ids
        found that the table lacks get rows after it.
    polygons : str or os.PathLike, optional
        The polygons vectorized from this raster (``class_id`` attribute): their count per
        class fills ``polygon_count``.
    polygons_layer : str, optional
        The polygons' layer; default: the file's first.

    Returns
    -------
    ClassAreas

    Raises
    ------
    InputRasterError
        The raster is missing, unreadable, not integer, or has a rotated or sheared grid in
        a geographic or Mercator CRS.
    InputVectorError
        ``polygons`` cannot be read.

    Examples
    --------
    >>> import tempfile
    >>> from geopsp.testing import write_geotiff
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = write_geotiff(f"{folder}/c.tif", np.array([[[1, 1], [2, 0]]], np.uint8), nodata=0, pixel_size=10.0)
    ...     table = class_areas(path)
    >>> [(r.id, r.pixels, r.area_m2, round(r.percent, 2)) for r in table.rows], table.nodata_pixels
    ([(1, 2, 200.0, 66.67), (2, 1, 100.0, 33.33)], 1)
    """
    from geopsp.io.class_metadata import class_table_from_tags
    from geopsp.io.scene import open_raster, read_failure

    pixels: dict[int, int] = {}
    areas: dict[int, float] = {}
    nodata_pixels = 0
    with open_raster(class_raster, what="class raster") as src:
        dtype = np.dtype(src.dtypes[0])
        if dtype.kind not in "iu":
            raise InputRasterError(
                f"{class_raster}: band 1 is {dtype.name}; a class raster holds integer class ids (uint8, uint16 ...)"
            )
        if classes is None:
            try:
                classes = class_table_from_tags(src.tags())
            except Exception as exc:  # a damaged tag must not stop the table
                logger.warning("%s: ignoring unreadable class table tag (%s)", class_raster, exc)
        cells = _CellAreas(src.crs, src.transform, class_raster)
        block_h, block_w = src.block_shapes[0]
        for window in _windows(src.height, src.width, block_h, block_w):
            try:
                values = src.read(1, window=window)
            except Exception as exc:
                r0 = int(window.row_off)
                raise read_failure(class_raster, exc, rows=(r0, r0 + int(window.height) - 1)) from exc
            _add_window(values, cells, int(window.row_off), pixels, areas)
        nodata = src.nodata
    if nodata is not None and float(nodata).is_integer():  # counted like a class, then set apart
        nodata_pixels = pixels.pop(int(nodata), 0)
        areas.pop(int(nodata), None)
    return _table(pixels, areas, cells.method, nodata_pixels, classes, polygons, polygons_layer)


def _add_window(
    values: NDArray[Any], cells: _CellAreas, r0: int, pixels: dict[int, int], areas: dict[int, float]
) -> None:
    """Add one window's pixels and areas per class id (nodata too, as its value).

    Areas: each row's count of a class times the row's cell area (one area for all rows of
    a planar grid).
    """
    h = values.shape[0]
    ids, index = _compact(values)
    k = len(ids)
    if cells.method == "geodesic":
        offsets = (np.arange(h, dtype=np.int64) * k)[:, None]
        per_row = np.bincount((index + offsets).ravel(), minlength=k * h).reshape(h, k)
        counts = per_row.sum(axis=0)
        measured: NDArray[np.float64] | None = cells.rows(r0, h) @ per_row
    else:
        counts = np.bincount(index.ravel(), minlength=k)
        measured = counts * np.float64(cells.planar) if cells.planar is not None else None
    for i, cid in enumerate(ids.tolist()):
        pixels[cid] = pixels.get(cid, 0) + int(counts[i])
        if measured is not None:
            areas[cid] = areas.get(cid, 0.0) + float(measured[i])


def _compact(values: NDArray[Any]) -> tuple[NDArray[Any], NDArray[np.int64]]:
    """Return the distinct values of a window and each pixel's index into them.

    8- and 16-bit unsigned rasters (every geopsp class raster) take a lookup table: one
    linear pass, no sort.
    """
    if values.dtype.kind == "u" and values.dtype.itemsize <= 2:
        found = np.bincount(values.ravel())
        ids = np.flatnonzero(found)
        lut = np.zeros(len(found), dtype=np.int64)
        lut[ids] = np.arange(len(ids))
        return ids, lut[values]
    uniq, inverse = np.unique(values, return_inverse=True)
    return uniq, inverse.reshape(values.shape).astype(np.int64)


def _table(
    pixels: Mapping[int, int],
    areas: Mapping[int, float],
    method: AreaMethod,
    nodata_pixels: int,
    classes: ClassTable | None,
    polygons: str | os.PathLike[str] | None,
    polygons_layer: str | None,
) -> ClassAreas:
    table = complete_classes(classes, pixels) if classes is not None or pixels else None
    measured = method != "none"
    total = math.fsum(areas.values()) if measured else float(sum(pixels.values()))
    rows = []
    for c in table or ():
        n = pixels.get(c.id, 0)
        area = areas.get(c.id, 0.0) if measured else None
        share = (area if area is not None else float(n)) / total * 100.0 if total > 0 else None
        rows.append(ClassArea(c.id, c.name, n, area, share))
    out = ClassAreas(tuple(rows), method, nodata_pixels=nodata_pixels)
    if polygons is not None:
        from geopsp.io.vector import count_by_value

        out = out.with_polygon_counts(count_by_value(polygons, "class_id", layer=polygons_layer))
    return out


def _windows(height: int, width: int, block_h: int, block_w: int) -> Iterator[Any]:
    """Windows on the raster's blocks covering it row by row, each at most about :data:`_WINDOW_PIXELS`.

    Full-width strips of block rows where they fit (every block decoded once), else whole
    blocks side by side.
    """
    from rasterio.windows import Window

    block_h, block_w = max(1, min(block_h, height)), max(1, min(block_w, width))
    if block_h * width <= _WINDOW_PIXELS:
        rows, cols = block_h * max(1, _WINDOW_PIXELS // (block_h * width)), width
    else:
        rows, cols = block_h, block_w * max(1, _WINDOW_PIXELS // (block_h * block_w))
    for r0 in range(0, height, rows):
        for c0 in range(0, width, cols):
            yield Window(c0, r0, min(cols, width - c0), min(rows, height - r0))


class _CellAreas:
    """The area in m² of one pixel of each row (``method`` says how, see the module docstring)."""

    def __init__(self, crs: Any, transform: Any, name: object) -> None:
        self.transform = transform
        self._geod: Any = None
        self._to_lonlat: Any = None
        self.planar: float | None = None  # m² of every pixel of a planar grid
        self.method: AreaMethod = "none"
        self._cached: tuple[int, NDArray[np.float64]] = (-1, np.zeros(0))
        if crs is None:
            return
        from pyproj import Transformer

        from geopsp.io.units import is_ellipsoidal, metres_per_unit, to_pyproj

        src = to_pyproj(crs)
        if not is_ellipsoidal(src):
            t = transform
            self.planar = abs(t.a * t.e - t.b * t.d) * metres_per_unit(src) ** 2
            self.method = "planar"
            return
        if transform.b != 0 or transform.d != 0:
            raise InputRasterError(
                f"{name}: its grid is rotated or sheared in a geographic (or Mercator) CRS, so its cells' areas "
                "vary along each row; warp it to a north-up grid first (gdalwarp)"
            )
        self._geod = src.get_geod()
        self._to_lonlat = Transformer.from_crs(src, src.geodetic_crs, always_xy=True)
        self.method = "geodesic"

    def rows(self, r0: int, count: int) -> NDArray[np.float64]:
        """Return the geodesic cell area of rows ``r0 .. r0+count-1`` (computed once per row)."""
        if self._cached[0] != r0 or len(self._cached[1]) != count:
            self._cached = (r0, np.array([self._geodesic_row(r) for r in range(r0, r0 + count)]))
        return self._cached[1]

    def _geodesic_row(self, row: int) -> float:
        t = self.transform
        x0, x1 = t.c, t.c + t.a
        y0, y1 = t.f + t.e * row, t.f + t.e * (row + 1)
        (lon0, lon1, _, _), (lat0, _, lat1, _) = self._to_lonlat.transform([x0, x1, x0, x1], [y0, y0, y1, y1])
        steps = max(1, math.ceil(abs(lon1 - lon0) / _PARALLEL_STEP_DEG))
        lons = np.linspace(lon0, lon1, steps + 1)
        ring_lon = np.concatenate([lons, lons[::-1]])
        ring_lat = np.concatenate([np.full(steps + 1, lat0), np.full(steps + 1, lat1)])
        area, _ = self._geod.polygon_area_perimeter(ring_lon, ring_lat)
        return abs(float(area))
