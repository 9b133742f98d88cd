"""Class raster -> clean land-use polygons: seamless across strips, topology-safe, QGIS-styled.

:func:`vectorize` is the entry point; the submodules hold its stages (strip polygonizing,
stitching across seams, small-region removal, measuring).
"""

from geopsp.vectorize.core import FIELDS, vectorize

__all__ = ["FIELDS", "vectorize"]
