"""QGIS styles for land-use polygons: categorized by class, or graduated by confidence.

The class style (:func:`vector_qml`) draws each class in its colour with its name in the
legend. Polygons with QA attributes also get a confidence style (:func:`confidence_qml`): a
red-to-green graduated ramp on ``conf_mean``, so unsure polygons stand out.

The styles travel two ways, so a layer opens styled however it is loaded:

* inside the GeoPackage, in QGIS's standard ``layer_styles`` table
  (:func:`geopsp.style.gpkg.write_gpkg_styles`):
  one is the layer's default style, which QGIS applies when the layer is added; the other is
  stored by name (*Layer Properties ▸ Style ▸ Load Style… ▸ From database*);
* as a ``<stem>.qml`` sidecar next to any vector file (:func:`write_vector_qml`): the default one.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Literal

from geopsp.classes import ClassTable

__all__ = [
    "CONFIDENCE_RANGES",
    "CONFIDENCE_STYLE",
    "VECTOR_STYLES",
    "VectorStyle",
    "confidence_qml",
    "style_qml",
    "vector_qml",
    "write_vector_qml",
]

VectorStyle = Literal["classes", "confidence"]
"""What a polygon style colours by: the class, or the mean confidence (``conf_mean``)."""

VECTOR_STYLES: tuple[VectorStyle, ...] = ("classes", "confidence")

CONFIDENCE_STYLE = "confidence"
"""Name of the confidence style in a GeoPackage's ``layer_styles``."""

CONFIDENCE_RANGES: tuple[tuple[float, float, tuple[int, int, int]], ...] = (
    (0.0, 0.5, (215, 25, 28)),
    (0.5, 0.7, (253, 174, 97)),
    (0.7, 0.85, (255, 255, 191)),
    (0.85, 0.95, (166, 217, 106)),
    (0.95, 1.0, (26, 150, 65)),
)
"""Classes of the confidence style: ``(lower, upper, colour)`` of ``conf_mean``, red (unsure) to green."""

_QGIS_VERSION = "3.22.0-Białowieża"
_DOCTYPE = "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"


def _rgba(color: tuple[int, int, int], alpha: int = 255) -> str:
    return f"{color[0]},{color[1]},{color[2]},{alpha}"


def _option(parent: ET.Element, name: str, value: str) -> None:
    ET.SubElement(parent, "Option", {"name": name, "type": "QString", "value": value})


def _fill_symbol(parent: ET.Element, name: str, color: tuple[int, int, int], *, outline: str, opacity: float) -> None:
    symbol = ET.SubElement(
        parent,
        "symbol",
        {"type": "fill", "name": name, "alpha": f"{opacity:g}", "clip_to_extent": "1", "force_rhr": "0"},
    )
    layer = ET.SubElement(symbol, "layer", {"class": "SimpleFill", "enabled": "1", "locked": "0", "pass": "0"})
    opts = ET.SubElement(layer, "Option", {"type": "Map"})
    props = {
        "border_width_map_unit_scale": "3x:0,0,0,0,0,0",
        "color": _rgba(color),
        "joinstyle": "bevel",
        "offset": "0,0",
        "offset_map_unit_scale": "3x:0,0,0,0,0,0",
        "offset_unit": "MM",
        "outline_color": outline,
        "outline_style": "solid",
        "outline_width": "0.1",
        "outline_width_unit": "MM",
        "style": "solid",
    }
    for key, value in props.items():
        _option(opts, key, value)
    # QGIS < 3.26 also reads the older <prop k= v=> form; writing both is what QGIS 3.22 does.
    for key, value in props.items():
        ET.SubElement(layer, "prop", {"k": key, "v": value})


def _qgis_root() -> ET.Element:
    return ET.Element(
        "qgis",
        {
            "version": _QGIS_VERSION,
            "styleCategories": "Symbology|Fields|Rendering|Legend",
            "hasScaleBasedVisibilityFlag": "0",
        },
    )


def _renderer(root: ET.Element, kind: str, field: str, **extra: str) -> ET.Element:
    return ET.SubElement(
        root,
        "renderer-v2",
        {
            "type": kind,
            "attr": field,
            **extra,
            "symbollevels": "0",
            "enableorderby": "0",
            "forceraster": "0",
            "referencescale": "-1",
        },
    )


def _finish(root: ET.Element, renderer: ET.Element, *, opacity: float, label_field: str | None) -> str:
    ET.SubElement(renderer, "rotation")
    ET.SubElement(renderer, "sizescale")
    ET.SubElement(root, "blendMode").text = "0"
    ET.SubElement(root, "featureBlendMode").text = "0"
    ET.SubElement(root, "layerOpacity").text = f"{opacity:g}"
    if label_field:
        ET.SubElement(root, "previewExpression").text = f'"{label_field}"'
    ET.SubElement(root, "layerGeometryType").text = "2"
    ET.indent(root, space="  ")
    return _DOCTYPE + ET.tostring(root, encoding="unicode") + "\n"


def vector_qml(
    classes: ClassTable,
    *,
    field: str = "class_id",
    opacity: float = 1.0,
    outline_color: tuple[int, int, int] = (35, 35, 35),
    label_field: str | None = None,
) -> str:
    """Return a QGIS 3 layer style (QML) drawing polygons categorized by class.

    Parameters
    ----------
    classes : ClassTable
        One category per class: value = class id, fill = class colour, legend = class name.
    field : str, default "class_id"
        Attribute holding the class id.
    opacity : float, default 1.0
        Layer opacity in 0..1.
    outline_color : (int, int, int), default dark grey
        Colour of the 0.1 mm polygon outlines.
    label_field : str, optional
        Field used as the layer's display expression (identify/tooltips); default: none.

    Returns
    -------
    str
        The QML document (UTF-8 text starting with ``<!DOCTYPE qgis ...>``).

    Examples
    --------
    >>> from geopsp.classes import ClassTable
    >>> qml = vector_qml(ClassTable.from_names(["forest", "water"], start=1))
    >>> 'type="categorizedSymbol"' in qml and 'label="water"' in qml
    True
    """
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in 0..1, got {opacity}")
    root = _qgis_root()
    renderer = _renderer(root, "categorizedSymbol", field)
    cats = ET.SubElement(renderer, "categories")
    for i, c in enumerate(classes):
        ET.SubElement(
            cats, "category", {"symbol": str(i), "value": str(c.id), "label": c.name, "render": "true", "type": "long"}
        )
    symbols = ET.SubElement(renderer, "symbols")
    outline = _rgba(outline_color)
    for i, c in enumerate(classes):
        _fill_symbol(symbols, str(i), c.color, outline=outline, opacity=1.0)
    source = ET.SubElement(renderer, "source-symbol")
    _fill_symbol(source, "0", (190, 190, 190), outline=outline, opacity=1.0)
    return _finish(root, renderer, opacity=opacity, label_field=label_field)


def confidence_qml(
    *,
    field: str = "conf_mean",
    opacity: float = 1.0,
    outline_color: tuple[int, int, int] = (35, 35, 35),
    label_field: str | None = None,
) -> str:
    """Return a QGIS 3 layer style (QML) colouring polygons by their mean confidence.

    A graduated renderer with the :data:`CONFIDENCE_RANGES` of ``field`` (0..1), red where
    the model was unsure to green where it was sure; polygons without a value (NULL) are
    not drawn.

    Parameters
    ----------
    field : str, default "conf_mean"
        Attribute holding the confidence.
    opacity : float, default 1.0
        Layer opacity in 0..1.
    outline_color : (int, int, int), default dark grey
        Colour of the 0.1 mm polygon outlines.
    label_field : str, optional
        Field used as the layer's display expression; default: none.

    Returns
    -------
    str
        The QML document.

    Examples
    --------
    >>> qml = confidence_qml()
    >>> 'type="graduatedSymbol"' in qml and 'attr="conf_mean"' in qml and 'label="0.95 - 1.00"' in qml
    True

    .. versionadded:: 0.2
    """
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in 0..1, got {opacity}")
    root = _qgis_root()
    renderer = _renderer(root, "graduatedSymbol", field, graduatedMethod="GraduatedColor")
    ranges = ET.SubElement(renderer, "ranges")
    for i, (lo, hi, _) in enumerate(CONFIDENCE_RANGES):
        ET.SubElement(
            ranges,
            "range",
            {
                "symbol": str(i),
                "lower": f"{lo:.15f}",
                "upper": f"{hi:.15f}",
                "label": f"{lo:.2f} - {hi:.2f}",
                "render": "true",
            },
        )
    symbols = ET.SubElement(renderer, "symbols")
    outline = _rgba(outline_color)
    for i, (_, _, color) in enumerate(CONFIDENCE_RANGES):
        _fill_symbol(symbols, str(i), color, outline=outline, opacity=1.0)
    source = ET.SubElement(renderer, "source-symbol")
    _fill_symbol(source, "0", (190, 190, 190), outline=outline, opacity=1.0)
    ramp = ET.SubElement(renderer, "colorramp", {"type": "gradient", "name": "[source]"})
    first, last = CONFIDENCE_RANGES[0][2], CONFIDENCE_RANGES[-1][2]
    stops = ":".join(
        f"{(k + 0.5) / len(CONFIDENCE_RANGES):.2f};{_rgba(c)}" for k, (_, _, c) in enumerate(CONFIDENCE_RANGES[1:-1], 1)
    )
    ramp_props = {
        "color1": _rgba(first),
        "color2": _rgba(last),
        "discrete": "0",
        "rampType": "gradient",
        "stops": stops,
    }
    opts = ET.SubElement(ramp, "Option", {"type": "Map"})
    for key, value in ramp_props.items():
        _option(opts, key, value)
    for key, value in ramp_props.items():
        ET.SubElement(ramp, "prop", {"k": key, "v": value})
    return _finish(root, renderer, opacity=opacity, label_field=label_field)


def style_qml(
    style: VectorStyle | str, classes: ClassTable, *, field: str = "class_id", label_field: str | None = "class_name"
) -> str:
    """Return the QML of a named style: :func:`vector_qml` for "classes", :func:`confidence_qml` for "confidence".

    Raises
    ------
    ValueError
        An unknown style name (the message lists the valid ones).
    """
    if style == "classes":
        return vector_qml(classes, field=field, label_field=label_field)
    if style == CONFIDENCE_STYLE:
        return confidence_qml(label_field=label_field)
    raise ValueError(f"unknown vector style {style!r}; valid styles: {', '.join(map(repr, VECTOR_STYLES))}")


def write_vector_qml(
    path: str | os.PathLike[str],
    classes: ClassTable,
    *,
    field: str = "class_id",
    label_field: str | None = "class_name",
    style: VectorStyle | str = "classes",
) -> Path:
    """Write :func:`vector_qml` (or, with ``style="confidence"``, :func:`confidence_qml`) to ``path`` and return it."""
    out = Path(path)
    out.write_text(style_qml(style, classes, field=field, label_field=label_field), encoding="utf-8")
    return out
