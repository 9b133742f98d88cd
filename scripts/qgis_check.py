#!/usr/bin/python3
"""Open geopsp outputs in a real, headless QGIS and check that they come up styled.

Runs under the *system* Python, where Debian's ``python3-qgis`` lives (not the project's
virtual environment), so it imports nothing from geopsp:

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 scripts/qgis_check.py \
        --raster out/scene_classes.tif --vector out/scene_polygons.gpkg \
        --expect classes.json [--screenshot docs/img/qgis.png]

``--expect`` is a JSON list of ``{"id", "name", "color": [r, g, b]}`` (a geopsp class table).
For each layer it checks that QGIS finds it valid, that its default style is the right
renderer (paletted for the class raster, categorized by ``class_id`` for the polygons) with
the expected class names and colours, and that rendering it gives a picture that is not
blank. The GeoPackage is also opened from a copy without its ``.qml`` sidecar, so the style
must come from its ``layer_styles`` table. Prints a JSON report on stdout; exit status 0
when every check passed, 1 otherwise, 2 when QGIS cannot start.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any


def _start_qgis() -> Any:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.mkdtemp(prefix="qgis-runtime-"))
    from qgis.core import QgsApplication

    QgsApplication.setPrefixPath("/usr", True)
    app = QgsApplication([], False)
    app.initQgis()
    return app


def _rgb(color: Any) -> list[int]:
    return [color.red(), color.green(), color.blue()]


def check_raster(path: str, expect: list[dict]) -> dict:
    """Open the class raster; its default style must be a paletted renderer with the classes."""
    from qgis.core import QgsRasterLayer

    layer = QgsRasterLayer(path, "classes")
    out: dict = {"path": path, "valid": layer.isValid()}
    if not layer.isValid():
        out["ok"] = False
        out["error"] = layer.error().summary()
        return out
    renderer = layer.renderer()
    out["renderer"] = renderer.type()
    classes = []
    if renderer.type() == "paletted":
        classes = [{"id": int(c.value), "name": c.label, "color": _rgb(c.color)} for c in renderer.classes()]
    out["classes"] = classes
    out["crs"] = layer.crs().authid()
    out["size"] = [layer.width(), layer.height()]
    out["ok"] = out["renderer"] == "paletted" and _same_classes(classes, expect)
    out["_layer"] = layer
    return out


def check_vector(path: str, expect: list[dict], layer_name: str | None) -> dict:
    """Open the polygons; their default style must be categorized by class_id with the classes."""
    from qgis.core import QgsVectorLayer

    uri = path if layer_name is None else f"{path}|layername={layer_name}"
    layer = QgsVectorLayer(uri, "polygons", "ogr")
    out: dict = {"path": path, "valid": layer.isValid()}
    if not layer.isValid():
        out["ok"] = False
        return out
    out.update(_vector_style(layer))
    out["features"] = layer.featureCount()
    out["crs"] = layer.crs().authid()
    out["fields"] = [f.name() for f in layer.fields()]
    out["ok"] = (
        out["renderer"] == "categorizedSymbol"
        and out["attribute"] == "class_id"
        and _same_classes(out["classes"], expect)
        and out["features"] > 0
    )
    out["_layer"] = layer
    return out


def _vector_style(layer: Any) -> dict:
    renderer = layer.renderer()
    info: dict = {"renderer": renderer.type(), "attribute": None, "classes": []}
    if renderer.type() == "categorizedSymbol":
        info["attribute"] = renderer.classAttribute()
        info["classes"] = [
            {"id": int(c.value()), "name": c.label(), "color": _rgb(c.symbol().color())} for c in renderer.categories()
        ]
    return info


def check_gpkg_style_table(path: str, expect: list[dict], layer_name: str | None) -> dict:
    """Open a copy of the GeoPackage with no .qml next to it: the style must come from layer_styles."""
    from qgis.core import QgsVectorLayer

    with tempfile.TemporaryDirectory(prefix="qgis-check-") as tmp:
        copy = Path(tmp) / Path(path).name
        shutil.copy(path, copy)
        uri = str(copy) if layer_name is None else f"{copy}|layername={layer_name}"
        layer = QgsVectorLayer(uri, "from-db", "ogr")
        info = _vector_style(layer) if layer.isValid() else {"renderer": None, "classes": []}
        db_styles = None
        if layer.isValid():
            count, _ids, names, _descs, _err = layer.listStylesInDatabase()
            db_styles = list(names) if count >= 0 else None
        del layer
    info["styles_in_database"] = db_styles
    info["ok"] = info["renderer"] == "categorizedSymbol" and _same_classes(info["classes"], expect)
    return info


def _same_classes(found: list[dict], expect: list[dict]) -> bool:
    want = {int(c["id"]): (c["name"], list(c["color"])[:3]) for c in expect}
    got = {int(c["id"]): (c["name"], list(c["color"])[:3]) for c in found}
    return got == want


def render(layers: list, size: int = 600) -> Any:
    """Render layers (first on top) into a QImage at most ``size`` px wide or tall, on white."""
    from qgis.core import QgsMapRendererSequentialJob, QgsMapSettings, QgsRectangle
    from qgis.PyQt.QtCore import QSize
    from qgis.PyQt.QtGui import QColor

    settings = QgsMapSettings()
    settings.setLayers(layers)
    settings.setDestinationCrs(layers[-1].crs())
    extent = QgsRectangle(layers[0].extent())
    for lyr in layers[1:]:
        extent.combineExtentWith(lyr.extent())
    settings.setExtent(extent)
    # Keep the layers' aspect ratio, so the picture has no empty margins.
    ratio = extent.width() / extent.height() if extent.height() > 0 else 1.0
    w, h = (size, max(1, round(size / ratio))) if ratio >= 1 else (max(1, round(size * ratio)), size)
    settings.setOutputSize(QSize(w, h))
    settings.setBackgroundColor(QColor(255, 255, 255))
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    return job.renderedImage()


def image_stats(img: Any) -> dict:
    """Return the share of pixels that are not the white background, and number of distinct colours."""
    w, h = img.width(), img.height()
    colours = set()
    painted = 0
    step = max(1, min(w, h) // 200)
    total = 0
    for y in range(0, h, step):
        for x in range(0, w, step):
            rgb = img.pixel(x, y) & 0xFFFFFF
            total += 1
            colours.add(rgb)
            if rgb != 0xFFFFFF:
                painted += 1
    return {"painted_fraction": round(painted / max(total, 1), 4), "distinct_colours": len(colours)}


def screenshot(path: str, raster: Any, vector: Any, expect: list[dict]) -> None:
    """Draw two panels (class COG, GeoPackage over it) and a legend, as QGIS draws them."""
    from qgis.PyQt.QtCore import QRect, Qt
    from qgis.PyQt.QtGui import QColor, QFont, QImage, QPainter

    panel = 520
    left = render([raster], panel)
    right = render([vector, raster], panel) if raster is not None else render([vector], panel)
    legend_w = 190
    pad = 12
    title_h = 28
    legend_h = 28 + 24 * len(expect)
    body_h = max(left.height(), right.height(), legend_h)
    img = QImage(2 * panel + legend_w + 4 * pad, body_h + title_h + 2 * pad, QImage.Format_RGB32)
    img.fill(QColor(250, 250, 250))
    p = QPainter(img)
    p.setRenderHint(QPainter.Antialiasing)
    font = QFont("DejaVu Sans", 11)
    p.setFont(font)
    p.setPen(QColor(30, 30, 30))
    p.drawText(QRect(pad, pad, panel, title_h), Qt.AlignLeft | Qt.AlignVCenter, "Class COG (paletted renderer)")
    p.drawText(
        QRect(2 * pad + panel, pad, panel, title_h), Qt.AlignLeft | Qt.AlignVCenter, "GeoPackage (categorized style)"
    )
    p.drawImage(pad, pad + title_h, left)
    p.drawImage(2 * pad + panel, pad + title_h, right)
    x0 = 3 * pad + 2 * panel
    y = pad + title_h
    p.drawText(QRect(x0, y, legend_w, 22), Qt.AlignLeft | Qt.AlignVCenter, "class_name")
    y += 28
    for c in expect:
        r, g, b = c["color"][:3]
        p.fillRect(QRect(x0, y + 3, 22, 16), QColor(r, g, b))
        p.setPen(QColor(35, 35, 35))
        p.drawRect(QRect(x0, y + 3, 22, 16))
        p.drawText(QRect(x0 + 30, y, legend_w - 30, 22), Qt.AlignLeft | Qt.AlignVCenter, f"{c['id']}  {c['name']}")
        y += 24
    p.end()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not img.save(path, "PNG"):
        raise OSError(f"cannot write {path}")


def main(argv: list[str] | None = None) -> int:
    """Run the checks given on the command line; return the exit status."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--raster", help="class raster (COG) to open")
    ap.add_argument("--vector", help="polygon layer (GeoPackage) to open")
    ap.add_argument("--layer", help="layer name inside the GeoPackage (default: the first)")
    ap.add_argument("--expect", required=True, help="JSON file: list of {id, name, color}")
    ap.add_argument("--screenshot", help="write a PNG of both layers as QGIS renders them")
    ap.add_argument("--min-painted", type=float, default=0.2, help="least share of non-background pixels")
    args = ap.parse_args(argv)
    expect = json.loads(Path(args.expect).read_text(encoding="utf-8"))
    try:
        app = _start_qgis()
    except Exception as exc:  # no QGIS here
        print(json.dumps({"ok": False, "error": f"QGIS cannot start: {exc}"}))
        return 2
    from qgis.core import Qgis

    report: dict = {"qgis_version": Qgis.QGIS_VERSION}
    raster_layer = vector_layer = None
    if args.raster:
        r = check_raster(args.raster, expect)
        raster_layer = r.pop("_layer", None)
        if raster_layer is not None:
            r["render"] = image_stats(render([raster_layer]))
            r["ok"] = r["ok"] and r["render"]["painted_fraction"] >= args.min_painted
        report["raster"] = r
    if args.vector:
        v = check_vector(args.vector, expect, args.layer)
        vector_layer = v.pop("_layer", None)
        if vector_layer is not None:
            v["render"] = image_stats(render([vector_layer]))
            v["ok"] = v["ok"] and v["render"]["painted_fraction"] >= args.min_painted
        report["vector"] = v
        if args.vector.lower().endswith(".gpkg"):
            report["gpkg_style_table"] = check_gpkg_style_table(args.vector, expect, args.layer)
    if args.screenshot and vector_layer is not None:
        screenshot(args.screenshot, raster_layer, vector_layer, expect)
        report["screenshot"] = args.screenshot
    report["ok"] = all(part.get("ok", True) for part in report.values() if isinstance(part, dict))
    print(json.dumps(report, indent=2))
    del raster_layer, vector_layer
    app.exitQgis()
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
