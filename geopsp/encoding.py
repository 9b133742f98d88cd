"""How a probability is stored: the one encoding of the probability raster.

The probability raster holds the winning class's probability ``p`` as uint8
``round(p * 255)``, at least 1, and 0 (nodata) where there is no probability: the class is
nodata there, or ``p`` is NaN. The winning probability of ``K`` classes is at least ``1/K``,
so 0 is free for nodata and 1.0 keeps full resolution.

:func:`encode_probability` takes NumPy arrays (the writer of :mod:`geopsp.io.raster`, the
mosaic's NumPy backend) and torch tensors (the mosaic encodes on the model's device, so only
uint8 rows leave it), written once against the array API (``array-api-compat``). This module
imports neither torch nor any I/O library, so ``io`` and ``inference`` both import it without
importing each other, and NumPy arrays are encoded without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, overload

import array_api_compat
import numpy as np
from numpy.typing import ArrayLike, NDArray

if TYPE_CHECKING:
    import torch

__all__ = ["PROBABILITY_NODATA", "PROBABILITY_SCALE", "encode_probability"]

PROBABILITY_SCALE = 255
"""A probability ``p`` is stored as ``max(round(p * PROBABILITY_SCALE), 1)``."""

PROBABILITY_NODATA = 0
"""Stored where there is no probability (the class is nodata there, or ``p`` is NaN)."""


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
