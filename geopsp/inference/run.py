"""The tile loop of one run: reader threads → model → mosaic → writer thread.

The stages overlap::

    reader thread      read block rows once, cut tiles, skip all-nodata tiles
    worker threads     pad by reflection, model input (CPU) or widen (CUDA)
    main thread        batch -> model (+TTA) -> softmax -> blend into the strip accumulator
    writer thread      finished rows -> ClassRasterWriter (COG, colours, RAT, QML)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geopsp.config.schema import PredictConfig
from geopsp.inference.mosaic import Mosaicker
from geopsp.inference.plan import PredictionPlan
from geopsp.io.row_writer import RowWriterThread
from geopsp.tiling.reader import TileReader

__all__ = ["TileLoopStats", "run_tiles"]

Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class TileLoopStats:
    """What the tile loop did and where its time went (seconds)."""

    total: int
    run: int
    skipped: int
    read: float
    preprocess: float
    wait_for_tiles: float
    transfer: float
    model: float
    blend: float
    write: float
    finalize_output: float
    tiles_loop: float
    strip_bytes: int
    read_buffer_bytes: int


def run_tiles(
    src: Any,
    plan: PredictionPlan,
    predictor: Any,
    writer: Any,
    staged: Any,
    *,
    config: PredictConfig,
    progress: Progress | None = None,
) -> tuple[list[Path], TileLoopStats]:
    """Predict every tile of ``plan`` into ``writer`` and stage the finished raster in ``staged``.

    Parameters
    ----------
    src : rasterio.DatasetReader
        The open scene.
    plan : PredictionPlan
    predictor : geopsp.inference.predict.Predictor
    writer : geopsp.io.raster.ClassRasterWriter
        Aborted on any failure (the caller aborts it too, should one come before this runs).
    staged : geopsp.io.atomic.StagedOutputs
        Where ``writer.close`` stages its files.
    config : PredictConfig
    progress : callable, optional
        ``progress(tiles_done, tiles_total)``.

    Returns
    -------
    (list of Path, TileLoopStats)
        The files the writer staged (class raster first) and the loop's numbers.
    """
    r0, r1 = plan.rows
    meta = plan.meta
    wthread: RowWriterThread | None = None
    reader: TileReader | None = None
    try:
        wthread = RowWriterThread(writer, r0, writer.blocksize)
        mosaic = Mosaicker(
            plan.grid,
            class_ids=meta.classes.ids,
            nodata=meta.nodata,
            sink=wthread.put,
            device=predictor.device,
            backend=predictor.array_backend,
            kernel=config.blend,
            floor=config.blend_floor,
            row_range=(r0, r1),
            probabilities=config.probabilities,
            out_dtype=meta.output_dtype,
        )
        reader = TileReader(
            src,
            plan.info,
            plan.grid,
            meta.bands,
            prepare=predictor.prepare,
            row_range=(r0, r1),
            threads=config.reader_threads,
            prefetch=max(2 * config.batch_size, 4),
            read_rows=plan.cast.read_rows if plan.cast.converts else None,  # another type: converted as read
        )
        total = reader.total
        done = run = 0
        t_loop = time.perf_counter()
        batch: list[Any] = []

        def flush() -> None:
            nonlocal done, run
            if not batch:
                return
            x, valid = predictor.to_device([b.data for b in batch], [b.valid for b in batch])
            mosaic.add([b.tile for b in batch], predictor.probabilities(x), valid)
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
            if len(batch) >= config.batch_size:
                flush()
        flush()
        predictor.raise_if_nonfinite()
        mosaic.finish()
        wthread.close()
        t_close0 = time.perf_counter()
        written = [Path(p) for p in writer.close(staged)]
        t_close = time.perf_counter() - t_close0
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
    stats = TileLoopStats(
        total=total,
        run=run,
        skipped=reader.skipped,
        read=reader.read_seconds,
        preprocess=reader.prepare_seconds,
        wait_for_tiles=reader.wait_seconds,
        transfer=predictor.transfer_seconds,
        model=predictor.model_seconds,
        blend=mosaic.seconds,
        write=wthread.seconds + t_close,
        finalize_output=t_close,
        tiles_loop=time.perf_counter() - t_loop,
        strip_bytes=mosaic.strip_bytes,
        read_buffer_bytes=reader.buffer.peak_bytes,
    )
    return written, stats
