"""QGIS styles for land-use polygons: a categorized renderer with the class colours and names.

The style travels two ways, so a layer opens styled however it is loaded:

* inside the GeoPackage, in QGIS's standard ``layer_styles`` table as the layer's default
  style (:func:`write_gpkg_style`); QGIS applies it when the layer is added;
* as a ``<stem>.qml`` sidecar next to any vector file (:func:`write_vector_qml`).

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import xml.etree.ElementTree as ET
from pathlib import Path

from geopsp.classes import ClassTable
from geopsp.errors import OutputError

__all__ = ["LAYER_STYLES_COLUMNS", "vector_qml", "write_gpkg_style", "write_vector_qml"]

_QGIS_VERSION = "3.22.0-Białowieża"
_DOCTYPE = "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"

LAYER_STYLES_COLUMNS = (
    "f_table_catalog",
    "f_table_schema",
    "f_table_name",
    "f_geometry_column",
    "styleName",
    "styleQML",
    "styleSLD",
    "useAsDefault",
    "description",
    "owner",
    "ui",
    "update_time",
)
"""Columns of QGIS's ``layer_styles`` table (besides its ``id`` key)."""

# The DDL QGIS itself uses (qgsogrprovider.cpp) for GeoPackage style tables.
_CREATE_LAYER_STYLES = """
CREATE TABLE IF NOT EXISTS layer_styles (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  f_table_catalog TEXT(256),
  f_table_schema TEXT(256),
  f_table_name TEXT(256),
  f_geometry_column TEXT(256),
  styleName TEXT(30),
  styleQML TEXT,
  styleSLD TEXT,
  useAsDefault BOOLEAN,
  description TEXT,
  owner TEXT(30),
  ui TEXT(30),
  update_time DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
)
"""


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
    root = ET.Element(
        "qgis",
        {
            "version": _QGIS_VERSION,
            "styleCategories": "Symbology|Fields|Rendering|Legend",
            "hasScaleBasedVisibilityFlag": "0",
        },
    )
    renderer = ET.SubElement(
        root,
        "renderer-v2",
        {
            "type": "categorizedSymbol",
            "attr": field,
            "symbollevels": "0",
            "enableorderby": "0",
            "forceraster": "0",
            "referencescale": "-1",
        },
    )
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


def write_vector_qml(
    path: str | os.PathLike[str],
    classes: ClassTable,
    *,
    field: str = "class_id",
    label_field: str | None = "class_name",
) -> Path:
    """Write :func:`vector_qml` to ``path`` (UTF-8) and return it."""
    out = Path(path)
    out.write_text(vector_qml(classes, field=field, label_field=label_field), encoding="utf-8")
    return out


def write_gpkg_style(
    gpkg_path: str | os.PathLike[str],
    layer: str,
    classes: ClassTable,
    *,
    field: str = "class_id",
    style_name: str | None = None,
    geometry_column: str | None = None,
    description: str = "geopsp land-use classes",
) -> None:
    """Store the categorized class style as the layer's default style inside a GeoPackage.

    QGIS reads ``layer_styles`` (its standard table, registered in ``gpkg_contents`` as an
    attributes table) when a GeoPackage layer is added and applies the row marked
    ``useAsDefault``. An earlier default style of the same layer is replaced.

    Parameters
    ----------
    gpkg_path : str or os.PathLike
        An existing GeoPackage, not open in any other writer.
    layer : str
        The layer (table) the style belongs to.
    classes : ClassTable
        Classes to draw.
    field : str, default "class_id"
        Attribute holding the class id.
    style_name : str, optional
        Name shown in QGIS's style manager; default: the layer name.
    geometry_column : str, optional
        The layer's geometry column; default: read from ``gpkg_geometry_columns``.
    description : str
        Free text stored with the style.

    Raises
    ------
    OutputError
        The file is not a GeoPackage or has no such layer.
    """
    p = Path(gpkg_path)
    qml = vector_qml(classes, field=field, label_field="class_name")
    try:
        with contextlib.closing(sqlite3.connect(p)) as con, con:
            row = con.execute(
                "SELECT column_name FROM gpkg_geometry_columns WHERE lower(table_name) = lower(?)", (layer,)
            ).fetchone()
            if row is None:
                raise OutputError(f"{p}: GeoPackage has no geometry layer {layer!r}; cannot attach a style")
            geom_col = geometry_column or str(row[0])
            con.execute(_CREATE_LAYER_STYLES)
            con.execute(
                "INSERT OR IGNORE INTO gpkg_contents (table_name, data_type, identifier, description, last_change) "
                "VALUES ('layer_styles', 'attributes', 'layer_styles', '', strftime('%Y-%m-%dT%H:%M:%fZ','now'))"
            )
            con.execute("UPDATE layer_styles SET useAsDefault = 0 WHERE f_table_name = ?", (layer,))
            con.execute(
                "INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, f_geometry_column, "
                "styleName, styleQML, styleSLD, useAsDefault, description, owner, ui) "
                "VALUES ('', '', ?, ?, ?, ?, ?, 1, ?, 'geopsp', NULL)",
                (layer, geom_col, style_name or layer, qml, _sld(layer, classes, field), description),
            )
    except sqlite3.DatabaseError as exc:
        raise OutputError(f"{p}: cannot write the style table ({exc}); is it a GeoPackage?") from exc


def _sld(layer: str, classes: ClassTable, field: str) -> str:
    """Return a minimal SLD 1.1 equivalent of the categorized style (for other SLD readers)."""
    ns = {
        "xmlns": "http://www.opengis.net/sld",
        "xmlns:ogc": "http://www.opengis.net/ogc",
        "xmlns:se": "http://www.opengis.net/se",
        "version": "1.1.0",
    }
    root = ET.Element("StyledLayerDescriptor", ns)
    named = ET.SubElement(root, "NamedLayer")
    ET.SubElement(named, "se:Name").text = layer
    style = ET.SubElement(ET.SubElement(named, "UserStyle"), "se:FeatureTypeStyle")
    for c in classes:
        rule = ET.SubElement(style, "se:Rule")
        ET.SubElement(rule, "se:Name").text = c.name
        flt = ET.SubElement(ET.SubElement(rule, "ogc:Filter"), "ogc:PropertyIsEqualTo")
        ET.SubElement(flt, "ogc:PropertyName").text = field
        ET.SubElement(flt, "ogc:Literal").text = str(c.id)
        sym = ET.SubElement(rule, "se:PolygonSymbolizer")
        fill = ET.SubElement(sym, "se:Fill")
        ET.SubElement(fill, "se:SvgParameter", {"name": "fill"}).text = c.hex
        stroke = ET.SubElement(sym, "se:Stroke")
        ET.SubElement(stroke, "se:SvgParameter", {"name": "stroke"}).text = "#232323"
        ET.SubElement(stroke, "se:SvgParameter", {"name": "stroke-width"}).text = "0.26"
    return ET.tostring(root, encoding="unicode")
