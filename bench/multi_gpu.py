"""Several GPUs on one big scene, estimated on paper from exact tile counts and measured host costs.

Without a multi-GPU machine the speed-up of ``geopsp batch --gpus 8`` on one scene can only be
estimated. The estimate takes:

* the exact tiles each strip computes (``plan_strips`` with and without ``workers``; a strip
  computes every tile that overlaps its rows, so each cut costs one or two extra tile rows);
* a GPU loop rate: ``bench/results/gpu_check.json``'s measured one when it was run on CUDA,
  else the issue's targets (fast 150, paper 100 Mpx/s), marked as assumed;
* the host costs measured here, on this CPU: the class raster's finish per MP (after the last
  row) and the stitch per MP (``ClassRasterWriter.write_strip``: strips' compressed tiles
  copied, overviews from their own levels), on an ``--size``² class map in 4 strips.

One GPU: ``loop(S) + finish(S)``. ``G`` GPUs: the busiest GPU's tiles, its strip's finish,
then the stitch (serial, on a CPU worker). Scheduling and model loading are left out (a warm
worker keeps its model).

    python bench/multi_gpu.py --out bench/results/multi_gpu.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

TARGETS = {"fast": 150.0, "paper": 100.0}


def measure_host(size: int, folder: Path) -> dict[str, float]:
    """Seconds per MP of the whole raster's finish and of stitching 4 strips (best of 2)."""
    import cog_finish as cf
    from affine import Affine

    scene = cf.Scene(size, size)
    rows = -(-size // 4 // cf.BLOCK) * cf.BLOCK
    bounds = [*range(0, size, rows), size]
    parts = []
    for r0, r1 in itertools.pairwise(bounds):
        path = folder / f"strip{r0}.tif"
        w = cf.writer_for(path, r1 - r0, size, cf.TRANSFORM @ Affine.translation(0, r0))
        for r, block in scene.block_rows(r0, r1):
            w.write_rows(r - r0, block)
        w.close()
        parts.append((r0, path))
    mp = size * size / 1e6
    finish, stitch = [], []
    for k in range(2):
        w = cf.writer_for(folder / f"whole{k}.tif", size, size)
        for r, block in scene.block_rows():
            w.write_rows(r, block)
        t0 = time.perf_counter()
        w.close()
        finish.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        w = cf.writer_for(folder / f"stitched{k}.tif", size, size)
        for r0, path in parts:
            w.write_strip(r0, path)
        w.close()
        stitch.append(time.perf_counter() - t0)
    return {"finish_s_per_mp": min(finish) / mp, "stitch_s_per_mp": min(stitch) / mp, "measured_mp": mp}


def estimate(
    host: dict[str, float], rates: dict[str, float], *, side: int, gpus: int, strip_pixels: int
) -> dict[str, Any]:
    from geopsp.batch.strips import plan_strips
    from geopsp.tiling import TileGrid

    grid = TileGrid(side, side, 512, 64)
    total = len(grid)
    mp = side * side / 1e6

    def makespan(strips: list[tuple[int, int]]) -> int:
        counts = [grid.count(s) for s in strips]
        return max(sum(counts[i::gpus]) for i in range(gpus))

    new = plan_strips(side, side, 512, 64, strip_pixels, workers=gpus)
    old = plan_strips(side, side, 512, 64, strip_pixels)
    out: dict[str, Any] = {
        "tiles_whole": total,
        "plan": {"strips": len(new), "makespan_tiles": makespan(new), "tiles": [grid.count(s) for s in new]},
        "plan_without_workers": {"strips": len(old), "makespan_tiles": makespan(old)},
    }
    strip_mp = max(b - a for a, b in new) * side / 1e6
    share = makespan(new) / total
    fixed = host["finish_s_per_mp"] * strip_mp + host["stitch_s_per_mp"] * mp
    # slowest rate at which G GPUs still give 4x: (S/R + F*S) / (share*S/R + fixed) = 4
    denom = 4 * fixed - host["finish_s_per_mp"] * mp
    out["rate_for_4x_mpx_per_s"] = round(mp * (1 - 4 * share) / denom, 1) if denom > 0 and share < 0.25 else None
    for preset, rate in rates.items():
        loop = mp / rate
        one = loop + host["finish_s_per_mp"] * mp
        many = loop * makespan(new) / total + host["finish_s_per_mp"] * strip_mp + host["stitch_s_per_mp"] * mp
        out[preset] = {
            "rate_mpx_per_s": rate,
            "one_gpu_s": round(one, 3),
            "gpus_s": round(many, 3),
            "speedup": round(one / many, 2),
            "speedup_without_stitch": round(one / (many - host["stitch_s_per_mp"] * mp), 2),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", type=int, default=20000, help="the scene's edge (px)")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--strip-pixels", type=int, default=50_000_000)
    parser.add_argument("--size", type=int, default=8192, help="edge of the class map the host costs are measured on")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--host-from", type=Path, default=None, help="take the host costs from this script's JSON")
    args = parser.parse_args()
    from geopsp.device import cpu_count, cpu_name

    gc = ROOT / "results" / "gpu_check.json"
    rates, measured = dict(TARGETS), False
    if gc.exists():
        data = json.loads(gc.read_text())
        if str(data.get("device", "")).startswith("cuda") and data.get("speed"):
            rates = {p: float(data["speed"][p]["loop_mpx_per_s"]) for p in TARGETS if p in data["speed"]}
            measured = True
    if args.host_from is not None:
        host = json.loads(args.host_from.read_text())["host"]
    else:
        with tempfile.TemporaryDirectory(prefix="geopsp-multi-gpu-") as tmp:
            host = measure_host(args.size, Path(tmp))
    est = estimate(host, rates, side=args.side, gpus=args.gpus, strip_pixels=args.strip_pixels)
    result = {
        "machine": {"cpu": cpu_name(), "cores": cpu_count(), "loadavg": list(os.getloadavg())},
        "scene": {"height": args.side, "width": args.side, "tile": 512, "overlap": 64},
        "gpus": args.gpus,
        "strip_pixels": args.strip_pixels,
        "rates_measured": measured,
        "host": {k: round(v, 6) for k, v in host.items()},
        "estimate": est,
    }
    lines = [
        f"Strips: {est['plan']['strips']} in full rounds of {args.gpus} GPUs; the busiest computes "
        f"{est['plan']['makespan_tiles']} of the scene's {est['tiles_whole']} tiles "
        f"({est['tiles_whole'] / est['plan']['makespan_tiles']:.2f}x fewer; without rounds, "
        f"{est['plan_without_workers']['strips']} strips: {est['plan_without_workers']['makespan_tiles']}).",
        f"Host costs measured on {result['machine']['cpu']} ({result['machine']['cores']} cores): the class "
        f"raster's finish {1000 * host['finish_s_per_mp']:.2f} ms/MP, the stitch {1000 * host['stitch_s_per_mp']:.1f} "
        "ms/MP.",
    ]
    for preset in TARGETS:
        e = est.get(preset)
        if e:
            kind = "measured" if measured else "assumed: the issue's target"
            lines.append(
                f"{preset}: at {e['rate_mpx_per_s']:g} Mpx/s per GPU ({kind}), one GPU {e['one_gpu_s']:.2f} s, "
                f"{args.gpus} GPUs {e['gpus_s']:.2f} s: **{e['speedup']:.2f}x** "
                f"({e['speedup_without_stitch']:.2f}x before the stitch)."
            )
    if est["rate_for_4x_mpx_per_s"] is not None:
        r4 = est["rate_for_4x_mpx_per_s"]
        lines.append(
            f"{args.gpus} GPUs reach 4x on this scene when one GPU's loop runs at {r4:g} Mpx/s or slower, e.g. "
            f"the paper preset with TTA d4 (8 passes: {TARGETS['paper'] / 8:g} Mpx/s at the target rate)."
        )
    result["lines"] = lines
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
