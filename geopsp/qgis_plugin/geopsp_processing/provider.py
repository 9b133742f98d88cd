"""The Processing provider ``geopsp`` and the plugin object QGIS loads."""

from __future__ import annotations

from typing import Any

from qgis.core import QgsApplication, QgsProcessingProvider

from .algorithms import VECTOR_EXTENSIONS, EvaluateAlgorithm, SegmentAlgorithm, VectorizeAlgorithm

__all__ = ["GeopspPlugin", "GeopspProvider"]


class GeopspProvider(QgsProcessingProvider):
    """The ``geopsp`` provider: ``geopsp:segment``, ``geopsp:vectorize``, ``geopsp:evaluate``."""

    def id(self) -> str:
        """Return the provider id, the prefix of the algorithm ids."""
        return "geopsp"

    def name(self) -> str:
        """Return the name shown in the Processing toolbox."""
        return "geopsp"

    def longName(self) -> str:
        """Return the name with the geopsp version the plugin runs."""
        from .runner import GeopspFailed, load_environment

        try:
            version = load_environment().get("geopsp_version", "?")
        except GeopspFailed:
            return "geopsp (not installed: run geopsp qgis install)"
        return f"geopsp {version} (PSPNet segmentation)"

    def loadAlgorithms(self) -> None:
        """Register the three algorithms."""
        for alg in (SegmentAlgorithm(), VectorizeAlgorithm(), EvaluateAlgorithm()):
            self.addAlgorithm(alg)

    def supportedOutputVectorLayerExtensions(self) -> list[str]:
        """Return the formats geopsp writes polygons in."""
        return list(VECTOR_EXTENSIONS)

    def defaultVectorFileExtension(self, hasGeometry: bool = True) -> str:
        """Return GeoPackage, geopsp's default (it keeps the style inside)."""
        return "gpkg"


class GeopspPlugin:
    """The plugin QGIS loads (``classFactory``): it adds the provider to Processing."""

    def __init__(self, iface: Any = None) -> None:
        self.iface = iface
        self.provider: GeopspProvider | None = None

    def initProcessing(self) -> None:
        """Register the provider (QGIS calls this, also in qgis_process)."""
        if self.provider is None:
            self.provider = GeopspProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:
        """Register the provider when the desktop starts the plugin."""
        self.initProcessing()

    def unload(self) -> None:
        """Remove the provider."""
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
