"""geopsp's QGIS Processing provider: segment, vectorize and evaluate with geopsp from QGIS.

A QGIS 3 plugin. It imports neither geopsp nor torch (QGIS's Python has neither): each
algorithm runs ``python -m geopsp`` with the Python recorded by ``geopsp qgis install``.
"""

from __future__ import annotations

from typing import Any


def classFactory(iface: Any) -> Any:
    """Return the plugin object QGIS loads."""
    from .provider import GeopspPlugin

    return GeopspPlugin(iface)
