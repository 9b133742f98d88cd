"""Cost of a model: FLOPs per pixel (torch's FlopCounterMode) and parameter counts.

FlopCounterMode counts the FLOPs of convolutions and matrix products only (BatchNorm, ReLU,
pooling and interpolation are not counted) and counts one multiply-add as 2 FLOPs. The model
is run on PyTorch's ``meta`` device, so measuring even a large model takes no memory or time
beyond building it.
"""

from __future__ import annotations

from torch import nn

from geopsp.model.meta import ModelSpec

__all__ = ["count_parameters", "flops_per_pixel", "model_flops"]


def model_flops(model: nn.Module, *, in_channels: int, height: int = 512, width: int | None = None) -> int:
    """Count the FLOPs of one eval-mode forward pass of ``model`` on a single image.

    Parameters
    ----------
    model : torch.nn.Module
        Any module taking ``(1, in_channels, height, width)``. It is moved to the ``meta``
        device and left in eval mode; pass a throwaway copy.
    in_channels : int
        Input bands.
    height, width : int
        Input size in pixels (``width`` defaults to ``height``).

    Returns
    -------
    int
        Total FLOPs (a multiply-add counts 2) of convolutions and matrix products.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    w = height if width is None else width
    model = model.to("meta").eval()
    x = torch.zeros(1, in_channels, height, w, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def flops_per_pixel(spec: ModelSpec, size: int = 512) -> float:
    """FLOPs per input pixel of the eval-mode model ``spec`` describes, at ``size x size``.

    Parameters
    ----------
    spec : ModelSpec
        The model; ``encoder_weights`` is ignored (the structure alone sets the cost).
    size : int, default 512
        Square input edge in pixels.

    Returns
    -------
    float
        FLOPs (multiply-add = 2) per input pixel. The paper's ResNet-50 PSPNet at output stride
        8 measures about 1.35e6 at 512 x 512.
    """
    import torch

    from geopsp.model.registry import build_model

    with torch.device("meta"):
        model = build_model(spec.replace(encoder_weights=None))
    return model_flops(model, in_channels=spec.in_channels, height=size) / float(size * size)


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Count the parameter values in ``model`` (buffers such as BN running stats excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
