"""ONNX export and ONNX Runtime: metadata, the Deepness contract, classes equal to torch, runtime choice, bad files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import rasterio
import torch
from click.testing import CliRunner

from geopsp.classes import ClassTable
from geopsp.config.schema import PredictConfig
from geopsp.errors import CheckpointError, ConfigError, QuantizationWarning
from geopsp.inference.ort import OnnxModel, OrtPredictor
from geopsp.inference.predict import Predictor
from geopsp.inference.runtime import (
    AUTO_EXPORT_MIN_MEGAPIXELS,
    cached_export,
    choose_runtime,
    load_onnx,
    make_predictor,
)
from geopsp.model.bundle import load_bundle, save_bundle
from geopsp.model.meta import BundleMeta, Normalization
from geopsp.model.onnx_export import export_onnx, write_onnx
from geopsp.model.onnx_meta import DEEPNESS_KEYS, deepness_keys
from geopsp.model.registry import build_model, spec_from_preset
from geopsp.pipeline import segment_raster
from geopsp.testing import small_scene

TILE = 64


def _meta(spec, *, dtype="uint8", norm=None, bands=(1, 2, 3), pixel_size=10.0, crs="EPSG:32633"):
    return BundleMeta(
        spec=spec,
        classes=ClassTable.from_list(
            [{"id": 3, "name": "water"}, {"id": 5, "name": "forest"}, {"id": 9, "name": "urban"}]
        ),
        bands=bands,
        band_names=("red", "green", "blue"),
        input_dtype=dtype,
        normalization=norm or Normalization.from_stats([100.0, 90.0, 80.0], [50.0, 40.0, 30.0]),
        pixel_size=pixel_size,
        tile_size=TILE,
        overlap=8,
        provenance={"crs": crs, "trained": False},
    )


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A small real PSPNet bundle (ResNet-18 cut after stage 3, 32-channel pyramid head).

    Seed 1 maps the test scene to three classes (seed 0 to almost one: a weak test of equality).
    """
    torch.manual_seed(1)
    spec = spec_from_preset("fast", in_channels=3, num_classes=3, decoder_channels=32)
    model = build_model(spec).eval()
    with torch.no_grad():  # a confident model: spread the classifier so classes rarely tie
        for p in model.parameters():
            if p.ndim == 4 and p.shape[0] == 3:
                p.mul_(8.0)
    path = tmp_path_factory.mktemp("onnx") / "model.safetensors"
    save_bundle(model, _meta(spec), path)
    return path


@pytest.fixture(scope="module")
def exported(bundle):
    return export_onnx(bundle, bundle.with_name("model.onnx"))


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    path, _ = small_scene(tmp_path_factory.mktemp("scene"), width=150, height=133, nodata_edge=True)
    return path


def test_export_carries_the_bundle_metadata_and_passes_its_check(bundle, exported):
    model = OnnxModel.load(exported.path)
    assert model.meta.to_dict() == load_bundle(bundle).meta.to_dict()
    assert model.info.tile_size == TILE and model.info.margin_px == 16 and model.info.precision == "fp32"
    assert model.info.bundle_sha256 and model.info.check["pixels"] == 2 * TILE * TILE
    assert model.info.check["agreement"] >= 0.9999 and model.info.check["max_abs_diff"] < 1e-4
    inputs = model.session.get_inputs()
    assert inputs[0].shape[1:] == [3, TILE, TILE] and not isinstance(inputs[0].shape[0], int)  # dynamic batch


def test_deepness_keys_follow_its_contract(exported):
    props = {p.key: json.loads(p.value) for p in onnx.load(str(exported.path)).metadata_props}
    assert exported.deepness is None and set(DEEPNESS_KEYS) <= set(props)
    assert props["model_type"] == "Segmentor"
    assert props["class_names"] == {"0": "water", "1": "forest", "2": "urban"}  # channels, consecutive
    assert props["tiles_size"] == props["tile_size"] == TILE
    assert props["tiles_overlap"] == round(100 * 8 / TILE)  # percent of the tile, not pixels
    assert props["resolution"] == 1000.0  # 10 m (the synthetic scenes' pixels) -> cm per pixel
    # Deepness: x/255, then (x - mean) / std  ==  geopsp: (raw - offset) / scale
    assert props["standardization_mean"] == pytest.approx([100 / 255, 90 / 255, 80 / 255])
    assert props["standardization_std"] == pytest.approx([50 / 255, 40 / 255, 30 / 255])
    raw = np.array([0.0, 37.0, 255.0])
    deep = (raw / 255 - props["standardization_mean"][0]) / props["standardization_std"][0]
    assert deep == pytest.approx((raw - 100.0) / 50.0)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"dtype": "uint16"}, "uint16"),
        ({"bands": (3, 2, 1)}, "reads bands"),
        ({"norm": Normalization.from_percentiles([0.0] * 3, [200.0] * 3)}, "clips"),
    ],
)
def test_a_bundle_outside_the_deepness_contract_says_why(changes, reason):
    spec = spec_from_preset("fast", in_channels=3, num_classes=3)
    keys, why = deepness_keys(_meta(spec, **changes), TILE)
    assert keys == {} and why is not None and reason in why


def test_resolution_is_left_out_for_a_geographic_crs():
    spec = spec_from_preset("fast", in_channels=3, num_classes=3)
    keys, why = deepness_keys(_meta(spec, pixel_size=0.0001, crs="EPSG:4326"), TILE)
    assert why is None and "resolution" not in keys


def test_ort_probabilities_equal_the_torch_predictor(bundle, exported):
    b = load_bundle(bundle)
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 255, size=(3, 3, TILE, TILE)).astype("uint8")
    valid = rng.random((3, TILE, TILE)) > 0.1
    for tta in ("none", "d4"):
        tp = Predictor(b.model, b.meta, device="cpu", amp=False, tta=tta, margin_px=16)
        op = OrtPredictor(OnnxModel.load(exported.path), tta=tta)
        tiles = [tp.prepare(None, raw[i], valid[i]) for i in range(3)]  # type: ignore[arg-type]
        x, _ = tp.to_device([t[0] for t in tiles], [t[1] for t in tiles])
        xo, _ = op.to_device([t[0] for t in tiles], [t[1] for t in tiles])
        a = tp.probabilities(x).numpy()
        o = op.probabilities(xo)
        assert o.shape == a.shape and np.abs(a - o).max() < 1e-4
        assert (a.argmax(1) == o.argmax(1)).mean() >= 0.9999


def _classes(path):
    with rasterio.open(path) as src:
        return src.read(1)


@pytest.mark.parametrize("tta", ["none", "flip"])
def test_an_onnx_model_maps_a_scene_as_its_bundle_does(bundle, exported, scene, tmp_path, tta):
    torch_run = segment_raster(scene, bundle, tmp_path / "t", config=PredictConfig(runtime="torch", tta=tta, amp=False))
    ort_run = segment_raster(scene, exported.path, tmp_path / "o", config=PredictConfig(tta=tta))
    a, b = _classes(torch_run.classes), _classes(ort_run.classes)
    assert (a == 255).any() and np.array_equal(a == 255, b == 255)  # nodata where the scene has none
    assert (a == b).mean() >= 0.9999
    assert len(np.unique(a[a != 255])) >= 2  # a real map, not one class
    assert ort_run.summary["device"]["runtime"] == "onnxruntime"
    assert torch_run.summary["device"]["runtime"] == "torch"


def test_runtime_choice(bundle, exported, tmp_path):
    small = 10_000
    assert choose_runtime(exported.path, PredictConfig()).runtime == "onnxruntime"
    with pytest.raises(ConfigError, match="torch cannot run an ONNX model"):
        choose_runtime(exported.path, PredictConfig(runtime="torch"))
    with pytest.raises(ConfigError, match="CPU"):
        choose_runtime(exported.path, PredictConfig(device="cuda"))
    meta = load_bundle(bundle).meta
    # a small run: exporting would not pay, nothing cached for this tile size
    choice = choose_runtime(bundle, PredictConfig(device="cpu", tile_size=96), meta=meta, pixels=small)
    assert choice.runtime == "torch" and "would not pay" in choice.reason
    big = int(AUTO_EXPORT_MIN_MEGAPIXELS * 1e6) + 1
    assert choose_runtime(bundle, PredictConfig(device="cpu", tile_size=96), meta=meta, pixels=big).runtime == (
        "onnxruntime"
    )
    assert choose_runtime(bundle, PredictConfig(device="cpu", amp=True), meta=meta, pixels=big).runtime == "torch"
    b = load_bundle(bundle)
    assert choose_runtime((b.model, b.meta), PredictConfig(device="cpu"), pixels=big).runtime == "torch"


def test_onnxruntime_on_a_bundle_exports_once_into_the_cache(bundle, tmp_path):
    cfg = PredictConfig(runtime="onnxruntime", tile_size=96, device="cpu")
    assert cached_export(bundle, tile_size=96, margin_px=16, create=False) is None
    predictor, meta, path, choice = make_predictor(bundle, cfg)
    assert isinstance(predictor, OrtPredictor) and choice.runtime == "onnxruntime" and path == str(bundle)
    cached = cached_export(bundle, tile_size=96, margin_px=16, create=False)
    assert cached is not None and cached.is_file() and predictor.model.path == cached
    # auto now finds the cached export, whatever the scene size
    auto = choose_runtime(bundle, PredictConfig(device="cpu", tile_size=96), meta=meta, pixels=1)
    assert auto.runtime == "onnxruntime" and "cached" in auto.reason


def test_a_tile_size_other_than_the_graphs_is_refused(exported):
    with pytest.raises(ConfigError, match=rf"takes {TILE} px tiles"):
        make_predictor(exported.path, PredictConfig(tile_size=128))


def test_sessions_are_built_once_per_process(exported):
    assert load_onnx(exported.path) is load_onnx(exported.path)


def test_plain_onnx_without_geopsp_metadata_is_refused(exported, tmp_path):
    proto = onnx.load(str(exported.path))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    with pytest.raises(CheckpointError, match=r"metadata lacks format, geopsp, geopsp_onnx.*geopsp model export") as e:
        OnnxModel.load(bare)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_damaged_onnx_files_give_one_line(exported, tmp_path, damage):
    data = exported.path.read_bytes()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x07" * 5000, "empty": b""}[damage])
    with pytest.raises(CheckpointError, match=r"bad\.onnx") as e:
        OnnxModel.load(bad)
    assert "\n" not in str(e.value)


def test_an_int8_model_below_the_gate_warns(exported, tmp_path):
    model = OnnxModel.load(exported.path)
    weak = tmp_path / "weak.onnx"
    info = model.info.replace(precision="int8", quantization={"agreement": 0.95, "pixels": 1000})
    write_onnx(onnx.load(str(exported.path)), model.meta, info, weak, overwrite=False)
    with pytest.warns(QuantizationWarning, match="agreement 0.9500"):
        OnnxModel.load(weak)


def test_cli_export_and_predict(bundle, scene, tmp_path):
    from geopsp.cli.main import cli

    runner = CliRunner()
    out = tmp_path / "cli.onnx"
    res = runner.invoke(cli, ["model", "export", str(bundle), "--out", str(out), "--no-stac"])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().splitlines() == [str(out)] and "agree with torch" in res.stderr
    again = runner.invoke(cli, ["model", "export", str(bundle), "--out", str(out), "--no-stac"])
    assert again.exit_code != 0 and "exists" in str(again.exception)  # never clobbered without --overwrite
    res = runner.invoke(
        cli, ["predict", str(scene), "--model", str(out), "--out", str(tmp_path / "p"), "--no-progress"]
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(next((tmp_path / "p").glob("*_summary.json")).read_text())
    assert summary["device"]["runtime"] == "onnxruntime" and summary["device"]["precision"] == "fp32"
    res = runner.invoke(cli, ["model", "info", str(out)])
    assert res.exit_code == 0 and "geopsp-onnx" in res.stdout and f"{TILE} px tiles (fixed)" in res.stdout
    res = runner.invoke(cli, ["model", "info", str(out), "--json"])
    assert json.loads(res.stdout)["onnx"]["tile_size"] == TILE


def test_cli_predict_with_a_damaged_onnx_is_one_line(scene, tmp_path):
    from geopsp.cli.main import main

    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not onnx at all")
    with pytest.raises(SystemExit) as e:
        main(["predict", str(scene), "--model", str(bad), "--out", str(tmp_path / "x")])
    assert e.value.code == 1


def test_export_refuses_a_margin_that_does_not_fit(bundle, tmp_path):
    with pytest.raises(ConfigError, match="margin"):
        export_onnx(bundle, tmp_path / "m.onnx", tile_size=32, margin_px=32)
    assert not (tmp_path / "m.onnx").exists()


def test_onnx_export_path_is_not_created_on_failure(bundle, tmp_path):
    out = tmp_path / "exists.onnx"
    out.write_bytes(b"keep me")
    with pytest.raises(Exception, match="exists"):
        export_onnx(bundle, out)
    assert out.read_bytes() == b"keep me"
    assert Path(out).is_file()


def test_a_scene_smaller_than_the_graphs_tile_runs(exported, tmp_path):
    """The tiler shrinks the model input to a small scene (rounded up to 32 px); the fixed graph gets it padded."""
    scene, _ = small_scene(tmp_path, width=23, height=30, nodata_edge=False)
    result = segment_raster(scene, exported.path, tmp_path / "o", config=PredictConfig())
    a = _classes(result.classes)
    assert a.shape == (30, 23) and set(np.unique(a)) <= {3, 5, 9}
