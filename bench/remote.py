"""Remote reads: peak RSS and bytes fetched predicting a 20000 x 20000 COG over HTTP vs the same file on disk.

Writes ``bench/results/remote.json``. The COG (no overviews, 512 px blocks) is served by
:class:`geopsp.testing_servers.RangeServer` on 127.0.0.1 from this process; ``geopsp predict``
runs in a fresh child process (torch unimportable: the ONNX Runtime int8 model), once on the
local path and once on the URL. Target (issue #15): the remote run's peak RSS within 1.2x of
the local one; bytes fetched about the file's size.

Run: ``python bench/remote.py [--size 20000] [--workdir /tmp/geopsp-bench-runtime]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from predict import _cpu, cheap_scene, synthetic_scene  # noqa: E402
from runtime import INT8, THREADS, _int8_candidates, _models, _predict  # noqa: E402

RESULTS = HERE / "results" / "remote.json"


def _cog(src_path: Path, dst: Path) -> Path:
    import rasterio
    import rasterio.shutil

    if not dst.exists():
        with rasterio.open(src_path) as src:
            rasterio.shutil.copy(src, dst, driver="COG", BLOCKSIZE=512, OVERVIEWS="NONE", COMPRESS="DEFLATE")
    return dst


def main() -> None:
    import numpy as np
    import rasterio

    from geopsp.testing_servers import RangeServer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/geopsp-bench-runtime"))
    args = parser.parse_args()
    work: Path = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    scene = cheap_scene(work / f"large_{args.size}.tif", args.size)
    cog = _cog(scene, work / f"large_{args.size}_cog.tif")
    INT8.update(_int8_candidates())
    model = _models("fast", work, synthetic_scene(work / "scene_2048.tif", 2048))["int8_all"]
    rows: list[dict[str, Any]] = []
    local = _predict(cog, model, work / "out_remote_local", block_torch=True)
    rows.append({"read": "local file", "wall_s": local["wall_s"], "peak_rss_mb": local["peak_rss_mb"]})
    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    with RangeServer(cog.parent) as srv:
        remote = _predict(srv.url(cog.name), model, work / "out_remote_http", block_torch=True)  # type: ignore[arg-type]
        fetched, requests = srv.bytes_served, sum(srv.requests.values())
    size = cog.stat().st_size
    rows.append(
        {
            "read": "http (Range), 127.0.0.1",
            "wall_s": remote["wall_s"],
            "peak_rss_mb": remote["peak_rss_mb"],
            "bytes_fetched": fetched,
            "file_bytes": size,
            "fetched_over_file": round(fetched / size, 4),
            "requests": requests,
        }
    )
    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    with rasterio.open(local["classes"]) as a, rasterio.open(remote["classes"]) as b:
        identical = all(np.array_equal(a.read(1, window=w), b.read(1, window=w)) for _, w in a.block_windows(1))
    result = {
        "machine": {**_cpu(), "threads": THREADS},
        "scene": f"{args.size}x{args.size} uint8 x3 COG, 512 px blocks, no overviews",
        "model": "fast preset, onnxruntime int8 (all nodes), torch unimportable",
        "runs": rows,
        "rss_ratio_remote_over_local": round(remote["peak_rss_mb"] / local["peak_rss_mb"], 3),
        "classes_identical": identical,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    for run in (local, remote):
        run["classes"].unlink()
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(RESULTS)


if __name__ == "__main__":
    main()
