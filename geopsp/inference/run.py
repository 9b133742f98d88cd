"""The tile loop of one run: reader threads → model → mosaic → writer thread.

The stages overlap::

    reader thread      read block rows once, cut valid masks, skip all-nodata tiles
    cutter threads     copy each tile into a slot of a reused batch buffer (pinned on CUDA),
                       pad by reflection, model input (CPU) or cast (CUDA)
    main thread        batch -> device (side stream on CUDA) -> model (+TTA) -> softmax
                       -> blend into the strip accumulator
    writer thread      finished rows -> ClassRasterWriter

and then the finish: the writer's COG, colours, RAT and QML (``finalize_output``, after
``tiles_loop``: the summary times the two apart). Stage times are device times on CUDA
(:class:`~geopsp.inference.timing.StageClock`), so ``model`` is what the model took, not what
launching it took.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geopsp.config.schema import PredictConfig
from geopsp.device import cpu_count
from geopsp.inference.mosaic import Mosaicker
from geopsp.inference.plan import PredictionPlan
from geopsp.inference.sizing import cutter_threads
from geopsp.inference.timing import StageClock
from geopsp.io.row_writer import RowWriterThread
from geopsp.tiling.reader import TileReader

__all__ = ["TileLoopStats", "run_tiles"]

Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class TileLoopStats:
    """What the tile loop did and where its time went (seconds).

    ``tiles_loop`` runs from the first tile to the last row written; ``finalize_output`` is
    the writer's finish after it (COG, sidecars); ``write`` is the writer thread's row writing
    during the loop. ``model``, ``transfer`` and ``blend`` are device times on CUDA.
    """

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
    batch_size: int
    reader_threads: int


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
            qa=config.qa_layers,
            out_dtype=meta.output_dtype,
        )
        reader = TileReader(
            src,
            plan.info,
            plan.grid,
            meta.bands,
            row_range=(r0, r1),
            threads=cutter_threads(config.reader_threads, cuda=bool(predictor.is_cuda), cores=cpu_count()),
            prefetch=1,  # batches queued; the ring holds one filling, one queued, one in use, one copying
            read_rows=plan.cast.read_rows if plan.cast.converts else None,  # another type: converted as read
        )
        batch_size = predictor.batch_size_for(config.batch_size, plan.grid.input_shape)
        total = reader.total
        done = run = 0
        clock = getattr(predictor, "clock", None) or StageClock("cpu")
        t_loop = time.perf_counter()
        for batch in reader.batches(batch_size, predictor):
            done += len(batch.skipped)
            if batch.tiles:
                x, valid = predictor.to_device(batch.data, batch.valid)
                ready = predictor.copy_done()
                if ready is not None:  # the device copies the buffer: it is free once the copy is
                    batch.release(ready)
                probs = predictor.probabilities(x)
                with clock.time("blend"):
                    mosaic.add(batch.tiles, probs, valid)
                run += len(batch.tiles)
                done += len(batch.tiles)
            batch.release()  # no-op when released above
            if progress is not None:
                progress(done, total)
        predictor.raise_if_nonfinite()
        with clock.time("blend"):
            mosaic.finish()
        wthread.close()
        t_loop_end = time.perf_counter()
        written = [Path(p) for p in writer.close(staged)]
        t_close = time.perf_counter() - t_loop_end
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
        blend=clock.seconds("blend"),
        write=wthread.seconds,
        finalize_output=t_close,
        tiles_loop=t_loop_end - t_loop,
        batch_size=batch_size,
        reader_threads=reader.threads,
        strip_bytes=mosaic.strip_bytes,
        read_buffer_bytes=reader.buffer.peak_bytes,
    )
    return written, stats
