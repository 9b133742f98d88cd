"""Predict sweep: end-to-end throughput, model-only throughput and the stage shares.

For each preset (``fast`` on a 2048^2 scene, ``paper`` on a 1024^2 scene, 3-band uint8
synthetic scenes from ``geopsp sample-scene``, untrained bundles from ``geopsp model create``)
it runs :func:`geopsp.segment_raster` once per variant, changing one setting at a time from
the base (tile 512, overlap 64, fp32, channels_last on, the default batch of 4):

* precision fp32 / bf16 (``predict.amp``),
* channels_last on / off,
* tile 256 / 512 / 1024 (overlap 64, 32 for tile 256 ... kept below half a tile),
* overlap 0 / 32 / 64 / 128 (tile 512),
* batch 1.

It records the summary's per-stage seconds (read, preprocess, model, blend, write), the
end-to-end megapixels per second, and the model-only throughput of the same settings (the
forward pass + softmax on one random batch of the same size, timed after a warm-up). Their ratio
is taken over the tile pixels the pipeline runs (tiles x tile^2 / wall), so it says how much the
pipeline costs around the model, whatever the overlap.

Two more measurements run each in a fresh subprocess so that their peak RSS is clean
(``wait4`` rusage):

* ``memory``: peak RSS of ``segment_raster`` with a stand-in 1x1-conv model for scenes from
  1000^2 to 20000^2 (sparse GeoTIFFs, so generating them is instant); it must stay flat;
* ``naive``: the whole scene through the fast model in one forward pass (as simple examples
  do) against the tiled pipeline, at 2048^2 and 4096^2.

Usage::

    python bench/predict_matrix.py [--quick] [--parts sweep memory naive] [--out bench/results/predict_matrix.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MiB = 1 << 20
HERE = Path(__file__).resolve().parent
GEOPSP = Path(sys.executable).with_name("geopsp")

SCENES = {"fast": 2048, "paper": 1024}
BASE: dict[str, Any] = {"tile_size": 512, "overlap": 64, "amp": False, "channels_last": True, "batch_size": 4}


def variants() -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = [("base", {})]
    out.append(("bf16", {"amp": True}))
    out.append(("channels_last off", {"channels_last": False}))
    for tile in (256, 1024):
        out.append((f"tile {tile}", {"tile_size": tile, "overlap": min(64, tile // 2 - 1)}))
    for ov in (0, 32, 128):
        out.append((f"overlap {ov}", {"overlap": ov}))
    out.append(("batch 1", {"batch_size": 1}))
    return out


def sh(*args: str) -> str:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def make_inputs(folder: Path, preset: str, size: int) -> tuple[Path, Path]:
    scene = folder / f"scene_{size}.tif"
    if not scene.exists():
        sh(str(GEOPSP), "sample-scene", str(scene), "--size", str(size), "--no-progress")
    bundle = folder / f"{preset}.safetensors"
    if not bundle.exists():
        sh(str(GEOPSP), "model", "create", "--preset", preset, "--bands", "3", "--classes", "6", "--out", str(bundle))
    return scene, bundle


def model_only(bundle: Any, settings: dict[str, Any], *, device: str = "cpu", repeats: int = 2) -> float:
    """Megapixels per second of the forward pass + softmax alone on random tiles."""
    import torch

    from geopsp.inference.predict import Predictor

    pred = Predictor(
        bundle.model, bundle.meta, device=device, amp=settings["amp"], channels_last=settings["channels_last"]
    )
    n, s = settings["batch_size"], settings["tile_size"]  # the batch the pipeline ran
    x = torch.randn(n, bundle.meta.spec.in_channels, s, s, device=pred.device)
    pred.probabilities(x)  # warm-up
    _sync(pred.device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        pred.probabilities(x)
    _sync(pred.device)
    dt = (time.perf_counter() - t0) / repeats
    return n * s * s / 1e6 / dt


def _cpu_seconds() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sweep(folder: Path, presets: list[str], quick: bool, device: str = "cpu") -> list[dict[str, Any]]:
    from geopsp.config.schema import PredictConfig
    from geopsp.model.bundle import load_bundle
    from geopsp.pipeline import segment_raster

    rows: list[dict[str, Any]] = []
    for preset in presets:
        size = 512 if quick else SCENES[preset]
        scene, path = make_inputs(folder, preset, size)
        bundle = load_bundle(path, device=device)
        todo = variants()[:2] if quick else variants()
        for name, change in todo:
            settings = {**BASE, **change}
            cfg = PredictConfig.model_validate({**settings, "device": device})
            load0 = os.getloadavg()[0]
            cpu0 = _cpu_seconds()
            res = segment_raster(scene, bundle, folder / "out", config=cfg, overwrite=True)
            cpu_s = _cpu_seconds() - cpu0
            s = res.summary["seconds"]
            settings["batch_size"] = res.summary["settings"]["batch_size"]  # resolved default
            mo = model_only(bundle, settings, device=device, repeats=1 if quick else 2)
            e2e = res.summary["megapixels_per_second"]
            tile_px = res.summary["tiles"]["run"] * settings["tile_size"] ** 2
            e2e_tiles = tile_px / 1e6 / s["total"] if s["total"] else 0.0
            stages = {k: s[k] for k in ("read", "preprocess", "model", "blend", "write")}
            row = {
                "preset": preset,
                "variant": name,
                "scene": f"{size}x{size}",
                **{k: settings[k] for k in ("tile_size", "overlap", "amp", "channels_last", "batch_size")},
                "tiles_run": res.summary["tiles"]["run"],
                "wall_s": s["total"],
                "cpu_s": round(cpu_s, 2),
                "seconds": stages,
                "stage_share": {k: round(v / s["total"], 3) for k, v in stages.items()} if s["total"] else {},
                "end_to_end_mp_s": e2e,
                "end_to_end_tile_mp_s": round(e2e_tiles, 4),
                "model_only_mp_s": round(mo, 4),
                "ratio_end_to_end_to_model": round(e2e_tiles / mo, 3) if mo else None,
                "load_avg_1min_before": round(load0, 2),
                "device": device,
            }
            if "peak_gpu_mb" in res.summary:
                row["peak_gpu_mb"] = res.summary["peak_gpu_mb"]
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# Child processes (one measurement each, so that peak RSS is clean)


def _sparse_scene(path: Path, size: int) -> None:
    """A tiled, uncompressed GeoTIFF whose blocks are never written (reads back as zeros)."""
    import rasterio
    from rasterio.transform import from_origin

    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 3,
        "dtype": "uint8",
        "crs": "EPSG:32633",
        "transform": from_origin(500000, 5600000, 10, 10),
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "BIGTIFF": "YES",
        "SPARSE_OK": "TRUE",
    }
    with rasterio.open(path, "w", **profile):
        pass


def _standin() -> tuple[Any, Any]:
    from torch import nn

    from geopsp.classes import ClassTable
    from geopsp.model.meta import BundleMeta, ModelSpec, Normalization

    meta = BundleMeta(
        spec=ModelSpec(in_channels=3, num_classes=6),
        classes=ClassTable.from_list([{"id": i, "name": f"class_{i}"} for i in range(6)]),
        bands=(1, 2, 3),
        band_names=("red", "green", "blue"),
        input_dtype="uint8",
        normalization=Normalization.for_dtype("uint8", 3),
        tile_size=512,
        overlap=64,
    )
    return nn.Conv2d(3, 6, 1), meta


def child_memory(size: int, folder: Path) -> dict[str, Any]:
    from geopsp.config.schema import PredictConfig
    from geopsp.pipeline import segment_raster

    scene = folder / f"sparse_{size}.tif"
    _sparse_scene(scene, size)
    cfg = PredictConfig.model_validate({"device": "cpu"})
    res = segment_raster(scene, _standin(), folder / f"mem_{size}", config=cfg, overwrite=True)
    return {"wall_s": res.summary["seconds"]["total"], "strip_mib": round(res.summary["strip_bytes"] / MiB, 1)}


def child_naive(scene: Path, bundle_path: Path, out: Path) -> dict[str, Any]:
    """Read the whole scene, one forward pass, argmax, write: the simple-example approach."""
    import numpy as np
    import rasterio
    import torch

    from geopsp.model.bundle import load_bundle

    t0 = time.perf_counter()
    bundle = load_bundle(bundle_path)
    with rasterio.open(scene) as src:
        data = src.read()
        profile = src.profile
    x = torch.from_numpy(bundle.meta.normalization.apply(data[None]))
    with torch.inference_mode():
        logits = bundle.model(x)
    cls = logits.argmax(1)[0].numpy().astype(np.uint8)
    profile.update(count=1, dtype="uint8", compress="deflate")
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(cls, 1)
    return {"wall_s": round(time.perf_counter() - t0, 3)}


def child_tiled(scene: Path, bundle_path: Path, out: Path) -> dict[str, Any]:
    from geopsp.config.schema import PredictConfig
    from geopsp.pipeline import segment_raster

    t0 = time.perf_counter()
    cfg = PredictConfig.model_validate({"device": "cpu"})
    segment_raster(scene, bundle_path, out, config=cfg, overwrite=True)
    return {"wall_s": round(time.perf_counter() - t0, 3)}


def run_child(*args: str, timeout: float = 900) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    t0 = time.perf_counter()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    out = proc.stdout.read().decode() if proc.stdout else ""
    err = proc.stderr.read().decode() if proc.stderr else ""
    # Peak RSS comes from the child's own VmHWM: rusage's ru_maxrss would include this (large,
    # torch-loaded) parent's RSS, which Linux carries over the fork + exec.
    del usage
    result: dict[str, Any] = {"process_wall_s": round(wall, 2)}
    if code != 0:
        result["error"] = (err.strip().splitlines() or [f"exit {code}"])[-1]
        result["exit_code"] = code
        return result
    result.update(json.loads(out.strip().splitlines()[-1]))
    return result


def memory(folder: Path, sizes: list[int]) -> list[dict[str, Any]]:
    rows = []
    base = run_child("baseline")
    for size in sizes:
        r = run_child("memory", str(size), str(folder))
        row = {"size": size, "megapixels": size * size / 1e6, **r, "baseline_rss_mib": base["peak_rss_mib"]}
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
        for p in folder.glob(f"sparse_{size}.tif"):
            p.unlink()
    return rows


def naive(folder: Path, sizes: list[int]) -> list[dict[str, Any]]:
    rows = []
    _, bundle = make_inputs(folder, "fast", 512)
    for size in sizes:
        scene, _ = make_inputs(folder, "fast", size)
        for mode in ("tiled", "naive"):
            out = folder / f"{mode}_{size}" if mode == "tiled" else folder / f"naive_{size}.tif"
            r = run_child(mode, str(scene), str(bundle), str(out))
            row = {"size": size, "megapixels": size * size / 1e6, "mode": mode, **r}
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
    return rows


def machine() -> dict[str, Any]:
    import torch

    from geopsp.device import cpu_name as _cpu_name

    return {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.cuda.is_available(),
        "note": "shared machine: other jobs were using the CPU while this ran",
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, rest = sys.argv[2], sys.argv[3:]
        if kind == "baseline":
            import torch  # noqa: F401

            import geopsp.pipeline  # noqa: F401

            res: dict[str, Any] = {}
        elif kind == "memory":
            res = child_memory(int(rest[0]), Path(rest[1]))
        elif kind == "naive":
            res = child_naive(Path(rest[0]), Path(rest[1]), Path(rest[2]))
        else:
            res = child_tiled(Path(rest[0]), Path(rest[1]), Path(rest[2]))
        from geopsp._procfs import peak_rss_mb

        res["peak_rss_mib"] = peak_rss_mb()
        print(json.dumps(res))
        return

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["sweep", "memory", "naive"])
    parser.add_argument("--presets", nargs="+", default=["fast", "paper"])
    parser.add_argument("--memory-sizes", type=int, nargs="+", default=[1000, 2500, 5000, 10000, 20000])
    parser.add_argument("--naive-sizes", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument("--device", default="cpu", help="Device of the sweep (cpu or cuda).")
    parser.add_argument("--quick", action="store_true", help="Tiny sizes, two variants: checks the harness runs.")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "predict_matrix.json")
    args = parser.parse_args()

    if args.quick:
        args.memory_sizes = [256, 512]
        args.naive_sizes = [256]
        if args.out == HERE / "results" / "predict_matrix.json":
            args.out = Path(tempfile.gettempdir()) / "predict_matrix_quick.json"
    result: dict[str, Any] = {"machine": machine(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if args.out.exists():
        previous = json.loads(args.out.read_text())
        result.update({k: v for k, v in previous.items() if k in ("sweep", "memory", "naive")})
    with tempfile.TemporaryDirectory(prefix="geopsp-bench-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        if "sweep" in args.parts:
            result["sweep"] = sweep(folder, args.presets, args.quick, args.device)
        if "memory" in args.parts:
            result["memory"] = memory(folder, args.memory_sizes)
        if "naive" in args.parts:
            result["naive"] = naive(folder, args.naive_sizes)
        result["bench_wall_s"] = round(time.perf_counter() - t0, 1)
    result["scene_sizes"] = {"sweep": SCENES, "memory": args.memory_sizes, "naive": args.naive_sizes}
    result["quick"] = args.quick
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(args.out)


if __name__ == "__main__":
    main()
