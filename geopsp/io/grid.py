"""The grid a run reads a scene on: its own, the model's pixel size, another CRS, an area of interest.

:func:`view_scene` is the one home of that decision (``predict.resolution``, ``predict.crs``,
``predict.aoi``), used by the pipeline and by the command line's dry check alike. A scene read
on another grid is warped on the fly (a ``WarpedVRT``: only the source blocks a strip needs
are read, nothing is copied) and every output is written on that grid. An area of interest
on the scene's own grid is a crop to whole source pixels, read with nearest neighbour, so its
pixels are the scene's own; polygons then mask the pixels outside them.

Resampling follows the data (:func:`resampling_for`): ``average`` when pixels get coarser,
``bilinear`` when they get finer or only the CRS changes, ``nearest`` for 8-bit data with a
colour table (categories, not measurements) and for a crop.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from typing import TYPE_CHECKING, Any

from geopsp.errors import ConfigError, InputRasterError, ResolutionWarning

if TYPE_CHECKING:
    from geopsp.config.schema import PredictConfig
    from geopsp.io.scene import SceneInfo
    from geopsp.io.source import SceneSource
    from geopsp.model.meta import BundleMeta

__all__ = ["RESOLUTION_WARN_RATIO", "has_colour_table", "resampling_for", "scene_as_read", "view_scene"]

logger = logging.getLogger(__name__)

RESOLUTION_WARN_RATIO = 2.0
"""A native-resolution run warns when the scene's pixel size and the model's differ by more than this factor."""

# The most a warped grid may ask of memory per row of tiles, as a share of what is available.
_MEMORY_SHARE = 0.5


def resampling_for(dtype: str, *, ratio: float, categorical: bool = False) -> str:
    """Pick the resampling for reading data of ``dtype`` at ``ratio`` = target pixel / source pixel.

    Examples
    --------
    >>> resampling_for("uint16", ratio=2.0), resampling_for("float32", ratio=0.5), resampling_for("uint8", ratio=1.0)
    ('average', 'bilinear', 'bilinear')
    >>> resampling_for("uint8", ratio=4.0, categorical=True)
    'nearest'
    """
    if categorical and dtype == "uint8":
        return "nearest"
    return "average" if ratio > 1.0 + 1e-9 else "bilinear"


def _metres_per_unit(info: SceneInfo) -> float:
    """Metres per CRS unit of a pixel at the scene's centre: the square root of its area in m² over its area in units².

    Measured as :mod:`geopsp.vectorize` measures polygons (true metres in any CRS: an equal-area
    projection for degrees and Mercator), on one pixel at the centre.
    """
    import numpy as np
    import shapely

    from geopsp.vectorize._measure import Measurer

    if info.crs is None:
        return 1.0
    t = info.transform
    cx, cy = t.c + t.a * info.width / 2, t.f + t.e * info.height / 2
    px, py = abs(t.a), abs(t.e)
    pixel = np.array([shapely.box(cx, cy, cx + px, cy + py)], dtype=object)
    area_m2, _ = Measurer(info.crs, (cx, cy))(pixel)
    return float(math.sqrt(float(area_m2[0]) / (px * py)))


def view_scene(info: SceneInfo, meta: BundleMeta, config: PredictConfig) -> SceneInfo:
    """Describe the scene as a run reads it: on its own grid, or warped / cropped / masked as ``config`` asks.

    Parameters
    ----------
    info : SceneInfo
        The scene on its own grid (:func:`geopsp.io.scene.inspect_scene`).
    meta : BundleMeta
        The model (its ``pixel_size`` for ``resolution="model"`` and the 2x warning).
    config : PredictConfig
        ``resolution``, ``crs``, ``aoi``; ``tile_size`` for the memory check.

    Returns
    -------
    SceneInfo
        ``info`` itself when nothing changes, else the description of the virtual scene
        (``info.source.warp`` / ``aoi_wkb`` set) that readers open like any other.

    Raises
    ------
    ConfigError
        ``resolution="model"`` with a bundle that stores no pixel size; a CRS GDAL does not know.
    InputRasterError
        The scene has no CRS; the area of interest lies outside the scene; the warped grid
        would not fit in memory.

    Warns
    -----
    ResolutionWarning
        At native resolution, when the scene's pixel size and the model's differ by more than 2x.
    """
    from affine import Affine
    from rasterio.crs import CRS
    from rasterio.errors import CRSError
    from rasterio.transform import array_bounds
    from rasterio.warp import transform_bounds

    from geopsp.io.scene import inspect_scene
    from geopsp.io.source import Warp

    res_opt, crs_opt, aoi_opt = config.resolution, config.crs, config.aoi
    if res_opt == "native" and crs_opt is None and aoi_opt is None:
        _warn_if_far(info, meta)
        return info
    asked = ", ".join(
        f"--{k} {v}"
        for k, v in (("resolution", res_opt), ("crs", crs_opt), ("aoi", aoi_opt))
        if v not in (None, "native")
    )
    if info.crs is None:
        raise InputRasterError(f"{info.source}: has no CRS, so {asked} cannot place it; georeference it first")
    try:
        dst_crs = CRS.from_user_input(crs_opt) if crs_opt is not None else info.crs
    except CRSError as exc:
        raise ConfigError(
            f"--crs {crs_opt}: not a CRS GDAL knows ({exc}); give e.g. EPSG:32633", key="predict.crs"
        ) from exc
    same_crs = dst_crs == info.crs
    native = abs(info.res[0])
    if res_opt == "model":
        if meta.pixel_size is None:
            raise ConfigError(
                "--resolution model: this model stores no training pixel size; give --resolution METRES",
                key="predict.resolution",
            )
        res = float(meta.pixel_size) / (_metres_per_unit(info) if same_crs and info.crs.is_geographic else 1.0)
    elif res_opt == "native":
        res = native if same_crs else _native_in(info, dst_crs)
    else:
        res = float(res_opt)
    west, south, east, north = array_bounds(info.height, info.width, info.transform)
    if not same_crs:
        west, south, east, north = transform_bounds(info.crs, dst_crs, west, south, east, north, densify_pts=21)
    aoi_wkb = None
    if aoi_opt is not None:
        import shapely

        from geopsp.io.aoi import load_aoi

        area = load_aoi(aoi_opt, dst_crs)
        scene_box = shapely.box(west, south, east, north)
        inside = area.intersection(scene_box)
        if inside.is_empty or inside.area == 0:
            ax0, ay0, ax1, ay1 = area.bounds
            raise InputRasterError(
                f"{info.source}: the area of interest ({ax0:.6g},{ay0:.6g},{ax1:.6g},{ay1:.6g} in "
                f"{dst_crs.to_string()}) lies outside the scene ({west:.6g},{south:.6g},{east:.6g},{north:.6g}); "
                f"check --aoi and its CRS"
            )
        west, south, east, north = inside.bounds
        aoi_wkb = shapely.to_wkb(inside)
    crop_only = same_crs and math.isclose(res, native, rel_tol=1e-9)
    if crop_only:  # whole source pixels: the scene's own values
        t = info.transform
        c0 = max(0, math.floor((west - t.c) / t.a + 1e-9))
        c1 = min(info.width, math.ceil((east - t.c) / t.a - 1e-9))
        r0 = max(0, math.floor((north - t.f) / t.e + 1e-9))
        r1 = min(info.height, math.ceil((south - t.f) / t.e - 1e-9))
        transform = t @ Affine.translation(c0, r0)
        width, height, resampling = c1 - c0, r1 - r0, "nearest"
    else:  # pixels aligned to multiples of the pixel size (gdalwarp -tap)
        x0, x1 = math.floor(west / res) * res, math.ceil(east / res) * res
        y0, y1 = math.floor(south / res) * res, math.ceil(north / res) * res
        transform = Affine(res, 0.0, x0, 0.0, -res, y1)
        width, height = max(1, round((x1 - x0) / res)), max(1, round((y1 - y0) / res))
        categorical = info.dtype == "uint8" and _has_colours(info)
        resampling = resampling_for(info.dtype, ratio=res / native if same_crs else 1.0, categorical=categorical)
    _check_memory(info, meta, config, width, height, res)
    warp = Warp(dst_crs.to_wkt(), tuple(transform)[:6], int(width), int(height), resampling)
    viewed = inspect_scene(info.source.viewed(warp, aoi_wkb))
    logger.info(
        "%s: read %s on a %d x %d grid of %g %s pixels (%s)",
        info.source,
        "cropped" if crop_only else "warped",
        width,
        height,
        res,
        dst_crs.to_string(),
        resampling,
    )
    return viewed


def scene_as_read(scene: str | os.PathLike[str] | SceneSource, meta: BundleMeta, config: PredictConfig) -> SceneInfo:
    """Resolve, inspect and view a scene as a run on ``meta`` with ``config`` reads it (every caller's one call).

    Raises
    ------
    InputRasterError, ConfigError
        See :func:`geopsp.io.source.resolve_scene`, :func:`geopsp.io.scene.inspect_scene`
        and :func:`view_scene`.
    """
    from geopsp.io.scene import inspect_scene
    from geopsp.io.source import resolve_scene

    return view_scene(inspect_scene(resolve_scene(scene, bands=meta.named_bands)), meta, config)


def _native_in(info: SceneInfo, dst_crs: object) -> float:
    """Carry the scene's pixel size into ``dst_crs`` (as gdalwarp's default)."""
    from rasterio.warp import calculate_default_transform

    left, top = info.transform.c, info.transform.f
    right = left + info.width * info.transform.a
    bottom = top + info.height * info.transform.e
    with warnings.catch_warnings():  # rasterio's own use of affine's deprecated "*"
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        t, _, _ = calculate_default_transform(info.crs, dst_crs, info.width, info.height, left, bottom, right, top)
    return float(abs(t.a))


def has_colour_table(src: Any) -> bool:
    """Whether an open raster's first band has a colour table (categories, not measurements)."""
    try:
        src.colormap(1)
    except ValueError:
        return False
    return True


def _has_colours(info: SceneInfo) -> bool:
    from geopsp.io.scene import open_scene

    with open_scene(info, threads=1) as (src, _):
        return has_colour_table(src)


def _check_memory(
    info: SceneInfo, meta: BundleMeta, config: PredictConfig, width: int, height: int, res: float
) -> None:
    """Refuse a grid whose rows of tiles alone would take more than half the memory available."""
    import numpy as np
    import psutil

    tile = config.tile_size or meta.tile_size
    per_px = len(meta.bands) * np.dtype(info.dtype).itemsize * 2 + len(meta.classes) * 4 * 2
    need = width * tile * per_px
    avail = psutil.virtual_memory().available
    if need > _MEMORY_SHARE * avail:
        raise InputRasterError(
            f"{info.source}: at {res:g} per pixel the scene becomes {width} x {height} pixels, whose rows of "
            f"{tile}-pixel tiles need {need / 2**30:.1f} GiB, more than half the {avail / 2**30:.1f} GiB available; "
            f"choose a coarser --resolution or an --aoi"
        )


def _warn_if_far(info: SceneInfo, meta: BundleMeta) -> None:
    if meta.pixel_size is None or info.crs is None:
        return
    scene_m = abs(info.res[0]) * _metres_per_unit(info)
    ratio = scene_m / float(meta.pixel_size)
    if ratio > RESOLUTION_WARN_RATIO or ratio < 1 / RESOLUTION_WARN_RATIO:
        warnings.warn(
            f"{info.source}: pixels of {scene_m:g} m, but the model was trained on {float(meta.pixel_size):g} m "
            f"({ratio:.3g}x); results may be poor: --resolution model reads it at the model's pixel size",
            ResolutionWarning,
            stacklevel=3,
        )
