"""Confusion matrices and the accuracy measures derived from them.

Rows of a confusion matrix are the reference classes, columns the predicted ones (remote
sensing's convention: a row sum is what the reference holds, a column sum what the map shows).
A class that neither side contains is reported as ``absent`` with NaN scores: it is not counted
as a perfect class in the means.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from geopsp.classes import ClassTable

__all__ = ["ClassScores", "ConfusionMatrix", "Scores", "scores_from_confusion"]

Status = Literal["present", "absent", "not_in_reference", "not_predicted"]


class ConfusionMatrix:
    """A streamed confusion matrix over ``num_classes`` classes plus an "other" prediction column.

    Parameters
    ----------
    num_classes : int
        Number of classes ``K``; class indices are ``0 .. K-1``.

    Notes
    -----
    ``counts`` has shape ``(K, K + 1)``: column ``K`` counts reference pixels whose predicted
    value is in no class table (they are errors, not ignored). Indices ``>= K`` in the reference,
    and the ``ignore`` value in either input, are skipped. Memory is independent of image size:
    each :meth:`update` is one :func:`numpy.bincount`.

    Examples
    --------
    >>> cm = ConfusionMatrix(2)
    >>> cm.update(np.array([0, 0, 1, 255]), np.array([0, 1, 1, 0]), ignore=255)
    >>> cm.counts[:, :2].tolist()
    [[1, 1], [0, 1]]
    """

    def __init__(self, num_classes: int) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.counts: NDArray[np.int64] = np.zeros((num_classes, num_classes + 1), dtype=np.int64)

    def update(
        self,
        reference: NDArray[Any],
        prediction: NDArray[Any],
        *,
        ignore: int | None = None,
        valid: NDArray[np.bool_] | None = None,
    ) -> None:
        """Add the pixels of one block.

        Parameters
        ----------
        reference, prediction : ndarray of int
            Class indices (``0 .. K-1``), same shape. Reference values ``>= K`` are skipped;
            prediction values ``>= K`` go to the "other" column.
        ignore : int, optional
            Value skipped in either array (the ignore index / nodata).
        valid : ndarray of bool, optional
            Only these pixels count.
        """
        ref = np.asarray(reference).ravel().astype(np.int64, copy=False)
        pred = np.asarray(prediction).ravel().astype(np.int64, copy=False)
        if ref.shape != pred.shape:
            raise ValueError(f"reference and prediction differ in size: {ref.shape} vs {pred.shape}")
        k = self.num_classes
        keep = (ref >= 0) & (ref < k) & (pred >= 0)
        if ignore is not None:
            keep &= pred != ignore
        if valid is not None:
            keep &= np.asarray(valid, dtype=bool).ravel()
        ref = ref[keep]
        pred = np.minimum(pred[keep], k)
        self.counts += np.bincount(ref * (k + 1) + pred, minlength=k * (k + 1)).reshape(k, k + 1)

    def merge(self, other: ConfusionMatrix) -> None:
        """Add another matrix of the same size."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes}-class and {self.num_classes}-class matrices")
        self.counts += other.counts

    @property
    def total(self) -> int:
        """Pixels counted."""
        return int(self.counts.sum())

    def scores(self, classes: ClassTable | Sequence[str] | None = None) -> Scores:
        """Compute the scores; see :func:`scores_from_confusion`."""
        return scores_from_confusion(self.counts, classes)


@dataclass(frozen=True, slots=True)
class ClassScores:
    """Scores of one class; NaN where undefined (see ``status``)."""

    index: int
    id: int
    name: str
    iou: float
    f1: float
    producer_accuracy: float
    user_accuracy: float
    reference_pixels: int
    predicted_pixels: int
    true_positives: int
    status: Status

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; NaN becomes None."""
        return {
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "iou": _json_float(self.iou),
            "f1": _json_float(self.f1),
            "producer_accuracy": _json_float(self.producer_accuracy),
            "user_accuracy": _json_float(self.user_accuracy),
            "reference_pixels": self.reference_pixels,
            "predicted_pixels": self.predicted_pixels,
            "true_positives": self.true_positives,
        }


@dataclass(frozen=True, slots=True)
class Scores:
    """Accuracy of a classification against a reference.

    Attributes
    ----------
    classes : tuple of ClassScores
        Per class, in class-table order.
    miou : float
        Mean IoU over the classes that are not absent.
    mean_f1 : float
        Mean F1 over the classes that are not absent.
    overall_accuracy : float
        Correct pixels / counted pixels.
    kappa : float
        Cohen's kappa.
    pixels : int
        Pixels counted.
    unmapped_predictions : int
        Counted pixels whose predicted value is in no class table (errors).
    confusion : ndarray of int64, shape (K, K + 1)
        Rows reference, columns prediction, last column "other".
    """

    classes: tuple[ClassScores, ...]
    miou: float
    mean_f1: float
    overall_accuracy: float
    kappa: float
    pixels: int
    unmapped_predictions: int
    confusion: NDArray[np.int64]

    @property
    def miou_reference_classes(self) -> float:
        """Mean IoU over the classes present in the reference only (as many papers report it)."""
        v = [c.iou for c in self.classes if c.reference_pixels > 0]
        return float(np.mean(v)) if v else math.nan

    @property
    def mean_f1_reference_classes(self) -> float:
        """Mean F1 over the classes present in the reference only."""
        v = [c.f1 for c in self.classes if c.reference_pixels > 0]
        return float(np.mean(v)) if v else math.nan

    @property
    def iou(self) -> dict[str, float]:
        """Class name -> IoU."""
        return {c.name: c.iou for c in self.classes}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN as None, the confusion matrix as nested lists)."""
        k = len(self.classes)
        return {
            "miou": _json_float(self.miou),
            "mean_f1": _json_float(self.mean_f1),
            "miou_reference_classes": _json_float(self.miou_reference_classes),
            "mean_f1_reference_classes": _json_float(self.mean_f1_reference_classes),
            "overall_accuracy": _json_float(self.overall_accuracy),
            "kappa": _json_float(self.kappa),
            "pixels": self.pixels,
            "unmapped_predictions": self.unmapped_predictions,
            "absent_classes": [c.name for c in self.classes if c.status == "absent"],
            "classes": [c.to_dict() for c in self.classes],
            "confusion_matrix": {
                "rows": "reference",
                "columns": "prediction",
                "labels": [c.name for c in self.classes],
                "counts": self.confusion[:, :k].tolist(),
                "other": self.confusion[:, k].tolist(),
            },
        }


def _json_float(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


def _div(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def scores_from_confusion(counts: NDArray[Any], classes: ClassTable | Sequence[str] | None = None) -> Scores:
    """Per-class and overall scores from a confusion matrix.

    Parameters
    ----------
    counts : ndarray, shape (K, K) or (K, K + 1)
        Rows reference, columns prediction (an optional last column counts predictions in no class).
    classes : ClassTable or sequence of str, optional
        Names (and ids) of the ``K`` classes; default ``class_0 ...``.

    Returns
    -------
    Scores
        IoU = TP / (TP + FP + FN); F1 = 2 TP / (2 TP + FP + FN); producer's accuracy =
        TP / reference pixels (recall); user's accuracy = TP / predicted pixels (precision).
        A class absent from both sides has NaN scores and status ``"absent"``; one only in the
        prediction has IoU 0, F1 0 and NaN producer's accuracy (``"not_in_reference"``); one
        only in the reference has IoU 0 and F1 0 (``"not_predicted"``). Means skip NaN.

    Examples
    --------
    >>> s = scores_from_confusion(np.array([[3, 1], [0, 4]]))
    >>> round(s.classes[0].iou, 3), round(s.overall_accuracy, 3)
    (0.75, 0.875)
    """
    cm = np.asarray(counts, dtype=np.int64)
    k = cm.shape[0]
    if cm.ndim != 2 or cm.shape[1] not in (k, k + 1):
        raise ValueError(f"confusion matrix must be (K, K) or (K, K + 1), got {cm.shape}")
    if cm.shape[1] == k:
        cm = np.concatenate([cm, np.zeros((k, 1), dtype=np.int64)], axis=1)
    if classes is None:
        ids, names = list(range(k)), [f"class_{i}" for i in range(k)]
    elif isinstance(classes, ClassTable):
        ids, names = classes.ids, classes.names
    else:
        ids, names = list(range(k)), [str(n) for n in classes]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for a {k}-class confusion matrix")
    total = int(cm.sum())
    ref = cm.sum(axis=1)
    pred = cm[:, :k].sum(axis=0)
    tp = np.diag(cm[:, :k])
    out = []
    for i in range(k):
        r, p, t = int(ref[i]), int(pred[i]), int(tp[i])
        status: Status
        if r == 0 and p == 0:
            status = "absent"
        elif r == 0:
            status = "not_in_reference"
        elif p == 0:
            status = "not_predicted"
        else:
            status = "present"
        out.append(
            ClassScores(
                index=i,
                id=int(ids[i]),
                name=names[i],
                iou=_div(t, r + p - t),
                f1=_div(2 * t, r + p),
                producer_accuracy=_div(t, r),
                user_accuracy=_div(t, p),
                reference_pixels=r,
                predicted_pixels=p,
                true_positives=t,
                status=status,
            )
        )
    ious = [c.iou for c in out if not math.isnan(c.iou)]
    f1s = [c.f1 for c in out if not math.isnan(c.f1)]
    oa = _div(float(tp.sum()), total)
    if total > 0:
        pe = float((ref.astype(np.float64) * pred.astype(np.float64)).sum()) / float(total) ** 2
        kappa = (oa - pe) / (1.0 - pe) if pe < 1.0 else (1.0 if oa == 1.0 else math.nan)
    else:
        kappa = math.nan
    return Scores(
        classes=tuple(out),
        miou=float(np.mean(ious)) if ious else math.nan,
        mean_f1=float(np.mean(f1s)) if f1s else math.nan,
        overall_accuracy=oa,
        kappa=kappa,
        pixels=total,
        unmapped_predictions=int(cm[:, k].sum()),
        confusion=cm,
    )
