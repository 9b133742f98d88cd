# ruff: noqa: RUF001
"""The training sections of docs/performance.md: epoch speed and leave-one-date-out accuracy.

Rendered by ``bench/report.py`` from ``bench/results/train_speed.json`` (``bench/train_speed.py``)
and ``bench/results/lodo.json`` (``bench/lodo.py``).
"""

from __future__ import annotations

from typing import Any


def _f(x: Any, nd: int = 3) -> str:
    return "–" if x is None else f"{float(x):.{nd}f}"


def section_training(ts: dict[str, Any] | None) -> str:
    if ts is None:
        return "No results yet: run `python bench/train_speed.py`.\n\n"
    m = ts["machine"]
    rows = []
    for name, sets in ts["variants"].items():
        spe = ts["seconds_per_epoch"][name]
        rows.append(
            f"| {name} | {', '.join(f'`{s}`' for s in sets) or 'the committed config'} | {_f(spe, 2)} | "
            f"{_f(ts['epochs_per_minute'][name], 2)} | {_f(ts['speedup_vs_before'].get(name), 2)}× |\n"
        )
    amp = ts["runs"].get("after", [{}])[0].get("amp") or {}
    return (
        f"`bench/train_speed.py`: seconds per epoch of `{ts['config']}` ({ts['epochs']} epochs per run, the first "
        f"left out, fastest of {len(next(iter(ts['runs'].values())))} rounds run in turns, {ts['threads']} torch "
        f"threads) on {m['cpu']} ({m['cores']} cores); load average {m['load_average_at_start']} before, "
        f"{m['load_average_at_end']} after. *before* is the loop as it was; each row adds one thing.\n\n"
        "| variant | overrides | s / epoch | epochs / min | vs before |\n|---|---|---:|---:|---:|\n"
        + "".join(rows)
        + f"\n`amp: auto` on this CPU: {amp.get('reason', '–')}.\n\n"
    )


def section_lodo(lo: dict[str, Any] | None) -> str:
    if lo is None:
        return "No results yet: run `python bench/lodo.py`.\n\n"
    folds = lo["folds"]
    classes: list[str] = []
    for f in folds:
        classes += [c for c in f["f1"] if c not in classes]
    head = (
        "| held-out date | OA | mean F1 | mIoU | "
        + " | ".join(c.replace("_", " ") for c in classes)
        + " | train s | kept |\n"
    )
    sep = "|---|" + "---:|" * (3 + len(classes)) + "---:|---|\n"
    body = []
    for f in folds:
        per = " | ".join(_f(f["f1"].get(c), 2) for c in classes)
        body.append(
            f"| {f['date']} | {_f(f['overall_accuracy'])} | {_f(f['mean_f1'])} | {_f(f['miou'])} | {per} | "
            f"{f['train_seconds']:.0f} | {f['kept']} |\n"
        )
    mean = lo["mean"]
    avg_f1 = {c: [f["f1"][c] for f in folds if f["f1"].get(c) is not None] for c in classes}
    per_mean = " | ".join(_f(sum(v) / len(v), 2) if v else "–" for v in avg_f1.values())
    body.append(
        f"| **mean** | **{_f(mean['overall_accuracy'])}** | **{_f(mean['mean_f1'])}** | **{_f(mean['miou'])}** | "
        f"{per_mean} | | |\n"
    )
    g, p, m = lo["goal"], lo["published"], lo["machine"]
    return (
        f"`bench/lodo.py`: `{lo['config']}` trained on six of the seven Strzegom dates (validation and the choice of "
        "weights on those six dates' validation blocks only), then the seventh date's scene segmented by "
        "`geopsp evaluate --model --scene` (the real prediction pipeline) and its class raster scored against the "
        "date's reference mask. The held-out date is never used for training or for model selection. Scores are over "
        "the classes present in the date's reference; per-class columns are F1. "
        f"{len(folds)} folds, {lo['threads_per_fold']} torch threads each, {lo['parallel']} at a time, on "
        f"{m['cpu']} ({m['cores']} cores); load average {m['load_average_at_start']} at the start, "
        f"{m['load_average_at_end']} at the end.\n\n"
        + head
        + sep
        + "".join(body)
        + f"\nGoal: OA ≥ {g['overall_accuracy']}, mean F1 ≥ {g['mean_f1']}, mIoU ≥ {g['miou']}. For comparison, "
        f"{p['name']}: OA {p['overall_accuracy']}, mIoU {p['miou']}, mean F1 {p['mean_f1']}.\n\n"
    )
