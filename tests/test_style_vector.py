"""geopsp.style.vector: categorized QML and the GeoPackage layer_styles table."""

from __future__ import annotations

import sqlite3
import warnings
import xml.etree.ElementTree as ET

import geopandas as gpd
import pyogrio
import pytest
import shapely

from geopsp.classes import ClassInfo, ClassTable
from geopsp.errors import OutputError
from geopsp.style import vector_qml, write_gpkg_style, write_vector_qml
from geopsp.style.gpkg import LAYER_STYLES_COLUMNS

CLASSES = ClassTable((ClassInfo(1, "forest", (34, 110, 52)), ClassInfo(7, "water & <lakes>", (43, 116, 204))))


def parse(qml: str) -> ET.Element:
    assert qml.startswith("<!DOCTYPE qgis")
    return ET.fromstring(qml.split("\n", 1)[1])


def test_vector_qml_lists_every_class_with_its_colour():
    root = parse(vector_qml(CLASSES))
    renderer = root.find("renderer-v2")
    assert renderer is not None
    assert renderer.get("type") == "categorizedSymbol"
    assert renderer.get("attr") == "class_id"
    cats = renderer.findall("categories/category")
    assert [(c.get("value"), c.get("label")) for c in cats] == [("1", "forest"), ("7", "water & <lakes>")]
    symbols = {s.get("name"): s for s in renderer.findall("symbols/symbol")}
    for cat, cls in zip(cats, CLASSES, strict=True):
        sym = symbols[cat.get("symbol")]
        color = sym.find("layer/Option/Option[@name='color']")
        assert color is not None
        assert color.get("value") == "{},{},{},255".format(*cls.color)
        assert sym.find("layer/prop[@k='color']").get("v") == color.get("value")


def test_vector_qml_options():
    root = parse(vector_qml(CLASSES, field="klass", opacity=0.5))
    assert root.find("renderer-v2").get("attr") == "klass"
    assert root.find("layerOpacity").text == "0.5"
    with pytest.raises(ValueError, match="opacity"):
        vector_qml(CLASSES, opacity=2)


def _gpkg(path, layer="parcels"):
    gdf = gpd.GeoDataFrame({"class_id": [1, 7]}, geometry=[shapely.box(0, 0, 1, 1), shapely.box(1, 0, 2, 1)], crs=3857)
    pyogrio.write_dataframe(gdf, path, layer=layer)
    return path


def test_write_gpkg_style_creates_qgis_table(tmp_path):
    path = _gpkg(tmp_path / "p.gpkg")
    write_gpkg_style(path, "parcels", CLASSES)
    write_gpkg_style(path, "parcels", CLASSES, style_name="second")  # replaces the default
    with sqlite3.connect(path) as con:
        cols = [r[1] for r in con.execute("PRAGMA table_info(layer_styles)")]
        rows = con.execute(
            "SELECT f_table_catalog, f_table_schema, f_table_name, f_geometry_column, styleName, useAsDefault, owner "
            "FROM layer_styles ORDER BY id"
        ).fetchall()
        qml, sld = con.execute("SELECT styleQML, styleSLD FROM layer_styles WHERE useAsDefault = 1").fetchone()
    assert cols == ["id", *LAYER_STYLES_COLUMNS]
    assert rows == [
        ("", "", "parcels", "geom", "parcels", 0, "geopsp"),
        ("", "", "parcels", "geom", "second", 1, "geopsp"),
    ]
    assert 'type="categorizedSymbol"' in qml
    assert "<ogc:Literal>7</ogc:Literal>" in sld
    # The GeoPackage stays valid for OGR: both the layer and the style table are listed.
    layers = [name for name, _ in pyogrio.list_layers(path)]
    assert layers == ["parcels", "layer_styles"]
    assert len(pyogrio.read_dataframe(path, layer="parcels")) == 2
    # the polygons are the default layer; naming it reads them without a warning
    import geopandas as gpd

    with pytest.warns(UserWarning, match="'parcels' \\(default\\), 'layer_styles'"):
        default = gpd.read_file(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        named = gpd.read_file(path, layer="parcels")
    assert default.equals(named)


def test_write_gpkg_style_errors(tmp_path):
    path = _gpkg(tmp_path / "p.gpkg")
    with pytest.raises(OutputError, match="no geometry layer"):
        write_gpkg_style(path, "nope", CLASSES)
    bad = tmp_path / "not.gpkg"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(OutputError, match="GeoPackage"):
        write_gpkg_style(bad, "x", CLASSES)


def test_write_vector_qml(tmp_path):
    out = write_vector_qml(tmp_path / "p.qml", CLASSES)
    root = parse(out.read_text(encoding="utf-8"))
    assert root.find("previewExpression").text == '"class_name"'
