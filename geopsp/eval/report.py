"""Write an evaluation: ``report.json``, ``classes.csv``, ``confusion.csv`` and ``confusion.png``."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from geopsp.eval.metrics import Scores
from geopsp.io.atomic import atomic_output, check_output_path

__all__ = ["REPORT_NAMES", "write_report"]

REPORT_NAMES = ("report.json", "classes.csv", "confusion.csv", "confusion.png")


def _cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _short(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:.4f}"


def _write_text(path: Path, text: str, overwrite: bool) -> None:
    with atomic_output(path, overwrite=overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")


def confusion_csv(scores: Scores) -> str:
    """Format the confusion matrix as CSV: predicted class names across, one row per reference class."""
    k = len(scores.classes)
    names = [c.name for c in scores.classes]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    other = bool(scores.confusion[:, k].any())
    w.writerow(["reference \\ prediction", *names, *(["other"] if other else [])])
    for i, name in enumerate(names):
        row = scores.confusion[i, : k + (1 if other else 0)].tolist()
        w.writerow([name, *row])
    return buf.getvalue()


def classes_csv(scores: Scores) -> str:
    """Per-class scores as CSV (empty cells where undefined)."""
    cols = [
        "id",
        "name",
        "status",
        "iou",
        "f1",
        "producer_accuracy",
        "user_accuracy",
        "reference_pixels",
        "predicted_pixels",
    ]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for c in scores.classes:
        d = c.to_dict()
        w.writerow([_cell(d[k]) for k in cols])
    return buf.getvalue()


def confusion_png(path: Path, scores: Scores, *, overwrite: bool) -> None:
    """Plot the row-normalized confusion matrix with counts."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    k = len(scores.classes)
    counts = scores.confusion[:, :k].astype(np.float64)
    rows = counts.sum(axis=1, keepdims=True)
    frac = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    size = max(4.0, 0.6 * k + 2.5)
    fig = Figure(figsize=(size, size), dpi=100)
    ax = fig.subplots()
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    names = [c.name for c in scores.classes]
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("prediction")
    ax.set_ylabel("reference")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if counts[i, j]:
                    ax.text(
                        j,
                        i,
                        f"{int(counts[i, j])}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if frac[i, j] > 0.5 else "black",
                    )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of reference row")
    title = f"OA {_short(scores.overall_accuracy)}  mIoU {_short(scores.miou)}  mean F1 {_short(scores.mean_f1)}"
    ax.set_title(title)
    fig.tight_layout()
    with atomic_output(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format="png")


def write_report(
    out_dir: str | os.PathLike[str],
    report: Mapping[str, Any],
    scores: Scores | None,
    *,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write the JSON report and, with pixel scores, the CSVs and the confusion plot.

    Raises
    ------
    OutputExistsError
        If any of the files exists and ``overwrite`` is off (checked before writing any).
    """
    out = Path(out_dir)
    names = REPORT_NAMES if scores is not None else REPORT_NAMES[:1]
    for n in names:
        check_output_path(out / n, overwrite=overwrite)
    paths = {n.split(".")[0] + ("_png" if n.endswith(".png") else ""): out / n for n in names}
    _write_text(out / "report.json", json.dumps(report, indent=2, allow_nan=False) + "\n", overwrite)
    if scores is not None:
        _write_text(out / "classes.csv", classes_csv(scores), overwrite)
        _write_text(out / "confusion.csv", confusion_csv(scores), overwrite)
        confusion_png(out / "confusion.png", scores, overwrite=overwrite)
    return paths
