"""Scenes: inspect_scene errors and descriptions, validity masks, read_rows."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.control import GroundControlPoint
from rasterio.enums import ColorInterp

from geopsp.errors import InputRasterError, NotGeoreferencedWarning
from geopsp.io.scene import SceneInfo, inspect_scene, open_scene, read_rows

TRANSFORM = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 5_700_000.0)


def make_tif(path: Path, data: np.ndarray, **profile) -> Path:
    """Write ``data`` (C, H, W) as a GeoTIFF with a real CRS unless told otherwise."""
    count, height, width = data.shape
    base = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": str(data.dtype),
        "crs": "EPSG:32633",
        "transform": TRANSFORM,
    }
    base.update(profile)
    with rasterio.open(path, "w", **base) as dst:
        dst.write(data)
    return path


def rgb(height: int = 97, width: int = 131, dtype: str = "uint8", seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 200, (3, height, width)).astype(dtype)


# -- inspect_scene: refusals ------------------------------------------------------------------


def test_missing_path(tmp_path):
    with pytest.raises(InputRasterError, match=r"nope\.tif: no such file; check the path"):
        inspect_scene(tmp_path / "nope.tif")


def test_directory(tmp_path):
    with pytest.raises(InputRasterError, match="is a directory"):
        inspect_scene(tmp_path)


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.tif"
    p.touch()
    with pytest.raises(InputRasterError, match=r"empty\.tif: is empty \(0 bytes\); re-download or re-export"):
        inspect_scene(p)


def test_text_file_named_tif(tmp_path):
    p = tmp_path / "notes.tif"
    p.write_text("these are not pixels\n")
    with pytest.raises(InputRasterError, match=r"notes\.tif: is a text file, not a raster"):
        inspect_scene(p)


def test_unsupported_binary_format(tmp_path):
    p = tmp_path / "blob.tif"
    p.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(InputRasterError, match="not in a raster format GDAL can read; convert it"):
        inspect_scene(p)


@pytest.mark.parametrize("keep", [0.05, 0.5, 0.95])
def test_truncated_tiff(tmp_path, keep):
    src = make_tif(tmp_path / "full.tif", rgb(), compress="deflate")
    cut = tmp_path / "cut.tif"
    cut.write_bytes(src.read_bytes()[: int(src.stat().st_size * keep)])
    with pytest.raises(InputRasterError, match=r"cut\.tif: .*truncated.*re-download or re-export it"):
        inspect_scene(cut)


def test_truncated_cog_with_directory_first(tmp_path):
    # A COG keeps its IFDs at the front: a cut file opens, but its last blocks are gone.
    data = rgb(300, 300)
    make_tif(tmp_path / "full.tif", data, tiled=True, blockxsize=64, blockysize=64)
    rasterio.shutil.copy(tmp_path / "full.tif", tmp_path / "cog.tif", driver="COG", BLOCKSIZE=64)
    blob = (tmp_path / "cog.tif").read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(blob[: int(len(blob) * 0.7)])
    with pytest.raises(InputRasterError, match=r"cut\.tif: is truncated: .*re-download or re-export it"):
        inspect_scene(cut)


@pytest.mark.data
def test_truncated_real_tif(shared_data, tmp_path):
    blob = (shared_data / "landsat_rasterio" / "RGB.byte.tif").read_bytes()
    cut = tmp_path / "RGB.byte.tif"
    cut.write_bytes(blob[: len(blob) // 3])
    with pytest.raises(InputRasterError, match="truncated or corrupt"):
        inspect_scene(cut)


@pytest.mark.data
def test_corrupt_real_tif_is_refused_before_reading(shared_data):
    with pytest.raises(InputRasterError, match=r"corrupt\.tif: is truncated: .*pixels fail to decode"):
        inspect_scene(shared_data / "landsat_rasterio" / "corrupt.tif")


def test_mixed_band_dtypes(tmp_path):
    a = make_tif(tmp_path / "a.tif", rgb()[:1])
    b = make_tif(tmp_path / "b.tif", rgb()[:1].astype("float32"))
    vrt = tmp_path / "mixed.vrt"
    bands = "".join(
        f'<VRTRasterBand dataType="{t}" band="{i}"><SimpleSource><SourceFilename relativeToVRT="1">{f.name}'
        f"</SourceFilename><SourceBand>1</SourceBand></SimpleSource></VRTRasterBand>"
        for i, (t, f) in enumerate((("Byte", a), ("Float32", b)), start=1)
    )
    vrt.write_text(f'<VRTDataset rasterXSize="131" rasterYSize="97">{bands}</VRTDataset>')
    with pytest.raises(InputRasterError, match=r"different data types \(uint8, float32\)"):
        inspect_scene(vrt)


def test_rotated_geotransform_is_refused_with_gdalwarp_hint(tmp_path):
    p = make_tif(tmp_path / "rot.tif", rgb(), transform=Affine(10.0, 2.0, 500_000.0, 1.5, -10.0, 5_700_000.0))
    with pytest.raises(InputRasterError, match=r"rotated or sheared geotransform.*gdalwarp rot\.tif north_up\.tif"):
        inspect_scene(p)


def test_gcp_only_georeferencing_is_refused(tmp_path):
    gcps = [
        GroundControlPoint(0, 0, 500_000, 5_700_000),
        GroundControlPoint(0, 131, 501_310, 5_700_000),
        GroundControlPoint(97, 0, 500_000, 5_699_030),
    ]
    p = tmp_path / "gcps.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rasterio notes that there is no geotransform
        with rasterio.open(
            p, "w", driver="GTiff", width=131, height=97, count=3, dtype="uint8", gcps=gcps, crs="EPSG:32633"
        ) as dst:
            dst.write(rgb())
    with pytest.raises(InputRasterError, match="ground control points; warp it first: gdalwarp"):
        inspect_scene(p)


# -- inspect_scene: descriptions ----------------------------------------------------------------


def test_georeferenced_scene_description(tmp_path):
    p = make_tif(tmp_path / "s.tif", rgb(), tiled=True, blockxsize=32, blockysize=64, nodata=0)
    with rasterio.open(p, "r+") as dst:
        dst.set_band_description(2, "green")
    info = inspect_scene(p)
    assert isinstance(info, SceneInfo)
    assert (info.width, info.height, info.count, info.dtype) == (131, 97, 3, "uint8")
    assert info.crs == rasterio.crs.CRS.from_epsg(32633)
    assert info.transform == TRANSFORM
    assert info.res == (10.0, 10.0)
    assert info.georeferenced
    assert (info.nodata, info.mask_source, info.alpha_band) == (0.0, "nodata", None)
    assert info.block_shape == (64, 32)
    assert info.band_descriptions == (None, "green", None)
    assert info.data_bands == (1, 2, 3)


def test_png_without_georeferencing_warns_once_with_our_warning(tmp_path):
    p = tmp_path / "photo.png"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(p, "w", driver="PNG", width=131, height=97, count=3, dtype="uint8") as dst:
            dst.write(rgb())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = inspect_scene(p)
    assert [type(w.message) for w in caught] == [NotGeoreferencedWarning]
    assert "output will have no CRS" in str(caught[0].message)
    assert not info.georeferenced and info.crs is None and info.transform.is_identity
    assert info.mask_source == "none"


def test_non_georeferenced_scene_reads_without_rasterio_warnings(tmp_path):
    p = tmp_path / "plain.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(p, "w", driver="GTiff", width=131, height=97, count=3, dtype="uint8") as dst:
            dst.write(rgb())
    # pytest turns any other warning into an error here
    with pytest.warns(NotGeoreferencedWarning), open_scene(p) as (src, info):
        data, valid = read_rows(src, info, 0, info.height, [1, 2, 3])
    assert data.shape == (3, 97, 131) and valid.all()


def test_transform_without_crs_is_kept(tmp_path):
    p = tmp_path / "nocrs.tif"
    make_tif(p, rgb(), crs=None)
    with pytest.warns(NotGeoreferencedWarning, match="a geotransform but no CRS"):
        info = inspect_scene(p)
    assert not info.georeferenced and info.transform == TRANSFORM


# -- validity masks -----------------------------------------------------------------------------


def test_nodata_value_mask_needs_every_band_at_nodata(tmp_path):
    data = rgb()
    data[:, 0, :10] = 0  # all bands nodata: invalid
    data[0, 1, :10] = 0  # one dark band: still valid
    p = make_tif(tmp_path / "nd.tif", data, nodata=0)
    with open_scene(p) as (src, info):
        assert info.mask_source == "nodata"
        _, valid = read_rows(src, info, 0, 2, [1, 2, 3])
    assert not valid[0, :10].any() and valid[0, 10:].all()
    assert valid[1].all()


def test_internal_mask_band(tmp_path):
    p = tmp_path / "masked.tif"
    mask = np.full((97, 131), 255, np.uint8)
    mask[40:50] = 0
    with (
        rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True),
        rasterio.open(
            p, "w", driver="GTiff", width=131, height=97, count=3, dtype="uint8", crs="EPSG:32633", transform=TRANSFORM
        ) as dst,
    ):
        dst.write(rgb())
        dst.write_mask(mask)
    assert not Path(f"{p}.msk").exists()
    with open_scene(p) as (src, info):
        assert info.mask_source == "mask"
        _, valid = read_rows(src, info, 30, 30, [3, 1])
    assert np.array_equal(valid, mask[30:60] > 0)


def test_external_mask_file(tmp_path):
    p = tmp_path / "masked.tif"
    mask = np.full((97, 131), 255, np.uint8)
    mask[:, :7] = 0
    with (
        rasterio.Env(GDAL_TIFF_INTERNAL_MASK=False),
        rasterio.open(
            p, "w", driver="GTiff", width=131, height=97, count=3, dtype="uint8", crs="EPSG:32633", transform=TRANSFORM
        ) as dst,
    ):
        dst.write(rgb())
        dst.write_mask(mask)
    assert Path(f"{p}.msk").exists()
    with open_scene(p) as (src, info):
        assert info.mask_source == "mask"
        _, valid = read_rows(src, info, 0, 97, [1])
    assert np.array_equal(valid, mask > 0)


def test_alpha_band(tmp_path):
    alpha = np.full((1, 97, 131), 255, np.uint8)
    alpha[0, :, 100:] = 0
    p = make_tif(tmp_path / "rgba.tif", np.concatenate([rgb(), alpha]))
    with rasterio.open(p, "r+") as dst:
        dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    with open_scene(p) as (src, info):
        assert (info.mask_source, info.alpha_band, info.data_bands) == ("alpha", 4, (1, 2, 3))
        data, valid = read_rows(src, info, 0, 97, [1, 2, 3])
    assert data.shape == (3, 97, 131)
    assert np.array_equal(valid, alpha[0] > 0)


@pytest.mark.parametrize("source", ["nodata", "mask", "alpha", "none"])
def test_column_window_reads_equal_the_full_width_read(tmp_path, source):
    data = rgb()
    data[:, 20:30, 40:90] = 0
    inv = np.zeros((97, 131), bool)
    inv[20:30, 40:90] = True
    p = tmp_path / f"{source}.tif"
    if source == "alpha":
        p = make_tif(p, np.concatenate([data, np.where(inv, 0, 255).astype(np.uint8)[None]]))
        with rasterio.open(p, "r+") as dst:
            dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    elif source == "mask":
        with (
            rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True),
            rasterio.open(
                p,
                "w",
                driver="GTiff",
                width=131,
                height=97,
                count=3,
                dtype="uint8",
                transform=TRANSFORM,
                crs="EPSG:32633",
                tiled=True,
                blockxsize=32,
                blockysize=32,
            ) as dst,
        ):
            dst.write(data)
            dst.write_mask(np.where(inv, 0, 255).astype(np.uint8))
    else:
        p = make_tif(p, data, **({"nodata": 0} if source == "nodata" else {}))
    with open_scene(p) as (src, info):
        assert info.mask_source == source
        full, fvalid = read_rows(src, info, 10, 40, [3, 1])
        part, pvalid = read_rows(src, info, 10, 40, [3, 1], col_off=35, width=60)
        tail, tvalid = read_rows(src, info, 10, 40, [3, 1], col_off=100)
        with pytest.raises(ValueError, match=r"columns 100\.\.159 are outside"):
            read_rows(src, info, 10, 40, [3, 1], col_off=100, width=60)
    assert part.shape == (2, 40, 60) and tail.shape == (2, 40, 31)
    np.testing.assert_array_equal(part, full[:, :, 35:95])
    np.testing.assert_array_equal(pvalid, fvalid[:, 35:95])
    np.testing.assert_array_equal(tail, full[:, :, 100:])
    np.testing.assert_array_equal(tvalid, fvalid[:, 100:])
    assert np.array_equal(fvalid, ~inv[10:50]) if source != "none" else fvalid.all()


@pytest.mark.parametrize("nodata", [None, float("nan"), -9999.0])
def test_float_nan_and_inf_are_invalid(tmp_path, nodata):
    data = np.random.default_rng(1).random((2, 97, 131)).astype("float32")
    data[0, 5, 5] = np.nan
    data[1, 6, 6] = np.inf
    data[0, 7, 7] = -np.inf
    data[:, 8, 8] = -9999.0
    profile = {} if nodata is None else {"nodata": nodata}
    p = make_tif(tmp_path / "f.tif", data, **profile)
    with open_scene(p) as (src, info):
        data_read, valid = read_rows(src, info, 0, 97, [1, 2])
    assert data_read.dtype == np.float32
    assert not valid[5, 5] and not valid[6, 6] and not valid[7, 7]
    assert valid[8, 8] == (nodata != -9999.0)
    assert valid.sum() == 97 * 131 - 3 - (nodata == -9999.0)


def test_no_mask_means_all_valid(tmp_path):
    p = make_tif(tmp_path / "s.tif", rgb())
    with open_scene(p) as (src, info):
        assert info.mask_source == "none"
        _, valid = read_rows(src, info, 10, 5, [2])
    assert valid.shape == (5, 131) and valid.all()


@pytest.mark.data
def test_real_scene_nodata_mask_matches_gdal(shared_data):
    path = shared_data / "landsat_rasterio" / "RGB.byte.tif"
    with open_scene(path) as (src, info):
        assert info.mask_source == "nodata"
        data, valid = read_rows(src, info, 0, info.height, [1, 2, 3])
        gdal_mask = src.dataset_mask() > 0
    assert data.shape == (3, 718, 791)
    assert np.array_equal(valid, gdal_mask)
    assert 0.5 < valid.mean() < 0.9


# -- read_rows ----------------------------------------------------------------------------------


def test_block_row_strips_reassemble_the_scene(tmp_path):
    data = rgb(200, 150)
    p = make_tif(tmp_path / "t.tif", data, tiled=True, blockxsize=32, blockysize=32, compress="deflate")
    with open_scene(p) as (src, info):
        rows = info.block_shape[0]
        strips = [read_rows(src, info, r, min(rows, info.height - r), [3, 1])[0] for r in range(0, info.height, rows)]
    assert np.array_equal(np.concatenate(strips, axis=1), data[[2, 0]])


def test_read_rows_rejects_bad_ranges(tmp_path):
    p = make_tif(tmp_path / "t.tif", rgb())
    with open_scene(p) as (src, info):
        with pytest.raises(ValueError, match="outside the scene"):
            read_rows(src, info, 90, 8, [1])
        with pytest.raises(ValueError, match="outside the scene"):
            read_rows(src, info, -1, 2, [1])
        with pytest.raises(ValueError, match="1-based"):
            read_rows(src, info, 0, 2, [0])
        with pytest.raises(ValueError, match="1-based"):
            read_rows(src, info, 0, 2, [4])


def test_block_that_fails_to_decode(tmp_path):
    data = rgb(128, 128)
    p = make_tif(tmp_path / "bad.tif", data, tiled=True, blockxsize=32, blockysize=32, compress="deflate")
    with rasterio.open(p) as src:
        offset = int(src.get_tag_item("BLOCK_OFFSET_1_2", "TIFF", bidx=2))
        size = int(src.get_tag_item("BLOCK_SIZE_1_2", "TIFF", bidx=2))
    blob = bytearray(p.read_bytes())
    blob[offset : offset + size] = b"\xff" * size
    p.write_bytes(bytes(blob))
    with open_scene(p) as (src, info):
        read_rows(src, info, 0, 64, [1, 2, 3])  # rows above the damage are fine
        with pytest.raises(
            InputRasterError,
            match=r"bad\.tif: pixels fail to decode at rows 64-95, columns 0-127 \(file is corrupt or truncated\)",
        ):
            read_rows(src, info, 64, 32, [1, 2, 3])


def test_open_scene_yields_an_open_dataset_and_info(tmp_path):
    p = make_tif(tmp_path / "t.tif", rgb())
    with open_scene(p, cache_bytes=8 << 20, threads=1) as (src, info):
        assert not src.closed
        assert info.source.local == p and info.source.kind == "local"
    assert src.closed


def test_open_scene_refuses_like_inspect(tmp_path):
    with pytest.raises(InputRasterError, match="no such file"), open_scene(tmp_path / "x.tif"):
        pass
