"""Host CPU cost of feeding a GPU: read, cut and stack tiles as the CUDA path does, with no model.

On CUDA the host only decodes the scene, cuts raw tiles into (pinned) batch buffers and writes
the finished rows; this measures the first two on this CPU for a DEFLATE COG, as CPU seconds
per scene megapixel and as wall-clock Mpx/s, for the tiles stacked as the tile loop receives
them (``batches``) and, where this checkout still has it, for the one-tile-at-a-time path
followed by a stack per batch (the loop before the batch buffers). Run it on a quiet machine::

    python bench/host_stages.py --size 8192 --out bench/results/host_stages.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(scene: Path, *, mode: str, tile: int, overlap: int, batch: int, threads: int) -> dict[str, Any]:
    from geopsp._heap import bound_heap_retention
    from geopsp.io.raster import open_scene
    from geopsp.tiling import TileGrid
    from geopsp.tiling.reader import TileReader

    bound_heap_retention(True)
    with open_scene(scene) as (src, info):
        grid = TileGrid(info.height, info.width, tile, overlap)
        reader = TileReader(src, info, grid, [1, 2, 3], threads=threads, prefetch=max(2 * batch, 4))
        n = 0
        c0, t0 = _cpu(), time.perf_counter()
        with reader:
            if mode == "batches":
                from geopsp.tiling.batches import NumpyPreparer  # raw tiles cast into the buffer, as on CUDA

                for b in reader.batches(batch, NumpyPreparer()):
                    n += len(b.tiles)
                    b.release()
            else:
                pending: list[Any] = []
                for item in reader:
                    if item.skipped:
                        continue
                    pending.append(item)
                    if len(pending) == batch:
                        np.stack([p.data for p in pending]), np.stack([p.valid for p in pending])
                        n += len(pending)
                        pending.clear()
                n += len(pending)
        wall, cpu = time.perf_counter() - t0, _cpu() - c0
    mp = info.width * info.height / 1e6
    return {
        "mode": mode,
        "tiles": n,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "mpx_per_s": round(mp / wall, 2),
        "cpu_ms_per_mp": round(1000 * cpu / mp, 2),
        "read_s": round(reader.read_seconds, 3),
    }


_VIEWS = {"aten.slice", "aten.select", "aten.alias", "aten.view", "aten.expand", "aten.unsqueeze", "aten.t"}


def blend_ops(*, width: int = 4096, height: int = 2048, classes: int = 6, batch: int = 4) -> dict[str, Any]:
    """Count the torch ops the mosaic issues per tile (each non-view op is a kernel launch on CUDA).

    Counted on the CPU with a dispatch mode, for the CPU reduction and for the CUDA one
    (one argmax instead of the K where-passes), on a 512/64 grid.
    """
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from geopsp.inference.mosaic import Mosaicker
    from geopsp.tiling import TileGrid

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.kernels = 0
            self.views = 0

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            if str(func.overloadpacket) in _VIEWS:
                self.views += 1
            else:
                self.kernels += 1
            return func(*args, **(kwargs or {}))

    grid = TileGrid(height, width, 512, 64)
    rng = np.random.default_rng(0)
    probs = torch.from_numpy(rng.random((batch, classes, 512, 512), dtype=np.float32))
    valid = torch.ones((batch, 512, 512), dtype=torch.bool)
    tiles = list(grid.tiles())
    out: dict[str, Any] = {"grid": [height, width, 512, 64], "classes": classes, "tiles": len(tiles)}
    for name, fused in (("cpu_reduction", False), ("cuda_reduction", True)):
        mosaic = Mosaicker(grid, class_ids=list(range(1, classes + 1)), nodata=0, sink=lambda *a: None)
        mosaic._fused_argmax = fused
        count = Count()
        with count:
            for i in range(0, len(tiles), batch):
                part = tiles[i : i + batch]
                mosaic.add(part, probs[: len(part)], valid[: len(part)])
            mosaic.finish()
        out[name] = {
            "kernels_per_tile": round(count.kernels / len(tiles), 1),
            "views_per_tile": round(count.views / len(tiles), 1),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/geopsp-bench-host"))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--before", type=Path, default=None, help="this script's JSON from the commit before")
    parser.add_argument("--before-commit", default="")
    args = parser.parse_args()
    from predict import cheap_scene

    from geopsp.device import cpu_count, cpu_name
    from geopsp.tiling.reader import TileReader

    args.work.mkdir(parents=True, exist_ok=True)
    scene = cheap_scene(args.work / f"cog_{args.size}.tif", args.size)
    modes = ["batches", "tiles"] if hasattr(TileReader, "batches") else ["tiles"]
    rows = []
    for _ in range(args.repeats):
        for mode in modes:
            rows.append(run(scene, mode=mode, tile=512, overlap=64, batch=args.batch, threads=args.threads))
            print(json.dumps(rows[-1]), flush=True)
    best = {m: min((r for r in rows if r["mode"] == m), key=lambda r: r["cpu_s"]) for m in modes}
    ops = blend_ops() if hasattr(TileReader, "batches") else None
    result = {
        "machine": {"cpu": cpu_name(), "cores": cpu_count(), "loadavg": list(os.getloadavg())},
        "blend_ops": ops,
        "scene": {"size": args.size, "bands": 3, "dtype": "uint8", "compress": "deflate", "tile": 512, "overlap": 64},
        "batch": args.batch,
        "threads": args.threads,
        "runs": rows,
        "best": best,
    }
    if args.before is not None:
        result["before"] = json.loads(args.before.read_text())["best"]["tiles"]
        result["before_commit"] = args.before_commit
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(best, indent=1))


if __name__ == "__main__":
    main()
