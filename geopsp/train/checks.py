"""Checks of prepared training data: labeled pixels per class and split, and what to warn about.

:func:`check_training_data` counts the labeled pixels of every class in the training and the
validation regions (the labels under a region's ``exclude`` rectangles are not counted, so a
validation block never counts as training) and the labeled share of every scene used, and warns
with a :class:`~geopsp.errors.TrainingDataWarning` about

- a class of the class table with no training pixel (the model cannot learn it),
- a class with training pixels but none in validation (its IoU is never measured),
- a validation set of fewer than :data:`MIN_VAL_PIXELS` labeled pixels,
- a scene whose labels cover less than :data:`MIN_LABELED_FRACTION` of it.

:func:`~geopsp.train.datasets.prepare_data` does not warn by itself; the trainer and the dry
run call :func:`check_training_data` once and keep :meth:`DataReport.as_dict` in their summary.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from geopsp.errors import TrainingDataWarning
from geopsp.train.datasets import TrainingData
from geopsp.train.split import Region

__all__ = [
    "MIN_LABELED_FRACTION",
    "MIN_VAL_PIXELS",
    "DataReport",
    "check_training_data",
    "class_pixel_counts",
    "labeled_fractions",
]

MIN_VAL_PIXELS = 2000
"""Fewest labeled validation pixels that give usable metrics; below it the mIoU and the best epoch are noise."""

MIN_LABELED_FRACTION = 0.01
"""Least share of a scene its labels should cover; less usually means a wrong value_map, ignore_values or grid."""


def class_pixel_counts(data: TrainingData, regions: Sequence[Region]) -> NDArray[np.int64]:
    """Count the labeled pixels of every class in ``regions``.

    Pixels under a region's ``exclude`` rectangles, unlabeled pixels and nodata are not counted;
    a pixel in two regions counts twice.

    Parameters
    ----------
    data : TrainingData
        The prepared data (its readers give the labels).
    regions : sequence of Region
        Typically ``data.train`` or ``data.val``.

    Returns
    -------
    ndarray of int64, shape (classes,)
        In class-table (channel) order.
    """
    k = len(data.classes)
    ignore = data.mapping.ignore_index
    counts = np.zeros(k, dtype=np.int64)
    for reg in regions:
        lab = reg.crop_labels(data.readers[reg.scene].labels(), fill=ignore)
        lab = lab[(lab != ignore) & (lab < k)]
        counts += np.bincount(lab.astype(np.int64), minlength=k)[:k]
    return counts


def labeled_fractions(data: TrainingData, scenes: Sequence[int] | None = None) -> dict[str, float]:
    """Share of each scene's pixels that carry a label (not unlabeled, not nodata), by scene id.

    Parameters
    ----------
    data : TrainingData
        The prepared data.
    scenes : sequence of int, optional
        Scene indices; default: those of the training and validation regions.
    """
    if scenes is None:
        scenes = sorted({r.scene for r in data.train + data.val})
    out = {}
    for i in scenes:
        reader = data.readers[i]
        lab = reader.labels()
        labeled = np.count_nonzero(lab != data.mapping.ignore_index)
        out[reader.scene.id] = float(labeled / max(lab.size, 1))
    return out


@dataclass(frozen=True, slots=True)
class DataReport:
    """Labeled pixels per class and split, and labeled share per scene, of prepared training data.

    Attributes
    ----------
    classes : tuple of str
        Class names in channel order.
    train_pixels, val_pixels : tuple of int
        Labeled pixels per class in the training and the validation regions.
    labeled_fraction : mapping of str to float
        Scene id -> share of the scene's pixels that are labeled.
    warnings : tuple of str
        The warnings issued, in order.

    .. versionadded:: 0.2
    """

    classes: tuple[str, ...]
    train_pixels: tuple[int, ...]
    val_pixels: tuple[int, ...]
    labeled_fraction: Mapping[str, float]
    warnings: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for a run summary: per-class counts, totals, labeled shares and warnings."""
        return {
            "class_pixels": {
                name: {"train": t, "val": v}
                for name, t, v in zip(self.classes, self.train_pixels, self.val_pixels, strict=True)
            },
            "train_labeled_pixels": sum(self.train_pixels),
            "val_labeled_pixels": sum(self.val_pixels),
            "labeled_fraction": {k: round(v, 6) for k, v in self.labeled_fraction.items()},
            "warnings": list(self.warnings),
        }


def check_training_data(data: TrainingData) -> DataReport:
    """Count the labeled pixels of prepared data and warn about what will train or validate badly.

    Each warning is one line naming the class or scene and the fix, issued as a
    :class:`~geopsp.errors.TrainingDataWarning`. Validation checks are skipped when the split
    asks for no validation.

    Parameters
    ----------
    data : TrainingData
        From :func:`~geopsp.train.datasets.prepare_data`.

    Returns
    -------
    DataReport
    """
    train = class_pixel_counts(data, data.train)
    val = class_pixel_counts(data, data.val)
    fractions = labeled_fractions(data)
    messages: list[str] = []
    for c, info in enumerate(data.classes):
        label = f"class {info.id} {info.name!r}"
        if train[c] == 0:
            messages.append(
                f"{label} has no training pixels, so the model cannot learn it; label it in a training scene, "
                "train on a scene held out for validation that has it, or drop it from the class table"
            )
        elif data.val and val[c] == 0:
            messages.append(
                f"{label} has no validation pixels, so its IoU is never measured; set train.split.val_blocks "
                "(stratified blocks of every scene) or hold out a scene that has it"
            )
    total_val = int(val.sum())
    if data.val and total_val < MIN_VAL_PIXELS:
        messages.append(
            f"the validation set has only {total_val} labeled pixels (fewer than {MIN_VAL_PIXELS}), so its metrics "
            "and the best epoch are noise; hold out more (train.split.val_blocks, holdout, val_fraction or val_dates)"
        )
    for scene_id, fraction in fractions.items():
        if fraction < MIN_LABELED_FRACTION:
            messages.append(
                f"scene {scene_id}: labels cover {fraction:.2%} of it (less than {MIN_LABELED_FRACTION:.0%}); check "
                "train.data.value_map, ignore_values and the classes, and that the labels lie on the scene"
            )
    for message in messages:
        warnings.warn(message, TrainingDataWarning, stacklevel=2)
    return DataReport(
        classes=tuple(data.classes.names),
        train_pixels=tuple(int(v) for v in train),
        val_pixels=tuple(int(v) for v in val),
        labeled_fraction=fractions,
        warnings=tuple(messages),
    )
