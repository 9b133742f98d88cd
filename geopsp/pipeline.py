"""``segment_raster``: a scene of any size in, a georeferenced class raster out.

The wiring, top to bottom: plan the run (:mod:`geopsp.inference.plan`: tiling, the
scene-vs-model check, output names), open the scene, run the tiles
(:mod:`geopsp.inference.run`: reader threads, model, mosaic, writer thread), add the polygons
and the preview, measure the classes (:mod:`geopsp.inference.areas`), write the summary
(:mod:`geopsp.inference.summary`) and commit the set.

Memory is bounded by ``width x tile_size`` (the strip and the row buffer), never by the scene
height. Every output is written under a temporary name; when all are finished they are
committed as one set, the summary last, so a failure (a corrupt block, an error while
vectorizing, Ctrl-C) leaves none of them under the final names (:mod:`geopsp.io.atomic`).
An ``s3://`` destination gets the same set, made in a local staging folder and uploaded once
complete, the summary last (:class:`geopsp.io.s3.S3Destination`).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geopsp._heap import bound_heap_retention
from geopsp.config.schema import PredictConfig, VectorizeConfig
from geopsp.errors import ConfigError
from geopsp.inference.area_table import ClassAreas, write_class_areas_csv
from geopsp.inference.areas import class_areas
from geopsp.inference.plan import OutputSet, PredictionPlan, plan_prediction
from geopsp.inference.summary import summarize_run, write_summary
from geopsp.io.atomic import StagedOutputs
from geopsp.io.s3 import S3Destination, is_s3_uri
from geopsp.model.meta import BundleMeta

if TYPE_CHECKING:
    from geopsp.io.source import SceneSource


__all__ = ["PredictResult", "Progress", "segment_raster"]

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""Called as ``progress(tiles_done, tiles_total)``; skipped tiles count as done."""


@dataclass(frozen=True)
class PredictResult:
    """What :func:`segment_raster` wrote.

    Attributes
    ----------
    scene : SceneSource
        The input scene (``str(result.scene)`` is what was given).
    outputs : dict of str to Path
        ``classes`` (always), ``qml``, ``aux``, ``class_areas`` and ``summary`` (always),
        ``probability``, ``vector`` (with its style ``vector_qml``) and ``preview`` when asked for. For an
        ``s3://`` destination these are the files of the staging folder, removed after the
        upload; :attr:`uris` says where they went.
    summary : dict
        The run summary also written to ``outputs["summary"]``; it is committed after every
        other output, so its presence marks a complete set.
    uris : dict of str to str
        For an ``s3://`` destination: each output's ``s3://`` URI, same names; else empty.
    files : tuple of Path
        Every file the run committed, class raster first, summary last: the outputs' files and
        those that go with them (a Shapefile's ``.shx``, ``.dbf``, ``.prj``, ``.cpg``). For an
        ``s3://`` destination these were in the staging folder.
    file_uris : tuple of str
        For an ``s3://`` destination: the objects uploaded, in the order of ``files``; else empty.
    """

    scene: SceneSource
    outputs: dict[str, Path]
    summary: dict[str, Any] = field(repr=False)
    uris: dict[str, str] = field(default_factory=dict)
    files: tuple[Path, ...] = ()
    file_uris: tuple[str, ...] = ()

    @property
    def classes(self) -> Path:
        """The class raster."""
        return self.outputs["classes"]

    @property
    def probability(self) -> Path | None:
        """The probability raster, if written."""
        return self.outputs.get("probability")

    @property
    def qml(self) -> Path | None:
        """The QGIS style of the class raster."""
        return self.outputs.get("qml")

    @property
    def class_areas(self) -> ClassAreas | None:
        """The class areas table (also in ``outputs["class_areas"]``, a CSV); None in a summary without one."""
        table = self.summary.get("class_areas")
        return None if table is None else ClassAreas.from_dict(table, source=str(self.outputs["summary"]))

    @property
    def summary_path(self) -> Path:
        """The summary JSON."""
        return self.outputs["summary"]

    @property
    def paths(self) -> list[Path]:
        """Every file written (:attr:`files`), class raster first."""
        return list(self.files) if self.files else list(self.outputs.values())

    @property
    def locations(self) -> list[str]:
        """Where every file written is, class raster first: its ``s3://`` URI, else its path."""
        return list(self.file_uris) if self.file_uris else [str(p) for p in self.paths]


def segment_raster(
    scene: str | os.PathLike[str] | SceneSource,
    model: Any,
    out_dir_or_path: str | os.PathLike[str],
    *,
    config: PredictConfig | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    row_range: tuple[int, int] | None = None,
    vector_config: VectorizeConfig | None = None,
) -> PredictResult:
    """Segment one scene into a georeferenced class raster.

    Parameters
    ----------
    scene : str, os.PathLike or SceneSource
        Any raster GDAL reads (GeoTIFF, COG, PNG, JPEG ...), local or remote (``http(s)://``,
        ``s3://``, ``/vsi…/``), or a STAC Item whose assets hold the model's bands
        (:func:`geopsp.io.source.resolve_scene`); non-georeferenced inputs give outputs without
        CRS and a :class:`~geopsp.errors.NotGeoreferencedWarning`.
    model : path, Bundle, OnnxModel or (nn.Module, BundleMeta)
        A bundle file, an exported ``.onnx`` model (runs in ONNX Runtime, without torch), a
        loaded :class:`~geopsp.model.bundle.Bundle` or :class:`~geopsp.inference.ort.OnnxModel`,
        or any module returning logits ``(N, K, H, W)`` with its metadata.
        ``config.runtime`` picks what runs it (:mod:`geopsp.inference.runtime`).
    out_dir_or_path : str or os.PathLike
        Output directory, or the class raster's path (``*.tif``); see :func:`geopsp.inference.plan.output_set`.
        Either may be an ``s3://bucket/prefix/`` URI (credentials and ``AWS_ENDPOINT_URL``
        from the environment): the set is made in a local staging folder and uploaded once
        complete, the summary last.
    config : PredictConfig, optional
        Tiling, device, TTA, blending and output options; defaults from the bundle.
    overwrite : bool, default False
        Replace existing outputs.
    progress : callable, optional
        ``progress(tiles_done, tiles_total)`` after each batch and skipped tile.
    row_range : (int, int), optional
        Compute only output rows ``[r0, r1)`` with the whole scene's tile grid, writing a class
        raster of those rows (its transform shifted to row ``r0``). Strips stitched together
        equal the whole-scene result bit for bit.
    vector_config : VectorizeConfig, optional
        How ``config.vector`` vectorizes the classes (simplification, sieve, format ...), as
        ``geopsp batch`` does; default: ``VectorizeConfig()``.

    Returns
    -------
    PredictResult

    Raises
    ------
    InputRasterError
        The scene is missing, unreadable, corrupt, or does not fit the model (band count,
        dtype) -- raised before any tile runs, except for blocks that fail to decode.
    OutputExistsError
        An output exists and ``overwrite`` is False (checked before any work).
    TilingError, ConfigError, ModelError, OutputError
        Bad options, a model that misbehaves, an output that cannot be written.

    Notes
    -----
    The outputs are one set (:class:`~geopsp.io.atomic.StagedOutputs`): each is written under
    a temporary name, and only when all are finished are they committed, the summary last.
    After a failure or an interrupt (an error while vectorizing, Ctrl-C) none of them is
    under its final name; a summary under its final name means the whole set is there. In S3
    the same holds for the objects: a failed upload deletes the ones this run had uploaded.
    """
    with contextlib.ExitStack() as stack:
        destination = None
        if is_s3_uri(out_dir_or_path):
            destination = stack.enter_context(S3Destination.staged(str(out_dir_or_path), overwrite=overwrite))
            out_dir_or_path, overwrite = destination.local, False  # a fresh staging folder
        staged = stack.enter_context(StagedOutputs(overwrite=overwrite))  # left uncommitted: temporaries removed
        result = _segment_into(
            staged,
            scene,
            model,
            out_dir_or_path,
            config=config,
            progress=progress,
            row_range=row_range,
            vector_config=vector_config,
            destination=destination,
        )
    return result


def _segment_into(
    staged: StagedOutputs,
    scene: str | os.PathLike[str] | SceneSource,
    model: Any,
    out_dir_or_path: str | os.PathLike[str],
    *,
    config: PredictConfig | None,
    progress: Progress | None,
    row_range: tuple[int, int] | None,
    vector_config: VectorizeConfig | None,
    destination: S3Destination | None = None,
) -> PredictResult:
    """Run :func:`segment_raster` (plan, open, run the tiles, extras, summary), then commit (and upload) the set."""
    from geopsp.inference.run import run_tiles
    from geopsp.inference.runtime import make_predictor, model_meta
    from geopsp.io.grid import scene_as_read
    from geopsp.io.raster import open_scene

    cfg = config if config is not None else PredictConfig.model_validate({})
    vcfg = vector_config if vector_config is not None else VectorizeConfig.model_validate({})
    bound_heap_retention(cfg.bound_heap)
    t_start = time.perf_counter()
    planned_meta = model_meta(model)  # a bad model file is refused before the scene is opened
    viewed = scene_as_read(scene, planned_meta, cfg)  # with --resolution, --crs, --aoi
    source = viewed.source
    with open_scene(viewed) as (src, info):
        plan = plan_prediction(
            source,
            info,
            planned_meta,
            out_dir_or_path,
            config=cfg,
            vector_config=vcfg,
            row_range=row_range,
            overwrite=staged.overwrite,
            destination=destination,
        )
        if plan.cast.note is not None:
            logger.warning("%s", plan.cast.note)
        if cfg.vector:
            _require_vectorize()
            _check_vector_confidence(plan.outputs, vcfg)
        if cfg.preview:
            _require_preview()
        r0, r1 = plan.rows
        predictor, meta, bundle_path, choice = make_predictor(model, cfg, pixels=info.width * (r1 - r0))
        t_setup = time.perf_counter()
        writer = _class_writer(plan, cfg, staged.overwrite)
        try:
            written, stats = run_tiles(src, plan, predictor, writer, staged, config=cfg, progress=progress)
        except BaseException:
            writer.abort()  # its staging files are not in the set yet
            raise
    outputs = plan.outputs.written(written)
    # vector and preview are made from the staged class raster, into the same set
    if plan.outputs.vector is not None:
        outputs.update(_stage_vector(staged, plan.outputs, vcfg, meta))
    if plan.outputs.preview is not None:
        _require_preview().render_preview(
            info, staged.staged(plan.outputs.classes), staged.temp(plan.outputs.preview), classes=meta.classes
        )
        outputs["preview"] = plan.outputs.preview
    areas, outputs["class_areas"] = _stage_class_areas(staged, plan.outputs, meta)
    outputs["summary"] = plan.outputs.summary
    named = outputs if destination is None else {k: destination.uri_of(p) for k, p in outputs.items()}
    summary = summarize_run(
        plan, cfg, predictor, stats, named, bundle_path, t_setup - t_start, t_start, class_areas=areas.to_dict()
    )
    summary.device["runtime_reason"] = choice.reason
    write_summary(staged.temp(plan.outputs.summary, marker=True), plan.outputs.summary, summary)
    files = tuple(sorted(staged.commit(), key=lambda p: p != plan.outputs.classes))  # stable: summary stays last
    uris: dict[str, str] = {}
    uploaded: tuple[str, ...] = ()
    if destination is not None:
        members = [p for p in files if p != plan.outputs.summary]
        uploaded = tuple(destination.upload(members, marker=plan.outputs.summary))
        uris = {k: str(v) for k, v in named.items()}
    logger.info(
        "%s: %d tiles run, %d skipped, %.2f MP/s -> %s",
        source.name,
        stats.run,
        stats.skipped,
        summary.megapixels_per_second or 0.0,
        uris.get("classes", plan.outputs.classes),
    )
    return PredictResult(
        scene=source, outputs=outputs, summary=summary.to_dict(), uris=uris, files=files, file_uris=uploaded
    )


def _class_writer(plan: PredictionPlan, cfg: PredictConfig, overwrite: bool) -> Any:
    """Open the class raster writer of a plan's rows (its transform shifted to the first row)."""
    from affine import Affine

    from geopsp.io.raster import ClassRasterWriter

    r0, r1 = plan.rows
    info = plan.info
    return ClassRasterWriter(
        plan.outputs.classes,
        width=info.width,
        height=r1 - r0,
        crs=info.crs,
        transform=info.transform @ Affine.translation(0, r0) if r0 else info.transform,
        classes=plan.meta.classes,
        nodata=plan.meta.nodata,
        dtype=plan.meta.output_dtype,
        compress=cfg.compress,
        overwrite=overwrite,
        inputs=(plan.scene.local,) if plan.scene.local is not None else (),
        qa_paths=plan.outputs.qa,
        tags=plan.tags,
    )


def _stage_vector(
    staged: StagedOutputs, planned: OutputSet, vcfg: VectorizeConfig, meta: BundleMeta
) -> dict[str, Path]:
    """Vectorize the staged class raster into the set: the vector file, its companions and its style.

    The QA rasters staged in the same set (the probability raster, and the disagreement one
    when the plan has it) give the polygons their confidence attributes.
    """
    assert planned.vector is not None and planned.vector_qml is not None
    confidence, disagreement = planned.probability, planned.disagreement
    _require_vectorize().vectorize(
        staged.staged(planned.classes),
        planned.vector,
        config=vcfg,
        classes=meta.classes,
        outputs=staged,
        confidence=staged.staged(confidence) if confidence is not None else None,
        disagreement=staged.staged(disagreement) if disagreement is not None else None,
    )
    outputs = {"vector": planned.vector}
    if planned.vector_qml in staged.finals:
        outputs["vector_qml"] = planned.vector_qml
    return outputs


def _check_vector_confidence(planned: OutputSet, vcfg: VectorizeConfig) -> None:
    """Refuse, before any tile runs, vectorize options that need a probability raster the run does not write."""
    option = vcfg.reads_confidence
    if planned.probability is None and option is not None:
        raise ConfigError(
            f"{getattr(vcfg, option)!r} needs the polygons' confidence: predict with --probabilities "
            "or --qa (predict.probabilities=true), or drop it",
            key=f"vectorize.{option}",
        )


def _stage_class_areas(staged: StagedOutputs, planned: OutputSet, meta: BundleMeta) -> tuple[ClassAreas, Path]:
    """Measure the staged class raster (and count the staged polygons) into the set's class areas CSV."""
    assert planned.class_areas is not None
    vector = planned.vector  # its only layer with geometries (a Shapefile's is named after the staged file)
    areas = class_areas(
        staged.staged(planned.classes), classes=meta.classes, polygons=staged.staged(vector) if vector else None
    )
    write_class_areas_csv(areas, staged.temp(planned.class_areas), final=planned.class_areas)
    return areas, planned.class_areas


def _require_vectorize() -> Any:
    try:
        vec = importlib.import_module("geopsp.vectorize")
    except ImportError as exc:
        raise ConfigError(
            "vector output needs geopsp.vectorize, which is not installed in this geopsp; "
            "drop --vector (predict.vector=false)"
        ) from exc
    return vec


def _require_preview() -> Any:
    try:
        prev = importlib.import_module("geopsp.preview")
    except ImportError as exc:
        raise ConfigError(
            "preview output needs geopsp.preview, which is not installed in this geopsp; "
            "drop --preview (predict.preview=false)"
        ) from exc
    return prev
