"""The grid a scene is read on: --resolution, --crs and --aoi, checked on georeferenced outputs."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from rasterio.warp import transform_bounds

from geopsp.config.schema import PredictConfig
from geopsp.errors import InputRasterError, ResolutionWarning
from geopsp.pipeline import segment_raster
from geopsp.synthetic import make_scene
from geopsp.testing import run_cli
from geopsp.testing_servers import RangeServer

pytestmark = pytest.mark.timeout(300)


def cfg(**kw: object) -> PredictConfig:
    return PredictConfig.model_validate({"batch_size": 4, **kw})


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "m20.safetensors"
    args = ["model", "create", "--preset", "fast", "--encoder", "resnet18", "--bands", "3", "--classes", "4"]
    code, _, err = run_cli(*args, "--tile", "64", "--overlap", "8", "--pixel-size", "20", "--out", path)
    assert code == 0, err
    return path


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    """A 10 m scene, 400 x 300 px (4 x 3 km) in UTM 33N."""
    root = tmp_path_factory.mktemp("scene")
    path, _ = make_scene(root / "s10.tif", width=400, height=300, bands=3, seed=11, pixel_size=10.0)
    return path


def _grid(path: Path) -> tuple[rasterio.Affine, int, int, str, np.ndarray, float | None]:
    with rasterio.open(path) as src:
        return src.transform, src.width, src.height, src.crs.to_string(), src.read(1), src.nodata


def test_native_resolution_far_from_the_model_warns_naming_both_sizes_and_the_option(bundle, tmp_path):
    far, _ = make_scene(tmp_path / "s2m.tif", width=120, height=100, bands=3, seed=2, pixel_size=2.0)
    with pytest.warns(ResolutionWarning, match=r"pixels of 2 m, but the model was trained on 20 m.*--resolution model"):
        segment_raster(far, bundle, tmp_path / "o", config=cfg())


def test_resolution_model_warps_to_the_models_pixel_size_and_writes_on_that_grid(bundle, scene, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResolutionWarning)  # the warp removes the mismatch: no warning
        res = segment_raster(scene, bundle, tmp_path / "o", config=cfg(resolution="model"))
    t, w, h, crs, ids, nodata = _grid(res.classes)
    with rasterio.open(scene) as src:
        assert crs == src.crs.to_string()
        bounds = src.bounds
    assert (t.a, -t.e) == (20.0, 20.0) and (w, h) == (200, 150)
    assert (t.c, t.f) == (bounds.left, bounds.top)  # the 10 m scene's edges lie on the 20 m lattice
    assert (ids != nodata).all()  # the whole scene is covered
    summary = json.loads(res.summary_path.read_text())
    assert summary["scene"] == str(scene)


def test_crs_warps_the_scene_and_outputs_are_in_that_crs(bundle, scene, tmp_path):
    res = segment_raster(scene, bundle, tmp_path / "o", config=cfg(crs="EPSG:32634"))
    t, _, _, crs, ids, nodata = _grid(res.classes)
    assert crs == "EPSG:32634"
    # a scene reprojected into the next zone is a rotated quad: its corners fall outside it, as nodata
    assert (ids == nodata).any() and (ids != nodata).mean() > 0.8
    assert 9.0 < t.a < 11.5  # the native 10 m carried across, as gdalwarp would


def test_aoi_box_in_lon_lat_crops_on_whole_source_pixels_and_masks_outside(bundle, scene, tmp_path):
    with rasterio.open(scene) as src:
        b = src.bounds
        crs = src.crs
        full = src.read()
    # a lon/lat box around the middle third of the scene
    x0, x1 = b.left + (b.right - b.left) / 3, b.left + 2 * (b.right - b.left) / 3
    y0, y1 = b.bottom + (b.top - b.bottom) / 3, b.bottom + 2 * (b.top - b.bottom) / 3
    lon0, lat0, lon1, lat1 = transform_bounds(crs, "EPSG:4326", x0, y0, x1, y1)
    aoi = f"{lon0:.6f},{lat0:.6f},{lon1:.6f},{lat1:.6f}"
    res = segment_raster(scene, bundle, tmp_path / "o", config=cfg(aoi=aoi, probabilities=True))
    t, w, h, _, ids, nodata = _grid(res.classes)
    assert t.a == 10.0 and (t.c - b.left) % 10 == 0 and (b.top - t.f) % 10 == 0  # the scene's own pixel edges
    assert 120 < w < 150 and 90 < h < 115
    # the box reprojected into UTM is a slightly turned quad: inside valid, its corners' outside nodata
    inside = ids != nodata
    assert inside.mean() > 0.9 and inside[h // 2, w // 2] and (~inside).any()
    with rasterio.open(res.probability) as p:
        prob = p.read(1, masked=True)
        assert (np.ma.getmaskarray(prob) == ~inside).all()
    assert full.shape[1:] == (300, 400)  # the scene itself is untouched


def test_aoi_file_polygons_mask_every_output(bundle, scene, tmp_path):
    import geopandas as gpd
    import shapely

    with rasterio.open(scene) as src:
        b = src.bounds
        crs = src.crs
    tri = shapely.Polygon(
        [(b.left + 500, b.bottom + 500), (b.left + 2500, b.bottom + 500), (b.left + 500, b.top - 500)]
    )
    gpd.GeoDataFrame(geometry=[tri], crs=crs).to_crs("EPSG:3857").to_file(tmp_path / "aoi.gpkg")
    res = segment_raster(scene, bundle, tmp_path / "o", config=cfg(aoi=str(tmp_path / "aoi.gpkg"), vector=True))
    t, w, h, _, ids, nodata = _grid(res.classes)
    rows, cols = np.mgrid[0:h, 0:w]
    xs, ys = t.c + (cols + 0.5) * t.a, t.f + (rows + 0.5) * t.e
    inside = shapely.contains_xy(tri.buffer(-15), xs, ys)  # well inside (the GPKG went through EPSG:3857)
    outside = ~shapely.contains_xy(tri.buffer(15), xs, ys)
    assert (ids[inside] != nodata).all() and (ids[outside] == nodata).all()
    polys = gpd.read_file(res.outputs["vector"], layer="s10_polygons")
    assert polys.union_all().difference(tri.buffer(15)).area == pytest.approx(0, abs=1.0)


def test_aoi_on_a_remote_cog_reads_only_the_blocks_it_covers(bundle, tmp_path):
    make_scene(tmp_path / "big.tif", width=1024, height=1024, bands=3, seed=4, pixel_size=10.0)
    with rasterio.open(tmp_path / "big.tif") as src:
        rasterio.shutil.copy(src, tmp_path / "big_cog.tif", driver="COG", BLOCKSIZE=256, OVERVIEWS="NONE")
        b, crs = src.bounds, src.crs
    lon0, lat0, lon1, lat1 = transform_bounds(crs, "EPSG:4326", b.left + 100, b.top - 2000, b.left + 2000, b.top - 100)
    with RangeServer(tmp_path) as srv:
        segment_raster(srv.url("big_cog.tif"), bundle, tmp_path / "o", config=cfg(aoi=f"{lon0},{lat0},{lon1},{lat1}"))
        fetched = srv.bytes_served
    # about a quarter of the blocks: the top-left 256 px block columns/rows the area touches
    assert fetched < 0.35 * (tmp_path / "big_cog.tif").stat().st_size


def test_aoi_outside_the_scene_is_one_line_and_writes_nothing(bundle, scene, tmp_path):
    code, _, err = run_cli("predict", scene, "--model", bundle, "--out", tmp_path / "o", "--aoi", "100,10,101,11")
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and "lies outside the scene" in err, err
    assert not (tmp_path / "o").exists()


def test_a_warped_grid_too_big_for_memory_is_one_line(bundle, scene, tmp_path):
    code, _, err = run_cli("predict", scene, "--model", bundle, "--out", tmp_path / "o", "--resolution", "0.0001")
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and "more than half the" in err and "coarser --resolution" in err, err
    assert not (tmp_path / "o").exists()


def test_resolution_model_without_a_pixel_size_in_the_bundle_is_one_line(scene, tmp_path):
    model = tmp_path / "nopx.safetensors"
    args = ["model", "create", "--preset", "fast", "--encoder", "resnet18", "--bands", "3", "--classes", "4"]
    assert run_cli(*args, "--tile", "64", "--overlap", "8", "--out", model)[0] == 0
    with pytest.raises(Exception, match="stores no training pixel size"):
        segment_raster(scene, model, tmp_path / "o", config=cfg(resolution="model"))


def test_grid_options_need_a_crs(bundle, tmp_path):
    import numpy as np

    from geopsp.testing import write_geotiff

    p = write_geotiff(tmp_path / "plain.tif", np.zeros((3, 64, 64), np.uint8), crs=None)
    with warnings.catch_warnings(), pytest.raises(InputRasterError, match="has no CRS, so --resolution 5"):
        warnings.simplefilter("ignore")
        segment_raster(p, bundle, tmp_path / "o", config=cfg(resolution=5.0))
