"""Models: the PSPNet, the architecture registry and presets, FLOP counts, model bundles, pretrained encoders.

The metadata classes (:mod:`geopsp.model.meta`) are plain Python; everything that needs torch
is imported lazily on first use, so ``from geopsp.model.meta import BundleMeta`` (and reading a
bundle's header) never imports torch.
"""

from __future__ import annotations

from geopsp import _lazy
from geopsp.model.meta import FORMAT_VERSION, BundleMeta, ModelSpec, Normalization

_LAZY: dict[str, str] = {
    "ARCHITECTURES": "geopsp.model.registry",
    "PRESETS": "geopsp.model.registry",
    "build_model": "geopsp.model.registry",
    "spec_from_preset": "geopsp.model.registry",
    "PSPNet": "geopsp.model.pspnet",
    "PretrainedInfo": "geopsp.model.pretrained",
    "load_encoder_weights": "geopsp.model.pretrained",
    "fetch_weights": "geopsp.model.download",
    "count_parameters": "geopsp.model.flops",
    "flops_per_pixel": "geopsp.model.flops",
    "model_flops": "geopsp.model.flops",
    "Bundle": "geopsp.model.bundle",
    "inspect_bundle": "geopsp.model.bundle",
    "load_bundle": "geopsp.model.bundle",
    "read_bundle_meta": "geopsp.model.bundle",
    "resolve_model": "geopsp.model.bundle",
    "save_bundle": "geopsp.model.bundle",
    "export_onnx": "geopsp.model.onnx_export",
    "quantize_onnx": "geopsp.model.quantize",
    "OnnxInfo": "geopsp.model.onnx_meta",
    "mlm_item": "geopsp.model.stac_mlm",
}

__all__ = [
    "ARCHITECTURES",
    "Bundle",
    "BundleMeta",
    "FORMAT_VERSION",
    "ModelSpec",
    "Normalization",
    "OnnxInfo",
    "PRESETS",
    "PSPNet",
    "PretrainedInfo",
    "build_model",
    "count_parameters",
    "export_onnx",
    "fetch_weights",
    "flops_per_pixel",
    "inspect_bundle",
    "load_bundle",
    "load_encoder_weights",
    "mlm_item",
    "model_flops",
    "quantize_onnx",
    "read_bundle_meta",
    "resolve_model",
    "save_bundle",
    "spec_from_preset",
]

__getattr__, __dir__ = _lazy.lazy_exports(__name__, _LAZY)
