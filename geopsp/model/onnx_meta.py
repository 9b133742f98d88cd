"""The metadata of an exported ONNX model: geopsp's own keys and the keys Deepness/GeoDeep read.

An ONNX model written by :func:`geopsp.model.onnx_export.export_onnx` carries, in its
``metadata_props`` (string keys, string values, every value JSON-encoded):

geopsp's keys
    ``format`` (``"geopsp-onnx"``); ``geopsp``: the whole bundle metadata
    (:meth:`BundleMeta.to_dict() <geopsp.model.meta.BundleMeta.to_dict>`: class table with colours,
    bands and their names, input dtype, normalization, tile size and overlap, pixel size,
    training provenance); ``geopsp_onnx``: the graph's contract (:class:`OnnxInfo`: its fixed
    tile size, the reflection margin inside it, fp32 or int8, the bundle it came from, the
    torch-vs-ONNX check of the export, the int8 agreement); ``crs`` (the training data's CRS, a
    hint) and ``pixel_size``.

The keys of the Deepness QGIS plugin (and GeoDeep)
    ``model_type`` (``"Segmentor"``), ``class_names`` (``{"0": name, ...}`` by output channel,
    consecutive), ``resolution`` (cm/px), ``tiles_size`` and ``tile_size`` (the docs and the
    plugin's code spell it differently), ``tiles_overlap`` (percent of the tile),
    ``standardization_mean`` and ``standardization_std`` (in 0-1 units: the plugin divides uint8
    pixels by 255 first). They are written only when the model can run there as it does in
    geopsp: uint8 input, the scene's bands 1..N in order, mean/std scaling without clipping,
    a metric CRS. Otherwise :func:`deepness_keys` says why, in one line.

The graph: input ``input``, float32 ``(N, C, T, T)``, the bands already normalized
(:func:`geopsp.model.inputs.model_input`); output ``probabilities``, float32 ``(N, K, T, T)``,
softmax over the classes. The reflection margin (``predict.margin_px``) is inside the graph,
so ``T`` is the prediction tile itself.

This module imports neither torch nor onnx.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from geopsp.errors import CheckpointError
from geopsp.model.meta import BundleMeta

__all__ = [
    "AGREEMENT_GATE",
    "DEEPNESS_KEYS",
    "ONNX_FORMAT",
    "OnnxInfo",
    "deepness_keys",
    "onnx_metadata",
    "parse_onnx_metadata",
]

ONNX_FORMAT = "geopsp-onnx"
"""Value of the ``format`` metadata key that marks a geopsp ONNX export."""

INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"

AGREEMENT_GATE = 0.99
"""Least share of valid pixels on which an int8 model must give the fp32 model's class."""

DEEPNESS_KEYS = (
    "model_type",
    "class_names",
    "resolution",
    "tiles_size",
    "tile_size",
    "tiles_overlap",
    "standardization_mean",
    "standardization_std",
)
"""The Deepness/GeoDeep keys :func:`deepness_keys` writes when the model fits their contract."""

_REQUIRED = ("format", "geopsp", "geopsp_onnx")


@dataclass(frozen=True, slots=True)
class OnnxInfo:
    """The contract of one exported graph (the ``geopsp_onnx`` metadata key).

    Attributes
    ----------
    tile_size : int
        The graph's fixed input edge ``T`` (the prediction tile).
    margin_px : int
        Reflection margin added and cropped inside the graph (``predict.margin_px``).
    precision : {"fp32", "int8"}
    opset : int
    bundle_sha256 : str or None
        The digest of the bundle it was exported from.
    geopsp_version : str
    created : str
        ISO time of the export.
    check : dict
        The export check: ``agreement`` (share of pixels of a check batch where ONNX Runtime
        gives torch's class), ``max_abs_diff`` (of the probabilities), ``pixels``.
    quantization : dict
        For int8 (:mod:`geopsp.model.quantize`): ``agreement`` with the fp32 model on the valid
        pixels of check tiles of the calibration scenes, ``pixels``, ``scenes``,
        ``calibration_tiles``, ``check_tiles``, ``check``, ``method``, ``excluded`` (nodes kept
        in fp32), ``per_channel``, ``reduce_range``, ``trials``.
    deepness : str
        ``"compatible"``, or why the Deepness keys were left out.
    """

    tile_size: int
    margin_px: int
    precision: Literal["fp32", "int8"] = "fp32"
    opset: int = 18
    bundle_sha256: str | None = None
    geopsp_version: str = ""
    created: str = ""
    check: dict[str, Any] = field(default_factory=dict)
    quantization: dict[str, Any] = field(default_factory=dict)
    deepness: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str) -> OnnxInfo:
        """Build from the ``geopsp_onnx`` key.

        Raises
        ------
        CheckpointError
            When a field is missing or malformed.
        """
        try:
            precision = str(data.get("precision", "fp32"))
            if precision not in ("fp32", "int8"):
                raise ValueError(f"precision {precision!r}")
            return cls(
                tile_size=int(data["tile_size"]),
                margin_px=int(data["margin_px"]),
                precision=precision,  # type: ignore[arg-type]
                opset=int(data.get("opset", 18)),
                bundle_sha256=data.get("bundle_sha256"),
                geopsp_version=str(data.get("geopsp_version", "")),
                created=str(data.get("created", "")),
                check=dict(data.get("check") or {}),
                quantization=dict(data.get("quantization") or {}),
                deepness=str(data.get("deepness", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(
                f"{source}: malformed geopsp_onnx metadata ({exc}); re-export with geopsp model export"
            ) from exc

    def replace(self, **changes: Any) -> OnnxInfo:
        """Return a copy with fields replaced."""
        return OnnxInfo(**{**self.to_dict(), **changes})

    @property
    def agreement(self) -> float | None:
        """The stored int8-vs-fp32 agreement (None for fp32 models)."""
        value = self.quantization.get("agreement")
        return None if value is None else float(value)


def _crs_units_in_metres(crs: str | None) -> bool | None:
    """Tell whether a CRS is projected in metres: True, False for anything else, None when unknown."""
    if not crs:
        return None
    try:
        from rasterio.crs import CRS

        parsed = CRS.from_user_input(crs)
    except Exception:  # an unparseable hint: unknown units
        return None
    if not parsed.is_projected:
        return False
    factor = parsed.linear_units_factor[1] if parsed.linear_units_factor else None
    return factor is not None and math.isclose(float(factor), 1.0)


def deepness_keys(meta: BundleMeta, tile_size: int) -> tuple[dict[str, Any], str | None]:
    """Return the Deepness/GeoDeep metadata of a model, or why it cannot run there as in geopsp.

    Parameters
    ----------
    meta : BundleMeta
    tile_size : int
        The graph's fixed tile edge.

    Returns
    -------
    (dict, str or None)
        The keys and their (not yet JSON-encoded) values, and ``None``; or ``{}`` and the reason.

    """
    norm = meta.normalization
    if meta.input_dtype != "uint8":
        return {}, f"its input is {meta.input_dtype}; Deepness feeds uint8 pixels divided by 255"
    if tuple(meta.bands) != tuple(range(1, len(meta.bands) + 1)):
        return {}, f"it reads bands {list(meta.bands)}; Deepness feeds the first {len(meta.bands)} bands in order"
    if norm.clip is not None:
        return {}, f"its {norm.method} scaling clips to {list(norm.clip)}; Deepness only standardizes (no clip)"
    metres = _crs_units_in_metres(meta.provenance.get("crs"))
    keys: dict[str, Any] = {
        "model_type": "Segmentor",
        "class_names": {str(i): c.name for i, c in enumerate(meta.classes)},
        "tiles_size": int(tile_size),
        "tile_size": int(tile_size),
        "tiles_overlap": round(100 * meta.overlap / meta.tile_size) if meta.tile_size else 0,
        "standardization_mean": [o / 255.0 for o in norm.offset],
        "standardization_std": [s / 255.0 for s in norm.scale],
    }
    if meta.pixel_size is not None and metres is not False:
        keys["resolution"] = round(100.0 * float(meta.pixel_size), 4)  # cm per pixel
    return keys, None


def onnx_metadata(meta: BundleMeta, info: OnnxInfo, *, deepness: Mapping[str, Any] | None = None) -> dict[str, str]:
    """All ``metadata_props`` of an export: geopsp's keys and, when given, the Deepness keys.

    Every value is JSON-encoded (a string value too), as Deepness reads them with ``json.loads``.
    """
    from geopsp import __version__

    props: dict[str, Any] = {
        "format": ONNX_FORMAT,
        "geopsp": meta.to_dict(),
        "geopsp_onnx": info.to_dict(),
        "geopsp_version": __version__,
        "pixel_size": meta.pixel_size,
        "crs": meta.provenance.get("crs"),
    }
    props.update(deepness or {})
    return {k: json.dumps(v, allow_nan=False, sort_keys=True) for k, v in props.items()}


def parse_onnx_metadata(path: str | Path, props: Mapping[str, str]) -> tuple[BundleMeta, OnnxInfo]:
    """Read the bundle metadata and the graph contract back from ``metadata_props``.

    Raises
    ------
    CheckpointError
        One line naming the file and the missing keys (and how to export) when it is not a
        geopsp export; or what is malformed.
    """
    missing = [k for k in _REQUIRED if k not in props]
    if missing:
        raise CheckpointError(
            f"{path}: not a geopsp ONNX export (metadata lacks {', '.join(missing)}); "
            f"export the bundle with: geopsp model export BUNDLE --format onnx --out {Path(path).name}"
        )
    values: dict[str, Any] = {}
    for key in _REQUIRED:
        try:
            values[key] = json.loads(props[key])
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path}: metadata key {key!r} is not JSON ({exc}); re-export the model") from exc
    if values["format"] != ONNX_FORMAT:
        raise CheckpointError(
            f"{path}: metadata format is {values['format']!r}, expected {ONNX_FORMAT!r}; "
            "export the bundle with geopsp model export"
        )
    meta = BundleMeta.from_dict(values["geopsp"], source=str(path))
    if not isinstance(values["geopsp_onnx"], Mapping):
        raise CheckpointError(f"{path}: geopsp_onnx metadata is not a JSON object; re-export the model")
    return meta, OnnxInfo.from_dict(values["geopsp_onnx"], source=str(path))
