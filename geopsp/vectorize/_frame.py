"""Pixel-space regions -> GeoDataFrame chunks with the output attributes, in map coordinates."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import shapely
from numpy.typing import NDArray

from geopsp.classes import ClassTable, complete_classes
from geopsp.vectorize._confidence import decode_stats, empty_stats
from geopsp.vectorize._measure import Measurer
from geopsp.vectorize._source import RasterSource
from geopsp.vectorize._stitch import Components
from geopsp.vectorize._strips import NODATA_VALUE

if TYPE_CHECKING:
    import geopandas as gpd

__all__ = ["CONFIDENCE_FIELDS", "FIELDS", "SHAPEFILE_NAMES", "Framer"]

FIELDS = ("class_id", "class_name", "area_m2", "perimeter_m", "scene")
"""Attribute columns of every polygon layer, in order (Shapefiles: ``perim_m``, for dBASE's 10 characters)."""

CONFIDENCE_FIELDS = ("conf_mean", "conf_min", "disagree_frac")
"""Columns added after :data:`FIELDS` with QA rasters: ``conf_mean`` and ``conf_min`` with the
confidence raster, ``disagree_frac`` with the disagreement raster (Shapefiles: ``dis_frac``)."""

SHAPEFILE_NAMES = {"perimeter_m": "perim_m", "disagree_frac": "dis_frac"}
"""Field names shortened in Shapefiles (dBASE allows 10 characters)."""

_CHUNK_FEATURES = 5_000  # features per append to the output file (bounds the writer's memory)


class Framer:
    """Turn pixel-space regions into GeoDataFrame chunks with the output attributes.

    Parameters
    ----------
    src : RasterSource
        The class raster (transform, CRS, centre).
    classes : ClassTable or None
        Class names; ``class_<id>`` for ids it lacks.
    scene : str
        Value of the ``scene`` attribute.
    skip : tuple of int
        Classes left out of the layer.
    short_names : bool
        Shapefile field names (:data:`SHAPEFILE_NAMES`).
    confidence, disagreement : bool, default False
        Add the :data:`CONFIDENCE_FIELDS` decoded from the regions' QA counts.
    """

    def __init__(
        self,
        src: RasterSource,
        classes: ClassTable | None,
        scene: str,
        skip: tuple[int, ...],
        *,
        short_names: bool,
        confidence: bool = False,
        disagreement: bool = False,
    ) -> None:
        self.src = src
        self._rename = SHAPEFILE_NAMES if short_names else {}
        self.confidence = confidence
        self.disagreement = disagreement
        self.table = classes
        self.scene = scene
        self.skip = np.asarray(sorted(skip), dtype=np.int64)
        self.count = 0
        self._seen: set[int] = set()
        self._names = {c.id: c.name for c in classes} if classes is not None else {}
        self._measure = Measurer(src.crs, src.center)
        t = src.transform
        self._identity = t.is_identity
        crs = src.crs
        self.crs: Any = None
        if crs is not None:
            epsg = crs.to_epsg()
            self.crs = f"EPSG:{epsg}" if epsg else crs.to_wkt()

    def field(self, name: str) -> str:
        """Return the column name of attribute ``name`` in this layer (shortened for Shapefiles)."""
        return self._rename.get(name, name)

    def to_map(self, geoms: NDArray[np.object_]) -> NDArray[np.object_]:
        """Pixel coordinates -> map coordinates (the raster's affine transform)."""
        if self._identity or len(geoms) == 0:
            return geoms
        t = self.src.transform

        def affine(xy: NDArray[np.float64]) -> NDArray[np.float64]:
            x, y = xy[:, 0], xy[:, 1]
            out = np.empty_like(xy)
            if t.b == 0 and t.d == 0:  # north-up: two fused multiply-adds, no matrix product
                np.multiply(x, t.a, out=out[:, 0])
                out[:, 0] += t.c
                np.multiply(y, t.e, out=out[:, 1])
                out[:, 1] += t.f
            else:
                out[:, 0] = t.a * x + t.b * y + t.c
                out[:, 1] = t.d * x + t.e * y + t.f
            return out

        return np.asarray(shapely.transform(geoms, affine), dtype=object)

    def area_m2(self, pixel_geoms: NDArray[np.object_]) -> NDArray[np.float64]:
        """Area in square metres of pixel-space polygons."""
        return self._measure(self.to_map(pixel_geoms))[0]

    def class_table(self) -> ClassTable:
        """Return the classes seen so far, completed with defaults for ids the table lacks."""
        values = np.asarray(sorted(self._seen), dtype=np.int64)
        if self.table is not None and not len(values):
            return self.table
        if self.table is None and not len(values):
            return ClassTable.default(1)
        return complete_classes(self.table, values)

    def frame(self, comps: Components) -> gpd.GeoDataFrame:
        """One GeoDataFrame of regions (nodata and skipped classes left out)."""
        import geopandas as gpd

        keep = comps.values != NODATA_VALUE
        if len(self.skip):
            keep &= ~np.isin(comps.values, self.skip)
        values = comps.values[keep]
        geoms = self.to_map(comps.geoms[keep])
        area, perimeter = self._measure(geoms)
        uniq = np.unique(values)
        self._seen.update(int(v) for v in uniq)
        names = np.array([self._names.get(int(v), f"class_{int(v)}") for v in uniq], dtype=object)
        class_name = names[np.searchsorted(uniq, values)] if len(values) else np.empty(0, dtype=object)
        self.count += len(values)
        columns: dict[str, Any] = {
            "class_id": values.astype(np.int32),
            "class_name": class_name,
            "area_m2": area,
            "perimeter_m": perimeter,
            "scene": np.full(len(values), self.scene, dtype=object),
        }
        if self.confidence or self.disagreement:
            stats = comps.stats[keep] if comps.stats is not None else empty_stats(len(values))
            columns.update(decode_stats(stats, confidence=self.confidence, disagreement=self.disagreement))
        return gpd.GeoDataFrame(
            {self.field(k): v for k, v in columns.items()},
            geometry=gpd.GeoSeries(geoms, crs=self.crs),
            crs=self.crs,
        )

    def chunks(self, batches: Iterator[Components]) -> Iterator[gpd.GeoDataFrame]:
        """Group batches into chunks of about ``_CHUNK_FEATURES`` features; at least one chunk."""
        buf: list[Components] = []
        size = 0
        emitted = False
        for batch in batches:
            if not len(batch):
                continue
            buf.append(batch)
            size += len(batch)
            if size >= _CHUNK_FEATURES:
                yield self.frame(Components.concat(buf))
                emitted = True
                buf, size = [], 0
        if buf or not emitted:
            yield self.frame(Components.concat(buf))
