"""Labels: value -> channel mapping, and vector labels burnt onto a scene grid in another CRS."""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine

from geopsp.classes import ClassTable
from geopsp.errors import ConfigError, CRSMismatchError, InputVectorError
from geopsp.labels import (
    UNLABELED,
    LabelMapping,
    UnknownLabelWarning,
    VectorLabels,
    label_raster_on_grid,
    rasterize_labels,
    value_key,
)
from geopsp.testing import write_geotiff

gpd = pytest.importorskip("geopandas")
from shapely.geometry import box  # noqa: E402

TRANSFORM = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5600000.0)


def _table(*ids):
    return ClassTable.from_list([{"id": i, "name": f"c{i}"} for i in ids])


def px_box(r0, c0, r1, c1, inset=2.5):
    """A box over pixel rows r0..r1-1 and cols c0..c1-1 of TRANSFORM, edges ``inset`` map units inside."""
    return box(500000 + c0 * 10 + inset, 5600000 - r1 * 10 + inset, 500000 + c1 * 10 - inset, 5600000 - r0 * 10 - inset)


def test_value_key_normalizes():
    assert value_key(3.0) == value_key("3") == value_key(np.int16(3)) == "3"
    assert value_key(2.5) == "2.5"


def test_mapping_channels_ignore_and_unknown():
    m = LabelMapping(_table(1, 2, 5), ignore_values=(0,))
    labels = np.array([[0, 1, 2], [5, 7, 3]], dtype="float32")
    unknown: set[str] = set()
    out = m.encode(labels, unknown=unknown)
    assert out.tolist() == [[255, 0, 1], [2, 255, 255]]
    assert unknown == {"7", "3"}
    with pytest.warns(UnknownLabelWarning, match="3, 7"):
        m.warn_unknown(unknown, "labels.tif")


def test_mapping_nodata_valid_and_value_map():
    m = LabelMapping(_table(10, 20), value_map={"1": 10, "2": 20, "3": None})
    labels = np.array([1, 2, 3, 9, 99], dtype="uint8")
    valid = np.array([True, True, True, True, False])
    unknown: set[str] = set()
    out = m.encode(labels, nodata=9, valid=valid, unknown=unknown)
    assert out.tolist() == [0, 1, 255, 255, 255]
    assert unknown == set()


def test_mapping_rejects_bad_targets_and_ignore_index():
    with pytest.raises(ConfigError, match="value_map"):
        LabelMapping(_table(1), value_map={"a": 4})
    with pytest.raises(ConfigError, match="ignore index"):
        LabelMapping(_table(*range(5)), ignore_index=3)


def test_vector_in_other_crs_burns_the_right_pixels(tmp_path):
    scene = write_geotiff(tmp_path / "scene.tif", np.zeros((1, 40, 50), dtype="uint8"), transform=TRANSFORM)
    polys = [px_box(5, 10, 15, 30), px_box(20, 5, 35, 20), px_box(8, 12, 10, 14)]
    gdf = gpd.GeoDataFrame({"kind": ["forest", "water", "house"]}, geometry=polys, crs="EPSG:32633")
    gdf.to_crs("EPSG:3857").to_file(tmp_path / "labels.gpkg")
    out = rasterize_labels(
        tmp_path / "labels.gpkg",
        scene,
        field="kind",
        value_map={"forest": 1, "water": 2, "house": 4},
    )
    expected = np.full((40, 50), UNLABELED, dtype=np.uint16)
    expected[5:15, 10:30] = 1
    expected[20:35, 5:20] = 2
    expected[8:10, 12:14] = 4  # the small polygon is burnt after the large one it lies in
    assert out.dtype == np.uint16
    assert np.array_equal(out, expected)


def test_vector_burn_value_background_and_windows(tmp_path):
    gdf = gpd.GeoDataFrame(geometry=[px_box(2, 2, 6, 6, inset=0.0)], crs="EPSG:4326").iloc[:0]
    empty = VectorLabels(gdf, crs="EPSG:32633", burn_value=1)
    assert len(empty) == 0
    assert (empty.rasterize(TRANSFORM, 4, 3, fill=0) == 0).all()
    gdf = gpd.GeoDataFrame(geometry=[px_box(2, 2, 6, 6)], crs="EPSG:32633")
    vl = VectorLabels(gdf, crs="EPSG:32633", burn_value=1)
    whole = vl.rasterize(TRANSFORM, 10, 10, fill=0)
    assert whole.sum() == 16
    # a window of the grid gives the same pixels as the same part of the whole grid
    win = vl.rasterize(TRANSFORM @ Affine.translation(3, 4), 5, 4, fill=0)
    assert np.array_equal(win, whole[4:8, 3:8])


def test_vector_errors(tmp_path):
    gdf = gpd.GeoDataFrame({"a": [1]}, geometry=[box(0, 0, 1, 1)], crs="EPSG:32633")
    with pytest.raises(InputVectorError, match="no field 'b'"):
        VectorLabels(gdf, crs="EPSG:32633", field="b")
    with pytest.raises(InputVectorError, match="class field"):
        VectorLabels(gdf, crs="EPSG:32633")
    with pytest.raises(InputVectorError, match="not found"):
        VectorLabels(tmp_path / "missing.gpkg", crs="EPSG:32633", burn_value=1)
    (tmp_path / "bad.geojson").write_text("{not json")
    with pytest.raises(InputVectorError, match="cannot read"):
        VectorLabels(tmp_path / "bad.geojson", crs="EPSG:32633", burn_value=1)


def test_unmapped_vector_values_warn(tmp_path):
    gdf = gpd.GeoDataFrame({"k": ["x", "2"]}, geometry=[px_box(0, 0, 2, 2), px_box(3, 3, 5, 5)], crs="EPSG:32633")
    with pytest.warns(UnknownLabelWarning, match="'x'"):
        vl = VectorLabels(gdf, crs="EPSG:32633", field="k")
    assert vl.class_ids == [2]


@pytest.mark.data
def test_aerial_labels_reprojected_onto_scene(shared_data):
    import rasterio
    import shapely

    folder = shared_data / "aerial_new_brunswick"
    scene = folder / "23322E759967N_clipped_1m_1of2.tif"
    vector = folder / "BakerLake_2017_clipped.gpkg"
    out = rasterize_labels(vector, scene, field="Cinqclasses")
    with rasterio.open(scene) as src:
        assert out.shape == (src.height, src.width)
        transform, crs = src.transform, src.crs
    gdf = gpd.read_file(vector)
    assert gdf.crs.to_epsg() == 2953 and crs.to_epsg() == 2036
    assert set(np.unique(out).tolist()) <= {1, 2, 3, 4, 5, UNLABELED}
    # every polygon's interior point, reprojected, lands on a pixel of its class
    gdf = gdf.to_crs(crs)
    inv = ~transform
    checked = 0
    for geom, cls in zip(gdf.geometry, gdf["Cinqclasses"], strict=True):
        inner = geom.buffer(-1.0)  # 2 px inside, so edge pixels and smaller overlaps do not matter
        if inner.is_empty or inner.area < 4:
            continue
        p = shapely.point_on_surface(inner)
        col, row = inv @ (p.x, p.y)
        r, c = int(row), int(col)
        if 0 <= r < out.shape[0] and 0 <= c < out.shape[1]:
            covered = [g for g, k in zip(gdf.geometry, gdf["Cinqclasses"], strict=True) if g.contains(p)]
            if len(covered) == 1:
                assert out[r, c] == int(cls)
                checked += 1
    assert checked >= 5


# -- label rasters on another grid ----------------------------------------------------------


def _grid_and_labels(tmp_path, labels, *, transform=TRANSFORM, crs="EPSG:32633", nodata=None):
    import rasterio

    scene = write_geotiff(tmp_path / "scene.tif", np.zeros((1, 20, 20), "uint8"), transform=TRANSFORM)
    lab = write_geotiff(tmp_path / "labels.tif", labels, transform=transform, crs=crs, nodata=nodata)
    return rasterio.open(scene), rasterio.open(lab)


def test_label_raster_on_the_grid_is_read_as_is(tmp_path):
    labels = np.arange(400, dtype="uint16").reshape(20, 20)
    grid, src = _grid_and_labels(tmp_path, labels, crs=None)  # same transform, no CRS: on the grid
    with grid, src, label_raster_on_grid(src, grid) as on:
        assert on is src and on.nodata is None
        np.testing.assert_array_equal(on.read(1), labels)


def test_label_raster_on_another_grid_is_warped_with_nearest(tmp_path):
    labels = np.zeros((30, 30), dtype="uint8")
    labels[5:25, 5:25] = np.arange(400).reshape(20, 20) % 7 + 1  # 5 px further left and up
    shifted = Affine(10.0, 0.0, 500000.0 - 50.0, 0.0, -10.0, 5600000.0 + 50.0)
    grid, src = _grid_and_labels(tmp_path, labels, transform=shifted)
    with grid, src, label_raster_on_grid(src, grid, onto="scene.tif") as on:
        assert on is not src and on.nodata == UNLABELED  # the labels had no nodata
        assert (on.width, on.height) == (20, 20)
        np.testing.assert_array_equal(on.read(1), labels[5:25, 5:25])
        from rasterio.windows import Window

        np.testing.assert_array_equal(on.read(1, window=Window(3, 2, 4, 5)), labels[7:12, 8:12])


def test_label_raster_on_another_grid_without_crs_is_refused(tmp_path):
    shifted = Affine(10.0, 0.0, 499000.0, 0.0, -10.0, 5600000.0)
    grid, src = _grid_and_labels(tmp_path, np.ones((20, 20), "uint8"), transform=shifted, crs=None)
    with grid, src, pytest.raises(CRSMismatchError, match=r"scene\.tif are on different grids and one has no CRS"):
        with label_raster_on_grid(src, grid, onto="scene.tif"):
            pass
