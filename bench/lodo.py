"""Leave-one-date-out accuracy of a training config on the shared Strzegom Sentinel-2 dates.

For every held-out date D (default: all seven): train the config on the other six dates, as a
user would (``geopsp train`` in a subprocess, validation and checkpoint selection on the six
dates' own validation blocks only), then segment D's scene with the kept
``model.safetensors`` through the real prediction pipeline and score the class raster against
D's reference mask (``geopsp evaluate --model --scene``). D is never seen by training or by
model selection. The per-class F1, overall accuracy, mIoU and mean F1 (over the classes
present in D's reference) of every fold go to ``bench/results/lodo.json`` (as predicted by
default, and again with the eight-fold flip/rotation test-time augmentation ``predict.tta=d4``,
reported beside it, not chosen by it), with the training
time, the weights kept and the machine's load; ``bench/report.py`` renders the table.

Folds run one after the other with ``--threads`` torch threads each, or ``--parallel N`` at a
time with ``threads / N`` threads each (the same total work; times are then per fold under
that sharing). Accuracy does not depend on the machine's speed: the config trains a fixed
number of epochs (its time cap is a guard that warns).

Usage::

    python bench/lodo.py [--config configs/sentinel2_lulc.yaml] [--dates 20230530 ...]
                         [--parallel 1] [--threads 2] [--work DIR] [--out bench/results/lodo.json]
                         [--set KEY=VALUE ...] [--keep]

``--keep`` reuses folds already trained into ``--work`` (their time is the one recorded then).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from geopsp.testing import sample_data_dir  # noqa: E402

DATA = sample_data_dir() / "sentinel2_strzegom"  # where the config's ${GEOPSP_DATA:-../../shared/data} points
GEOPSP = [sys.executable, "-m", "geopsp"]
PUBLISHED = {
    "name": "U-Net, bh-del/lulc_mining (the data's source), its class raster of a later date against the reference",
    "overall_accuracy": 0.916,
    "miou": 0.772,
    "mean_f1": 0.856,
}
GOAL = {"overall_accuracy": 0.95, "mean_f1": 0.88, "miou": 0.80}


def dates() -> list[str]:
    out = []
    for p in sorted((DATA / "images").glob("*.tif")):
        m = re.search(r"(\d{8})", p.stem)
        if m:
            out.append(m.group(1))
    return out


def fold_commands(
    config: Path, date: str, all_dates: list[str], work: Path, threads: int, sets: list[str]
) -> dict[str, Any]:
    run = work / f"fold_{date}"
    train_patterns = json.dumps([f"*{d}*" for d in all_dates if d != date])
    scene = next((DATA / "images").glob(f"*{date}*.tif"))
    labels = next((DATA / "labels").glob(f"*{date}*.tif"))
    train = [
        *GEOPSP,
        "train",
        "--config",
        str(config),
        "--out",
        str(run / "train"),
        "--overwrite",
        "--no-progress",
        "--set",
        f"train.split.train={train_patterns}",
        "--set",
        f"train.threads={threads}",
    ]
    for item in sets:
        train += ["--set", item]
    evaluate = [
        *GEOPSP,
        "evaluate",
        "--model",
        str(run / "train" / "model.safetensors"),
        "--scene",
        str(scene),
        str(labels),
        "--ignore-value",
        "0",
        "--out",
        str(run / "eval"),
        "--overwrite",
    ]
    return {"run": run, "train": train, "evaluate": evaluate}


def start_fold(cmds: dict[str, Any], threads: int) -> tuple[subprocess.Popen[bytes], float]:
    cmds["run"].mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    log = open(cmds["run"] / "train.log", "wb")
    return subprocess.Popen(cmds["train"], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT), time.time()


def finish_fold(date: str, cmds: dict[str, Any], seconds: float) -> dict[str, Any]:
    run: Path = cmds["run"]
    ev = subprocess.run(cmds["evaluate"], capture_output=True, text=True, cwd=ROOT)
    if ev.returncode != 0:
        raise SystemExit(f"evaluate failed for {date}: {ev.stderr.strip()}")
    report = json.loads((run / "eval" / "report.json").read_text())
    tta = subprocess.run(
        [*cmds["evaluate"][:-3], "--out", str(run / "eval_d4"), "--overwrite", "--set", "predict.tta=d4"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if tta.returncode != 0:
        raise SystemExit(f"evaluate with TTA failed for {date}: {tta.stderr.strip()}")
    d4 = json.loads((run / "eval_d4" / "report.json").read_text())
    summary = json.loads((run / "train" / "train_summary.json").read_text())
    present = [c for c in report["classes"] if c["reference_pixels"] > 0]
    return {
        "date": date,
        "overall_accuracy": report["overall_accuracy"],
        "miou": report["miou_reference_classes"],
        "mean_f1": report["mean_f1_reference_classes"],
        "kappa": report["kappa"],
        "pixels": report["pixels"],
        "f1": {c["name"]: c["f1"] for c in present},
        "iou": {c["name"]: c["iou"] for c in present},
        "reference_pixels": {c["name"]: c["reference_pixels"] for c in present},
        "tta_d4": {
            "overall_accuracy": d4["overall_accuracy"],
            "miou": d4["miou_reference_classes"],
            "mean_f1": d4["mean_f1_reference_classes"],
            "f1": {c["name"]: c["f1"] for c in d4["classes"] if c["reference_pixels"] > 0},
        },
        "train_seconds": round(seconds, 1),
        "epochs": summary["epochs"],
        "kept": summary["kept"],
        "reason": summary["reason"],
        "amp": summary["amp"],
        "stopped_early": summary["stopped_early"],
        "validation": summary["validation"],
    }


def machine() -> dict[str, Any]:
    import torch

    from geopsp.device import cpu_name as _cpu_name

    return {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def mean(rows: list[dict[str, Any]], key: str) -> float:
    return sum(float(r[key]) for r in rows) / len(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "sentinel2_lulc.yaml")
    ap.add_argument("--dates", nargs="*", help="held-out dates (default: all)")
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2, help="torch threads in all (shared by parallel folds)")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "lodo")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "lodo.json")
    ap.add_argument(
        "--keep",
        action="store_true",
        help="reuse folds whose run (train_summary.json) exists in --work (trained by this config earlier)",
    )
    ap.add_argument("--set", dest="sets", action="append", default=[], help="extra --set for geopsp train")
    args = ap.parse_args()
    if not DATA.exists():
        raise SystemExit(f"{DATA} is missing; the benchmark needs the shared Strzegom data (set GEOPSP_DATA)")
    every = dates()
    todo = args.dates or every
    per_fold = max(1, args.threads // max(1, args.parallel))
    info = machine()
    started = time.time()
    rows: list[dict[str, Any]] = []
    pending = list(todo)
    running: list[tuple[str, dict[str, Any], subprocess.Popen[bytes], float]] = []
    while pending or running:
        while pending and len(running) < args.parallel:
            d = pending.pop(0)
            cmds = fold_commands(args.config.resolve(), d, every, args.work.resolve(), per_fold, args.sets)
            done = cmds["run"] / "train" / "train_summary.json"
            if args.keep and done.exists():
                seconds = float(json.loads(done.read_text())["seconds"])
                rows.append(finish_fold(d, cmds, seconds))
                print(f"fold {d}: kept the finished run in {done.parent}", file=sys.stderr, flush=True)
                continue
            proc, t0 = start_fold(cmds, per_fold)
            running.append((d, cmds, proc, t0))
            print(f"fold {d}: training", file=sys.stderr, flush=True)
        time.sleep(2)
        for item in list(running):
            d, cmds, proc, t0 = item
            if proc.poll() is None:
                continue
            running.remove(item)
            if proc.returncode != 0:
                tail = (cmds["run"] / "train.log").read_text(errors="replace")[-2000:]
                raise SystemExit(f"training failed for {d} (exit {proc.returncode}):\n{tail}")
            row = finish_fold(d, cmds, time.time() - t0)
            rows.append(row)
            print(
                json.dumps({k: row[k] for k in ("date", "overall_accuracy", "mean_f1", "miou", "train_seconds")}),
                file=sys.stderr,
                flush=True,
            )
    rows.sort(key=lambda r: r["date"])
    info["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result = {
        "config": str(args.config.resolve().relative_to(ROOT))
        if args.config.resolve().is_relative_to(ROOT)
        else str(args.config),
        "overrides": args.sets,
        "parallel": args.parallel,
        "threads_per_fold": per_fold,
        "machine": info,
        "wall_seconds": round(time.time() - started, 1),
        "folds": rows,
        "mean": {k: mean(rows, k) for k in ("overall_accuracy", "mean_f1", "miou", "kappa")},
        "mean_tta_d4": {k: mean([r["tta_d4"] for r in rows], k) for k in ("overall_accuracy", "mean_f1", "miou")},
        "goal": GOAL,
        "published": PUBLISHED,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result["mean"], indent=1))


if __name__ == "__main__":
    main()
