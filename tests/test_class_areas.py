"""The class areas table: pixels, m², shares and polygon counts per class, for one raster and a batch."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

import geopsp.inference.areas as areas_module
from geopsp.classes import ClassTable
from geopsp.errors import InputRasterError
from geopsp.inference.area_table import CSV_COLUMNS, ClassArea, ClassAreas, sum_class_areas, write_class_areas_csv
from geopsp.inference.areas import class_areas
from geopsp.testing import run_cli, write_geotiff

NODATA = 255


def random_classes(shape, *, seed=0, classes=(0, 1, 2, 3), nodata_fraction=0.2):
    rng = np.random.default_rng(seed)
    arr = rng.choice(np.array(classes, dtype=np.uint8), size=shape)
    arr[rng.random(shape) < nodata_fraction] = NODATA
    return arr


def by_id(table: ClassAreas) -> dict[int, ClassArea]:
    return {r.id: r for r in table.rows}


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# ---------------------------------------------------------------- one raster


@pytest.mark.parametrize("window_pixels", [1 << 20, 500])  # one window; many, split across the columns too
def test_projected_areas_are_pixel_counts_times_the_pixel_area(tmp_path, monkeypatch, window_pixels):
    monkeypatch.setattr(areas_module, "_WINDOW_PIXELS", window_pixels)
    arr = random_classes((131, 97), seed=1)
    transform = Affine(2.5, 0.0, 500_000.0, 0.0, -4.0, 5_000_000.0)  # 10 m² pixels, not square
    path = write_geotiff(tmp_path / "c.tif", arr, crs="EPSG:32633", transform=transform, nodata=NODATA, blocksize=16)
    table = class_areas(path, classes=ClassTable.from_names(["a", "b", "c", "d", "e"]))

    counts = np.bincount(arr.ravel(), minlength=256)
    valid = int(counts[:NODATA].sum())
    assert table.method == "planar"
    assert table.nodata_pixels == int(counts[NODATA]) > 0
    assert [r.id for r in table.rows] == [0, 1, 2, 3, 4]  # the table's classes, the absent one too
    for r in table.rows:
        assert r.pixels == counts[r.id]
        assert r.area_m2 == pytest.approx(counts[r.id] * 10.0, rel=1e-12)
        assert r.percent == pytest.approx(100.0 * counts[r.id] / valid, rel=1e-12)  # of the valid area only
        assert r.polygon_count is None
    assert by_id(table)[4].pixels == 0 and by_id(table)[4].percent == 0.0
    assert table.totals() == {
        "pixels": valid,
        "area_m2": pytest.approx(valid * 10.0),
        "percent": 100.0,
        "polygon_count": None,
        "nodata_pixels": int(counts[NODATA]),
    }


def test_a_feet_crs_gives_square_metres(tmp_path):
    arr = random_classes((40, 30), seed=2)
    transform = Affine(3.0, 0.0, 1_000_000.0, 0.0, -3.0, 200_000.0)  # 3 US survey feet
    path = write_geotiff(tmp_path / "ny.tif", arr, crs="EPSG:2263", transform=transform, nodata=NODATA)
    table = class_areas(path)
    foot = 1200 / 3937  # metres in a US survey foot
    counts = np.bincount(arr.ravel(), minlength=256)
    for r in table.rows:
        assert r.area_m2 == pytest.approx(counts[r.id] * (3 * foot) ** 2, rel=1e-12)
    assert [r.name for r in table.rows] == ["class_0", "class_1", "class_2", "class_3"]  # no table: default names


def test_geographic_areas_are_geodesic_cell_areas_row_by_row(tmp_path):
    from pyproj import Geod

    arr = random_classes((120, 50), seed=3)
    t = Affine(0.001, 0.0, 10.0, 0.0, -0.002, 61.0)  # 61.0 N down to 60.76 N
    path = write_geotiff(tmp_path / "geo.tif", arr, crs="EPSG:4326", transform=t, nodata=NODATA, blocksize=16)
    table = class_areas(path)
    assert table.method == "geodesic"

    geod = Geod(ellps="WGS84")

    def cell(row):  # one cell's corners straight from the transform
        (x0, y0), (x1, y1) = t @ (0, row), t @ (1, row + 1)
        return abs(geod.polygon_area_perimeter([x0, x1, x1, x0], [y0, y0, y1, y1])[0])

    cells = np.array([cell(r) for r in range(arr.shape[0])])
    assert cells[0] < cells[-1]  # cells grow towards the equator
    for r in table.rows:
        expected = float(((arr == r.id).sum(axis=1) * cells).sum())
        assert r.area_m2 == pytest.approx(expected, rel=1e-9)
    # the shares are of the area, not of the pixels: they differ on a geographic grid
    pixels_share = {r.id: 100 * r.pixels / table.pixels for r in table.rows}
    assert any(abs(r.percent - pixels_share[r.id]) > 1e-6 for r in table.rows)
    assert sum(r.percent for r in table.rows) == pytest.approx(100.0)


def test_coarse_geographic_cells_follow_their_parallels(tmp_path):
    """1° cells: the band between two parallels, exact on the ellipsoid, not the chord polygon."""
    arr = np.array([[1, 2], [1, 1]], dtype=np.uint8)
    t = Affine(1.0, 0.0, 20.0, 0.0, -1.0, 70.0)
    path = write_geotiff(tmp_path / "coarse.tif", arr, crs="EPSG:4326", transform=t)
    table = class_areas(path)

    a, f = 6378137.0, 1 / 298.257223563  # WGS 84
    b, e = a * (1 - f), math.sqrt(f * (2 - f))

    def band(phi0, phi1):  # area of a 1° wide band between two parallels (authalic latitude formula)
        def q(phi):
            s = math.sin(math.radians(phi))
            return s / (2 * (1 - e * e * s * s)) + math.log((1 + e * s) / (1 - e * s)) / (4 * e)

        return math.radians(1.0) * b * b * (q(phi1) - q(phi0))

    assert by_id(table)[1].area_m2 == pytest.approx(band(69, 70) + 2 * band(68, 69), rel=1e-6)
    assert by_id(table)[2].area_m2 == pytest.approx(band(69, 70), rel=1e-6)


def test_web_mercator_metres_are_not_taken_as_true_metres(tmp_path):
    arr = np.ones((10, 10), dtype=np.uint8)
    y = 6_800_000.0  # about 52.1 N
    path = write_geotiff(tmp_path / "m.tif", arr, crs="EPSG:3857", transform=Affine(10, 0, 1_000_000, 0, -10, y))
    table = class_areas(path)
    lat = math.degrees(2 * math.atan(math.exp((y - 50) / 6378137.0)) - math.pi / 2)  # centre of the tile
    assert table.method == "geodesic"
    assert table.area_m2 == pytest.approx(100 * 100 * math.cos(math.radians(lat)) ** 2, rel=5e-3)


def test_without_crs_pixels_are_counted_and_square_metres_are_null(tmp_path):
    arr = random_classes((20, 30), seed=4)
    path = write_geotiff(tmp_path / "plain.tif", arr, crs=None, nodata=NODATA)
    table = class_areas(path)
    counts = np.bincount(arr.ravel(), minlength=256)
    assert table.method == "none" and table.area_m2 is None
    for r in table.rows:
        assert r.pixels == counts[r.id] and r.area_m2 is None
        assert r.percent == pytest.approx(100 * counts[r.id] / counts[:NODATA].sum())
    write_class_areas_csv(table, tmp_path / "t.csv")
    assert {row["area_m2"] for row in read_csv(tmp_path / "t.csv")} == {""}


def test_an_all_nodata_raster_has_rows_without_shares(tmp_path):
    path = write_geotiff(tmp_path / "empty.tif", np.full((8, 8), NODATA, np.uint8), nodata=NODATA)
    table = class_areas(path, classes=ClassTable.from_names(["a", "b"]))
    assert [(r.pixels, r.area_m2, r.percent) for r in table.rows] == [(0, 0.0, None), (0, 0.0, None)]
    assert table.nodata_pixels == 64 and table.totals()["percent"] is None


def test_ids_the_class_table_lacks_get_rows_of_their_own(tmp_path):
    arr = np.array([[1, 1, 7], [7, 7, 0]], dtype=np.uint16)
    path = write_geotiff(tmp_path / "u16.tif", arr)
    table = class_areas(path, classes=ClassTable.from_names(["water"], start=1))
    assert [(r.id, r.name, r.pixels) for r in table.rows] == [(1, "water", 2), (0, "class_0", 1), (7, "class_7", 3)]


def test_bad_rasters_are_refused_in_one_line(tmp_path):
    floats = write_geotiff(tmp_path / "f.tif", np.zeros((4, 4), np.float32))
    with pytest.raises(InputRasterError, match=r"f\.tif: band 1 is float32; a class raster holds integer class ids"):
        class_areas(floats)
    rotated = write_geotiff(
        tmp_path / "rot.tif",
        np.ones((4, 4), np.uint8),
        crs="EPSG:4326",
        transform=Affine(0.01, 0.002, 10, 0, -0.01, 50),
    )
    with pytest.raises(InputRasterError, match=r"rot\.tif: its grid is rotated or sheared .* warp it to a north-up"):
        class_areas(rotated)
    with pytest.raises(InputRasterError, match=r"missing\.tif: class raster not found"):
        class_areas(tmp_path / "missing.tif")


@pytest.mark.parametrize("fmt", ["gpkg", "fgb", "parquet"])
def test_polygon_counts_are_the_written_polygons_per_class(tmp_path, fmt):
    import pyogrio

    from geopsp.config.schema import VectorizeConfig
    from geopsp.vectorize import vectorize

    rng = np.random.default_rng(5)
    arr = np.kron(rng.integers(0, 3, size=(6, 8)), np.ones((5, 5), int)).astype(np.uint8)
    arr[:5, :5] = NODATA
    path = write_geotiff(tmp_path / "c.tif", arr, nodata=NODATA)
    vector = vectorize(path, tmp_path / f"c_polygons.{fmt}", config=VectorizeConfig(format=fmt))
    table = class_areas(path, polygons=vector)

    if fmt == "parquet":
        import geopandas as gpd

        written = gpd.read_parquet(vector)
    else:
        written = pyogrio.read_dataframe(vector, layer=vector.stem)
    per_class = written["class_id"].value_counts().to_dict()
    assert {r.id: r.polygon_count for r in table.rows} == {c: per_class.get(c, 0) for c in (0, 1, 2)}
    assert table.polygon_count == len(written) > 3


def test_sums_over_scenes_add_by_class_and_recompute_shares():
    a = ClassAreas((ClassArea(1, "water", 3, 300.0, 75.0, 2), ClassArea(2, "forest", 1, 100.0, 25.0, 1)), "planar")
    b = ClassAreas((ClassArea(2, "forest", 2, 150.0, 100.0, 1),), "geodesic", nodata_pixels=5)
    s = sum_class_areas([a, b])
    assert s is not None and s.method == "mixed" and s.scenes == 2 and s.nodata_pixels == 5
    assert [(r.id, r.pixels, r.area_m2, r.polygon_count) for r in s.rows] == [(1, 3, 300.0, 2), (2, 3, 250.0, 2)]
    assert [r.percent for r in s.rows] == pytest.approx([300 / 5.5, 250 / 5.5])
    # a scene without CRS: no m² in the sum, shares of pixels; one without polygons: no polygon counts
    c = ClassAreas((ClassArea(1, "water", 2, None, 100.0),), "none")
    s = sum_class_areas([a, c])
    assert s is not None and s.method == "none" and s.area_m2 is None and s.polygon_count is None
    assert [(r.pixels, r.area_m2, r.percent) for r in s.rows] == [
        (5, None, pytest.approx(500 / 6)),
        (1, None, pytest.approx(100 / 6)),
    ]
    assert sum_class_areas([]) is None


# ---------------------------------------------------------------- geopsp predict


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "m.safetensors"
    args = ["model", "create", "--preset", "fast", "--encoder", "resnet18", "--bands", "3", "--classes", "4"]
    code, _, err = run_cli(*args, "--tile", "64", "--overlap", "8", "--out", path)
    assert code == 0, err
    return path


def check_against_raster(table: dict, classes: Path, polygons: Path | None = None) -> None:
    """The summary's (or CSV's) rows equal a bincount of the class raster times its pixel area."""
    with rasterio.open(classes) as ds:
        arr, nodata, (px, py) = ds.read(1), ds.nodata, ds.res
    counts = np.bincount(arr.ravel(), minlength=int(nodata) + 1)
    valid = counts.sum() - counts[int(nodata)]
    per_class = None
    if polygons is not None:
        import pyogrio

        per_class = pyogrio.read_dataframe(polygons, layer=polygons.stem)["class_id"].value_counts().to_dict()
    for row in table["rows"]:
        cid = int(row["class_id"])
        assert int(row["pixels"]) == counts[cid]
        assert float(row["area_m2"]) == pytest.approx(counts[cid] * px * py, abs=1e-3)
        assert float(row["percent"]) == pytest.approx(100 * counts[cid] / valid, abs=1e-4)
        if per_class is not None:
            assert int(row["polygon_count"]) == per_class.get(cid, 0)
    assert table["totals"]["nodata_pixels"] == counts[int(nodata)]


def test_predict_writes_lists_summarizes_and_prints_the_table(bundle, tmp_path):
    from geopsp.testing import small_scene

    scene, _ = small_scene(tmp_path, nodata_edge=True, seed=7)
    out = tmp_path / "out"
    code, stdout, stderr = run_cli("predict", scene, "-m", bundle, "-o", out, "--vector", "--no-progress")
    assert code == 0, stderr
    stem = scene.stem
    csv_path = out / f"{stem}_class_areas.csv"
    assert str(csv_path) in stdout.splitlines()  # listed with the other outputs, one per line
    assert all(Path(line).is_file() for line in stdout.splitlines())
    summary = json.loads((out / f"{stem}_summary.json").read_text())
    assert summary["outputs"]["class_areas"] == str(csv_path)
    table = summary["class_areas"]
    assert table["method"] == "planar" and len(table["rows"]) == 4
    polygons = out / f"{stem}_polygons.gpkg"
    check_against_raster(table, out / f"{stem}_classes.tif", polygons)
    rows = read_csv(csv_path)
    assert list(rows[0]) == list(CSV_COLUMNS)
    check_against_raster({"rows": rows, "totals": table["totals"]}, out / f"{stem}_classes.tif", polygons)
    # the table went to stderr, stdout stays the file list
    assert f"Class areas: {scene.name}" in stderr and "class_0" in stderr and "class_0" not in stdout

    code, stdout, stderr = run_cli("-q", "predict", scene, "-m", bundle, "-o", out, "--overwrite", "--no-progress")
    assert code == 0, stderr
    assert str(csv_path) in stdout.splitlines() and "Class areas" not in stderr
    # without --vector the counts are empty cells
    assert {row["polygon_count"] for row in read_csv(csv_path)} == {""}


def test_predict_counts_the_polygons_of_another_format_too(bundle, tmp_path):
    import pyogrio

    from geopsp.testing import small_scene

    scene, _ = small_scene(tmp_path, seed=9)
    out = tmp_path / "out"
    code, _, stderr = run_cli(
        "-q", "predict", scene, "-m", bundle, "-o", out, "--vector", "--set", "vectorize.format=fgb"
    )
    assert code == 0, stderr
    written = pyogrio.read_dataframe(out / f"{scene.stem}_polygons.fgb")["class_id"].value_counts().to_dict()
    rows = read_csv(out / f"{scene.stem}_class_areas.csv")
    assert {int(r["class_id"]): int(r["polygon_count"]) for r in rows} == {c: written.get(c, 0) for c in range(4)}


def test_an_existing_table_stops_a_run_without_overwrite(bundle, tmp_path):
    from geopsp.testing import small_scene

    scene, _ = small_scene(tmp_path, seed=8)
    out = tmp_path / "out"
    out.mkdir()
    theirs = out / f"{scene.stem}_class_areas.csv"
    theirs.write_text("theirs\n")
    code, stdout, stderr = run_cli("predict", scene, "-m", bundle, "-o", out, "--no-progress")
    assert code == 1 and stdout == ""
    assert f"{theirs}: already exists; pass --overwrite" in stderr
    assert theirs.read_text() == "theirs\n" and not (out / f"{scene.stem}_classes.tif").exists()


# ---------------------------------------------------------------- geopsp batch


@pytest.mark.dask
@pytest.mark.timeout(300)
def test_batch_adds_up_finished_scenes_also_those_of_an_earlier_run(bundle, tmp_path):
    pytest.importorskip("distributed")
    from geopsp.batch import run_batch
    from geopsp.batch.areas import CLASS_AREAS_NAME
    from geopsp.config.schema import BatchConfig, GeopspConfig, PredictConfig
    from geopsp.synthetic import make_scene

    scenes = tmp_path / "scenes"
    scenes.mkdir()
    for name, (w, h, seed) in {"a.tif": (96, 80, 1), "big.tif": (600, 150, 7), "c.tif": (70, 90, 3)}.items():
        make_scene(scenes / name, width=w, height=h, bands=3, seed=seed)
    out = tmp_path / "out"
    cfg = GeopspConfig(predict=PredictConfig(vector=True), batch=BatchConfig(strip_pixels=65_536, n_workers=1))
    first = run_batch([scenes / "a.tif", scenes / "big.tif"], bundle, out, config=cfg)
    assert first.ok and next(r for r in first.records if r.id == "big.tif").strips == 2

    def scene_table(stem):
        table = json.loads((out / f"{stem}_summary.json").read_text())["class_areas"]
        # each scene's own table: its stitched (or whole) raster, its polygons (counted after the vectorize task)
        check_against_raster(table, out / f"{stem}_classes.tif", out / f"{stem}_polygons.gpkg")
        assert read_csv(out / f"{stem}_class_areas.csv") == [
            {k: "" if v is None else str(v) for k, v in row.items()} | csv_numbers(row) for row in table["rows"]
        ]
        return ClassAreas.from_dict(table)

    def csv_numbers(row):
        return {"area_m2": f"{row['area_m2']:.3f}", "percent": f"{row['percent']:.4f}"}

    def assert_batch_table(report, stems):
        expected = sum_class_areas([scene_table(s) for s in stems])
        assert report.class_areas is not None and report.class_areas.path == str(out / CLASS_AREAS_NAME)
        assert report.class_areas.table == expected and expected.scenes == len(stems)
        rows = read_csv(out / CLASS_AREAS_NAME)
        assert [int(r["pixels"]) for r in rows] == [r.pixels for r in expected.rows]
        assert [int(r["polygon_count"]) for r in rows] == [r.polygon_count for r in expected.rows]
        assert sum(float(r["percent"]) for r in rows) == pytest.approx(100.0, abs=1e-3)

    assert_batch_table(first, ["a", "big"])
    # A resumed batch computes only the new scene and adds up the earlier ones from their summaries.
    again = run_batch([scenes], bundle, out, config=cfg)
    assert (again.done, again.skipped) == (1, 2)
    assert_batch_table(again, ["a", "big", "c"])
