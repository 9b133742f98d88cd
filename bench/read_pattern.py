"""How fast can a scene be read for tiled prediction? Block-row strips vs overlapping tile windows.

Writes a synthetic DEFLATE-compressed, 512-px tiled GeoTIFF, then reads all of it

* ``block_rows``: with :func:`geopsp.io.scene.read_rows`, one full-width strip per row of
  blocks (what geopsp's tiler does): every block is decoded once;
* ``windows``: one ``src.read(window=...)`` per overlapping tile (tile 512, overlap 64 on each
  side, so a 384 px stride): a window straddles up to 4 blocks, and a block is decoded again
  whenever it has left GDAL's block cache,

under several GDAL block cache sizes and decoding thread counts, and stores the timings in
``bench/results/read_pattern.json``.

Usage::

    python bench/read_pattern.py [--size 8192] [--bands 3] [--repeat 3] [--out bench/results/read_pattern.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

from geopsp.io.scene import open_scene, read_rows

MiB = 1 << 20


def make_scene(path: Path, size: int, bands: int, block: int) -> None:
    """Write a scene that compresses like imagery (smooth fields + texture), strip by strip."""
    rng = np.random.default_rng(0)
    coarse = rng.normal(size=(bands, size // 64 + 2, size // 64 + 2)).astype(np.float32)
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": bands,
        "dtype": "uint8",
        "crs": "EPSG:32633",
        "transform": Affine(1.0, 0.0, 500_000.0, 0.0, -1.0, 5_700_000.0),
        "tiled": True,
        "blockxsize": block,
        "blockysize": block,
        "compress": "deflate",
        "interleave": "pixel",
    }
    with rasterio.open(path, "w", **profile) as dst:
        for r0 in range(0, size, block):
            h = min(block, size - r0)
            rows = (np.arange(r0, r0 + h) // 64)[:, None]
            cols = (np.arange(size) // 64)[None, :]
            field = coarse[:, rows, cols] * 35 + 120
            texture = rng.normal(scale=6, size=(bands, h, size)).astype(np.float32)
            dst.write(np.clip(field + texture, 0, 255).astype(np.uint8), window=Window(0, r0, size, h))


def read_block_rows(path: Path, bands: list[int], cache: int, threads: str) -> int:
    n = 0
    with open_scene(path, cache_bytes=cache, threads=threads) as (src, info):
        step = info.block_shape[0]
        for r0 in range(0, info.height, step):
            data, _ = read_rows(src, info, r0, min(step, info.height - r0), bands)
            n += data.size
    return n


def tile_windows(size: int, tile: int, overlap: int) -> list[Window]:
    stride = tile - 2 * overlap
    starts = list(range(-overlap, size - overlap, stride))
    out = []
    for r in starts:
        for c in starts:
            r0, c0 = max(r, 0), max(c, 0)
            out.append(Window(c0, r0, min(c + tile, size) - c0, min(r + tile, size) - r0))
    return out


def read_windows(path: Path, bands: list[int], cache: int, threads: str, windows: list[Window]) -> int:
    n = 0
    with (
        rasterio.Env(GDAL_CACHEMAX=cache, GDAL_NUM_THREADS=threads),
        rasterio.open(path) as src,
    ):
        for w in windows:
            n += src.read(bands, window=w).size
    return n


def blocks_touched(windows: list[Window], block: int) -> int:
    total = 0
    for w in windows:
        rows = (int(w.row_off + w.height) - 1) // block - int(w.row_off) // block + 1
        cols = (int(w.col_off + w.width) - 1) // block - int(w.col_off) // block + 1
        total += rows * cols
    return total


def timed(fn, repeat: int) -> dict[str, float]:
    """Wall time and process CPU time (all GDAL threads); CPU time is robust to a busy machine."""
    wall, cpu = [], []
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return {
        "median_s": round(statistics.median(wall), 3),
        "min_s": round(min(wall), 3),
        "cpu_median_s": round(statistics.median(cpu), 3),
        "runs": repeat,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--bands", type=int, default=3)
    ap.add_argument("--block", type=int, default=512)
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--overlap", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "read_pattern.json")
    args = ap.parse_args()

    block_row_bytes = args.size * args.block * args.bands
    caches = {
        "tiny (1 MiB)": 1 * MiB,
        "one block-row": block_row_bytes,
        "geopsp default (2 block-rows + 16 MiB)": 2 * block_row_bytes + 16 * MiB,
        "whole scene": args.size * args.size * args.bands + 64 * MiB,
    }
    bands = list(range(1, args.bands + 1))
    windows = tile_windows(args.size, args.tile, args.overlap)
    nblocks = (-(-args.size // args.block)) ** 2
    results: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        scene = Path(tmp) / "scene.tif"
        t = time.perf_counter()
        make_scene(scene, args.size, args.bands, args.block)
        print(f"wrote {scene.stat().st_size / MiB:.0f} MiB scene in {time.perf_counter() - t:.1f} s")
        scene.read_bytes()  # warm the OS page cache so both patterns measure decoding, not the disk
        for threads in ("1", "ALL_CPUS"):
            for label, cache in caches.items():
                for pattern in ("block_rows", "windows"):
                    if pattern == "block_rows":
                        stats = timed(lambda c=cache, th=threads: read_block_rows(scene, bands, c, th), args.repeat)
                    else:
                        stats = timed(
                            lambda c=cache, th=threads: read_windows(scene, bands, c, th, windows), args.repeat
                        )
                    mpix = args.size * args.size / 1e6
                    row = {
                        "pattern": pattern,
                        "threads": threads,
                        "cache": label,
                        "cache_bytes": cache,
                        **stats,
                        "mpix_per_s": round(mpix / stats["median_s"], 1),
                    }
                    results.append(row)
                    print(
                        f"{pattern:10s} threads={threads:8s} cache={label:40s} "
                        f"wall {stats['median_s']:.2f} s  cpu {stats['cpu_median_s']:.2f} s"
                    )
        size_mib = scene.stat().st_size / MiB

    def median(pattern: str, threads: str, cache: str, key: str) -> float:
        return next(
            float(r[key])  # type: ignore[arg-type]
            for r in results
            if r["pattern"] == pattern and r["threads"] == threads and r["cache"] == cache
        )

    speedups = {
        f"threads={th}, cache={label}": {
            key: round(median("windows", th, label, key) / median("block_rows", th, label, key), 2)
            for key in ("median_s", "cpu_median_s")
        }
        for th in ("1", "ALL_CPUS")
        for label in caches
    }
    report = {
        "what": "read a whole scene: full-width block-row strips (geopsp read_rows) vs overlapping tile windows",
        "scene": {
            "size_px": [args.size, args.size],
            "bands": args.bands,
            "dtype": "uint8",
            "compress": "DEFLATE",
            "block_px": args.block,
            "interleave": "pixel",
            "file_mib": round(size_mib, 1),
        },
        "tiles": {
            "tile_px": args.tile,
            "overlap_px": args.overlap,
            "stride_px": args.tile - 2 * args.overlap,
            "count": len(windows),
        },
        "block_decodes_without_cache": {
            "block_rows": nblocks,
            "windows": blocks_touched(windows, args.block),
            "blocks": nblocks,
        },
        "speedup_block_rows_over_windows": speedups,
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "results": results,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "rasterio": rasterio.__version__,
            "gdal": rasterio.__gdal_version__,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(speedups, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
