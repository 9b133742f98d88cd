"""QGIS raster styles (paletted renderer QML)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from geopsp.classes import ClassInfo, ClassTable
from geopsp.style import qml_path_for, raster_qml, write_raster_qml

CLASSES = ClassTable(
    (
        ClassInfo(5, "water", (0, 0, 255)),
        ClassInfo(1, "forest & <shrubs>", (34, 139, 34)),
        ClassInfo(300, "é", (1, 2, 3)),
    )
)


def parse(qml: str) -> ET.Element:
    assert qml.startswith("<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n")
    return ET.fromstring(qml)


def test_paletted_renderer_lists_every_class_by_value():
    root = parse(raster_qml(CLASSES, nodata=0))
    assert root.tag == "qgis" and root.get("version", "").startswith("3.")
    renderer = root.find("pipe/rasterrenderer")
    assert renderer is not None
    assert (renderer.get("type"), renderer.get("band"), renderer.get("opacity")) == ("paletted", "1", "1")
    entries = [dict(e.attrib) for e in renderer.iter("paletteEntry")]
    assert entries == [
        {"value": "1", "color": "#228b22", "label": "forest & <shrubs>", "alpha": "255"},
        {"value": "5", "color": "#0000ff", "label": "water", "alpha": "255"},
        {"value": "300", "color": "#010203", "label": "é", "alpha": "255"},
    ]


def test_nodata_is_transparent():
    root = parse(raster_qml(CLASSES, nodata=65535))
    entry = root.find("pipe/rasterrenderer/rasterTransparency/singleValuePixelList/pixelListEntry")
    assert entry is not None
    assert entry.attrib == {"min": "65535", "max": "65535", "percentTransparent": "100"}
    assert root.find("pipe/rasterrenderer").get("nodataColor") == ""


def test_without_nodata_there_is_no_transparency_list():
    root = parse(raster_qml(CLASSES, nodata=None))
    transparency = root.find("pipe/rasterrenderer/rasterTransparency")
    assert transparency is not None and len(transparency) == 0


def test_nearest_neighbour_resampling_keeps_classes_crisp():
    root = parse(raster_qml(CLASSES, nodata=0))
    resampling = root.find("pipe/provider/resampling")
    assert resampling is not None
    assert (
        resampling.get("zoomedInResamplingMethod") == resampling.get("zoomedOutResamplingMethod") == "nearestNeighbour"
    )


def test_band_and_opacity_options():
    renderer = parse(raster_qml(CLASSES, nodata=0, band=2, opacity=0.5)).find("pipe/rasterrenderer")
    assert renderer is not None and renderer.get("band") == "2" and renderer.get("opacity") == "0.5"
    with pytest.raises(ValueError, match="opacity"):
        raster_qml(CLASSES, nodata=0, opacity=1.5)


def test_write_raster_qml(tmp_path):
    out = write_raster_qml(tmp_path / "classes.qml", CLASSES, nodata=255)
    assert out == tmp_path / "classes.qml"
    text = out.read_text(encoding="utf-8")
    assert text == raster_qml(CLASSES, nodata=255)
    assert [e.get("label") for e in parse(text).iter("paletteEntry")] == ["forest & <shrubs>", "water", "é"]


def test_qml_path_for_uses_the_raster_stem(tmp_path):
    assert qml_path_for(tmp_path / "scene_classes.tif") == tmp_path / "scene_classes.qml"
    assert qml_path_for("a.b.tif").name == "a.b.qml"
