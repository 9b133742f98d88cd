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
from typing import Any

import numpy as np
import shapely
from numpy.typing import NDArray

from geopsp.classes import ClassTable
from geopsp.config.schema import VectorizeConfig
from geopsp.errors import ConfigError, NotGeoreferencedWarning, OutputError
from geopsp.io.atomic import StagedOutputs, check_output_path, temp_name
from geopsp.io.source import resolve_scene
from geopsp.io.vector import VECTOR_FORMATS, VectorFormat, vector_files, write_vector
from geopsp.vectorize._confidence import QualityRasters, conf_mean, empty_stats, open_quality
from geopsp.vectorize._eliminate import eliminate_small, fill_small_holes
from geopsp.vectorize._frame import CONFIDENCE_FIELDS, FIELDS, Framer
from geopsp.vectorize._geometry import simplify_coverage
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

__all__ = ["CONFIDENCE_FIELDS", "FIELDS", "vectorize"]

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


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
    confidence: str | os.PathLike[str] | None = None,
    disagreement: str | os.PathLike[str] | None = None,
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
        Options (strip height, sieve, simplification, minimum area, minimum confidence, hole
        filling, connectivity, skipped classes, worker processes, style); default:
        ``VectorizeConfig()``.
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
    confidence : str or os.PathLike, optional
        The confidence raster written with the class raster (``<stem>_probability.tif``,
        uint8, :mod:`geopsp.encoding`): adds ``conf_mean`` and ``conf_min``, and is needed by
        ``config.min_confidence`` and ``config.style = "confidence"``.
    disagreement : str or os.PathLike, optional
        The tile disagreement raster (``<stem>_disagreement.tif``): adds ``disagree_frac``.
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
        The raster is missing, unreachable, unreadable or not integer; a QA raster is
        missing, not uint8 or on another grid.
    ConfigError
        Unknown format, an option out of range, or ``min_confidence`` (or the confidence
        style) without a confidence raster.
    OutputExistsError
        ``out`` (or its ``.qml``) exists and ``overwrite`` is False.

    Notes
    -----
    Attributes: ``class_id``, ``class_name``, ``area_m2`` and ``perimeter_m`` (true metres,
    also for geographic CRSs, see :mod:`geopsp.vectorize._measure`) and ``scene``. The layer
    CRS is the raster's. With QA rasters: ``conf_mean`` and ``conf_min`` (decoded 0..1 over the
    polygon's pixels, nodata pixels excluded) and ``disagree_frac`` (share of its pixels where
    some covering tile predicted another class), read strip by strip like the classes and
    exact whatever the strips: counts of joined, merged and filled regions add up.

    ``min_confidence``: regions whose ``conf_mean`` is below it are merged into the neighbour
    they share the longest border with, by the same rules as small regions
    (:mod:`geopsp.vectorize._eliminate`); one with no neighbour but nodata is dropped.

    Memory: without ``sieve_px``, ``min_area_m2``, ``min_confidence`` and ``fill_holes_m2``
    everything streams (one strip plus the regions still open at the current seam). Those need
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
    .. versionadded:: 0.2
       ``confidence``, ``disagreement``, ``config.min_confidence`` and ``config.style``.
    """
    cfg = config if config is not None else VectorizeConfig.model_validate({})
    _need_confidence(cfg, confidence)
    if outputs is not None:
        overwrite = outputs.overwrite
    src = inspect_class_raster(class_raster)
    quality = QualityRasters.check(str(src.source), src, confidence=confidence, disagreement=disagreement)
    out_path = Path(out)
    fmt = _output_format(out_path, cfg)
    own_qml = out_path.with_suffix(".qml")
    qml_path: Path | None = own_qml
    local = src.source.local
    inputs = [local] if local is not None else []
    inputs += [qa for p in (confidence, disagreement) if p is not None and (qa := resolve_scene(p).local) is not None]
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
    eliminate = cfg.sieve_px > 0 or cfg.min_area_m2 > 0 or cfg.fill_holes_m2 > 0 or bool(cfg.min_confidence)
    frames = Framer(
        src,
        table,
        scene_name,
        cfg.skip_classes,
        short_names=fmt == "shp",
        confidence=quality.confidence is not None,
        disagreement=quality.disagreement is not None,
    )
    logger.info(
        "vectorizing %s (%d x %d) in strips of %d rows%s",
        src.source,
        src.width,
        src.height,
        cfg.block_rows,
        " (collecting regions: sieve/min-area/min-confidence/holes)" if eliminate else "",
    )
    strips = _strips(
        src, cfg, quality, keep_nodata=eliminate or simplify_px > 0, simplify_px=0.0 if eliminate else simplify_px
    )
    if eliminate:
        batches = _eliminated(strips, src, cfg, frames, simplify_px, progress)
    else:
        batches = _streamed(strips, cfg.connectivity, src.height, progress, exact=simplify_px <= 0)
    chunks = frames.chunks(batches)
    layer_name = layer or out_path.stem
    geometry_type = "MultiPolygon" if cfg.connectivity == 8 else "Polygon"

    def finalize(tmp: Path, name: str) -> None:
        if fmt == "gpkg":
            from geopsp.style.gpkg import write_gpkg_styles

            write_gpkg_styles(tmp, name, frames.class_table(), default=cfg.style, confidence=frames.confidence)

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

            write_vector_qml(staged.temp(qml_path), frames.class_table(), style=cfg.style)
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


def _need_confidence(cfg: VectorizeConfig, confidence: str | os.PathLike[str] | None) -> None:
    """Refuse the options that read ``conf_mean`` when no confidence raster is given."""
    option = cfg.reads_confidence
    if confidence is None and option is not None:
        raise ConfigError(
            f"{getattr(cfg, option)!r} needs the polygons' confidence: pass --confidence <stem>_probability.tif "
            "(or predict with --probabilities or --qa), or drop it",
            key=f"vectorize.{option}",
        )


# --- strips ---------------------------------------------------------------------------------


def _jobs(
    src: RasterSource, cfg: VectorizeConfig, quality: QualityRasters, keep_nodata: bool, simplify_px: float
) -> list[StripJob]:
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
            quality=quality if quality.given else None,
        )
        for i, r0 in enumerate(range(0, src.height, rows))
    ]


def _workers(cfg: VectorizeConfig, n_jobs: int) -> int:
    workers = cfg.workers
    if workers == 0:
        workers = min(os.cpu_count() or 1, 8) if n_jobs >= 4 else 1
    return max(1, min(workers, n_jobs))


def _strips(
    src: RasterSource, cfg: VectorizeConfig, quality: QualityRasters, *, keep_nodata: bool, simplify_px: float
) -> Iterator[Strip]:
    """Polygonized strips in order, from this process or a pool of worker processes."""
    jobs = _jobs(src, cfg, quality, keep_nodata, simplify_px)
    workers = _workers(cfg, len(jobs))
    if workers == 1:
        import rasterio

        with open_quietly(src.source.given) as ds, rasterio.Env(GDAL_CACHEMAX=cache_mb(ds)):
            with open_quality(quality) as qa:
                for job in jobs:
                    yield process_strip(ds, job, qa)
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
    frames: Framer,
    simplify_px: float,
    progress: Progress | None,
) -> Iterator[Components]:
    """Collect whole regions, remove small (and unsure) ones, fill holes, then simplify everything at once."""
    nodata_parts: list[NDArray[np.object_]] = []

    def tap(it: Iterator[Strip]) -> Iterator[Strip]:
        for strip in it:
            nodata_parts.append(strip.geoms[strip.values == NODATA_VALUE])
            yield strip

    comps = Components.concat(list(_streamed(tap(strips), cfg.connectivity, src.height, progress)))
    nodata = np.concatenate(nodata_parts) if nodata_parts else np.empty(0, dtype=object)
    n_nodata = len(nodata)
    regions = Components(
        np.concatenate([comps.geoms, nodata]),
        np.concatenate([comps.values, np.full(n_nodata, NODATA_VALUE, dtype=np.int64)]),
        None if comps.stats is None else np.concatenate([comps.stats, empty_stats(n_nodata)]),
    )
    if regions.stats is None and (frames.confidence or frames.disagreement):  # no region at all
        regions.stats = empty_stats(len(regions))
    geoms = regions.geoms
    small = np.zeros(len(geoms), dtype=bool)
    if cfg.sieve_px > 0:
        small |= shapely.area(geoms) < cfg.sieve_px
    if cfg.min_area_m2 > 0:
        small |= frames.area_m2(geoms) < cfg.min_area_m2
    unsure = None
    if cfg.min_confidence and regions.stats is not None:
        unsure = conf_mean(regions.stats) < cfg.min_confidence  # NaN (no confidence pixels): kept
        small |= unsure
    n0 = len(geoms)
    regions = eliminate_small(regions, small, drop_alone=unsure)
    if cfg.fill_holes_m2 > 0:
        regions = fill_small_holes(regions, cfg.fill_holes_m2, frames.area_m2)
    logger.info("small regions, unsure regions and holes: %d -> %d polygons", n0, len(regions))
    if simplify_px > 0:
        regions.geoms = simplify_coverage(regions.geoms, simplify_px)
    yield regions
