"""``vectorize()``: class raster -> clean land-use polygons, strip by strip."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import shapely
from numpy.typing import NDArray

from geopsp.classes import ClassTable, complete_classes
from geopsp.config.schema import VectorizeConfig
from geopsp.errors import ConfigError, NotGeoreferencedWarning, OutputError
from geopsp.io.atomic import StagedOutputs, check_output_path, temp_name
from geopsp.io.vector import VECTOR_FORMATS, VectorFormat, vector_files, write_vector
from geopsp.vectorize._eliminate import eliminate_small, fill_small_holes
from geopsp.vectorize._geometry import simplify_coverage
from geopsp.vectorize._measure import Measurer
from geopsp.vectorize._source import RasterSource, inspect_class_raster
from geopsp.vectorize._stitch import Components, Stitcher
from geopsp.vectorize._strips import (
    NODATA_VALUE,
    Strip,
    StripJob,
    cache_mb,
    open_quietly,
    process_strip,
    strip_task,
    unpack,
)

if TYPE_CHECKING:
    import geopandas as gpd

__all__ = ["FIELDS", "vectorize"]

logger = logging.getLogger(__name__)

FIELDS = ("class_id", "class_name", "area_m2", "perimeter_m", "scene")
"""Attribute columns of every polygon layer, in order (Shapefiles: ``perim_m``, for dBASE's 10 characters)."""

Progress = Callable[[int, int], None]

_CHUNK_FEATURES = 5_000  # features per append to the output file (bounds the writer's memory)


def vectorize(
    class_raster: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    config: VectorizeConfig | None = None,
    classes: ClassTable | None = None,
    scene: str | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    layer: str | None = None,
    outputs: StagedOutputs | None = None,
) -> Path:
    """Turn a class raster into land-use polygons, one polygon per connected region.

    The raster is read in full-width strips of ``config.block_rows`` rows and never held
    whole. Regions that continue across a strip border are joined, so every field, lake or
    building is exactly one polygon wherever the strips (or the prediction tiles) fell; with
    no simplification and no small-region removal the polygons are exactly the ones GDAL
    would draw from the whole raster.

    Parameters
    ----------
    class_raster : str or os.PathLike
        Single-band integer raster of class ids (nodata, if set, makes no polygons): a local
        file, an ``http(s)://`` or ``s3://`` URL or a GDAL ``/vsi…/`` path, read strip by strip
        (remote ones through GDAL's range requests, :func:`geopsp.io.source.gdal_env`).
    out : str or os.PathLike
        Output vector file. Its suffix picks the format (``.gpkg``, ``.geojson``, ``.fgb``,
        ``.shp``, ``.parquet``); an unknown suffix uses ``config.format``.
    config : VectorizeConfig, optional
        Options (strip height, sieve, simplification, minimum area, hole filling,
        connectivity, skipped classes, worker processes); default: ``VectorizeConfig()``.
    classes : ClassTable, optional
        Class names and colours; default: the table stored in the raster by geopsp, else its
        colour table, else ``class_<id>`` names.
    scene : str, optional
        Value of the ``scene`` attribute; default: the raster's ``GEOPSP_SCENE`` tag, else
        its file stem.
    overwrite : bool, default False
        Replace an existing output (with ``outputs``: the set's ``overwrite`` applies).
    progress : callable, optional
        Called as ``progress(rows_done, rows_total)``.
    layer : str, optional
        Layer name; default: the output's stem.
    outputs : StagedOutputs, optional
        Stage every file written (the vector file, a Shapefile's companions, the ``.qml``) in
        this set instead of committing them: they reach their final names when the caller
        commits the set, whose :meth:`~geopsp.io.atomic.StagedOutputs.commit` lists them.
        Default: a set of their own, committed at the end, so the files appear together.

        .. versionadded:: 0.2

    Returns
    -------
    Path
        The output file. A GeoPackage carries its QGIS style in ``layer_styles``; every
        format gets a ``<stem>.qml`` sidecar (a Shapefile also its ``.shx``, ``.dbf``,
        ``.prj`` and ``.cpg``: :func:`geopsp.io.vector.vector_files`).

    Raises
    ------
    InputRasterError
        The raster is missing, unreachable, unreadable or not integer.
    ConfigError
        Unknown format, or an option out of range.
    OutputExistsError
        ``out`` (or its ``.qml``) exists and ``overwrite`` is False.

    Notes
    -----
    Attributes: ``class_id``, ``class_name``, ``area_m2`` and ``perimeter_m`` (true metres,
    also for geographic CRSs, see :mod:`geopsp.vectorize._measure`) and ``scene``. The layer
    CRS is the raster's.

    Memory: without ``sieve_px``, ``min_area_m2`` and ``fill_holes_m2`` everything streams
    (one strip plus the regions still open at the current seam). Those three options need
    whole regions and their neighbours, so the polygons (never the raster) are collected
    first; simplification then runs over the whole coverage at once.

    Simplification keeps the polygons a coverage (no gaps, no overlaps, shared edges
    shared): GEOS coverage simplification treats every edge between two neighbours once.
    Streaming, it runs per strip on all of the strip's pieces (nodata included, so nodata
    borders are simplified too) with the strip's outline frozen, and the seam points where
    the next strip's corners lie are inserted first, so pieces on both sides of a seam still
    match exactly when they are joined. The price: a boundary that crosses a seam keeps its
    one vertex on the seam line. With ``sieve_px``/``min_area_m2``/``fill_holes_m2`` the
    whole coverage is simplified at once and nothing is pinned.

    .. versionadded:: 0.1.0
    """
    cfg = config if config is not None else VectorizeConfig.model_validate({})
    if outputs is not None:
        overwrite = outputs.overwrite
    src = inspect_class_raster(class_raster)
    out_path = Path(out)
    fmt = _output_format(out_path, cfg)
    own_qml = out_path.with_suffix(".qml")
    qml_path: Path | None = own_qml
    local = src.source.local
    inputs = [local] if local is not None else []
    # only a local raster can have a style sidecar the output's would replace
    if local is not None and own_qml.absolute() == local.with_suffix(".qml").absolute() and own_qml.exists():
        # QGIS finds styles by file stem: <stem>.qml already styles the class raster.
        if fmt != "gpkg":
            raise OutputError(
                f"{out_path}: its style sidecar {own_qml.name} would replace the class raster's own style; "
                "give the polygons another file name (e.g. <scene>_polygons.gpkg)"
            )
        logger.warning(
            "%s: not writing %s, which styles the class raster; the style is inside the GeoPackage",
            out_path,
            own_qml.name,
        )
        qml_path = None
    for part in vector_files(out_path, existing=False):
        check_output_path(part, overwrite=overwrite, inputs=inputs)
    if qml_path is not None:
        check_output_path(qml_path, overwrite=overwrite, inputs=inputs)
    table = classes if classes is not None else src.classes
    scene_name = scene if scene is not None else (src.scene or src.source.stem)
    if not src.georeferenced:
        if src.transform.is_identity:
            what = "no CRS or geotransform; polygons are in pixel coordinates and areas in pixels"
        else:
            what = "a geotransform but no CRS; polygons are in its map units with no CRS, and so are areas and lengths"
        warnings.warn(f"{src.source}: class raster has {what}", NotGeoreferencedWarning, stacklevel=2)
    pixel = math.sqrt(abs(src.transform.determinant)) or 1.0
    simplify_px = cfg.simplify / pixel
    eliminate = cfg.sieve_px > 0 or cfg.min_area_m2 > 0 or cfg.fill_holes_m2 > 0
    frames = _Framer(src, table, scene_name, cfg.skip_classes, short_names=fmt == "shp")
    logger.info(
        "vectorizing %s (%d x %d) in strips of %d rows%s",
        src.source,
        src.width,
        src.height,
        cfg.block_rows,
        " (collecting regions: sieve/min-area/holes)" if eliminate else "",
    )
    strips = _strips(src, cfg, keep_nodata=eliminate or simplify_px > 0, simplify_px=0.0 if eliminate else simplify_px)
    if eliminate:
        batches = _eliminated(strips, src, cfg, frames, simplify_px, progress)
    else:
        batches = _streamed(strips, cfg.connectivity, src.height, progress, exact=simplify_px <= 0)
    chunks = frames.chunks(batches)
    layer_name = layer or out_path.stem
    geometry_type = "MultiPolygon" if cfg.connectivity == 8 else "Polygon"

    def finalize(tmp: Path, name: str) -> None:
        if fmt == "gpkg":
            from geopsp.style.vector import write_gpkg_style

            write_gpkg_style(tmp, name, frames.class_table())

    with contextlib.ExitStack() as stack:
        staged = outputs if outputs is not None else stack.enter_context(StagedOutputs(overwrite=overwrite))
        tmp = temp_name(out_path)
        try:
            write_vector(
                chunks, tmp, format=fmt, layer=layer_name, geometry_type=geometry_type, finalize=finalize, inputs=inputs
            )
        finally:  # whatever was written joins the set: committed with it, or removed with it
            for part in vector_files(tmp):
                if part.is_file():
                    staged.add(part, out_path.with_suffix(part.suffix) if part != tmp else out_path)
        if qml_path is not None:
            from geopsp.style.vector import write_vector_qml

            write_vector_qml(staged.temp(qml_path), frames.class_table())
        if outputs is None:
            staged.commit()
    logger.info("%s: %d polygons", out_path, frames.count)
    return out_path


def _output_format(out: Path, cfg: VectorizeConfig) -> VectorFormat:
    suffix = out.suffix.lower()
    from geopsp.io.vector import format_from_path

    if suffix:
        try:
            return format_from_path(out)
        except ConfigError:
            pass
    if cfg.format not in VECTOR_FORMATS:  # pragma: no cover - the schema restricts it
        raise ConfigError(f"unknown vector format {cfg.format!r}")
    return cfg.format


# --- strips ---------------------------------------------------------------------------------


def _jobs(src: RasterSource, cfg: VectorizeConfig, keep_nodata: bool, simplify_px: float) -> list[StripJob]:
    rows = cfg.block_rows
    return [
        StripJob(
            path=src.source.given,
            index=i,
            row0=r0,
            row1=min(r0 + rows, src.height),
            height=src.height,
            connectivity=cfg.connectivity,
            keep_nodata=keep_nodata,
            skip=tuple(cfg.skip_classes),
            simplify_px=simplify_px,
        )
        for i, r0 in enumerate(range(0, src.height, rows))
    ]


def _workers(cfg: VectorizeConfig, n_jobs: int) -> int:
    workers = cfg.workers
    if workers == 0:
        workers = min(os.cpu_count() or 1, 8) if n_jobs >= 4 else 1
    return max(1, min(workers, n_jobs))


def _strips(src: RasterSource, cfg: VectorizeConfig, *, keep_nodata: bool, simplify_px: float) -> Iterator[Strip]:
    """Polygonized strips in order, from this process or a pool of worker processes."""
    jobs = _jobs(src, cfg, keep_nodata, simplify_px)
    workers = _workers(cfg, len(jobs))
    if workers == 1:
        import rasterio

        with open_quietly(src.source.given) as ds, rasterio.Env(GDAL_CACHEMAX=cache_mb(ds)):
            for job in jobs:
                yield process_strip(ds, job)
        return
    import multiprocessing

    # spawn: workers start clean (no inherited threads, CUDA or open datasets).
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        pending: list[Future[Any]] = []
        queue = iter(jobs)
        for job in queue:
            pending.append(pool.submit(strip_task, job))
            if len(pending) >= 2 * workers:
                break
        while pending:
            result = pending.pop(0).result()
            nxt = next(queue, None)
            if nxt is not None:
                pending.append(pool.submit(strip_task, nxt))
            yield unpack(result)


def _streamed(
    strips: Iterator[Strip], connectivity: int, height: int, progress: Progress | None, *, exact: bool = True
) -> Iterator[Components]:
    stitcher = Stitcher(connectivity, drop_seam_vertices=exact)
    for strip in strips:
        yield stitcher.add(strip)
        if progress is not None:
            progress(strip.row1, height)
    yield stitcher.finish()


def _eliminated(
    strips: Iterator[Strip],
    src: RasterSource,
    cfg: VectorizeConfig,
    frames: _Framer,
    simplify_px: float,
    progress: Progress | None,
) -> Iterator[Components]:
    """Collect whole regions, remove small ones, fill holes, then simplify everything at once."""
    nodata_parts: list[NDArray[np.object_]] = []

    def tap(it: Iterator[Strip]) -> Iterator[Strip]:
        for strip in it:
            nodata_parts.append(strip.geoms[strip.values == NODATA_VALUE])
            yield strip

    comps = Components.concat(list(_streamed(tap(strips), cfg.connectivity, src.height, progress)))
    nodata = np.concatenate(nodata_parts) if nodata_parts else np.empty(0, dtype=object)
    geoms = np.concatenate([comps.geoms, nodata])
    values = np.concatenate([comps.values, np.full(len(nodata), NODATA_VALUE, dtype=np.int64)])
    small = np.zeros(len(geoms), dtype=bool)
    if cfg.sieve_px > 0:
        small |= shapely.area(geoms) < cfg.sieve_px
    if cfg.min_area_m2 > 0:
        small |= frames.area_m2(geoms) < cfg.min_area_m2
    n0 = len(geoms)
    geoms, values = eliminate_small(geoms, values, small)
    if cfg.fill_holes_m2 > 0:
        geoms, values = fill_small_holes(geoms, values, cfg.fill_holes_m2, frames.area_m2)
    logger.info("small regions and holes: %d -> %d polygons", n0, len(geoms))
    if simplify_px > 0:
        geoms = simplify_coverage(geoms, simplify_px)
    yield Components(geoms, values)


# --- attributes -----------------------------------------------------------------------------


class _Framer:
    """Turn pixel-space regions into GeoDataFrame chunks with the output attributes."""

    def __init__(
        self, src: RasterSource, classes: ClassTable | None, scene: str, skip: tuple[int, ...], *, short_names: bool
    ) -> None:
        self.src = src
        # Shapefile (dBASE) field names have at most 10 characters.
        self.perimeter_field = "perim_m" if short_names else "perimeter_m"
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
        return gpd.GeoDataFrame(
            {
                "class_id": values.astype(np.int32),
                "class_name": class_name,
                "area_m2": area,
                self.perimeter_field: perimeter,
                "scene": np.full(len(values), self.scene, dtype=object),
            },
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
