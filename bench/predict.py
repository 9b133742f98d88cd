"""Benchmarks of ``segment_raster``: end-to-end vs model-only throughput, CPU bf16, peak memory.

Run: ``.venv/bin/python bench/predict.py [--only throughput|memory] [--workdir DIR]``; writes
``bench/results/predict.json`` (merged with earlier sections of the same file).

throughput
    A synthetic 2048 x 2048 RGB scene (``geopsp.synthetic``) through the ``fast`` preset
    (untrained; speed does not depend on weights), 512 px tiles, overlap 64, batch 4. In one
    process: the end-to-end run (read, preprocess, model, blend, write the COG) and the model
    alone on the same tiles and settings (tiles pre-cut and pre-normalized in memory, same batch
    composition). Target: end-to-end MP/s / model-only MP/s >= 0.9. Run with bf16 autocast off
    and on; the class rasters of both runs are compared pixel by pixel, which decides the CPU
    default of ``PredictConfig.amp`` (bf16 must be faster and agree on >= 99.5 % of pixels).

memory
    Peak RSS of a whole ``segment_raster`` run, each in a fresh process, on 2000 x 2000 and
    20000 x 20000 3-band uint8 scenes (tiled 512, DEFLATE; written window by window with a cheap
    pattern). A real CNN would take hours on 20000^2 pixels with 2 CPU cores, so these runs use
    a stand-in model (a 1x1 convolution, 6 classes); the pipeline (reader, strip mosaic, writer,
    COG) is the same, with the default batch (4). Target: peak(20000^2) <= 1.2 x peak(2000^2) and < 2.5 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "predict.json"


def _cpu() -> dict[str, Any]:
    name = platform.processor()
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = line
                break
    except OSError:
        pass
    return {
        "cpu": name,
        "cores": os.cpu_count(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "python": platform.python_version(),
    }


# ---------------------------------------------------------------------------------------------
# scenes


def cheap_scene(path: Path, size: int, *, bands: int = 3, block: int = 512, cell: int = 8) -> Path:
    """A size x size uint8 GeoTIFF with a cheap, compressible but not constant pattern of ``cell`` px squares."""
    import rasterio
    from affine import Affine

    if path.exists():
        return path
    tmp = path.with_name(path.name + ".part")
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": bands,
        "dtype": "uint8",
        "crs": "EPSG:32633",
        "transform": Affine(1.0, 0.0, 500000.0, 0.0, -1.0, 5600000.0),
        "tiled": True,
        "blockxsize": block,
        "blockysize": block,
        "compress": "deflate",
        "nodata": 0,
        "bigtiff": "IF_SAFER",
    }
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:block, 0:block]
    base = ((yy // cell * 7 + xx // cell * 13) % 200 + 20).astype(np.uint8)
    with rasterio.open(tmp, "w", **profile) as dst:
        for r in range(0, size, block):
            for c in range(0, size, block):
                h, w = min(block, size - r), min(block, size - c)
                off = rng.integers(0, 30, size=(bands, 1, 1), dtype=np.uint8)
                arr = np.broadcast_to(base[:h, :w], (bands, h, w)) + off
                dst.write(arr, window=rasterio.windows.Window(c, r, w, h))
    tmp.rename(path)
    return path


def synthetic_scene(path: Path, size: int) -> Path:
    from geopsp.synthetic import make_scene

    if not path.exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            make_scene(path, width=size, height=size, bands=3, dtype="uint8", seed=7, overwrite=True)
    return path


# ---------------------------------------------------------------------------------------------
# throughput


def _fast_model(bands: int, classes: int) -> tuple[Any, Any]:
    import torch

    from geopsp.classes import ClassTable
    from geopsp.model.meta import BundleMeta, Normalization
    from geopsp.model.registry import build_model, spec_from_preset

    torch.manual_seed(0)
    spec = spec_from_preset("fast", in_channels=bands, num_classes=classes)
    meta = BundleMeta(
        spec=spec,
        classes=ClassTable.default(classes),
        bands=tuple(range(1, bands + 1)),
        band_names=("red", "green", "blue")[:bands],
        input_dtype="uint8",
        normalization=Normalization.from_stats([110.0] * bands, [50.0] * bands),
        tile_size=512,
        overlap=64,
    )
    return build_model(spec).eval(), meta


def model_only(model: Any, meta: Any, scene: Path, *, tile: int, overlap: int, batch: int, amp: bool) -> dict[str, Any]:
    """Time the model alone on the tiles the pipeline runs, with the same batches."""
    import rasterio

    from geopsp.inference.predict import Predictor
    from geopsp.tiling import TileGrid
    from geopsp.tiling.reader import pad_tile

    with rasterio.open(scene) as src:
        arr = src.read(list(meta.bands))
        valid = src.dataset_mask() > 0
    grid = TileGrid(arr.shape[1], arr.shape[2], tile, overlap)
    pred = Predictor(model, meta, device="cpu", amp=amp)
    tiles = []
    for t in grid.tiles():
        v = valid[t.row : t.row_end, t.col : t.col_end]
        if v.any():
            tiles.append(pred.prepare(t, *pad_tile(arr[:, t.row : t.row_end, t.col : t.col_end], v, tile)))
    batches = [
        pred.to_device([d for d, _ in tiles[i : i + batch]], [m for _, m in tiles[i : i + batch]])[0]
        for i in range(0, len(tiles), batch)
    ]
    pred.probabilities(batches[0][:1])  # warm-up (oneDNN primitive creation)
    start = time.perf_counter()
    for x in batches:
        pred.probabilities(x)
    seconds = time.perf_counter() - start
    mp = arr.shape[1] * arr.shape[2] / 1e6
    return {"tiles": len(tiles), "seconds": round(seconds, 3), "megapixels_per_second": round(mp / seconds, 4)}


def end_to_end(
    model: Any, meta: Any, scene: Path, out: Path, *, tile: int, overlap: int, batch: int, amp: bool
) -> dict[str, Any]:
    from geopsp.config import PredictConfig
    from geopsp.pipeline import segment_raster

    conf = PredictConfig(tile_size=tile, overlap=overlap, batch_size=batch, amp=amp, device="cpu")
    res = segment_raster(scene, (model, meta), out, config=conf, overwrite=True)
    s = res.summary
    return {
        "tiles_run": s["tiles"]["run"],
        "seconds": s["seconds"],
        "megapixels_per_second": s["megapixels_per_second"],
        "classes": str(res.classes),
    }


def bench_throughput(
    workdir: Path, *, size: int = 2048, tile: int = 512, overlap: int = 64, batch: int = 4, repeats: int = 3
) -> dict[str, Any]:
    import rasterio
    import torch

    scene = synthetic_scene(workdir / f"synthetic_{size}.tif", size)
    model, meta = _fast_model(3, 6)
    runs: dict[str, Any] = {}
    classes: dict[str, np.ndarray] = {}
    for amp in (False, True):
        key = "bf16" if amp else "fp32"
        # warm up the pipeline once (first-call costs: oneDNN primitives, GDAL drivers)
        end_to_end(model, meta, scene, workdir / f"warm_{key}", tile=tile, overlap=overlap, batch=batch, amp=amp)
        # alternate end-to-end and model-only runs: the machine is shared, so compare like with like
        e2e_runs, mo_runs = [], []
        for _ in range(repeats):
            e2e_runs.append(
                end_to_end(model, meta, scene, workdir / f"e2e_{key}", tile=tile, overlap=overlap, batch=batch, amp=amp)
            )
            mo_runs.append(model_only(model, meta, scene, tile=tile, overlap=overlap, batch=batch, amp=amp))
        e2e_s = sorted(r["seconds"]["total"] for r in e2e_runs)
        mo_s = sorted(r["seconds"] for r in mo_runs)
        with rasterio.open(e2e_runs[-1]["classes"]) as src:
            classes[key] = src.read(1)
        runs[key] = {
            "end_to_end_seconds": e2e_s,
            "model_only_seconds": mo_s,
            "end_to_end_stages_last_run": e2e_runs[-1]["seconds"],
            "tiles": mo_runs[0]["tiles"],
            "megapixels_per_second_end_to_end_median": round(size * size / 1e6 / e2e_s[len(e2e_s) // 2], 4),
            "megapixels_per_second_model_only_median": round(size * size / 1e6 / mo_s[len(mo_s) // 2], 4),
            "ratio_e2e_over_model_median": round(mo_s[len(mo_s) // 2] / e2e_s[len(e2e_s) // 2], 4),
            "ratio_e2e_over_model_best": round(mo_s[0] / e2e_s[0], 4),
        }
        print(key, json.dumps(runs[key]), flush=True)
    agree = float((classes["fp32"] == classes["bf16"]).mean())
    speedup = runs["fp32"]["model_only_seconds"][0] / runs["bf16"]["model_only_seconds"][0]
    return {
        "scene": f"synthetic {size}x{size} RGB uint8 (geopsp.synthetic, seed 7)",
        "model": "fast preset (pspnet, resnet18 depth 3, OS 8, 512-ch head), untrained, 6 classes",
        "tile": tile,
        "overlap": overlap,
        "batch_size": batch,
        "torch_threads": torch.get_num_threads(),
        "runs": runs,
        "bf16_vs_fp32": {
            "pixel_agreement": round(agree, 5),
            "model_speedup": round(speedup, 3),
            "bf16_default_on_cpu": bool(agree >= 0.995 and speedup > 1.0),
        },
        "repeats": repeats,
        "target_ratio": 0.9,
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "note": "timings on a small shared CPU are noisy: "
        "runs alternate end-to-end and model-only and the ratio uses medians (and best runs)",
    }


# ---------------------------------------------------------------------------------------------
# memory


def memory_child(scene: str, out: str, tile: int, overlap: int, extra: dict[str, Any] | None = None) -> None:
    """Run in a fresh process: one segment_raster with the stand-in model; print the summary.

    ``extra`` holds more settings: ``predict`` (PredictConfig fields) and ``vectorize``
    (VectorizeConfig fields), e.g. from ``bench/qa_memory.py``.
    """
    import torch
    from torch import nn

    from geopsp.classes import ClassTable
    from geopsp.config import PredictConfig, VectorizeConfig
    from geopsp.model.meta import BundleMeta, ModelSpec, Normalization
    from geopsp.pipeline import segment_raster

    torch.manual_seed(0)
    classes = 6
    meta = BundleMeta(
        spec=ModelSpec(in_channels=3, num_classes=classes),
        classes=ClassTable.default(classes),
        bands=(1, 2, 3),
        band_names=("red", "green", "blue"),
        input_dtype="uint8",
        normalization=Normalization.for_dtype("uint8", 3),
        tile_size=tile,
        overlap=overlap,
    )
    import threading

    import psutil

    from geopsp._procfs import peak_rss_mb

    rss_before = peak_rss_mb()  # VmHWM: ru_maxrss would include the parent's size before exec
    more = extra or {}
    conf = PredictConfig(tile_size=tile, overlap=overlap, device="cpu", **more.get("predict", {}))  # default batch
    vconf = VectorizeConfig(**more.get("vectorize", {}))
    proc = psutil.Process()
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append((time.perf_counter(), proc.memory_info().rss / 2**20))
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t_start = time.perf_counter()
    model = nn.Conv2d(3, classes, 1)
    res = segment_raster(scene, (model, meta), out, config=conf, vector_config=vconf, overwrite=True)
    t_end = time.perf_counter()
    done.set()
    sampler.join()
    s = res.summary
    # the class raster's COG conversion (overviews) runs last, for `finalize_output` seconds
    t_fin = t_end - s["seconds"]["finalize_output"] - 0.05
    loop = [r for t, r in samples if t < t_fin]
    fin = [r for t, r in samples if t >= t_fin]
    print(
        json.dumps(
            {
                "peak_rss_mb": s["peak_rss_mb"],
                "peak_rss_process_mb": round(peak_rss_mb(), 1),  # VmHWM of the whole run, its extras included
                "wall_seconds": round(t_end - t_start, 1),
                "peak_rss_tiles_loop_mb": round(max(loop), 1) if loop else None,
                "peak_rss_cog_finalize_mb": round(max(fin), 1) if fin else None,
                "rss_after_imports_mb": round(rss_before, 1),
                "strip_bytes": s["strip_bytes"],
                "read_buffer_bytes": s.get("read_buffer_bytes"),
                "tiles": s["tiles"],
                "seconds": s["seconds"],
                "megapixels_per_second": s["megapixels_per_second"],
            }
        )
    )


def bench_memory(
    workdir: Path, sizes: tuple[int, ...] = (2000, 20000), tile: int = 512, overlap: int = 64
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model": "stand-in 1x1 conv, 6 classes (a real CNN on 20000^2 px would take hours on 2 CPU cores)",
        "tile": tile,
        "overlap": overlap,
        "runs": {},
    }
    for size in sizes:
        t0 = time.perf_counter()
        scene = cheap_scene(workdir / f"cheap_{size}.tif", size)
        gen = time.perf_counter() - t0
        cmd = [
            sys.executable,
            __file__,
            "--child-memory",
            str(scene),
            str(workdir / f"mem_{size}"),
            str(tile),
            str(overlap),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-3000:])
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result["scene_generation_seconds"] = round(gen, 1)
        result["scene_bytes"] = scene.stat().st_size
        out["runs"][str(size)] = result
        print(size, json.dumps(result), flush=True)
    if len(sizes) == 2:
        small, big = (out["runs"][str(s)]["peak_rss_mb"] for s in sizes)
        out["peak_ratio"] = round(big / small, 3)
        out["target"] = "peak(20000^2) <= 1.2 x peak(2000^2) and < 2500 MB"
        out["meets_target"] = bool(big <= 1.2 * small and big < 2500)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["throughput", "memory"], default=None)
    ap.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "geopsp-bench-predict")
    ap.add_argument("--size", type=int, default=2048, help="throughput scene edge")
    ap.add_argument("--memory-sizes", type=int, nargs="+", default=[2000, 20000])
    ap.add_argument("--child-memory", nargs=4, metavar=("SCENE", "OUT", "TILE", "OVERLAP"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_memory:
        scene, out, tile, overlap = args.child_memory
        memory_child(scene, out, int(tile), int(overlap))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    fresh: dict[str, Any] = {}
    if args.only in (None, "throughput"):
        fresh["throughput"] = bench_throughput(args.workdir, size=args.size)
    if args.only in (None, "memory"):
        fresh["memory"] = bench_memory(args.workdir, tuple(args.memory_sizes))
    # merge with sections written meanwhile (another section may have run in parallel)
    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results.update(fresh)
    results["machine"] = _cpu()
    results["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
