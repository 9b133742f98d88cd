"""Scenes stored in another data type than the model's: judged by their values, converted as read.

Real GeoTIFFs through rasterio and a small real PSPNet bundle (ResNet-18 cut after stage 3):
a uint16 file holding 0..255 must give the classes of the same pixels stored as uint8, with
no converted copy written; values that do not fit are refused before the run with advice that
does not stretch them, or, met only while reading, stop the run naming the pixel.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

import geopsp.io.values as values_module
from geopsp.classes import ClassTable
from geopsp.config.schema import PredictConfig
from geopsp.errors import ConfigError, InputRasterError
from geopsp.inference.cast import InputCast
from geopsp.inference.plan import check_scene_for_model
from geopsp.io.atomic import TEMP_MARKER
from geopsp.io.scene import inspect_scene
from geopsp.model.bundle import save_bundle
from geopsp.model.meta import BundleMeta, ModelSpec, Normalization
from geopsp.model.registry import build_model, spec_from_preset
from geopsp.pipeline import segment_raster
from geopsp.testing import run_cli, small_scene, write_geotiff

TILE = 64


def _meta(spec: ModelSpec, dtype: str = "uint8") -> BundleMeta:
    return BundleMeta(
        spec=spec,
        classes=ClassTable.default(3),
        bands=(1, 2, 3),
        band_names=("red", "green", "blue"),
        input_dtype=dtype,
        normalization=Normalization.from_stats([100.0, 90.0, 80.0], [50.0, 40.0, 30.0]),
        tile_size=TILE,
        overlap=8,
    )


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real PSPNet bundle for uint8 scenes, confident enough that classes rarely tie."""
    torch.manual_seed(1)
    spec = spec_from_preset("fast", in_channels=3, num_classes=3, decoder_channels=32)
    model = build_model(spec).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 4 and p.shape[0] == 3:
                p.mul_(8.0)
    return save_bundle(model, _meta(spec), tmp_path_factory.mktemp("model") / "u8.safetensors")


@pytest.fixture(scope="module")
def pixels(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """A synthetic 3-band uint8 scene's pixels, 150 x 133 (odd sizes)."""
    path, _ = small_scene(tmp_path_factory.mktemp("src"), width=150, height=133)
    with rasterio.open(path) as src:
        return src.read()


def cfg(**kw: object) -> PredictConfig:
    kw.setdefault("device", "cpu")
    kw.setdefault("amp", False)
    kw.setdefault("runtime", "torch")
    return PredictConfig.model_validate(kw)


def classes(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def set_statistics(path: Path, low: float, high: float, *, approximate: bool = False) -> None:
    """Store band statistics in the file, as ``gdalinfo -stats`` (or ``-approx_stats``) does."""
    with rasterio.open(path, "r+") as dst:
        for b in range(1, dst.count + 1):
            tags = {"STATISTICS_MINIMUM": str(low), "STATISTICS_MAXIMUM": str(high), "STATISTICS_VALID_PERCENT": "100"}
            if approximate:
                tags["STATISTICS_APPROXIMATE"] = "YES"
            dst.update_tags(b, **tags)


@pytest.fixture
def small_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sample 4 windows of 32 px, so a small scene is sampled rather than read whole."""
    monkeypatch.setattr(values_module, "SAMPLE_WINDOWS", 4)
    monkeypatch.setattr(values_module, "SAMPLE_WINDOW_PX", 32)


# ------------------------------------------------------------------------------------------
# The done-when case: uint16 holding 0..255, predicted without a copy


def test_uint16_holding_bytes_gives_the_uint8_classes_without_a_copy(bundle, pixels, tmp_path, caplog):
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    u8 = write_geotiff(scenes / "u8.tif", pixels)
    u16 = write_geotiff(scenes / "u16.tif", pixels.astype("uint16"))
    ref = segment_raster(u8, bundle, tmp_path / "ref", config=cfg())
    with caplog.at_level(logging.WARNING, logger="geopsp"):
        res = segment_raster(u16, bundle, tmp_path / "out", config=cfg())
    got, want = classes(res.classes), classes(ref.classes)
    assert len(np.unique(want)) >= 2  # a real test of equality
    np.testing.assert_array_equal(got, want)
    # no copy anywhere: the scene folder holds the two scenes, the output folder the outputs
    assert names(scenes) == ["u16.tif", "u8.tif"]
    assert names(tmp_path / "out") == sorted(p.name for p in res.paths)
    assert names(tmp_path / "out") == [n.replace("u8", "u16") for n in names(tmp_path / "ref")]
    # the fact is printed once and recorded
    notes = [r.getMessage() for r in caplog.records if "u16.tif" in r.getMessage()]
    assert len(notes) == 1
    assert re.fullmatch(
        r"u16\.tif: stored as uint16, values \d+\.\.\d+ \(from a read of every pixel\) fit the model's uint8; "
        r"read as uint8, no copy written",
        notes[0],
    ), notes[0]
    summary = json.loads(res.summary_path.read_text())
    assert summary["input"]["stored_dtype"] == "uint16" and summary["input"]["read_as"] == "uint8"
    assert summary["input"]["range_source"] == "every pixel" and summary["input"]["input_scale"] is None
    assert summary["input"]["range"] == [float(pixels.min()), float(pixels.max())]
    assert ref.summary["input"]["range_source"] == "same type"


def test_onnxruntime_path_converts_the_same_way(bundle, pixels, tmp_path):
    from geopsp.model.onnx_export import export_onnx

    onnx = export_onnx(bundle, tmp_path / "u8.onnx").path
    u8 = write_geotiff(tmp_path / "u8.tif", pixels)
    u16 = write_geotiff(tmp_path / "x4.tif", pixels.astype("uint16") * 4)
    ref = segment_raster(u8, onnx, tmp_path / "ref", config=cfg(runtime="onnxruntime"))
    res = segment_raster(u16, onnx, tmp_path / "out", config=cfg(runtime="onnxruntime", input_scale=(0, 1020, 0, 255)))
    assert res.summary["device"]["runtime"] == "onnxruntime"
    np.testing.assert_array_equal(classes(res.classes), classes(ref.classes))
    assert res.summary["input"]["input_scale"] == [0.0, 1020.0, 0.0, 255.0]


def test_float_scene_holding_whole_numbers_gives_the_uint8_classes(bundle, pixels, tmp_path):
    data = np.maximum(pixels, 1)
    data[:, :5, :7] = 0
    u8 = write_geotiff(tmp_path / "u8.tif", data, nodata=0)  # the same valid pixels as NaN gives below
    f32 = data.astype("float32")
    f32[:, :5, :7] = np.nan  # not finite: nodata, never checked
    scene = write_geotiff(tmp_path / "f32.tif", f32)
    ref = classes(segment_raster(u8, bundle, tmp_path / "ref", config=cfg()).classes)
    res = segment_raster(scene, bundle, tmp_path / "out", config=cfg())
    np.testing.assert_array_equal(classes(res.classes), ref)
    assert (ref[:5, :7] == 255).all() and res.summary["input"]["read_as"] == "uint8"


# ------------------------------------------------------------------------------------------
# Refusals: one line, no stretching advice


def test_uint16_up_to_1000_is_refused_with_undistorting_advice(bundle, pixels, tmp_path):
    data = (pixels.astype("int64") * 1000 // int(pixels.max())).astype("uint16")  # up to 1000
    scene = write_geotiff(tmp_path / "u16.tif", data)
    code, out, err = run_cli("predict", scene, "-m", bundle, "-o", tmp_path / "out", "--no-progress")
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    lo, hi = int(data.min()), int(data.max())
    assert hi == 1000
    assert line.startswith(f"Error: {scene}: the model reads uint8 (0..255) but this uint16 scene holds {lo}..{hi}")
    assert "from a read of every pixel" in line
    # every -scale offered is a mapping to state in full, never a bare stretch, nor one of the values found
    assert re.findall(r"-scale(?! SRC_MIN SRC_MAX 0 255 )", line) == []
    assert "--input-scale SRC_MIN SRC_MAX 0 255" in line and "-ot Byte -scale SRC_MIN SRC_MAX 0 255" in line
    assert "if the training data were made from such values by a linear mapping" in line
    assert not (tmp_path / "out").exists()


def test_fractions_are_refused_for_an_integer_model(tmp_path):
    scene = write_geotiff(tmp_path / "refl.tif", np.full((3, 20, 30), 0.25, dtype="float32"))
    with pytest.raises(InputRasterError) as err:
        check_scene_for_model(inspect_scene(scene), _meta(ModelSpec(in_channels=3, num_classes=3)))
    msg = str(err.value)
    assert "whole uint8 numbers" in msg and "such as 0.25" in msg
    assert "among 0.25..0.25" in msg and "--input-scale SRC_MIN SRC_MAX 0 255 (values are rounded)" in msg


# ------------------------------------------------------------------------------------------
# --input-scale


def test_input_scale_on_the_command_line_maps_back_to_the_uint8_classes(bundle, pixels, tmp_path):
    u8 = write_geotiff(tmp_path / "u8.tif", pixels)
    x4 = write_geotiff(tmp_path / "x4.tif", pixels.astype("uint16") * 4)  # up to 1020
    ref = classes(segment_raster(u8, bundle, tmp_path / "ref", config=cfg()).classes)
    args = ["predict", x4, "-m", bundle, "-o", tmp_path / "out", "--no-progress", "--device", "cpu"]
    code, _, err = run_cli(*args, "--runtime", "torch", "--no-amp", "--input-scale", "0", "1020", "0", "255")
    assert code == 0, err
    assert "x4.tif: --input-scale 0 1020 0 255 maps values" in err and "read as uint8, rounded" in err
    np.testing.assert_array_equal(classes(tmp_path / "out" / "x4_classes.tif"), ref)
    summary = json.loads((tmp_path / "out" / "x4_summary.json").read_text())
    assert summary["config"]["input_scale"] == [0.0, 1020.0, 0.0, 255.0]
    assert summary["input"]["input_scale"] == [0.0, 1020.0, 0.0, 255.0]


def test_input_scale_that_maps_outside_the_model_type_is_refused(tmp_path):
    scene = write_geotiff(tmp_path / "x4.tif", np.full((3, 20, 30), 1000, dtype="uint16"))
    with pytest.raises(InputRasterError, match=r"--input-scale 0 500 0 255 maps this scene's values 1000\.\.1000"):
        check_scene_for_model(
            inspect_scene(scene), _meta(ModelSpec(in_channels=3, num_classes=3)), input_scale=(0, 500, 0, 255)
        )


@pytest.mark.parametrize("bad", [[0, 0, 0, 255], [0, 1, 5, 5], [0, float("nan"), 0, 1]])
def test_input_scale_must_map_a_range(bad):
    from geopsp.config import load_config

    with pytest.raises(ConfigError, match=r"predict\.input_scale"):
        load_config(None, overrides=[f"predict.input_scale=[{', '.join(map(str, bad))}]"])


def test_rounding_is_half_away_from_zero_as_gdal():
    cast = InputCast(Path("s.tif"), (1,), "int16", "int16", cast_to="int16", input_scale=(0, 2, 0, 1))
    raw = np.array([[[-3, -1, 1, 3, 4]]], dtype="int16")
    assert cast.convert(raw, np.ones((1, 5), bool)).tolist() == [[[-2, -1, 1, 2, 2]]]


# ------------------------------------------------------------------------------------------
# Where the range comes from: statistics or a sample


def test_exact_statistics_are_used_and_approximate_ones_are_not(tmp_path, small_sample):
    meta = _meta(ModelSpec(in_channels=3, num_classes=3))
    data = np.random.default_rng(0).integers(0, 200, (3, 97, 131)).astype("uint16")
    data[:, 50:60, 50:60] = 300  # in no sampled window (4 windows of 32 px: the corners)
    scene = write_geotiff(tmp_path / "s.tif", data, blocksize=32)
    # approximate statistics that missed the extreme: not proof; the sample is taken, and misses it too
    set_statistics(scene, 0, 199, approximate=True)
    cast = check_scene_for_model(inspect_scene(scene), meta)
    assert cast.source == "sample" and cast.observed == (0.0, 199.0)
    assert cast.note is not None and "from a sampled read of 4 windows" in cast.note
    assert "a value outside 0..255 met later stops the run" in cast.note
    # exact statistics see every pixel: refused before the run
    exact = write_geotiff(tmp_path / "exact.tif", data, blocksize=32)
    set_statistics(exact, 0, 300)
    with pytest.raises(InputRasterError, match=r"holds 0\.\.300 \(from the file's statistics\)"):
        check_scene_for_model(inspect_scene(exact), meta)
    # exact statistics that fit: accepted from them, no pixel read
    fits = write_geotiff(tmp_path / "fits.tif", np.minimum(data, 199))
    set_statistics(fits, 0, 199)
    cast = check_scene_for_model(inspect_scene(fits), meta)
    assert cast.source == "statistics" and "(from the file's statistics)" in (cast.note or "")


def test_a_stale_sidecar_is_not_trusted(tmp_path):
    import os

    data = np.full((3, 20, 30), 7, dtype="uint16")
    scene = write_geotiff(tmp_path / "s.tif", data)
    aux = scene.with_name("s.tif.aux.xml")
    aux.write_text(
        '<PAMDataset><PAMRasterBand band="1"><Metadata><MDI key="STATISTICS_MINIMUM">0</MDI>'
        '<MDI key="STATISTICS_MAXIMUM">9</MDI></Metadata></PAMRasterBand></PAMDataset>'
    )
    os.utime(aux, ns=(1_000_000_000, 1_000_000_000))  # older than the scene
    cast = check_scene_for_model(inspect_scene(scene), _meta(ModelSpec(in_channels=3, num_classes=3)))
    assert cast.source == "every pixel" and cast.observed == (7.0, 7.0)


def test_statistics_leave_out_nodata_which_valid_pixels_may_hold(tmp_path):
    """With a nodata of 65535, a valid pixel may hold 65535 in one band: the statistics prove nothing."""
    data = np.full((3, 20, 30), 9, dtype="uint16")
    data[:, :2] = 65535  # a nodata collar
    meta = _meta(ModelSpec(in_channels=3, num_classes=3))
    scene = write_geotiff(tmp_path / "s.tif", data, nodata=65535)
    set_statistics(scene, 9, 9)
    cast = check_scene_for_model(inspect_scene(scene), meta)
    assert cast.source == "every pixel" and cast.observed == (9.0, 9.0)  # the collar is nodata, not values
    zero = write_geotiff(tmp_path / "z.tif", np.where(data == 65535, 0, data).astype("uint16"), nodata=0)
    set_statistics(zero, 9, 9)
    assert check_scene_for_model(inspect_scene(zero), meta).source == "statistics"


def test_sampled_read_is_bounded_and_spread(tmp_path, small_sample):
    from geopsp.io.values import sample_values

    data = np.zeros((1, 500, 700), dtype="uint16")
    data[0, -1, -1] = 5  # the last corner is always sampled
    scene = write_geotiff(tmp_path / "s.tif", data, blocksize=32)
    found = sample_values(inspect_scene(scene), (1,))
    assert found.source == "sample" and found.windows == 4 and found.high == 5.0
    assert found.fraction == pytest.approx((32 + 20) * (32 + 28) / (500 * 700))  # corners, two of them partial


# ------------------------------------------------------------------------------------------
# A value the check before the run did not see


def test_out_of_range_value_met_while_reading_stops_the_run_naming_it(bundle, pixels, tmp_path, small_sample):
    data = pixels.astype("uint16")
    data[1, 70, 80] = 4000  # in no sampled window
    scene = write_geotiff(tmp_path / "s.tif", data, blocksize=32)
    with pytest.raises(InputRasterError) as err:
        segment_raster(scene, bundle, tmp_path / "out", config=cfg())
    msg = str(err.value)
    assert msg.startswith(f"{scene}: value 4000 at band 2, row 70, column 80 is outside the model's uint8 range 0..255")
    assert "the check before the run found" in msg and "from a sampled read of 4 windows" in msg
    assert msg.endswith("(gdalinfo -stats s.tif stores the exact extremes, which a next run checks first)")
    assert "\n" not in msg
    out = tmp_path / "out"
    assert not out.exists() or [p.name for p in out.rglob("*")] == []  # nothing final, nothing temporary
    assert not any(TEMP_MARKER in p.name for p in tmp_path.rglob("*"))


def test_invalid_pixels_are_never_checked():
    cast = InputCast(Path("s.tif"), (1, 2), "uint16", "uint8", cast_to="uint8", limits=(0, 255), source="sample")
    raw = np.array([[[65535, 3]], [[65535, 4]]], dtype="uint16")
    out = cast.convert(raw, np.array([[False, True]]))
    assert out.dtype == np.uint8 and out[:, 0, 1].tolist() == [3, 4]
    with pytest.raises(InputRasterError, match="value 65535 at band 1, row 7, column 9"):
        cast.convert(raw, np.array([[True, True]]), row_off=7, col_off=9)


def test_float_to_integer_cast_is_quiet_about_nan_at_nodata():
    cast = InputCast(Path("s.tif"), (1,), "float32", "uint8", cast_to="uint8", limits=(0, 255), whole=True)
    raw = np.array([[[np.nan, 3.0, 2.5]]], dtype="float32")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cast.convert(raw, np.array([[False, True, False]]))[0, 0, 1] == 3
        with pytest.raises(InputRasterError, match=r"value 2\.5 at band 1, row 0, column 2 is not a whole number"):
            cast.convert(raw, np.array([[False, True, True]]))


def test_float_model_accepts_integers_exact_in_float32(tmp_path):
    meta = _meta(ModelSpec(in_channels=3, num_classes=3), dtype="float32")
    wide = write_geotiff(tmp_path / "i32.tif", np.full((3, 20, 30), 2**24 + 1, dtype="int32"))
    with pytest.raises(InputRasterError, match="whole numbers exactly only up to 16777216"):
        check_scene_for_model(inspect_scene(wide), meta)
    ok = write_geotiff(tmp_path / "ok.tif", np.full((3, 20, 30), 1000, dtype="int32"))
    cast = check_scene_for_model(inspect_scene(ok), meta)
    assert cast.source == "every pixel" and "exact in float32" in (cast.note or "") and "--input-scale" in cast.note
