"""Inference: the plan, forward passes, blend kernels, the mosaic, the tile loop, the summary.

Importing :mod:`geopsp.inference.predict` imports torch; :mod:`geopsp.inference.mosaic`
imports it only when a Mosaicker uses the torch backend (its NumPy backend never does);
:mod:`geopsp.inference.blend`, :mod:`geopsp.inference.plan`, :mod:`geopsp.inference.areas`,
:mod:`geopsp.inference.area_table` and :mod:`geopsp.inference.summary` do not; nor do
:mod:`geopsp.inference.ort` (ONNX Runtime) and :mod:`geopsp.inference.runtime` (which
runtime runs a model).
"""

from __future__ import annotations

from geopsp import _lazy

_LAZY: dict[str, str] = {
    "KERNELS": "geopsp.inference.blend",
    "tile_weights": "geopsp.inference.blend",
    "Mosaicker": "geopsp.inference.mosaic",
    "Predictor": "geopsp.inference.predict",
    "resolve_device": "geopsp.device",
    "OutputSet": "geopsp.inference.plan",
    "PredictionPlan": "geopsp.inference.plan",
    "check_inputs": "geopsp.inference.plan",
    "output_set": "geopsp.inference.plan",
    "plan_prediction": "geopsp.inference.plan",
    "resolve_tiling": "geopsp.inference.plan",
    "RunSummary": "geopsp.inference.summary",
    "ClassAreas": "geopsp.inference.area_table",
    "class_areas": "geopsp.inference.areas",
    "sum_class_areas": "geopsp.inference.area_table",
    "OnnxModel": "geopsp.inference.ort",
    "OrtPredictor": "geopsp.inference.ort",
    "choose_runtime": "geopsp.inference.runtime",
    "make_predictor": "geopsp.inference.runtime",
}

__all__ = [
    "ClassAreas",
    "KERNELS",
    "Mosaicker",
    "OnnxModel",
    "OrtPredictor",
    "OutputSet",
    "PredictionPlan",
    "Predictor",
    "RunSummary",
    "check_inputs",
    "choose_runtime",
    "class_areas",
    "make_predictor",
    "output_set",
    "plan_prediction",
    "resolve_device",
    "resolve_tiling",
    "sum_class_areas",
    "tile_weights",
]

__getattr__, __dir__ = _lazy.lazy_exports(__name__, _LAZY)
