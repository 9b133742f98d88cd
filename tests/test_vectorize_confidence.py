"""geopsp.vectorize with QA rasters: conf_mean/conf_min/disagree_frac per polygon, --min-confidence, styles.

Every number is checked against NumPy over the polygon's own pixels (the output polygons
burnt back onto the grid), on real GeoTIFFs written by geopsp's writer.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections import deque
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from affine import Affine
from rasterio.features import rasterize

from geopsp.classes import ClassInfo, ClassTable
from geopsp.config.schema import PredictConfig, VectorizeConfig
from geopsp.encoding import encode_probability
from geopsp.errors import ConfigError, InputRasterError
from geopsp.io.raster import write_class_raster
from geopsp.testing import run_cli
from geopsp.vectorize import CONFIDENCE_FIELDS, FIELDS, vectorize

NODATA = 255
CLASSES = ClassTable(
    (
        ClassInfo(0, "cropland", (229, 201, 92)),
        ClassInfo(1, "forest", (34, 110, 52)),
        ClassInfo(2, "water", (43, 116, 204)),
        ClassInfo(3, "road", (72, 72, 72)),
    )
)
TRANSFORM = Affine(2.0, 0.0, 500_000.0, 0.0, -2.0, 5_600_000.0)
CRS = "EPSG:32633"
H, W = 83, 67


def cfg(**kw: object) -> VectorizeConfig:
    return VectorizeConfig.model_validate({"workers": 1, **kw})


def scene_arrays(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Classes (a tall field across every strip, blobs, specks, a nodata corner), probabilities, disagreement."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    a = np.zeros((H, W), dtype=np.uint8)
    for _ in range(8):
        cy, cx = rng.integers(0, H), rng.integers(0, W)
        ry, rx = rng.integers(4, 18, size=2)
        a[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = rng.integers(1, 3)
    a[5 : H - 5, 30:36] = 2  # crosses every strip of 16 rows
    a[rng.random((H, W)) < 0.01] = 3
    a[:9, :11] = NODATA
    p = rng.uniform(0.3, 1.0, size=(H, W)).astype(np.float32)
    frac = rng.choice([0.0, 0.0, 0.0, 0.25, 0.5, 1.0], size=(H, W))
    dis = encode_probability(frac, invalid=a == NODATA)
    return a, p, dis


def write_set(
    folder: Path, a: np.ndarray, p: np.ndarray, dis: np.ndarray | None = None, *, stem: str = "s"
) -> tuple[Path, Path, Path | None]:
    """Write the class raster and its probability raster (geopsp's writer) and a disagreement raster."""
    classes = write_class_raster(
        folder / f"{stem}_classes.tif",
        a,
        crs=CRS,
        transform=TRANSFORM,
        classes=CLASSES,
        nodata=NODATA,
        probability=p,
        probability_path=folder / f"{stem}_probability.tif",
    )
    dis_path = None
    if dis is not None:
        dis_path = write_uint8(folder / f"{stem}_disagreement.tif", dis)
    return classes, folder / f"{stem}_probability.tif", dis_path


def write_uint8(path: Path, arr: np.ndarray, *, transform: Affine = TRANSFORM, crs: str | None = CRS) -> Path:
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=arr.shape[1],
        height=arr.shape[0],
        count=1,
        dtype="uint8",
        crs=crs,
        transform=transform,
        nodata=0,
    ) as dst:
        dst.write(arr, 1)
    return path


def stored(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def read(path: Path):
    return pyogrio.read_dataframe(path, layer=Path(path).stem)


def burn_index(df) -> np.ndarray:
    """Index of the polygon covering each pixel (-1: none)."""
    return rasterize(
        zip(df.geometry, range(len(df)), strict=True), out_shape=(H, W), transform=TRANSFORM, fill=-1, dtype="int32"
    )


def components(a: np.ndarray, connectivity: int = 4) -> np.ndarray:
    """Label connected regions of equal class (nodata: -1) by flood fill."""
    labels = np.full(a.shape, -1, dtype=np.int64)
    steps = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    if connectivity == 8:
        steps += [(-1, -1), (-1, 1), (1, -1), (1, 1)]
    n = 0
    for r0, c0 in zip(*np.nonzero(a != NODATA), strict=True):
        if labels[r0, c0] >= 0:
            continue
        labels[r0, c0] = n
        queue = deque([(r0, c0)])
        while queue:
            r, c = queue.popleft()
            for dr, dc in steps:
                rr, cc = r + dr, c + dc
                if 0 <= rr < a.shape[0] and 0 <= cc < a.shape[1] and labels[rr, cc] < 0 and a[rr, cc] == a[r, c]:
                    labels[rr, cc] = n
                    queue.append((rr, cc))
        n += 1
    return labels


def assert_coverage(df, valid_area: float) -> None:
    """No gaps, no overlaps: the polygons' areas add up to their union, which covers the valid pixels."""
    geoms = np.asarray(df.geometry.values)
    assert shapely.is_valid(geoms).all()
    assert shapely.union_all(geoms).area == pytest.approx(valid_area)
    assert shapely.area(geoms).sum() == pytest.approx(valid_area)


def assert_stats_match(df, conf: np.ndarray, dis: np.ndarray | None) -> None:
    """conf_mean/conf_min/disagree_frac of every polygon equal NumPy over the pixels it covers."""
    index = burn_index(df)
    for i, row in enumerate(df.itertuples()):
        mask = index == i
        assert mask.any()
        c = conf[mask]
        c = c[c != 0] / 255.0
        assert row.conf_mean == pytest.approx(c.mean(), abs=1e-12)
        assert row.conf_min == pytest.approx(c.min(), abs=1e-12)
        if dis is not None:
            d = dis[mask]
            d = d[d != 0]
            assert row.disagree_frac == pytest.approx((d >= 2).mean(), abs=1e-12)


@pytest.fixture(scope="module")
def qa_set(tmp_path_factory: pytest.TempPathFactory):
    a, p, dis = scene_arrays()
    classes, prob, dis_path = write_set(tmp_path_factory.mktemp("qa"), a, p, dis)
    return a, classes, prob, dis_path


def test_attributes_equal_numpy_over_each_region(qa_set, tmp_path):
    a, classes, prob, dis = qa_set
    out = vectorize(classes, tmp_path / "p.gpkg", config=cfg(), confidence=prob, disagreement=dis)
    df = read(out)
    assert list(df.columns) == [*FIELDS, *CONFIDENCE_FIELDS, "geometry"]
    # one polygon per connected region, exactly
    labels = components(a)
    assert len(df) == labels.max() + 1
    index = burn_index(df)
    for i in range(len(df)):
        assert len(np.unique(labels[index == i])) == 1
    conf = stored(prob)
    assert ((conf == 0) == (a == NODATA)).all()  # the writer's nodata is the class raster's
    assert_stats_match(df, conf, stored(dis))
    assert df.disagree_frac.between(0.0, 1.0).all() and (df.disagree_frac > 0).any()


def test_without_qa_rasters_the_layer_is_unchanged(qa_set, tmp_path):
    _, classes, _, _ = qa_set
    assert list(read(vectorize(classes, tmp_path / "plain.gpkg", config=cfg())).columns) == [*FIELDS, "geometry"]


def _attribute_rows(df, *, area: bool = True) -> list[tuple]:
    return sorted(
        (int(r.class_id), round(r.area_m2, 6) if area else 0.0, r.conf_mean, r.conf_min, r.disagree_frac)
        for r in df.itertuples()
    )


@pytest.mark.parametrize(
    ("block_rows", "workers", "extra"),
    [(16, 1, {}), (17, 2, {}), (16, 1, {"connectivity": 8}), (23, 1, {"simplify": 3.0})],
)
def test_strips_give_the_numbers_of_one_strip(qa_set, tmp_path, block_rows, workers, extra):
    _, classes, prob, dis = qa_set
    one = read(vectorize(classes, tmp_path / "one.gpkg", config=cfg(**extra), confidence=prob, disagreement=dis))
    many = read(
        vectorize(
            classes,
            tmp_path / "many.gpkg",
            config=cfg(block_rows=block_rows, workers=workers, **extra),
            confidence=prob,
            disagreement=dis,
        )
    )
    # simplified areas depend on the strips a little; the counts come from the exact pieces
    exact = "simplify" not in extra
    assert _attribute_rows(one, area=exact) == _attribute_rows(many, area=exact)
    if exact:
        assert_stats_match(many, stored(prob), stored(dis))


def test_merged_and_filled_regions_count_the_pixels_they_absorb(qa_set, tmp_path):
    a, classes, prob, dis = qa_set
    for name, options in {"sieve": {"sieve_px": 12}, "holes": {"fill_holes_m2": 200.0}}.items():
        df = read(
            vectorize(
                classes,
                tmp_path / f"{name}.gpkg",
                config=cfg(block_rows=16, **options),
                confidence=prob,
                disagreement=dis,
            )
        )
        assert_coverage(df, (a != NODATA).sum() * 4.0)
        assert_stats_match(df, stored(prob), stored(dis))


def island_scene() -> tuple[np.ndarray, np.ndarray]:
    """Forest | cropland, a low-confidence water island in the forest, and a low-confidence road alone in nodata."""
    a = np.ones((H, W), dtype=np.uint8)
    a[:, 40:] = 0
    a[20:30, 10:22] = 2  # island: inside the forest only
    a[50:56, 36:40] = 2  # 6 rows touching cropland (right) and forest (left, top, bottom: longer)
    a[70:, 50:] = NODATA
    a[74:79, 55:60] = 3  # surrounded by nodata: no neighbour
    p = np.full((H, W), 0.9, dtype=np.float32)
    p[a == 2] = 0.3
    p[a == 3] = 0.2
    p[:, 40:] = 0.8
    p[74:79, 55:60] = 0.2
    return a, p


def test_min_confidence_merges_unsure_regions_into_the_longest_border_neighbour(tmp_path):
    a, p = island_scene()
    classes, prob, _ = write_set(tmp_path, a, p, stem="island")
    plain = read(vectorize(classes, tmp_path / "plain.gpkg", config=cfg(block_rows=16), confidence=prob))
    assert sorted(plain.class_id) == [0, 1, 2, 2, 3]
    df = read(
        vectorize(classes, tmp_path / "merged.gpkg", config=cfg(block_rows=16, min_confidence=0.5), confidence=prob)
    )
    assert sorted(df.class_id) == [0, 1]  # both islands joined the forest; the lone road was dropped
    forest = df[df.class_id == 1].geometry.iloc[0]
    assert len(forest.interiors) == 0
    assert forest.area == pytest.approx(((a == 1) | (a == 2)).sum() * 4.0)
    assert_coverage(df, ((a != NODATA) & (a != 3)).sum() * 4.0)
    # the forest's numbers include the island's pixels
    assert_stats_match(df, stored(prob), None)
    conf = stored(prob)
    assert df[df.class_id == 1].conf_min.iloc[0] == pytest.approx(conf[a == 2].min() / 255)
    # a threshold below every region keeps the layer as it was
    kept = read(vectorize(classes, tmp_path / "kept.gpkg", config=cfg(min_confidence=0.1), confidence=prob))
    assert sorted(kept.class_id) == sorted(plain.class_id)


def test_min_confidence_and_the_confidence_style_need_the_confidence_raster(qa_set, tmp_path):
    _, classes, _, _ = qa_set
    with pytest.raises(ConfigError, match=r"vectorize\.min_confidence: .*--confidence"):
        vectorize(classes, tmp_path / "x.gpkg", config=cfg(min_confidence=0.5))
    with pytest.raises(ConfigError, match=r"vectorize\.style: .*--confidence"):
        vectorize(classes, tmp_path / "x.gpkg", config=cfg(style="confidence"))
    assert not list(tmp_path.iterdir())


def test_a_qa_raster_on_another_grid_is_refused_naming_both_files(qa_set, tmp_path):
    a, classes, _, _ = qa_set
    ok = np.ones(a.shape, dtype=np.uint8)
    bad = {
        "size": write_uint8(tmp_path / "size.tif", ok[:-1]),
        "transform": write_uint8(tmp_path / "shift.tif", ok, transform=TRANSFORM @ Affine.translation(1, 0)),
        "CRS": write_uint8(tmp_path / "crs.tif", ok, crs="EPSG:32634"),
    }
    for what, path in bad.items():
        for key in ("confidence", "disagreement"):
            with pytest.raises(InputRasterError) as info:
                vectorize(classes, tmp_path / "x.gpkg", config=cfg(), **{key: path})
            message = str(info.value)
            assert "\n" not in message
            assert str(path) in message and str(classes) in message and key in message
            assert (what if what != "size" else "67 x 82 px") in message
    floats = tmp_path / "float.tif"
    with rasterio.open(
        floats, "w", driver="GTiff", width=W, height=H, count=1, dtype="float32", crs=CRS, transform=TRANSFORM
    ) as dst:
        dst.write(np.ones((H, W), dtype=np.float32), 1)
    with pytest.raises(InputRasterError, match="float32, not geopsp's uint8"):
        vectorize(classes, tmp_path / "x.gpkg", config=cfg(), confidence=floats)
    with pytest.raises(InputRasterError, match="is the class raster itself"):
        vectorize(classes, tmp_path / "x.gpkg", config=cfg(), confidence=classes)
    with pytest.raises(InputRasterError, match="confidence raster not found"):
        vectorize(classes, tmp_path / "x.gpkg", config=cfg(), confidence=tmp_path / "missing.tif")


def test_shapefile_names_and_empty_layers(qa_set, tmp_path):
    _, classes, prob, dis = qa_set
    shp = read(vectorize(classes, tmp_path / "p.shp", config=cfg(), confidence=prob, disagreement=dis))
    assert [c for c in shp.columns if len(c) > 10] == []
    assert {"perim_m", "conf_mean", "conf_min", "dis_frac"} <= set(shp.columns)
    # all nodata: an empty layer that still has the columns
    empty = np.full((H, W), NODATA, dtype=np.uint8)
    e_classes, e_prob, _ = write_set(tmp_path, empty, np.zeros((H, W), np.float32), stem="empty")
    info = pyogrio.read_info(
        vectorize(e_classes, tmp_path / "e.gpkg", config=cfg(sieve_px=4), confidence=e_prob), layer="e"
    )
    assert info["features"] == 0
    assert list(info["fields"]) == [*FIELDS, "conf_mean", "conf_min"]


def test_cli_end_to_end_with_styles(qa_set, tmp_path):
    import xml.etree.ElementTree as ET

    a, classes, prob, dis = qa_set
    out = tmp_path / "cli.gpkg"
    code, stdout, err = run_cli(
        "vectorize", classes, "--out", out, "--confidence", prob, "--disagreement", dis,
        "--min-confidence", "0.6", "--style", "confidence", "--block-rows", "16", "--workers", "1", "--no-progress",
        "--simplify", "2",
    )  # fmt: skip
    assert code == 0, err
    assert stdout.split() == [str(out), str(out.with_suffix(".qml"))]  # every file written, OUT first
    df = read(out)
    plain = read(vectorize(classes, tmp_path / "plain.gpkg", config=cfg(), confidence=prob))
    assert (plain.conf_mean < 0.6).any() and len(df) < len(plain)
    # simplified as one coverage after merging: still edge-matched, no gaps or overlaps
    assert shapely.coverage_is_valid(np.asarray(df.geometry.values))
    assert shapely.union_all(df.geometry.values).area == pytest.approx((a != NODATA).sum() * 4.0, rel=0.01)
    assert df.disagree_frac.notna().all()
    with sqlite3.connect(out) as con:
        rows = con.execute("SELECT styleName, useAsDefault, styleQML FROM layer_styles ORDER BY id").fetchall()
    assert [(r[0], bool(r[1])) for r in rows] == [("cli", False), ("confidence", True)]
    assert 'type="categorizedSymbol"' in rows[0][2]
    sidecar = ET.fromstring(out.with_suffix(".qml").read_text(encoding="utf-8").split("\n", 1)[1])
    renderer = sidecar.find("renderer-v2")
    assert renderer is not None and renderer.get("type") == "graduatedSymbol" and renderer.get("attr") == "conf_mean"
    bounds = [(float(r.get("lower")), float(r.get("upper"))) for r in renderer.findall("ranges/range")]
    assert bounds[0][0] == 0.0 and bounds[-1][1] == 1.0
    assert all(hi == lo for (_, hi), (lo, _) in itertools.pairwise(bounds))
    # without --confidence: one line saying what to pass
    code, _, err = run_cli("vectorize", classes, "--out", tmp_path / "y.gpkg", "--min-confidence", "0.5")
    assert code == 1
    assert err.strip().startswith("Error:") and "--confidence" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("vectorize", classes, "--out", tmp_path / "y.gpkg", "--min-confidence", "1.5")
    assert code == 2


def stand_in_model():
    """A 3x3-conv stand-in with its metadata: this test checks plumbing (which rasters reach vectorize)."""
    import torch

    from geopsp.model.meta import BundleMeta, ModelSpec, Normalization

    torch.manual_seed(0)
    meta = BundleMeta(
        spec=ModelSpec(in_channels=3, num_classes=4),
        classes=ClassTable.default(4),
        bands=(1, 2, 3),
        band_names=("b0", "b1", "b2"),
        input_dtype="uint8",
        normalization=Normalization.for_dtype("uint8", 3),
        tile_size=64,
        overlap=8,
    )
    return torch.nn.Conv2d(3, 4, 3, padding=1), meta


def test_predict_vectorizes_with_its_own_probability_raster(tmp_path):
    from geopsp import segment_raster
    from geopsp.testing import small_scene

    scene, _ = small_scene(tmp_path, width=71, height=59)
    model = stand_in_model()
    config = PredictConfig.model_validate(
        {"device": "cpu", "amp": False, "runtime": "torch", "vector": True, "probabilities": True}
    )
    res = segment_raster(scene, model, tmp_path / "out", config=config)
    df = read(res.outputs["vector"])
    assert {"conf_mean", "conf_min"} <= set(df.columns) and "disagree_frac" not in df.columns
    assert len(df) > 1
    with rasterio.open(res.outputs["probability"]) as src:
        conf = src.read(1)
        transform = src.transform
    index = rasterize(
        zip(df.geometry, range(len(df)), strict=True), out_shape=conf.shape, transform=transform, fill=-1, dtype="int32"
    )
    for i, row in enumerate(df.itertuples()):
        c = conf[index == i]
        assert row.conf_mean == pytest.approx(c[c != 0].mean() / 255, abs=1e-12)
    # min_confidence without a probability raster is refused before any tile runs
    no_prob = config.model_copy(update={"probabilities": False})
    with pytest.raises(ConfigError, match="--probabilities"):
        segment_raster(scene, model, tmp_path / "out2", config=no_prob, vector_config=cfg(min_confidence=0.5))
    assert not (tmp_path / "out2").exists() or not list((tmp_path / "out2").iterdir())
