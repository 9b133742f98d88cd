"""Bad scenes and labels: one-line errors naming the file and the fix, exit code 1, no outputs.

Inputs that are odd but usable (PNG/JPEG without georeferencing, no CRS, all nodata, NaN/inf,
1x1 and 1x100000 pixels, labels in another CRS, invalid polygons) must work.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.errors
from affine import Affine

from geopsp.errors import InputRasterError, NotGeoreferencedWarning
from geopsp.io.scene import inspect_scene
from geopsp.testing import write_geotiff

from .conftest import Result, final_outputs, messages, temp_outputs


def refused(res: Result, name: str, out: Path, *, fix: str | None = None) -> str:
    """Check a clean refusal: exit 1, one 'Error:' line naming ``name``, nothing under ``out``."""
    assert res.code == 1, res.err
    lines = [ln for ln in res.err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, res.err
    assert lines[0].startswith("Error: ") and name in lines[0], lines[0]
    if fix is not None:
        assert fix in lines[0], lines[0]
    assert "Traceback" not in res.err
    assert final_outputs(out) == [] and temp_outputs(out) == []
    return lines[0]


def predict(cli: Callable[..., Result], scene: Path | str, bundle: Path, out: Path, *extra: str) -> Result:
    return cli("predict", scene, "-m", bundle, "-o", out, "--no-progress", *extra)


# ------------------------------------------------------------------------------ refused scenes


def test_missing_scene(cli, bundle, tmp_path, seen):
    res = predict(cli, tmp_path / "nope.tif", bundle, tmp_path / "out")
    seen("scene path does not exist", refused(res, "nope.tif", tmp_path / "out", fix="check the path"))
    with pytest.raises(InputRasterError, match="no such file"):
        inspect_scene(tmp_path / "nope.tif")


def test_directory_instead_of_scene(cli, bundle, tmp_path, seen):
    d = tmp_path / "scene.tif"
    d.mkdir()
    res = predict(cli, d, bundle, tmp_path / "out")
    seen("a directory where a scene is expected", refused(res, "scene.tif", tmp_path / "out", fix="is a directory"))
    with pytest.raises(InputRasterError, match="is a directory"):
        inspect_scene(d)


def test_directory_instead_of_bundle(cli, scene, tmp_path, seen):
    d = tmp_path / "model.safetensors"
    d.mkdir()
    res = predict(cli, scene, d, tmp_path / "out")
    seen("a directory where the model bundle is expected", refused(res, "model.safetensors", tmp_path / "out"))


def test_zero_byte_scene(cli, bundle, tmp_path, seen):
    p = tmp_path / "empty.tif"
    p.write_bytes(b"")
    res = predict(cli, p, bundle, tmp_path / "out")
    seen("zero-byte scene", refused(res, "empty.tif", tmp_path / "out", fix="re-download"))


@pytest.mark.parametrize("keep", [300, 0.5])
def test_truncated_geotiff(cli, bundle, scene, tmp_path, seen, keep):
    data = scene.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep
    p = tmp_path / "cut.tif"
    p.write_bytes(data[:n])
    res = predict(cli, p, bundle, tmp_path / "out")
    seen(f"truncated GeoTIFF ({n} of {len(data)} bytes)", refused(res, "cut.tif", tmp_path / "out", fix="re-download"))


@pytest.mark.data
def test_blocks_fail_to_decode(cli, bundle, shared_data, tmp_path, seen):
    bad = shared_data / "landsat_rasterio" / "corrupt.tif"
    res = predict(cli, bad, bundle, tmp_path / "out")
    seen("GeoTIFF whose blocks fail to decode (landsat corrupt.tif)", refused(res, "corrupt.tif", tmp_path / "out"))


def test_text_file_named_tif(cli, bundle, tmp_path, seen):
    p = tmp_path / "notes.tif"
    p.write_text("this is not an image\n")
    res = predict(cli, p, bundle, tmp_path / "out")
    seen("a text file named .tif", refused(res, "notes.tif", tmp_path / "out", fix="text file"))


def test_binary_junk_named_tif(cli, bundle, tmp_path, seen):
    p = tmp_path / "junk.tif"
    p.write_bytes(bytes(range(256)) * 8)
    res = predict(cli, p, bundle, tmp_path / "out")
    seen("binary junk named .tif", refused(res, "junk.tif", tmp_path / "out", fix="gdal_translate"))


def test_rotated_geotransform(cli, bundle, rgb, tmp_path, seen):
    p = write_geotiff(tmp_path / "rotated.tif", rgb, transform=Affine(10, 2, 500000, 2, -10, 5600000))
    res = predict(cli, p, bundle, tmp_path / "out")
    seen("rotated/sheared geotransform", refused(res, "rotated.tif", tmp_path / "out", fix="gdalwarp"))


def test_band_count_mismatch(cli, bundle, rgb, tmp_path, seen):
    p = write_geotiff(tmp_path / "one_band.tif", rgb[:1])
    res = predict(cli, p, bundle, tmp_path / "out")
    seen("fewer bands than the bundle reads", refused(res, "one_band.tif", tmp_path / "out", fix="band"))


def test_dtype_mismatch(cli, bundle, rgb, tmp_path, seen):
    p = write_geotiff(tmp_path / "u16.tif", rgb.astype("uint16") * 40)
    res = predict(cli, p, bundle, tmp_path / "out")
    line = refused(res, "u16.tif", tmp_path / "out", fix="--input-scale SRC_MIN SRC_MAX 0 255")
    seen("scene values do not fit the bundle's dtype (uint16 up to 10160, uint8 bundle)", line)


def test_other_dtype_whose_values_fit_works(cli, bundle, rgb, tmp_path, seen):
    p = write_geotiff(tmp_path / "u16.tif", rgb.astype("uint16"))
    res = predict(cli, p, bundle, tmp_path / "out")
    assert res.code == 0, res.err
    lines = messages(res.err)  # the note, and no other line than the class areas table
    assert len(lines) == 1 and "read as uint8, no copy written" in lines[0], res.err
    assert sorted(x.name for x in tmp_path.iterdir()) == ["out", "u16.tif"]
    seen("uint16 scene holding 0..255, uint8 bundle (works, read as uint8)", lines[0])


def test_output_equals_input(cli, bundle, rgb, tmp_path, seen):
    p = write_geotiff(tmp_path / "in.tif", rgb)
    before = p.read_bytes()
    res = predict(cli, p, bundle, p)
    assert res.code == 1 and "equals input" in res.last_line
    seen("output path equal to the input path", res.last_line)
    assert p.read_bytes() == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["in.tif"]


# ------------------------------------------------------------------------------ odd but usable


def _classes(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            return src.read(1)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_plain_image_without_georeferencing_works_with_warning(cli, bundle, rgb, tmp_path, seen, fmt):
    from PIL import Image

    p = tmp_path / f"photo.{fmt.lower()[:3]}"
    Image.fromarray(np.transpose(rgb, (1, 2, 0))).save(p, format=fmt)
    res = predict(cli, p, bundle, tmp_path / "out")
    assert res.code == 0, res.err
    assert "photo" in res.err and "no CRS" in res.err
    assert "Traceback" not in res.err and len(messages(res.err)) == 1, res.err
    seen(f"{fmt} without georeferencing (works)", messages(res.err)[0])
    assert _classes(tmp_path / "out" / "photo_classes.tif").shape == (40, 50)
    with pytest.warns(NotGeoreferencedWarning, match="no CRS"):
        inspect_scene(p)


def test_raster_without_crs_works_with_warning(cli, bundle, rgb, tmp_path, seen):
    p = write_geotiff(tmp_path / "nocrs.tif", rgb, crs=None, transform=Affine(10, 0, 0, 0, -10, 0))
    res = predict(cli, p, bundle, tmp_path / "out")
    assert res.code == 0, res.err
    seen("GeoTIFF with a geotransform but no CRS (works)", "\n".join(messages(res.err)))
    with rasterio.open(tmp_path / "out" / "nocrs_classes.tif") as src:
        assert src.crs is None and src.transform == Affine(10, 0, 0, 0, -10, 0)


def test_all_nodata_scene_gives_valid_empty_outputs(cli, bundle, rgb, tmp_path, seen):
    p = write_geotiff(tmp_path / "blank.tif", np.zeros_like(rgb), nodata=0)
    res = predict(cli, p, bundle, tmp_path / "out")
    assert res.code == 0, res.err
    seen("all-nodata scene (valid empty outputs)", f"exit 0; {len(res.out.split())} files listed on stdout")
    classes = _classes(tmp_path / "out" / "blank_classes.tif")
    assert (classes == 255).all()
    assert (tmp_path / "out" / "blank_summary.json").stat().st_size > 0


def test_all_nodata_class_raster_vectorizes_to_empty_layer(cli, bundle, rgb, tmp_path, seen):
    p = write_geotiff(tmp_path / "blank.tif", np.zeros_like(rgb), nodata=0)
    assert predict(cli, p, bundle, tmp_path).code == 0
    res = cli("vectorize", tmp_path / "blank_classes.tif", "-o", tmp_path / "blank.gpkg", "--no-progress")
    assert res.code == 0, res.err
    import geopandas as gpd

    assert len(gpd.read_file(tmp_path / "blank.gpkg", layer="blank")) == 0
    seen("vectorize an all-nodata class raster (valid empty layer)", "exit 0; " + (res.err.strip() or "no message"))


def test_nan_and_inf_in_float_scene(cli, bundle_f32, tmp_path, seen):
    arr = np.random.default_rng(1).random((3, 40, 50)).astype("float32")
    arr[:, :10] = np.nan
    arr[:, 10:12] = np.inf
    arr[0, 12:14] = -np.inf
    p = write_geotiff(tmp_path / "float.tif", arr)
    res = predict(cli, p, bundle_f32, tmp_path / "out")
    assert res.code == 0, res.err
    classes = _classes(tmp_path / "out" / "float_classes.tif")
    assert (classes[:14] == 255).all(), "NaN/inf pixels must be nodata"
    assert (classes[14:] != 255).all()
    seen("NaN and +/-inf in a float scene (nodata there)", "exit 0; " + ("\n".join(messages(res.err)) or "no message"))


@pytest.mark.parametrize(
    ("height", "width"),
    [(1, 1), (1, 1000), (1000, 1), pytest.param(1, 100_000, marks=pytest.mark.slow)],
)
def test_degenerate_shapes(cli, bundle, tmp_path, seen, height, width):
    arr = (np.arange(3 * height * width) % 251).astype("uint8").reshape(3, height, width)
    p = write_geotiff(tmp_path / "thin.tif", arr, tiled=False)
    res = predict(cli, p, bundle, tmp_path / "out")
    assert res.code == 0, res.err
    assert _classes(tmp_path / "out" / "thin_classes.tif").shape == (height, width)
    seen(f"{height}x{width} pixel scene (works)", "exit 0")


# ------------------------------------------------------------------------------ labels


def _polygons(tmp_path: Path, crs: str, geoms: list, values: list, name: str = "labels.gpkg") -> Path:
    import geopandas as gpd

    path = tmp_path / name
    gpd.GeoDataFrame({"cls": values}, geometry=geoms, crs=crs).to_file(path)
    return path


def _prediction(tmp_path: Path) -> Path:
    arr = np.zeros((40, 50), dtype="uint8")
    arr[:, 25:] = 1
    return write_geotiff(tmp_path / "pred.tif", arr, transform=Affine(10, 0, 500000, 0, -10, 5600000))


def test_labels_in_another_crs_are_reprojected(cli, tmp_path, seen):
    from pyproj import Transformer
    from shapely.geometry import box

    pred = _prediction(tmp_path)
    tr = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    (x0, y0), (x1, y1) = tr.transform(500000, 5599600), tr.transform(500250, 5600000)
    x2, _ = tr.transform(500500, 5599600)
    labels = _polygons(tmp_path, "EPSG:4326", [box(x0, y0, x1, y1), box(x1, y0, x2, y1)], [0, 1])
    res = cli("evaluate", pred, labels, "--field", "cls")
    assert res.code == 0, res.err
    import json

    assert json.loads(res.out)["overall_accuracy"] > 0.9
    seen("vector labels in another CRS (reprojected)", "exit 0; " + (res.err.strip() or "no message"))


def test_labels_not_overlapping_the_scene(cli, tmp_path, seen):
    from shapely.geometry import box

    pred = _prediction(tmp_path)
    labels = _polygons(tmp_path, "EPSG:32633", [box(0, 0, 100, 100)], [1], name="far.gpkg")
    res = cli("evaluate", pred, labels, "--field", "cls")
    refused(res, "far.gpkg", tmp_path / "nothing")
    seen("vector labels that do not overlap the scene", res.last_line)


def test_invalid_geometries_are_repaired(cli, tmp_path, seen):
    from shapely.geometry import Polygon

    pred = _prediction(tmp_path)
    bowtie = Polygon([(500000, 5600000), (500500, 5599600), (500500, 5600000), (500000, 5599600)])
    labels = _polygons(tmp_path, "EPSG:32633", [bowtie], [1], name="bowtie.gpkg")
    res = cli("evaluate", pred, labels, "--field", "cls")
    assert res.code == 0, res.err
    seen("vector labels with self-intersecting polygons (repaired)", "exit 0; " + (res.err.strip() or "no message"))


def test_unknown_class_values_warn_by_name(cli, tmp_path, seen):
    from shapely.geometry import box

    pred = _prediction(tmp_path)
    labels = _polygons(
        tmp_path,
        "EPSG:32633",
        [box(500000, 5599600, 500250, 5600000), box(500250, 5599600, 500500, 5600000)],
        ["0", "swamp"],
        name="words.gpkg",
    )
    res = cli("evaluate", pred, labels, "--field", "cls")
    assert res.code == 0, res.err
    assert "swamp" in res.err and "words.gpkg" in res.err
    seen("class field with unknown values (warned, ignored)", res.err)
