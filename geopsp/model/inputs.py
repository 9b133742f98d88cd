"""What the model sees: normalized bands, and one fixed value wherever a pixel is not valid.

Training and prediction both call :func:`model_input`, on the host (NumPy) and on the device
(torch), so the model is fed the same numbers for the same pixels whatever path they take:

* a valid pixel becomes ``(raw - offset) / scale`` (then clipped, for percentile scaling), in
  float32, exactly as :meth:`geopsp.model.meta.Normalization.apply`;
* a pixel that is not valid (nodata, masked, transparent, NaN or ±inf in any band; see
  :mod:`geopsp.io.scene`) becomes :data:`MODEL_FILL` in every band, whatever number the file
  stores there, so a valid pixel's class may depend on its valid neighbours, never on the
  value stored under nodata;
* a value that is still not finite after scaling (a finite float so large that the scaling
  overflows) becomes :data:`MODEL_FILL` too: nothing non-finite ever reaches the model, where
  one NaN would spread through the pyramid pooling's global average to the whole tile.

The NumPy path needs no torch; the torch path gives the same bits (tested).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, overload

import numpy as np
from numpy.typing import NDArray

from geopsp.model.meta import Normalization

if TYPE_CHECKING:
    import torch

__all__ = ["MODEL_FILL", "model_input"]

MODEL_FILL = 0.0
"""Normalized value of every band at invalid pixels: the training mean under mean/std scaling."""


@overload
def model_input(
    raw: NDArray[Any], valid: NDArray[np.bool_] | None, norm: Normalization, *, out: NDArray[np.float32] | None = None
) -> NDArray[np.float32]: ...


@overload
def model_input(raw: torch.Tensor, valid: torch.Tensor | None, norm: Normalization) -> torch.Tensor: ...


def model_input(raw: Any, valid: Any, norm: Normalization, *, out: Any = None) -> Any:
    """Normalize raw pixels and put :data:`MODEL_FILL` where they are not valid.

    Parameters
    ----------
    raw : ndarray or torch.Tensor, shape (C, H, W) or (N, C, H, W)
        Raw pixel values in the scene's units (any integer or float dtype).
    valid : ndarray or torch.Tensor of bool, shape (H, W) or (N, H, W), optional
        False where the pixel is not valid; ``None``: every pixel is (non-finite values are
        still filled).
    norm : Normalization
        The bundle's per-band scaling.
    out : ndarray of float32, optional
        NumPy only: where to write the result (``raw``'s shape), e.g. a slot of a reused batch
        buffer; the bits are those of a new array.

    Returns
    -------
    ndarray or torch.Tensor of float32
        The shape of ``raw``, on the tensor's device; finite everywhere.

    Examples
    --------
    >>> n = Normalization.from_stats([10.0], [2.0])
    >>> raw = np.array([[[12.0, 65535.0, np.nan]]], dtype="float32")
    >>> model_input(raw, np.array([[True, False, True]]), n).tolist()
    [[[1.0, 0.0, 0.0]]]
    """
    if isinstance(raw, np.ndarray):
        return _numpy_input(raw, valid, norm, out)
    return _torch_input(raw, valid, norm)


def _numpy_input(
    raw: NDArray[Any], valid: NDArray[np.bool_] | None, norm: Normalization, out: NDArray[np.float32] | None
) -> NDArray[np.float32]:
    with np.errstate(over="ignore", invalid="ignore"):  # what overflows is filled below
        out = norm.apply(raw, out=out)
    if valid is not None and not valid.all():
        np.copyto(out, np.float32(MODEL_FILL), where=~np.expand_dims(valid, -3))
    if raw.dtype.kind in "fc":  # integers scale to finite values; floats may not
        finite = np.isfinite(out)
        if not finite.all():
            np.copyto(out, np.float32(MODEL_FILL), where=~finite)
    return out


@functools.lru_cache(maxsize=16)
def _device_constants(norm: Normalization, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Offsets, scales and the fill on a device, made once (a copy per batch would sync a GPU)."""
    import torch

    def put(values: Any) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32, device=device)

    return put(norm.offset), put(norm.scale), put(MODEL_FILL)


def _torch_input(raw: torch.Tensor, valid: torch.Tensor | None, norm: Normalization) -> torch.Tensor:
    import torch

    offset, scale, fill = _device_constants(norm, raw.device)
    shape = [1] * raw.ndim
    shape[-3] = norm.bands
    x = (raw.to(torch.float32) - offset.view(shape)) / scale.view(shape)
    if norm.clip is not None:
        x = x.clamp_(norm.clip[0], norm.clip[1])
    if valid is not None:
        x = torch.where(valid.unsqueeze(-3), x, fill)
    if raw.dtype.is_floating_point or raw.dtype.is_complex:
        x = torch.where(torch.isfinite(x), x, fill)
    return x
