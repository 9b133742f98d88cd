"""One definition of a valid pixel, and one model input, from the reader to the model.

Pixel-correctness checks use a real (small, untrained) PSPNet with mean/std statistics: its
pyramid pooling's global average spreads any value fed to the model across the whole tile,
so a NaN or a nodata value that reached it would change valid pixels far away. A 1x1-conv
stand-in cannot see any of this.
"""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from rasterio.enums import ColorInterp

from geopsp.classes import ClassTable
from geopsp.config import PredictConfig
from geopsp.errors import ModelError
from geopsp.inference.plan import check_scene_for_model
from geopsp.inference.predict import Predictor
from geopsp.io.scene import inspect_scene, open_scene, read_rows
from geopsp.model.inputs import MODEL_FILL, model_input
from geopsp.model.meta import BundleMeta, Normalization
from geopsp.pipeline import segment_raster
from geopsp.testing import random_class_map, write_geotiff
from geopsp.tiling import TileGrid
from geopsp.tiling.reader import pad_tile
from geopsp.train.reader import SceneCache, SceneReader
from geopsp.train.stats import normalize_window

MEANS = [900.0, 1100.0, 1400.0, 2600.0]
STDS = [300.0, 350.0, 500.0, 700.0]


def _pspnet(bands: int, dtype: str, norm: Normalization, classes: int = 4) -> tuple[torch.nn.Module, BundleMeta]:
    from geopsp.model.registry import build_model, spec_from_preset

    torch.manual_seed(0)
    spec = spec_from_preset("fast", in_channels=bands, num_classes=classes, decoder_channels=32)
    model = build_model(spec).eval()
    meta = BundleMeta(
        spec=spec,
        classes=ClassTable.default(classes),
        bands=tuple(range(1, bands + 1)),
        band_names=tuple(f"b{i}" for i in range(1, bands + 1)),
        input_dtype=dtype,
        normalization=norm,
        tile_size=128,
        overlap=16,
        nodata=255,
    )
    return model, meta


def _landscape(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Four bands of blocky land cover with noise, in Sentinel-2-like uint16 units."""
    classes = random_class_map(h, w, n_classes=4, seed=seed, blob_scale=12.0)
    spectra = np.array(
        [[600, 800, 700, 3500], [1200, 1000, 900, 1800], [700, 1300, 2100, 2900], [1500, 1600, 1700, 1900]]
    )
    rng = np.random.default_rng(seed)
    img = spectra[classes].transpose(2, 0, 1) + rng.normal(0, 120, size=(4, h, w))
    return np.clip(img, 1, 10000).astype("float32")


def _classes(path):
    with rasterio.open(path) as src:
        return src.read(1)


def _cfg() -> PredictConfig:
    return PredictConfig(device="cpu", amp=False)


@pytest.fixture(scope="module")
def uint16_pspnet():
    return _pspnet(4, "uint16", Normalization.from_stats(MEANS, STDS))


@pytest.fixture(scope="module")
def float_pspnet():
    return _pspnet(4, "float32", Normalization.from_stats(MEANS, STDS))


def test_the_value_stored_under_nodata_never_changes_a_valid_pixel(tmp_path, uint16_pspnet):
    """The same scene with its collar stored as 0 (nodata=0) or 65535 (nodata=65535): same map."""
    h, w = 300, 340
    img = _landscape(h, w).astype("uint16")
    yy, xx = np.mgrid[:h, :w]
    collar = (xx + 0.6 * yy < 90) | (yy > 250)  # a diagonal edge and a bottom band, across tiles
    maps = []
    for value in (0, 65535):
        arr = img.copy()
        arr[:, collar] = value
        scene = write_geotiff(tmp_path / f"nd{value}.tif", arr, nodata=value)
        res = segment_raster(scene, uint16_pspnet, tmp_path / f"out{value}", config=_cfg())
        maps.append(_classes(res.classes))
    a, b = maps
    assert (a[collar] == 255).all() and (b[collar] == 255).all()
    assert len(np.unique(a[~collar])) > 1, "the model must see something for this test to mean anything"
    np.testing.assert_array_equal(a, b)


def test_a_nan_patch_leaves_the_rest_of_its_tile_as_without_it(tmp_path, float_pspnet):
    h, w = 320, 320
    img = _landscape(h, w, seed=3)
    clean = write_geotiff(tmp_path / "clean.tif", img)
    holed = img.copy()
    holed[:, 150:170, 140:160] = np.nan  # 400 NaN pixels inside one tile
    holed[2, 40, 40] = np.inf
    dirty = write_geotiff(tmp_path / "nan.tif", holed)
    ref = _classes(segment_raster(clean, float_pspnet, tmp_path / "a", config=_cfg()).classes)
    got = _classes(segment_raster(dirty, float_pspnet, tmp_path / "b", config=_cfg()).classes)
    bad = ~np.isfinite(holed).all(axis=0)
    assert (got[bad] == 255).all(), "NaN/inf pixels are nodata"
    assert (got[~bad] != 255).all()
    # the tile around the patch (tile 128, stride 112: rows and columns 112..240)
    tile = np.zeros((h, w), bool)
    tile[112:240, 112:240] = True
    keep = tile & ~bad
    values, counts = np.unique(ref[keep], return_counts=True)
    assert len(values) > 1, "the NaN-free map needs more than one class here"
    minority = keep & (ref != values[counts.argmax()])
    assert (got[keep] == ref[keep]).mean() >= 0.8
    assert (got[minority] == ref[minority]).mean() >= 0.8
    assert (got[~tile & ~bad] == ref[~tile & ~bad]).mean() >= 0.95


def test_non_finite_model_output_is_an_error_not_class_zero():
    class NaNModel(torch.nn.Module):
        def forward(self, x):
            out = torch.zeros(x.shape[0], 2, x.shape[2], x.shape[3])
            out[:, :, 0, 0] = torch.nan
            return out

    _, meta = _pspnet(4, "float32", Normalization.identity(4), classes=2)
    pred = Predictor(NaNModel(), meta, device="cpu", amp=False)
    with pytest.raises(ModelError, match="NaN or infinite"):
        pred.probabilities(torch.zeros(1, 4, 32, 32))


def test_model_input_is_finite_and_filled_at_every_invalid_pixel():
    norm = Normalization.from_stats([10.0, 20.0], [2.0, 4.0])
    raw = np.array([[[12.0, 3.0e38, np.nan]], [[24.0, -3.0e38, 1.0]]], dtype="float32")
    valid = np.array([[True, True, False]])
    out = model_input(raw, valid, norm)
    assert np.isfinite(out).all()
    assert out[:, 0, 2].tolist() == [MODEL_FILL, MODEL_FILL]  # invalid: every band filled
    assert out[:, 0, 0].tolist() == [1.0, 1.0]
    assert out[0, 0, 1] > 1e30 and out[1, 0, 1] < -1e30  # huge but finite stays as it is
    tout = model_input(torch.from_numpy(raw), torch.from_numpy(valid), norm)
    assert torch.equal(tout, torch.from_numpy(out))
    inf = np.array([[[np.finfo("float32").max]]], dtype="float32")
    assert model_input(inf, None, Normalization.from_stats([-1e38], [0.1]))[0, 0, 0] == MODEL_FILL  # overflow


# ------------------------------------------------------------------------ train = predict


def _reader(path, bands=None):
    from geopsp.config.schema import DataConfig
    from geopsp.labels import LabelMapping
    from geopsp.train.layouts import Scene

    labels = path.with_name(path.stem + "_labels.tif")
    with rasterio.open(path) as src:
        write_geotiff(labels, np.ones((src.height, src.width), "uint8"), nodata=0)
    mapping = LabelMapping(ClassTable.default(2))
    data = DataConfig(layout="scenes", images="*.tif", labels="{name}")
    return SceneReader(0, Scene("s", path, labels, "raster"), bands, mapping, data, SceneCache(1 << 30))


def _write_rgba(path, rgb, alpha):
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=rgb.shape[2],
        height=rgb.shape[1],
        count=4,
        dtype="uint8",
        crs="EPSG:32633",
        transform=Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5600000.0),
        photometric="RGB",
        alpha="YES",
    ) as dst:
        dst.write(np.concatenate([rgb, alpha[None]]))
    with rasterio.open(path) as src:
        assert src.colorinterp[3] == ColorInterp.alpha
    return path


@pytest.fixture
def scenes(tmp_path):
    """The ways a pixel can be invalid: nodata, alpha, an internal mask, NaN/inf."""
    rng = np.random.default_rng(4)
    h, w = 70, 90
    rgb = rng.integers(1, 255, size=(3, h, w), dtype=np.uint8)
    out = {}
    arr = rgb.copy()
    arr[:, :10] = 0
    arr[0, 10:20] = 0  # one band at nodata: still valid
    out["nodata"] = write_geotiff(tmp_path / "nodata.tif", arr, nodata=0)
    alpha = np.full((h, w), 255, np.uint8)
    alpha[:, -15:] = 0
    alpha[5, 5] = 0
    out["alpha"] = _write_rgba(tmp_path / "alpha.tif", rgb, alpha)
    masked = write_geotiff(tmp_path / "mask.tif", rgb)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(masked, "r+") as dst:
        m = np.full((h, w), 255, np.uint8)
        m[30:40] = 0
        dst.write_mask(m)
    out["mask"] = masked
    f = rgb.astype("float32")
    f[1, 3:6, 3:6] = np.nan
    f[2, 50, 60] = np.inf
    out["float"] = write_geotiff(tmp_path / "float.tif", f)
    return out


@pytest.mark.parametrize("kind", ["nodata", "alpha", "mask", "float"])
def test_training_reads_the_valid_pixels_prediction_reads(scenes, kind):
    path = scenes[kind]
    info = inspect_scene(path)
    reader = _reader(path)
    assert reader.bands == info.data_bands  # an alpha band is never data
    image, labels = reader.read(0, 0, info.height, info.width)
    with open_scene(path) as (src, _):
        raw, valid = read_rows(src, info, 0, info.height, info.data_bands)
    assert (~valid).any()
    np.testing.assert_array_equal(np.isfinite(image).all(axis=0), valid)
    np.testing.assert_array_equal(labels == reader.mapping.ignore_index, ~valid)
    np.testing.assert_array_equal(image[:, valid], raw[:, valid].astype("float32"))
    # and the model input of a window is the same number at every pixel, train or predict
    norm = Normalization.from_stats([100.0, 110.0, 120.0], [40.0, 50.0, 60.0])
    meta = BundleMeta(
        spec=_pspnet(3, info.dtype, norm, classes=2)[1].spec,
        classes=ClassTable.default(2),
        bands=info.data_bands,
        band_names=("r", "g", "b"),
        input_dtype=info.dtype,
        normalization=norm,
        tile_size=64,
        overlap=8,
    )
    check_scene_for_model(info, meta)  # a model trained on these bands runs on this scene
    tile = next(iter(TileGrid(info.height, info.width, 64, 8).tiles()))
    train_input = normalize_window(image[:, :64, :64].copy(), norm)
    d, v = pad_tile(raw[:, :64, :64], valid[:64, :64], 64)
    predict_input, _ = Predictor(torch.nn.Conv2d(3, 2, 1), meta, device="cpu").prepare(tile, d, v)
    np.testing.assert_array_equal(train_input, predict_input)
