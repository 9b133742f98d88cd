"""Peak memory and speed of ``geopsp sample-scene`` for growing scene sizes.

Each size runs the real command in a fresh process (3 bands, uint8, seed 0, 512 px windows)
and reads that process's peak resident set size from the kernel (``wait4`` rusage), so
nothing of an earlier run is counted. A ``--size 1`` run gives the baseline of the
interpreter with numpy, rasterio and GDAL loaded; the difference is what the scene costs.
The claim being checked: memory stays flat (a few windows) however large the scene.

Usage::

    python bench/synthetic_memory.py [--sizes 2000 20000] [--out bench/results/synthetic_memory.json]

The 20000 x 20000 run writes about a gigabyte into a temporary folder and takes minutes on a
2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

MiB = 1 << 20
GEOPSP = Path(sys.executable).with_name("geopsp")


def run(size: int, folder: Path, *, bands: int, dtype: str) -> dict[str, float | int | str]:
    out = folder / f"scene_{size}.tif"
    cmd = [str(GEOPSP), "sample-scene", str(out), "--size", str(size), "--bands", str(bands), "--dtype", dtype]
    cmd += ["--seed", "0", "--no-progress", "--overwrite"]
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    stdout = proc.stdout.read().decode() if proc.stdout else ""
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"sample-scene --size {size} failed ({proc.returncode}): {stderr.strip()}")
    paths = [Path(p) for p in stdout.split()]
    result: dict[str, float | int | str] = {
        "size": f"{size}x{size}",
        "megapixels": size * size / 1e6,
        "bands": bands,
        "dtype": dtype,
        "wall_s": round(wall, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_mib": round(usage.ru_maxrss * 1024 / MiB, 1),  # ru_maxrss is in KiB on Linux
        "megapixels_per_s": round(size * size / 1e6 / wall, 2),
        # Less sensitive to other load on the machine than the wall-clock rate.
        "megapixels_per_cpu_s": round(size * size / 1e6 / max(usage.ru_utime + usage.ru_stime, 1e-9), 2),
        "scene_mib": round(paths[0].stat().st_size / MiB, 1),
        "labels_mib": round(paths[1].stat().st_size / MiB, 1),
        "load_avg_1min_before": round(load_before, 2),
        "load_avg_1min_after": round(os.getloadavg()[0], 2),
    }
    for p in paths:
        p.unlink()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--bands", type=int, default=3)
    parser.add_argument("--dtype", default="uint8")
    parser.add_argument("--tmp", type=Path, default=None, help="Folder for the scenes [default: a temporary one].")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "synthetic_memory.json")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="geopsp-bench-", dir=args.tmp))
    try:
        baseline = run(1, folder, bands=args.bands, dtype=args.dtype)
        runs = []
        for size in args.sizes:
            r = run(size, folder, bands=args.bands, dtype=args.dtype)
            r["above_baseline_mib"] = round(float(r["peak_rss_mib"]) - float(baseline["peak_rss_mib"]), 1)
            runs.append(r)
            print(json.dumps(r), flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    report = {
        "what": "peak RSS and time of `geopsp sample-scene` (fresh process per size, 512 px windows)",
        "baseline_peak_rss_mib": baseline["peak_rss_mib"],
        "baseline_note": "`--size 1`: interpreter + numpy + rasterio/GDAL + click, no scene to speak of",
        "runs": runs,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / (1 << 30), 1),
        },
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
