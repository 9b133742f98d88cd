"""A STAC Item with the Machine Learning Model (MLM) extension describing an exported ONNX model.

:func:`write_mlm_item` writes ``model.json`` next to ``model.onnx`` (the ``.onnx`` suffix
replaced), built with pystac's MLM extension from the metadata the model carries
(:mod:`geopsp.model.onnx_meta`):

* ``mlm:name`` (the file's stem), ``mlm:architecture`` ``"PSPNet"``, ``mlm:tasks``
  ``["semantic-segmentation"]``, ``mlm:framework`` ``"ONNX"`` (with the opset as its version),
  ``mlm:accelerator`` ``"amd64"`` (ONNX Runtime on CPUs; an int8 model is for CPUs only),
  ``mlm:total_parameters`` counted from the graph's initializers (an int8 model's quantized
  weights count once, their scales and zero points not at all), ``mlm:pretrained``;
* ``mlm:input``: the bands by name, shape ``[-1, C, T, T]`` (batch, channel, height, width),
  float32; ``value_scaling`` one ``z-score`` per band with the bundle's offset as ``mean`` and
  scale as ``stddev`` (that is ``(x - offset) / scale``), or, for a normalization that clips, one
  ``processing`` expression per band (``numpy.clip((A - offset) / scale, lo, hi)``); and
  ``pre_processing_function`` the Python entry point that does exactly what prediction does
  (``geopsp.model.inputs:model_input``: that scaling, and 0 in every band on nodata). The raw
  data type of the bands is in the model asset's ``raster:bands`` (with their names, as MLM asks);
* ``mlm:output``: ``probabilities``, ``[-1, K, T, T]`` float32 (softmax over the channel), with
  ``classification:classes``: channel ``i`` is the ``i``-th class, whose ``value`` is the id the
  class raster stores, with its name, title and colour;
* the classification extension listed with MLM's (for those classes);
* the asset ``model``: the ``.onnx`` file (href relative to the item), roles ``["mlm:model"]``,
  ``mlm:artifact_type`` ``"onnx"``, ``file:size`` and ``file:checksum`` (sha2-256 multihash);
* no geometry (a model, not a place: the bundle's provenance records no footprint), and
  ``datetime`` the export (or quantization) time.

pystac models MLM's ``value_scaling`` as one object, but MLM 1.4 (the version pystac writes)
defines an array of them, one per band; the array is written (``ModelInput.properties``).
:meth:`pystac.Item.validate` fetches the schemas from the web, so the item is not validated
here.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geopsp.errors import CheckpointError
from geopsp.io.atomic import atomic_output
from geopsp.model.meta import BundleMeta
from geopsp.model.onnx_meta import INPUT_NAME, OUTPUT_NAME, OnnxInfo, parse_onnx_metadata

if TYPE_CHECKING:
    import pystac
    from pystac.extensions.mlm import ModelInput, ModelOutput

__all__ = ["count_parameters", "mlm_item", "mlm_item_path", "write_mlm_item"]

_ARCHITECTURES = {"pspnet": "PSPNet"}
_DIMS = ["batch", "channel", "height", "width"]
PRE_PROCESSING = "geopsp.model.inputs:model_input"
"""The Python entry point that turns raw bands into the graph's input."""


def mlm_item_path(onnx_path: str | os.PathLike[str]) -> Path:
    """Return the item's path: the model's, ``.json`` for ``.onnx`` (``model.int8.onnx`` -> ``model.int8.json``).

    Examples
    --------
    >>> mlm_item_path("out/model.int8.onnx").as_posix()
    'out/model.int8.json'
    """
    return Path(onnx_path).with_suffix(".json")


def _read(path: Path) -> Any:
    import onnx

    if not path.is_file():
        raise CheckpointError(f"{path}: no such ONNX model; check the path")
    try:
        return onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: not a readable ONNX model ({first[:200]}); the file is damaged or truncated, re-export it"
        ) from exc


def count_parameters(proto: Any) -> int:
    """Weights and biases of a graph: its initializers' elements, less shapes, scales and zero points.

    An int8 QDQ graph gives the count of its fp32 original: a quantized weight replaces the
    float one, and its per-channel scales and zero points are not parameters.
    """
    from onnx import TensorProto

    total = 0
    for init in proto.graph.initializer:
        if init.data_type == TensorProto.INT64 or init.name.endswith(("_scale", "_zero_point")):
            continue
        total += math.prod(init.dims)
    return total


def _class_name(name: str) -> str:
    """Make a classification ``name``: letters, digits, ``-`` and ``_`` only."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "class"


def _created(info: OnnxInfo) -> datetime:
    try:
        when = datetime.fromisoformat(info.created)
    except ValueError:
        return datetime.now(UTC)
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _sha256_multihash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return "1220" + digest.hexdigest()


def _model_input(meta: BundleMeta, tile: int, margin: int) -> ModelInput:
    from pystac.extensions.mlm import InputStructure, ModelInput, ProcessingExpression, ValueScaling, ValueScalingType
    from pystac.extensions.raster import DataType

    norm = meta.normalization
    if norm.clip is None:
        scaling = [
            ValueScaling.create(ValueScalingType.Z_SCORE, mean=o, stddev=s).to_dict()
            for o, s in zip(norm.offset, norm.scale, strict=True)
        ]
        how = "(x - offset) / scale per band"
    else:
        lo, hi = norm.clip
        scaling = [
            ValueScaling.create(
                ValueScalingType.PROCESSING,
                format="gdal-calc",
                expression=f"numpy.clip((A - {o!r}) / {s!r}, {lo!r}, {hi!r})",
            ).to_dict()
            for o, s in zip(norm.offset, norm.scale, strict=True)
        ]
        how = f"(x - offset) / scale per band, clipped to [{lo:g}, {hi:g}]"
    description = (
        f"{len(meta.bands)} {meta.input_dtype} bands (scene bands {list(meta.bands)}) in {tile} px tiles, "
        f"{how}, and 0 in every band where a pixel is nodata ({PRE_PROCESSING}); a {margin} px reflection "
        "margin is added and cropped inside the graph"
    )
    inp = ModelInput.create(
        name=INPUT_NAME,
        bands=list(meta.band_names),
        input=InputStructure.create(
            shape=[-1, len(meta.bands), tile, tile], dim_order=_DIMS, data_type=DataType.FLOAT32
        ),
        description=description,
        value_scaling=None,
        resize_type=None,
        pre_processing_function=ProcessingExpression.create(format="python", expression=PRE_PROCESSING),
    )
    inp.properties["value_scaling"] = scaling  # MLM 1.4: one object per band (pystac models a single one)
    return inp


def _model_output(meta: BundleMeta, tile: int) -> ModelOutput:
    from pystac.extensions.classification import Classification
    from pystac.extensions.mlm import ModelOutput, ResultStructure, TaskType
    from pystac.extensions.raster import DataType

    classes = [
        Classification.create(value=c.id, name=_class_name(c.name), title=c.name, color_hint=c.hex.lstrip("#"))
        for c in meta.classes
    ]
    return ModelOutput.create(
        name=OUTPUT_NAME,
        tasks=[TaskType.SEMANTIC_SEGMENTATION],
        result=ResultStructure.create(
            shape=[-1, len(meta.classes), tile, tile], dim_order=_DIMS, data_type=DataType.FLOAT32
        ),
        description=(
            "softmax probabilities over the channel; channel i is the i-th class of classification:classes, "
            "whose value is the id the class raster stores (argmax over the channel)"
        ),
        classes=classes,
        post_processing_function=None,
    )


def mlm_item(onnx_path: str | os.PathLike[str]) -> pystac.Item:
    """Describe a geopsp ONNX export as a STAC Item with the MLM extension.

    Parameters
    ----------
    onnx_path : str or os.PathLike
        A model written by ``geopsp model export`` or ``geopsp model quantize``.

    Returns
    -------
    pystac.Item
        Its ``model`` asset's href is the model's file name, relative to the item's folder
        (where :func:`write_mlm_item` puts it).

    Raises
    ------
    CheckpointError
        The file is missing, unreadable, or not a geopsp export.
    """
    import pystac
    from pystac.extensions.classification import ClassificationExtension
    from pystac.extensions.file import FileExtension
    from pystac.extensions.mlm import AcceleratorType, AssetGeneralMLMExtension, MLMExtension, TaskType
    from pystac.extensions.raster import DataType, RasterBand, RasterExtension

    path = Path(onnx_path)
    proto = _read(path)
    meta, info = parse_onnx_metadata(path, {e.key: e.value for e in proto.metadata_props})
    spec = meta.spec
    tile, margin = info.tile_size, info.margin_px
    int8 = info.precision == "int8"
    summary = f"{spec.arch} ({spec.encoder} encoder), {len(meta.classes)} classes, {info.precision}"
    if int8 and info.agreement is not None:
        summary += f"; classes agree with its fp32 model on {info.agreement:.3%} of the checked valid pixels"
    item = pystac.Item(
        id=path.stem,
        geometry=None,
        bbox=None,
        datetime=_created(info),
        properties={"title": f"geopsp {path.stem}", "description": summary},
    )
    weights = meta.provenance.get("encoder_weights")
    mlm = MLMExtension.ext(item, add_if_missing=True)
    # mlm:output carries classification:classes; its schema is listed as the MLM examples do
    item.stac_extensions.append(ClassificationExtension.get_schema_uri())
    mlm.apply(
        name=path.stem,
        architecture=_ARCHITECTURES.get(spec.arch.lower(), spec.arch),
        tasks=[TaskType.SEMANTIC_SEGMENTATION],
        input=[_model_input(meta, tile, margin)],
        output=[_model_output(meta, tile)],
        framework="ONNX",
        framework_version=f"opset {info.opset}",
        total_parameters=count_parameters(proto),
        pretrained=bool(weights),
        pretrained_source=str(weights) if weights else None,
        accelerator=AcceleratorType.AMD64,
        accelerator_constrained=int8,
        accelerator_summary=(
            "x86-64 CPU with ONNX Runtime (int8 QDQ kernels)" if int8 else "CPU with ONNX Runtime (also runs elsewhere)"
        ),
    )
    asset = pystac.Asset(
        href=path.name,
        media_type="application/octet-stream; application=onnx",
        title=f"ONNX model ({info.precision})",
        roles=["mlm:model"],
    )
    item.add_asset("model", asset)
    AssetGeneralMLMExtension.ext(asset, add_if_missing=True).apply(artifact_type="onnx")
    FileExtension.ext(asset, add_if_missing=True).apply(size=path.stat().st_size, checksum=_sha256_multihash(path))
    bands = []
    for name in meta.band_names:
        band = RasterBand.create(data_type=DataType(meta.input_dtype), spatial_resolution=meta.pixel_size)
        band.properties["name"] = name  # MLM finds raster:bands by name
        bands.append(band)
    RasterExtension.ext(asset, add_if_missing=True).bands = bands
    return item


def write_mlm_item(onnx_path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write :func:`mlm_item` next to the model (:func:`mlm_item_path`), atomically.

    Parameters
    ----------
    onnx_path : str or os.PathLike
    overwrite : bool
        Replace an existing item.

    Returns
    -------
    Path
        The ``.json`` written.

    Raises
    ------
    CheckpointError
        See :func:`mlm_item`.
    OutputExistsError, OutputError
    """
    item = mlm_item(onnx_path)
    out = mlm_item_path(onnx_path)
    data = item.to_dict(include_self_link=False, transform_hrefs=False)
    with atomic_output(out, overwrite=overwrite, inputs=[onnx_path]) as tmp:
        tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return out
