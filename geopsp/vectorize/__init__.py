"""Class raster -> clean land-use polygons: seamless across strips, topology-safe, QGIS-styled.

:func:`vectorize` is the entry point; the submodules hold its stages (strip polygonizing,
stitching across seams, small-region removal, measuring).
"""

import sys
import types
from typing import Any

from geopsp.vectorize.core import FIELDS, vectorize

__all__ = ["FIELDS", "vectorize"]


class _CallableModule(types.ModuleType):
    """``geopsp.vectorize`` is both this package and the top-level function.

    Importing the package binds it as the attribute ``geopsp.vectorize``, shadowing the
    lazily exported function; making the module callable keeps ``geopsp.vectorize(...)``
    working either way.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return vectorize(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
