"""A real QGIS (Debian's python3-qgis, system Python) opens the outputs styled and renders them.

Runs ``scripts/qgis_check.py`` with ``/usr/bin/python3`` in a subprocess; skipped with the
reason when that Python cannot import ``qgis.core`` (``scripts/system-deps.sh`` installs it).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from geopsp.classes import ClassInfo, ClassTable
from geopsp.config.schema import VectorizeConfig
from geopsp.vectorize import vectorize

pytestmark = pytest.mark.qgis

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "qgis_check.py"
CLASSES = ClassTable(
    (
        ClassInfo(0, "cropland", (229, 201, 92)),
        ClassInfo(1, "forest", (34, 110, 52)),
        ClassInfo(2, "water", (43, 116, 204)),
        ClassInfo(3, "urban", (214, 58, 48)),
    )
)


def _landcover(h: int = 240, w: int = 300) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    a = np.zeros((h, w), dtype=np.uint8)
    a[((yy - 80) / 50.0) ** 2 + ((xx - 90) / 70.0) ** 2 < 1] = 1
    a[((yy - 170) / 40.0) ** 2 + ((xx - 220) / 60.0) ** 2 < 1] = 2
    a[(yy > 100) & (yy < 130) & (xx > 150)] = 3
    a[:15, -25:] = 255
    return a


def test_qgis_opens_outputs_styled(qgis_python, qgis_env, tmp_path):
    from geopsp.io.raster import write_class_raster

    raster = write_class_raster(
        tmp_path / "scene_classes.tif",
        _landcover(),
        crs="EPSG:32633",
        transform=Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 5_600_000.0),
        classes=CLASSES,
        nodata=255,
    )
    cfg = VectorizeConfig.model_validate({"block_rows": 64, "simplify": 15.0, "workers": 1})
    gpkg = vectorize(raster, tmp_path / "scene_polygons.gpkg", config=cfg)
    expect = tmp_path / "classes.json"
    expect.write_text(json.dumps(CLASSES.to_list()), encoding="utf-8")
    shot = tmp_path / "qgis.png"
    proc = subprocess.run(
        [str(qgis_python), str(SCRIPT), "--raster", str(raster), "--vector", str(gpkg), "--expect", str(expect),
         "--screenshot", str(shot)],
        capture_output=True, text=True, env=qgis_env, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["ok"], json.dumps(report, indent=1)[:4000]
    r, v, db = report["raster"], report["vector"], report["gpkg_style_table"]
    assert r["valid"] and r["renderer"] == "paletted" and r["crs"] == "EPSG:32633"
    assert {c["name"] for c in r["classes"]} == set(CLASSES.names)
    assert v["valid"] and v["renderer"] == "categorizedSymbol" and v["attribute"] == "class_id"
    assert v["features"] >= 4
    assert {"class_id", "class_name", "area_m2", "perimeter_m", "scene"} <= set(v["fields"])
    for c in v["classes"]:
        assert tuple(c["color"]) == CLASSES.by_id(c["id"]).color
    # Without the .qml sidecar the GeoPackage still opens styled: from its layer_styles table.
    assert db["renderer"] == "categorizedSymbol" and db["styles_in_database"] == ["scene_polygons"]
    # The maps QGIS drew are not blank.
    assert r["render"]["painted_fraction"] > 0.9 and r["render"]["distinct_colours"] >= 4
    assert v["render"]["painted_fraction"] > 0.9 and v["render"]["distinct_colours"] >= 4
    assert shot.stat().st_size > 10_000


def test_qgis_check_fails_on_wrong_expectations(qgis_python, qgis_env, tmp_path):
    from geopsp.io.raster import write_class_raster

    raster = write_class_raster(
        tmp_path / "c.tif",
        _landcover(60, 80),
        crs="EPSG:32633",
        transform=Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 5_600_000.0),
        classes=CLASSES,
        nodata=255,
    )
    wrong = [{**c, "name": c["name"].upper()} for c in CLASSES.to_list()]
    expect = tmp_path / "wrong.json"
    expect.write_text(json.dumps(wrong), encoding="utf-8")
    proc = subprocess.run(
        [str(qgis_python), str(SCRIPT), "--raster", str(raster), "--expect", str(expect)],
        capture_output=True, text=True, env=qgis_env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["ok"] is False


_QA_PROBE = """
import json, sys
from qgis.core import QgsApplication, QgsPointXY, QgsRasterLayer
app = QgsApplication([], False)
app.initQgis()
out = {}
for path in sys.argv[1:]:
    layer = QgsRasterLayer(path, "qa")
    r = layer.renderer()
    shader = r.shader().rasterShaderFunction() if r.type() == "singlebandpseudocolor" else None
    ext = layer.extent()
    value, ok = layer.dataProvider().sample(QgsPointXY(ext.xMinimum() + 5, ext.yMaximum() - 5), 1)
    out[path] = {
        "valid": layer.isValid(),
        "renderer": r.type(),
        "stops": [i.value for i in shader.colorRampItemList()] if shader else [],
        "corner": value if ok else None,
    }
print(json.dumps(out))
"""


def test_qgis_draws_each_qa_layer_with_its_ramp_over_decoded_values(qgis_python, qgis_env, tmp_path):
    """QGIS applies the band scale (1/255), loads each QA layer's .qml, and reads 0..1 values."""
    from geopsp.encoding import QA_LAYERS
    from geopsp.io.raster import ClassRasterWriter

    classes = _landcover(64, 64)
    classes[classes == 255] = 0
    paths = {name: tmp_path / f"s_{name}.tif" for name in QA_LAYERS}
    with ClassRasterWriter(
        tmp_path / "s_classes.tif", width=64, height=64, crs="EPSG:32633",
        transform=Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 5_600_000.0), classes=CLASSES, nodata=255, qa_paths=paths,
    ) as w:  # fmt: skip
        w.write_rows(0, classes, layers={name: np.full((64, 64), 0.6) for name in QA_LAYERS})
    proc = subprocess.run(
        [str(qgis_python), "-c", _QA_PROBE, *map(str, paths.values())],
        capture_output=True, text=True, env=qgis_env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    for path in paths.values():
        got = report[str(path)]
        assert got["valid"] and got["renderer"] == "singlebandpseudocolor", got
        assert got["stops"][-1] == pytest.approx(1.0) and len(got["stops"]) == 3
        assert got["corner"] == pytest.approx(153 / 255, abs=1e-6)  # round(0.6 * 255) / 255
