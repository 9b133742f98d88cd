"""``segment_raster``: a scene of any size in, a georeferenced class raster out.

The stages overlap::

    reader thread      read full-width block rows once, cut tiles, skip all-nodata tiles
    worker threads     pad by reflection, normalize (CPU) or widen (CUDA)
    main thread        batch -> model (+TTA) -> softmax -> blend into the strip accumulator
    writer thread      finished rows -> ClassRasterWriter (COG, colours, RAT, QML)

Memory is bounded by ``width x tile_size`` (the strip and the row buffer), never by the scene
height. Every output is written under a temporary name; when all are finished they are
committed as one set, the summary last, so a failure (a corrupt block, an error while
vectorizing, Ctrl-C) leaves none of them under the final names (:mod:`geopsp.io.atomic`).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geopsp._heap import bound_heap_retention
from geopsp._procfs import peak_rss_mb
from geopsp.config.schema import PredictConfig, VectorizeConfig
from geopsp.errors import ConfigError, TilingError
from geopsp.io.atomic import OutputSet, check_output_path
from geopsp.io.class_metadata import SCENE_TAG
from geopsp.model.meta import BundleMeta
from geopsp.tiling.windows import TileGrid

if TYPE_CHECKING:
    from torch import nn

__all__ = ["PredictResult", "Progress", "check_inputs", "output_paths", "resolve_tiling", "segment_raster"]

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""Called as ``progress(tiles_done, tiles_total)``; skipped tiles count as done."""

_TIF_SUFFIXES = (".tif", ".tiff")


@dataclass(frozen=True)
class PredictResult:
    """What :func:`segment_raster` wrote.

    Attributes
    ----------
    scene : Path
        The input scene.
    outputs : dict of str to Path
        ``classes`` (always), ``qml``, ``aux`` and ``summary`` (always), ``probability``,
        ``vector`` (with its style ``vector_qml``) and ``preview`` when asked for.
    summary : dict
        The run summary also written to ``outputs["summary"]``; it is committed after every
        other output, so its presence marks a complete set.
    """

    scene: Path
    outputs: dict[str, Path]
    summary: dict[str, Any] = field(repr=False)

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
    def summary_path(self) -> Path:
        """The summary JSON."""
        return self.outputs["summary"]

    @property
    def paths(self) -> list[Path]:
        """Every output path, class raster first."""
        return list(self.outputs.values())


def output_paths(
    scene: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    probabilities: bool = False,
    vector: bool = False,
    preview: bool = False,
    row_range: tuple[int, int] | None = None,
    vector_format: str = "gpkg",
) -> dict[str, Path]:
    """Name the output files of one scene.

    ``out`` is a directory (outputs are ``<stem>_classes.tif`` and friends inside it) or the
    class raster's own path ending in ``.tif`` (the others are named after it: ``x_classes.tif``
    gives ``x_probability.tif``, ``x_classes.qml``, ``x_summary.json``). A strip
    (``row_range``) run into a directory adds ``_rows<r0>-<r1>`` to the stem.

    Examples
    --------
    >>> sorted(output_paths("a/s1.tif", "out").items())[:2]
    [('classes', PosixPath('out/s1_classes.tif')), ('qml', PosixPath('out/s1_classes.qml'))]
    """
    o = Path(out)
    if o.suffix.lower() in _TIF_SUFFIXES:
        classes = o
        base = o.with_suffix("")
        base = base.with_name(base.name.removesuffix("_classes"))
    else:
        stem = Path(scene).stem
        if row_range is not None:
            stem += f"_rows{int(row_range[0])}-{int(row_range[1])}"
        base = o / stem
        classes = base.with_name(base.name + "_classes.tif")
    paths = {
        "classes": classes,
        "qml": classes.with_suffix(".qml"),
        "summary": base.with_name(base.name + "_summary.json"),
    }
    if probabilities:
        paths["probability"] = base.with_name(base.name + "_probability.tif")
    if vector:
        paths["vector"] = base.with_name(base.name + f"_polygons.{vector_format}")
        paths["vector_qml"] = paths["vector"].with_suffix(".qml")  # its QGIS style
    if preview:
        paths["preview"] = base.with_name(base.name + "_preview.png")
    return paths


def resolve_tiling(config: PredictConfig, meta: BundleMeta) -> tuple[int, int]:
    """Tile size and overlap: the config's, else the bundle's.

    When only the tile size is given and the bundle's overlap does not fit it, the overlap
    shrinks to an eighth of the tile.

    Raises
    ------
    TilingError
        If the combination cannot work.
    """
    tile = config.tile_size if config.tile_size is not None else meta.tile_size
    if config.overlap is not None:
        overlap = config.overlap
    else:
        overlap = meta.overlap
        if 2 * overlap >= tile:
            overlap = tile // 8
            logger.info("bundle overlap %d does not fit tile size %d; using overlap %d", meta.overlap, tile, overlap)
    if 2 * overlap >= tile:
        raise TilingError(
            f"overlap ({overlap}) must be less than half the tile size ({tile}); use at most {(tile - 1) // 2}"
        )
    return int(tile), int(overlap)


def check_inputs(
    scene: str | os.PathLike[str],
    meta: BundleMeta,
    out_dir_or_path: str | os.PathLike[str],
    *,
    config: PredictConfig | None = None,
    overwrite: bool = False,
    row_range: tuple[int, int] | None = None,
    vector_config: VectorizeConfig | None = None,
) -> dict[str, Path]:
    """Check a scene, the model metadata and the outputs without reading pixels or importing torch.

    Returns
    -------
    dict of str to Path
        The outputs :func:`segment_raster` would write.

    Raises
    ------
    InputRasterError, TilingError, OutputExistsError, OutputError
        As :func:`segment_raster` would, before any work.
    """
    import warnings

    from geopsp.errors import NotGeoreferencedWarning
    from geopsp.inference.plan import check_scene_for_model
    from geopsp.io.raster import inspect_scene

    cfg = config if config is not None else PredictConfig.model_validate({})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # segment_raster warns once
        info = inspect_scene(scene)
    check_scene_for_model(info, meta)
    tile, overlap = resolve_tiling(cfg, meta)
    vcfg = vector_config if vector_config is not None else VectorizeConfig.model_validate({})
    return _plan_outputs(
        Path(scene),
        info,
        cfg,
        out_dir_or_path,
        tile,
        overlap,
        row_range=row_range,
        overwrite=overwrite,
        prepare=False,
        vector_format=vcfg.format,
    )[3]


def _plan_outputs(
    scene: Path,
    info: Any,
    cfg: PredictConfig,
    out_dir_or_path: str | os.PathLike[str],
    tile: int,
    overlap: int,
    *,
    row_range: tuple[int, int] | None,
    overwrite: bool,
    prepare: bool,
    vector_format: str,
) -> tuple[TileGrid, int, int, dict[str, Path]]:
    """Tile grid, checked row range and output paths of one run; refuse outputs that may not be written.

    With ``prepare`` every output is fully checked (its folder created and tested for writing);
    without, only existing outputs are refused, so a dry check leaves the file system untouched.
    """
    grid = TileGrid(info.height, info.width, tile, overlap)
    r0, r1 = grid.check_row_range(row_range)
    paths = output_paths(
        scene,
        out_dir_or_path,
        probabilities=cfg.probabilities,
        vector=cfg.vector,
        preview=cfg.preview,
        row_range=None if row_range is None else (r0, r1),
        vector_format=vector_format,
    )
    for key, p in paths.items():
        if key != "qml" and (prepare or (p.exists() and not overwrite)):
            check_output_path(p, overwrite=overwrite, inputs=[scene])
    return grid, r0, r1, paths


def _resolve_model(model: Any) -> tuple[nn.Module, BundleMeta, str | None]:
    """Accept a bundle path, a loaded Bundle (anything with .model and .meta) or (module, meta)."""
    if isinstance(model, (str, os.PathLike)):
        from geopsp.model.bundle import load_bundle

        b = load_bundle(model, device="cpu")
        return b.model, b.meta, str(b.path)
    if isinstance(model, tuple) and len(model) == 2 and isinstance(model[1], BundleMeta):
        return model[0], model[1], None
    m = getattr(model, "model", None)
    meta = getattr(model, "meta", None)
    if m is not None and isinstance(meta, BundleMeta):
        path = getattr(model, "path", None)
        return m, meta, None if path is None else str(path)
    raise ConfigError(
        f"model must be a bundle path, a loaded Bundle or an (nn.Module, BundleMeta) pair, got {type(model).__name__}"
    )


def segment_raster(
    scene: str | os.PathLike[str],
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
    scene : str or os.PathLike
        Any raster GDAL reads (GeoTIFF, COG, PNG, JPEG ...); non-georeferenced inputs give
        outputs without CRS and a :class:`~geopsp.errors.NotGeoreferencedWarning`.
    model : path, Bundle or (nn.Module, BundleMeta)
        A bundle file, a loaded :class:`~geopsp.model.bundle.Bundle`, or any module returning
        logits ``(N, K, H, W)`` with its metadata.
    out_dir_or_path : str or os.PathLike
        Output directory, or the class raster's path (``*.tif``); see :func:`output_paths`.
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
    The outputs are one set (:class:`~geopsp.io.atomic.OutputSet`): each is written under
    a temporary name, and only when all are finished are they committed, the summary last.
    After a failure or an interrupt (an error while vectorizing, Ctrl-C) none of them is
    under its final name; a summary under its final name means the whole set is there.
    """
    with OutputSet(overwrite=overwrite) as staged:  # left without a commit: every temporary is removed
        return _segment_into(
            staged,
            scene,
            model,
            out_dir_or_path,
            config=config,
            progress=progress,
            row_range=row_range,
            vector_config=vector_config,
        )


def _segment_into(
    staged: OutputSet,
    scene: str | os.PathLike[str],
    model: Any,
    out_dir_or_path: str | os.PathLike[str],
    *,
    config: PredictConfig | None,
    progress: Progress | None,
    row_range: tuple[int, int] | None,
    vector_config: VectorizeConfig | None,
) -> PredictResult:
    """Run :func:`segment_raster`, writing every output into ``staged``, then commit the set."""
    import torch

    from geopsp.inference.mosaic import Mosaicker
    from geopsp.inference.plan import check_scene_for_model
    from geopsp.inference.predict import Predictor
    from geopsp.io.raster import ClassRasterWriter, open_scene
    from geopsp.io.row_writer import RowWriterThread
    from geopsp.tiling.reader import TileReader

    cfg = config if config is not None else PredictConfig.model_validate({})
    vcfg = vector_config if vector_config is not None else VectorizeConfig.model_validate({})
    bound_heap_retention(cfg.bound_heap)
    t_start = time.perf_counter()
    scene_path = Path(scene)
    module, meta, bundle_path = _resolve_model(model)
    tile_size, overlap = resolve_tiling(cfg, meta)
    t_setup = time.perf_counter()

    with open_scene(scene_path) as (src, info):
        check_scene_for_model(info, meta)
        grid, r0, r1, paths = _plan_outputs(
            scene_path,
            info,
            cfg,
            out_dir_or_path,
            tile_size,
            overlap,
            row_range=row_range,
            overwrite=staged.overwrite,
            prepare=True,
            vector_format=vcfg.format,
        )
        if cfg.vector:
            _require_vectorize()
        if cfg.preview:
            _require_preview()

        predictor = Predictor(
            module,
            meta,
            device=cfg.device,
            amp=cfg.amp,
            channels_last=cfg.channels_last,
            compile=cfg.compile,
            tta=cfg.tta,
        )
        transform = info.transform
        if r0:
            from affine import Affine

            transform = transform @ Affine.translation(0, r0)
        tags = {
            SCENE_TAG: str(scene_path.name),
            "GEOPSP_MODEL": f"{meta.spec.arch}/{meta.spec.encoder}",
            "GEOPSP_ROWS": f"{r0}-{r1}",
        }
        writer = ClassRasterWriter(
            paths["classes"],
            width=info.width,
            height=r1 - r0,
            crs=info.crs,
            transform=transform,
            classes=meta.classes,
            nodata=meta.nodata,
            dtype=meta.output_dtype,
            compress=cfg.compress,
            overwrite=staged.overwrite,
            inputs=(scene_path,),
            probability_path=paths.get("probability"),
            tags=tags,
        )
        wthread: RowWriterThread | None = None
        reader: TileReader | None = None
        try:
            wthread = RowWriterThread(writer, r0, writer.blocksize)
            mosaic = Mosaicker(
                grid,
                class_ids=meta.classes.ids,
                nodata=meta.nodata,
                sink=wthread.put,
                device=predictor.device,
                kernel=cfg.blend,
                floor=cfg.blend_floor,
                row_range=(r0, r1),
                probabilities=cfg.probabilities,
                out_dtype=meta.output_dtype,
            )
            reader = TileReader(
                src,
                info,
                grid,
                meta.bands,
                prepare=predictor.prepare,
                row_range=(r0, r1),
                threads=cfg.reader_threads,
                prefetch=max(2 * cfg.batch_size, 4),
            )
            total = reader.total
            done = 0
            run = 0
            t_loop = time.perf_counter()
            batch: list[Any] = []

            def flush() -> None:
                nonlocal done, run
                if not batch:
                    return
                x, valid = predictor.to_device([b.data for b in batch], [b.valid for b in batch])
                probs = predictor.probabilities(x)
                mosaic.add([b.tile for b in batch], probs, valid)
                run += len(batch)
                done += len(batch)
                batch.clear()
                if progress is not None:
                    progress(done, total)

            for item in reader:
                if item.skipped:
                    done += 1
                    if progress is not None:
                        progress(done, total)
                    continue
                batch.append(item)
                if len(batch) >= cfg.batch_size:
                    flush()
            flush()
            predictor.raise_if_nonfinite()
            mosaic.finish()
            wthread.close()
            t_write0 = time.perf_counter()
            written = writer.close(staged)
            t_close = time.perf_counter() - t_write0
            if progress is not None:
                progress(total, total)
        except BaseException:
            if reader is not None:
                reader.close()
            if wthread is not None:
                wthread.stop()
            with contextlib.suppress(Exception):
                writer.abort()
            raise
        finally:
            if reader is not None:
                reader.close()
        t_end_loop = time.perf_counter()

    outputs: dict[str, Path] = {"classes": paths["classes"]}
    if "probability" in paths:
        outputs["probability"] = paths["probability"]
    for p in map(Path, written):
        if p.suffix == ".qml":
            outputs["qml"] = p
        elif p.name.endswith(".aux.xml"):
            outputs["aux"] = p
    # vector and preview are made from the staged class raster, into the same set
    if cfg.vector:
        vec_tmp = staged.temp(paths["vector"])
        outputs["vector"] = paths["vector"]
        try:
            _require_vectorize().vectorize(
                staged.staged(paths["classes"]),
                vec_tmp,
                config=vcfg,
                classes=meta.classes,
                layer=paths["vector"].stem,
            )
        finally:  # its style joins the set, to be committed or removed with it
            if vec_tmp.with_suffix(".qml").is_file():
                staged.add(vec_tmp.with_suffix(".qml"), paths["vector_qml"])
                outputs["vector_qml"] = paths["vector_qml"]
    if cfg.preview:
        _require_preview().render_preview(
            scene_path, staged.staged(paths["classes"]), staged.temp(paths["preview"]), classes=meta.classes
        )
        outputs["preview"] = paths["preview"]

    wall = time.perf_counter() - t_start
    pixels = info.width * (r1 - r0)
    loop_s = t_end_loop - t_loop
    summary: dict[str, Any] = {
        "scene": str(scene_path),
        "model": bundle_path,
        "outputs": {k: str(v) for k, v in outputs.items()},
        "size": {"width": info.width, "height": info.height, "bands": info.count, "dtype": info.dtype},
        "rows": [r0, r1],
        "georeferenced": info.georeferenced,
        "crs": None if info.crs is None else info.crs.to_string(),
        "mask_source": info.mask_source,
        "tiles": {
            "total": total,
            "run": run,
            "skipped": reader.skipped,
            "grid": list(grid.shape),
            "tile_size": tile_size,
            "overlap": overlap,
        },
        "seconds": {
            "setup": round(t_setup - t_start, 4),
            "read": round(reader.read_seconds, 4),
            "preprocess": round(reader.prepare_seconds, 4),
            "wait_for_tiles": round(reader.wait_seconds, 4),
            "transfer": round(predictor.transfer_seconds, 4),
            "model": round(predictor.model_seconds, 4),
            "blend": round(mosaic.seconds, 4),
            "write": round(wthread.seconds + t_close, 4),
            "finalize_output": round(t_close, 4),
            "tiles_loop": round(loop_s, 4),
            "total": round(wall, 4),
        },
        "megapixels_per_second": round(pixels / 1e6 / wall, 4) if wall > 0 else None,
        "megapixels_per_second_tiles_loop": round(pixels / 1e6 / loop_s, 4) if loop_s > 0 else None,
        "peak_rss_mb": peak_rss_mb(),
        "strip_bytes": mosaic.strip_bytes,
        "read_buffer_bytes": reader.buffer.peak_bytes,
        "device": predictor.settings,
        "settings": {
            "tile_size": tile_size,
            "overlap": overlap,
            "batch_size": cfg.batch_size,
            "tta": cfg.tta,
            "blend": cfg.blend,
            "blend_floor": cfg.blend_floor,
            "amp": predictor.amp,
            "reader_threads": cfg.reader_threads,
            "bound_heap": cfg.bound_heap,
        },
        "config": cfg.model_dump(mode="json"),
        "classes": meta.classes.to_list(),
        "nodata": meta.nodata,
    }
    if torch.cuda.is_available() and predictor.is_cuda:
        summary["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(predictor.device) / 2**20, 1)
    outputs["summary"] = paths["summary"]
    summary["outputs"]["summary"] = str(paths["summary"])
    _write_json(staged.temp(paths["summary"], marker=True), paths["summary"], summary)
    staged.commit()
    logger.info(
        "%s: %d tiles run, %d skipped, %.2f MP/s -> %s",
        scene_path.name,
        run,
        reader.skipped,
        summary["megapixels_per_second"] or 0.0,
        paths["classes"],
    )
    return PredictResult(scene=scene_path, outputs=outputs, summary=summary)


def _write_json(tmp: Path, final: Path, data: dict[str, Any]) -> None:
    from geopsp.io.cog import output_error

    try:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    except OSError as exc:
        raise output_error(final, exc, "writing the summary") from exc


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
