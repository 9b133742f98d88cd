"""geopsp.vectorize: seamless strips, exactness, simplification, small regions, attributes, formats."""

from __future__ import annotations

import json
import sqlite3
import warnings
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from affine import Affine
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasterio.features import rasterize, shapes

from geopsp.classes import ClassInfo, ClassTable
from geopsp.config.schema import VectorizeConfig
from geopsp.errors import InputRasterError, NotGeoreferencedWarning, OutputError, OutputExistsError
from geopsp.vectorize import FIELDS, vectorize
from geopsp.vectorize._geometry import drop_collinear, node_grid_polygons
from geopsp.vectorize._stitch import Stitcher
from geopsp.vectorize._strips import StripJob, process_strip

NODATA = 255
CLASSES = ClassTable(
    (
        ClassInfo(0, "cropland", (229, 201, 92)),
        ClassInfo(1, "forest", (34, 110, 52)),
        ClassInfo(2, "water", (43, 116, 204)),
        ClassInfo(3, "road", (72, 72, 72)),
        ClassInfo(4, "building", (214, 58, 48)),
    )
)


def from_origin(x0: float, y0: float, px: float, py: float) -> Affine:
    """North-up transform (rasterio's from_origin warns under affine 3)."""
    return Affine(px, 0.0, x0, 0.0, -py, y0)


def cfg(**kw: object) -> VectorizeConfig:
    return VectorizeConfig.model_validate({"workers": 1, **kw})


def landcover(height: int = 157, width: int = 131, seed: int = 0) -> np.ndarray:
    """Blobs, a tall field crossing many strips, a diagonal road, specks and a nodata corner."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    a = np.zeros((height, width), dtype=np.uint8)
    for _ in range(14):
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        ry, rx = rng.integers(5, 30, size=2)
        a[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = rng.integers(1, 3)
    a[10 : height - 10, 40:47] = 2  # a field spanning nearly the whole height
    a[np.abs(yy - (xx * 0.7 + 20)) < 1.5] = 3  # a diagonal road: 8-connected staircases
    specks = rng.random((height, width)) < 0.01
    a[specks] = 4
    a[:12, :15] = NODATA
    a[-5:, -9:] = NODATA
    return a


def write_raster(
    path: Path, a: np.ndarray, *, crs: str = "EPSG:32633", transform=None, nodata=NODATA, tags=None
) -> Path:
    transform = transform if transform is not None else from_origin(500_000, 5_600_000, 2.0, 2.0)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=a.shape[1],
        height=a.shape[0],
        count=1,
        dtype=a.dtype,
        crs=crs,
        transform=transform,
        nodata=nodata,
    ) as dst:
        dst.write(a, 1)
        if tags:
            dst.update_tags(**tags)
    return path


def read(path: Path, layer: str | None = None):
    return pyogrio.read_dataframe(path, layer=layer or Path(path).stem)


def burn(df, shape, transform, fill=NODATA) -> np.ndarray:
    return rasterize(
        zip(df.geometry, df.class_id, strict=True), out_shape=shape, transform=transform, fill=fill, dtype="uint8"
    )


@pytest.fixture(scope="module")
def raster(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    a = landcover()
    return write_raster(tmp_path_factory.mktemp("vec") / "classes.tif", a), a


def whole_raster_polygons(a: np.ndarray, transform, connectivity: int = 4) -> list:
    out = []
    for g, v in shapes(a, mask=a != NODATA, connectivity=connectivity, transform=transform):
        out.append((int(v), shapely.make_valid(shapely.geometry.shape(g))))
    return out


def _key(value: int, geom) -> tuple:
    return (value, round(geom.area, 6), tuple(round(b, 6) for b in geom.bounds))


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(block_rows=st.integers(16, 170), connectivity=st.sampled_from([4, 8]))
def test_blocks_reproduce_raster_and_whole_raster_polygons(raster, tmp_path, block_rows, connectivity):
    path, a = raster
    with rasterio.open(path) as src:
        transform = src.transform
    out = vectorize(
        path,
        tmp_path / "blocks.gpkg",
        config=cfg(block_rows=block_rows, connectivity=connectivity),
        overwrite=True,
    )
    df = read(out)
    assert (burn(df, a.shape, transform) == a).all()
    # Exactly the polygons of whole-raster polygonization, one for one.
    whole = whole_raster_polygons(a, transform, connectivity)
    assert len(df) == len(whole)
    ours = sorted(((int(v), g) for v, g in zip(df.class_id, df.geometry, strict=True)), key=lambda t: _key(*t))
    ref = sorted(whole, key=lambda t: _key(*t))
    for (v1, g1), (v2, g2) in zip(ours, ref, strict=True):
        assert v1 == v2
        assert g1.equals(g2)
    if connectivity == 4:
        # Seam vertices are dropped again: as many vertices as GDAL's own whole-raster output.
        assert shapely.get_num_coordinates(df.geometry.values).sum() == sum(
            shapely.get_num_coordinates(g) for _, g in whole
        )


def test_field_across_many_blocks_is_one_polygon(tmp_path):
    a = np.zeros((400, 60), dtype=np.uint8)
    a[5:395, 20:30] = 1  # crosses 24 strips of 16 rows
    a[100:300, 25] = 0  # split lengthwise in the middle... but joined at both ends
    path = write_raster(tmp_path / "field.tif", a)
    df = read(vectorize(path, tmp_path / "field_polygons.gpkg", config=cfg(block_rows=16)))
    fields = df[df.class_id == 1]
    assert len(fields) == 1
    assert fields.geometry.iloc[0].geom_type == "Polygon"
    assert fields.area_m2.iloc[0] == pytest.approx((390 * 10 - 200) * 4.0)
    assert len(df[df.class_id == 0]) == 2  # the background ring and the slit inside the field


def test_nodata_and_skipped_classes_make_no_polygons(raster, tmp_path):
    path, a = raster
    df = read(vectorize(path, tmp_path / "skip.gpkg", config=cfg(block_rows=32, skip_classes=(0,))))
    with rasterio.open(path) as src:
        transform = src.transform
    assert 0 not in set(df.class_id)
    burned = burn(df, a.shape, transform)
    assert (burned[a == NODATA] == NODATA).all()
    assert (burned[a == 0] == NODATA).all()
    keep = (a != NODATA) & (a != 0)
    assert (burned[keep] == a[keep]).all()


def test_all_nodata_raster_writes_an_empty_layer(tmp_path):
    path = write_raster(tmp_path / "empty.tif", np.full((40, 30), NODATA, dtype=np.uint8))
    out = vectorize(path, tmp_path / "empty_polygons.gpkg", config=cfg(block_rows=16))
    info = pyogrio.read_info(out, layer="empty_polygons")
    assert info["features"] == 0
    assert list(info["fields"]) == list(FIELDS)


@pytest.mark.parametrize("block_rows", [16, 48, 1024])
def test_simplified_output_is_a_valid_coverage(raster, tmp_path, block_rows):
    path, a = raster
    df = read(vectorize(path, tmp_path / "s.gpkg", config=cfg(block_rows=block_rows, simplify=3.0)))
    geoms = np.asarray(df.geometry.values)
    assert shapely.is_valid(geoms).all()
    assert shapely.coverage_is_valid(geoms)
    valid_area = (a != NODATA).sum() * 4.0
    # No gaps, no overlaps: the union covers what the pixels cover, and areas add up to it.
    assert shapely.union_all(geoms).area == pytest.approx(valid_area, rel=0.01)
    assert shapely.area(geoms).sum() == pytest.approx(shapely.union_all(geoms).area, rel=1e-9)
    exact = read(vectorize(path, tmp_path / "e.gpkg", config=cfg(block_rows=block_rows)))
    assert len(df) == len(exact)
    assert shapely.get_num_coordinates(geoms).sum() < 0.7 * shapely.get_num_coordinates(exact.geometry.values).sum()


def test_strip_simplification_keeps_seam_edges_shared(tmp_path):
    # A diagonal boundary crosses every seam; simplified per strip, the two sides must still meet.
    yy, xx = np.mgrid[0:200, 0:200]
    a = (xx > yy * 0.8 + 10).astype(np.uint8)
    path = write_raster(tmp_path / "diag.tif", a)
    df = read(vectorize(path, tmp_path / "diag_polygons.gpkg", config=cfg(block_rows=16, simplify=4.0)))
    assert len(df) == 2
    g0, g1 = df.geometry.values
    assert shapely.coverage_is_valid(np.array([g0, g1]))
    assert g0.intersection(g1).area == pytest.approx(0.0, abs=1e-6)
    assert (g0.area + g1.area) == pytest.approx(200 * 200 * 4.0)
    # The staircase is gone: far fewer vertices than pixels along the boundary.
    assert shapely.get_num_coordinates(g0) < 60


def test_sieve_merges_specks_into_longest_border_neighbour(tmp_path):
    a = np.zeros((60, 60), dtype=np.uint8)
    a[:, 30:] = 1
    a[20:23, 28:30] = 2  # 6 px speck: 7 px of border with class 0 (left 3, top 2, bottom 2), 3 px with class 1
    a[40, 10] = 3  # 1 px speck inside class 0
    path = write_raster(tmp_path / "specks.tif", a)
    df = read(vectorize(path, tmp_path / "sieved.gpkg", config=cfg(block_rows=16, sieve_px=8)))
    assert sorted(df.class_id) == [0, 1]
    assert df.area_m2.sum() == pytest.approx(60 * 60 * 4.0)
    assert shapely.union_all(df.geometry.values).area == pytest.approx(60 * 60 * 4.0)
    zero = df[df.class_id == 0].geometry.iloc[0]
    assert len(zero.interiors) == 0  # the 1 px speck left no hole
    # The class-2 speck shares 7 px of border with class 0 and 3 px with class 1: it joined class 0.
    assert zero.area == pytest.approx(30 * 60 * 4.0)


def test_sieve_result_does_not_depend_on_block_rows(raster, tmp_path):
    path, _ = raster
    results = []
    for rows in (16, 40, 1024):
        df = read(vectorize(path, tmp_path / f"sv{rows}.gpkg", config=cfg(block_rows=rows, sieve_px=12)))
        results.append(sorted(_key(int(v), g) for v, g in zip(df.class_id, df.geometry, strict=True)))
    assert results[0] == results[1] == results[2]


def test_min_area_merges_instead_of_leaving_holes(raster, tmp_path):
    path, a = raster
    min_area = 150.0  # m2: 37.5 px
    df = read(vectorize(path, tmp_path / "min.gpkg", config=cfg(block_rows=32, min_area_m2=min_area, simplify=2.0)))
    geoms = np.asarray(df.geometry.values)
    assert shapely.coverage_is_valid(geoms)
    valid_area = (a != NODATA).sum() * 4.0
    assert shapely.union_all(geoms).area == pytest.approx(valid_area, rel=0.01)
    # Small polygons remain only where nodata is their sole neighbour (none in this map).
    exact_small = df.area_m2 < min_area * 0.8  # simplification moves areas a little
    assert not exact_small.any()
    # Same-class neighbours created by merging were dissolved.
    tree = shapely.STRtree(geoms)
    i, j = tree.query(geoms, predicate="touches")
    pairs = (i < j) & (df.class_id.values[i] == df.class_id.values[j])
    shared = shapely.length(shapely.intersection(geoms[i[pairs]], geoms[j[pairs]]))
    assert not (shared > 0).any()


def test_fill_holes_absorbs_small_holes_only(tmp_path):
    a = np.ones((80, 120), dtype=np.uint8)  # forest
    a[10:14, 10:14] = 2  # 16 px pond: filled
    a[30:60, 30:60] = 2  # 900 px lake: stays
    a[40:42, 40:42] = 0  # island in the lake (4 px): filled into the lake
    a[10:13, 90:93] = NODATA  # nodata hole: stays a hole
    path = write_raster(tmp_path / "holes.tif", a)
    df = read(vectorize(path, tmp_path / "holes_polygons.gpkg", config=cfg(block_rows=16, fill_holes_m2=100.0)))
    assert sorted(df.class_id) == [1, 2]
    forest = df[df.class_id == 1].geometry.iloc[0]
    lake = df[df.class_id == 2].geometry.iloc[0]
    assert len(forest.interiors) == 2  # the lake and the nodata hole
    assert len(lake.interiors) == 0
    assert lake.area == pytest.approx(900 * 4.0)
    assert forest.area == pytest.approx((80 * 120 - 900 - 9) * 4.0)


def test_attributes_projected(tmp_path):
    a = np.zeros((50, 40), dtype=np.uint8)
    a[10:20, 5:25] = 2  # 10 x 20 px at 2 m: 20 m x 40 m
    path = write_raster(tmp_path / "attr.tif", a, tags={"GEOPSP_SCENE": "S2A_20240601"})
    df = read(vectorize(path, tmp_path / "attr_polygons.gpkg", config=cfg(), classes=CLASSES))
    assert list(df.columns) == [*FIELDS, "geometry"]
    water = df[df.class_id == 2].iloc[0]
    assert water.class_name == "water"
    assert water.area_m2 == pytest.approx(800.0)
    assert water.perimeter_m == pytest.approx(120.0)
    assert water.scene == "S2A_20240601"
    assert df.crs.to_epsg() == 32633
    other = read(vectorize(path, tmp_path / "named.gpkg", config=cfg(), scene="mine"))
    assert set(other.scene) == {"mine"}
    assert set(other.class_name) == {"class_0", "class_2"}  # no class table anywhere


def test_scene_attribute_reads_the_tag_geopsp_writes_and_the_older_name(tmp_path):
    from geopsp.io.class_metadata import LEGACY_SCENE_TAG, SCENE_TAG

    a = np.zeros((20, 20), dtype=np.uint8)
    old = write_raster(tmp_path / "old_classes.tif", a, tags={LEGACY_SCENE_TAG: "s1.tif"})
    assert set(read(vectorize(old, tmp_path / "old_polygons.gpkg", config=cfg())).scene) == {"s1.tif"}
    both = write_raster(tmp_path / "both_classes.tif", a, tags={SCENE_TAG: "s2.tif", LEGACY_SCENE_TAG: "stale.tif"})
    assert set(read(vectorize(both, tmp_path / "both_polygons.gpkg", config=cfg())).scene) == {"s2.tif"}


@pytest.mark.parametrize("workers", [1, 2])
def test_raster_without_georeferencing_gives_only_our_warning(tmp_path, capfd, workers):
    from geopsp.testing import write_geotiff

    path = write_geotiff(tmp_path / "plain_classes.tif", landcover(64, 48), crs=None, nodata=NODATA)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = vectorize(path, tmp_path / "plain_polygons.gpkg", config=cfg(block_rows=16, workers=workers))
    # Neither rasterio ("no geotransform") nor pyogrio ("'crs' was not provided"), in this process or a pool's.
    assert [type(w.message) for w in caught] == [NotGeoreferencedWarning], [str(w.message) for w in caught]
    assert str(caught[0].message) == (
        f"{path}: class raster has no CRS or geotransform; polygons are in pixel coordinates and areas in pixels"
    )
    assert capfd.readouterr().err == ""
    assert read(out).crs is None


def test_raster_with_a_geotransform_but_no_crs_says_polygons_are_in_map_units(tmp_path):
    a = np.zeros((30, 40), dtype=np.uint8)
    a[10:20, 5:25] = 2
    path = write_raster(tmp_path / "nocrs_classes.tif", a, crs=None)  # 2 m pixels at (500000, 5600000)
    with pytest.warns(NotGeoreferencedWarning) as caught:
        out = vectorize(path, tmp_path / "nocrs_polygons.gpkg", config=cfg())
    assert [str(w.message) for w in caught] == [
        f"{path}: class raster has a geotransform but no CRS; polygons are in its map units with no CRS, "
        "and so are areas and lengths"
    ]
    df = read(out)
    assert df.crs is None
    water = df[df.class_id == 2].iloc[0]
    assert water.geometry.bounds == (500_010.0, 5_599_960.0, 500_050.0, 5_599_980.0)  # map units, not pixels
    assert water.area_m2 == pytest.approx(800.0)


def test_area_in_metres_for_geographic_crs(tmp_path):
    # 0.0005 degree pixels around 52 N, 13 E: compare with the polygons projected to UTM 33N.
    a = np.zeros((60, 80), dtype=np.uint8)
    a[10:40, 10:50] = 1
    transform = from_origin(13.0, 52.0, 0.0005, 0.0005)
    path = write_raster(tmp_path / "geo.tif", a, crs="EPSG:4326", transform=transform)
    df = read(vectorize(path, tmp_path / "geo_polygons.gpkg", config=cfg()))
    assert df.crs.to_epsg() == 4326
    utm = df.to_crs(32633)
    np.testing.assert_allclose(df.area_m2, utm.area, rtol=0.01)
    np.testing.assert_allclose(df.perimeter_m, utm.length, rtol=0.01)
    field = df[df.class_id == 1].iloc[0]
    assert field.area_m2 == pytest.approx(
        30 * 40 * 0.0005 * 111_320 * 0.0005 * 111_320 * np.cos(np.radians(51.99)), rel=0.01
    )


def test_web_mercator_areas_are_true_metres(tmp_path):
    a = np.ones((20, 20), dtype=np.uint8)
    transform = from_origin(1_000_000, 8_400_000, 100, 100)  # ~ 60 N in EPSG:3857
    path = write_raster(tmp_path / "merc.tif", a, crs="EPSG:3857", transform=transform)
    df = read(vectorize(path, tmp_path / "merc_polygons.gpkg", config=cfg()))
    planar = 2000 * 2000
    y_lat = np.degrees(2 * np.arctan(np.exp(8_399_000 / 6_378_137)) - np.pi / 2)
    assert df.area_m2.iloc[0] == pytest.approx(planar * np.cos(np.radians(y_lat)) ** 2, rel=0.02)


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson", ".fgb", ".shp", ".parquet"])
def test_formats_round_trip(raster, tmp_path, suffix):
    path, a = raster
    out = vectorize(path, tmp_path / f"poly{suffix}", config=cfg(block_rows=40), classes=CLASSES)
    if suffix == ".parquet":
        import geopandas as gpd

        df = gpd.read_parquet(out)
    else:
        df = read(out)
    with rasterio.open(path) as src:
        transform = src.transform
    assert (burn(df, a.shape, transform) == a).all()
    assert df.crs.to_epsg() == 32633
    assert set(df.class_name) <= set(CLASSES.names)
    perimeter = "perim_m" if suffix == ".shp" else "perimeter_m"
    assert list(df.columns) == ["class_id", "class_name", "area_m2", perimeter, "scene", "geometry"]
    assert out.with_suffix(".qml").exists()
    assert not list(tmp_path.glob(".geopsp-tmp-*"))


def test_gpkg_carries_default_qgis_style(raster, tmp_path):
    path, _ = raster
    out = vectorize(path, tmp_path / "styled.gpkg", config=cfg(), classes=CLASSES)
    with sqlite3.connect(out) as con:
        cols = [r[1] for r in con.execute("PRAGMA table_info(layer_styles)")]
        rows = con.execute(
            "SELECT f_table_name, f_geometry_column, useAsDefault, styleQML FROM layer_styles"
        ).fetchall()
        registered = con.execute("SELECT data_type FROM gpkg_contents WHERE table_name = 'layer_styles'").fetchone()
    for col in ("f_table_catalog", "f_table_schema", "f_table_name", "f_geometry_column", "styleName", "styleQML",
                "styleSLD", "useAsDefault", "description", "owner", "ui", "update_time"):  # fmt: skip
        assert col in cols
    assert registered == ("attributes",)
    assert len(rows) == 1
    table, geom_col, default, qml = rows[0]
    assert (table, geom_col, default) == ("styled", "geom", 1)
    assert 'type="categorizedSymbol"' in qml and 'attr="class_id"' in qml
    for c in CLASSES:
        assert f'label="{c.name}"' in qml


def test_outputs_are_refused_or_replaced(raster, tmp_path):
    path, _ = raster
    out = vectorize(path, tmp_path / "o.gpkg", config=cfg())
    with pytest.raises(OutputExistsError):
        vectorize(path, out, config=cfg())
    assert vectorize(path, out, config=cfg(), overwrite=True) == out
    # <stem>.qml styles the class raster: a GeoPackage keeps its style inside instead, other formats refuse.
    raster_style = path.with_suffix(".qml")
    raster_style.write_text("<qgis/>")
    try:
        with pytest.raises(OutputError, match="style"):
            vectorize(path, path.with_suffix(".geojson"), config=cfg())
        vectorize(path, path.with_suffix(".gpkg"), config=cfg())
        assert raster_style.read_text() == "<qgis/>"
    finally:
        raster_style.unlink()
        path.with_suffix(".gpkg").unlink(missing_ok=True)
    with pytest.raises(InputRasterError):
        vectorize(tmp_path / "missing.tif", tmp_path / "x.gpkg")
    f = tmp_path / "float.tif"
    write_raster(f, np.full((10, 10), 0.5, dtype=np.float32), nodata=None)
    with pytest.raises(InputRasterError, match="non-integer"):
        vectorize(f, tmp_path / "f.gpkg")
    assert not (tmp_path / "f.gpkg").exists()
    c = tmp_path / "complex.tif"
    write_raster(c, np.zeros((10, 10), dtype=np.complex64), nodata=None)
    with pytest.raises(InputRasterError, match="integer"):
        vectorize(c, tmp_path / "c.gpkg")


def test_float_label_rasters_with_whole_numbers(tmp_path):
    a = np.zeros((40, 50), dtype=np.float32)
    a[5:30, 10:20] = 3.0
    a[:4, :4] = np.nan
    path = write_raster(tmp_path / "labels.tif", a, nodata=np.nan)
    df = read(vectorize(path, tmp_path / "labels_polygons.gpkg", config=cfg(block_rows=16)))
    assert sorted(df.class_id) == [0, 3]
    assert df.area_m2.sum() == pytest.approx((40 * 50 - 16) * 4.0)


def test_progress_and_worker_processes_agree(raster, tmp_path):
    path, _ = raster
    calls: list[tuple[int, int]] = []
    one = read(
        vectorize(path, tmp_path / "one.gpkg", config=cfg(block_rows=20), progress=lambda d, t: calls.append((d, t)))
    )
    assert calls[-1] == (157, 157)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    two = read(vectorize(path, tmp_path / "two.gpkg", config=cfg(block_rows=20, workers=2, simplify=2.0)))
    ref = read(vectorize(path, tmp_path / "ref.gpkg", config=cfg(block_rows=20, workers=1, simplify=2.0)))
    assert len(two) == len(ref) == len(one)
    assert sorted(shapely.normalize(two.geometry.values).tolist(), key=lambda g: g.wkb) == sorted(
        shapely.normalize(ref.geometry.values).tolist(), key=lambda g: g.wkb
    )


def test_stitcher_memory_follows_width_not_height(tmp_path):
    # Open regions at any seam stay bounded however tall the raster grows.
    peaks = []
    for height in (256, 1024):
        a = np.tile(landcover(128, 160, seed=3), (height // 128, 1))
        path = write_raster(tmp_path / f"tall{height}.tif", a)
        stitcher = Stitcher(4)
        peak = 0
        with rasterio.open(path) as src:
            for i, r0 in enumerate(range(0, height, 32)):
                job = StripJob(str(path), i, r0, min(height, r0 + 32), height, 4, False, ())
                stitcher.add(process_strip(src, job))
                peak = max(peak, stitcher.open_vertices)
        stitcher.finish()
        peaks.append(peak)
    assert peaks[1] <= 1.2 * peaks[0]


def test_noding_matches_t_junctions():
    # Two boxes on top of one wide box: the wide box's top edge needs the middle vertex.
    geoms = np.array([shapely.box(0, 0, 2, 1), shapely.box(0, 1, 1, 2), shapely.box(1, 1, 2, 2)], dtype=object)
    assert not shapely.coverage_is_valid(geoms)
    noded = node_grid_polygons(geoms)
    assert shapely.coverage_is_valid(noded)
    assert shapely.get_num_coordinates(noded[0]) == 6
    assert drop_collinear(noded)[0].equals(geoms[0])
    assert shapely.get_num_coordinates(drop_collinear(noded)[0]) == 5


def test_cli_vectorize(raster, tmp_path):
    from geopsp.cli.main import cli

    path, _ = raster
    table = tmp_path / "classes.json"
    table.write_text(json.dumps(CLASSES.to_list()))
    out = tmp_path / "cli.fgb"
    result = CliRunner().invoke(
        cli,
        [
            "vectorize", str(path), "--out", str(out), "--simplify", "2", "--block-rows", "32",
            "--skip-class", "0", "--classes", str(table), "--scene", "demo", "--workers", "1",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [str(out), str(out.with_suffix(".qml"))]  # every file written, OUT first
    df = read(out)
    assert 0 not in set(df.class_id)
    assert set(df.scene) == {"demo"}
    again = CliRunner().invoke(cli, ["vectorize", str(path), "--out", str(out)])
    assert again.exit_code == 1
    assert isinstance(again.exception, OutputExistsError)


@pytest.mark.parametrize("suffix", [".shp", ".gpkg"])
def test_cli_vectorize_lists_every_file_it_wrote(raster, tmp_path, suffix):
    from geopsp.cli.main import cli

    path, _ = raster
    folder = tmp_path / "polygons"
    out = folder / f"parcels{suffix}"
    result = CliRunner().invoke(cli, ["vectorize", str(path), "--out", str(out), "--workers", "1"])
    assert result.exit_code == 0, result.output
    printed = result.output.splitlines()
    assert printed[0] == str(out)
    assert sorted(printed) == sorted(str(p) for p in folder.iterdir())  # all there, nothing else, no temporaries
    if suffix == ".shp":
        assert {Path(p).suffix for p in printed} == {".shp", ".shx", ".dbf", ".prj", ".cpg", ".qml"}
        assert len(read(out)) > 0


def test_vectorize_into_a_staged_set_commits_with_it(raster, tmp_path):
    from geopsp.io.atomic import StagedOutputs

    path, a = raster
    out = tmp_path / "set" / "parcels.shp"
    with StagedOutputs() as staged:
        assert vectorize(path, out, config=cfg(block_rows=40), classes=CLASSES, outputs=staged) == out
        assert not list(out.parent.glob("parcels.*"))  # nothing under a final name before the commit
        committed = staged.commit()
    assert [p.name for p in committed] == [f"parcels{s}" for s in (".shx", ".dbf", ".prj", ".cpg", ".shp", ".qml")]
    assert sorted(committed) == sorted(out.parent.iterdir())
    with rasterio.open(path) as src:
        assert (burn(read(out), a.shape, src.transform) == a).all()
    # a failure leaves nothing: neither final names nor temporaries
    with pytest.raises(OutputExistsError), StagedOutputs() as staged:
        vectorize(path, out, config=cfg(), outputs=staged)
    bad = tmp_path / "bad"
    with pytest.raises(ZeroDivisionError), StagedOutputs() as staged:
        vectorize(path, bad / "p.shp", config=cfg(), outputs=staged)
        _ = 1 / 0
    assert list(bad.iterdir()) == []


def test_top_level_name_is_callable_after_submodule_import(raster, tmp_path):
    import geopsp
    import geopsp.vectorize  # binds the package as geopsp.vectorize

    path, _ = raster
    out = geopsp.vectorize(path, tmp_path / "top.gpkg", config=cfg())
    assert out.exists()


@pytest.mark.data
def test_real_sentinel2_labels_round_trip(shared_data, tmp_path):
    # float32 labels, nodata 0 (unlabeled), 401 x 401 at 10 m in EPSG:32633.
    src = shared_data / "sentinel2_strzegom" / "labels" / "strzegom_20220619_33u.tif"
    df = read(vectorize(src, tmp_path / "s2_polygons.gpkg", config=cfg(block_rows=64)))
    with rasterio.open(src) as r:
        a = r.read(1)
        transform = r.transform
    burned = rasterize(
        zip(df.geometry, df.class_id, strict=True), out_shape=a.shape, transform=transform, fill=0, dtype="float32"
    )
    assert (burned == a).all()
    assert df.crs.to_epsg() == 32633
    assert df.area_m2.sum() == pytest.approx((a != 0).sum() * 100.0)
