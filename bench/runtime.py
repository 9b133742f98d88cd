"""Runtimes on the CPU: torch fp32 and bf16, ONNX Runtime fp32 and int8, model-only and end to end.

Run: ``.venv/bin/python bench/runtime.py [--only model,e2e,small,large] [--workdir DIR]``;
writes ``bench/results/runtime.json`` (sections merged with earlier runs of the same file).
Run it on a quiet machine: every number is compared with another of the same run.

model
    Both presets (``fast``, ``paper``), untrained (speed does not depend on the weights), 3
    bands, 6 classes: one batch of 4 real tiles of a synthetic scene, 512 px, 16 px reflection
    margin, softmax, in one process, back to back: ``Predictor`` (torch fp32 and bf16 autocast,
    channels_last) and ``OrtPredictor`` (the export, fp32, and its int8 quantization calibrated
    on tiles of the scene). Megapixels per second of model input, and the share of pixels whose
    class equals torch fp32's.
e2e
    The whole ``geopsp predict`` process, each in a fresh process (import, model load, read,
    model, blend, write the COG): a 4096^2 scene for ``fast``, 1024^2 for ``paper``, batch 4,
    tiles 512 with overlap 64. Wall time, peak RSS, the model's share of the tile loop, and the
    class agreement with the torch fp32 run. Targets: ONNX Runtime fp32 >= 2x and int8 >= 4x
    torch fp32 end to end (classes identical for fp32, >= 99 % for int8); end to end vs
    model-only >= 0.9.
small
    Time to first output and peak RSS of ``geopsp predict`` on a 400 x 400 scene (0.16 MP):
    the bundle in torch against the export in ONNX Runtime with torch made unimportable.
    Target: <= 2 s.
large
    Peak RSS of a torch-free ONNX Runtime (int8, all nodes: the fastest) prediction of a 20000 x 20000
    scene. Target <= 1 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from predict import _cpu, cheap_scene, synthetic_scene  # noqa: E402

RESULTS = HERE / "results" / "runtime.json"
THREADS = 2
TILE, OVERLAP, MARGIN, BATCH = 512, 64, 16, 4


def _int8_candidates() -> dict[str, Any]:
    from geopsp.model.quantize import Candidate

    return {
        # what quantize chose for the trained Sentinel-2 model on this (AVX2, no VNNI) CPU
        "int8": Candidate("Percentile", ("pooled", "stem", "tail"), reduce_range=False),
        # every node int8: the speed ceiling (fails the agreement gate on trained models)
        "int8_all": Candidate("MinMax"),
    }


INT8: dict[str, Any] = {}

BLOCK_TORCH = (
    "import sys, importlib.abc\n"
    "class _B(importlib.abc.MetaPathFinder):\n"
    "    def find_spec(self, name, path, target=None):\n"
    "        if name.split('.')[0] in ('torch', 'torchvision', 'segmentation_models_pytorch', 'timm'):\n"
    "            raise ImportError('torch is blocked in this run: ' + name)\n"
    "sys.meta_path.insert(0, _B())\n"
)


def _bundle(preset: str, path: Path) -> Path:
    import torch

    from geopsp.classes import ClassTable
    from geopsp.model.bundle import save_bundle
    from geopsp.model.meta import BundleMeta, Normalization
    from geopsp.model.registry import build_model, spec_from_preset

    if path.exists():
        return path
    torch.manual_seed(0)
    spec = spec_from_preset(preset, in_channels=3, num_classes=6)
    meta = BundleMeta(
        spec=spec,
        classes=ClassTable.default(6),
        bands=(1, 2, 3),
        band_names=("red", "green", "blue"),
        input_dtype="uint8",
        normalization=Normalization.from_stats([110.0] * 3, [50.0] * 3),
        tile_size=TILE,
        overlap=OVERLAP,
    )
    save_bundle(build_model(spec).eval(), meta, path)
    return path


def _models(preset: str, work: Path, calib: Path) -> dict[str, Path]:
    """The bundle, its fp32 export and its int8 quantization (made once, kept in the workdir)."""
    from geopsp.model.onnx_export import export_onnx
    from geopsp.model.quantize import quantize_onnx

    bundle = _bundle(preset, work / f"{preset}.safetensors")
    fp32 = work / f"{preset}.onnx"
    if not fp32.exists():
        t0 = time.perf_counter()
        export_onnx(bundle, fp32, margin_px=MARGIN)
        print(f"{preset}: exported in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    out = {"bundle": bundle, "fp32": fp32}
    for name, candidate in INT8.items():
        int8 = work / f"{preset}.{name}.onnx"
        if not int8.exists():
            t0 = time.perf_counter()
            quantize_onnx(fp32, [calib], int8, max_tiles=4, candidates=(candidate,), threads=THREADS)
            print(f"{preset}: {name} quantized in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        out[name] = int8
    return out


def _tiles(scene: Path, meta: Any, n: int) -> tuple[Any, Any]:
    """``n`` real tiles of the scene, prepared as the pipeline prepares them."""
    from geopsp.io.raster import open_scene
    from geopsp.model.inputs import model_input

    rng = np.random.default_rng(0)
    with open_scene(scene) as (src, info):
        arrays, masks = [], []
        for _ in range(n):
            r = int(rng.integers(0, info.height - TILE))
            c = int(rng.integers(0, info.width - TILE))
            from rasterio.windows import Window

            raw = src.read(list(meta.bands), window=Window(c, r, TILE, TILE))
            valid = np.ones((TILE, TILE), dtype=bool)
            arrays.append(np.ascontiguousarray(model_input(raw, valid, meta.normalization)))
            masks.append(valid)
    return arrays, masks


def _time(fn: Any, reps: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def section_model(work: Path, scene: Path) -> list[dict[str, Any]]:
    import torch

    from geopsp.device import cpu_has_native_bf16
    from geopsp.inference.ort import OnnxModel, OrtPredictor
    from geopsp.inference.predict import Predictor
    from geopsp.model.bundle import load_bundle

    torch.set_num_threads(THREADS)
    rows = []
    for preset in ("fast", "paper"):
        paths = _models(preset, work, scene)
        b = load_bundle(paths["bundle"])
        arrays, masks = _tiles(scene, b.meta, BATCH)
        px = BATCH * TILE * TILE
        reps = 5 if preset == "fast" else 2
        ref = None
        variants: list[tuple[str, Any]] = [
            ("torch fp32", Predictor(b.model, b.meta, device="cpu", amp=False, margin_px=MARGIN)),
            ("torch bf16", Predictor(b.model, b.meta, device="cpu", amp=True, margin_px=MARGIN)),
            ("onnxruntime fp32", OrtPredictor(OnnxModel.load(paths["fp32"], threads=THREADS))),
            ("onnxruntime int8", OrtPredictor(OnnxModel.load(paths["int8"], threads=THREADS))),
            ("onnxruntime int8 (all nodes)", OrtPredictor(OnnxModel.load(paths["int8_all"], threads=THREADS))),
        ]
        for name, pred in variants:
            x, _ = pred.to_device(arrays, masks)
            emulated = name == "torch bf16" and not cpu_has_native_bf16()
            if emulated and preset != "fast":
                continue  # ~8x slower than fp32 without native bf16 (measured on fast): minutes per batch
            held: list[Any] = []
            seconds = _time(lambda p=pred, x=x, held=held: held.append(p.probabilities(x)), 1 if emulated else reps)
            probs = held[-1]
            cls = (probs.numpy() if hasattr(probs, "numpy") else probs).argmax(1)
            ref = cls if ref is None else ref
            rows.append(
                {
                    "preset": preset,
                    "runtime": name,
                    "seconds_per_batch": round(seconds, 4),
                    "mpx_per_s": round(px / seconds / 1e6, 3),
                    "agreement_with_torch_fp32": round(float((cls == ref).mean()), 6),
                    "bf16_emulated": emulated if name == "torch bf16" else None,
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        base = next(r for r in rows if r["preset"] == preset and r["runtime"] == "torch fp32")
        for r in rows:
            if r["preset"] == preset:
                r["speedup_vs_torch_fp32"] = round(r["mpx_per_s"] / base["mpx_per_s"], 3)
    return rows


def _run_cli(args: list[str], *, block_torch: bool = False) -> dict[str, Any]:
    """Run ``geopsp`` in a fresh process; its wall time and peak RSS (of that child alone)."""
    hwm = Path(tempfile.mkstemp(prefix="geopsp-hwm-")[1])
    code = (BLOCK_TORCH if block_torch else "") + (
        "import atexit, os\n"
        "def _hwm():\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('VmHWM:'):\n"
        "            open(os.environ['GEOPSP_HWM_FILE'], 'w').write(line.split()[1])\n"
        "atexit.register(_hwm)\n"
        "from geopsp.cli.main import main\nimport sys\nsys.argv = ['geopsp'] + sys.argv[1:]\nmain()\n"
    )
    # ru_maxrss of a child counts the parent's memory at fork; VmHWM after exec is the child's own
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "GEOPSP_HWM_FILE": str(hwm)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode()  # type: ignore[union-attr]
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"geopsp {' '.join(args)} failed ({proc.returncode}): {err.strip()[-800:]}")
    del usage
    peak_kb = int(hwm.read_text() or 0)
    hwm.unlink()
    return {"wall_s": round(wall, 3), "peak_rss_mb": round(peak_kb / 1024, 1), "stdout": out}


def _predict(scene: Path, model: Path, out: Path, *extra: str, block_torch: bool = False) -> dict[str, Any]:
    args = [
        "predict",
        str(scene),
        "--model",
        str(model),
        "--out",
        str(out),
        "--overwrite",
        "--no-progress",
        "--batch-size",
        str(BATCH),
        *extra,
    ]
    run = _run_cli(args, block_torch=block_torch)
    summary = json.loads(next(out.glob("*_summary.json")).read_text())
    run["summary"] = summary
    run["classes"] = next(p for p in out.glob("*_classes.tif"))
    return run


def _read(path: Path) -> Any:
    import rasterio

    with rasterio.open(path) as src:
        return src.read(1)


def section_e2e(work: Path) -> list[dict[str, Any]]:
    rows = []
    for preset, size in (("fast", 4096), ("paper", 1024)):
        scene = synthetic_scene(work / f"scene_{size}.tif", size)
        paths = _models(preset, work, scene)
        from geopsp.device import cpu_has_native_bf16

        variants = [
            ("torch fp32", paths["bundle"], ["--runtime", "torch", "--no-amp"]),
            ("onnxruntime fp32", paths["fp32"], []),
            ("onnxruntime int8", paths["int8"], []),
            ("onnxruntime int8 (all nodes)", paths["int8_all"], []),
        ]
        if cpu_has_native_bf16():
            variants.insert(1, ("torch bf16", paths["bundle"], ["--runtime", "torch", "--amp"]))
        ref = None
        for name, model, extra in variants:
            run = _predict(scene, model, work / f"out_{preset}_{name.replace(' ', '_')}", *extra)
            s = run["summary"]
            cls = _read(run["classes"])
            ref = cls if ref is None else ref
            px = size * size
            rows.append(
                {
                    "preset": preset,
                    "runtime": name,
                    "scene": f"{size}x{size}",
                    "wall_s": run["wall_s"],
                    "mpx_per_s_process": round(px / run["wall_s"] / 1e6, 3),
                    "mpx_per_s_tiles_loop": s["megapixels_per_second_tiles_loop"],
                    "model_s": s["seconds"]["model"],
                    "tiles_loop_s": s["seconds"]["tiles_loop"],
                    "model_share_of_loop": round(s["seconds"]["model"] / s["seconds"]["tiles_loop"], 3),
                    "peak_rss_mb": run["peak_rss_mb"],
                    "agreement_with_torch_fp32": round(float((cls == ref).mean()), 6),
                    "device": {k: s["device"].get(k) for k in ("runtime", "precision", "amp", "threads")},
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        base = next(r for r in rows if r["preset"] == preset and r["runtime"] == "torch fp32")
        for r in rows:
            if r["preset"] == preset:
                r["speedup_vs_torch_fp32"] = round(base["wall_s"] / r["wall_s"], 3)
    return rows


def section_small(work: Path) -> list[dict[str, Any]]:
    scene = cheap_scene(work / "small_400.tif", 400)
    paths = _models("fast", work, synthetic_scene(work / "scene_2048.tif", 2048))
    rows = []
    for name, model, extra, block in (
        ("torch fp32 (bundle)", paths["bundle"], ["--runtime", "torch", "--no-amp"], False),
        ("onnxruntime fp32 (.onnx, torch unimportable)", paths["fp32"], [], True),
        ("onnxruntime int8 (.onnx, torch unimportable)", paths["int8"], [], True),
    ):
        best = None
        for _ in range(3):  # the best of three: the first may pay for a cold page cache
            run = _predict(scene, model, work / "out_small", *extra, block_torch=block)
            best = run if best is None or run["wall_s"] < best["wall_s"] else best
        assert best is not None
        rows.append({"runtime": name, "wall_s": best["wall_s"], "peak_rss_mb": best["peak_rss_mb"]})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def section_large(work: Path) -> dict[str, Any]:
    size = 20000
    t0 = time.perf_counter()
    scene = cheap_scene(work / f"large_{size}.tif", size)
    made = time.perf_counter() - t0
    paths = _models("fast", work, synthetic_scene(work / "scene_2048.tif", 2048))
    run = _predict(scene, paths["int8_all"], work / "out_large", block_torch=True)
    s = run["summary"]
    row = {
        "scene": f"{size}x{size}",
        "runtime": "onnxruntime int8, all nodes (torch unimportable)",
        "wall_s": run["wall_s"],
        "peak_rss_mb": run["peak_rss_mb"],
        "mpx_per_s_process": round(size * size / run["wall_s"] / 1e6, 3),
        "model_share_of_loop": round(s["seconds"]["model"] / s["seconds"]["tiles_loop"], 3),
        "scene_written_s": round(made, 1),
    }
    run["classes"].unlink()
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="model,e2e,small,large")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/geopsp-bench-runtime"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    INT8.update(_int8_candidates())
    os.environ.setdefault("GEOPSP_CACHE_DIR", str(args.workdir / "cache"))
    result: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    result["machine"] = {**_cpu(), "threads": THREADS}
    parts = args.only.split(",")
    if "model" in parts:
        result["model"] = section_model(args.workdir, synthetic_scene(args.workdir / "scene_2048.tif", 2048))
    if "e2e" in parts:
        result["e2e"] = section_e2e(args.workdir)
    if "small" in parts:
        result["small"] = section_small(args.workdir)
    if "large" in parts:
        result["large"] = section_large(args.workdir)
    result["created"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(RESULTS)


if __name__ == "__main__":
    main()
