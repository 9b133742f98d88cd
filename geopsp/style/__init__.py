"""Styles that make geopsp outputs open ready to read in QGIS (``.qml`` sidecars)."""

from geopsp.style.raster import qml_path_for, raster_qml, write_raster_qml

__all__ = ["qml_path_for", "raster_qml", "write_raster_qml"]
