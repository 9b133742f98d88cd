"""The torch-free install: ``pip install 'geopsp[onnx]'`` predicts, vectorizes, evaluates, previews and batches.

A fresh virtual environment is created by the test and geopsp installed into it with only the
``[onnx]`` extra (from the package index pip is configured with; nothing from the internet on
a machine that has a local index). torch is not installed there, so any ``import torch`` on
these paths would fail the command.
"""

from __future__ import annotations

import json
import subprocess
import venv
from pathlib import Path

import numpy as np
import pytest
import rasterio

from geopsp.config.schema import PredictConfig
from geopsp.pipeline import segment_raster
from geopsp.testing import small_scene

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A fresh venv with ``geopsp[onnx]`` and nothing of torch; yields its bin folder."""
    root = tmp_path_factory.mktemp("torch-free") / "venv"
    venv.EnvBuilder(with_pip=True).create(root)
    py = root / "bin" / "python"
    proc = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", f"{REPO}[onnx]"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode != 0:
        pytest.fail(f"pip install '{REPO}[onnx]' failed: {proc.stderr.strip()[-1500:]}")
    return root / "bin"


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    """A small real PSPNet exported to ONNX (in this, the full, environment)."""
    import torch

    from geopsp.classes import ClassTable
    from geopsp.model.bundle import save_bundle
    from geopsp.model.meta import BundleMeta, Normalization
    from geopsp.model.onnx_export import export_onnx
    from geopsp.model.registry import build_model, spec_from_preset

    torch.manual_seed(0)
    spec = spec_from_preset("fast", in_channels=3, num_classes=3, decoder_channels=32)
    meta = BundleMeta(
        spec=spec,
        classes=ClassTable.default(3),
        bands=(1, 2, 3),
        band_names=("r", "g", "b"),
        input_dtype="uint8",
        normalization=Normalization.from_stats([110.0] * 3, [50.0] * 3),
        tile_size=64,
        overlap=8,
    )
    folder = tmp_path_factory.mktemp("torch-free-model")
    bundle = save_bundle(build_model(spec).eval(), meta, folder / "model.safetensors")
    return bundle, export_onnx(bundle, folder / "model.onnx").path


def _run(bin_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(bin_dir / "geopsp"), *args], capture_output=True, text=True, timeout=600)


def test_no_torch_in_the_environment(env):
    code = "import importlib.util as u; print(u.find_spec('torch') is None, u.find_spec('onnxruntime') is not None)"
    out = subprocess.run([str(env / "python"), "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True"]


def test_predict_vectorize_evaluate_preview_without_torch(env, onnx_model, tmp_path):
    _, model = onnx_model
    scene, labels = small_scene(tmp_path, width=140, height=120, nodata_edge=True)
    out = tmp_path / "out"
    res = _run(env, "predict", str(scene), "--model", str(model), "--out", str(out), "--vector", "--no-progress")
    assert res.returncode == 0, res.stderr
    classes = next(out.glob("*_classes.tif"))
    assert next(out.glob("*_polygons.gpkg")).stat().st_size > 0
    summary = json.loads(next(out.glob("*_summary.json")).read_text())
    assert summary["device"]["runtime"] == "onnxruntime"
    # the same model in this (full) environment gives the same map
    here = segment_raster(scene, model, tmp_path / "here", config=PredictConfig())
    with rasterio.open(classes) as a, rasterio.open(here.classes) as b:
        assert np.array_equal(a.read(1), b.read(1))

    res = _run(env, "vectorize", str(classes), "--out", str(tmp_path / "v.gpkg"))
    assert res.returncode == 0, res.stderr
    res = _run(env, "evaluate", str(classes), str(labels), "--out", str(tmp_path / "eval"))
    assert res.returncode == 0, res.stderr
    res = _run(env, "evaluate", str(labels), "--model", str(model), "--scene", str(scene))
    assert res.returncode == 0, res.stderr
    assert "miou" in json.loads(res.stdout)
    res = _run(env, "preview", str(scene), str(classes), "--out", str(tmp_path / "p.png"))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "p.png").stat().st_size > 0


def test_batch_without_torch(env, onnx_model, tmp_path):
    _, model = onnx_model
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    for seed in (1, 2):
        small_scene(scenes, width=90, height=70, seed=seed)
    out = tmp_path / "batch"
    res = _run(env, "batch", str(scenes), "--model", str(model), "--out", str(out), "--workers", "1")
    assert res.returncode == 0, res.stderr
    assert len(list(out.rglob("*_classes.tif"))) == 2


def test_a_bundle_without_torch_is_one_line(env, onnx_model, tmp_path):
    bundle, _ = onnx_model
    scene, _ = small_scene(tmp_path)
    res = _run(env, "predict", str(scene), "--model", str(bundle), "--out", str(tmp_path / "o"))
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "torch is not installed" in lines[0] and "geopsp[torch]" in lines[0], res.stderr


def test_remote_scene_and_stac_item_without_torch(env, onnx_model, tmp_path):
    """A COG over HTTP and a STAC item of it predict in the torch-free install as the local file does."""
    from geopsp.testing_servers import RangeServer

    _, model = onnx_model
    scene, _ = small_scene(tmp_path, width=140, height=120, name="remote.tif")
    item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": "remote-item",
        "geometry": None,
        "properties": {"datetime": "2024-06-01T00:00:00Z"},
        "links": [],
        "assets": {"image": {"href": "remote.tif", "type": "image/tiff", "roles": ["data"]}},
    }
    from geopsp.inference.runtime import model_meta

    bands = [{"name": n} for n in model_meta(model).band_names]  # one 3-band asset, bands named as the model's
    item["assets"]["image"]["eo:bands"] = bands  # type: ignore[index]
    (tmp_path / "item.json").write_text(json.dumps(item))
    here = segment_raster(scene, model, tmp_path / "here", config=PredictConfig())
    with RangeServer(tmp_path) as srv:
        for name, arg in (("url", srv.url("remote.tif")), ("stac", srv.url("item.json"))):
            res = _run(env, "predict", arg, "--model", str(model), "--out", str(tmp_path / name), "--no-progress")
            assert res.returncode == 0, res.stderr
            classes = next((tmp_path / name).glob("*_classes.tif"))
            with rasterio.open(classes) as a, rasterio.open(here.classes) as b:
                assert np.array_equal(a.read(1), b.read(1)), name
