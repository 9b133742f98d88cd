"""The prediction plan: whether a model can run on a scene (bands, alpha, data type)."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp

from geopsp.classes import ClassTable
from geopsp.errors import InputRasterError
from geopsp.inference.plan import check_scene_for_model
from geopsp.io.scene import SceneInfo, inspect_scene
from geopsp.model.meta import BundleMeta, ModelSpec, Normalization
from geopsp.testing import write_geotiff


def rgb(height: int = 97, width: int = 131, dtype: str = "uint8", seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 200, (3, height, width)).astype(dtype)


def meta_for(bands=(1, 2, 3), input_dtype="uint8") -> BundleMeta:
    n = len(bands)
    return BundleMeta(
        spec=ModelSpec(in_channels=n, num_classes=2),
        classes=ClassTable.from_names(["a", "b"], start=1),
        bands=tuple(bands),
        band_names=tuple(f"b{b}" for b in bands),
        input_dtype=input_dtype,
        normalization=Normalization.identity(n),
    )


def info_of(tmp_path, data, **profile) -> SceneInfo:
    return inspect_scene(write_geotiff(tmp_path / "s.tif", data, **profile))


def test_matching_scene_passes(tmp_path):
    check_scene_for_model(info_of(tmp_path, rgb()), meta_for((3, 2, 1)))


def test_missing_band(tmp_path):
    with pytest.raises(InputRasterError, match=r"reads bands 1 \(b1\), 2 \(b2\), 4 \(b4\) but the scene has only 3"):
        check_scene_for_model(info_of(tmp_path, rgb()), meta_for((1, 2, 4)))


def test_alpha_band_is_not_data(tmp_path):
    data = np.concatenate([rgb(), np.full((1, 97, 131), 255, np.uint8)])
    p = write_geotiff(tmp_path / "rgba.tif", data)
    with rasterio.open(p, "r+") as dst:
        dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    info = inspect_scene(p)
    with pytest.raises(InputRasterError, match=r"band 4 is the scene's alpha \(transparency\) band"):
        check_scene_for_model(info, meta_for((1, 2, 3, 4)))
    check_scene_for_model(info, meta_for((1, 2, 3)))


def test_uint8_model_refuses_uint16_scene_whose_values_do_not_fit(tmp_path):
    info = info_of(tmp_path, rgb(dtype="uint16") * 5)  # up to 995
    with pytest.raises(InputRasterError) as err:
        check_scene_for_model(info, meta_for(input_dtype="uint8"))
    msg = str(err.value)
    assert "s.tif" in msg and "\n" not in msg
    assert "the model reads uint8 (0..255) but this uint16 scene holds 5..995" in msg
    # the only rescaling offered is the mapping the training data were made with, to state
    assert (
        "--input-scale SRC_MIN SRC_MAX 0 255" in msg and "gdal_translate -ot Byte -scale SRC_MIN SRC_MAX 0 255" in msg
    )
    assert "trained on uint16" in msg


def test_uint8_model_accepts_uint16_scene_whose_values_fit(tmp_path):
    cast = check_scene_for_model(info_of(tmp_path, rgb(dtype="uint16")), meta_for(input_dtype="uint8"))
    assert cast.converts and cast.read_as == "uint8" and cast.observed == (1.0, 199.0)
    assert cast.note is not None and "values 1..199" in cast.note and "read as uint8" in cast.note


def test_matching_dtypes_convert_nothing(tmp_path):
    cast = check_scene_for_model(info_of(tmp_path, rgb()), meta_for())
    assert not cast.converts and cast.note is None and cast.source == "same type"


@pytest.mark.parametrize("scene_dtype", ["float32", "float64"])
def test_float_model_accepts_float_scenes(tmp_path, scene_dtype):
    cast = check_scene_for_model(info_of(tmp_path, rgb(dtype=scene_dtype)), meta_for(input_dtype="float32"))
    assert not cast.converts and cast.note is None


@pytest.mark.parametrize(
    ("model_dtype", "scene_dtype"),
    [("float32", "uint8"), ("uint16", "uint8"), ("int16", "uint8"), ("float32", "int16")],
)
def test_types_whose_every_value_fits_are_accepted_without_a_look(tmp_path, model_dtype, scene_dtype):
    cast = check_scene_for_model(info_of(tmp_path, rgb(dtype=scene_dtype)), meta_for(input_dtype=model_dtype))
    assert cast.source == "type range" and not cast.converts and cast.observed is None
    assert cast.note is not None and scene_dtype in cast.note


def test_complex_scenes_are_refused(tmp_path):
    with pytest.raises(InputRasterError, match="trained on uint8 scenes but this scene is complex64"):
        check_scene_for_model(info_of(tmp_path, rgb(dtype="complex64")), meta_for(input_dtype="uint8"))
