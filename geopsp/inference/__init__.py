"""Inference: batched forward passes (device, AMP, TTA), blend kernels and the streaming mosaic.

Importing :mod:`geopsp.inference.predict` or :mod:`geopsp.inference.mosaic` imports torch;
:mod:`geopsp.inference.blend` needs only NumPy.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY: dict[str, str] = {
    "KERNELS": "geopsp.inference.blend",
    "tile_weights": "geopsp.inference.blend",
    "Mosaicker": "geopsp.inference.mosaic",
    "Predictor": "geopsp.inference.predict",
    "resolve_device": "geopsp.inference.predict",
}

__all__ = ["KERNELS", "Mosaicker", "Predictor", "resolve_device", "tile_weights"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'geopsp.inference' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
