"""Benchmark ``geopsp.vectorize`` end to end (class raster -> written GeoPackage).

Writes ``bench/results/vectorize.json``. The input is a synthetic 10000 x 10000 land-cover
map (organic field/forest/water-like regions, about 60 000 polygons), generated once into a
work directory. Every variant runs in a fresh subprocess so its peak memory is its own.

    .venv/bin/python bench/vectorize.py                 # full benchmark
    .venv/bin/python bench/vectorize.py --size 4000     # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


# --- synthetic land cover --------------------------------------------------------------------


def _noise(seed: int, k: int, height: int, width: int, r0: int, r1: int, scale: int) -> np.ndarray:
    """Smooth value noise (k fields) for rows r0:r1; every strip of one map uses the same grid."""
    rng = np.random.default_rng(seed)
    grid = rng.random((k, height // scale + 3, width // scale + 3), dtype=np.float32)
    ys = (np.arange(r0, r1) + 0.5) / scale
    xs = (np.arange(width) + 0.5) / scale
    y0 = ys.astype(np.intp)
    x0 = xs.astype(np.intp)
    fy = (ys - y0).astype(np.float32)
    fx = (xs - x0).astype(np.float32)
    fy = fy * fy * (3 - 2 * fy)
    fx = fx * fx * (3 - 2 * fx)
    lo, hi = y0.min(), y0.max() + 2
    g = grid[:, lo:hi]
    rows = g[:, :, x0] * (1 - fx) + g[:, :, x0 + 1] * fx
    i = y0 - lo
    return rows[:, i] * (1 - fy)[None, :, None] + rows[:, i + 1] * fy[None, :, None]


def landcover(path: Path, size: int, *, classes: int = 8, scale: int = 90, seed: int = 0) -> Path:
    """Write a size x size uint8 class raster (tiled, deflate, EPSG:32633, 10 m pixels)."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.tif")
    profile = {
        "driver": "GTiff", "width": size, "height": size, "count": 1, "dtype": "uint8",
        "crs": "EPSG:32633", "transform": from_origin(500000, 5600000, 10, 10), "nodata": 255,
        "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate",
    }  # fmt: skip
    with rasterio.open(tmp, "w", **profile) as dst:
        for r0 in range(0, size, 512):
            r1 = min(size, r0 + 512)
            f = _noise(seed, classes, size, size, r0, r1, scale)
            f += 0.3 * _noise(seed + 1, classes, size, size, r0, r1, max(scale // 5, 2))
            dst.write(np.argmax(f, axis=0).astype(np.uint8), 1, window=Window(0, r0, size, r1 - r0))
    tmp.rename(path)
    return path


# --- one measured run (in a subprocess) --------------------------------------------------------


def run_one(spec: dict) -> dict:
    import pyogrio

    from geopsp.config.schema import VectorizeConfig
    from geopsp.vectorize import vectorize

    if spec["kind"] == "naive":
        import geopandas  # noqa: F401  (imports are not part of the timed work)
    me = resource.getrusage(resource.RUSAGE_SELF)
    spec = {**spec, "cpu_baseline": me.ru_utime + me.ru_stime}

    out = Path(spec["out"])
    load_before = os.getloadavg()[0]
    if spec["kind"] == "geopsp":
        cfg = VectorizeConfig(**spec["config"])
        t0 = time.perf_counter()
        vectorize(spec["raster"], out, config=cfg, overwrite=True)
        seconds = time.perf_counter() - t0
    else:  # naive baseline: whole band in memory, features.shapes, GeoDataFrame, one write
        import geopandas as gpd
        import rasterio
        import shapely
        from rasterio.features import shapes

        t0 = time.perf_counter()
        with rasterio.open(spec["raster"]) as src:
            band = src.read(1)
            transform, crs = src.transform, src.crs
        geoms, values = [], []
        for g, v in shapes(band, mask=band != 255, transform=transform):
            geoms.append(shapely.geometry.shape(g))
            values.append(int(v))
        gdf = gpd.GeoDataFrame({"class_id": values}, geometry=geoms, crs=crs)
        gdf["area_m2"] = gdf.area
        gdf["perimeter_m"] = gdf.length
        pyogrio.write_dataframe(gdf, out, layer=out.stem)
        seconds = time.perf_counter() - t0
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # worker processes, once joined
    cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime - spec.get("cpu_baseline", 0.0)
    info = pyogrio.read_info(out, layer=out.stem)
    return {
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu, 3),
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "polygons": int(info["features"]),
        "peak_rss_mib": round(me.ru_maxrss / 1024, 1),
        "peak_worker_rss_mib": round(kids.ru_maxrss / 1024, 1),
        "output_mib": round(out.stat().st_size / 2**20, 1),
    }


def measure(spec: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--run-one", json.dumps(spec)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=10_000, help="raster edge in pixels (default 10000)")
    ap.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "geopsp-bench-vectorize")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "vectorize.json")
    ap.add_argument("--quick", action="store_true", help="only the default configuration")
    ap.add_argument("--run-one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run_one:
        print(json.dumps(run_one(json.loads(args.run_one))))
        return

    size = args.size
    raster = landcover(args.workdir / f"landcover_{size}.tif", size)
    mp = size * size / 1e6
    pixel = 10.0
    variants: list[tuple[str, dict]] = [
        ("default (blocks of 1024 rows, workers auto)", {"kind": "geopsp", "config": {}}),
        ("blocks of 1024 rows, 1 process", {"kind": "geopsp", "config": {"workers": 1}}),
    ]
    if not args.quick:
        variants += [
            ("blocks of 256 rows, 1 process", {"kind": "geopsp", "config": {"workers": 1, "block_rows": 256}}),
            ("blocks of 4096 rows, 1 process", {"kind": "geopsp", "config": {"workers": 1, "block_rows": 4096}}),
            ("whole raster as one block, 1 process", {"kind": "geopsp", "config": {"workers": 1, "block_rows": size}}),
            (
                f"coverage simplify {1.5 * pixel:g} m (blocks, workers auto)",
                {"kind": "geopsp", "config": {"simplify": 1.5 * pixel}},
            ),
            (
                f"sieve 16 px + coverage simplify {1.5 * pixel:g} m (in-memory regions)",
                {"kind": "geopsp", "config": {"sieve_px": 16, "simplify": 1.5 * pixel}},
            ),
            ("naive baseline: whole band, features.shapes, one write", {"kind": "naive"}),
        ]
    results = []
    for name, spec in variants:
        spec = {**spec, "raster": str(raster), "out": str(args.workdir / "out.gpkg")}
        res = measure(spec)
        if "seconds" in res:
            res["megapixels_per_s"] = round(mp / res["seconds"], 2)
            res["megapixels_per_cpu_s"] = round(mp / res["cpu_seconds"], 2)
        print(f"{name:70s} {res}", flush=True)
        results.append({"name": name, **{k: v for k, v in spec.items() if k in ("kind", "config")}, **res})
    # Peak memory against scene height (width fixed): streaming keeps it flat.
    scaling = []
    if not args.quick:
        for h in (size // 4, size // 2, size):
            sub = _crop(raster, args.workdir / f"landcover_{size}_h{h}.tif", h)
            res = measure(
                {"kind": "geopsp", "config": {"workers": 1}, "raster": str(sub), "out": str(args.workdir / "h.gpkg")}
            )
            print(f"height {h:6d}: {res}", flush=True)
            scaling.append({"height": h, "width": size, **res})
    doc = {
        "benchmark": "geopsp.vectorize end to end: class raster -> GeoPackage with attributes and QGIS style",
        "raster": {"width": size, "height": size, "megapixels": mp, "dtype": "uint8", "classes": 8},
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "load_average_at_end": os.getloadavg(),
        },
        "target_megapixels_per_s": 15,
        "notes": (
            "seconds: wall time, which the machine's other jobs inflate (see load_average_1min per run, "
            "before/after); cpu_seconds: CPU time of the run's process and its worker processes, imports "
            "excluded, a load-independent measure of the work; megapixels_per_cpu_s = megapixels / cpu_seconds "
            "is the wall-clock rate one otherwise idle core would reach."
        ),
        "results": results,
        "memory_vs_height": scaling,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")


def _crop(raster: Path, out: Path, height: int) -> Path:
    import rasterio
    from rasterio.windows import Window

    if out.exists():
        return out
    with rasterio.open(raster) as src:
        profile = src.profile | {"height": height}
        tmp = out.with_suffix(".tmp.tif")
        with rasterio.open(tmp, "w", **profile) as dst:
            for r0 in range(0, height, 512):
                win = Window(0, r0, src.width, min(512, height - r0))
                dst.write(src.read(1, window=win), 1, window=win)
    tmp.rename(out)
    return out


if __name__ == "__main__":
    main()
