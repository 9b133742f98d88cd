"""STAC MLM items of ONNX exports (geopsp.model.stac_mlm).

The models are tiny hand-made graphs (a 1x1 convolution and a softmax) carrying full geopsp
metadata (written by :func:`geopsp.model.onnx_export.write_onnx`): the item is built from the
metadata and the initializers, so no torch export is needed. ``item.validate()`` would fetch the
schemas from the web; the tests read the item back instead.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pystac = pytest.importorskip("pystac")
mlm = pytest.importorskip("pystac.extensions.mlm")

from geopsp.classes import ClassInfo, ClassTable  # noqa: E402
from geopsp.errors import CheckpointError, OutputExistsError  # noqa: E402
from geopsp.model.meta import BundleMeta, ModelSpec, Normalization  # noqa: E402
from geopsp.model.onnx_meta import OnnxInfo  # noqa: E402

TILE = 32
CLASSES = ClassTable(
    (
        ClassInfo(1, "conifer forest", (27, 94, 32)),
        ClassInfo(3, "urban", (229, 57, 53)),
        ClassInfo(7, "roads/tracks", (66, 66, 66)),
        ClassInfo(9, "water", (30, 136, 229)),
    )
)


def graph(bands: int, classes: int) -> object:
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    w = helper.make_tensor(
        "w", TensorProto.FLOAT, [classes, bands, 1, 1], rng.standard_normal(classes * bands).tolist()
    )
    b = helper.make_tensor("b", TensorProto.FLOAT, [classes], rng.standard_normal(classes).tolist())
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["logits"], name="classifier"),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1, name="softmax"),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", bands, TILE, TILE])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", classes, TILE, TILE])],
        initializer=[w, b],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def write_model(
    path: Path, *, norm: Normalization | None = None, precision: str = "fp32", agreement: float | None = None
) -> Path:
    from geopsp.model.onnx_export import write_onnx

    meta = BundleMeta(
        spec=ModelSpec(encoder="resnet18", in_channels=3, num_classes=len(CLASSES)),
        classes=CLASSES,
        bands=(2, 3, 8),
        band_names=("B03", "B04", "B08"),
        input_dtype="uint16",
        normalization=norm or Normalization.from_stats([1500.0, 1600.0, 3000.0], [600.0, 700.0, 900.0]),
        pixel_size=10.0,
        tile_size=TILE,
        overlap=4,
        provenance={"crs": "EPSG:32633"},
    )
    quantization = {} if agreement is None else {"agreement": agreement, "pixels": 1000}
    info = OnnxInfo(
        tile_size=TILE,
        margin_px=4,
        precision=precision,  # type: ignore[arg-type]
        created="2026-12-01T15:00:00+00:00",
        quantization=quantization,
    )
    return write_onnx(graph(3, len(CLASSES)), meta, info, path, overwrite=True)


def test_item_round_trips_with_the_mlm_fields(tmp_path: Path) -> None:
    from pystac.extensions.classification import ClassificationExtension
    from pystac.extensions.mlm import AssetGeneralMLMExtension, MLMExtension, ValueScaling

    from geopsp.model.stac_mlm import write_mlm_item

    model = write_model(tmp_path / "model.onnx")
    path = write_mlm_item(model)
    assert path == tmp_path / "model.json"
    item = pystac.Item.from_file(str(path))
    assert MLMExtension.get_schema_uri() in item.stac_extensions
    assert ClassificationExtension.get_schema_uri() in item.stac_extensions
    assert item.geometry is None and item.bbox is None
    assert item.datetime == datetime.fromisoformat("2026-12-01T15:00:00+00:00")
    ext = MLMExtension.ext(item)
    assert ext.mlm_name == "model" and ext.architecture == "PSPNet"
    assert ext.tasks == ["semantic-segmentation"] and ext.framework == "ONNX" and ext.accelerator == "amd64"
    assert ext.total_parameters == 4 * 3 + 4
    (inp,) = ext.input
    assert inp.name == "input" and inp.bands == ["B03", "B04", "B08"]
    assert inp.input.shape == [-1, 3, TILE, TILE] and inp.input.dim_order == ["batch", "channel", "height", "width"]
    assert inp.input.data_type == "float32"
    scaling = [ValueScaling(d) for d in inp.properties["value_scaling"]]
    assert [(s.type, s.mean, s.stddev) for s in scaling] == [
        ("z-score", 1500.0, 600.0),
        ("z-score", 1600.0, 700.0),
        ("z-score", 3000.0, 900.0),
    ]
    assert inp.pre_processing_function is not None
    assert inp.pre_processing_function.to_dict() == {
        "format": "python",
        "expression": "geopsp.model.inputs:model_input",
    }
    (out,) = ext.output
    assert out.name == "probabilities" and out.tasks == ["semantic-segmentation"]
    assert out.result.shape == [-1, 4, TILE, TILE] and out.result.data_type == "float32"
    assert out.classes is not None
    assert [(c.value, c.name, c.title, c.color_hint) for c in out.classes] == [
        (1, "conifer_forest", "conifer forest", "1b5e20"),
        (3, "urban", "urban", "e53935"),
        (7, "roads_tracks", "roads/tracks", "424242"),
        (9, "water", "water", "1e88e5"),
    ]
    asset = item.assets["model"]
    assert asset.href == "model.onnx" and asset.roles == ["mlm:model"]
    assert Path(asset.get_absolute_href() or "") == model.resolve()
    assert AssetGeneralMLMExtension.ext(asset).artifact_type == "onnx"
    assert asset.extra_fields["file:size"] == model.stat().st_size
    assert asset.extra_fields["file:checksum"].startswith("1220") and len(asset.extra_fields["file:checksum"]) == 68
    bands = asset.extra_fields["raster:bands"]
    assert [(b["name"], b["data_type"], b["spatial_resolution"]) for b in bands] == [
        ("B03", "uint16", 10.0),
        ("B04", "uint16", 10.0),
        ("B08", "uint16", 10.0),
    ]


def test_value_scaling_is_what_the_graph_is_fed(tmp_path: Path) -> None:
    from pystac.extensions.mlm import ValueScaling

    from geopsp.model.stac_mlm import mlm_item

    raw = np.random.default_rng(1).integers(0, 10000, (3, 5, 5)).astype(np.uint16)
    for norm in (
        Normalization.from_stats([1500.0, 1600.0, 3000.0], [600.0, 700.0, 900.0]),
        Normalization.from_percentiles([100.0, 200.0, 300.0], [3000.0, 3500.0, 6000.0]),
    ):
        item = mlm_item(write_model(tmp_path / "m.onnx", norm=norm))
        scaling = [ValueScaling(d) for d in item.properties["mlm:input"][0]["value_scaling"]]
        got = np.empty(raw.shape, dtype=np.float64)
        for k, s in enumerate(scaling):
            if s.type == "z-score":
                assert s.mean is not None and s.stddev is not None
                got[k] = (raw[k] - s.mean) / s.stddev
            else:
                assert s.type == "processing" and s.format == "gdal-calc" and s.expression is not None
                got[k] = eval(s.expression, {"numpy": np, "A": raw[k].astype(np.float64)})
        assert {s.type for s in scaling} == ({"z-score"} if norm.clip is None else {"processing"})
        np.testing.assert_allclose(got, norm.apply(raw), rtol=1e-5, atol=1e-5)


def test_an_int8_model_says_so(tmp_path: Path) -> None:
    from pystac.extensions.mlm import MLMExtension

    from geopsp.model.stac_mlm import mlm_item

    item = mlm_item(write_model(tmp_path / "model.int8.onnx", precision="int8", agreement=0.99512))
    assert item.id == "model.int8"
    assert "int8" in item.properties["description"] and "99.512%" in item.properties["description"]
    assert MLMExtension.ext(item).accelerator_constrained is True


def test_item_moves_with_its_model(tmp_path: Path) -> None:
    from geopsp.model.stac_mlm import write_mlm_item

    model = write_model(tmp_path / "a" / "model.onnx")
    item = write_mlm_item(model)
    moved = tmp_path / "b"
    moved.mkdir()
    shutil.copy(model, moved)
    shutil.copy(item, moved)
    again = pystac.Item.from_file(str(moved / "model.json"))
    assert Path(again.assets["model"].get_absolute_href() or "") == (moved / "model.onnx").resolve()


def test_an_existing_item_is_kept_unless_overwrite(tmp_path: Path) -> None:
    from geopsp.model.stac_mlm import write_mlm_item

    model = write_model(tmp_path / "model.onnx")
    path = tmp_path / "model.json"
    path.write_text("{}")
    with pytest.raises(OutputExistsError):
        write_mlm_item(model)
    assert path.read_text() == "{}"
    assert write_mlm_item(model, overwrite=True) == path
    assert json.loads(path.read_text())["properties"]["mlm:name"] == "model"


def test_bad_files_are_one_line_errors(tmp_path: Path) -> None:
    from geopsp.model.stac_mlm import mlm_item

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07garbage" * 50)
    plain = tmp_path / "plain.onnx"
    onnx.save_model(graph(3, 4), str(plain))  # type: ignore[arg-type]
    for path, what in [(tmp_path / "none.onnx", "no such"), (junk, ""), (plain, "not a geopsp ONNX export")]:
        with pytest.raises(CheckpointError) as exc:
            mlm_item(path)
        assert "\n" not in str(exc.value) and str(path) in str(exc.value) and what in str(exc.value)
