"""geopsp.preview: decimated RGB stretch with classes blended over it, legend, CLI."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner
from PIL import Image

from geopsp.classes import ClassInfo, ClassTable
from geopsp.errors import ConfigError, InputRasterError, OutputExistsError
from geopsp.preview import render_preview, stretch


def load(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


TRANSFORM = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 5_600_000.0)
CLASSES = ClassTable((ClassInfo(0, "field", (250, 200, 0)), ClassInfo(1, "water", (0, 0, 255))))


def write(path, data, *, nodata=None, transform=TRANSFORM, crs="EPSG:32633", colormap=None):
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    with rasterio.open(
        path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
        dtype=data.dtype, crs=crs, transform=transform, nodata=nodata,
    ) as dst:  # fmt: skip
        dst.write(data)
        if colormap:
            dst.write_colormap(1, colormap)
    return path


@pytest.fixture
def pair(tmp_path):
    h, w = 300, 400
    yy, xx = np.mgrid[0:h, 0:w]
    # Band 1 bright on the left, band 2 on the right, band 3 a ramp; uint16 reflectances.
    scene = np.stack([(xx < 200) * 3000 + 500, (xx >= 200) * 3000 + 500, yy * 10 + 100]).astype(np.uint16)
    classes = (yy > 150).astype(np.uint8)  # top: field, bottom: water
    classes[:20, :20] = 255
    s = write(tmp_path / "scene.tif", scene)
    c = write(tmp_path / "classes.tif", classes, nodata=255, colormap={0: (250, 200, 0, 255), 1: (0, 0, 255, 255)})
    return s, c


def test_stretch_maps_percentiles():
    band = np.arange(101, dtype=np.float64)
    out = stretch(band)
    assert out[2] == 0 and out[98] == 255 and out.dtype == np.uint8
    assert stretch(np.full(5, np.nan)).tolist() == [0] * 5
    assert stretch(np.ones((2, 2))).max() == 0


def test_render_preview_blends_classes_and_adds_legend(pair, tmp_path):
    scene, classes = pair
    out = render_preview(scene, classes, tmp_path / "q.png", max_size=200)
    img = load(out).astype(int)
    assert img.shape[0] == 150 and img.shape[1] > 200  # 400 x 300 scene decimated to 200 x 150, legend right
    # Water (blue) blended over the bottom, field (yellow) over the top.
    bottom = img[120, 50]
    top = img[40, 100]
    assert bottom[2] > bottom[0] and bottom[2] > 120
    assert top[0] > top[2] and top[1] > top[2]
    # Legend: white panel with the class colours as swatches.
    legend = img[:, 200:]
    assert (legend == [250, 200, 0]).all(axis=-1).any()
    assert (legend == [0, 0, 255]).all(axis=-1).any()


def test_alpha_zero_shows_the_scene_and_band_choice(pair, tmp_path):
    scene, classes = pair
    a = load(render_preview(scene, classes, tmp_path / "a.png", alpha=0.0, legend=False))
    assert a.shape == (300, 400, 3)
    # Default bands 1,2,3 -> red bright on the left half, green on the right.
    assert a[200, 50, 0] == 255 and a[200, 50, 1] == 0
    assert a[200, 350, 1] == 255 and a[200, 350, 0] == 0
    b = load(render_preview(scene, classes, tmp_path / "b.png", alpha=0.0, legend=False, bands=(2, 1, 3)))
    assert b[200, 50, 1] == 255 and b[200, 50, 0] == 0
    grey = load(render_preview(scene, classes, tmp_path / "g.png", alpha=0.0, legend=False, bands=(3,)))
    assert (grey[..., 0] == grey[..., 1]).all()


def test_outlines_and_classes_argument(pair, tmp_path):
    scene, classes = pair
    table = ClassTable((ClassInfo(0, "meadow", (0, 255, 0)), ClassInfo(1, "lake", (255, 0, 255))))
    img = load(
        render_preview(scene, classes, tmp_path / "o.png", alpha=1.0, outlines=True, classes=table, legend=False)
    )
    assert (img[50, 100] == [0, 255, 0]).all()
    assert (img[250, 100] == [255, 0, 255]).all()
    assert (img[151, 100] == [30, 30, 30]).all()  # the class border


def test_nodata_and_footprint(tmp_path):
    scene = np.full((3, 50, 60), 100, dtype=np.uint8)
    scene[:, :, :10] = 0
    s = write(tmp_path / "s.tif", scene, nodata=0)
    c = write(tmp_path / "c.tif", np.zeros((50, 60), np.uint8), nodata=255)
    img = load(render_preview(s, c, tmp_path / "n.png", alpha=0.0, legend=False))
    assert (img[:, :10] == 255).all()  # outside the scene's footprint: white


def test_class_raster_on_another_grid_is_reprojected(pair, tmp_path):
    scene, _ = pair
    coarse = np.zeros((30, 40), np.uint8)
    coarse[15:] = 1
    c = write(tmp_path / "coarse.tif", coarse, transform=Affine(100.0, 0, 500_000.0, 0, -100.0, 5_600_000.0))
    img = load(render_preview(scene, c, tmp_path / "r.png", alpha=1.0, classes=CLASSES, legend=False))
    assert (img[250, 100] == [0, 0, 255]).all()
    assert (img[50, 100] == [250, 200, 0]).all()


def test_errors(pair, tmp_path):
    scene, classes = pair
    out = render_preview(scene, classes, tmp_path / "e.png")
    with pytest.raises(OutputExistsError):
        render_preview(scene, classes, out)
    with pytest.raises(ConfigError, match="alpha"):
        render_preview(scene, classes, tmp_path / "x.png", alpha=2)
    with pytest.raises(InputRasterError, match="band"):
        render_preview(scene, classes, tmp_path / "x.png", bands=(4, 2, 1))
    with pytest.raises(InputRasterError):
        render_preview(tmp_path / "missing.tif", classes, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_cli_preview(pair, tmp_path):
    from geopsp.cli.main import cli

    scene, classes = pair
    out = tmp_path / "cli.png"
    args = ["preview", str(scene), str(classes), "--out", str(out), "--bands", "3,2,1", "--outlines"]
    result = CliRunner().invoke(cli, [*args, "--max-size", "100", "--no-legend"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(out)
    assert load(out).shape[0] == 75
    bad = CliRunner().invoke(
        cli, ["preview", str(scene), str(classes), "--out", str(tmp_path / "b.png"), "--bands", "x"]
    )
    assert bad.exit_code == 2


BUILDINGS = ClassTable((ClassInfo(0, "background", (0, 0, 0)), ClassInfo(1, "building", (255, 0, 0))))


@pytest.fixture
def buildings(tmp_path):
    """A grey-ramp scene with one building (class 1) in a black 'background' (class 0)."""
    h, w = 120, 160
    yy, xx = np.mgrid[0:h, 0:w]
    scene = np.stack([xx + 40, yy + 60, (xx + yy) // 2 + 50]).astype(np.uint8)
    ids = np.zeros((h, w), np.uint8)
    ids[40:80, 60:100] = 1
    return write(tmp_path / "town.tif", scene), write(tmp_path / "town_classes.tif", ids, nodata=255)


def test_background_class_is_not_painted_so_the_scene_shows_through(buildings, tmp_path):
    scene, classes = buildings
    kw = {"classes": BUILDINGS, "legend": False}
    plain = load(render_preview(scene, classes, tmp_path / "plain.png", alpha=0.0, **kw)).astype(int)
    img = load(render_preview(scene, classes, tmp_path / "b.png", alpha=0.45, **kw)).astype(int)
    outside = np.ones(plain.shape[:2], bool)
    outside[40:80, 60:100] = False
    assert (img[outside] == plain[outside]).all()  # "background" (black) darkens nothing
    inside = img[40:80, 60:100]
    expected = np.round(plain[40:80, 60:100] * 0.55 + np.array([255, 0, 0]) * 0.45)
    assert np.abs(inside - expected).max() <= 1  # the building is blended as before
    # background=[] paints every class: the black background darkens the scene
    dark = load(render_preview(scene, classes, tmp_path / "d.png", alpha=0.45, background=[], **kw)).astype(int)
    assert np.abs(dark[outside] - np.round(plain[outside] * 0.55)).max() <= 1
    # other classes by name or id; the default rule goes by name
    only = load(render_preview(scene, classes, tmp_path / "o.png", alpha=0.45, background=["Building", 0], **kw))
    assert (only.astype(int) == plain).all()
    renamed = ClassTable((ClassInfo(0, "No-Data", (0, 0, 0)), ClassInfo(1, "roof", (255, 0, 0))))
    img2 = load(render_preview(scene, classes, tmp_path / "r.png", classes=renamed, legend=False)).astype(int)
    assert (img2[outside] == plain[outside]).all()
    with pytest.raises(ConfigError, match=r"background class 'shed'.*0 \(background\), 1 \(building\)"):
        render_preview(scene, classes, tmp_path / "x.png", background=["shed"], **kw)
    assert not (tmp_path / "x.png").exists()


def test_background_ids_of_a_class_table():
    table = ClassTable.from_names(["Background", "building", "no_data", "background_trees", "Unlabelled", "VOID"])
    assert table.background_ids == [0, 2, 4, 5]
    assert CLASSES.background_ids == []


def _legend_rows(img: np.ndarray, x_from: int, table: ClassTable) -> list[dict]:
    """Find each class's swatch (its exact colour) in the legend, and the ink right of it in its row."""
    legend = img[:, x_from:].astype(int)
    rows = []
    for c in table:
        ys, xs = np.nonzero((legend == c.color).all(axis=-1))
        assert ys.size, f"no swatch for {c.name}"
        y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
        assert ys.size == (y1 - y0 + 1) * (x1 - x0 + 1), f"{c.name}: its colour is not one filled box"
        band = legend[y0 : y1 + 1]
        ink = (band < 150).all(axis=-1).any(axis=0)  # dark text pixels, per column
        ink[: x1 + 2] = False  # the swatch and its outline
        cols = np.flatnonzero(ink)
        steps = np.diff(cols)
        gaps = (steps[steps > 1] - 1).tolist()  # blank columns between runs of ink
        rows.append({"box": (y0, y1, x0, x1), "ink": cols, "gaps": gaps})
    return rows


def test_legend_lists_every_class_with_readable_gaps_and_fits(pair, tmp_path):
    scene, classes = pair  # the raster holds only classes 0 and 1
    table = ClassTable(
        (
            ClassInfo(0, "field", (250, 200, 0)),
            ClassInfo(1, "water", (0, 0, 255)),
            ClassInfo(2, "forest", (0, 200, 0)),
            ClassInfo(7, "quarry", (255, 0, 255)),
            ClassInfo(12, "settlement_and_industrial_areas", (0, 255, 255)),
        )
    )
    img = load(render_preview(scene, classes, tmp_path / "l.png", classes=table, alpha=0.0))
    rows = _legend_rows(img, 400, table)
    assert len(rows) == len(table)  # one row per class of the table, not only the two present
    tops = [r["box"][0] for r in rows]
    assert tops == sorted(tops) and len(set(np.diff(tops))) == 1  # evenly stacked, table order
    side = rows[0]["box"][1] - rows[0]["box"][0] + 1
    for r in rows:
        y0, y1, x0, x1 = r["box"]
        assert y1 - y0 == x1 - x0  # square swatches
        assert r["ink"].size and r["ink"][0] - x1 >= 0.4 * side  # text starts well clear of the swatch
        assert r["gaps"] and max(r["gaps"]) >= 0.4 * side  # "7  quarry", not "7quarry"
    assert {r["box"][2] for r in rows} == {rows[0]["box"][2]}  # swatches in one column
    # ids right-aligned in their column: every name starts at one x, after the widest gap of its row
    name_starts = {int(r["ink"][np.argmax(np.diff(r["ink"])) + 1]) for r in rows}
    assert max(name_starts) - min(name_starts) <= 1
    # the panel is sized to its text: the longest name ends before the right edge, with a margin
    right = max(int(r["ink"][-1]) for r in rows) + 400
    assert img.shape[1] - 1 - right >= 0.5 * side
    assert (img[:, -3:] == 255).all()


def test_legend_grows_with_the_image_and_marks_background_classes(buildings, tmp_path):
    scene, classes = buildings
    big_scene = tmp_path / "big.tif"
    with rasterio.open(scene) as src:
        data = src.read()
    write(big_scene, np.repeat(np.repeat(data, 8, axis=1), 8, axis=2))  # 1280 x 960
    small = load(render_preview(scene, classes, tmp_path / "s.png", classes=BUILDINGS))
    large = load(render_preview(big_scene, classes, tmp_path / "g.png", classes=BUILDINGS, max_size=1280))
    (s_building,) = _legend_rows(small, 160, ClassTable(BUILDINGS.classes[1:]))
    (g_building,) = _legend_rows(large, 1280, ClassTable(BUILDINGS.classes[1:]))
    s_side = s_building["box"][1] - s_building["box"][0]
    g_side = g_building["box"][1] - g_building["box"][0]
    assert g_side > s_side and large.shape[1] - 1280 > small.shape[1] - 160
    # the background class is listed too, with an empty swatch (no black box: it is not painted)
    legend = large[:, 1280:].astype(int)
    assert not (legend == [0, 0, 0]).all(axis=-1).any()
    above = legend[: g_building["box"][0] - 2, g_building["box"][2] : g_building["box"][3] + 1]
    assert (above < 150).all(axis=-1).any()  # the empty swatch's outline, one row up


def test_cli_preview_background_option(buildings, tmp_path):
    from geopsp.cli.main import cli

    scene, classes = buildings
    table = tmp_path / "classes.yaml"
    table.write_text("- {id: 0, name: background, color: '#000000'}\n- {id: 1, name: building, color: '#ff0000'}\n")
    base = ["preview", str(scene), str(classes), "--classes", str(table), "--no-legend"]
    runs = {}
    for name, extra in {"default": [], "none": ["--background", "none"], "roof": ["--background", "1"]}.items():
        out = tmp_path / f"{name}.png"
        result = CliRunner().invoke(cli, [*base, "--out", str(out), *extra])
        assert result.exit_code == 0, result.output
        runs[name] = load(out).astype(int)
    corner = (slice(0, 30), slice(0, 30))  # background only
    assert (runs["none"][corner].sum() < runs["default"][corner].sum()) and (runs["roof"] != runs["default"]).any()
    bad = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "x.png"), "--background", "shed"])
    assert bad.exit_code == 1 and "background class 'shed'" in str(bad.exception or bad.output)
