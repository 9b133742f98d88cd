"""The local cluster of a batch: its plan, GPU workers pinned by CUDA_VISIBLE_DEVICES, thread shares, loopback.

The plan and the specs are pure functions, tested with explicit GPU ids. A real cluster is then
started from a plan with one pinned "GPU" worker on this GPU-less machine (the model runs on the
CPU; the pinning, the ``GPU`` resource and the routing are what is tested): a preloaded hook in
every worker records which worker ran each task, with its environment and thread counts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import urlparse

import pytest

from geopsp.batch.cluster import cluster_specs, connect, plan_cluster, plan_local_cluster
from geopsp.config.schema import BatchConfig, GeopspConfig, PredictConfig
from geopsp.device import cpu_count, visible_gpus
from geopsp.errors import ConfigError
from geopsp.testing import run_cli

pytestmark = [pytest.mark.dask, pytest.mark.timeout(300)]

pytest.importorskip("distributed")

# dask imports a preload module twice; the guard keeps the wrapping single.
RECORDER = """
import json, os, sys
from distributed import get_worker
import geopsp.batch.tasks as tasks

def _recorded(name, fn):
    def run(*args, **kwargs):
        result = fn(*args, **kwargs)
        worker = get_worker()
        torch = sys.modules.get("torch")
        line = {"task": name, "worker": worker.name, "resources": dict(worker.state.total_resources),
                "cuda_devices": torch.cuda.device_count() if torch is not None else None, **tasks.worker_stats()}
        with open(os.path.join(os.environ["GEOPSP_TEST_RECORD"], f"{os.getpid()}.jsonl"), "a") as fh:
            fh.write(json.dumps(line) + "\\n")
        return result
    run.geopsp_recorded = True
    return run

for _name in ("run_scene", "stitch_scene", "vectorize_scene"):
    if not getattr(getattr(tasks, _name), "geopsp_recorded", False):
        setattr(tasks, _name, _recorded(_name, getattr(tasks, _name)))
"""


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    from geopsp.synthetic import make_scene

    root = tmp_path_factory.mktemp("cluster-scenes")
    make_scene(root / "small.tif", width=80, height=64, bands=3, seed=1, labels_path=root / "labels" / "0.tif")
    make_scene(root / "big.tif", width=600, height=150, bands=3, seed=2, labels_path=root / "labels" / "1.tif")
    return root


def records(folder: Path) -> list[dict]:
    return [json.loads(line) for f in sorted(folder.glob("*.jsonl")) for line in f.read_text().splitlines()]


# ---------------------------------------------------------------- the plan (pure)


def test_gpu_plan_pins_one_worker_per_gpu_and_keeps_cpu_tasks_on_cpu_workers():
    plan = plan_local_cluster(GeopspConfig(), gpus=["GPU-aa", "GPU-bb"], n_workers=2, cores=16)
    assert [(w.name, w.nthreads, w.resources, w.cuda_visible_devices) for w in plan.workers] == [
        ("gpu-0", 1, {"GPU": 1.0}, "GPU-aa"),
        ("gpu-1", 1, {"GPU": 1.0}, "GPU-bb"),
        ("cpu-0", 1, {"CPU": 1.0}, ""),
        ("cpu-1", 1, {"CPU": 1.0}, ""),
    ]
    assert plan.threads == 4  # 16 cores shared by 4 worker threads: torch, GDAL and ONNX Runtime each
    assert (plan.scene_resources, plan.cpu_resources) == ({"GPU": 1.0}, {"CPU": 1.0})
    assert plan.describe() == "2 GPU worker(s) (GPU-aa, GPU-bb) + 2 CPU worker(s), 4 torch/GDAL thread(s) each"

    _, workers = cluster_specs(plan)
    assert {n: s["options"]["env"] for n, s in workers.items()} == {
        "gpu-0": {"CUDA_VISIBLE_DEVICES": "GPU-aa"},
        "gpu-1": {"CUDA_VISIBLE_DEVICES": "GPU-bb"},
        "cpu-0": {"CUDA_VISIBLE_DEVICES": ""},
        "cpu-1": {"CUDA_VISIBLE_DEVICES": ""},
    }
    assert workers["gpu-1"]["options"]["resources"] == {"GPU": 1.0}


def test_gpu_plan_with_more_threads_a_resource_share_and_fixed_threads():
    cfg = GeopspConfig(batch=BatchConfig(threads_per_worker=2, torch_threads=3))
    plan = plan_local_cluster(cfg, gpus=["0"], resources={"GPU": 0.5, "MEM": 1}, cores=8)
    gpu, cpu = plan.workers
    assert (gpu.nthreads, gpu.resources) == (2, {"GPU": 1.0, "MEM": 1.0})  # two half-GPU scenes at once
    assert (cpu.nthreads, cpu.resources) == (2, {"CPU": 2.0})
    assert plan.scene_resources == {"GPU": 0.5, "MEM": 1.0}
    assert plan.threads == 3


def test_cpu_plan_shares_cores_among_worker_threads():
    cfg = GeopspConfig(batch=BatchConfig(threads_per_worker=2))
    plan = plan_local_cluster(cfg, n_workers=3, resources={"TPU": 1}, cores=12)
    assert [(w.name, w.nthreads, w.resources, w.cuda_visible_devices) for w in plan.workers] == [
        (str(i), 2, {"TPU": 1.0}, None) for i in range(3)
    ]
    assert (plan.threads, plan.scene_resources, plan.cpu_resources) == (2, {"TPU": 1.0}, {})
    _, workers = cluster_specs(plan)
    assert all("env" not in s["options"] for s in workers.values())  # the parent's CUDA_VISIBLE_DEVICES holds


def test_specs_listen_on_loopback_and_an_explicit_dashboard_address_is_kept():
    assert BatchConfig().dashboard_address == "127.0.0.1:0"
    plan = plan_local_cluster(GeopspConfig(), n_workers=1, cores=2)
    scheduler, workers = cluster_specs(plan, dashboard_address="127.0.0.1:0")
    assert scheduler["options"]["host"] == workers["0"]["options"]["host"] == "127.0.0.1"
    assert scheduler["options"]["dashboard_address"] == "127.0.0.1:0"
    assert workers["0"]["options"]["protocol"] == "tcp://"
    scheduler, _ = cluster_specs(plan, dashboard_address=":8787")  # dask's "every interface", asked for
    assert scheduler["options"]["dashboard_address"] == ":8787"


def test_pinned_workers_refuse_a_device_index_they_cannot_see():
    cfg = GeopspConfig(predict=PredictConfig(device="cuda:1"))
    with pytest.raises(ConfigError, match=r"predict.device: 'cuda:1' with gpus: each GPU worker sees only its own"):
        plan_local_cluster(cfg, gpus=["0", "1"])
    plan_local_cluster(GeopspConfig(predict=PredictConfig(device="cuda:0")), gpus=["0", "1"])


def test_visible_gpus_names_the_gpus_of_the_parents_cuda_visible_devices(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # what NVML would count for that variable
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-aa, GPU-bb,7")
    assert visible_gpus("all") == ("GPU-aa", "GPU-bb")
    assert visible_gpus(1) == ("GPU-aa",)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert visible_gpus("all") == ("0", "1")
    with pytest.raises(ConfigError, match=r"gpus=3 but this machine shows 2 CUDA GPU\(s\); use --gpus 2 or --gpus all"):
        visible_gpus(3)


# ---------------------------------------------------------------- --gpus where there is no GPU


def test_gpus_without_a_visible_gpu_is_one_line_before_any_cluster(tiny_bundle, scenes, tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_initialized():
        pytest.skip("CUDA is initialized in this process: hiding its GPUs no longer works")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU is visible, on any machine
    args = ["batch", scenes / "small.tif", "--model", tiny_bundle, "--out", tmp_path / "out"]
    for gpus in ("all", "2"):
        code, _, err = run_cli(*args, "--gpus", gpus)
        assert code == 1
        shown = "'all'" if gpus == "all" else gpus
        assert err.splitlines() == [
            f"Error: batch.gpus: gpus={shown} but this machine shows 0 CUDA GPUs with CUDA_VISIBLE_DEVICES='' "
            "(torch.cuda.device_count()); run on a machine with a CUDA GPU and torch built for CUDA, or drop --gpus"
        ]
    assert not (tmp_path / "out" / "small_classes.tif").exists()
    code, _, err = run_cli(*args, "--gpus", "0")
    assert code == 2 and "expected 'all' or a number of GPUs (at least 1), got '0'" in err
    code, _, err = run_cli(*args, "--gpus", "all", "--scheduler", "tcp://127.0.0.1:9")
    assert code == 1
    assert "starts GPU workers on this machine, but the batch runs on tcp://127.0.0.1:9" in err


# ---------------------------------------------------------------- real clusters


def test_gpu_pinned_cluster_runs_scenes_on_gpu_workers_and_stitches_and_vectorizes_on_the_cpu_worker(
    tiny_bundle, scenes, tmp_path, monkeypatch
):
    import dask

    from geopsp.batch import run_batch

    hook = tmp_path / "geopsp_test_recorder.py"
    hook.write_text(RECORDER, encoding="utf-8")
    monkeypatch.setenv("GEOPSP_TEST_RECORD", str(tmp_path))  # the nannies pass the environment on
    cfg = GeopspConfig(
        predict=PredictConfig(device="cpu", vector=True), batch=BatchConfig(strip_pixels=65_536, dashboard_address=None)
    )
    with dask.config.set({"distributed.worker.preload": [str(hook)]}):
        report = run_batch(
            [scenes / "small.tif", scenes / "big.tif"], tiny_bundle, tmp_path / "out", config=cfg, gpus=["0"]
        )
    assert report.summary_line() == f"2 scenes: 2 done (see {tmp_path / 'out' / 'manifest.jsonl'})"
    assert [r.strips for r in report.records] == [1, 2]
    assert all(any(o.endswith("_polygons.gpkg") for o in r.outputs) for r in report.records)

    ran = records(tmp_path)
    assert sorted(r["task"] for r in ran) == ["run_scene"] * 3 + ["stitch_scene"] + ["vectorize_scene"] * 2
    where = {(r["task"], r["worker"], r["cuda_visible_devices"], json.dumps(r["resources"])) for r in ran}
    assert where == {
        ("run_scene", "gpu-0", "0", '{"GPU": 1.0}'),
        ("stitch_scene", "cpu-0", "", '{"CPU": 1.0}'),
        ("vectorize_scene", "cpu-0", "", '{"CPU": 1.0}'),
    }
    share = max(1, cpu_count() // 2)  # two single-thread workers on this machine
    assert {r["gdal_threads"] for r in ran} == {str(share)}
    assert {r["torch_num_threads"] for r in ran if r["task"] == "run_scene"} == {share}


@pytest.mark.gpu
def test_gpus_all_pins_each_worker_to_one_real_gpu(tiny_bundle, scenes, tmp_path, monkeypatch):
    import dask

    from geopsp.batch import run_batch

    torch = pytest.importorskip("torch")
    if torch.cuda.device_count() == 0:
        pytest.skip("needs CUDA")
    hook = tmp_path / "geopsp_test_recorder.py"
    hook.write_text(RECORDER, encoding="utf-8")
    monkeypatch.setenv("GEOPSP_TEST_RECORD", str(tmp_path))
    cfg = GeopspConfig(predict=PredictConfig(vector=True), batch=BatchConfig(strip_pixels=65_536))
    out = tmp_path / "out"
    with dask.config.set({"distributed.worker.preload": [str(hook)]}):
        report = run_batch([scenes / "small.tif", scenes / "big.tif"], tiny_bundle, out, config=cfg, gpus="all")
    assert report.ok, report.records
    gpus = visible_gpus("all")
    ran = records(tmp_path)
    for r in ran:
        if r["task"] == "run_scene":
            assert r["worker"].startswith("gpu-")
            assert r["cuda_visible_devices"] == gpus[int(r["worker"].removeprefix("gpu-"))]
            assert r["cuda_devices"] == 1  # its own GPU, and only that one
        else:
            assert (r["worker"], r["cuda_visible_devices"]) == ("cpu-0", "")
    device = json.loads((out / "small_summary.json").read_text())["device"]
    assert device["device"].startswith("cuda"), device


def test_every_service_of_the_local_cluster_listens_on_loopback():
    psutil = pytest.importorskip("psutil")
    cfg = GeopspConfig(batch=BatchConfig(n_workers=1))
    with connect(plan_cluster(cfg), cfg) as (client, dashboard):
        info = client.scheduler_info()
        workers = info["workers"].values()
        addresses = [info["address"], *info["workers"], *(w["nanny"] for w in workers)]
        assert {urlparse(a).hostname for a in addresses} == {"127.0.0.1"}
        pids = [os.getpid(), *client.run(os.getpid).values()]
        listening = {
            (c.laddr.ip, c.laddr.port)
            for pid in pids
            for c in psutil.Process(pid).net_connections("inet")
            if c.status == psutil.CONN_LISTEN
        }
        port = info["services"]["dashboard"]  # the scheduler's HTTP server: the dashboard with bokeh
        assert ("127.0.0.1", port) in listening
        assert {ip for ip, _ in listening} == {"127.0.0.1"}, listening
        if dashboard is not None:
            assert dashboard == f"http://127.0.0.1:{port}/status"
