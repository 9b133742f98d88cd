"""Run a batch of scenes on dask.distributed: a local cluster by default, any cluster when given.

The client plans the cluster (:mod:`geopsp.batch.cluster`), discovers jobs, skips scenes the
manifest says are complete, submits one task per scene (or one per row strip plus a stitch
task for big scenes, and optionally a vectorize task on a CPU worker), and appends one
manifest record per scene as results arrive. At the end it adds up the class areas of every
finished scene into ``class_areas.csv`` (:mod:`geopsp.batch.areas`).

Outputs go to a local (or shared) folder or below an ``s3://`` prefix
(:mod:`geopsp.batch.destination`); with S3 each worker uploads its scene's set, polygons
included, once complete, the summary last, so a summary object marks a finished scene.

Workers keep the model bundle in a per-process cache keyed by path, size and mtime, so each
worker loads it once. Input errors are returned as failures and never retried; other errors
(a worker killed by the OOM killer, a CUDA OOM, a flaky file system) are retried by dask.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from geopsp.batch.areas import BatchAreas, batch_class_areas
from geopsp.batch.cluster import ClusterTarget, GpuRequest, connect, plan_cluster
from geopsp.batch.destination import WORK_DIR, BatchOutputs, batch_outputs
from geopsp.batch.jobs import Job, discover_jobs
from geopsp.batch.manifest import Manifest, S3Manifest, SceneRecord
from geopsp.batch.strips import plan_strips
from geopsp.batch.tasks import SceneTask, run_scene, stitch_scene, vectorize_scene
from geopsp.config.schema import GeopspConfig, PredictConfig
from geopsp.errors import (
    CheckpointError,
    GeopspError,
    InputRasterError,
)
from geopsp.inference.plan import resolve_tiling
from geopsp.model.meta import BundleMeta

__all__ = ["SCHEDULER_ENV", "WORK_DIR", "BatchReport", "run_batch"]

logger = logging.getLogger(__name__)

SCHEDULER_ENV = "GEOPSP_SCHEDULER"
"""Environment variable naming a dask scheduler address (``tcp://host:8786``)."""

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class BatchReport:
    """What a batch did.

    Parameters
    ----------
    records : tuple of SceneRecord
        One per scene, in job order.
    out_dir : Path or str
        The output folder, or the ``s3://`` prefix.
    manifest : Path or str
        ``out_dir / "manifest.jsonl"`` (an ``s3://`` URI below a prefix).
    seconds : float
        Wall time of the whole batch.
    dashboard : str or None
        The dask dashboard link, when the cluster serves one.
    class_areas : BatchAreas or None
        The class areas of all finished scenes added up, and the CSV they were written to
        (:mod:`geopsp.batch.areas`); None when no scene finished.
    """

    records: tuple[SceneRecord, ...]
    out_dir: Path | str
    manifest: Path | str
    seconds: float
    dashboard: str | None = None
    class_areas: BatchAreas | None = None

    def count(self, status: str) -> int:
        """Return the number of scenes with this status."""
        return sum(1 for r in self.records if r.status == status)

    @property
    def done(self) -> int:
        """Scenes computed in this run."""
        return self.count("done")

    @property
    def failed(self) -> int:
        """Scenes that failed."""
        return self.count("failed")

    @property
    def skipped(self) -> int:
        """Scenes kept from an earlier run."""
        return self.count("skipped")

    @property
    def ok(self) -> bool:
        """Whether no scene failed."""
        return self.failed == 0

    def summary_line(self) -> str:
        """One line, e.g. ``"7 scenes: 6 done, 1 failed (see out/manifest.jsonl)"``."""
        parts = [f"{self.done} done"]
        if self.skipped:
            parts.append(f"{self.skipped} skipped")
        if self.failed:
            parts.append(f"{self.failed} failed")
        n = len(self.records)
        return f"{n} scene{'s' if n != 1 else ''}: {', '.join(parts)} (see {self.manifest})"


@dataclass(slots=True)
class _Pending:
    job: Job
    out: str
    strips: int
    started: float = field(default_factory=time.perf_counter)


def run_batch(
    inputs: Sequence[str | os.PathLike[str]],
    model: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    config: GeopspConfig | None = None,
    scheduler: str | None = None,
    n_workers: int | None = None,
    resources: Mapping[str, float] | None = None,
    gpus: GpuRequest = None,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
) -> BatchReport:
    """Segment many scenes on a dask cluster and record every outcome in a manifest.

    Parameters
    ----------
    inputs : sequence of str or os.PathLike
        Files, directories, glob patterns or list files (see
        :func:`geopsp.batch.jobs.discover_jobs`).
    model : str or os.PathLike
        Model bundle; every worker loads it once.
    out_dir : str or os.PathLike
        Output folder; outputs mirror the input names below it, and ``manifest.jsonl`` lists
        every scene's outcome. An ``s3://bucket/prefix/`` writes below the prefix instead:
        every worker uploads its scenes' sets (credentials and ``AWS_ENDPOINT_URL`` from its
        environment), a scene whose summary object exists counts as complete, and the
        manifest is an object under the prefix.
    config : GeopspConfig, optional
        ``predict`` and ``batch`` settings (default: packaged defaults).
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:8786``, ``tls://host:8786`` with
        ``config.batch.tls``). Default: the ``GEOPSP_SCHEDULER`` environment variable, then
        ``config.batch.scheduler``; when none is set a local cluster sized to this machine is
        started (every service on 127.0.0.1) and closed.
    n_workers : int, optional
        Local worker processes, the CPU workers beside GPU ones with ``gpus`` (default:
        ``config.batch.n_workers``, else machine-sized, or 1 beside GPU workers).
    resources : mapping of str to float, optional
        dask resources each scene task asks for (``{"GPU": 1}``); default
        ``config.batch.resources``. Stitch and vectorize tasks ask for
        ``config.batch.cpu_resources``.
    gpus : "all", int or sequence of str, optional
        Local cluster only (default ``config.batch.gpus``): one worker per GPU, pinned to it
        by ``CUDA_VISIBLE_DEVICES``, running the scene tasks (they ask for ``GPU=1``), plus
        CPU workers that stitch and vectorize. ``"all"`` or a count takes this machine's
        GPUs; a sequence gives each GPU worker's ``CUDA_VISIBLE_DEVICES`` as it is (see
        :func:`geopsp.batch.cluster.plan_cluster`).
    overwrite : bool, default False
        Recompute scenes the manifest marks complete.
    progress : callable, optional
        Called as ``progress(finished, total)`` after each scene.

    Returns
    -------
    BatchReport
        Per-scene records and the summary; failed scenes do not raise.

    Raises
    ------
    InputRasterError
        If the inputs name no scene.
    CheckpointError
        If the model bundle is missing or damaged.
    TilingError
        If the tile size and overlap cannot work (see :func:`geopsp.inference.plan.resolve_tiling`).
    ConfigError
        If no worker of the cluster offers the requested resources, the scheduler cannot be
        reached, a TLS file cannot be read, or ``gpus`` asks for GPUs this machine does not have.
    OutputError
        If an output name is unsafe, the output folder is not writable, or the S3 bucket
        cannot be used (missing, access refused, unreachable).
    """
    t0 = time.perf_counter()
    cfg = config if config is not None else GeopspConfig()
    outputs = batch_outputs(out_dir)  # checked (created, or the bucket listed) before anything else
    try:
        where = functools.partial(
            plan_cluster,
            cfg,
            address=scheduler or os.environ.get(SCHEDULER_ENV) or cfg.batch.scheduler,
            n_workers=n_workers,
            resources=resources,
            gpus=gpus,
        )
        report = _run_batch(inputs, model, outputs, t0, cfg, where, overwrite, progress)
    except BaseException:
        with contextlib.suppress(GeopspError):  # the first failure is the one to report
            outputs.manifest.close()
        raise
    outputs.manifest.close()
    return report


def _run_batch(
    inputs: Sequence[str | os.PathLike[str]],
    model: str | os.PathLike[str],
    outputs: BatchOutputs,
    t0: float,
    cfg: GeopspConfig,
    where: Callable[[], ClusterTarget],
    overwrite: bool,
    progress: ProgressFn | None,
) -> BatchReport:
    bcfg = cfg.batch
    model_path, meta = _check_model(model)
    resolve_tiling(cfg.predict, meta)  # segment_raster's own rule; a bad one fails before any cluster
    target = where()  # TLS files, the scheduler's address, GPUs: checked before any scene is looked at
    jobs = discover_jobs(
        inputs, out_dir=outputs.exclude, spacenet_products=bcfg.spacenet_products, items_to=outputs.items
    )
    if not jobs:
        raise InputRasterError(f"{', '.join(map(str, inputs)) or 'no inputs'}: no scenes to process")
    fingerprint = _fingerprint(model_path, cfg.predict)

    manifest = outputs.manifest
    latest = manifest.latest()
    records: dict[str, SceneRecord] = {}
    todo: list[Job] = []
    for job in jobs:
        prev = latest.get(job.id)
        if prev is not None and not overwrite and manifest.is_complete(prev):
            if prev.fingerprint and prev.fingerprint != fingerprint:
                logger.warning("%s: kept outputs made with another model or settings; pass --overwrite to redo", job.id)
            records[job.id] = SceneRecord(
                job.id, str(job.scene), "skipped", prev.outputs, strips=prev.strips, fingerprint=prev.fingerprint
            )
        elif not overwrite and (found := outputs.finished(job, cfg)) is not None:
            logger.info("%s: kept: its outputs and summary are in %s", job.id, outputs.root)
            records[job.id] = SceneRecord(job.id, str(job.scene), "skipped", found)
        else:
            todo.append(job)
    manifest.append([records[j.id] for j in jobs if j.id in records])
    total = len(jobs)
    if records:
        logger.info("%d of %d scenes already complete; skipping them", len(records), total)
    if progress is not None:
        progress(len(records), total)

    dashboard: str | None = None
    if todo:
        try:
            with connect(target, cfg) as (client, dashboard):
                for rec in _run_jobs(
                    client,
                    todo,
                    outputs,
                    model_path,
                    meta,
                    cfg,
                    target,
                    fingerprint,
                    manifest,
                    progress,
                    len(records),
                    total,
                ):
                    records[rec.id] = rec
        finally:
            outputs.cleanup(todo)
    outcomes = tuple(records[j.id] for j in jobs)
    areas = batch_class_areas(jobs, outcomes, outputs)  # the scenes kept from earlier runs too
    report = BatchReport(outcomes, outputs.root, manifest.path, time.perf_counter() - t0, dashboard, areas)
    logger.debug("%s", report.summary_line())
    return report


def _check_model(model: str | os.PathLike[str]) -> tuple[Path, BundleMeta]:
    path = Path(model).expanduser().resolve()
    if not path.is_file():
        raise CheckpointError(f"{model}: model not found; check the path (create a bundle with `geopsp model create`)")
    from geopsp.inference.runtime import model_meta

    return path, model_meta(path)  # fail fast on a damaged model, before any cluster starts


def _fingerprint(model: Path, predict: PredictConfig) -> str:
    st = model.stat()
    # settings that change speed or memory, never the outputs, do not count
    speed_only = {"batch_size", "reader_threads", "device", "compile", "bound_heap"}
    settings = predict.model_dump(mode="json", exclude=speed_only)
    if settings.get("input_scale") is None:  # runs from before the key existed keep their fingerprint
        settings.pop("input_scale", None)
    blob = json.dumps([str(model), st.st_size, st.st_mtime_ns, settings], sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- client loop


def scene_slots(client: Any, resources: Mapping[str, float]) -> int:
    """Return how many scene (or strip) tasks the cluster runs at once: its threads, or what its resources allow.

    With ``resources`` (e.g. ``{GPU: 1}``) a worker runs as many as its smallest share
    allows (``GPU=2`` and ``GPU: 1``: two); without, as many as it has threads.
    """
    total = 0
    for info in client.scheduler_info(n_workers=-1).get("workers", {}).values():
        if resources:
            have = info.get("resources", {})
            total += int(min(float(have.get(k, 0)) // v for k, v in resources.items()))
        else:
            total += int(info.get("nthreads", 1))
    return max(1, total)


def _run_jobs(
    client: Any,
    jobs: Sequence[Job],
    outputs: BatchOutputs,
    model: Path,
    meta: BundleMeta,
    cfg: GeopspConfig,
    target: ClusterTarget,
    fingerprint: str,
    manifest: Manifest | S3Manifest,
    progress: ProgressFn | None,
    finished: int,
    total: int,
) -> Iterator[SceneRecord]:
    from distributed import as_completed

    # In S3 the polygons join the scene's set (its summary, uploaded last, marks it complete);
    # locally they are a separate CPU task.
    in_set = cfg.vectorize if outputs.remote and cfg.predict.vector else None
    vectorize = cfg.predict.vector and _have_vectorize() and in_set is None
    predict = cfg.predict.model_copy(update={"vector": False}) if vectorize else cfg.predict
    tile, overlap = resolve_tiling(cfg.predict, meta)
    slots = scene_slots(client, target.scene_resources)  # big scenes are cut into full rounds of them
    pending: dict[Any, _Pending] = {}
    for job in jobs:
        try:
            dest = outputs.scene_out(job)
        except GeopspError as exc:  # e.g. a symlink leading out of the output folder
            rec = SceneRecord(job.id, str(job.scene), "failed", error=str(exc), error_type=type(exc).__name__)
            manifest.append(rec)
            logger.warning("%s: failed: %s", rec.id, rec.error)
            finished += 1
            if progress is not None:
                progress(finished, total)
            yield rec
            continue
        task = SceneTask(str(job.scene), dest, str(model), predict, vectorize=in_set)
        size = _scene_size(job.scene, meta, cfg.predict)
        strips = plan_strips(*size, tile, overlap, cfg.batch.strip_pixels, workers=slots) if size else [(0, 0)]
        fut = _submit(client, job, task, strips, outputs, target, cfg.batch.retries)
        if vectorize:
            key = f"geopsp-vector-{job.key}-{_token()}"
            fut = client.submit(
                vectorize_scene,
                fut,
                cfg.vectorize,
                key=key,
                resources=target.cpu_resources or None,
                retries=cfg.batch.retries,
                pure=False,
            )
        pending[fut] = _Pending(job, dest, len(strips))

    try:
        for fut in as_completed(list(pending), loop=client.loop):  # type: ignore[no-untyped-call]
            p = pending.pop(fut)
            rec = _record(fut, p, outputs, fingerprint)
            fut.release()  # drop the result so losing its worker later recomputes nothing
            manifest.append(rec)
            if rec.status == "failed":
                logger.warning("%s: failed: %s", rec.id, rec.error)
            else:
                logger.info("%s: done in %.1fs", rec.id, rec.seconds)
            finished += 1
            if progress is not None:
                progress(finished, total)
            yield rec
    finally:
        if pending:
            client.cancel(list(pending), force=True)


def _submit(
    client: Any,
    job: Job,
    task: SceneTask,
    strips: Sequence[tuple[int, int]],
    outputs: BatchOutputs,
    target: ClusterTarget,
    retries: int,
) -> Any:
    """Submit one scene: a single task, or strip tasks plus a stitch task that depends on them."""
    res = dict(target.scene_resources) or None
    if len(strips) <= 1:
        key = f"geopsp-scene-{job.key}-{_token()}"
        return client.submit(run_scene, task, key=key, resources=res, retries=retries, pure=False)
    strip_predict = task.predict.model_copy(update={"vector": False})  # polygons come from the stitched scene
    parts = [
        client.submit(
            run_scene,
            replace(task, out=outputs.strip_out(job, i), row_range=rr, predict=strip_predict, vectorize=None),
            key=f"geopsp-strip-{job.key}-{i}-{_token()}",
            resources=res,
            retries=retries,
            pure=False,
        )
        for i, rr in enumerate(strips)
    ]
    # Stitching asks for the CPU workers' resources (none by default: any worker may do it).
    key = f"geopsp-stitch-{job.key}-{_token()}"
    cpu = dict(target.cpu_resources) or None
    return client.submit(
        stitch_scene, task, parts, outputs.work(job), key=key, resources=cpu, retries=retries, pure=False
    )


def _record(fut: Any, p: _Pending, outputs: BatchOutputs, fingerprint: str) -> SceneRecord:
    job = p.job
    base = SceneRecord(job.id, str(job.scene), "failed", strips=p.strips)
    if fut.status == "error":
        exc = fut.exception()
        elapsed = time.perf_counter() - p.started
        return replace(base, seconds=elapsed, error=_describe(exc), error_type=type(exc).__name__)
    if fut.status == "cancelled":
        return replace(base, error="task was cancelled", error_type="CancelledError")
    result: dict[str, Any] = fut.result()
    base = replace(base, seconds=float(result.get("seconds", 0.0)), worker=result.get("worker"))
    if result["status"] != "done":
        return replace(base, error=result.get("error"), error_type=result.get("error_type"))
    written = tuple(outputs.relative(o) for o in result["outputs"])
    return replace(base, status="done", outputs=written, fingerprint=fingerprint)


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    name = type(exc).__name__
    if name == "KilledWorker":
        return (
            "the worker running this scene died repeatedly (out of memory?); "
            "try fewer workers or a smaller batch.strip_pixels"
        )
    text = str(exc).strip().splitlines()
    return f"{name}: {text[0]}" if text else name


def _token() -> str:
    return os.urandom(4).hex()


def _have_vectorize() -> bool:
    import importlib.util

    return importlib.util.find_spec("geopsp.vectorize") is not None


def _scene_size(scene: str | os.PathLike[str], meta: BundleMeta, predict: PredictConfig) -> tuple[int, int] | None:
    """(height, width) of a scene as the run reads it, or None when it cannot be read here (the worker says why).

    A scene without georeferencing gets geopsp's warning here, once; the workers stay quiet about it.
    """
    from geopsp.io.grid import scene_as_read

    try:
        info = scene_as_read(scene, meta, predict)  # strips cut the grid segment_raster reads
    except Exception:
        return None
    return info.height, info.width
