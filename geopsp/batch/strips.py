"""Split big scenes into row strips predicted in parallel, and stitch the strips back.

Strip boundaries sit on the output's block rows, so the stitch copies the strips' compressed
tiles; each boundary costs about one extra tile row of compute. Because
:func:`geopsp.pipeline.segment_raster` computes a strip's rows with the scene's global tile
grid, the stitched raster equals a single whole-scene run bit for bit, overviews included.
"""

from __future__ import annotations

import importlib
import itertools
import logging
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from geopsp.config.schema import PredictConfig, VectorizeConfig
from geopsp.errors import OutputError
from geopsp.inference.area_table import ClassAreas, write_class_areas_csv
from geopsp.inference.areas import class_areas
from geopsp.inference.plan import OutputSet, output_set, provenance_tags
from geopsp.inference.summary import RunSummary, merge_strip_summaries, write_summary
from geopsp.io.atomic import StagedOutputs, check_output_path
from geopsp.tiling.windows import axis_offsets

__all__ = ["count_polygons_into", "plan_even_strips", "plan_strips", "stitch_strips", "vectorize_outputs"]

logger = logging.getLogger(__name__)


def plan_strips(
    height: int,
    width: int,
    tile_size: int,
    overlap: int,
    max_pixels: int,
    *,
    block_rows: int = 512,
    workers: int = 1,
) -> list[tuple[int, int]]:
    """Row ranges ``[r0, r1)`` covering a scene, each at most about ``max_pixels`` pixels.

    Boundaries sit on the class raster's block rows (multiples of ``block_rows``, the
    :class:`~geopsp.io.raster.ClassRasterWriter` block size), so the stitch copies the strips'
    compressed tiles as they are. A boundary costs one extra tile row of compute (two when it
    falls inside a tile overlap). A scene of at most one block row is cut on tile-grid offsets.

    Parameters
    ----------
    height, width : int
        Scene size in pixels.
    tile_size, overlap : int
        The prediction tile grid.
    max_pixels : int
        Largest strip (``rows * width``) wanted; a strip is never thinner than one block row
        (one grid step when cut on grid offsets).
    block_rows : int, default 512
        The output's block size.
    workers : int
        Workers the strips run on at once (e.g. GPU workers). With more than one, a scene
        that needs splitting is cut into a multiple of ``workers`` strips of as even a height
        as the cuts allow (:func:`plan_even_strips`), so that no worker runs a second round
        while the others wait: 9 strips of a 20000² scene on 8 GPUs take two rounds, 8 take one.

    Returns
    -------
    list of (int, int)
        Consecutive row ranges from 0 to ``height``; a single ``(0, height)`` when the scene
        is small enough or cannot be cut.

    Examples
    --------
    >>> plan_strips(1000, 100, 256, 32, 10**6)
    [(0, 1000)]
    >>> plan_strips(1000, 100, 256, 32, 50_000, block_rows=128)
    [(0, 384), (384, 768), (768, 1000)]
    >>> plan_strips(400, 1000, 256, 32, 100_000)  # under one block row: on the tile grid
    [(0, 144), (144, 400)]
    """
    if height * width <= max_pixels:
        return [(0, height)]
    cuts = _cuts(height, tile_size, overlap, block_rows)
    if workers > 1:
        count = -(-height * width // max_pixels)
        return _even(height, cuts, -(-count // workers) * workers)
    target = max(1, max_pixels // max(1, width))
    bounds = [0]
    while height - bounds[-1] > target:
        start = bounds[-1]
        later = [c for c in cuts if c > start]
        if not later:
            break
        fitting = [c for c in later if c - start <= target]
        bounds.append(fitting[-1] if fitting else later[0])
    bounds.append(height)
    return list(itertools.pairwise(bounds))


def plan_even_strips(
    height: int, tile_size: int, overlap: int, count: int, *, block_rows: int = 512
) -> list[tuple[int, int]]:
    """Cut a scene into ``count`` row strips of about even height (fewer where it has fewer cuts).

    Strips start on the output's block rows (on tile-grid rows when the scene is at most one
    block row high), as :func:`plan_strips` cuts, at the ones nearest even shares.

    Examples
    --------
    >>> plan_even_strips(20000, 512, 64, 8)[:3]
    [(0, 2560), (2560, 5120), (5120, 7680)]
    >>> plan_even_strips(1000, 256, 32, 8)
    [(0, 512), (512, 1000)]
    """
    return _even(height, _cuts(height, tile_size, overlap, block_rows), count)


def _cuts(height: int, tile_size: int, overlap: int, block_rows: int) -> list[int]:
    """Rows a strip may start on: the block rows, else (one block row at most) the tile-grid rows."""
    cuts = list(range(block_rows, height, block_rows))
    return cuts or [o for o in axis_offsets(height, tile_size, overlap) if o > 0]


def _even(height: int, cuts: Sequence[int], count: int) -> list[tuple[int, int]]:
    bounds = [0]
    for k in range(1, max(1, count)):
        later = [c for c in cuts if c > bounds[-1]]
        if not later:
            break
        bounds.append(min(later, key=lambda c: abs(c - k * height / count)))
    bounds.append(height)
    return [(a, b) for a, b in itertools.pairwise(bounds) if b > a]


def stitch_strips(
    scene: str | os.PathLike[str],
    parts: Sequence[Mapping[str, Any]],
    out: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str],
    predict: PredictConfig,
    locate: Callable[[Path], str] | None = None,
) -> list[Path]:
    """Stitch strip class rasters (and their QA rasters) into the scene's outputs.

    Strips go through :class:`~geopsp.io.raster.ClassRasterWriter` with the same
    georeferencing, classes and tags as a whole-scene run, so colour table, RAT and QML are
    identical and so are pixels and overviews. Strips on block rows (:func:`plan_strips`) lend
    their compressed tiles as they are (:meth:`~geopsp.io.raster.ClassRasterWriter.write_strip`):
    only the overviews are computed and encoded again.

    Parameters
    ----------
    scene : str or os.PathLike
        The input scene.
    parts : sequence of mapping
        Strip results of :func:`geopsp.batch.runner.run_scene`: ``row_range``, ``outputs``
        (strip class raster first), ``summary``.
    out : str or os.PathLike
        Final class raster path (``<stem>_classes.tif``); the other outputs are named after it.
    model : str or os.PathLike
        The bundle (only its metadata is read).
    predict : PredictConfig
        The settings the strips were made with.
    locate : callable, optional
        How the summary names each output (``locate(path)``: its ``s3://`` URI when the set is
        staged for S3); default: its path.

    Returns
    -------
    list of Path
        Every file committed: the class raster first, the summary JSON last, and between them
        the QGIS style, the ``.aux.xml`` (class names, RAT), the QA rasters (if any) and their
        styles, and the class areas CSV (measured on the stitched raster).

    Raises
    ------
    OutputError
        If the strips do not cover the scene exactly or an output cannot be written.
    """
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning as RioNotGeoreferenced

    from geopsp.inference.runtime import model_meta
    from geopsp.io.grid import scene_as_read
    from geopsp.io.raster import ClassRasterWriter

    meta = model_meta(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the strips already warned about a missing CRS
        info = scene_as_read(scene, meta, predict)  # the grid the strips ran on
    source = info.source
    local = [source.local] if source.local is not None else []
    ordered = sorted(parts, key=lambda p: int(p["row_range"][0]))
    rows = [(int(p["row_range"][0]), int(p["row_range"][1])) for p in ordered]
    if rows[0][0] != 0 or rows[-1][1] != info.height or any(a[1] != b[0] for a, b in itertools.pairwise(rows)):
        raise OutputError(f"{source}: strips {rows} do not cover rows 0-{info.height}; rerun the scene")
    planned = output_set(source, out, qa=predict.qa_layers)
    check_output_path(planned.summary, overwrite=True, inputs=local)
    # the class raster, its sidecars and the summary go into place together, the summary last
    with (
        StagedOutputs(overwrite=True) as staged,
        ClassRasterWriter(
            planned.classes,
            width=info.width,
            height=info.height,
            crs=info.crs,
            transform=info.transform,
            classes=meta.classes,
            nodata=meta.nodata,
            dtype=meta.output_dtype,
            compress=predict.compress,
            overwrite=True,
            inputs=local,
            qa_paths=planned.qa,
            tags=provenance_tags(source, meta, (0, info.height)),
        ) as writer,
    ):
        for part, (r0, r1) in zip(ordered, rows, strict=True):
            strip = _strip_outputs(part)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RioNotGeoreferenced)  # the scene's own warning was given
                with rasterio.open(strip.classes) as src:
                    shape = (src.height, src.width)
            if shape != (r1 - r0, info.width):
                raise OutputError(f"{strip.classes}: strip is {shape[0]}x{shape[1]}, expected rows {r0}-{r1}")
            layers = strip.qa
            missing = [name for name in planned.qa if name not in layers]
            if missing:
                raise OutputError(f"{strip.classes}: the strip has no {missing[0]} raster; rerun the scene")
            writer.write_strip(r0, strip.classes, layers={name: layers[name] for name in planned.qa})
        written = writer.close(staged)
        assert planned.class_areas is not None
        areas = class_areas(staged.staged(planned.classes), classes=meta.classes)  # of the stitched raster
        write_class_areas_csv(areas, staged.temp(planned.class_areas), final=planned.class_areas)
        names = {
            **planned.written([Path(p) for p in written]),
            "class_areas": planned.class_areas,
            "summary": planned.summary,
        }
        named = names if locate is None else {k: locate(v) for k, v in names.items()}
        summary = merge_strip_summaries(
            ordered, width=info.width, height=info.height, outputs=named, class_areas=areas.to_dict()
        )
        write_summary(staged.temp(planned.summary, marker=True), planned.summary, summary)
        outputs = sorted(staged.commit(), key=lambda p: p != planned.classes)  # stable: the summary stays last
    logger.info("%s: stitched %d strips -> %s", source.name, len(ordered), planned.classes)
    return outputs


def _strip_outputs(part: Mapping[str, Any]) -> OutputSet:
    """Return a strip's outputs by name, from its run summary (never guessed from file names)."""
    summary = part.get("summary") or {}
    outputs = summary.get("outputs") if isinstance(summary, Mapping) else None
    if not isinstance(outputs, Mapping) or "classes" not in outputs:
        raise OutputError(f"strip rows {part['row_range']}: its summary names no class raster; rerun the scene")
    return OutputSet.from_dict(outputs)


def vectorize_outputs(outputs: Sequence[Path], config: VectorizeConfig) -> list[Path]:
    """Vectorize a finished scene's class raster next to it (the batch's CPU-side task).

    Parameters
    ----------
    outputs : sequence of Path
        The scene's outputs; the one named ``*_classes.tif`` is vectorized, with the
        confidence attributes of its probability (and disagreement) raster when they are among
        them.
    config : VectorizeConfig
        Vectorizing options; ``config.format`` picks the file type.

    Returns
    -------
    list of Path
        Every file written, as committed: the vector file (``<stem>_polygons.<format>``) first,
        then a Shapefile's companions and the ``.qml`` style. The scene's class areas table
        gets the polygon counts (:func:`count_polygons_into`).
    """
    vec = importlib.import_module("geopsp.vectorize")
    classes = next((p for p in outputs if p.name.endswith("_classes.tif")), None)
    if classes is None:
        raise OutputError(f"no class raster among {list(map(str, outputs))}; cannot vectorize")
    planned = output_set(classes, classes, vector=True, vector_format=config.format, qa=("probability", "disagreement"))
    target = planned.vector
    assert target is not None
    present = set(outputs)
    # the scene's QA rasters, when it has them, give the polygons their confidence attributes
    confidence = planned.probability if planned.probability in present else None
    disagreement = planned.disagreement if planned.disagreement in present else None
    with StagedOutputs(overwrite=True) as staged:
        vec.vectorize(classes, target, config=config, outputs=staged, confidence=confidence, disagreement=disagreement)
        files = sorted(staged.commit(), key=lambda p: p != target)
    count_polygons_into(planned, target)
    return files


def count_polygons_into(planned: OutputSet, polygons: Path) -> None:
    """Put the polygon counts of a scene vectorized after its set was committed into its class areas table.

    The class areas CSV and the summary are replaced together, the summary last
    (:class:`~geopsp.io.atomic.StagedOutputs`); a summary without a table (an older geopsp)
    is left as it is.

    Raises
    ------
    OutputError
        If the summary cannot be read or the files cannot be replaced.
    InputVectorError
        If the polygons cannot be read.
    """
    import dataclasses
    import json

    from geopsp.io.vector import count_by_value

    try:
        data = json.loads(planned.summary.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OutputError(f"{planned.summary}: cannot read the scene's summary ({exc}); rerun the scene") from exc
    summary = RunSummary.from_dict(data, source=str(planned.summary))
    if summary.class_areas is None or planned.class_areas is None:
        return
    areas = ClassAreas.from_dict(summary.class_areas, source=str(planned.summary))
    areas = areas.with_polygon_counts(count_by_value(polygons, "class_id"))
    with StagedOutputs(overwrite=True) as staged:
        write_class_areas_csv(areas, staged.temp(planned.class_areas), final=planned.class_areas)
        counted = dataclasses.replace(summary, class_areas=areas.to_dict())
        write_summary(staged.temp(planned.summary, marker=True), planned.summary, counted)
        staged.commit()
