"""Synthetic scenes (geopsp.synthetic), the sample-scene command and geopsp.testing helpers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning

from geopsp.cli.main import main
from geopsp.errors import ConfigError, OutputExistsError
from geopsp.io.class_metadata import read_class_table
from geopsp.synthetic import LABEL_NODATA, SYNTHETIC_CLASSES, band_names, default_labels_path, make_scene
from geopsp.testing import random_class_map, small_scene, write_geotiff

GEOPSP = Path(sys.executable).with_name("geopsp")


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def scene_pair(tmp_path: Path, name: str, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    scene, labels = make_scene(tmp_path / f"{name}.tif", **kwargs)
    return read(scene), read(labels)[0]


# --- determinism ---------------------------------------------------------------------------------
def test_pixels_do_not_depend_on_the_window_size(tmp_path):
    args = {"width": 300, "height": 257, "bands": 4, "dtype": "float32", "seed": 5, "nodata_edge": True}
    ref_img, ref_lab = scene_pair(tmp_path, "b512", block_size=512, **args)
    for block in (37, 64, 100, 1000):
        img, lab = scene_pair(tmp_path, f"b{block}", block_size=block, **args)
        np.testing.assert_array_equal(img, ref_img)  # NaN == NaN here
        np.testing.assert_array_equal(lab, ref_lab)


def test_same_seed_same_scene_other_seed_other_scene(tmp_path):
    a_img, a_lab = scene_pair(tmp_path, "a", width=97, height=131, seed=7)
    b_img, b_lab = scene_pair(tmp_path, "b", width=97, height=131, seed=7)
    c_img, c_lab = scene_pair(tmp_path, "c", width=97, height=131, seed=8)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    assert (a_img != c_img).mean() > 0.5
    assert not np.array_equal(a_lab, c_lab)


def test_a_smaller_scene_is_the_corner_of_a_larger_one(tmp_path):
    small_img, small_lab = scene_pair(tmp_path, "small", width=97, height=131, seed=3, bands=4)
    big_img, big_lab = scene_pair(tmp_path, "big", width=300, height=257, seed=3, bands=4, block_size=64)
    np.testing.assert_array_equal(big_img[:, :131, :97], small_img)
    np.testing.assert_array_equal(big_lab[:131, :97], small_lab)


# --- types, bands, georeferencing ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("bands", "dtype", "lo", "hi"),
    [(1, "uint8", 1, 255), (3, "uint16", 1, 10000), (4, "int16", 1, 10000), (10, "float32", 1e-4, 1.0)],
)
def test_dtypes_and_band_counts(tmp_path, bands, dtype, lo, hi):
    scene, labels = small_scene(tmp_path, bands=bands, dtype=dtype)
    with rasterio.open(scene) as src:
        assert src.count == bands
        assert src.dtypes == (dtype,) * bands
        assert src.descriptions == tuple(band_names(bands))
        assert src.nodata is None
        data = src.read()
    assert data.min() >= lo
    assert data.max() <= hi
    assert data.std() > 0
    with rasterio.open(labels) as src:
        assert src.count == 1
        assert src.dtypes == ("uint8",)
        assert (src.width, src.height) == (97, 131)


def test_value_ranges_look_like_their_sensors(tmp_path):
    img16, _ = scene_pair(tmp_path, "u16", width=200, height=200, bands=4, dtype="uint16", seed=2)
    imgf, _ = scene_pair(tmp_path, "f32", width=200, height=200, bands=4, dtype="float32", seed=2)
    # Same landscape: uint16 holds reflectance x 10000 (up to rounding and the 1e-4 floor).
    np.testing.assert_allclose(img16 / 10000.0, imgf, atol=1e-4 + 1e-6)
    assert 500 < np.median(img16[3]) < 6000  # vegetated NIR, Sentinel-2-like


def test_georeferencing_and_layout(tmp_path):
    scene, labels = make_scene(
        tmp_path / "geo.tif",
        width=700,
        height=300,
        crs="EPSG:3035",
        pixel_size=20.0,
        origin=(4_000_000.0, 3_000_000.0),
    )
    for path in (scene, labels):
        with rasterio.open(path) as src:
            assert src.crs.to_epsg() == 3035
            assert src.transform == Affine(20.0, 0.0, 4_000_000.0, 0.0, -20.0, 3_000_000.0)
            assert src.block_shapes[0] == (512, 512)
            assert src.compression.name == "zstd"
            assert src.profile["tiled"]


def test_default_crs_and_transform(tmp_path):
    scene, _ = small_scene(tmp_path)
    with rasterio.open(scene) as src:
        assert src.crs.to_epsg() == 32633
        assert src.transform == Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5600000.0)


def test_labels_carry_colours_and_class_names(tmp_path):
    _, labels = small_scene(tmp_path)
    assert labels == default_labels_path(tmp_path / labels.name.replace("_labels", ""))
    with rasterio.open(labels) as src:
        assert src.nodata == LABEL_NODATA
        cmap = src.colormap(1)
        for c in SYNTHETIC_CLASSES:
            assert cmap[c.id][:3] == c.color
        assert cmap[LABEL_NODATA][3] == 0
        assert src.descriptions == ("class",)
    assert read_class_table(labels) == SYNTHETIC_CLASSES
    # Category names and the attribute table travel in the PAM sidecar GDAL and QGIS read.
    pam = Path(f"{labels}.aux.xml").read_text()
    assert "<Category>building</Category>" in pam and "<F>grassland</F>" in pam
    assert SYNTHETIC_CLASSES.names == ["cropland", "forest", "water", "road", "building", "grassland"]


# --- content -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scene600(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("s600")
    return scene_pair(tmp, "s600", width=600, height=600, bands=4, seed=0)


def test_all_classes_present_in_a_moderate_scene(scene600):
    _, lab = scene600
    counts = np.bincount(lab.ravel(), minlength=256)
    assert all(counts[c.id] > 0 for c in SYNTHETIC_CLASSES)
    assert counts[LABEL_NODATA] == 0
    assert counts[3] >= 200 and counts[4] >= 30  # roads and buildings are real objects, not specks


def test_labels_agree_with_spectra(scene600):
    img, lab = scene600
    nir = img[3].astype(float)
    red = img[0].astype(float)

    def mean(band, cls):
        return band[lab == cls].mean()

    water, forest, crop, road, building = 2, 1, 0, 3, 4
    assert mean(nir, water) < 0.3 * mean(nir, forest)  # water is dark in NIR
    assert mean(red, forest) < mean(red, crop)  # canopy absorbs red
    assert mean(red, building) > mean(red, forest) and mean(red, road) > mean(red, forest)
    ndvi = (nir - red) / (nir + red)
    assert ndvi[lab == forest].mean() > 0.5 > ndvi[lab == water].mean()


def test_spectra_alone_do_not_solve_the_task(scene600):
    # Classes overlap spectrally: a per-pixel nearest-centroid rule is far from perfect,
    # so a model must use texture and context, yet well above chance.
    img, lab = scene600
    x = img.reshape(img.shape[0], -1).T.astype(float)
    y = lab.ravel()
    centroids = np.stack([x[y == c].mean(axis=0) for c in range(len(SYNTHETIC_CLASSES))])
    pred = np.argmin(((x[:, None, :] - centroids[None]) ** 2).sum(axis=-1), axis=1)
    accuracy = (pred == y).mean()
    assert 0.4 < accuracy < 0.95


def test_nodata_collar(tmp_path):
    img, lab = scene_pair(tmp_path, "edge", width=300, height=257, bands=3, nodata_edge=True, seed=1)
    outside = lab == LABEL_NODATA
    # Corners lie outside a rotated footprint; the centre inside.
    for r, c in [(0, 0), (0, 299), (256, 0), (256, 299)]:
        assert outside[r, c]
    assert not outside[128, 150]
    assert 0.1 < outside.mean() < 0.6
    assert (img[:, outside] == 0).all()
    assert (img[:, ~outside] > 0).all()
    scene = tmp_path / "edge.tif"
    with rasterio.open(scene) as src:
        assert src.nodata == 0
        assert (src.dataset_mask()[outside] == 0).all()
        assert (src.dataset_mask()[~outside] == 255).all()


def test_float_nodata_is_nan(tmp_path):
    img, lab = scene_pair(tmp_path, "fedge", width=97, height=131, dtype="float32", nodata_edge=True)
    outside = lab == LABEL_NODATA
    assert outside.any()
    assert np.isnan(img[:, outside]).all()
    assert not np.isnan(img[:, ~outside]).any()
    with rasterio.open(tmp_path / "fedge.tif") as src:
        assert np.isnan(src.nodata)


# --- outputs -------------------------------------------------------------------------------------
def test_no_clobbering_without_overwrite(tmp_path):
    scene, _labels = small_scene(tmp_path, name="x.tif")
    before = scene.read_bytes()
    with pytest.raises(OutputExistsError, match="overwrite"):
        make_scene(scene, width=50, height=50, seed=9)
    assert scene.read_bytes() == before
    # Only the labels exist: still refused, and no scene appears.
    scene.unlink()
    with pytest.raises(OutputExistsError):
        make_scene(scene, width=50, height=50, seed=9)
    assert not scene.exists()
    make_scene(scene, width=50, height=50, seed=9, overwrite=True)
    assert read(scene).shape == (3, 50, 50)


def test_custom_labels_path_and_progress(tmp_path):
    calls = []
    _scene, labels = make_scene(
        tmp_path / "s.tif",
        width=130,
        height=70,
        labels_path=tmp_path / "sub" / "gt.tif",
        block_size=64,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert labels == tmp_path / "sub" / "gt.tif"
    assert labels.exists()
    assert calls == [(i, 6) for i in range(1, 7)]


def test_a_failure_leaves_nothing_behind(tmp_path):
    def boom(done, total):
        if done == 2:
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        make_scene(tmp_path / "s.tif", width=100, height=100, block_size=32, progress=boom)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"width": 0}, "width must be >= 1, got 0"),
        ({"height": -5}, "height must be >= 1, got -5"),
        ({"bands": 0}, r"bands must be 1\.\.64, got 0"),
        ({"bands": 65}, r"bands must be 1\.\.64, got 65"),
        ({"dtype": "int8"}, "dtype 'int8' is not supported; use one of uint8, uint16, int16, float32"),
        ({"dtype": "banana"}, "dtype 'banana' is not supported"),
        ({"crs": "EPSG:99999"}, "crs 'EPSG:99999' is not a coordinate reference system"),
        ({"crs": "nonsense"}, "crs 'nonsense'"),
        ({"pixel_size": 0}, "pixel_size must be a positive number, got 0"),
        ({"seed": -1}, "seed must be"),
        ({"block_size": 0}, "block_size must be >= 1"),
        ({"width": 2.5}, "width must be an integer, got 2.5"),
        ({"origin": (1.0,)}, "origin must be two numbers"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    args = {"width": 20, "height": 20, **kwargs}
    with pytest.raises(ConfigError, match=match) as info:
        make_scene(tmp_path / "bad.tif", **args)
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_labels_path_must_differ(tmp_path):
    with pytest.raises(ConfigError, match="labels path"):
        make_scene(tmp_path / "a.tif", width=10, height=10, labels_path=tmp_path / "a.tif")


# --- CLI -----------------------------------------------------------------------------------------
def test_cli_writes_scene_and_prints_paths(tmp_path):
    out = tmp_path / "demo.tif"
    proc = subprocess.run(
        [str(GEOPSP), "sample-scene", str(out), "--size", "120x90", "--bands", "4", "--dtype", "uint16",
         "--crs", "EPSG:32632", "--nodata-edge", "--seed", "4", "--pixel-size", "5"],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [str(out), str(tmp_path / "demo_labels.tif")]
    with rasterio.open(out) as src:
        assert (src.width, src.height, src.count, src.dtypes[0]) == (120, 90, 4, "uint16")
        assert src.crs.to_epsg() == 32632
        assert src.res == (5.0, 5.0)
        assert src.nodata == 0
    img, lab = read(out), read(tmp_path / "demo_labels.tif")[0]
    lib_img, lib_lab = scene_pair(
        tmp_path, "lib", width=120, height=90, bands=4, dtype="uint16", nodata_edge=True, seed=4
    )
    np.testing.assert_array_equal(img, lib_img)
    np.testing.assert_array_equal(lab, lib_lab)


def test_cli_options_labels_overwrite(tmp_path, capsys):
    out = tmp_path / "s.tif"
    gt = tmp_path / "gt.tif"
    argv = ["sample-scene", str(out), "--size", "40", "--labels", str(gt), "--origin", "100", "200"]
    main(argv)
    assert capsys.readouterr().out.splitlines() == [str(out), str(gt)]
    with rasterio.open(out) as src:
        assert (src.width, src.height) == (40, 40)
        assert src.transform.c == 100 and src.transform.f == 200
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().count("\n") == 0 and "already exists" in captured.err
    main([*argv, "--overwrite"])
    assert capsys.readouterr().out.splitlines() == [str(out), str(gt)]


@pytest.mark.parametrize(
    ("args", "code", "match"),
    [
        (["--size", "0"], 2, "width and height must be at least 1"),
        (["--size", "12by3"], 2, "is not W or WxH"),
        (["--bands", "0"], 2, "--bands"),
        (["--dtype", "int8"], 2, "--dtype"),
        (["--pixel-size", "-1"], 2, "--pixel-size"),
        (["--seed", "-3"], 2, "--seed"),
        (["--crs", "EPSG:99999"], 1, "crs 'EPSG:99999' is not a coordinate reference system"),
    ],
)
def test_cli_bad_arguments(tmp_path, capsys, args, code, match):
    with pytest.raises(SystemExit) as info:
        main(["sample-scene", str(tmp_path / "x.tif"), *args])
    assert info.value.code == code
    captured = capsys.readouterr()
    assert captured.out == ""
    assert match in captured.err
    error_lines = [line for line in captured.err.splitlines() if line.startswith("Error")]
    assert len(error_lines) == 1
    assert not (tmp_path / "x.tif").exists()


# --- geopsp.testing ------------------------------------------------------------------------------
def test_write_geotiff_2d_and_3d(tmp_path):
    arr = np.arange(3 * 20 * 30, dtype=np.uint16).reshape(3, 20, 30)
    p = write_geotiff(tmp_path / "a.tif", arr, nodata=0, pixel_size=2.0)
    with rasterio.open(p) as src:
        np.testing.assert_array_equal(src.read(), arr)
        assert src.nodata == 0
        assert src.crs.to_epsg() == 32633
        assert src.res == (2.0, 2.0)
    cls = (np.arange(20 * 30).reshape(20, 30) % 3).astype(np.uint8)
    p = write_geotiff(tmp_path / "b.tif", cls, colormap={0: (255, 0, 0), 1: (0, 255, 0), 2: (0, 0, 255)}, tiled=False)
    with rasterio.open(p) as src:
        assert src.count == 1
        assert src.colormap(1)[1] == (0, 255, 0, 255)
        np.testing.assert_array_equal(src.read(1), cls)


def test_write_geotiff_without_georeferencing(tmp_path):
    p = write_geotiff(tmp_path / "plain.tif", np.ones((5, 7), np.float32), crs=None)
    with pytest.warns(NotGeoreferencedWarning), rasterio.open(p) as src:
        assert src.crs is None
    with pytest.raises(ValueError, match="shape"):
        write_geotiff(tmp_path / "bad.tif", np.ones(5))


def test_random_class_map_is_blobby_and_deterministic():
    a = random_class_map(131, 97, n_classes=5, seed=2)
    b = random_class_map(131, 97, n_classes=5, seed=2)
    c = random_class_map(131, 97, n_classes=5, seed=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.shape == (131, 97) and a.dtype == np.uint8
    assert set(np.unique(a)) == set(range(5))
    # Blobs: most pixels share the class of their right-hand neighbour.
    assert (a[:, 1:] == a[:, :-1]).mean() > 0.85
    with pytest.raises(ValueError, match="n_classes"):
        random_class_map(5, 5, n_classes=0)


def test_small_scene_defaults(tmp_path):
    scene, labels = small_scene(tmp_path, nodata_edge=True, bands=4)
    with rasterio.open(scene) as src:
        assert (src.width, src.height, src.count) == (97, 131, 4)
        assert src.nodata == 0
    assert labels.exists()
    # Repeating the call replaces the same files.
    assert small_scene(tmp_path, nodata_edge=True, bands=4) == (scene, labels)
