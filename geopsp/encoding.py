"""How a probability is stored: the one encoding of the probability raster and the QA layers.

The probability raster holds the winning class's probability ``p`` as uint8
``round(p * 255)``, at least 1, and 0 (nodata) where there is no probability: the class is
nodata there, or ``p`` is NaN. The winning probability of ``K`` classes is at least ``1/K``,
so 0 is free for nodata and 1.0 keeps full resolution.

:func:`encode_probability` takes NumPy arrays (the writer of :mod:`geopsp.io.raster`, the
mosaic's NumPy backend) and torch tensors (the mosaic encodes on the model's device, so only
uint8 rows leave it), written once against the array API (``array-api-compat``). This module
imports neither torch nor any I/O library, so ``io`` and ``inference`` both import it without
importing each other, and NumPy arrays are encoded without torch.

The QA layers (:data:`QA_LAYERS`) are uint8 rasters of values in 0..1 stored the same way:
``max(round(x * 255), 1)``, 0 where the class is nodata. So every layer reads back as
``stored / 255`` (the band's GDAL scale), and 1 stands for anything below 1.5/255:

- ``probability``: the confidence, the blended probability of the winning class;
- ``margin``: the winning probability minus the runner-up's (0 where two classes tie);
- ``entropy``: the blended probabilities' entropy over ``ln K`` (0: one class is certain,
  1: all ``K`` equally likely);
- ``disagreement``: the fraction of the tiles covering a pixel whose own most probable class
  is not the blended one (0 where one tile covers it, or all agree; before blending).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal, overload

import array_api_compat
import numpy as np
from numpy.typing import ArrayLike, NDArray

if TYPE_CHECKING:
    import torch

__all__ = [
    "PROBABILITY_NODATA",
    "PROBABILITY_SCALE",
    "QA_DESCRIPTIONS",
    "QA_LAYERS",
    "QaLayer",
    "encode_probability",
    "qa_order",
]

PROBABILITY_SCALE = 255
"""A probability ``p`` is stored as ``max(round(p * PROBABILITY_SCALE), 1)``."""

PROBABILITY_NODATA = 0
"""Stored where there is no probability (the class is nodata there, or ``p`` is NaN)."""

QaLayer = Literal["probability", "margin", "entropy", "disagreement"]
"""The name of a QA layer (also its key among a run's outputs)."""

QA_LAYERS: tuple[QaLayer, ...] = ("probability", "margin", "entropy", "disagreement")
"""Every QA layer, in the order they are computed, written and listed."""

QA_DESCRIPTIONS: dict[str, str] = {
    "probability": "confidence: blended probability of the winning class",
    "margin": "winning probability minus the runner-up's",
    "entropy": "entropy of the blended probabilities over ln K",
    "disagreement": "fraction of the overlapping tiles whose own class differs",
}
"""What each QA layer holds, in words (band descriptions, styles, docs)."""


def qa_order(layers: Iterable[str]) -> tuple[QaLayer, ...]:
    """Return ``layers`` without repeats, in :data:`QA_LAYERS` order.

    Raises
    ------
    ValueError
        For a name that is not a QA layer.

    Examples
    --------
    >>> qa_order(["entropy", "probability", "entropy"])
    ('probability', 'entropy')
    """
    wanted = set(layers)
    unknown = sorted(wanted - set(QA_LAYERS))
    if unknown:
        raise ValueError(f"unknown QA layer {unknown[0]!r}; choose from {', '.join(QA_LAYERS)}")
    return tuple(name for name in QA_LAYERS if name in wanted)


@overload
def encode_probability(p: torch.Tensor, *, invalid: torch.Tensor | None = None) -> torch.Tensor: ...


@overload
def encode_probability(p: ArrayLike, *, invalid: ArrayLike | None = None) -> NDArray[np.uint8]: ...


def encode_probability(p: Any, *, invalid: Any = None) -> Any:
    """Encode probabilities in 0..1 as the probability raster's uint8 values.

    Parameters
    ----------
    p : ndarray or torch.Tensor of float
        Probabilities, any shape; values are clipped to 0..1.
    invalid : ndarray or torch.Tensor of bool, optional
        Same shape; True marks pixels without a probability (nodata).

    Returns
    -------
    ndarray of uint8, or a uint8 tensor on ``p``'s device
        ``round(p * 255)`` but at least 1; :data:`PROBABILITY_NODATA` (0) where ``invalid``
        is True or ``p`` is NaN.

    Examples
    --------
    >>> encode_probability(np.array([0.0, 0.001, 0.5, 1.0, np.nan])).tolist()
    [1, 1, 128, 255, 0]
    >>> encode_probability(np.array([0.8, 0.8]), invalid=np.array([False, True])).tolist()
    [204, 0]
    """
    if not array_api_compat.is_torch_array(p):  # cheap: never imports torch
        p = np.asarray(p, dtype=np.float32)
        invalid = None if invalid is None else np.asarray(invalid, dtype=np.bool_)
    xp = array_api_compat.array_namespace(p)
    nodata = xp.isnan(p)
    if invalid is not None:
        nodata = nodata | invalid
    q = xp.clip(xp.round(xp.clip(p, 0.0, 1.0) * PROBABILITY_SCALE), 1.0, float(PROBABILITY_SCALE))
    q = xp.where(nodata, xp.asarray(PROBABILITY_NODATA, dtype=q.dtype, device=array_api_compat.device(q)), q)
    return xp.astype(q, xp.uint8)
