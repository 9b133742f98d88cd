"""Inference: batched forward passes (device, AMP, TTA), blend kernels and the streaming mosaic.

Importing :mod:`geopsp.inference.predict` or :mod:`geopsp.inference.mosaic` imports torch;
:mod:`geopsp.inference.blend` needs only NumPy.
"""

from __future__ import annotations

from geopsp import _lazy

_LAZY: dict[str, str] = {
    "KERNELS": "geopsp.inference.blend",
    "tile_weights": "geopsp.inference.blend",
    "Mosaicker": "geopsp.inference.mosaic",
    "Predictor": "geopsp.inference.predict",
    "resolve_device": "geopsp.device",
}

__all__ = ["KERNELS", "Mosaicker", "Predictor", "resolve_device", "tile_weights"]

__getattr__, __dir__ = _lazy.lazy_exports(__name__, _LAZY)
