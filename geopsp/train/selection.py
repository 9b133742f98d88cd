"""Which weights a training run keeps, and the summaries of their validation scores.

``train.select`` (``best``, ``last`` or ``ema``) is decided here, once, with the sentence that
the console and ``train_summary.json`` show.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from geopsp.eval.metrics import Scores
from geopsp.train.state import TrainState, Weights

__all__ = ["Candidate", "choose_weights", "finite_or_none", "history_summary", "row_scores", "scores_summary"]


def finite_or_none(v: float | None) -> float | None:
    """Return ``v`` as a float, or None when it is None, NaN or infinite (JSON-ready)."""
    return None if v is None or not math.isfinite(v) else float(v)


def row_scores(prefix: str, loss: float, scores: Scores) -> dict[str, Any]:
    """Return the columns of one validation in a ``metrics.csv`` row: ``<prefix>_loss``, ``_miou``, ...

    ``prefix`` is ``val`` (the raw weights) or ``ema_val`` (their moving average).
    """
    return {
        f"{prefix}_loss": finite_or_none(loss),
        f"{prefix}_miou": finite_or_none(scores.miou_reference_classes),
        f"{prefix}_oa": finite_or_none(scores.overall_accuracy),
        f"{prefix}_mean_f1": finite_or_none(scores.mean_f1_reference_classes),
        f"{prefix}_kappa": finite_or_none(scores.kappa),
        f"{prefix}_iou": {c.name: finite_or_none(c.iou) for c in scores.classes},
        f"{prefix}_f1": {c.name: finite_or_none(c.f1) for c in scores.classes},
    }


@dataclass(frozen=True, slots=True)
class Candidate:
    """Weights validated at one epoch."""

    weights: Weights
    epoch: int
    scores: Scores
    loss: float

    def score(self, metric: str) -> float:
        """Return the selection metric over the classes present in validation (-inf when undefined)."""
        s = self.scores
        v = s.mean_f1_reference_classes if metric == "mean_f1" else s.miou_reference_classes
        return v if math.isfinite(v) else -math.inf


def choose_weights(
    select: Literal["best", "last", "ema"],
    state: TrainState,
    out: Path,
    *,
    min_epochs: int,
    select_metric: str,
    ema_decay: float | None,
    configured: str,
) -> tuple[Weights | Literal["best"], Path, str]:
    """Return which saved weights a run keeps, their file in ``out``, and why (one sentence).

    ``select`` is the effective choice (``ema`` without an average becomes ``last``);
    ``configured`` is what ``train.select`` said, for the sentence.
    """
    st = state
    if select == "best" and (out / "best.safetensors").exists() and st.best_epoch:
        if st.best_score is not None:
            what = "validation " + ("mean F1" if select_metric == "mean_f1" else "mIoU")
            score = f" {st.best_score:.4f}"
        else:  # no validation regions: the training loss decided
            what, score = "training loss", f" {st.best_loss:.4f}" if st.best_loss is not None else ""
        src = "moving average" if st.best_weights == "ema" else "raw weights"
        return (
            "best",
            out / "best.safetensors",
            f"train.select=best: the {src} of epoch {st.best_epoch} had the best {what}{score} "
            f"(epochs {min_epochs}..{st.epoch} were candidates)",
        )
    if select == "best":
        return "raw", out / "last.safetensors", "train.select=best but no epoch was validated; kept the last"
    if select == "ema" and ema_decay is not None:
        return (
            "ema",
            out / "ema.safetensors",
            (f"train.select=ema: the moving average of the weights (decay {ema_decay:g}) after epoch {st.epoch}"),
        )
    why = "train.select=last" if configured == "last" else "train.select=ema without ema_decay"
    return "raw", out / "last.safetensors", f"{why}: the weights of the last epoch, {st.epoch}"


def scores_summary(scores: Scores) -> dict[str, Any]:
    """Return the JSON summary of validation scores: OA, mIoU, mean F1 and per-class F1/IoU (classes present)."""
    return {
        "overall_accuracy": finite_or_none(scores.overall_accuracy),
        "miou": finite_or_none(scores.miou_reference_classes),
        "mean_f1": finite_or_none(scores.mean_f1_reference_classes),
        "kappa": finite_or_none(scores.kappa),
        "pixels": scores.pixels,
        "f1": {c.name: finite_or_none(c.f1) for c in scores.classes if c.reference_pixels > 0},
        "iou": {c.name: finite_or_none(c.iou) for c in scores.classes if c.reference_pixels > 0},
    }


def history_summary(state: TrainState, epoch: int, weights: str) -> dict[str, Any] | None:
    """Return the validation scores of ``weights`` at ``epoch`` as the history recorded them (a resumed run)."""
    prefix = "val" if weights == "raw" else "ema_val"
    for row in state.history:
        if row["epoch"] == epoch and row.get(f"{prefix}_miou") is not None:
            return {
                "overall_accuracy": row[f"{prefix}_oa"],
                "miou": row[f"{prefix}_miou"],
                "mean_f1": row[f"{prefix}_mean_f1"],
                "kappa": row[f"{prefix}_kappa"],
                "f1": {k: v for k, v in row[f"{prefix}_f1"].items() if v is not None},
                "iou": {k: v for k, v in row[f"{prefix}_iou"].items() if v is not None},
            }
    return None
