"""Areas of interest: a lon/lat box or the polygons of any vector file, as a mask on the scene's grid.

``--aoi minx,miny,maxx,maxy`` is a box in longitude/latitude (WGS 84, the STAC ``bbox``
convention); ``--aoi FILE`` is every polygon of a vector file GDAL reads, in its own CRS.
:func:`load_aoi` reprojects the area into the CRS a scene is read in;
:func:`inside_mask` rasterizes it onto a window of that grid (pixel centres inside are valid).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from geopsp.errors import ConfigError, InputVectorError

if TYPE_CHECKING:
    import rasterio.crs

__all__ = ["inside_mask", "load_aoi"]


def _parse_box(text: str) -> tuple[float, float, float, float] | None:
    parts = text.split(",")
    if len(parts) != 4:
        return None
    try:
        x0, y0, x1, y1 = (float(p) for p in parts)
    except ValueError:
        return None
    if not (x0 < x1 and y0 < y1 and -180 <= x0 and x1 <= 180 and -90 <= y0 and y1 <= 90):
        raise ConfigError(
            f"--aoi {text}: a box is minx,miny,maxx,maxy in degrees of longitude/latitude with min < max "
            f"(e.g. 16.30,50.90,16.45,51.00)"
        )
    return x0, y0, x1, y1


def load_aoi(aoi: str, crs: rasterio.crs.CRS) -> Any:
    """Load the area of interest as one (multi)polygon in ``crs``.

    Parameters
    ----------
    aoi : str
        ``minx,miny,maxx,maxy`` in lon/lat, or the path of a vector file (GPKG, GeoJSON,
        Shapefile, FlatGeobuf ...) whose polygons, in any CRS, make the area.
    crs : rasterio.crs.CRS
        The CRS the scene is read in.

    Returns
    -------
    shapely.Geometry

    Raises
    ------
    ConfigError
        A malformed box.
    InputVectorError
        A file that is missing, unreadable, without a CRS or without polygons.
    """
    import geopandas as gpd
    import shapely

    box = _parse_box(aoi)
    if box is not None:
        frame = gpd.GeoDataFrame(geometry=[shapely.box(*box)], crs="EPSG:4326")
    else:
        path = Path(aoi)
        if not path.exists():
            raise InputVectorError(f"{aoi}: --aoi is neither a minx,miny,maxx,maxy box nor an existing vector file")
        try:
            frame = gpd.read_file(path)
        except Exception as exc:  # pyogrio's DataSourceError and friends
            raise InputVectorError(f"{path}: cannot be read as a vector file ({exc}); give a GPKG or GeoJSON") from exc
        if frame.crs is None:
            raise InputVectorError(f"{path}: has no CRS; set one (ogr2ogr -a_srs EPSG:4326 out.gpkg {path.name})")
        frame = frame[frame.geometry.notna()]
        frame = frame[frame.geometry.geom_type.isin(["Polygon", "MultiPolygon"])]
        if frame.empty:
            raise InputVectorError(f"{path}: holds no polygons; an area of interest is made of polygons")
    if box is not None:
        frame = frame.set_geometry(frame.geometry.segmentize(max_segment_length=0.01))  # edges bend when reprojected
    return shapely.union_all(frame.to_crs(crs).geometry.make_valid().to_numpy())


@functools.lru_cache(maxsize=8)
def _geometry(wkb: bytes) -> Any:
    import shapely

    return shapely.from_wkb(wkb)


def inside_mask(wkb: bytes, transform: Any, window: Any) -> NDArray[np.bool_]:
    """Mark True where a pixel centre of ``window`` (on the grid of ``transform``) lies inside the area.

    Parameters
    ----------
    wkb : bytes
        The area (WKB) in the grid's CRS.
    transform : affine.Affine
        The whole grid's transform.
    window : rasterio.windows.Window
        The pixels wanted.

    Returns
    -------
    ndarray of bool, shape ``(window.height, window.width)``
    """
    from affine import Affine
    from rasterio.features import geometry_mask

    shape = (int(window.height), int(window.width))
    at = transform @ Affine.translation(int(window.col_off), int(window.row_off))
    return np.asarray(geometry_mask([_geometry(wkb)], out_shape=shape, transform=at, invert=True), dtype=np.bool_)
