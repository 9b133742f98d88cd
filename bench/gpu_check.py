"""The device check: is the CUDA path right, how fast is it, and where does the host spend its time.

One script, one JSON (``bench/results/gpu_check.json``), three parts:

* ``correctness``: the pipeline on ``--device`` against the CPU on real (seeded, untrained)
  PSPNets of both presets: a uint8 scene with nodata, a 10-band uint16 scene, TTA, and strips
  stitched against the whole scene (bit for bit, on the device itself). fp32 on the device is
  compared with a class agreement bar (cuDNN's TF32 and algorithm choice change the last
  bits), bf16 autocast with a lower one. On a machine without CUDA it runs with ``--device
  cpu`` (the test suite does so), which still checks strips, TTA, nodata and uint16 on the
  batched, multi-threaded path against the one-tile-at-a-time reference.
* ``speed`` (``--size``, default 20000): model-only and end-to-end Mpx/s, GPU memory and the
  summary's stage times for both presets on a ``size``² 3-band uint8 DEFLATE COG.
* ``host``: the host CPU seconds per scene megapixel of that end-to-end run (process CPU
  time over the run, and the reader/cutter/writer/finish stage times).

Run on a GPU machine (under 8 minutes on one H100 at the default size)::

    python bench/gpu_check.py --device cuda

and put the numbers into ``docs/performance.md`` (``python bench/report.py --run``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

FP32_AGREEMENT = 0.999
BF16_AGREEMENT = 0.99


def _model(preset: str, bands: int, dtype: str, tile: int, seed: int = 0) -> tuple[Any, Any]:
    import torch

    from geopsp.classes import ClassTable
    from geopsp.model.meta import BundleMeta, Normalization
    from geopsp.model.registry import build_model, spec_from_preset

    torch.manual_seed(seed)
    spec = spec_from_preset(preset, in_channels=bands, num_classes=6)
    mean, std = (110.0, 50.0) if dtype == "uint8" else (1500.0, 800.0)
    meta = BundleMeta(
        spec=spec,
        classes=ClassTable.default(6),
        bands=tuple(range(1, bands + 1)),
        band_names=tuple(f"b{i}" for i in range(1, bands + 1)),
        input_dtype=dtype,
        normalization=Normalization.from_stats([mean] * bands, [std] * bands),
        tile_size=tile,
        overlap=tile // 8,
    )
    return build_model(spec).eval(), meta


def _classes(path: Path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as src:
        return src.read(1)


def _predict(scene: Path, model: Any, out: Path, **options: Any) -> tuple[np.ndarray, dict[str, Any]]:
    from geopsp.config import PredictConfig
    from geopsp.pipeline import segment_raster

    res = segment_raster(scene, model, out, config=PredictConfig(**options), overwrite=True)
    return _classes(res.classes), res.summary


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a == b).mean())


def correctness(device: str, work: Path, *, quick: bool) -> dict[str, Any]:
    """Compare the pipeline on ``device`` with the CPU reference; return the checks and whether each passed."""
    from geopsp.testing import small_scene

    checks: list[dict[str, Any]] = []
    side = 150 if quick else 1024
    rgb, _ = small_scene(work, width=side + 37, height=side, bands=3, dtype="uint8", nodata_edge=True, seed=1)
    s2, _ = small_scene(work, width=side, height=side - 29, bands=10, dtype="uint16", seed=2)
    presets = {"fast": 96 if quick else 512, "paper": 64 if quick else 384}
    for preset, tile in presets.items():
        for scene, bands, dtype in ((rgb, 3, "uint8"), (s2, 10, "uint16")):
            model = _model(preset, bands, dtype, tile)
            base = {"tile_size": tile, "overlap": tile // 8, "reader_threads": 2}
            ref, _ = _predict(
                scene, model, work / f"ref-{preset}-{dtype}", device="cpu", amp=False, batch_size=1, **base
            )
            runs = [("fp32", {"amp": False}, FP32_AGREEMENT), ("bf16", {"amp": True}, BF16_AGREEMENT)]
            if device == "cpu":
                runs = runs[:1]  # bf16 on a CPU is not what this checks
            for name, extra, bar in runs:
                got, summary = _predict(
                    scene, model, work / f"dev-{preset}-{dtype}-{name}", device=device, **base, **extra
                )
                agree = _agreement(got, ref)
                nodata = int(summary["nodata"])
                checks.append(
                    {
                        "check": f"{preset} {dtype} {bands}-band {name} vs cpu",
                        "agreement": round(agree, 6),
                        "bar": bar,
                        "same_nodata": bool(((got == nodata) == (ref == nodata)).all()),
                        "batch_size": summary["settings"]["batch_size"],
                        "passed": agree >= bar and bool(((got == nodata) == (ref == nodata)).all()),
                    }
                )
        # TTA and strips, on the device against itself and against the CPU
        model = _model(preset, 3, "uint8", tile)
        base = {"tile_size": tile, "overlap": tile // 8, "device": device, "amp": False}
        tta_dev, _ = _predict(rgb, model, work / f"tta-{preset}", tta="flip", **base)
        tta_cpu, _ = _predict(rgb, model, work / f"tta-cpu-{preset}", tta="flip", **{**base, "device": "cpu"})
        agree = _agreement(tta_dev, tta_cpu)
        checks.append(
            {
                "check": f"{preset} TTA flip vs cpu",
                "agreement": round(agree, 6),
                "bar": FP32_AGREEMENT,
                "passed": agree >= FP32_AGREEMENT,
            }
        )
        whole, _ = _predict(rgb, model, work / f"whole-{preset}", **base)
        cut = side // 2 + 3
        from geopsp.config import PredictConfig
        from geopsp.pipeline import segment_raster

        parts = []
        for i, rows in enumerate(((0, cut), (cut, side))):
            res = segment_raster(
                rgb, model, work / f"strip-{preset}-{i}", config=PredictConfig(**base), row_range=rows, overwrite=True
            )
            parts.append(_classes(res.classes))
        stitched = np.concatenate(parts)
        same = bool(np.array_equal(stitched, whole))
        checks.append(
            {"check": f"{preset} strips stitched == whole scene on {device}", "identical": same, "passed": same}
        )
    return {"device": device, "checks": checks, "passed": all(c["passed"] for c in checks)}


def _cog(path: Path, size: int) -> Path:
    from predict import cheap_scene  # bench/predict.py

    return cheap_scene(path, size)


def speed(device: str, work: Path, *, size: int, presets: list[str]) -> dict[str, Any]:
    """Model-only and end-to-end throughput, GPU memory and stage times per preset on a ``size``² COG."""
    import torch

    from geopsp.inference.predict import Predictor

    scene = _cog(work / f"cog_{size}.tif", size)
    mp = size * size / 1e6
    out: dict[str, Any] = {"scene": {"size": size, "bands": 3, "dtype": "uint8", "compress": "deflate"}}
    for preset in presets:
        tile = 512
        model, meta = _model(preset, 3, "uint8", tile)
        pred = Predictor(model, meta, device=device)
        batch = pred.batch_size_for(None, (tile, tile))
        x = torch.zeros((batch, 3, tile, tile), dtype=torch.float32, device=pred.device)
        pred.probabilities(x)  # warm-up: cuDNN picks its algorithms
        reps = 20 if pred.is_cuda else 2
        if pred.is_cuda:
            torch.cuda.synchronize(pred.device)
        t0 = time.perf_counter()
        for _ in range(reps):
            pred.probabilities(x)
        if pred.is_cuda:
            torch.cuda.synchronize(pred.device)
        model_s = time.perf_counter() - t0
        core = (tile - tile // 8) ** 2  # scene pixels a tile adds at this overlap
        model_mpx = reps * batch * core / 1e6 / model_s
        del x, pred
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        _, summary = _predict(
            scene, (model, meta), work / f"e2e-{preset}", device=device, tile_size=tile, overlap=tile // 8
        )
        wall = time.perf_counter() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        secs = summary["seconds"]
        out[preset] = {
            "batch_size": summary["settings"]["batch_size"],
            "model_only_mpx_per_s": round(model_mpx, 2),
            "end_to_end_mpx_per_s": round(mp / wall, 2),
            "loop_mpx_per_s": summary["megapixels_per_second_tiles_loop"],
            "loop_vs_model_only": round(summary["megapixels_per_second_tiles_loop"] / model_mpx, 3),
            "peak_gpu_mb": summary.get("peak_gpu_mb"),
            "gpu_busy_fraction": summary["device"].get("gpu_busy_fraction"),
            "gpu_utilization_percent": summary["device"].get("gpu_utilization_percent"),
            "seconds": secs,
            "host_cpu_ms_per_mp": round(1000 * cpu_s / mp, 2),
            "host_stage_ms_per_mp": {
                k: round(1000 * float(secs[k]) / mp, 2) for k in ("read", "preprocess", "write", "finalize_output")
            },
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--parts", nargs="+", default=["correctness", "speed"], choices=["correctness", "speed"])
    parser.add_argument("--size", type=int, default=20000, help="edge of the speed scene (px)")
    parser.add_argument("--presets", nargs="+", default=["fast", "paper"])
    parser.add_argument("--quick", action="store_true", help="small correctness scenes and tiles (the test suite)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "gpu_check.json")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    import torch

    from geopsp.device import cpu_count, cpu_name

    result: dict[str, Any] = {
        "machine": {
            "cpu": cpu_name(),
            "cores": cpu_count(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "gpus": torch.cuda.device_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "loadavg_before": list(os.getloadavg()),
        },
        "device": args.device,
    }
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="geopsp-gpu-check-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if "correctness" in args.parts:
            result["correctness"] = correctness(args.device, work, quick=args.quick)
            print(json.dumps(result["correctness"], indent=1), flush=True)
        if "speed" in args.parts:
            result["speed"] = speed(args.device, work, size=args.size, presets=args.presets)
            print(json.dumps(result["speed"], indent=1), flush=True)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out} in {result['seconds']} s")
    if "correctness" in result and not result["correctness"]["passed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
