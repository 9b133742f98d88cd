"""Styles that make geopsp outputs open ready to read in QGIS (``.qml`` sidecars, GeoPackage styles)."""

from geopsp.style.gpkg import write_gpkg_style, write_gpkg_styles
from geopsp.style.qa import qa_qml
from geopsp.style.raster import qml_path_for, raster_qml, write_raster_qml
from geopsp.style.vector import confidence_qml, vector_qml, write_vector_qml

__all__ = [
    "confidence_qml",
    "qa_qml",
    "qml_path_for",
    "raster_qml",
    "vector_qml",
    "write_gpkg_style",
    "write_gpkg_styles",
    "write_raster_qml",
    "write_vector_qml",
]
