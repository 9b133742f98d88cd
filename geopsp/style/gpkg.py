"""Polygon styles inside a GeoPackage: QGIS's ``layer_styles`` table, with SLD equivalents.

QGIS reads ``layer_styles`` when a GeoPackage layer is added and applies the row marked
``useAsDefault``; the other rows of the layer are listed by name under *Layer Properties ▸
Style ▸ Load Style… ▸ From database*. The QML itself comes from :mod:`geopsp.style.vector`.

.. versionadded:: 0.2
   Split from :mod:`geopsp.style.vector`; :func:`write_gpkg_styles`.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import xml.etree.ElementTree as ET
from pathlib import Path

from geopsp.classes import ClassTable
from geopsp.errors import OutputError
from geopsp.style.vector import (
    CONFIDENCE_RANGES,
    CONFIDENCE_STYLE,
    VECTOR_STYLES,
    VectorStyle,
    confidence_qml,
    vector_qml,
)

__all__ = ["LAYER_STYLES_COLUMNS", "write_gpkg_style", "write_gpkg_styles"]

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
    _store_style(
        Path(gpkg_path),
        layer,
        geometry_column,
        style_name or layer,
        vector_qml(classes, field=field, label_field="class_name"),
        _sld(layer, classes, field),
        description,
        default=True,
    )


def write_gpkg_styles(
    gpkg_path: str | os.PathLike[str],
    layer: str,
    classes: ClassTable,
    *,
    default: VectorStyle | str = "classes",
    confidence: bool = False,
) -> None:
    """Store the class style and, for layers with ``conf_mean``, the confidence style in a GeoPackage.

    Parameters
    ----------
    gpkg_path : str or os.PathLike
        An existing GeoPackage, not open in any other writer.
    layer : str
        The layer the styles belong to.
    classes : ClassTable
        Classes of the class style.
    default : {"classes", "confidence"}, default "classes"
        Which style QGIS applies when the layer is added; the other is stored by name (the
        class style under the layer's name, the confidence one as :data:`CONFIDENCE_STYLE`).
    confidence : bool, default False
        Whether the layer has ``conf_mean`` (else only the class style is stored).

    Raises
    ------
    OutputError
        The file is not a GeoPackage or has no such layer.
    ValueError
        ``default`` is "confidence" but ``confidence`` is False, or an unknown style.
    """
    if default not in VECTOR_STYLES:
        raise ValueError(f"unknown vector style {default!r}; valid styles: {', '.join(map(repr, VECTOR_STYLES))}")
    if default == CONFIDENCE_STYLE and not confidence:
        raise ValueError("the confidence style needs a layer with conf_mean")
    p = Path(gpkg_path)
    styles = [
        (
            layer,
            vector_qml(classes, label_field="class_name"),
            _sld(layer, classes, "class_id"),
            "geopsp land-use classes",
        )
    ]
    if confidence:
        styles.append(
            (
                CONFIDENCE_STYLE,
                confidence_qml(label_field="class_name"),
                _confidence_sld(layer),
                "geopsp mean confidence",
            )
        )
    for name, qml, sld, description in styles:
        is_default = (name == CONFIDENCE_STYLE) == (default == CONFIDENCE_STYLE)
        _store_style(p, layer, None, name, qml, sld, description, default=is_default)


def _store_style(
    p: Path,
    layer: str,
    geometry_column: str | None,
    name: str,
    qml: str,
    sld: str,
    description: str,
    *,
    default: bool,
) -> None:
    """Insert one row into ``layer_styles``; a default one replaces the layer's earlier default."""
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
            if default:
                con.execute("UPDATE layer_styles SET useAsDefault = 0 WHERE f_table_name = ?", (layer,))
            con.execute(
                "INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, f_geometry_column, "
                "styleName, styleQML, styleSLD, useAsDefault, description, owner, ui) "
                "VALUES ('', '', ?, ?, ?, ?, ?, ?, ?, 'geopsp', NULL)",
                (layer, geom_col, name, qml, sld, int(default), description),
            )
    except sqlite3.DatabaseError as exc:
        raise OutputError(f"{p}: cannot write the style table ({exc}); is it a GeoPackage?") from exc


def _sld_root(layer: str) -> tuple[ET.Element, ET.Element]:
    """Return an SLD 1.1 document and its ``FeatureTypeStyle`` element for ``layer``."""
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
    return root, style


def _sld_fill(rule: ET.Element, hex_color: str) -> None:
    sym = ET.SubElement(rule, "se:PolygonSymbolizer")
    fill = ET.SubElement(sym, "se:Fill")
    ET.SubElement(fill, "se:SvgParameter", {"name": "fill"}).text = hex_color
    stroke = ET.SubElement(sym, "se:Stroke")
    ET.SubElement(stroke, "se:SvgParameter", {"name": "stroke"}).text = "#232323"
    ET.SubElement(stroke, "se:SvgParameter", {"name": "stroke-width"}).text = "0.26"


def _sld(layer: str, classes: ClassTable, field: str) -> str:
    """Return a minimal SLD 1.1 equivalent of the categorized style (for other SLD readers)."""
    root, style = _sld_root(layer)
    for c in classes:
        rule = ET.SubElement(style, "se:Rule")
        ET.SubElement(rule, "se:Name").text = c.name
        flt = ET.SubElement(ET.SubElement(rule, "ogc:Filter"), "ogc:PropertyIsEqualTo")
        ET.SubElement(flt, "ogc:PropertyName").text = field
        ET.SubElement(flt, "ogc:Literal").text = str(c.id)
        _sld_fill(rule, c.hex)
    return ET.tostring(root, encoding="unicode")


def _confidence_sld(layer: str) -> str:
    """Return a minimal SLD 1.1 equivalent of the confidence style."""
    root, style = _sld_root(layer)
    for i, (lo, hi, color) in enumerate(CONFIDENCE_RANGES):
        rule = ET.SubElement(style, "se:Rule")
        ET.SubElement(rule, "se:Name").text = f"{lo:.2f} - {hi:.2f}"
        flt = ET.SubElement(ET.SubElement(rule, "ogc:Filter"), "ogc:And")
        lower = ET.SubElement(flt, "ogc:PropertyIsGreaterThanOrEqualTo" if i == 0 else "ogc:PropertyIsGreaterThan")
        ET.SubElement(lower, "ogc:PropertyName").text = "conf_mean"
        ET.SubElement(lower, "ogc:Literal").text = f"{lo:g}"
        upper = ET.SubElement(flt, "ogc:PropertyIsLessThanOrEqualTo")
        ET.SubElement(upper, "ogc:PropertyName").text = "conf_mean"
        ET.SubElement(upper, "ogc:Literal").text = f"{hi:g}"
        _sld_fill(rule, "#{:02x}{:02x}{:02x}".format(*color))
    return ET.tostring(root, encoding="unicode")
