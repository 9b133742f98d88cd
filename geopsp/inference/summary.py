"""The run summary: one JSON document per class raster, for a whole run or stitched strips.

:class:`RunSummary` is the schema (``schema: "geopsp.run-summary/1"``): the prediction
pipeline writes it for each run and the batch's stitcher merges the summaries of a scene's
strips into one of the same shape (:func:`merge_strip_summaries`). It is committed after every
other output of its set, so a summary under its final name marks a complete set.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geopsp._procfs import peak_rss_mb
from geopsp.config.schema import PredictConfig
from geopsp.errors import OutputError

if TYPE_CHECKING:
    from geopsp.inference.plan import PredictionPlan
    from geopsp.inference.run import TileLoopStats

__all__ = ["SUMMARY_SCHEMA", "RunSummary", "merge_strip_summaries", "summarize_run", "write_summary"]

SUMMARY_SCHEMA = "geopsp.run-summary/1"
"""The version tag every summary carries."""

_OPTIONAL = ("input", "peak_gpu_mb", "strips", "class_areas")  # in a summary only where set


@dataclass(frozen=True, slots=True)
class RunSummary:
    """What one run (or one stitched scene) wrote, and how.

    Attributes
    ----------
    scene, model : str
        The input scene and the bundle file (``None`` for an in-memory model).
    outputs : dict of str to str
        Every output by name (:class:`geopsp.inference.plan.OutputSet` names, ``aux`` too).
    size : dict
        ``width``, ``height``, ``bands``, ``dtype`` of the scene.
    rows : list of int
        The scene rows ``[r0, r1)`` of the class raster.
    georeferenced, crs, mask_source
        The scene's georeferencing and where its validity came from.
    tiles, seconds : dict
        Tile counts (``total``, ``run``, ``skipped``, grid) and the time of each stage.
    megapixels_per_second, megapixels_per_second_tiles_loop : float or None
    peak_rss_mb, strip_bytes, read_buffer_bytes : memory numbers
    device, settings, config : dict
        The effective device settings, the run's settings and the whole predict config.
    classes : list of dict
        The class table.
    nodata : int
        The class raster's nodata value.
    input : dict, optional
        How the scene's values reached the model (:meth:`geopsp.inference.cast.InputCast.to_dict`):
        its stored and read dtypes, ``input_scale``, the values' range found before the run and
        where it came from (``range_source``: ``same type``, ``type range``, ``statistics``,
        ``sample``, ...), and whether every strip was checked as it was read.
    peak_gpu_mb : float, optional
        On CUDA only.
    strips : list of dict, optional
        Stitched scenes only: the strips' rows, seconds and tiles.
    class_areas : dict, optional
        The class areas table (:meth:`geopsp.inference.area_table.ClassAreas.to_dict`: ``method``,
        ``rows`` per class, ``totals``), also written as ``<stem>_class_areas.csv``.
    """

    scene: str
    model: str | None
    outputs: dict[str, str]
    size: dict[str, Any]
    rows: list[int]
    georeferenced: bool
    crs: str | None
    mask_source: str
    tiles: dict[str, Any]
    seconds: dict[str, float]
    megapixels_per_second: float | None
    megapixels_per_second_tiles_loop: float | None
    peak_rss_mb: float
    strip_bytes: int
    read_buffer_bytes: int
    device: dict[str, Any]
    settings: dict[str, Any]
    config: dict[str, Any]
    classes: list[dict[str, Any]]
    nodata: int
    input: dict[str, Any] | None = None
    peak_gpu_mb: float | None = None
    strips: list[dict[str, Any]] | None = None
    class_areas: dict[str, Any] | None = None
    schema: str = field(default=SUMMARY_SCHEMA)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; the optional fields only where set."""
        out = asdict(self)
        for key in _OPTIONAL:
            if out[key] is None:
                del out[key]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "summary") -> RunSummary:
        """Read a summary back (unknown keys are ignored; a missing one is an error naming it).

        Raises
        ------
        OutputError
            If a required field is missing.
        """
        names = {f.name for f in fields(cls)}
        required = [f.name for f in fields(cls) if f.name not in (*_OPTIONAL, "schema")]
        missing = [k for k in required if k not in data]
        if missing:
            raise OutputError(f"{source}: not a geopsp run summary (missing {', '.join(missing)}); rerun the scene")
        return cls(**{k: v for k, v in data.items() if k in names})


def write_summary(tmp: Path, final: Path, summary: RunSummary) -> None:
    """Write ``summary`` as JSON into ``tmp`` (the staged name of ``final``).

    Raises
    ------
    OutputError
        Naming ``final`` when it cannot be written.
    """
    from geopsp.io.cog import output_error

    try:
        tmp.write_text(json.dumps(summary.to_dict(), indent=2, default=str) + "\n", encoding="utf-8")
    except OSError as exc:
        raise output_error(final, exc, "writing the summary") from exc


def merge_strip_summaries(
    parts: Sequence[Mapping[str, Any]],
    *,
    width: int,
    height: int,
    outputs: Mapping[str, str | os.PathLike[str]],
    class_areas: Mapping[str, Any] | None = None,
) -> RunSummary:
    """One summary for a scene stitched from strips: times and tile counts add up.

    Parameters
    ----------
    parts : sequence of mapping
        Per strip: ``row_range``, ``seconds`` (the task's wall time) and ``summary`` (its
        :meth:`RunSummary.to_dict`), in row order.
    width, height : int
        The scene's size.
    outputs : mapping of str to path or str
        The stitched scene's outputs (paths, or ``s3://`` URIs).
    class_areas : mapping, optional
        The stitched raster's class areas table (:meth:`~geopsp.inference.area_table.ClassAreas.to_dict`);
        the strips' own tables are not carried over.
    """
    first = RunSummary.from_dict(parts[0].get("summary") or {}, source=f"strip rows {parts[0].get('row_range')}")
    seconds: dict[str, float] = {}
    counts = {"total": 0, "run": 0, "skipped": 0}
    for part in parts:
        s = part.get("summary") or {}
        for key, value in (s.get("seconds") or {}).items():
            if isinstance(value, (int, float)):
                seconds[key] = round(seconds.get(key, 0.0) + float(value), 4)
        for key in counts:
            counts[key] += int((s.get("tiles") or {}).get(key, 0))
    busy = seconds.get("total", 0.0)
    merged = first.to_dict()
    merged.update(
        outputs={k: os.fspath(v) for k, v in outputs.items()},
        rows=[0, height],
        seconds=seconds or first.seconds,
        tiles={**first.tiles, **counts},
        class_areas=None if class_areas is None else dict(class_areas),
        megapixels_per_second=round(width * height / 1e6 / busy, 4) if busy > 0 else None,
        strips=[
            {
                "rows": list(p["row_range"]),
                "seconds": round(float(p.get("seconds", 0.0)), 4),
                "tiles": (p.get("summary") or {}).get("tiles"),
            }
            for p in parts
        ],
    )
    return RunSummary.from_dict(merged)


def summarize_run(
    plan: PredictionPlan,
    cfg: PredictConfig,
    predictor: Any,
    stats: TileLoopStats,
    outputs: Mapping[str, str | os.PathLike[str]],
    bundle_path: str | None,
    setup_s: float,
    t_start: float,
    class_areas: Mapping[str, Any] | None = None,
) -> RunSummary:
    """Summarize one run of :func:`geopsp.pipeline.segment_raster` (``t_start``: its perf_counter start).

    ``outputs`` names each output as the summary records it: its path, or its ``s3://`` URI;
    ``class_areas`` is the run's table (:meth:`geopsp.inference.area_table.ClassAreas.to_dict`).
    """
    info, meta = plan.info, plan.meta
    r0, r1 = plan.rows
    wall = time.perf_counter() - t_start
    pixels = info.width * (r1 - r0)
    loop_s = stats.tiles_loop
    peak_gpu = None
    device = dict(predictor.settings)
    if predictor.is_cuda:
        peak_gpu, use = _gpu_use(predictor.device, stats)
        device.update(use)
    return RunSummary(
        scene=str(plan.scene),
        model=bundle_path,
        outputs={k: os.fspath(v) for k, v in outputs.items()},
        size={"width": info.width, "height": info.height, "bands": info.count, "dtype": info.dtype},
        rows=[r0, r1],
        georeferenced=info.georeferenced,
        crs=None if info.crs is None else info.crs.to_string(),
        mask_source=info.mask_source,
        tiles={
            "total": stats.total,
            "run": stats.run,
            "skipped": stats.skipped,
            "grid": list(plan.grid.shape),
            "tile_size": plan.tile_size,
            "overlap": plan.overlap,
        },
        seconds={
            "setup": round(setup_s, 4),
            **{
                k: round(getattr(stats, k), 4)
                for k in ("read", "preprocess", "wait_for_tiles", "transfer", "model", "blend", "write")
            },
            "finalize_output": round(stats.finalize_output, 4),
            "tiles_loop": round(loop_s, 4),
            "total": round(wall, 4),
        },
        megapixels_per_second=round(pixels / 1e6 / wall, 4) if wall > 0 else None,
        megapixels_per_second_tiles_loop=round(pixels / 1e6 / loop_s, 4) if loop_s > 0 else None,
        peak_rss_mb=peak_rss_mb(),
        strip_bytes=stats.strip_bytes,
        read_buffer_bytes=stats.read_buffer_bytes,
        device=device,
        settings={
            "tile_size": plan.tile_size,
            "overlap": plan.overlap,
            "batch_size": stats.batch_size,
            "tta": cfg.tta,
            "blend": cfg.blend,
            "blend_floor": cfg.blend_floor,
            "margin_px": cfg.margin_px,
            "amp": predictor.amp,
            "reader_threads": stats.reader_threads,
            "bound_heap": cfg.bound_heap,
        },
        config=cfg.model_dump(mode="json"),
        classes=meta.classes.to_list(),
        nodata=meta.nodata,
        input=plan.cast.to_dict(),
        peak_gpu_mb=peak_gpu,
        class_areas=None if class_areas is None else dict(class_areas),
    )


def _gpu_use(device: Any, stats: TileLoopStats) -> tuple[float, dict[str, Any]]:
    """Return the GPU's peak memory (MiB) and how busy it was in the loop.

    Busy: device seconds of copies, model and blend over the loop's wall time; also the
    driver's utilization sample where NVML is installed (``torch.cuda.utilization``).
    """
    busy = stats.transfer + stats.model + stats.blend
    use: dict[str, Any] = {
        "gpu_busy_fraction": round(busy / stats.tiles_loop, 4) if stats.tiles_loop > 0 else None,
        "gpu_memory_total_mb": None,
        "gpu_utilization_percent": None,
    }
    import torch

    with contextlib.suppress(Exception):
        use["gpu_memory_total_mb"] = round(torch.cuda.get_device_properties(device).total_memory / 2**20, 1)
    with contextlib.suppress(Exception):  # needs pynvml
        use["gpu_utilization_percent"] = int(torch.cuda.utilization(device))
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1), use
