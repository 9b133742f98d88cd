"""The prediction plan: what a run will do, decided once, before any pixel is read.

This module is the one home of the decisions a prediction makes about a scene and a model:
whether the model can run on the scene at all (:func:`check_scene_for_model`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from geopsp.errors import InputRasterError

if TYPE_CHECKING:
    from geopsp.io.scene import SceneInfo
    from geopsp.model.meta import BundleMeta

__all__ = ["check_scene_for_model"]

_FLOAT_BUNDLE_ACCEPTS = ("float32", "float64")


def check_scene_for_model(info: SceneInfo, meta: BundleMeta) -> None:
    """Check that a model bundle can run on a scene, before any pixels are read.

    Parameters
    ----------
    info : SceneInfo
        From :func:`inspect_scene`.
    meta : BundleMeta
        The model bundle's metadata.

    Raises
    ------
    InputRasterError
        When the scene lacks a band the model reads, a model band is the alpha band, or the
        scene's data type differs from the training data's (a float32/float64 bundle accepts
        float32 and float64 scenes; integer bundles need the same type).
    """
    names = ", ".join(f"{b} ({n})" for b, n in zip(meta.bands, meta.band_names, strict=True))
    missing = [b for b in meta.bands if b > info.count]
    if missing:
        raise InputRasterError(
            f"{info.path}: the model reads bands {names} but the scene has only {info.count} band(s); "
            f"use a scene with those bands or a model trained on this band layout"
        )
    if info.alpha_band is not None and info.alpha_band in meta.bands:
        raise InputRasterError(
            f"{info.path}: band {info.alpha_band} is the scene's alpha (transparency) band, but the model reads it "
            f"as data (bands {names}); use a scene whose data bands are {list(meta.bands)} or a model trained "
            f"on bands {list(info.data_bands)}"
        )
    want, got = meta.input_dtype, info.dtype
    if want == got or (want in _FLOAT_BUNDLE_ACCEPTS and got in _FLOAT_BUNDLE_ACCEPTS):
        return
    if want == "uint8":
        fix = (
            f"rescale it to 0..255 (e.g. gdal_translate -ot Byte -scale {info.path.name} scaled.tif) "
            f"or use a model trained on {got} data"
        )
    elif want in _FLOAT_BUNDLE_ACCEPTS:
        fix = f"convert it to float32 with the training data's scaling, or use a model trained on {got} data"
    else:
        fix = f"convert it to {want} in the same units as the training data, or use a model trained on {got} data"
    raise InputRasterError(f"{info.path}: the model was trained on {want} scenes but this scene is {got}; {fix}")
