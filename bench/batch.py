"""Benchmark of ``geopsp batch``: scenes per minute and MP/s with 1 and 2 dask workers.

Run: ``.venv/bin/python bench/batch.py [--scenes 8] [--size 768] [--workdir DIR]``; writes
``bench/results/batch.json``.

Eight synthetic 3-band uint8 scenes (768 x 768 by default) go through an untrained ``fast``
preset bundle (resnet18 PSPNet; speed does not depend on weights), 256 px tiles, overlap 32.

sequential
    In-process ``segment_raster`` over the scenes, one after the other, model loaded once,
    torch using every core. This is the work the batch distributes.
local_cluster_N
    A ``LocalCluster`` of N single-thread worker processes (torch threads = cores / N), passed
    to ``run_batch`` as an existing scheduler so cluster start-up is timed on its own.
    ``cold``: the first batch (each worker imports torch and loads the bundle once).
    ``warm``: the same batch again with ``overwrite`` (bundles cached in the workers); this is
    the steady state of a long batch.
    ``end_to_end_s`` = start-up + cold: what ``geopsp batch`` costs on a fresh machine.

Scheduler overhead per scene = (warm wall with 1 worker - sequential wall) / scenes: both use
the same cores and threads, so the difference is task submission, result transfer, manifest
appends and the client's scene inspection. Wall times suffer from any other load on the
machine (the load average is recorded), so CPU seconds are reported too: those of the client
process (which hosts the LocalCluster's scheduler) and those of the workers, per scene.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "batch.json"


def _cpu() -> dict[str, Any]:
    name = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": name,
        "cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def make_inputs(work: Path, n: int, size: int) -> tuple[list[Path], Path]:
    from click.testing import CliRunner

    from geopsp.cli.main import cli
    from geopsp.synthetic import make_scene

    scenes = []
    for i in range(n):
        path = work / "scenes" / f"scene_{i}.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        make_scene(path, width=size, height=size, bands=3, seed=i, labels_path=work / "labels" / f"{i}.tif")
        scenes.append(path)
    bundle = work / "fast.safetensors"
    args = ["model", "create", "--preset", "fast", "--bands", "3", "--classes", "6", "--tile", "256", "--overlap", "32"]
    res = CliRunner().invoke(cli, [*args, "--out", str(bundle)])
    if res.exit_code != 0:
        raise RuntimeError(res.output)
    return scenes, bundle


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def _workers_cpu_s(address: str) -> float:
    from distributed import Client

    with Client(address, set_as_default=False) as client:
        return sum(t[0] + t[1] for t in client.run(os.times).values())


def sequential(scenes: list[Path], bundle: Path, out: Path) -> dict[str, Any]:
    import torch

    from geopsp.model.bundle import load_bundle
    from geopsp.pipeline import segment_raster

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    model = load_bundle(bundle)
    segment_raster(scenes[0], model, out / "warmup", overwrite=True)  # first-call costs (allocator, kernels)
    per_scene = []
    t0, c0 = time.perf_counter(), _cpu_s()
    for scene in scenes:
        t = time.perf_counter()
        segment_raster(scene, model, out / "seq", overwrite=True)
        per_scene.append(time.perf_counter() - t)
    wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
    return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "per_scene_s": [round(s, 3) for s in per_scene]}


def on_cluster(n_workers: int, scenes: list[Path], bundle: Path, out: Path, pixels: int) -> dict[str, Any]:
    from distributed import LocalCluster

    from geopsp.batch import run_batch

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1"
        )
    startup = time.perf_counter() - t0
    try:
        address = cluster.scheduler_address
        runs = {}
        for label, overwrite in (("cold", False), ("warm", True)):
            w0 = _workers_cpu_s(address)
            t, c0 = time.perf_counter(), _cpu_s()
            report = run_batch([str(s) for s in scenes], bundle, out / f"w{n_workers}", scheduler=address,
                               overwrite=overwrite)  # fmt: skip
            wall, client_cpu = time.perf_counter() - t, _cpu_s() - c0
            workers_cpu = _workers_cpu_s(address) - w0
            if not report.ok or report.done != len(scenes):
                raise RuntimeError(report.summary_line())
            task_s = [r.seconds for r in report.records]
            runs[label] = {
                "wall_s": round(wall, 3),
                "scenes_per_minute": round(len(scenes) / wall * 60, 2),
                "megapixels_per_second": round(pixels / 1e6 / wall, 4),
                "task_seconds_mean": round(sum(task_s) / len(task_s), 3),
                "task_seconds_max": round(max(task_s), 3),
                "workers_used": len({r.worker for r in report.records}),
                "workers_cpu_s": round(workers_cpu, 3),
                # The LocalCluster's scheduler runs in this (the client's) process.
                "client_and_scheduler_cpu_s": round(client_cpu, 3),
                "client_and_scheduler_cpu_s_per_scene": round(client_cpu / len(scenes), 4),
            }
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cluster.close()
    return {
        "n_workers": n_workers,
        "torch_threads_per_worker": max(1, len(os.sched_getaffinity(0)) // n_workers),
        "startup_s": round(startup, 3),
        "end_to_end_s": round(startup + runs["cold"]["wall_s"], 3),
        **runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=8)
    parser.add_argument("--size", type=int, default=768)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    machine = _cpu()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="geopsp-bench-batch-"))
    try:
        scenes, bundle = make_inputs(work, args.scenes, args.size)
        pixels = args.scenes * args.size * args.size
        seq = sequential(scenes, bundle, work / "out")
        seq["scenes_per_minute"] = round(args.scenes / seq["wall_s"] * 60, 2)
        seq["megapixels_per_second"] = round(pixels / 1e6 / seq["wall_s"], 4)
        clusters = {f"local_cluster_{n}": on_cluster(n, scenes, bundle, work / "out", pixels) for n in args.workers}
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    result: dict[str, Any] = {
        "machine": machine,
        "setup": {
            "scenes": args.scenes,
            "scene_size": [args.size, args.size],
            "bands": 3,
            "model": "fast preset (resnet18 PSPNet, untrained), 6 classes",
            "tile_size": 256,
            "overlap": 32,
            "megapixels_total": round(pixels / 1e6, 3),
        },
        "sequential": seq,
        **clusters,
    }
    machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    one = clusters.get("local_cluster_1")
    if one is not None:
        result["scheduler_overhead_per_scene_s"] = round((one["warm"]["wall_s"] - seq["wall_s"]) / args.scenes, 4)
        # CPU seconds do not depend on other load on the machine, unlike wall times.
        result["scheduler_overhead_per_scene_cpu_s"] = {
            "client_and_scheduler": one["warm"]["client_and_scheduler_cpu_s_per_scene"],
            "workers_minus_sequential": round((one["warm"]["workers_cpu_s"] - seq["cpu_s"]) / args.scenes, 4),
        }
    two = clusters.get("local_cluster_2")
    if one is not None and two is not None:
        result["scaling_2_vs_1_workers"] = {
            "warm_speedup": round(one["warm"]["wall_s"] / two["warm"]["wall_s"], 3),
            "cold_speedup": round(one["cold"]["wall_s"] / two["cold"]["wall_s"], 3),
            "end_to_end_speedup": round(one["end_to_end_s"] / two["end_to_end_s"], 3),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
