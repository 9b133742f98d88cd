"""Batch runs on real dask processes over loopback: an external cluster, a killed worker, LocalCluster.

The external cluster is a real ``dask scheduler`` and two ``dask worker --no-nanny`` processes
(so SIGKILL really removes a worker); the second declares ``GPU=1`` as a dask resource.
Workers preload a tiny hook that makes every scene sleep a little, so a worker can be killed
while it is busy. Results are compared pixel for pixel with in-process ``segment_raster``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyogrio
import pytest

pytestmark = [pytest.mark.dask, pytest.mark.timeout(300)]

rasterio = pytest.importorskip("rasterio")
pytest.importorskip("distributed")

DASK = Path(sys.executable).with_name("dask")
GOOD = {"a.tif": (96, 80, 1), "b.tif": (120, 72, 2), "sub/c.tif": (80, 100, 3), "sub/d.tif": (64, 64, 4),
        "e.tif": (130, 90, 5), "sub/deeper/f.tif": (100, 100, 6)}  # fmt: skip
BIG = ("big.tif", (150, 600, 7))  # 90,000 px: two strips at strip_pixels=65536
# dask imports a preload module twice; keep the original in the module so wrapping is idempotent.
HOOK = """
import os, time
import geopsp.batch.tasks as tasks

if not hasattr(tasks, "_unwrapped_segment"):
    tasks._unwrapped_segment = tasks._segment

def _slow(task, _segment=tasks._unwrapped_segment):
    time.sleep(float(os.environ.get("GEOPSP_TEST_SCENE_SLEEP", "0")))
    return _segment(task)

tasks._segment = _slow
"""


# ---------------------------------------------------------------- data


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    from click.testing import CliRunner

    from geopsp.cli.main import cli

    path = tmp_path_factory.mktemp("model") / "m.safetensors"
    args = ["model", "create", "--preset", "fast", "--encoder", "resnet18", "--bands", "3", "--classes", "4"]
    res = CliRunner().invoke(cli, [*args, "--tile", "64", "--overlap", "8", "--out", str(path)])
    assert res.exit_code == 0, res.output
    return path


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    from geopsp.synthetic import make_scene

    root = tmp_path_factory.mktemp("scenes")
    labels = tmp_path_factory.mktemp("labels")
    for i, (name, (w, h, seed)) in enumerate([*GOOD.items(), BIG]):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        make_scene(root / name, width=w, height=h, bands=3, seed=seed, labels_path=labels / f"{i}.tif")
    # A corrupt scene: a valid header whose pixel data is cut off.
    data = (root / "a.tif").read_bytes()
    (root / "broken.tif").write_bytes(data[: len(data) // 2])
    return root


@pytest.fixture(scope="module")
def reference(bundle, scenes, tmp_path_factory) -> dict[str, Path]:
    """Class rasters of sequential in-process segment_raster runs (one torch thread, as the workers)."""
    import torch

    from geopsp.model.bundle import load_bundle
    from geopsp.pipeline import segment_raster

    out = tmp_path_factory.mktemp("reference")
    model = load_bundle(bundle)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {
            name: segment_raster(scenes / name, model, out / f"ref{i}").outputs["classes"]
            for i, name in enumerate([*GOOD, BIG[0]])
        }
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def restore_logging():
    """The CLI points geopsp's log handler at CliRunner's stream; put the old handlers back."""
    logger = logging.getLogger("geopsp")
    handlers, level = logger.handlers[:], logger.level
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def classes_path(out: Path, name: str, *, flat: bool = False) -> Path:
    rel = Path(Path(name).name if flat else name)
    return out / rel.parent / f"{rel.stem}_classes.tif"


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]


def one_by_one(scenes: Path) -> list[str]:
    """The good scenes and the broken one as separate file arguments (outputs keep only names)."""
    return [str(scenes / n) for n in [*GOOD, "broken.tif"]]


def assert_matches_reference(out: Path, reference, names, *, flat: bool = False) -> None:
    for name in names:
        np.testing.assert_array_equal(read(classes_path(out, name, flat=flat)), read(reference[name]), err_msg=name)


def assert_no_temporaries(out: Path) -> None:
    leftovers = [p for p in out.rglob("*") if ".geopsp-tmp-" in p.name or ".geopsp-work" in p.parts]
    assert not leftovers, leftovers


# ---------------------------------------------------------------- a real cluster


@dataclass
class Cluster:
    address: str
    scheduler: subprocess.Popen
    workers: list[subprocess.Popen]
    logs: Path


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def dask_cluster(root: Path, worker_args: list[list[str]]) -> Iterator[Cluster]:
    from distributed import Client

    root.mkdir(parents=True, exist_ok=True)
    hook = root / "geopsp_test_hook.py"
    hook.write_text(HOOK, encoding="utf-8")
    sched_file = root / "scheduler.json"
    env = {**os.environ, "GEOPSP_TEST_SCENE_SLEEP": "0.5", "PYTHONWARNINGS": "ignore"}
    procs: list[subprocess.Popen] = []
    logs = []
    try:
        log = open(root / "scheduler.log", "wb")
        logs.append(log)
        sched = subprocess.Popen(
            [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
             "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(sched_file)],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        procs.append(sched)
        deadline = time.monotonic() + 60
        while not sched_file.exists():
            assert sched.poll() is None, (root / "scheduler.log").read_text()
            assert time.monotonic() < deadline, "scheduler did not start"
            time.sleep(0.1)
        time.sleep(0.2)  # let it finish writing the file
        address = json.loads(sched_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        workers = []
        for i, extra in enumerate(worker_args):
            wlog = open(root / f"worker{i}.log", "wb")
            logs.append(wlog)
            w = subprocess.Popen(
                [str(DASK), "worker", address, "--host", "127.0.0.1", "--nthreads", "1", "--no-nanny",
                 "--no-dashboard", "--dashboard-address", "127.0.0.1:0", "--death-timeout", "30",
                 "--preload", str(hook), *extra],
                stdout=wlog, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
            procs.append(w)
            workers.append(w)
        with Client(address, timeout=30, set_as_default=False) as client:
            client.wait_for_workers(len(worker_args), timeout=60)
        yield Cluster(address, sched, workers, root)
    finally:
        _stop(procs[::-1])
        for log in logs:
            log.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    # Worker 0 is CPU only; worker 1 declares a GPU (a label here: tasks still run on the CPU).
    with dask_cluster(tmp_path_factory.mktemp("cluster"), [[], ["--resources", "GPU=1"]]) as c:
        yield c


def worker_stats(address: str) -> dict[str, dict]:
    from distributed import Client

    from geopsp.batch.tasks import worker_stats

    with Client(address, timeout=30, set_as_default=False) as client:
        return client.run(worker_stats)


# ---------------------------------------------------------------- tests


def test_cli_on_existing_cluster_gpu_resource_corrupt_scene_and_rerun(
    cluster, bundle, scenes, reference, tmp_path, restore_logging
):
    from click.testing import CliRunner

    from geopsp.cli.main import cli

    out = tmp_path / "out"
    args = ["batch", *one_by_one(scenes), "--model", str(bundle), "--out", str(out)]
    res = CliRunner().invoke(cli, [*args, "--scheduler", cluster.address, "--resources", "GPU=1"])
    assert res.exit_code == 1, res.output
    assert f"7 scenes: 6 done, 1 failed (see {out / 'manifest.jsonl'})" in res.stderr

    recs = {r["id"]: r for r in manifest(out)}
    assert recs["broken.tif"]["status"] == "failed"
    assert recs["broken.tif"]["error_type"] == "InputRasterError"
    assert "truncated" in recs["broken.tif"]["error"]
    done = [r for r in recs.values() if r["status"] == "done"]
    assert len(done) == 6
    # Files given one by one keep only their names.
    assert_matches_reference(out, reference, GOOD, flat=True)
    assert all(f"{Path(n).stem}_classes.tif" in recs[Path(n).name]["outputs"] for n in GOOD)
    assert_no_temporaries(out)

    # Every scene asked for GPU=1, so only the GPU worker ran them, loading the bundle once.
    gpu_worker = {r["worker"] for r in done}
    assert len(gpu_worker) == 1
    stats = worker_stats(cluster.address)
    assert stats[gpu_worker.pop()]["bundle_loads"] == 1
    assert sorted(s["bundle_loads"] for s in stats.values()) == [0, 1]
    # Two single-thread workers on this host share its cores.
    assert {s["torch_threads"] for s in stats.values()} == {max(1, (os.cpu_count() or 1) // 2)}

    # A rerun skips what is complete (mtimes unchanged) and retries only the failed scene.
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*_classes.tif")}
    res = CliRunner().invoke(cli, [*args, "--scheduler", cluster.address])
    assert res.exit_code == 1
    assert "7 scenes: 0 done, 6 skipped, 1 failed" in res.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*_classes.tif")} == mtimes


def test_existing_cluster_without_requested_resource_is_refused(cluster, bundle, scenes, tmp_path):
    from geopsp.batch import run_batch
    from geopsp.errors import ConfigError

    with pytest.raises(ConfigError, match="no worker of the cluster offers TPU=1"):
        run_batch([scenes / "a.tif"], bundle, tmp_path / "out", scheduler=cluster.address, resources={"TPU": 1})


def test_unreachable_scheduler_is_a_config_error(bundle, scenes, tmp_path):
    from geopsp.batch import run_batch
    from geopsp.config.schema import BatchConfig, GeopspConfig
    from geopsp.errors import ConfigError

    cfg = GeopspConfig(batch=BatchConfig(connect_timeout_s=2))
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="cannot reach dask scheduler"):
        run_batch([scenes / "a.tif"], bundle, tmp_path / "out", config=cfg, scheduler="tcp://127.0.0.1:9")
    assert time.monotonic() - t0 < 30


def test_killed_worker_mid_batch_every_healthy_scene_completes_and_rerun_repeats_nothing(
    cluster, bundle, scenes, reference, tmp_path, monkeypatch
):
    """Runs last on the module's cluster: it kills worker 0 after the first scene completes."""
    from geopsp.batch import run_batch
    from geopsp.batch.areas import CLASS_AREAS_NAME

    out = tmp_path / "out"
    victim = cluster.workers[0]
    killed_at: list[int] = []

    def progress(done: int, total: int) -> None:
        if done >= 1 and not killed_at:
            victim.send_signal(signal.SIGKILL)
            killed_at.append(done)

    monkeypatch.setenv("GEOPSP_SCHEDULER", cluster.address)  # the environment names the cluster
    report = run_batch(one_by_one(scenes), bundle, out, progress=progress)
    victim.wait(timeout=10)
    assert killed_at == [1]
    assert victim.returncode == -signal.SIGKILL
    assert report.summary_line() == f"7 scenes: 6 done, 1 failed (see {out / 'manifest.jsonl'})"
    assert_matches_reference(out, reference, GOOD, flat=True)
    assert_no_temporaries(out)
    # Nothing under a final name is partial: every final file is listed complete in the manifest.
    # (The manifest and the class areas table belong to the batch: each run rewrites them.)
    batch_files = {"manifest.jsonl", CLASS_AREAS_NAME}
    listed = {o for r in manifest(out) if r["status"] == "done" for o in r["outputs"]}
    final = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name not in batch_files}
    assert final == listed
    assert (out / CLASS_AREAS_NAME).is_file() and report.class_areas is not None
    assert report.class_areas.table.scenes == 6

    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name not in batch_files}
    again = run_batch([str(scenes / n) for n in GOOD], bundle, out)
    assert (again.done, again.skipped, again.failed) == (0, 6, 0)
    assert [r["status"] for r in manifest(out)[-6:]] == ["skipped"] * 6
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert again.class_areas is not None and again.class_areas.table == report.class_areas.table


def test_local_cluster_default_same_results_strips_stitched_and_vectorized(bundle, scenes, reference, tmp_path):
    from geopsp.batch import run_batch
    from geopsp.config.schema import BatchConfig, GeopspConfig, PredictConfig

    cfg = GeopspConfig(
        predict=PredictConfig(vector=True, qa=["probability", "disagreement"]), batch=BatchConfig(strip_pixels=65_536)
    )
    out = tmp_path / "out"
    seen: list[tuple[int, int]] = []
    report = run_batch([scenes], bundle, out, config=cfg, progress=lambda d, t: seen.append((d, t)))
    assert report.summary_line() == f"8 scenes: 7 done, 1 failed (see {out / 'manifest.jsonl'})"
    assert seen[-1] == (8, 8)
    # A directory keeps its sub-paths.
    assert_matches_reference(out, reference, [*GOOD, BIG[0]])
    assert_no_temporaries(out)
    # Vectorizing ran as its own task after each scene; the polygons are listed as outputs.
    for rec in report.records:
        if rec.status == "done":
            vector = next(o for o in rec.outputs if o.endswith("_polygons.gpkg"))
            assert (out / vector).is_file()
            # the polygons carry the confidence of the scene's (stitched) QA rasters
            fields = set(pyogrio.read_info(out / vector, layer=Path(vector).stem)["fields"])
            assert {"conf_mean", "conf_min", "disagree_frac"} <= fields, fields
    big = next(r for r in report.records if r.id == BIG[0])
    assert big.strips == 2
    # The stitched raster is styled like a single run: colour table, tags, RAT (aux.xml), QML.
    stitched, single = classes_path(out, BIG[0]), reference[BIG[0]]
    with rasterio.open(stitched) as ds, rasterio.open(single) as ref:
        assert ds.colormap(1) == ref.colormap(1)
        assert ds.tags() == ref.tags()
        assert (ds.crs, ds.transform, ds.nodata, ds.overviews(1)) == (
            ref.crs,
            ref.transform,
            ref.nodata,
            ref.overviews(1),
        )
    for suffix in (".qml", ".tif.aux.xml"):
        name = stitched.name.removesuffix(".tif") + suffix
        assert (stitched.parent / name).read_bytes() == (single.parent / name).read_bytes(), suffix
    summary = json.loads((out / "big_summary.json").read_text())
    assert summary["rows"] == [0, BIG[1][1]]
    assert len(summary["strips"]) == 2


# ---------------------------------------------------------------- worker tasks in this process


def test_model_error_is_a_permanent_failure_not_retried(bundle, scenes, tmp_path, monkeypatch):
    """A model that returns no logits fails the same way on every retry: the task reports it, dask never retries."""
    import torch

    import geopsp.batch.tasks as tasks
    from geopsp.config.schema import PredictConfig
    from geopsp.model.bundle import read_bundle_meta

    class NoLogits(torch.nn.Module):
        def forward(self, x):
            return {"features": x}

    meta = read_bundle_meta(bundle)
    monkeypatch.setattr(tasks, "cached_bundle", lambda path, device: (NoLogits(), meta))
    task = tasks.SceneTask(str(scenes / "a.tif"), str(tmp_path / "a_classes.tif"), str(bundle), PredictConfig())
    result = tasks.run_scene(task)  # raising would hand the task to dask's retries
    assert result["status"] == "failed"
    assert result["error_type"] == "ModelError"
    assert "expected a logits tensor" in result["error"]
    assert not (tmp_path / "a_classes.tif").exists()


def test_batch_plans_tiles_with_the_pipeline_rule_and_refuses_a_bad_plan_before_any_cluster(bundle, scenes, tmp_path):
    from geopsp.batch import run_batch
    from geopsp.config.schema import GeopspConfig, PredictConfig
    from geopsp.errors import TilingError

    # The bundle's tile is 64: segment_raster refuses an overlap of 32, batch must not plan strips with 31.
    cfg = GeopspConfig(predict=PredictConfig(overlap=32))
    t0 = time.perf_counter()
    with pytest.raises(TilingError, match=r"overlap \(32\) must be less than half the tile size \(64\)"):
        run_batch([scenes / "a.tif"], bundle, tmp_path / "out", config=cfg)
    assert time.perf_counter() - t0 < 10  # no LocalCluster was started
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


def test_predict_and_batch_vectorize_alike_from_the_vectorize_section(bundle, scenes, tmp_path, restore_logging):
    import pyogrio
    import shapely
    from click.testing import CliRunner

    from geopsp.cli.main import cli
    from geopsp.config.schema import VectorizeConfig
    from geopsp.vectorize import vectorize

    scene = str(scenes / "e.tif")
    sets = ["--set", "vectorize.simplify=25", "--set", "vectorize.format=fgb", "--vector"]
    res = CliRunner().invoke(
        cli, ["predict", scene, "-m", str(bundle), "-o", str(tmp_path / "p"), "--no-progress", *sets]
    )
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["batch", scene, "--model", str(bundle), "--out", str(tmp_path / "b"), *sets])
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(read(tmp_path / "p" / "e_classes.tif"), read(tmp_path / "b" / "e_classes.tif"))
    # The same config gives the same file, format and polygons from both commands.
    predicted = pyogrio.read_dataframe(tmp_path / "p" / "e_polygons.fgb")
    batched = pyogrio.read_dataframe(tmp_path / "b" / "e_polygons.fgb")
    assert len(predicted) == len(batched) > 0
    assert list(predicted.class_id) == list(batched.class_id)
    assert shapely.equals_exact(predicted.geometry.values, batched.geometry.values, tolerance=1e-6).all()
    # ...and simplification ran: 25 m (2.5 px) leaves far fewer vertices than the pixel staircase.
    raw = vectorize(tmp_path / "p" / "e_classes.tif", tmp_path / "raw.fgb", config=VectorizeConfig(format="fgb"))
    vertices = shapely.get_num_coordinates(predicted.geometry.values).sum()
    assert vertices < 0.7 * shapely.get_num_coordinates(pyogrio.read_dataframe(raw).geometry.values).sum()


def test_batch_over_scenes_without_georeferencing_prints_one_warning_each_and_nothing_raw(bundle, tmp_path):
    from PIL import Image

    from geopsp.testing import write_geotiff

    rng = np.random.default_rng(3)
    folder = tmp_path / "plain"
    folder.mkdir()
    png = folder / "photo.png"
    Image.fromarray(rng.integers(0, 256, size=(60, 80, 3), dtype=np.uint8)).save(png)
    tif = write_geotiff(folder / "nogeo.tif", rng.integers(0, 256, size=(3, 150, 600), dtype=np.uint8), crs=None)
    out = tmp_path / "out"
    args = ["batch", folder, "--model", bundle, "--out", out, "--workers", 1, "--vector"]
    proc = subprocess.run(
        [sys.executable, "-m", "geopsp", *map(str, args), "--set", "batch.strip_pixels=65536"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "nogeo_summary.json").read_text())["strips"]  # two strips, stitched
    # geopsp's one line per scene (not one per strip, no source line), and nothing from rasterio or pyogrio;
    # between them and the last line the batch's class areas table (pixels only: no CRS, no m²)
    lines = proc.stderr.splitlines()
    assert lines[:2] == [
        f"Warning: {tif}: has no CRS or geotransform (pixel grid); output will have no CRS",
        f"Warning: {png}: has no CRS or geotransform (pixel grid); output will have no CRS",
    ]
    assert lines[-1] == f"2 scenes: 2 done (see {out / 'manifest.jsonl'})"
    table = lines[2:-1]
    assert "Class areas: 2 scenes" in table[0] and "area m²" not in "".join(table)
    assert table[-1] == f"class areas table: {out / 'class_areas.csv'}"
    assert not any("Warning" in line for line in table)
