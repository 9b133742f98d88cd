"""Open a class raster and gather what vectorizing needs: size, georeference, classes."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from geopsp.classes import ClassInfo, ClassTable
from geopsp.errors import InputRasterError
from geopsp.io.class_metadata import LEGACY_SCENE_TAG, SCENE_TAG, class_table_from_tags
from geopsp.io.scene import open_raster
from geopsp.io.source import SceneSource, resolve_scene

__all__ = ["RasterSource", "inspect_class_raster"]

logger = logging.getLogger(__name__)

_INT_DTYPES = ("uint8", "uint16", "int8", "int16", "int32", "uint32")
_FLOAT_DTYPES = ("float32", "float64")  # accepted when every value is a whole number


@dataclass(frozen=True)
class RasterSource:
    """What :func:`geopsp.vectorize.vectorize` knows about its input.

    Attributes
    ----------
    source : SceneSource
        The class raster: what the user named and what GDAL opens, local or remote
        (:func:`geopsp.io.source.resolve_scene`).
    """

    source: SceneSource
    width: int
    height: int
    dtype: str
    crs: Any
    transform: Any
    nodata: float | None
    classes: ClassTable | None
    scene: str | None

    @property
    def georeferenced(self) -> bool:
        """Whether the raster has a CRS."""
        return self.crs is not None

    @property
    def center(self) -> tuple[float, float]:
        """Map coordinates of the raster's centre."""
        t = self.transform
        col, row = self.width / 2.0, self.height / 2.0
        return float(t.a * col + t.b * row + t.c), float(t.d * col + t.e * row + t.f)


def inspect_class_raster(path: str | os.PathLike[str] | SceneSource) -> RasterSource:
    """Open a class raster, local or remote (``http(s)://``, ``s3://``, ``/vsi…/``), and describe it.

    Raises
    ------
    InputRasterError
        The file is missing, unreachable, not a raster, or its band 1 does not hold integers.
    """
    source = resolve_scene(path)
    with open_raster(source, what="class raster") as src:
        dtype = src.dtypes[0]
        tags = src.tags()
        try:
            cmap = src.colormap(1)
        except ValueError:
            cmap = None
        info = RasterSource(
            source=source,
            width=src.width,
            height=src.height,
            dtype=dtype,
            crs=src.crs,
            transform=src.transform,
            nodata=src.nodata,
            classes=None,
            scene=tags.get(SCENE_TAG) or tags.get(LEGACY_SCENE_TAG) or None,
        )
    if dtype not in _INT_DTYPES + _FLOAT_DTYPES:
        raise InputRasterError(
            f"{source}: band 1 is {dtype}; a class raster holds integer class ids ({', '.join(_INT_DTYPES)})"
        )
    classes = _class_table(source, tags, cmap, info.nodata)
    return RasterSource(**{**info.__dict__, "classes": classes})


def _class_table(
    source: SceneSource, tags: dict[str, str], cmap: dict[int, tuple[int, ...]] | None, nodata: float | None
) -> ClassTable | None:
    """Return the class table stored by geopsp, else one built from the colour table."""
    try:
        table = class_table_from_tags(tags)
    except Exception as exc:  # a damaged tag must not stop vectorizing
        logger.warning("%s: ignoring unreadable class table tag (%s)", source, exc)
        table = None
    if table is not None:
        return table
    if not cmap:
        return None
    # A GDAL colour table lists 256 (or more) entries; only non-black, opaque ones are classes.
    entries = [
        ClassInfo(int(v), f"class_{v}", (int(c[0]), int(c[1]), int(c[2])))
        for v, c in sorted(cmap.items())
        if (nodata is None or v != nodata) and (len(c) < 4 or c[3] > 0) and tuple(c[:3]) != (0, 0, 0) and v <= 65534
    ]
    return ClassTable(tuple(entries)) if entries else None
