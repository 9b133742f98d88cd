"""``segment_raster``: a scene of any size in, a georeferenced class raster out.

The stages overlap::

    reader thread      read full-width block rows once, cut tiles, skip all-nodata tiles
    worker threads     pad by reflection, normalize (CPU) or widen (CUDA)
    main thread        batch -> model (+reflection margin, TTA) -> softmax -> blend into the strip accumulator
    writer thread      finished rows -> ClassRasterWriter (COG, colours, RAT, QML)

Memory is bounded by ``width x tile_size`` (the strip and the row buffer), never by the scene
height. Every output is written under a temporary name and renamed when complete, so a
failure (a corrupt block, Ctrl-C) leaves nothing under the final names.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import queue
import resource
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geopsp._procfs import proc_status
from geopsp.config.schema import PredictConfig
from geopsp.errors import ConfigError, TilingError
from geopsp.io.atomic import atomic_output, check_output_path
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
        ``classes`` (always), ``qml`` and ``summary`` (always), ``probability``, ``vector``
        and ``preview`` when asked for.
    summary : dict
        The run summary also written to ``outputs["summary"]``.
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
    from geopsp.io.raster import check_scene_for_model, inspect_scene

    cfg = config if config is not None else PredictConfig.model_validate({})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # segment_raster warns once
        info = inspect_scene(scene)
    check_scene_for_model(info, meta)
    tile, overlap = resolve_tiling(cfg, meta)
    return _plan_outputs(
        Path(scene), info, cfg, out_dir_or_path, tile, overlap, row_range=row_range, overwrite=overwrite, prepare=False
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


class _WriterThread:
    """Hands finished rows to the raster writer on a background thread.

    Rows arrive in strips of the tile stride; they are regrouped, through one preallocated
    block-row buffer, into strips that end on the writer's block rows, so each output block is
    compressed once and no strip-sized array is allocated per write.
    """

    def __init__(self, writer: Any, r0: int, block_rows: int) -> None:
        self.writer = writer
        self.r0 = r0
        self.block_rows = max(1, int(block_rows))
        self.seconds = 0.0
        self.rows = 0
        # one band of rows waiting is enough to overlap writing with the model; each is a
        # full-width band, so a deeper queue costs memory that grows with the width
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._cls_buf: Any = None  # block_rows x width, allocated at the first partial block row
        self._prob_buf: Any = None
        self._buf_row = 0  # output row of the buffer's first row
        self._fill = 0  # rows of the buffer in use
        self._thread = threading.Thread(target=self._run, name="geopsp-writer", daemon=True)
        self._thread.start()

    def put(self, scene_row: int, cls: Any, prob: Any) -> None:
        """Queue finished rows (scene coordinates) for writing."""
        self._check()
        while True:
            try:
                self._queue.put((scene_row - self.r0, cls, prob), timeout=0.1)
                return
            except queue.Full:
                self._check()

    def close(self) -> None:
        """Wait until every row is written; re-raise a write error."""
        self._queue.put(None)
        self._thread.join()
        self._check()

    def stop(self) -> None:
        """Stop without waiting for queued rows (on failure)."""
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        self._thread.join(timeout=30)

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def _write(self, row: int, cls: Any, prob: Any) -> None:
        t0 = time.perf_counter()
        self.writer.write_rows(row, cls, prob)
        self.rows += cls.shape[0]
        if _HEAP_BOUNDED:
            trim_heap()
        self.seconds += time.perf_counter() - t0

    def _flush(self) -> None:
        if self._fill:
            n = self._fill
            self._fill = 0
            prob = None if self._prob_buf is None else self._prob_buf[:n]
            self._write(self._buf_row, self._cls_buf[:n], prob)

    def _take(self, row: int, cls: Any, prob: Any) -> None:
        import numpy as np

        if self._fill and self._buf_row + self._fill != row:
            self._flush()  # not contiguous with the buffered rows
        i, n = 0, cls.shape[0]
        while i < n:
            if not self._fill:
                self._buf_row = row + i
            # rows left until the end of the output block row the buffer lies in
            room = (self._buf_row // self.block_rows + 1) * self.block_rows - self._buf_row - self._fill
            k = min(room, n - i)
            part_prob = None if prob is None else prob[i : i + k]
            if not self._fill and k == room:  # a whole block row at once: no copy
                self._write(row + i, cls[i : i + k], part_prob)
            else:
                if self._cls_buf is None:  # one run: the width, dtypes and probabilities never change
                    self._cls_buf = np.empty((self.block_rows, *cls.shape[1:]), cls.dtype)
                    if prob is not None:
                        self._prob_buf = np.empty((self.block_rows, *prob.shape[1:]), prob.dtype)
                self._cls_buf[self._fill : self._fill + k] = cls[i : i + k]
                if part_prob is not None:
                    self._prob_buf[self._fill : self._fill + k] = part_prob
                self._fill += k
                if k == room:
                    self._flush()
            i += k

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                break
            if self._error is not None:
                continue  # keep draining so producers never block
            try:
                self._take(*item)
            except BaseException as exc:
                self._error = exc
        if self._error is None:
            try:
                self._flush()
            except BaseException as exc:
                self._error = exc
        self._cls_buf = self._prob_buf = None


_LIBC: Any = None


def trim_heap() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Row buffers, chunks and batches are freed and reallocated by several threads, each with
    its own malloc arena; glibc keeps the freed pages, so without trimming the resident size
    creeps up with the scene width.
    """
    global _LIBC
    if _LIBC is None:
        _LIBC = False
        if sys.platform.startswith("linux"):
            import ctypes
            import ctypes.util

            with contextlib.suppress(OSError, AttributeError):
                lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                _LIBC = lib if hasattr(lib, "malloc_trim") else False
    if _LIBC:
        _LIBC.malloc_trim(0)


HEAP_TRIM_THRESHOLD = 16 << 20
"""glibc ``M_TRIM_THRESHOLD`` set by :func:`bound_heap_retention` (bytes)."""

HEAP_MMAP_THRESHOLD = 128 << 10
"""glibc ``M_MMAP_THRESHOLD`` set by :func:`bound_heap_retention` (bytes): glibc's own default."""

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_HEAP_BOUNDED = False


def bound_heap_retention(enabled: bool = True) -> None:
    """Choose how glibc hands large freed blocks back (a no-op off glibc; idempotent).

    By default glibc raises its mmap threshold each time a large block is freed, so later
    full-width buffers come from the heap and stay resident after they are freed; with several
    threads allocating, the resident size then grows with the scene's width. Enabled, the
    thresholds are fixed (mmap above ``HEAP_MMAP_THRESHOLD``, trim above
    ``HEAP_TRIM_THRESHOLD``): large buffers are mapped and unmapped, and peak memory stays near
    the working set (measured: 20000^2 px at 1.14x the peak of 2000^2 with a stand-in model,
    ``bench/predict.py``). That costs page faults on every large allocation, the model's
    activations included: the ``fast`` preset ran about 25 % slower on a 2-core CPU (20000 x
    2560 px: 27.5 s and 1115 MB peak enabled, 21.1 s and 1275 MB disabled). Disabling it after
    it was enabled sets the thresholds to glibc's dynamic maxima (mmap 32 MiB, trim 64 MiB).
    """
    global _HEAP_BOUNDED
    if enabled == _HEAP_BOUNDED:
        return
    _HEAP_BOUNDED = enabled
    trim_heap()  # loads libc
    if _LIBC and hasattr(_LIBC, "mallopt"):
        if enabled:
            _LIBC.mallopt(_M_TRIM_THRESHOLD, HEAP_TRIM_THRESHOLD)
            _LIBC.mallopt(_M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD)
        else:
            _LIBC.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
            _LIBC.mallopt(_M_TRIM_THRESHOLD, 64 << 20)


def _peak_rss_mb() -> float:
    """Return the peak resident memory of this process in MiB.

    Linux's ``VmHWM`` first: ``ru_maxrss`` survives ``exec``, so in a process started by a
    large parent (a benchmark harness, a worker pool) it reports the parent's size.
    """
    hwm = proc_status("VmHWM")  # "734512 kB"
    if hwm is not None:
        return round(int(hwm.split()[0]) / 1024.0, 1)
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kb / 1024.0 if sys.platform != "darwin" else kb / 1024.0 / 1024.0, 1)


def segment_raster(
    scene: str | os.PathLike[str],
    model: Any,
    out_dir_or_path: str | os.PathLike[str],
    *,
    config: PredictConfig | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    row_range: tuple[int, int] | None = None,
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
    """
    import torch

    from geopsp.inference.mosaic import Mosaicker
    from geopsp.inference.predict import Predictor
    from geopsp.io.raster import ClassRasterWriter, check_scene_for_model, open_scene
    from geopsp.tiling.reader import TileReader

    cfg = config if config is not None else PredictConfig.model_validate({})
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
            overwrite=overwrite,
            prepare=True,
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
            margin_px=cfg.margin_px,
        )
        transform = info.transform
        if r0:
            from affine import Affine

            transform = transform @ Affine.translation(0, r0)
        tags = {
            "GEOPSP_SOURCE": str(scene_path.name),
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
            overwrite=overwrite,
            inputs=(scene_path,),
            probability_path=paths.get("probability"),
            tags=tags,
        )
        wthread: _WriterThread | None = None
        reader: TileReader | None = None
        try:
            wthread = _WriterThread(writer, r0, writer.blocksize)
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
                x = predictor.to_device([b.data for b in batch])
                valid = predictor.masks_to_device([b.valid for b in batch])
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
            mosaic.finish()
            wthread.close()
            t_write0 = time.perf_counter()
            written = writer.close()
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
    if cfg.vector:
        vec = _require_vectorize()
        outputs["vector"] = _first_path(
            vec.vectorize(paths["classes"], paths["vector"], classes=meta.classes, overwrite=overwrite),
            paths["vector"],
        )
    if cfg.preview:
        prev = _require_preview()
        outputs["preview"] = _first_path(
            prev.render_preview(
                scene_path, paths["classes"], paths["preview"], classes=meta.classes, overwrite=overwrite
            ),
            paths["preview"],
        )

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
        "peak_rss_mb": _peak_rss_mb(),
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
            "margin_px": cfg.margin_px,
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
    _write_json(paths["summary"], summary, overwrite=overwrite, inputs=[scene_path])
    logger.info(
        "%s: %d tiles run, %d skipped, %.2f MP/s -> %s",
        scene_path.name,
        run,
        reader.skipped,
        summary["megapixels_per_second"] or 0.0,
        paths["classes"],
    )
    return PredictResult(scene=scene_path, outputs=outputs, summary=summary)


def _write_json(path: Path, data: Mapping[str, Any], *, overwrite: bool, inputs: list[Path]) -> None:
    with atomic_output(path, overwrite=overwrite, inputs=inputs) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


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


def _first_path(result: Any, default: Path) -> Path:
    if isinstance(result, (str, os.PathLike)):
        return Path(result)
    for attr in ("path", "out_path", "output"):
        value = getattr(result, attr, None)
        if isinstance(value, (str, os.PathLike)):
            return Path(value)
    return default
