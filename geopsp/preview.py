"""Quick-look PNGs: the scene in natural colours with its classes blended over it.

The scene and the class raster are read decimated (GDAL resamples while reading, using
overviews when the files have them), so memory follows the preview's size, never the
scene's. Colours come from the class raster (the table geopsp stores, else its colour
table) or from a given :class:`~geopsp.classes.ClassTable`.

Background classes get no colour: the scene shows through them, so a building model's
black ``background`` does not darken the whole picture. By default they are the classes the
class table names as background (:attr:`~geopsp.classes.ClassTable.background_ids`:
``background``, ``nodata``, ``unlabeled``, ``void``, ``unknown``); ``background=`` names
others. The legend lists every class of the table, background ones with an empty swatch.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from geopsp.classes import ClassTable, complete_classes
from geopsp.errors import ConfigError, InputRasterError
from geopsp.io.atomic import atomic_output
from geopsp.io.source import SceneSource, is_remote, resolve_scene, scene_name

if TYPE_CHECKING:
    from geopsp.io.scene import SceneInfo

__all__ = ["render_preview", "stretch"]

logger = logging.getLogger(__name__)

_RGB_NAMES = (("red", "b04", "r"), ("green", "b03", "g"), ("blue", "b02", "b"))


def stretch(
    band: NDArray[Any], valid: NDArray[np.bool_] | None = None, *, low: float = 2.0, high: float = 98.0
) -> NDArray[np.uint8]:
    """Linearly stretch ``band`` so its ``low``..``high`` percentiles span 0..255.

    Parameters
    ----------
    band : ndarray
        One band, any numeric dtype.
    valid : ndarray of bool, optional
        Pixels that count for the percentiles (default: all finite ones).
    low, high : float
        Percentiles mapped to 0 and 255.

    Returns
    -------
    ndarray of uint8
        Same shape as ``band``.

    Examples
    --------
    >>> stretch(np.arange(101, dtype=float)).tolist()[::25]  # 2nd..98th percentile: 2..98
    [0, 61, 128, 194, 255]
    """
    data = band.astype(np.float64, copy=False)
    ok = np.isfinite(data)
    if valid is not None:
        ok &= valid
    if not ok.any():
        return np.zeros(band.shape, dtype=np.uint8)
    lo, hi = np.percentile(data[ok], [low, high])
    if hi <= lo:
        hi = lo + 1.0
    scaled = (data - lo) * (255.0 / (hi - lo))
    out: NDArray[np.uint8] = np.clip(np.nan_to_num(scaled, nan=0.0), 0, 255).round().astype(np.uint8)
    return out


def render_preview(
    scene: str | os.PathLike[str] | SceneSource | SceneInfo,
    class_raster: str | os.PathLike[str] | SceneSource,
    out: str | os.PathLike[str],
    *,
    bands: Sequence[int] | None = None,
    alpha: float = 0.45,
    outlines: bool = False,
    max_size: int = 2048,
    classes: ClassTable | None = None,
    overwrite: bool = False,
    legend: bool = True,
    background: Sequence[int | str] | None = None,
) -> Path:
    """Write a PNG of ``scene`` with the classes of ``class_raster`` blended over it.

    Parameters
    ----------
    scene : str, os.PathLike, SceneSource or SceneInfo
        The image the classes were predicted from (any number of bands, any dtype), local or
        remote (:func:`geopsp.io.source.resolve_scene`); a :class:`~geopsp.io.scene.SceneInfo`
        shows the (cropped or warped) grid a prediction ran on.
    class_raster : str, os.PathLike or SceneSource
        Class ids on the scene's grid (or any grid: it is resampled onto the scene's); local
        or remote like the scene.
    out : str or os.PathLike
        Output PNG.
    bands : sequence of int, optional
        1-based bands shown as red, green, blue (one band: grey). Default: the bands whose
        colour interpretation or description says red/green/blue, else the first three.
    alpha : float, default 0.45
        Opacity of the class colours, 0 (scene only) .. 1 (classes only); background classes
        are never painted.
    outlines : bool, default False
        Draw the borders between classes (polygon outlines) in dark grey.
    max_size : int, default 2048
        Longest edge of the image part of the PNG in pixels; the scene is never enlarged.
    classes : ClassTable, optional
        Class names and colours; default: stored in the class raster.
    overwrite : bool, default False
        Replace an existing PNG.
    legend : bool, default True
        Add a legend right of the image: every class of the table (swatch, id, name), background
        classes with an empty swatch; its text grows with the image.
    background : sequence of int or str, optional
        Classes (ids or names) painted with no colour, so the scene shows through them.
        Default: the classes named as background (``background``, ``nodata``, ``unlabeled``,
        ``void``, ``unknown``: :attr:`~geopsp.classes.ClassTable.background_ids`); ``[]``
        paints every class.

        .. versionadded:: 0.2

    Returns
    -------
    Path
        The PNG.

    Raises
    ------
    InputRasterError
        A raster is missing or unreadable, or ``bands`` names bands it lacks.
    ConfigError
        ``alpha``, ``max_size`` or ``bands`` out of range, or ``background`` names a class the
        table lacks.
    OutputExistsError
        ``out`` exists and ``overwrite`` is False.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in 0..1, got {alpha}")
    if max_size < 16:
        raise ConfigError(f"max_size must be at least 16 px, got {max_size}")
    if bands is not None and not 1 <= len(bands) <= 3:
        raise ConfigError(f"give 1 to 3 bands (red,green,blue), got {list(bands)}")
    out_path = Path(out)
    class_source = resolve_scene(class_raster)
    local = [*_local_scene(scene), *([class_source.local] if class_source.local is not None else [])]
    with atomic_output(out_path, overwrite=overwrite, inputs=local) as tmp:
        rgb, valid, grid = _read_scene(scene, bands, max_size)
        ids, cvalid = _read_classes(class_source, grid)
        table = _table(class_source, classes, ids[cvalid])
        unpainted = _background_ids(table, background)
        img = _compose(rgb, valid, ids, cvalid, table, alpha=alpha, outlines=outlines, background=unpainted)
        image = _with_legend(img, table, unpainted, title=_scene_title(scene)) if legend else _to_pil(img)
        image.save(tmp, format="PNG", optimize=True)
    logger.info("wrote preview %s (%d x %d)", out_path, image.width, image.height)
    return out_path


# --- reading --------------------------------------------------------------------------------


def _pick_bands(src: Any, bands: Sequence[int] | None) -> list[int]:
    if bands is not None:
        bad = [b for b in bands if not 1 <= b <= src.count]
        if bad:
            raise InputRasterError(f"{src.name}: has bands 1..{src.count}; cannot show band(s) {bad}")
        return list(bands)
    if src.count < 3:
        return [1]
    from rasterio.enums import ColorInterp

    interp = {ci: i + 1 for i, ci in enumerate(src.colorinterp)}
    if all(ci in interp for ci in (ColorInterp.red, ColorInterp.green, ColorInterp.blue)):
        return [interp[ColorInterp.red], interp[ColorInterp.green], interp[ColorInterp.blue]]
    desc = [(d or "").strip().lower() for d in src.descriptions]
    found = []
    for names in _RGB_NAMES:
        match = next((i + 1 for i, d in enumerate(desc) if d in names), None)
        if match is None:
            break
        found.append(match)
    return found if len(found) == 3 else [1, 2, 3]


def _local_scene(scene: str | os.PathLike[str] | SceneSource | SceneInfo) -> list[Path]:
    from geopsp.io.scene import SceneInfo

    source = scene.source if isinstance(scene, SceneInfo) else scene
    if isinstance(source, SceneSource):
        return [source.local] if source.local is not None else []
    return [] if is_remote(source) else [Path(source)] if not str(source).lower().endswith(".json") else []


def _scene_title(scene: str | os.PathLike[str] | SceneSource | SceneInfo) -> str:
    from geopsp.io.scene import SceneInfo

    return scene_name(scene.source if isinstance(scene, SceneInfo) else scene)


def _read_scene(
    scene: str | os.PathLike[str] | SceneSource | SceneInfo, bands: Sequence[int] | None, max_size: int
) -> tuple[NDArray[np.uint8], NDArray[np.bool_], dict[str, Any]]:
    from rasterio.enums import Resampling

    from geopsp.io.scene import open_scene

    with open_scene(scene) as (src, _):
        chosen = _pick_bands(src, bands)
        scale = min(1.0, max_size / max(src.width, src.height))
        h = max(1, round(src.height * scale))
        w = max(1, round(src.width * scale))
        resampling = Resampling.average if scale < 1 else Resampling.nearest
        data = src.read(chosen, out_shape=(len(chosen), h, w), resampling=resampling, masked=True)
        valid: NDArray[np.bool_] = np.asarray(~np.ma.getmaskarray(data).any(axis=0), dtype=bool)
        grid = {
            "height": h,
            "width": w,
            "crs": src.crs,
            "transform": _scaled(src.transform, src.width / w, src.height / h),
            "src_shape": (src.height, src.width),
        }
    planes = [stretch(np.ma.getdata(data[i]), valid) for i in range(len(chosen))]
    rgb = np.stack(planes * 3 if len(planes) == 1 else planes, axis=-1)
    return rgb, valid, grid


def _scaled(t: Any, sx: float, sy: float) -> Any:
    """Return the transform of the same raster resampled to pixels ``sx`` x ``sy`` times larger."""
    from affine import Affine

    return Affine(t.a * sx, t.b * sy, t.c, t.d * sx, t.e * sy, t.f)


def _read_classes(source: SceneSource, grid: dict[str, Any]) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
    from rasterio.enums import Resampling
    from rasterio.errors import RasterioError

    from geopsp.io.scene import open_raster, read_failure

    h, w = grid["height"], grid["width"]
    with open_raster(source, what="class raster") as src:
        nodata = src.nodata
        try:
            same_grid = (src.height, src.width) == grid["src_shape"] and (
                src.crs is None or grid["crs"] is None or (src.crs == grid["crs"])
            )
            if same_grid or src.crs is None or grid["crs"] is None:
                if not same_grid:
                    logger.warning("%s: grid differs from the scene's and cannot be reprojected; stretching it", source)
                down = src.height > h
                ids = src.read(1, out_shape=(h, w), resampling=Resampling.mode if down else Resampling.nearest)
            else:
                from rasterio.warp import reproject

                ids = np.full((h, w), nodata if nodata is not None else 0, dtype=src.dtypes[0])
                reproject(
                    source=_band(src),
                    destination=ids,
                    dst_transform=grid["transform"],
                    dst_crs=grid["crs"],
                    dst_nodata=nodata,
                    resampling=Resampling.mode,
                )
        except RasterioError as exc:
            raise read_failure(source, exc, rows=(0, src.height - 1)) from exc
    ids64 = ids.astype(np.int64)
    valid = np.ones(ids.shape, dtype=bool) if nodata is None else ids64 != int(nodata)
    return ids64, valid


def _band(src: Any) -> Any:
    import rasterio

    return rasterio.band(src, 1)


def _table(source: SceneSource, classes: ClassTable | None, ids: NDArray[np.int64]) -> ClassTable:
    from geopsp.vectorize import inspect_class_raster

    table = classes
    if table is None:
        try:
            table = inspect_class_raster(source).classes
        except InputRasterError:
            table = None
    return complete_classes(table, np.unique(ids)) if len(ids) else (table or ClassTable.default(1))


def _background_ids(table: ClassTable, background: Sequence[int | str] | None) -> set[int]:
    """Return the ids of the classes left unpainted: ``background`` (ids or names), else the table's by name."""
    if background is None:
        return set(table.background_ids)
    by_name = {c.name.lower(): c.id for c in table}
    out = set()
    for item in background:
        key = str(item).strip()
        if key.lower() in by_name:
            out.add(by_name[key.lower()])
        elif key.isdigit() and int(key) in table.ids:
            out.add(int(key))
        else:
            known = ", ".join(f"{c.id} ({c.name})" for c in table)
            raise ConfigError(f"background class {item!r} is not in the class table; use one of {known}")
    return out


# --- drawing --------------------------------------------------------------------------------


def _compose(
    rgb: NDArray[np.uint8],
    valid: NDArray[np.bool_],
    ids: NDArray[np.int64],
    cvalid: NDArray[np.bool_],
    table: ClassTable,
    *,
    alpha: float,
    outlines: bool,
    background: set[int],
) -> NDArray[np.uint8]:
    lut_ids = np.asarray(table.ids, dtype=np.int64)
    lut = np.asarray([c.color for c in table], dtype=np.float64)
    order = np.argsort(lut_ids)
    pos = np.searchsorted(lut_ids[order], ids)
    pos = np.clip(pos, 0, len(order) - 1)
    known = cvalid & (lut_ids[order][pos] == ids)
    if background:
        known &= ~np.isin(ids, np.fromiter(background, dtype=np.int64))
    colors = lut[order][pos]
    out = rgb.astype(np.float64)
    out[~valid] = 255.0  # outside the scene's footprint: white
    k = known[..., None]
    out = np.where(k, out * (1.0 - alpha) + colors * alpha, out)
    if outlines:
        edge = np.zeros(ids.shape, dtype=bool)
        diff_x = ids[:, 1:] != ids[:, :-1]
        diff_y = ids[1:, :] != ids[:-1, :]
        edge[:, 1:] |= diff_x
        edge[1:, :] |= diff_y
        edge &= cvalid
        out[edge] = (30.0, 30.0, 30.0)
    return np.clip(out, 0, 255).round().astype(np.uint8)


def _to_pil(img: NDArray[np.uint8]) -> Any:
    from PIL import Image

    return Image.fromarray(img, mode="RGB")


def _with_legend(img: NDArray[np.uint8], table: ClassTable, background: set[int], *, title: str) -> Any:
    """Return the image with a legend of every class right of it: ``[swatch]  id  name`` per row.

    The font grows with the image (11 to 18 px); the panel is as wide as its widest text, so
    nothing is cut off, and ids are right-aligned in their own column, a gap on either side.
    """
    from PIL import Image, ImageDraw, ImageFont

    h, w = img.shape[:2]
    size = max(11, min(18, round(max(h, w) / 60)))
    font = ImageFont.load_default(size=size)
    line = math.ceil(size * 1.6)
    swatch = size
    pad = size
    gap = max(6, round(size * 0.75))  # swatch to id, id to name: "[#]  1  forest", never "1forest"
    id_w = max(_text_width(font, str(c.id)) for c in table)
    name_w = max(_text_width(font, c.name) for c in table)
    row_w = swatch + gap + id_w + gap + name_w
    legend_w = pad + max(row_w, _text_width(font, title)) + pad
    legend_h = pad * 2 + line * (len(table) + 1)
    canvas = Image.new("RGB", (w + legend_w, max(h, legend_h)), (255, 255, 255))
    canvas.paste(_to_pil(img), (0, 0))
    draw = ImageDraw.Draw(canvas)
    ink = (20, 20, 20)
    x0 = w + pad
    mid = pad + line // 2
    draw.text((x0, mid), title, fill=ink, font=font, anchor="lm")
    for c in table:
        mid += line
        top = mid - swatch // 2
        box = (x0, top, x0 + swatch - 1, top + swatch - 1)
        if c.id in background:  # not painted on the image: an empty, struck-through swatch
            draw.rectangle(box, fill=(255, 255, 255), outline=(120, 120, 120))
            draw.line((box[0], box[3], box[2], box[1]), fill=(120, 120, 120))
        else:
            draw.rectangle(box, fill=c.color, outline=(40, 40, 40))
        id_right = x0 + swatch + gap + id_w
        draw.text((id_right, mid), str(c.id), fill=ink, font=font, anchor="rm")
        draw.text((id_right + gap, mid), c.name, fill=ink, font=font, anchor="lm")
    return canvas


def _text_width(font: Any, text: str) -> int:
    """Width in pixels of ``text`` drawn from x = 0, ink included (0 for an empty text)."""
    return math.ceil(font.getbbox(text, anchor="lm")[2]) if text else 0
