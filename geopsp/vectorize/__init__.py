"""Class raster -> clean land-use polygons: seamless across strips, topology-safe, QGIS-styled.

:func:`vectorize` is the entry point and :func:`inspect_class_raster` describes its input
(size, georeference, classes); the private submodules hold the stages (strip polygonizing,
stitching across seams, small-region removal, measuring). The entry point is imported on
first use, so worker processes that only polygonize strips stay light.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

from geopsp import _lazy

if TYPE_CHECKING:
    from geopsp.vectorize._source import RasterSource, inspect_class_raster
    from geopsp.vectorize.core import CONFIDENCE_FIELDS, FIELDS, vectorize

__all__ = ["CONFIDENCE_FIELDS", "FIELDS", "RasterSource", "inspect_class_raster", "vectorize"]

_LAZY = {
    "CONFIDENCE_FIELDS": "geopsp.vectorize.core",
    "FIELDS": "geopsp.vectorize.core",
    "RasterSource": "geopsp.vectorize._source",
    "inspect_class_raster": "geopsp.vectorize._source",
    "vectorize": "geopsp.vectorize.core",
}

__getattr__, __dir__ = _lazy.lazy_exports(__name__, _LAZY)


class _CallableModule(types.ModuleType):
    """``geopsp.vectorize`` is both this package and the top-level function.

    Importing the package binds it as the attribute ``geopsp.vectorize``, shadowing the
    lazily exported function; making the module callable keeps ``geopsp.vectorize(...)``
    working either way.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return __getattr__("vectorize")(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
