"""Training speed: seconds per epoch of a config, with the loop's speed features on and off.

Each variant trains the config (default: the Sentinel-2 one on the shared Strzegom dates) for
``--epochs`` epochs without validation, in a fresh subprocess with ``--threads`` torch threads;
the first epoch (warm-up: kernels, the amp measurement, worker start) is left out and the
median of the others is the variant's seconds per epoch. Variants run in turns, ``--repeats``
rounds, so drift on a shared machine hits all of them alike; the fastest round counts.

Variants (``--set`` overrides of ``geopsp train``):

* ``before``: the loop as it was: batches built in the main process, contiguous (NCHW) memory,
  fp32, the model without the detail branch;
* ``workers``: + one batch-building worker process;
* ``channels_last``: + channels-last memory format;
* ``after``: the config as committed (its detail branch and ``amp: auto`` included).

Results go to ``bench/results/train_speed.json``; ``bench/report.py`` renders them.

Usage::

    python bench/train_speed.py [--config configs/sentinel2_lulc.yaml] [--epochs 4] [--repeats 2]
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

BEFORE = [
    "train.loader_workers=0",
    "train.channels_last=false",
    "train.amp=false",
    "train.model.detail_channels=0",
    "train.ema_decay=null",
    "train.select=last",
]
VARIANTS: dict[str, list[str]] = {
    "before": BEFORE,
    "workers": [*BEFORE[1:], "train.loader_workers=1"],
    "channels_last": [*BEFORE[2:], "train.loader_workers=1", "train.channels_last=true"],
    "after": [],
}


def run_variant(config: Path, sets: list[str], epochs: int, threads: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="geopsp-speed-") as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "geopsp", "train", "--config", str(config), "--out", str(out), "--no-progress"]
        common = [f"train.epochs={epochs}", f"train.val_every={10 * epochs}", f"train.threads={threads}"]
        for item in [*common, *sets, "train.split.val_blocks=0.1"]:
            cmd += ["--set", item]
        # no validation at all: the last epoch would validate; keep it out of the timing
        t0 = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            raise SystemExit(f"train failed: {proc.stderr.strip()[-2000:]}")
        with open(out / "metrics.csv", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        summary = json.loads((out / "train_summary.json").read_text())
    seconds = [float(r["seconds"]) for r in rows]
    per_epoch = [b - a for a, b in itertools.pairwise(seconds)][:-1]  # last epoch validates
    return {
        "seconds_per_epoch": statistics.median(per_epoch) if per_epoch else None,
        "epochs_timed": len(per_epoch),
        "wall_seconds": round(time.time() - t0, 1),
        "amp": summary["amp"],
        "loader_workers": summary["loader_workers"],
        "channels_last": summary["channels_last"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "sentinel2_lulc.yaml")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "train_speed.json")
    args = ap.parse_args()
    from geopsp.device import cpu_name as _cpu_name

    load0 = [round(x, 2) for x in os.getloadavg()]
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in args.variants}
    for r in range(args.repeats):
        for v in args.variants:
            res = run_variant(args.config.resolve(), VARIANTS[v], args.epochs, args.threads)
            runs[v].append(res)
            print(json.dumps({"round": r, "variant": v, **res}), file=sys.stderr, flush=True)
    best = {v: min(x["seconds_per_epoch"] for x in rs) for v, rs in runs.items()}
    base = best.get("before")
    result = {
        "config": str(args.config.resolve().relative_to(ROOT))
        if args.config.resolve().is_relative_to(ROOT)
        else str(args.config),
        "epochs": args.epochs,
        "threads": args.threads,
        "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "load_average_at_start": load0},
        "variants": {v: VARIANTS[v] for v in args.variants},
        "runs": runs,
        "seconds_per_epoch": best,
        "epochs_per_minute": {v: 60.0 / s for v, s in best.items()},
        "speedup_vs_before": {v: base / s for v, s in best.items()} if base else {},
    }
    result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result["speedup_vs_before"], indent=1))


if __name__ == "__main__":
    main()
