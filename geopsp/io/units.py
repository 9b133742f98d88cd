"""How a CRS's coordinates turn into true metres: the one home of that decision.

* A projected CRS measures in its linear unit (metres, feet, US survey feet ...): lengths
  scale by :func:`metres_per_unit`, areas by its square.
* A geographic CRS (degrees) and a Mercator projection (whose "metres" are stretched by
  ``1/cos(latitude)``) do not: measures there go through the CRS's ellipsoid
  (:func:`is_ellipsoidal`). :mod:`geopsp.vectorize` projects polygons to an equal-area
  projection; :mod:`geopsp.inference.areas` sums geodesic cell areas.
* Without a CRS nothing is in metres.
"""

from __future__ import annotations

from typing import Any

__all__ = ["is_ellipsoidal", "metres_per_unit", "to_pyproj"]


def to_pyproj(crs: Any) -> Any:
    """Return ``crs`` (a rasterio CRS, a pyproj CRS, ``"EPSG:32633"`` ...) as a :class:`pyproj.CRS`.

    Examples
    --------
    >>> to_pyproj("EPSG:2263").name
    'NAD83 / New York Long Island (ftUS)'
    """
    from pyproj import CRS

    return CRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)


def is_ellipsoidal(crs: Any) -> bool:
    """Tell whether true metres in ``crs`` need its ellipsoid: a geographic CRS or a Mercator projection.

    Examples
    --------
    >>> is_ellipsoidal("EPSG:4326"), is_ellipsoidal("EPSG:3857"), is_ellipsoidal("EPSG:32633")
    (True, True, False)
    """
    src = to_pyproj(crs)
    if src.is_geographic:
        return True
    op = src.coordinate_operation
    name = (op.method_name if op is not None else "").lower()
    return "mercator" in name and "transverse" not in name


def metres_per_unit(crs: Any) -> float:
    """Return the metres in one linear unit of a projected CRS (its first axis's unit).

    Examples
    --------
    >>> metres_per_unit("EPSG:32633"), round(metres_per_unit("EPSG:2263") * 3937 / 1200, 12)  # US survey feet
    (1.0, 1.0)
    """
    src = to_pyproj(crs)
    return float(src.axis_info[0].unit_conversion_factor) if src.axis_info else 1.0
