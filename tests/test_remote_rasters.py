"""Remote rasters through vectorize, evaluate and preview: the same results as the local files.

The files are served by a loopback HTTP server with range requests (or moto's S3) started by
the test (:mod:`geopsp.testing_servers`); each remote result is compared with the one from the
same file read locally, and each failure is one line on stderr, exit 1 and no output.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import geopandas as gpd
import pytest
import rasterio
import rasterio.shutil
import shapely
from click.testing import CliRunner

from geopsp.cli.main import cli
from geopsp.config.schema import VectorizeConfig
from geopsp.eval import evaluate_rasters
from geopsp.preview import render_preview
from geopsp.synthetic import make_scene
from geopsp.testing import run_cli
from geopsp.testing_servers import RangeServer
from geopsp.vectorize import vectorize

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A COG scene, its class raster (labels, with their class table) and a prediction with errors."""
    root = tmp_path_factory.mktemp("served")
    make_scene(root / "plain.tif", width=200, height=150, bands=3, seed=2, labels_path=root / "labels.tif")
    with rasterio.open(root / "plain.tif") as src:
        rasterio.shutil.copy(src, root / "scene.tif", driver="COG", BLOCKSIZE=64, OVERVIEWS="NONE")
    with rasterio.open(root / "labels.tif") as src:
        rasterio.shutil.copy(src, root / "classes.tif", driver="COG", BLOCKSIZE=64, OVERVIEWS="NONE")
        profile, tags, labels = src.profile, src.tags(), src.read(1)
    pred = labels.copy()
    pred[40:90, 30:120] = pred[40:90, 30:120][::-1, ::-1]  # a wrong patch: imperfect scores
    with rasterio.open(root / "pred.tif", "w", **profile) as dst:
        dst.write(pred, 1)
        dst.update_tags(**tags)
    return root


def _polygons(path: Path) -> gpd.GeoDataFrame:
    gdf = gpd.read_file(path, layer=path.stem)
    gdf["geometry"] = shapely.normalize(gdf.geometry.values)
    return gdf.sort_values(["class_id", "area_m2", "perimeter_m"]).reset_index(drop=True)


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


# ---------------------------------------------------------------- vectorize


def test_vectorize_over_http_equals_local_and_reads_only_the_raster(served, tmp_path):
    cfg = VectorizeConfig.model_validate({"block_rows": 64, "simplify": 10.0, "workers": 1})
    local = _polygons(vectorize(served / "classes.tif", tmp_path / "local.gpkg", config=cfg))
    with RangeServer(served) as srv:
        out = vectorize(srv.url("classes.tif"), tmp_path / "remote.gpkg", config=cfg)
        asked = {path for _, path in srv.requests}
    assert asked == {"/classes.tif"}  # no sidecar (.aux.xml, .qml, .msk, .ovr) probed over the network
    remote = _polygons(out)
    assert len(remote) == len(local) > 10
    assert remote.drop(columns="geometry").equals(local.drop(columns="geometry"))
    assert list(remote.geometry.values) == list(local.geometry.values)
    assert set(remote["scene"]) == set(local["scene"])  # from the raster's tag, not from the URL
    assert (tmp_path / "remote.qml").is_file()  # the style goes next to the local output


def test_vectorize_s3_in_worker_processes_equals_local(served, tmp_path, s3_server):
    bucket = f"classes-{uuid.uuid4().hex[:8]}"
    client = s3_server.client()
    client.create_bucket(Bucket=bucket)
    client.upload_file(str(served / "classes.tif"), bucket, "a/classes.tif")
    cfg = VectorizeConfig.model_validate({"block_rows": 32, "workers": 2})
    local = _polygons(vectorize(served / "classes.tif", tmp_path / "local.fgb", config=cfg))
    # spawned workers inherit no GDAL configuration: each must find the S3 endpoint itself
    remote = _polygons(vectorize(f"s3://{bucket}/a/classes.tif", tmp_path / "s3.fgb", config=cfg))
    assert remote.drop(columns="geometry").equals(local.drop(columns="geometry"))
    assert list(remote.geometry.values) == list(local.geometry.values)


def test_vectorize_cli_404_is_one_line_and_writes_nothing(served, tmp_path):
    with RangeServer(served) as srv:
        url = srv.url("missing.tif")
        code, out, err = run_cli("vectorize", url, "-o", tmp_path / "p.gpkg", "--no-progress")
    assert code == 1 and not out
    line = _one_line(err)
    assert url in line and "not found (HTTP 404); check the URL" in line
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- evaluate


def _without_inputs(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in ("prediction", "reference", "scene")}


def test_evaluate_remote_prediction_and_reference_equal_local(served, tmp_path):
    local = evaluate_rasters(served / "pred.tif", served / "classes.tif", block_rows=32)
    with RangeServer(served) as srv:
        remote = evaluate_rasters(srv.url("pred.tif"), srv.url("classes.tif"), block_rows=32)
        code, out, err = run_cli("evaluate", srv.url("pred.tif"), "/vsicurl/" + srv.url("classes.tif"), "--buildings")
    assert remote.prediction == srv.url("pred.tif")
    assert _without_inputs(remote.to_dict()) == _without_inputs(local.to_dict())
    assert 0 < local.scores.miou < 1
    assert code == 0, err
    report = json.loads(out)
    assert report["reference"] == "/vsicurl/" + srv.url("classes.tif")
    res = CliRunner().invoke(cli, ["evaluate", str(served / "pred.tif"), str(served / "classes.tif"), "--buildings"])
    assert res.exit_code == 0, res.output
    assert _without_inputs(report) == _without_inputs(json.loads(res.stdout))


def test_evaluate_remote_scene_with_a_model_equals_local(served, tmp_path):
    bundle = tmp_path / "m.safetensors"
    args = ["model", "create", "--preset", "fast", "--encoder", "resnet18", "--bands", "3", "--classes", "6"]
    assert run_cli(*args, "--tile", "64", "--overlap", "8", "--out", bundle)[0] == 0
    common = ["--model", bundle, "--set", "predict.device=cpu", "--set", "predict.batch_size=4"]
    code, out, err = run_cli("evaluate", *common, "--scene", served / "scene.tif", served / "classes.tif")
    assert code == 0, err
    with RangeServer(served) as srv:
        url = srv.url("scene.tif")
        rcode, rout, rerr = run_cli("evaluate", *common, "--scene", url, srv.url("classes.tif"))
    assert rcode == 0, rerr
    remote = json.loads(rout)
    assert remote["scene"] == url
    assert _without_inputs(remote) == _without_inputs(json.loads(out))


def test_evaluate_cli_unreachable_is_one_line_and_writes_nothing(served, tmp_path):
    with RangeServer(served) as srv:
        url = srv.url("pred.tif")
    # the server is stopped: nothing listens on its port any more
    code, out, err = run_cli("evaluate", url, served / "classes.tif", "--out", tmp_path / "report")
    assert code == 1 and not out
    line = _one_line(err)
    assert url in line and "cannot reach the server" in line
    assert not (tmp_path / "report").exists()


def test_a_remote_vector_reference_is_refused_in_one_line(served, tmp_path):
    with RangeServer(served) as srv:
        url = srv.url("labels.gpkg")
        code, out, err = run_cli("evaluate", served / "pred.tif", url)
    assert code == 1 and not out
    line = _one_line(err)
    assert url in line and "vector labels are read from local files; download it first" in line
    assert srv.requests == {}  # refused before any request


# ---------------------------------------------------------------- preview


def test_preview_of_remote_scene_and_classes_equals_local(served, tmp_path):
    local = render_preview(served / "scene.tif", served / "classes.tif", tmp_path / "local.png", outlines=True)
    with RangeServer(served) as srv:
        code, out, err = run_cli(
            "preview", srv.url("scene.tif"), srv.url("classes.tif"), "-o", tmp_path / "remote.png", "--outlines"
        )
    assert code == 0, err
    assert out.strip() == str(tmp_path / "remote.png")
    assert (tmp_path / "remote.png").read_bytes() == local.read_bytes()


@pytest.mark.parametrize(("status", "expect"), [(404, "not found (HTTP 404)"), (403, "access denied (HTTP 403)")])
def test_preview_cli_http_errors_are_one_line_and_write_nothing(served, tmp_path, status, expect):
    with RangeServer(served, status=None if status == 404 else status) as srv:
        url = srv.url("missing.tif" if status == 404 else "classes.tif")
        code, out, err = run_cli("preview", served / "scene.tif", url, "-o", tmp_path / "q.png")
    assert code == 1 and not out
    line = _one_line(err)
    assert url in line and expect in line
    assert list(tmp_path.iterdir()) == []
