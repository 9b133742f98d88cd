"""QGIS styles for class rasters: a paletted renderer listing every class.

QGIS loads ``<stem>.qml`` next to ``<stem>.tif`` as the layer's default style, so a class
raster opens with its class names and colours, and nodata transparent.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

from geopsp.classes import ClassTable

__all__ = ["QGIS_STYLE_VERSION", "qml_path_for", "raster_qml", "write_raster_qml"]

QGIS_STYLE_VERSION = "3.22.0-Białowieża"
"""QGIS version written into styles; 3.22 LTR and every later QGIS 3 read them."""

_DOCTYPE = "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"


def qml_path_for(raster: str | os.PathLike[str]) -> Path:
    """Return the style QGIS loads by default for ``raster``: same folder and stem, ``.qml``.

    Examples
    --------
    >>> qml_path_for("out/scene_classes.tif").as_posix()
    'out/scene_classes.qml'
    """
    return Path(raster).with_suffix(".qml")


def raster_qml(classes: ClassTable, *, nodata: int | None, band: int = 1, opacity: float = 1.0) -> str:
    """Return a QGIS 3 layer style (QML) drawing a class raster with a paletted renderer.

    Parameters
    ----------
    classes : ClassTable
        One palette entry per class: value = class id, colour, label = class name.
    nodata : int or None
        Value drawn fully transparent (besides the raster's own nodata, which QGIS already
        hides).
    band : int, default 1
        The band rendered.
    opacity : float, default 1.0
        Layer opacity in 0..1.

    Returns
    -------
    str
        The QML document (UTF-8 text with a ``<!DOCTYPE qgis ...>`` line).

    Examples
    --------
    >>> from geopsp.classes import ClassTable
    >>> qml = raster_qml(ClassTable.from_names(["forest", "water"], start=1), nodata=255)
    >>> 'value="1" color="#1f77b4" label="forest" alpha="255"' in qml
    True
    """
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in 0..1, got {opacity}")
    root, pipe = layer_root()
    renderer = ET.SubElement(
        pipe,
        "rasterrenderer",
        {"type": "paletted", "band": str(band), "opacity": f"{opacity:g}", "alphaBand": "-1", "nodataColor": ""},
    )
    transparency = ET.SubElement(renderer, "rasterTransparency")
    if nodata is not None:
        pixels = ET.SubElement(transparency, "singleValuePixelList")
        ET.SubElement(pixels, "pixelListEntry", {"min": str(nodata), "max": str(nodata), "percentTransparent": "100"})
    min_max_origin(renderer)
    palette = ET.SubElement(renderer, "colorPalette")
    for c in sorted(classes, key=lambda c: c.id):
        ET.SubElement(palette, "paletteEntry", {"value": str(c.id), "color": c.hex, "label": c.name, "alpha": "255"})
    return finish_qml(root, pipe)


def layer_root() -> tuple[ET.Element, ET.Element]:
    """Return the ``<qgis>`` element of a raster style and its ``<pipe>``, up to the renderer."""
    root = ET.Element(
        "qgis",
        {
            "version": QGIS_STYLE_VERSION,
            "styleCategories": "AllStyleCategories",
            "hasScaleBasedVisibilityFlag": "0",
            "minScale": "1e+08",
            "maxScale": "0",
        },
    )
    flags = ET.SubElement(root, "flags")
    for name, value in (("Identifiable", "1"), ("Removable", "1"), ("Searchable", "1"), ("Private", "0")):
        ET.SubElement(flags, name).text = value
    props = ET.SubElement(ET.SubElement(root, "customproperties"), "Option", {"type": "Map"})
    ET.SubElement(props, "Option", {"value": "Value", "type": "QString", "name": "identify/format"})
    pipe = ET.SubElement(root, "pipe")
    provider = ET.SubElement(pipe, "provider")
    ET.SubElement(
        provider,
        "resampling",
        {
            "enabled": "false",
            "maxOversampling": "2",
            "zoomedInResamplingMethod": "nearestNeighbour",
            "zoomedOutResamplingMethod": "nearestNeighbour",
        },
    )
    return root, pipe


def min_max_origin(renderer: ET.Element) -> None:
    """Add the renderer's ``<minMaxOrigin>``: fixed limits, no stretch from statistics."""
    minmax = ET.SubElement(renderer, "minMaxOrigin")
    for name, value in (
        ("limits", "None"),
        ("extent", "WholeRaster"),
        ("statAccuracy", "Estimated"),
        ("cumulativeCutLower", "0.02"),
        ("cumulativeCutUpper", "0.98"),
        ("stdDevFactor", "2"),
    ):
        ET.SubElement(minmax, name).text = value


def finish_qml(root: ET.Element, pipe: ET.Element) -> str:
    """Add the pipe's stages after the renderer and return the QML text."""
    ET.SubElement(pipe, "brightnesscontrast", {"brightness": "0", "contrast": "0", "gamma": "1"})
    ET.SubElement(
        pipe,
        "huesaturation",
        {
            "colorizeOn": "0",
            "colorizeStrength": "100",
            "invertColors": "0",
            "colorizeRed": "255",
            "colorizeGreen": "128",
            "colorizeBlue": "128",
            "saturation": "0",
            "grayscaleMode": "0",
        },
    )
    ET.SubElement(pipe, "rasterresampler", {"maxOversampling": "2"})
    ET.SubElement(pipe, "resamplingStage").text = "resamplingFilter"
    ET.SubElement(root, "blendMode").text = "0"
    ET.indent(root, space="  ")
    return _DOCTYPE + ET.tostring(root, encoding="unicode") + "\n"


def write_raster_qml(
    path: str | os.PathLike[str], classes: ClassTable, *, nodata: int | None, band: int = 1, opacity: float = 1.0
) -> Path:
    """Write :func:`raster_qml` to ``path`` (UTF-8) and return the path.

    The file is written as given; callers that need atomicity write to a temporary name and
    rename (as :class:`geopsp.io.raster.ClassRasterWriter` does).
    """
    out = Path(path)
    out.write_text(raster_qml(classes, nodata=nodata, band=band, opacity=opacity), encoding="utf-8")
    return out
