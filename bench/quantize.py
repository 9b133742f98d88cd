"""int8 vs fp32 on trained bundles: the 99 % agreement gate, the F1 gate, and the speed.

For each trained bundle found:

sentinel2
    ``runs/lodo/fold_20230530/train/model.safetensors`` (trained on the six Strzegom dates other
    than 2023-05-30). Exported to fp32 ONNX, then ``quantize_onnx`` calibrates on two of its
    training dates (``--calibrate-dates``, default 20220619 and 20230301) and picks a candidate
    on their other tiles. Then, on the held-out 2023-05-30 scene (never seen by training or by
    the quantization): the agreement of int8 with fp32 on every valid scene pixel, and the
    per-class F1 of fp32 and int8 against that date's reference labels and their largest
    difference.
demo
    The quick-start demo bundle, if one exists (``--demo``, else the newest
    ``/tmp/**/demo/model/model.safetensors``): calibrated on its training scene, checked on its
    prediction scene (``data/predict/scene.tif``, another synthetic scene, with a nodata collar).
    The training scene can be a single tile, so ``demo_train_val`` calibrates on it and the
    validation scene too.

Scene maps: every tile of the scene's prediction grid (the bundle's tile and overlap), read and
normalized as prediction does (``geopsp.model.quantize.sample_tiles``), probabilities averaged
over the tiles covering a pixel (uniform weights: the pipeline blends with a cosine window, the
same for both precisions), argmax. Agreement counts each valid scene pixel once.

Speed: model-only Mpx/s of one batch of 4 tiles, 2 threads, fp32 and int8 alternating in one
process (best of ``--repeats``), and their ratio.

Gates: agreement >= 0.99 (``AGREEMENT_GATE``) and max |F1(int8) - F1(fp32)| < 0.01 over the
classes present in the reference. A bundle or data set that is absent is skipped with a message
(exit 0). Writes ``bench/results/quantize.json``.

Usage::

    python bench/quantize.py [--threads 2] [--max-tiles 32] [--demo PATH] [--out bench/results/quantize.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from geopsp.testing import sample_data_dir  # noqa: E402


def _first(*paths: Path) -> Path:
    return next((p for p in paths if p.exists()), paths[0])


DATA = sample_data_dir() / "sentinel2_strzegom"  # $GEOPSP_DATA, else ../shared/data
FOLD = Path("runs") / "lodo" / "fold_20230530" / "train" / "model.safetensors"
S2_BUNDLE = _first(ROOT / FOLD, ROOT.parent / "main" / FOLD, ROOT.parent.parent / "main" / FOLD)
HELD_OUT = "20230530"
F1_GATE = 0.01


def machine() -> dict[str, Any]:
    import onnxruntime

    from geopsp.device import cpu_name
    from geopsp.model.quantize import u8s8_may_saturate_here

    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "u8s8_may_saturate": u8s8_may_saturate_here(),
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def scene_classes(model: Any, scene: Path, meta: Any) -> tuple[np.ndarray, np.ndarray]:
    """Channel index of every pixel (uniform-average mosaic of the prediction grid) and the valid mask."""
    from geopsp.io.scene import inspect_scene
    from geopsp.model.quantize import sample_tiles
    from geopsp.tiling.windows import TileGrid

    info = inspect_scene(scene)
    tile = model.info.tile_size
    overlap = meta.overlap if 2 * meta.overlap < tile else tile // 8
    grid = TileGrid(info.height, info.width, tile, overlap)
    tiles = sample_tiles([scene], meta, tile, max_tiles=len(grid))
    k = len(meta.classes)
    acc = np.zeros((k, info.height, info.width), dtype=np.float64)
    count = np.zeros((info.height, info.width), dtype=np.float64)
    valid = np.zeros((info.height, info.width), dtype=bool)
    for i in range(0, len(tiles), 4):
        p = model.run(tiles.x[i : i + 4])
        for j, (r, c, h, w) in enumerate(tiles.windows[i : i + 4]):
            acc[:, r : r + h, c : c + w] += p[j, :, :h, :w]
            count[r : r + h, c : c + w] += 1
            valid[r : r + h, c : c + w] |= tiles.valid[i + j, :h, :w]
    return acc.argmax(0), valid & (count > 0)


def f1_scores(pred: np.ndarray, valid: np.ndarray, labels: Path, meta: Any) -> dict[str, float]:
    """Per-class F1 against a label raster of class ids (ids not in the class table, like 0 and 255, ignored)."""
    import math

    import rasterio

    from geopsp.eval.metrics import ConfusionMatrix, scores_from_confusion

    with rasterio.open(labels) as src:
        ref_ids = src.read(1)
    lut = {cid: i for i, cid in enumerate(meta.classes.ids)}
    ref = np.full(ref_ids.shape, 255, dtype=np.int64)
    for cid, i in lut.items():
        ref[np.isclose(ref_ids, cid)] = i
    ref[~valid] = 255
    cm = ConfusionMatrix(len(meta.classes))
    cm.update(ref, pred.astype(np.int64), ignore=255)
    scores = scores_from_confusion(cm.counts, meta.classes)
    return {
        c.name: c.f1 for c in scores.classes if c.status != "absent" and c.reference_pixels > 0 and not math.isnan(c.f1)
    }


def speed(fp32: Any, int8: Any, x: np.ndarray, repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` model-only Mpx/s of one batch, fp32 and int8 alternating."""
    best = {"fp32": float("inf"), "int8": float("inf")}
    for m in (fp32, int8):
        m.run(x)  # warm up
    for _ in range(repeats):
        for name, m in (("fp32", fp32), ("int8", int8)):
            t0 = time.perf_counter()
            m.run(x)
            best[name] = min(best[name], time.perf_counter() - t0)
    mpx = x.shape[0] * x.shape[2] * x.shape[3] / 1e6
    return {
        "batch": int(x.shape[0]),
        "tile": int(x.shape[2]),
        "fp32_mpx_s": round(mpx / best["fp32"], 3),
        "int8_mpx_s": round(mpx / best["int8"], 3),
        "int8_speedup": round(best["fp32"] / best["int8"], 3),
    }


def evaluate(
    name: str,
    bundle: Path,
    calibrate: list[Path],
    check_scene: Path,
    labels: Path | None,
    work: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    from geopsp.inference.ort import OnnxModel
    from geopsp.model.onnx_export import export_onnx
    from geopsp.model.onnx_meta import AGREEMENT_GATE
    from geopsp.model.quantize import quantize_onnx, sample_tiles

    t0 = time.perf_counter()
    fp32_path = export_onnx(bundle, work / f"{name}.onnx").path
    t_export = time.perf_counter() - t0
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = quantize_onnx(
            fp32_path, calibrate, work / f"{name}.int8.onnx", max_tiles=args.max_tiles, threads=args.threads
        )
    t_quant = time.perf_counter() - t0
    fp32 = OnnxModel.load(fp32_path, threads=args.threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        int8 = OnnxModel.load(result.path, threads=args.threads)
    meta = fp32.meta
    c32, valid = scene_classes(fp32, check_scene, meta)
    c8, _ = scene_classes(int8, check_scene, meta)
    n = int(valid.sum())
    agreement = float(((c32 == c8) & valid).sum() / n)
    out: dict[str, Any] = {
        "bundle": str(bundle),
        "calibration_scenes": [p.name for p in calibrate],
        "check_scene": check_scene.name,
        "tile_size": int(fp32.info.tile_size),
        "export_seconds": round(t_export, 1),
        "quantize_seconds": round(t_quant, 1),
        "quantize_warnings": [str(w.message) for w in caught],
        "chosen": {k: v for k, v in result.info.quantization.items() if k != "trials"},
        "trials": result.info.quantization["trials"],
        "sizes_mb": {
            "fp32": round(fp32_path.stat().st_size / 1e6, 2),
            "int8": round(result.path.stat().st_size / 1e6, 2),
        },
        "check_scene_agreement": agreement,
        "check_scene_pixels": n,
        "agreement_gate": AGREEMENT_GATE,
        "agreement_passes": agreement >= AGREEMENT_GATE,
    }
    if labels is not None and labels.is_file():
        f32 = f1_scores(c32, valid, labels, meta)
        f8 = f1_scores(c8, valid, labels, meta)
        delta = {k: f8[k] - f32[k] for k in f32 if k in f8}
        worst = max(delta, key=lambda k: abs(delta[k]))
        out.update(
            {
                "f1_fp32": f32,
                "f1_int8": f8,
                "f1_delta": delta,
                "max_abs_f1_delta": abs(delta[worst]),
                "max_abs_f1_delta_class": worst,
                "mean_f1_fp32": float(np.mean(list(f32.values()))),
                "mean_f1_int8": float(np.mean(list(f8.values()))),
                "f1_gate": F1_GATE,
                "f1_passes": abs(delta[worst]) < F1_GATE,
            }
        )
    tiles = sample_tiles([check_scene], meta, fp32.info.tile_size, max_tiles=4)
    fp32_2 = OnnxModel.load(fp32_path, threads=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        int8_2 = OnnxModel.load(result.path, threads=2)
    out["speed_2_threads"] = speed(fp32_2, int8_2, tiles.x[:4], args.repeats)
    return out


def find_demo(explicit: str | None) -> Path | None:
    if explicit:
        p = Path(explicit)
        return p if p.is_file() else None
    found = sorted(Path("/tmp").glob("**/demo/model/model.safetensors"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tiles", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--calibrate-dates", nargs="+", default=["20220619", "20230301"])
    ap.add_argument("--s2-bundle", default=str(S2_BUNDLE), help="the bundle trained without 2023-05-30")
    ap.add_argument(
        "--demo", default=None, help="demo bundle (default: the newest /tmp/**/demo/model/model.safetensors)"
    )
    ap.add_argument("--out", default=str(HERE / "results" / "quantize.json"))
    args = ap.parse_args()
    results: dict[str, Any] = {"machine": machine(), "skipped": {}}
    with tempfile.TemporaryDirectory(prefix="bench-quantize-") as tmp:
        work = Path(tmp)
        images = DATA / "images"
        held = next(iter(sorted(images.glob(f"*{HELD_OUT}*.tif"))), None) if images.is_dir() else None
        calib = [next(iter(sorted(images.glob(f"*{d}*.tif"))), None) for d in args.calibrate_dates] if held else []
        s2_bundle = Path(args.s2_bundle)
        if not s2_bundle.is_file() or held is None or not calib or None in calib:
            results["skipped"]["sentinel2"] = f"no bundle at {s2_bundle} or no Strzegom scenes under {images}"
            print(f"sentinel2: skipped ({results['skipped']['sentinel2']})", file=sys.stderr)
        else:
            labels = DATA / "labels" / held.name
            results["sentinel2"] = evaluate(
                "sentinel2", s2_bundle, [p for p in calib if p is not None], held, labels, work, args
            )
        demo = find_demo(args.demo)
        root = demo.parent.parent if demo else None
        train = root / "data" / "images" / "scene_train.tif" if root else None
        check = root / "data" / "predict" / "scene.tif" if root else None
        if demo is None or train is None or check is None or not train.is_file() or not check.is_file():
            results["skipped"]["demo"] = "no quick-start demo bundle with its scenes (run geopsp demo, or pass --demo)"
            print(f"demo: skipped ({results['skipped']['demo']})", file=sys.stderr)
        else:
            labels = root / "data" / "predict" / "scene_labels.tif" if root else None
            results["demo"] = evaluate("demo", demo, [train], check, labels, work, args)
            val = train.with_name("scene_val.tif")
            if val.is_file():  # the training scene alone may be one tile: calibrate on both training scenes too
                results["demo_train_val"] = evaluate("demo_tv", demo, [train, val], check, labels, work, args)
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
    for name in ("sentinel2", "demo", "demo_train_val"):
        r = results.get(name)
        if r:
            f1 = f", max |dF1| {r['max_abs_f1_delta']:.4f} ({r['max_abs_f1_delta_class']})" if "f1_delta" in r else ""
            s = r["speed_2_threads"]
            print(
                f"{name}: int8 vs fp32 agree on {r['check_scene_agreement']:.4%} of {r['check_scene_pixels']} valid "
                f"pixels of {r['check_scene']}{f1}; int8 {s['int8_mpx_s']} vs fp32 {s['fp32_mpx_s']} Mpx/s "
                f"(x{s['int8_speedup']}); chosen {r['chosen']['method']}, kept {r['chosen']['keep_fp32']}, "
                f"reduce_range {r['chosen']['reduce_range']}",
                file=sys.stderr,
            )
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
