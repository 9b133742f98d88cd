"""Class raster outputs: streamed COGs, colours, category names/RAT, QGIS style, atomicity."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from geopsp.classes import ClassInfo, ClassTable
from geopsp.errors import OutputError, OutputExistsError
from geopsp.io.atomic import TEMP_MARKER
from geopsp.io.raster import (
    PROBABILITY_NODATA,
    ClassRasterWriter,
    encode_probability,
    pam_xml,
    read_class_table,
    write_class_raster,
)

TRANSFORM = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 5_700_000.0)
CLASSES = ClassTable(
    (ClassInfo(10, "forest", (34, 139, 34)), ClassInfo(20, "water", (0, 0, 255)), ClassInfo(40, "urban", (200, 0, 0)))
)
NODATA = 255
SYSTEM_PYTHON = "/usr/bin/python3"


def class_map(height: int = 200, width: int = 150, seed: int = 0) -> np.ndarray:
    """Random class ids with a nodata band at the top."""
    arr = np.random.default_rng(seed).choice(np.array(CLASSES.ids, dtype=np.uint8), size=(height, width))
    arr[:7] = NODATA
    return arr


def writer(path: Path, arr: np.ndarray, **kw) -> ClassRasterWriter:
    opts = {"crs": "EPSG:32633", "transform": TRANSFORM, "classes": CLASSES, "nodata": NODATA, "blocksize": 32}
    opts.update(kw)
    return ClassRasterWriter(path, width=arr.shape[1], height=arr.shape[0], **opts)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(TEMP_MARKER))


def system_gdal_python() -> str:
    """The system Python with GDAL's bindings (python3-gdal), or skip."""
    if not Path(SYSTEM_PYTHON).exists():
        pytest.skip("no system python3")
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import osgeo.gdal"], capture_output=True, check=False)
    if probe.returncode:
        pytest.skip("system python3 has no GDAL bindings (python3-gdal)")
    return SYSTEM_PYTHON


# -- content ------------------------------------------------------------------------------------


def test_rows_in_any_order_reproduce_the_array(tmp_path):
    arr = class_map()
    out = tmp_path / "classes.tif"
    order = [96, 0, 160, 32, 192, 64, 128]
    with writer(out, arr) as w:
        for row in order:
            w.write_rows(row, arr[row : row + 32])
    assert w.close() == [out, tmp_path / "classes.qml", tmp_path / "classes.tif.aux.xml"]
    with rasterio.open(out) as src:
        assert np.array_equal(src.read(1), arr)
        assert src.crs == rasterio.crs.CRS.from_epsg(32633)
        assert src.transform == TRANSFORM
        assert src.nodata == NODATA
        assert src.dtypes == ("uint8",)
        assert src.descriptions == ("class",)
    assert leftovers(tmp_path) == []


def test_unaligned_strips_and_single_rows(tmp_path):
    arr = class_map(101, 77)
    out = tmp_path / "c.tif"
    with writer(out, arr) as w:
        w.write_rows(50, arr[50:101])
        for row in range(0, 50, 7):
            w.write_rows(row, arr[row : min(row + 7, 50)])
    with rasterio.open(out) as src:
        assert np.array_equal(src.read(1), arr)


def test_cog_layout_with_mode_overviews(tmp_path):
    arr = class_map(256, 192)
    arr[100:164, 64:128] = 20  # a solid block survives in the overviews
    out = write_class_raster(
        tmp_path / "c.tif", arr, crs="EPSG:32633", transform=TRANSFORM, classes=CLASSES, nodata=NODATA, blocksize=32
    )
    with rasterio.open(out) as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.block_shapes[0] == (32, 32)
        factors = src.overviews(1)
        assert factors[:2] == [2, 4]
        for f in factors:
            ov = src.read(1, out_shape=(-(-256 // f), -(-192 // f)))
            # MODE never invents values: only class ids and nodata (an average of 10 and 40 would not be)
            assert set(np.unique(ov)) <= {*CLASSES.ids, NODATA}
        ov2 = src.read(1, out_shape=(128, 96))
        assert (ov2[52:80, 34:62] == 20).all()
    head = out.read_bytes()[:400]
    assert b"GDAL_STRUCTURAL_METADATA_SIZE" in head and b"LAYOUT=IFDS_BEFORE_DATA" in head


def test_cog_passes_gdal_validator(tmp_path):
    python = system_gdal_python()
    out = write_class_raster(
        tmp_path / "c.tif",
        class_map(256, 192),
        crs="EPSG:32633",
        transform=TRANSFORM,
        classes=CLASSES,
        nodata=NODATA,
        blocksize=32,
    )
    run = subprocess.run(
        [python, "-m", "osgeo_utils.samples.validate_cloud_optimized_geotiff", "--full-check=yes", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    if "No module named" in run.stderr:
        pytest.skip("GDAL's COG validator is not installed")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "is a valid cloud optimized GeoTIFF" in run.stdout


def test_colour_table(tmp_path):
    out = write_class_raster(
        tmp_path / "c.tif", class_map(), crs="EPSG:32633", transform=TRANSFORM, classes=CLASSES, nodata=NODATA
    )
    with rasterio.open(out) as src:
        cmap = src.colormap(1)
        assert src.colorinterp[0] == rasterio.enums.ColorInterp.palette
    for c in CLASSES:
        assert cmap[c.id] == (*c.color, 255)
    assert cmap[NODATA][3] == 0


def test_category_names_and_rat_sidecar(tmp_path):
    out = write_class_raster(
        tmp_path / "c.tif", class_map(), crs="EPSG:32633", transform=TRANSFORM, classes=CLASSES, nodata=NODATA
    )
    band = ET.parse(f"{out}.aux.xml").getroot().find("PAMRasterBand")
    assert band is not None and band.get("band") == "1"
    names = [c.text or "" for c in band.iter("Category")]
    assert len(names) == 41
    assert (names[10], names[20], names[40], names[0]) == ("forest", "water", "urban", "")
    rat = band.find("GDALRasterAttributeTable")
    assert rat is not None and rat.get("tableType") == "thematic"
    assert [f.findtext("Name") for f in rat.iter("FieldDefn")] == ["Value", "Class", "Red", "Green", "Blue", "Alpha"]
    rows = [[f.text for f in row.iter("F")] for row in rat.iter("Row")]
    assert rows == [
        ["10", "forest", "34", "139", "34", "255"],
        ["20", "water", "0", "0", "255", "255"],
        ["40", "urban", "200", "0", "0", "255"],
    ]


def test_category_names_and_rat_read_by_gdal(tmp_path):
    python = system_gdal_python()
    out = write_class_raster(
        tmp_path / "c.tif", class_map(), crs="EPSG:32633", transform=TRANSFORM, classes=CLASSES, nodata=NODATA
    )
    script = (
        "import json, sys\n"
        "from osgeo import gdal\n"
        "gdal.UseExceptions()\n"
        "ds = gdal.Open(sys.argv[1])\n"
        "b = ds.GetRasterBand(1)\n"
        "rat = b.GetDefaultRAT()\n"
        "rows = [[rat.GetValueAsString(r, c) for c in range(rat.GetColumnCount())] for r in range(rat.GetRowCount())]\n"
        "print(json.dumps({'names': b.GetCategoryNames(), 'rows': rows, 'row_of_20': rat.GetRowOfValue(20),\n"
        "    'usage': [rat.GetUsageOfCol(c) for c in range(rat.GetColumnCount())]}))\n"
    )
    run = subprocess.run([python, "-c", script, str(out)], capture_output=True, text=True, check=True)
    got = json.loads(run.stdout)
    assert got["names"][10] == "forest" and got["names"][40] == "urban"
    assert got["rows"][1] == ["20", "water", "0", "0", "255", "255"]
    assert got["row_of_20"] == 1
    assert got["usage"] == [5, 2, 6, 7, 8, 9]  # MinMax, Name, Red, Green, Blue, Alpha


def test_gdalinfo_lists_categories(tmp_path):
    gdalinfo = shutil.which("gdalinfo")
    if gdalinfo is None or subprocess.run([gdalinfo, "--version"], capture_output=True, check=False).returncode:
        pytest.skip("gdalinfo is not available")
    out = write_class_raster(
        tmp_path / "c.tif", class_map(), crs="EPSG:32633", transform=TRANSFORM, classes=CLASSES, nodata=NODATA
    )
    info = subprocess.run([gdalinfo, str(out)], capture_output=True, text=True, check=True).stdout
    assert "Categories:" in info and "10: forest" in info and "40: urban" in info
    assert "Color Table" in info and "NoData Value=255" in info


def test_class_table_tag_round_trip(tmp_path):
    out = write_class_raster(
        tmp_path / "c.tif",
        class_map(),
        crs="EPSG:32633",
        transform=TRANSFORM,
        classes=CLASSES,
        nodata=NODATA,
        tags={"GEOPSP_MODEL": "demo"},
    )
    assert read_class_table(out) == CLASSES
    with rasterio.open(out) as src:
        assert src.tags()["GEOPSP_MODEL"] == "demo"


def test_qml_sidecar(tmp_path):
    out = write_class_raster(
        tmp_path / "c.tif", class_map(), crs="EPSG:32633", transform=TRANSFORM, classes=CLASSES, nodata=NODATA
    )
    root = ET.parse(tmp_path / "c.qml").getroot()
    renderer = root.find("pipe/rasterrenderer")
    assert renderer is not None and renderer.get("type") == "paletted" and renderer.get("band") == "1"
    entries = [(e.get("value"), e.get("color"), e.get("label")) for e in renderer.iter("paletteEntry")]
    assert entries == [("10", "#228b22", "forest"), ("20", "#0000ff", "water"), ("40", "#c80000", "urban")]
    nodata = renderer.find("rasterTransparency/singleValuePixelList/pixelListEntry")
    assert nodata is not None and nodata.get("min") == "255" and nodata.get("percentTransparent") == "100"
    assert out.exists()


@pytest.mark.qgis
def test_qgis_opens_the_class_raster_styled(tmp_path):
    if not Path(SYSTEM_PYTHON).exists():
        pytest.skip("no system python3")
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import qgis.core"], capture_output=True, check=False)
    if probe.returncode:
        pytest.skip("QGIS (python3-qgis) is not installed")
    out = write_class_raster(
        tmp_path / "c.tif", class_map(), crs="EPSG:32633", transform=TRANSFORM, classes=CLASSES, nodata=NODATA
    )
    script = (
        "import json, sys\n"
        "from qgis.core import QgsApplication, QgsRasterLayer\n"
        "app = QgsApplication([], False); app.initQgis()\n"
        "layer = QgsRasterLayer(sys.argv[1], 'classes')\n"
        "r = layer.renderer()\n"
        "print(json.dumps({'valid': layer.isValid(), 'type': r.type(), 'crs': layer.crs().authid(),\n"
        "    'classes': [[c.value, c.color.name(), c.label] for c in r.classes()],\n"
        "    'transparent': [[p.min, p.percentTransparent]\n"
        "                    for p in r.rasterTransparency().transparentSingleValuePixelList()]}))\n"
        "sys.stdout.flush()\n"
        "import os; os._exit(0)  # QgsApplication.exitQgis() can crash headless QGIS 3.22\n"
    )
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "XDG_RUNTIME_DIR": str(tmp_path)}
    run = subprocess.run(
        [SYSTEM_PYTHON, "-c", script, str(out)], capture_output=True, text=True, env=env, timeout=180, check=True
    )
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["valid"] and got["type"] == "paletted" and got["crs"] == "EPSG:32633"
    assert got["classes"] == [[10.0, "#228b22", "forest"], [20.0, "#0000ff", "water"], [40.0, "#c80000", "urban"]]
    assert got["transparent"] == [[255.0, 100.0]]


def test_uint16_classes(tmp_path):
    classes = ClassTable((ClassInfo(1, "a", (1, 2, 3)), ClassInfo(300, "b", (4, 5, 6))))
    arr = np.where(np.arange(64 * 48).reshape(64, 48) % 3, 300, 1).astype(np.uint16)
    arr[0] = 65535
    out = write_class_raster(
        tmp_path / "c.tif", arr, crs="EPSG:32633", transform=TRANSFORM, classes=classes, nodata=65535
    )
    with rasterio.open(out) as src:
        assert src.dtypes == ("uint16",)
        assert np.array_equal(src.read(1), arr)
        assert src.colormap(1)[300] == (4, 5, 6, 255)


def test_non_georeferenced_output_has_no_crs(tmp_path):
    arr = class_map(64, 64)
    out = write_class_raster(tmp_path / "c.tif", arr, crs=None, transform=None, classes=CLASSES, nodata=NODATA)
    # pytest turns warnings into errors: rasterio's own NotGeoreferencedWarning must not leak
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(out) as src:
            assert src.crs is None and src.transform.is_identity
            assert np.array_equal(src.read(1), arr)


# -- probability raster -------------------------------------------------------------------------


def test_probability_raster(tmp_path):
    arr = class_map(96, 64)
    prob = np.random.default_rng(3).uniform(0.34, 1.0, arr.shape)
    out, pout = tmp_path / "c.tif", tmp_path / "p.tif"
    with writer(out, arr, probability_path=pout) as w:
        w.write_rows(0, arr[:50], prob[:50])  # floats, encoded by the writer
        w.write_rows(50, arr[50:], encode_probability(prob[50:]))  # already encoded
    assert w.close() == [out, pout, tmp_path / "c.qml", tmp_path / "c.tif.aux.xml", tmp_path / "p.qml"]
    assert 'type="singlebandpseudocolor"' in (tmp_path / "p.qml").read_text()  # the QA layer's colour ramp
    with rasterio.open(pout) as src:
        stored = src.read(1)
        assert src.nodata == PROBABILITY_NODATA and src.dtypes == ("uint8",)
        assert src.scales == (pytest.approx(1 / 255),)
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.colorinterp[0] != rasterio.enums.ColorInterp.palette
    assert (stored[arr == NODATA] == PROBABILITY_NODATA).all()
    ok = arr != NODATA
    assert np.abs(stored[ok] / 255 - prob[ok]).max() <= 0.5 / 255 + 1e-6


def test_probability_rows_need_a_probability_path(tmp_path):
    arr = class_map(32, 32)
    with pytest.raises(ValueError, match="no path for the probability raster"), writer(tmp_path / "c.tif", arr) as w:
        w.write_rows(0, arr, np.ones(arr.shape))
    assert list(tmp_path.iterdir()) == []


# -- validation ---------------------------------------------------------------------------------


def test_write_rows_validation(tmp_path):
    arr = class_map(64, 48)
    with writer(tmp_path / "c.tif", arr) as w:
        with pytest.raises(ValueError, match=r"shape \(h, 48\)"):
            w.write_rows(0, arr[:, :40])
        with pytest.raises(ValueError, match="outside the raster"):
            w.write_rows(60, arr[:8])
        with pytest.raises(ValueError, match="do not fit the output's uint8"):
            w.write_rows(0, arr.astype(np.int32) + 1000)
        with pytest.raises(ValueError, match="must be integers"):
            w.write_rows(0, arr.astype(np.float32))
        w.write_rows(0, arr.astype(np.int64))  # wider ints are fine when the values fit
    with rasterio.open(tmp_path / "c.tif") as src:
        assert np.array_equal(src.read(1), arr)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"nodata": 20}, "nodata 20 is also a class id"),
        ({"nodata": 300}, "does not fit uint8"),
        ({"dtype": "int16"}, "dtype must be"),
        ({"compress": "jpeg"}, "compress must be one of"),
        ({"blocksize": 100}, "multiple of 16"),
        ({"classes": ClassTable((ClassInfo(256, "x", (0, 0, 0)),))}, "class id 256 does not fit uint8"),
    ],
)
def test_constructor_validation(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        writer(tmp_path / "c.tif", class_map(32, 32), **kw)
    assert list(tmp_path.iterdir()) == []


def test_missing_rows_refuse_to_finish(tmp_path):
    arr = class_map(64, 48)
    with (
        pytest.raises(OutputError, match=r"rows 32-63 \(32 rows\) were never written"),
        writer(tmp_path / "c.tif", arr) as w,
    ):
        w.write_rows(0, arr[:32])
    assert list(tmp_path.iterdir()) == []


# -- atomicity, clobbering ----------------------------------------------------------------------


def test_exception_leaves_nothing(tmp_path):
    arr = class_map()
    with (
        pytest.raises(RuntimeError, match="model exploded"),
        writer(tmp_path / "c.tif", arr, probability_path=tmp_path / "p.tif") as w,
    ):
        w.write_rows(0, arr[:64], np.ones((64, arr.shape[1])))
        raise RuntimeError("model exploded")
    assert list(tmp_path.iterdir()) == []


def test_keyboard_interrupt_leaves_nothing(tmp_path):
    arr = class_map()
    with pytest.raises(KeyboardInterrupt), writer(tmp_path / "c.tif", arr) as w:
        w.write_rows(0, arr[:64])
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_abort_is_idempotent_and_final(tmp_path):
    arr = class_map(32, 32)
    w = writer(tmp_path / "c.tif", arr)
    w.write_rows(0, arr)
    w.abort()
    w.abort()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OutputError, match="aborted"):
        w.close()
    with pytest.raises(OutputError, match="already aborted"):
        w.write_rows(0, arr)


def test_close_is_idempotent(tmp_path):
    arr = class_map(32, 32)
    w = writer(tmp_path / "c.tif", arr)
    w.write_rows(0, arr)
    first = w.close()
    assert w.close() == first
    w.abort()  # after a successful close: a no-op
    assert all(p.exists() for p in first)


def test_no_clobber_without_overwrite(tmp_path):
    arr = class_map(32, 32)
    out = tmp_path / "c.tif"
    out.write_bytes(b"precious")
    with pytest.raises(OutputExistsError, match="already exists; pass --overwrite"):
        writer(out, arr)
    assert out.read_bytes() == b"precious"


def test_no_clobber_of_an_existing_style(tmp_path):
    (tmp_path / "c.qml").write_text("<qgis/>")
    with pytest.raises(OutputExistsError, match=r"c\.qml"):
        writer(tmp_path / "c.tif", class_map(32, 32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.qml"]


def test_a_style_made_by_another_run_meanwhile_stops_the_commit_and_nothing_stays(tmp_path):
    arr = class_map(32, 32)
    w = writer(tmp_path / "c.tif", arr)  # the checks pass here
    w.write_rows(0, arr)
    (tmp_path / "c.qml").write_text("<qgis>theirs</qgis>")  # another run finishes first
    with pytest.raises(OutputExistsError, match=r"c\.qml.*--overwrite"):
        w.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.qml"]
    assert (tmp_path / "c.qml").read_text() == "<qgis>theirs</qgis>"


def test_close_into_a_set_commits_with_it_or_not_at_all(tmp_path):
    from geopsp.io.atomic import StagedOutputs

    arr = class_map(32, 32)
    for commit in (False, True):
        with StagedOutputs() as outputs:
            w = writer(tmp_path / "c.tif", arr)
            w.write_rows(0, arr)
            finals = w.close(outputs)
            assert [p.name for p in finals] == ["c.tif", "c.qml", "c.tif.aux.xml"]
            assert not any(p.exists() for p in finals)  # staged, not committed
            with rasterio.open(outputs.staged(tmp_path / "c.tif")) as src:  # readable before the commit
                assert np.array_equal(src.read(1), arr)
            if commit:
                outputs.temp(tmp_path / "c_summary.json", marker=True).write_text("{}")
                outputs.commit()
        names = sorted(p.name for p in tmp_path.iterdir())
        assert names == (["c.qml", "c.tif", "c.tif.aux.xml", "c_summary.json"] if commit else [])


def test_overwrite_replaces_outputs_and_stale_sidecars(tmp_path):
    first, second = class_map(32, 32, seed=1), class_map(32, 32, seed=2)
    out = write_class_raster(
        tmp_path / "c.tif", first, crs="EPSG:32633", transform=TRANSFORM, classes=CLASSES, nodata=NODATA
    )
    Path(f"{out}.ovr").write_bytes(b"stale external overviews")
    write_class_raster(
        out, second, crs="EPSG:32633", transform=TRANSFORM, classes=CLASSES, nodata=NODATA, overwrite=True
    )
    with rasterio.open(out) as src:
        assert np.array_equal(src.read(1), second)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.qml", "c.tif", "c.tif.aux.xml"]


def test_output_equal_to_input_is_refused(tmp_path):
    scene = tmp_path / "scene.tif"
    scene.write_bytes(b"not touched")
    with pytest.raises(OutputError, match="output path equals input"):
        writer(scene, class_map(32, 32), inputs=[scene], overwrite=True)
    with pytest.raises(OutputError, match="output path equals input"):
        writer(tmp_path / "c.tif", class_map(32, 32), probability_path=scene, inputs=[scene], overwrite=True)
    assert scene.read_bytes() == b"not touched"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif"]


def test_probability_path_must_differ(tmp_path):
    with pytest.raises(OutputError, match="a path of its own"):
        writer(tmp_path / "c.tif", class_map(32, 32), probability_path=tmp_path / "c.tif")


def test_output_folder_removed_mid_way(tmp_path):
    folder = tmp_path / "out"
    arr = class_map(64, 64)
    w = writer(folder / "c.tif", arr)
    w.write_rows(0, arr)
    shutil.rmtree(folder)
    with pytest.raises(OutputError):
        w.close()
    assert not folder.exists()


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs (needs root and mount permission; skipped otherwise)."""
    if sys.platform != "linux" or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root on Linux")
    folder = tmp_path / "tiny"
    folder.mkdir()
    run = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True)
    if run.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {run.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_disk_full_is_an_output_error_and_leaves_nothing(tiny_disk):
    rng = np.random.default_rng(0)
    ids = np.array(CLASSES.ids, dtype=np.uint8)
    with pytest.raises(OutputError, match="disk full"):
        with writer(tiny_disk / "c.tif", np.zeros((2048, 2048), np.uint8), blocksize=512) as w:
            for row in range(0, 2048, 512):
                w.write_rows(row, rng.choice(ids, size=(512, 2048)))
    assert list(tiny_disk.iterdir()) == []


# -- sidecar documents ---------------------------------------------------------------------------


def test_pam_xml_escapes_names():
    classes = ClassTable((ClassInfo(1, "roads & <rail>", (0, 0, 0)),))
    root = ET.fromstring(pam_xml(classes, nodata=0))
    assert [c.text for c in root.iter("Category")] == [None, "roads & <rail>"]
    assert root.find("PAMRasterBand/GDALRasterAttributeTable/Row/F[2]").text == "roads & <rail>"
