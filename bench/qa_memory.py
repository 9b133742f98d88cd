"""Peak memory of the map-judging outputs on a 20000 x 20000 scene: QA layers, polygon confidence, class areas.

Run: ``.venv/bin/python bench/qa_memory.py [--size 20000] [--workdir DIR]``; writes
``bench/results/qa_memory.json``.

Each run is one ``segment_raster`` in a fresh process with the stand-in model of
``bench/predict.py``'s memory section (a 1x1 convolution, 6 classes: a real CNN would take
hours on 400 MP with 2 CPU cores; reader, mosaic, writer, COG, vectorizer are the real ones),
512 px tiles, overlap 64, on a 3-band uint8 scene of 64 px squares (about 10^5 polygons), and
records the process's peak RSS (VmHWM):

plain
    the class raster only (its class areas table included: it is always written);
qa
    plus every QA layer (``predict.qa``: probability, margin, entropy, disagreement);
vector
    the class raster and its polygons;
everything
    QA layers and polygons with ``conf_mean``, ``conf_min``, ``disagree_frac``.

Target (issue #17): QA layers, polygon confidence and class areas within 1.1 x the peak of a
plain prediction: peak(qa) and peak(everything) <= 1.1 x peak(plain). everything / vector is
reported too; note that the vector run's tile loop, the same loop as plain's, peaks lower
(about 150 MB on this machine, repeatably: heap layout, not understood).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from predict import _cpu, cheap_scene  # noqa: E402

RESULTS = HERE / "results" / "qa_memory.json"
QA = ["probability", "margin", "entropy", "disagreement"]
RUNS: dict[str, dict[str, Any]] = {
    "plain": {},
    "qa": {"predict": {"qa": QA}},
    "vector": {"predict": {"vector": True}, "vectorize": {"workers": 1}},
    "everything": {"predict": {"qa": QA, "vector": True}, "vectorize": {"workers": 1}},
}


def run(name: str, scene: Path, workdir: Path, tile: int, overlap: int) -> dict[str, Any]:
    """One run in a fresh process (``bench/predict.py``'s memory child with more settings)."""
    extra = json.dumps(RUNS[name])
    cmd = [sys.executable, "-c", _CHILD, str(scene), str(workdir / f"qa_{name}"), str(tile), str(overlap), extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=HERE)
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: {proc.stderr[-3000:]}")
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_seconds"] = round(time.perf_counter() - t0, 1)
    return out


_CHILD = """
import json, sys
from predict import memory_child
memory_child(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), json.loads(sys.argv[5]))
"""


def judge(results: dict[str, Any]) -> None:
    """Add the ratios and the verdict of the issue's target to ``results`` (in place)."""
    peak = {k: v["peak_rss_process_mb"] for k, v in results["runs"].items()}
    ratios: dict[str, float] = {}
    for a, b in (("qa", "plain"), ("everything", "plain"), ("everything", "vector"), ("vector", "plain")):
        if {a, b} <= set(peak):
            ratios[f"{a}_over_{b}"] = round(peak[a] / peak[b], 3)
    results["ratios"] = ratios
    results["target"] = "peak(qa) and peak(everything) <= 1.1 x peak(plain)"
    results["meets_target"] = bool(
        ratios.get("qa_over_plain", 9.0) <= 1.1 and ratios.get("everything_over_plain", 9.0) <= 1.1
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=20000)
    ap.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "geopsp-bench-qa")
    ap.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    tile, overlap = 512, 64
    scene = cheap_scene(args.workdir / f"cells64_{args.size}.tif", args.size, cell=64)
    results: dict[str, Any] = {
        "machine": _cpu(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "scene": f"{args.size} x {args.size} 3-band uint8, 64 px squares",
        "model": "stand-in 1x1 conv, 6 classes",
        "tile": tile,
        "overlap": overlap,
        "runs": {},
    }
    for name in args.runs:
        res = run(name, scene, args.workdir, tile, overlap)
        results["runs"][name] = res
        print(name, json.dumps({k: res[k] for k in ("peak_rss_process_mb", "wall_seconds")}), flush=True)
    judge(results)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
