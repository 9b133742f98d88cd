"""COGs assembled from staged compressed tiles: the same file GDAL's COG driver writes, sooner."""

from __future__ import annotations

import itertools
import logging
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from affine import Affine

from geopsp.classes import ClassTable
from geopsp.io.cog import to_cog
from geopsp.io.raster import ClassRasterWriter, write_class_raster
from geopsp.io.tiff_layout import read_layout, read_tiles
from geopsp.testing import random_class_map

CLASSES = ClassTable.from_names(["a", "b", "c", "d", "e"])
NODATA = 255
TRANSFORM = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 5_700_000.0)
# some rasters here have no georeferencing, on purpose
pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


def scene(height: int, width: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Blobby classes with a nodata corner, and probabilities with a nodata band."""
    arr = random_class_map(height, width, n_classes=5, seed=seed, blob_scale=20.0)
    arr[: height // 5, : width // 3] = NODATA
    prob = np.random.default_rng(seed).integers(1, 256, (height, width)).astype(np.uint8)
    prob[height // 2 : height // 2 + 20] = 0
    return arr, prob


def gdal_cog(tmp_path: Path, model: Path, name: str, resampling: str, blocksize: int) -> Path:
    """What the writer wrote before: its pixels and metadata in a tiled GeoTIFF, copied by GDAL's COG driver."""
    stage, out = tmp_path / f"stage-{name}", tmp_path / f"gdal-{name}"
    with rasterio.open(model) as src:
        profile = {**src.profile, "compress": "zstd", "tiled": True, "blockxsize": blocksize, "blockysize": blocksize}
        if src.crs is None:  # as the writer: no geotransform at all, not an identity one
            del profile["crs"], profile["transform"]
        with rasterio.open(stage, "w", **profile) as dst:
            dst.write(src.read())
            if name.startswith("c"):
                dst.write_colormap(1, src.colormap(1))
            dst.update_tags(**src.tags())
            dst.set_band_description(1, src.descriptions[0])
            dst.scales, dst.offsets = src.scales, src.offsets
    rasterio.shutil.copy(
        stage,
        out,
        driver="COG",
        COMPRESS="DEFLATE",
        BLOCKSIZE=blocksize,
        OVERVIEW_RESAMPLING=resampling,
        BIGTIFF="IF_SAFER",
    )
    return out


@pytest.mark.parametrize(
    ("height", "width", "crs", "blocksize"),
    [(1300, 2100, "EPSG:32633", 256), (1001, 1537, None, 256), (700, 600, "EPSG:4326", 512)],
)
def test_the_cog_is_the_file_gdal_writes(tmp_path, height, width, crs, blocksize):
    arr, prob = scene(height, width)
    out, pout = tmp_path / "out" / "c.tif", tmp_path / "out" / "p.tif"
    write_class_raster(
        out,
        arr,
        crs=crs,
        transform=TRANSFORM if crs else None,
        classes=CLASSES,
        nodata=NODATA,
        probability=prob,
        probability_path=pout,
        blocksize=blocksize,
        tags={"RUN": "test"},
    )
    expected_c = gdal_cog(tmp_path, out, "c.tif", "MODE", blocksize)
    expected_p = gdal_cog(tmp_path, pout, "p.tif", "AVERAGE", blocksize)
    # byte for byte: header, directories, every tile (full resolution and overviews), in GDAL's order
    assert out.read_bytes() == expected_c.read_bytes()
    assert pout.read_bytes() == expected_p.read_bytes()
    with rasterio.open(out) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert np.array_equal(ds.read(1), arr)


def test_tiles_have_the_cog_leader_and_trailer_in_order(tmp_path):
    arr, _ = scene(900, 700)
    out = write_class_raster(
        tmp_path / "c.tif", arr, crs="EPSG:32633", transform=TRANSFORM, classes=CLASSES, nodata=NODATA, blocksize=128
    )
    layout = read_layout(out)
    data = out.read_bytes()
    assert b"LAYOUT=IFDS_BEFORE_DATA" in data[:200] and b"KNOWN_INCOMPATIBLE_EDITION=NO" in data[:300]
    runs = [read_tiles(out, ifd) for ifd in layout.ifds]
    firsts = [int(r.offsets.min()) for r in runs]
    assert firsts == sorted(firsts, reverse=True)  # smallest overview first, full resolution last
    assert min(firsts) > layout.header_end - 8  # every directory before any tile
    for run in runs:
        assert (np.diff(run.offsets) > 0).all()  # row by row
        for o, c in zip(run.offsets.tolist(), run.counts.tolist(), strict=True):
            assert struct.unpack("<I", data[o - 4 : o])[0] == c
            assert data[o + c : o + c + 4] == data[o + c - 4 : o + c]


def test_rows_out_of_order_still_give_gdals_overviews(tmp_path):
    arr, _ = scene(600, 500)
    in_order, shuffled = tmp_path / "a" / "c.tif", tmp_path / "b" / "c.tif"
    opts = {"crs": "EPSG:32633", "transform": TRANSFORM, "classes": CLASSES, "nodata": NODATA, "blocksize": 64}
    write_class_raster(in_order, arr, **opts)
    with ClassRasterWriter(shuffled, width=500, height=600, **opts) as w:
        for row in [320, 0, 448, 64, 576, 192, 128, 256, 384, 512]:
            w.write_rows(row, arr[row : row + 64])
    assert shuffled.read_bytes() == in_order.read_bytes()


def test_finish_time_is_reported_apart_from_row_writing(tmp_path):
    arr, prob = scene(300, 300)
    w = ClassRasterWriter(
        tmp_path / "c.tif",
        width=300,
        height=300,
        crs=None,
        transform=None,
        classes=CLASSES,
        nodata=NODATA,
        probability_path=tmp_path / "p.tif",
        blocksize=64,
    )
    w.write_rows(0, arr, prob)
    assert w.write_seconds > 0 and w.finish_seconds == 0
    w.close()
    assert w.finish_seconds > 0


def test_abort_while_the_skeleton_is_written_leaves_nothing(tmp_path):
    arr, prob = scene(2000, 2000)
    w = ClassRasterWriter(
        tmp_path / "c.tif",
        width=2000,
        height=2000,
        crs="EPSG:32633",
        transform=TRANSFORM,
        classes=CLASSES,
        nodata=NODATA,
        probability_path=tmp_path / "p.tif",
        blocksize=256,
    )
    w.write_rows(0, arr[:512], prob[:512])
    w.abort()
    assert not any(t.name == "geopsp-cog-skeleton" for t in threading.enumerate())
    assert list(tmp_path.iterdir()) == []


def test_gdal_copy_of_the_staged_levels_has_the_same_pixels(tmp_path):
    """The fallback (GDAL encodes again) gives the pixels the assembly gives."""
    arr, _ = scene(700, 650)
    out = write_class_raster(
        tmp_path / "c.tif", arr, crs="EPSG:32633", transform=TRANSFORM, classes=CLASSES, nodata=NODATA, blocksize=128
    )
    levels = []
    with rasterio.open(out) as ds:
        profile = {**ds.profile, "compress": "deflate"}
        n = len(ds.overviews(1))
        with rasterio.open(tmp_path / "stage.tif", "w", **profile) as dst:
            dst.write(ds.read())
            dst.write_colormap(1, ds.colormap(1))
    for k in range(n):
        with rasterio.open(out, overview_level=k) as ov:
            path = tmp_path / f"ovr{k}.tif"
            with rasterio.open(
                path, "w", **{**ov.profile, "compress": "deflate", "blockxsize": 128, "blockysize": 128, "tiled": True}
            ) as dst:
                dst.write(ov.read())
            levels.append(path)
    again = tmp_path / "again.tif"
    to_cog(tmp_path / "stage.tif", again, overviews=levels, compress="deflate", blocksize=128)
    with rasterio.open(out) as a, rasterio.open(again) as b:
        assert a.overviews(1) == b.overviews(1)
        assert b.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert np.array_equal(a.read(), b.read())
        for k in range(n):
            w, h = a.width // 2 ** (k + 1), a.height // 2 ** (k + 1)
            assert np.array_equal(a.read(out_shape=(1, h, w)), b.read(out_shape=(1, h, w)))


def strips_of(tmp_path: Path, arr: np.ndarray, prob: np.ndarray, bounds: list[int], blocksize: int) -> list:
    """Strip rasters of ``arr`` as a strip run writes them (transform shifted to the first row)."""
    parts = []
    for r0, r1 in itertools.pairwise(bounds):
        folder = tmp_path / f"strip{r0}"
        write_class_raster(
            folder / "c.tif",
            arr[r0:r1],
            crs="EPSG:32633",
            transform=TRANSFORM @ Affine.translation(0, r0),
            classes=CLASSES,
            nodata=NODATA,
            probability=prob[r0:r1],
            probability_path=folder / "p.tif",
            blocksize=blocksize,
        )
        parts.append((r0, folder / "c.tif", folder / "p.tif"))
    return parts


@pytest.mark.parametrize(
    ("height", "bounds", "copied"),
    [
        (1100, [0, 512, 768, 1100], True),  # on block rows: the strips' tiles are copied
        (1024, [0, 256, 1024], True),  # an even scene
        (1100, [0, 300, 700, 1100], False),  # off block rows: their pixels are written again
    ],
)
def test_strips_stitch_to_the_whole_raster(tmp_path, height, bounds, copied):
    arr, prob = scene(height, 700)
    opts = {"crs": "EPSG:32633", "transform": TRANSFORM, "classes": CLASSES, "nodata": NODATA, "blocksize": 256}
    whole = write_class_raster(
        tmp_path / "whole" / "c.tif", arr, probability=prob, probability_path=tmp_path / "whole" / "p.tif", **opts
    )
    out = tmp_path / "stitched" / "c.tif"
    with ClassRasterWriter(out, width=700, height=height, probability_path=out.with_name("p.tif"), **opts) as w:
        for r0, c, p in strips_of(tmp_path, arr, prob, bounds, 256):
            w.write_strip(r0, c, p)
    for name in ("c.tif", "p.tif"):
        a, b = out.with_name(name), whole.with_name(name)
        if copied:  # pixels, overviews, header: all of it
            assert a.read_bytes() == b.read_bytes()
        else:  # tiles filled by parts pad their right edge differently; every pixel is the same
            assert read_layout(a) == read_layout(b)
            assert same_levels(a, b)


def test_a_strip_that_does_not_fit_is_refused(tmp_path):
    arr, prob = scene(600, 300)
    (_, c, _), *_ = strips_of(tmp_path, arr, prob, [0, 300, 600], 128)
    w = ClassRasterWriter(
        tmp_path / "o.tif", width=301, height=600, crs=None, transform=None, classes=CLASSES, nodata=NODATA
    )
    with pytest.raises(ValueError, match="does not fit"):
        w.write_strip(0, c)
    w.abort()


def same_levels(a: Path, b: Path) -> bool:
    with rasterio.open(a) as x, rasterio.open(b) as y:
        if not (np.array_equal(x.read(), y.read()) and x.overviews(1) == y.overviews(1)):
            return False
        levels = len(x.overviews(1))
    for k in range(levels):
        with rasterio.open(a, overview_level=k) as x, rasterio.open(b, overview_level=k) as y:
            if not np.array_equal(x.read(), y.read()):
                return False
    return True


def test_a_strip_without_probabilities_leaves_nodata_there(tmp_path):
    arr, prob = scene(1100, 600)
    parts = strips_of(tmp_path, arr, prob, [0, 512, 1100], 256)
    opts = {"crs": "EPSG:32633", "transform": TRANSFORM, "classes": CLASSES, "nodata": NODATA, "blocksize": 256}
    expected = prob.copy()
    expected[512:] = 0
    ref = write_class_raster(
        tmp_path / "ref" / "c.tif", arr, probability=expected, probability_path=tmp_path / "ref" / "p.tif", **opts
    )
    out = tmp_path / "out" / "c.tif"
    with ClassRasterWriter(out, width=600, height=1100, probability_path=out.with_name("p.tif"), **opts) as w:
        w.write_strip(parts[0][0], parts[0][1], parts[0][2])
        w.write_strip(parts[1][0], parts[1][1])  # its probabilities are missing
    assert out.read_bytes() == ref.read_bytes()
    assert same_levels(out.with_name("p.tif"), ref.with_name("p.tif"))


def test_strips_with_fewer_levels_than_the_first_still_stitch(tmp_path, caplog):
    """The first strip gives 3 levels of its own, a thin one only 1: the overviews are made at the end."""
    arr, prob = scene(1024, 100)
    opts = {"crs": "EPSG:32633", "transform": TRANSFORM, "classes": CLASSES, "nodata": NODATA, "blocksize": 64}
    whole = write_class_raster(tmp_path / "whole" / "c.tif", arr, **opts)
    out = tmp_path / "out" / "c.tif"
    parts = strips_of(tmp_path, arr, prob, [0, 512, 576, 1024], 64)
    with (
        caplog.at_level(logging.DEBUG, logger="geopsp.io.cog_stage"),
        ClassRasterWriter(out, width=100, height=1024, **opts) as w,
    ):
        for r0, c, _ in parts:
            w.write_strip(r0, c)
    assert "too few levels" in caplog.text
    assert same_levels(out, whole)


@pytest.mark.parametrize(
    ("height", "width", "blocksize"),
    [
        (8192, 600, 512),  # strips of 2048 rows: levels 1-2 copied, 3-4 computed from level 2
        (1024, 700, 64),  # strips of 256 rows: levels 1-2 copied, 3-4 read from the strips
    ],
)
def test_strips_on_level_block_rows_lend_their_level_tiles(tmp_path, monkeypatch, height, width, blocksize):
    """Strips starting on multiples of ``4 * blocksize`` rows: their level 1-2 tiles go into the COG as they are."""
    from geopsp.io.cog_stage import CogStage

    arr, prob = scene(height, width)
    opts = {"crs": "EPSG:32633", "transform": TRANSFORM, "classes": CLASSES, "nodata": NODATA, "blocksize": blocksize}
    whole = write_class_raster(
        tmp_path / "whole" / "c.tif", arr, probability=prob, probability_path=tmp_path / "whole" / "p.tif", **opts
    )
    parts = strips_of(tmp_path, arr, prob, [0, height // 4, height // 2, 3 * height // 4, height], blocksize)
    written: list[int] = []
    level_rows = CogStage._level_rows

    def counted(self, level, row_off, rows):
        written.append(level)
        level_rows(self, level, row_off, rows)

    monkeypatch.setattr(CogStage, "_level_rows", counted)
    out = tmp_path / "stitched" / "c.tif"
    with ClassRasterWriter(out, width=width, height=height, probability_path=out.with_name("p.tif"), **opts) as w:
        for r0, c, p in parts:
            w.write_strip(r0, c, p)
    assert len(read_layout(out).ifds) == 5  # 4 levels
    assert sorted(set(written)) == [3, 4]  # levels 1-2: copied, no row of them written again
    for name in ("c.tif", "p.tif"):
        assert out.with_name(name).read_bytes() == whole.with_name(name).read_bytes()


def test_copied_level_tiles_survive_gdals_fallback_copy(tmp_path, monkeypatch):
    """If the tiles cannot be assembled, GDAL copies the staged levels, the strips' copied tiles included."""
    from geopsp.io import cog_stage
    from geopsp.io.tiff_layout import LayoutError

    def refuse(*args, **kwargs):
        raise LayoutError("refused")

    arr, prob = scene(2048, 700)
    opts = {"crs": "EPSG:32633", "transform": TRANSFORM, "classes": CLASSES, "nodata": NODATA, "blocksize": 128}
    whole = write_class_raster(tmp_path / "whole" / "c.tif", arr, **opts)
    parts = strips_of(tmp_path, arr, prob, [0, 512, 1024, 1536, 2048], 128)
    monkeypatch.setattr(cog_stage, "assemble_cog", refuse)
    out = tmp_path / "stitched" / "c.tif"
    with ClassRasterWriter(out, width=700, height=2048, **opts) as w:
        for r0, c, _ in parts:
            w.write_strip(r0, c)
    assert same_levels(out, whole)
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(p.name for p in whole.parent.iterdir())
