"""Training records: ``metrics.csv`` (one row per epoch) and ``curves.png``."""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from geopsp.io.atomic import atomic_output

__all__ = ["loss_scale", "write_curves", "write_metrics_csv"]

BASE_COLUMNS = (
    "epoch",
    "step",
    "lr",
    "train_loss",
    "val_loss",
    "val_miou",
    "val_oa",
    "val_mean_f1",
    "val_kappa",
    "seconds",
)
LOG_SPAN = 20.0
"""The loss axis turns logarithmic when the largest loss is this many times the smallest."""
EMA_COLUMNS = ("ema_val_loss", "ema_val_miou", "ema_val_oa", "ema_val_mean_f1", "ema_val_kappa")


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def write_metrics_csv(
    path: str | os.PathLike[str], history: Sequence[Mapping[str, Any]], class_names: Sequence[str]
) -> Path:
    """Write one row per epoch: losses, scores, per-class IoU and F1, the EMA's too (empty = undefined)."""
    ema = any("ema_val_miou" in row for row in history)
    extra = EMA_COLUMNS if ema else ()
    groups = [("val_iou", "iou"), ("val_f1", "f1")] + ([("ema_val_f1", "ema_f1")] if ema else [])
    columns = [*BASE_COLUMNS, *extra, *(f"{p}_{n}" for _, p in groups for n in class_names)]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in history:
        values = [row.get(c) for c in (*BASE_COLUMNS, *extra)]
        for key, _ in groups:
            per_class = row.get(key) or {}
            values += [per_class.get(n) for n in class_names]
        writer.writerow([_fmt(v) for v in values])
    with atomic_output(path, overwrite=True) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")
    return Path(path)


def loss_scale(losses: Sequence[float]) -> str:
    """Return ``"log"`` when the largest positive loss is over :data:`LOG_SPAN` times the smallest, else ``"linear"``.

    A huge first validation loss would otherwise flatten every later epoch into one line.

    Examples
    --------
    >>> loss_scale([7.4, 2.3, 0.9, 0.3]), loss_scale([1.2, 0.9, 0.8])
    ('log', 'linear')
    """
    positive = [v for v in losses if v > 0]
    return "log" if positive and max(positive) > LOG_SPAN * min(positive) else "linear"


def write_curves(path: str | os.PathLike[str], history: Sequence[Mapping[str, Any]], *, title: str = "") -> Path:
    """Plot the loss and validation scores per epoch to a PNG (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    def series(key: str) -> tuple[list[int], list[float]]:
        pts = [
            (int(r["epoch"]), float(r[key]))
            for r in history
            if r.get(key) is not None and not math.isnan(float(r[key]))
        ]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig = Figure(figsize=(10, 4), dpi=100)
    ax_loss, ax_score = fig.subplots(1, 2)
    losses = []
    for key, label in (("train_loss", "train loss"), ("val_loss", "val loss"), ("ema_val_loss", "EMA val loss")):
        x, y = series(key)
        if x:
            ax_loss.plot(x, y, marker="o", ms=3, label=label)
            losses += y
    ax_loss.set_yscale(loss_scale(losses))
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(loc="best")
    for key, label in (
        ("val_miou", "val mIoU"),
        ("val_oa", "val OA"),
        ("val_mean_f1", "val mean F1"),
        ("ema_val_miou", "EMA val mIoU"),
    ):
        x, y = series(key)
        if x:
            ax_score.plot(x, y, marker="o", ms=3, label=label)
    ax_score.set_xlabel("epoch")
    ax_score.set_ylim(0, 1)
    ax_score.grid(alpha=0.3)
    if ax_score.lines:
        ax_score.legend(loc="best")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_output(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)
