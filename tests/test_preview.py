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
