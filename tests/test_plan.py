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


def test_uint8_model_refuses_uint16_scene_with_advice(tmp_path):
    info = info_of(tmp_path, rgb(dtype="uint16"))
    with pytest.raises(InputRasterError) as err:
        check_scene_for_model(info, meta_for(input_dtype="uint8"))
    msg = str(err.value)
    assert "s.tif" in msg
    assert "trained on uint8" in msg and "this scene is uint16" in msg
    assert "rescale" in msg and "trained on uint16" in msg


@pytest.mark.parametrize("scene_dtype", ["float32", "float64"])
def test_float_model_accepts_float_scenes(tmp_path, scene_dtype):
    check_scene_for_model(info_of(tmp_path, rgb(dtype=scene_dtype)), meta_for(input_dtype="float32"))


@pytest.mark.parametrize(
    ("model_dtype", "scene_dtype"), [("float32", "uint8"), ("uint16", "uint8"), ("int16", "uint16")]
)
def test_other_dtype_mismatches(tmp_path, model_dtype, scene_dtype):
    with pytest.raises(InputRasterError, match=f"trained on {model_dtype} scenes but this scene is {scene_dtype}"):
        check_scene_for_model(info_of(tmp_path, rgb(dtype=scene_dtype)), meta_for(input_dtype=model_dtype))
