"""Outputs written to S3 (``--out s3://bucket/prefix/``) against a real S3 API on loopback (moto's server mode).

The session's ``s3_server`` points ``AWS_ENDPOINT_URL`` at the server and sets test
credentials; each test makes its own bucket. 403s are real: the server checks signatures and
IAM policies inside ``s3_server.enforcing_auth()``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")
pytest.importorskip("boto3")

# ---------------------------------------------------------------- helpers


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def errors(self) -> list[str]:
        return [ln for ln in self.stderr.splitlines() if ln.strip()]


def geopsp(*argv: str) -> Run:
    """Run the CLI in-process (``geopsp.cli.main.main``: one-line errors, exit codes)."""
    from geopsp.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(list(argv))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        logging.captureWarnings(False)
        logging.getLogger("geopsp").handlers.clear()
        logging.getLogger("py.warnings").handlers.clear()
    return Run(code, out.getvalue(), err.getvalue())


def keys(s3, bucket: str, prefix: str = "") -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", ()))


def read_s3_raster(uri: str) -> np.ndarray:
    """Read band 1 through GDAL's /vsis3/ with geopsp's remote-read options (the endpoint from the environment).

    They keep GDAL from probing sidecars, which matters here: GDAL reading the ``.aux.xml``
    from this in-process server never gets its answer.
    """
    from geopsp.io.s3 import split_s3_uri
    from geopsp.io.source import remote_gdal_options

    bucket, key = split_s3_uri(uri)
    with rasterio.Env(**remote_gdal_options()), rasterio.open(f"/vsis3/{bucket}/{key}") as ds:
        return ds.read(1)


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- data


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "m.safetensors"
    args = ["model", "create", "--preset", "fast", "--encoder", "resnet18", "--bands", "3", "--classes", "4"]
    res = geopsp(*args, "--tile", "64", "--overlap", "8", "--out", str(path))
    assert res.code == 0, res.stderr
    return path


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    from geopsp.synthetic import make_scene

    root = tmp_path_factory.mktemp("scenes")
    make_scene(root / "s1.tif", width=97, height=83, bands=3, seed=3, labels_path=root / "labels.tif")
    return root / "s1.tif"


@pytest.fixture(scope="module")
def local_classes(bundle, scene, tmp_path_factory) -> Path:
    """The class raster of the same run into a local folder."""
    out = tmp_path_factory.mktemp("local")
    res = geopsp("predict", str(scene), "--model", str(bundle), "--out", str(out), "--no-progress")
    assert res.code == 0, res.stderr
    return out / "s1_classes.tif"


@pytest.fixture
def bucket(s3_server) -> str:
    name = f"t-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=name)
    return name


def predict(bundle: Path, scene: Path, out: str, *extra: str) -> Run:
    return geopsp("predict", str(scene), "--model", str(bundle), "--out", out, "--no-progress", *extra)


# ---------------------------------------------------------------- predict


def test_predict_uploads_the_set_and_the_classes_equal_a_local_run(s3_server, bucket, bundle, scene, local_classes):
    res = predict(bundle, scene, f"s3://{bucket}/runs/one/", "--probabilities", "--vector")
    assert res.code == 0, res.stderr
    names = ["s1_class_areas.csv", "s1_classes.qml", "s1_classes.tif", "s1_classes.tif.aux.xml", "s1_polygons.gpkg"]
    names += ["s1_polygons.qml", "s1_probability.qml", "s1_probability.tif", "s1_summary.json"]
    assert keys(s3_server.client(), bucket) == [f"runs/one/{n}" for n in names]
    # stdout lists the objects, class raster first, summary last
    lines = res.stdout.split()
    assert lines[0] == f"s3://{bucket}/runs/one/s1_classes.tif" and lines[-1].endswith("s1_summary.json")
    assert sorted(lines) == sorted(f"s3://{bucket}/runs/one/{n}" for n in names)
    np.testing.assert_array_equal(read_s3_raster(lines[0]), read(local_classes))
    # the summary names the objects, not the staging folder
    body = s3_server.client().get_object(Bucket=bucket, Key="runs/one/s1_summary.json")["Body"].read()
    outputs = json.loads(body)["outputs"]
    assert outputs["classes"] == lines[0] and all(v.startswith(f"s3://{bucket}/runs/one/") for v in outputs.values())


def test_predict_to_one_s3_file_names_the_others_after_it(s3_server, bucket, bundle, scene, local_classes):
    res = predict(bundle, scene, f"s3://{bucket}/maps/area_classes.tif")
    assert res.code == 0, res.stderr
    assert keys(s3_server.client(), bucket) == [
        "maps/area_class_areas.csv",
        "maps/area_classes.qml",
        "maps/area_classes.tif",
        "maps/area_classes.tif.aux.xml",
        "maps/area_summary.json",
    ]
    np.testing.assert_array_equal(read_s3_raster(f"s3://{bucket}/maps/area_classes.tif"), read(local_classes))


def test_library_returns_the_uris(s3_server, bucket, bundle, scene):
    from geopsp.model.bundle import load_bundle
    from geopsp.pipeline import segment_raster

    result = segment_raster(scene, load_bundle(bundle), f"s3://{bucket}/lib")
    assert result.uris["classes"] == f"s3://{bucket}/lib/s1_classes.tif"
    assert result.locations[-1] == f"s3://{bucket}/lib/s1_summary.json"
    assert not result.classes.exists()  # the staging folder is gone
    assert len(keys(s3_server.client(), bucket, "lib/")) == len(result.uris)


def test_existing_outputs_are_refused_before_any_work_and_replaced_with_overwrite(s3_server, bucket, bundle, scene):
    s3 = s3_server.client()
    s3.put_object(Bucket=bucket, Key="p/s1_summary.json", Body=b"{}")
    res = predict(bundle, scene, f"s3://{bucket}/p/")
    assert res.code == 1
    assert res.errors == [
        f"Error: s3://{bucket}/p/s1_summary.json: already exists; pass --overwrite (overwrite=True) to replace it"
    ]
    assert keys(s3, bucket) == ["p/s1_summary.json"]
    res = predict(bundle, scene, f"s3://{bucket}/p/", "--overwrite")
    assert res.code == 0, res.stderr
    assert json.loads(s3.get_object(Bucket=bucket, Key="p/s1_summary.json")["Body"].read())["schema"]
    assert len(keys(s3, bucket)) == 5
    # a complete set exists now: the class raster alone refuses the run too
    s3.delete_object(Bucket=bucket, Key="p/s1_summary.json")
    res = predict(bundle, scene, f"s3://{bucket}/p/")
    assert res.code == 1 and res.errors == [
        f"Error: s3://{bucket}/p/s1_classes.tif: already exists; pass --overwrite (overwrite=True) to replace it"
    ]


def test_a_failed_upload_mid_set_leaves_no_summary_and_no_member(s3_server, bucket, bundle, scene):
    """The server refuses the summary (a real 403 from an IAM policy): the members already uploaded are removed."""
    user = s3_server.user(
        f"no-summary-{bucket}",
        {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
                {"Effect": "Deny", "Action": "s3:PutObject", "Resource": f"arn:aws:s3:::{bucket}/*_summary.json"},
            ],
        },
    )
    with pytest.MonkeyPatch.context() as mp, s3_server.enforcing_auth():
        for k, v in user.items():
            mp.setenv(k, v)
        res = predict(bundle, scene, f"s3://{bucket}/mid/")
    assert res.code == 1
    assert len(res.errors) == 1, res.errors
    refused = f"Error: s3://{bucket}/mid/s1_summary.json: S3 refused access (HTTP 403 AccessDenied"
    assert res.errors[0].startswith(refused)
    assert keys(s3_server.client(), bucket) == []


def test_a_scene_failing_mid_run_uploads_nothing(s3_server, bucket, bundle, scene, tmp_path):
    broken = tmp_path / "broken.tif"
    data = scene.read_bytes()
    broken.write_bytes(data[: len(data) * 2 // 3])  # a valid header, pixel data cut off
    res = predict(bundle, broken, f"s3://{bucket}/b/")
    assert res.code == 1 and len(res.errors) == 1, res.errors
    assert keys(s3_server.client(), bucket) == []


def test_wrong_credentials_are_one_line_403_before_any_work(s3_server, bucket, bundle, scene, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOSUCHKEY0000000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with s3_server.enforcing_auth():
        res = predict(bundle, scene, f"s3://{bucket}/x/")
    assert res.code == 1
    assert len(res.errors) == 1, res.errors
    assert res.errors[0].startswith(f"Error: s3://{bucket}/x/: S3 refused access (HTTP 403")
    assert "AWS_ACCESS_KEY_ID" in res.errors[0]
    assert keys(s3_server.client(), bucket) == []


def test_missing_bucket_is_one_line(s3_server, bundle, scene):
    del s3_server
    res = predict(bundle, scene, "s3://no-such-bucket-here/x/")
    assert res.code == 1
    assert res.errors == [
        "Error: s3://no-such-bucket-here/x/: the bucket 'no-such-bucket-here' does not exist (HTTP 404); "
        "check the bucket name and AWS_ENDPOINT_URL"
    ]


def test_unreachable_endpoint_is_one_line(s3_server, bundle, scene, monkeypatch):
    del s3_server
    port = free_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    res = predict(bundle, scene, "s3://anything/x/")
    assert res.code == 1
    assert len(res.errors) == 1, res.errors
    assert res.errors[0].startswith("Error: s3://anything/x/: cannot reach S3 (")
    assert f"127.0.0.1:{port}" in res.errors[0] and "AWS_ENDPOINT_URL" in res.errors[0]


def test_without_boto3_s3_out_is_a_config_error(s3_server, bundle, scene, monkeypatch):
    del s3_server
    monkeypatch.setitem(sys.modules, "boto3", None)
    res = predict(bundle, scene, "s3://anything/x/")
    assert res.code == 1
    assert res.errors == ["Error: s3:// needs boto3, which is not installed; pip install 'geopsp[s3]'"]


def test_bad_s3_keys_are_refused(bundle, scene):
    res = predict(bundle, scene, "s3://bucket/a/../b/")
    assert res.code == 1 and len(res.errors) == 1 and "'..'" in res.errors[0]


def test_staging_folders_of_killed_processes_are_removed(tmp_path, monkeypatch):
    import tempfile

    from geopsp.io import atomic
    from geopsp.io.s3 import S3Destination

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = tmp_path / f"{atomic.TEMP_MARKER}{atomic._HOST}-999999999-0123abcd-s3-x1"
    alive = tmp_path / f"{atomic.TEMP_MARKER}{atomic._HOST}-{os.getppid()}-0123abcd-s3-x2"
    dead.mkdir()
    alive.mkdir()
    with S3Destination.staged("s3://b/p/") as dest:
        assert dest.local == dest.root / "p/" and dest.root.is_dir()
        root = dest.root
    assert not root.exists() and not dead.exists() and alive.exists()


# ---------------------------------------------------------------- vectorize, evaluate


def test_vectorize_uploads_the_polygons_and_their_style(s3_server, bucket, local_classes):
    uri = f"s3://{bucket}/v/polys.gpkg"
    res = geopsp("vectorize", str(local_classes), "--out", uri, "--no-progress")
    assert res.code == 0, res.stderr
    assert res.stdout.split() == [uri, f"s3://{bucket}/v/polys.qml"]  # every object written, OUT first
    s3 = s3_server.client()
    assert keys(s3, bucket) == ["v/polys.gpkg", "v/polys.qml"]
    res = geopsp("vectorize", str(local_classes), "--out", uri, "--no-progress")
    assert res.code == 1
    assert res.errors == [f"Error: {uri}: already exists; pass --overwrite (overwrite=True) to replace it"]
    assert geopsp("vectorize", str(local_classes), "--out", uri, "--no-progress", "--overwrite").code == 0


def test_evaluate_uploads_the_prediction_and_the_report_last(s3_server, bucket, bundle, scene):
    labels = scene.with_name("labels.tif")
    out = f"s3://{bucket}/ev/"
    args = ["evaluate", "--model", str(bundle), "--scene", str(scene), str(labels), "--out", out]
    args += ["--ignore-value", "4", "--ignore-value", "5"]  # the synthetic labels have 6 classes, the model 4
    res = geopsp(*args)
    assert res.code == 0, res.stderr
    names = ["classes.csv", "confusion.csv", "confusion.png", "report.json", "s1_class_areas.csv", "s1_classes.qml"]
    names += ["s1_classes.tif", "s1_classes.tif.aux.xml", "s1_summary.json"]
    assert keys(s3_server.client(), bucket) == [f"ev/{n}" for n in names]
    wrote = next(ln for ln in res.errors if ln.startswith("wrote "))
    assert wrote.endswith(f"{out}report.json")
    report = json.loads(s3_server.client().get_object(Bucket=bucket, Key="ev/report.json")["Body"].read())
    assert report["scene"] == str(scene) and "miou" in report
    res = geopsp(*args)
    assert res.code == 1
    assert res.errors == [f"Error: {out}report.json: already exists; pass --overwrite (overwrite=True) to replace it"]


# ---------------------------------------------------------------- batch


@pytest.fixture(scope="module")
def batch_scenes(tmp_path_factory) -> Path:
    from geopsp.synthetic import make_scene

    root = tmp_path_factory.mktemp("batch-scenes")
    labels = tmp_path_factory.mktemp("batch-labels")
    make_scene(root / "a.tif", width=96, height=80, bands=3, seed=1, labels_path=labels / "a.tif")
    make_scene(root / "sub" / "big.tif", width=150, height=600, bands=3, seed=7, labels_path=labels / "big.tif")
    return root


@pytest.mark.dask
@pytest.mark.timeout(300)
def test_batch_to_s3_uploads_each_set_and_resumes_from_the_objects(s3_server, bucket, bundle, batch_scenes, tmp_path):
    """Workers (a real LocalCluster, the environment inherited) upload their sets; strips go through S3."""
    pytest.importorskip("distributed")
    import torch

    from geopsp.batch import run_batch
    from geopsp.config.schema import BatchConfig, GeopspConfig, PredictConfig
    from geopsp.model.bundle import load_bundle
    from geopsp.pipeline import segment_raster

    s3 = s3_server.client()
    out = f"s3://{bucket}/batch/"
    cfg = GeopspConfig(
        predict=PredictConfig(vector=True, probabilities=True),
        batch=BatchConfig(strip_pixels=65_536, n_workers=1, torch_threads=1, dashboard_address=None),
    )
    report = run_batch([batch_scenes], bundle, out, config=cfg)
    assert report.summary_line() == f"2 scenes: 2 done (see {out}manifest.jsonl)"
    assert {r.id: r.strips for r in report.records} == {"a.tif": 1, "sub/big.tif": 2}
    per_scene = ["class_areas.csv", "classes.qml", "classes.tif", "classes.tif.aux.xml", "polygons.gpkg"]
    per_scene += ["polygons.qml", "probability.qml", "probability.tif", "summary.json"]
    expected = [f"batch/a_{n}" for n in per_scene] + ["batch/class_areas.csv", "batch/manifest.jsonl"]
    expected += [f"batch/sub/big_{n}" for n in per_scene]
    assert keys(s3, bucket) == sorted(expected)  # no strips left under .geopsp-work/
    # the same classes as one in-process run each (one torch thread, as the worker)
    model = load_bundle(bundle)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, key in (("a.tif", "batch/a_classes.tif"), ("sub/big.tif", "batch/sub/big_classes.tif")):
            ref = segment_raster(batch_scenes / name, model, tmp_path / "ref" / Path(name).stem).classes
            got = tmp_path / "got" / Path(key).name
            got.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, key, str(got))
            np.testing.assert_array_equal(read(got), read(ref), err_msg=name)
    finally:
        torch.set_num_threads(threads)
    manifest = [json.loads(x) for x in s3.get_object(Bucket=bucket, Key="batch/manifest.jsonl")["Body"].iter_lines()]
    assert {r["id"]: r["status"] for r in manifest} == {"a.tif": "done", "sub/big.tif": "done"}
    big = next(r for r in manifest if r["id"] == "sub/big.tif")
    assert "sub/big_polygons.gpkg" in big["outputs"] and "sub/big_summary.json" in big["outputs"]
    summary = json.loads(s3.get_object(Bucket=bucket, Key="batch/sub/big_summary.json")["Body"].read())
    assert summary["outputs"]["classes"] == f"{out}sub/big_classes.tif" and len(summary["strips"]) == 2
    # the stitched scene's class areas have its polygons counted; the batch's table adds up both scenes
    assert summary["class_areas"]["totals"]["polygon_count"] > 0
    assert report.class_areas is not None and report.class_areas.path == f"{out}class_areas.csv"
    table = report.class_areas.table
    assert table.scenes == 2 and table.pixels + table.nodata_pixels == 96 * 80 + 150 * 600
    body = s3.get_object(Bucket=bucket, Key="batch/class_areas.csv")["Body"].read().decode()
    assert body.splitlines()[0] == "class_id,class_name,pixels,area_m2,percent,polygon_count"

    # Without the manifest and without a's summary: big is complete (its summary object says so), a is redone.
    s3.delete_objects(
        Bucket=bucket, Delete={"Objects": [{"Key": "batch/manifest.jsonl"}, {"Key": "batch/a_summary.json"}]}
    )
    again = run_batch([batch_scenes], bundle, out, config=cfg)
    assert {r.id: r.status for r in again.records} == {"a.tif": "done", "sub/big.tif": "skipped"}
    assert again.class_areas is not None and again.class_areas.table == report.class_areas.table  # big read back
    assert keys(s3, bucket) == sorted(expected)
    # Everything complete now: nothing to run, no cluster started.
    t0 = time.perf_counter()
    third = run_batch([batch_scenes], bundle, out, config=cfg)
    assert third.skipped == 2 and time.perf_counter() - t0 < 10
    lines = s3.get_object(Bucket=bucket, Key="batch/manifest.jsonl")["Body"].read().decode().splitlines()
    assert [json.loads(x)["status"] for x in lines] == ["skipped", "done", "skipped", "skipped"]


def test_batch_to_a_missing_bucket_fails_before_any_cluster(s3_server, bundle, batch_scenes):
    from geopsp.batch import run_batch
    from geopsp.errors import OutputError

    del s3_server
    t0 = time.perf_counter()
    with pytest.raises(OutputError, match=r"^s3://no-such-batch-bucket/x/: the bucket 'no-such-batch-bucket' does not"):
        run_batch([batch_scenes], bundle, "s3://no-such-batch-bucket/x/")
    assert time.perf_counter() - t0 < 10
