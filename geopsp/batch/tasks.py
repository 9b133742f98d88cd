"""Worker-side tasks of a batch: segment a scene or strip, stitch strips, vectorize.

Everything here runs in dask worker processes. Each process keeps loaded model bundles in a
cache keyed by path, size and mtime, so a worker loads a bundle once however many scenes it
runs. Input, config and model errors are returned as failure records (retrying cannot fix
them); anything else is raised so dask retries the task.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from distributed import WorkerPlugin

from geopsp.config.schema import PredictConfig, VectorizeConfig
from geopsp.device import cpu_count, gdal_threads, set_gdal_threads
from geopsp.encoding import QA_LAYERS
from geopsp.errors import (
    CheckpointError,
    ConfigError,
    CRSMismatchError,
    InputRasterError,
    ModelError,
    NotGeoreferencedWarning,
    OutputError,
    OutputExistsError,
    TilingError,
)

__all__ = [
    "BUNDLE_LOADS",
    "SceneTask",
    "ThreadShares",
    "cached_bundle",
    "cpu_count",
    "run_scene",
    "stitch_scene",
    "vectorize_scene",
    "worker_stats",
]

# Errors that would fail again on retry: returned as failures instead of raised to dask.
_PERMANENT: tuple[type[BaseException], ...] = (
    InputRasterError,
    CheckpointError,
    ConfigError,
    TilingError,
    CRSMismatchError,
    ModelError,
    OutputExistsError,
    OutputError,
    ValueError,
    TypeError,
)


@dataclass(frozen=True, slots=True)
class SceneTask:
    """What a worker needs to run one scene or one strip of it (picklable).

    Parameters
    ----------
    scene : str
        Input path.
    out : str
        The class raster path (``<stem>_classes.tif``); the other outputs are named after it.
        Strips write into a temporary folder below the output directory.
    model : str
        Bundle (``.safetensors``) or exported ``.onnx`` path.
    predict : PredictConfig
        Prediction settings.
    row_range : tuple of int, optional
        Rows ``[r0, r1)`` of a strip.
    vectorize : VectorizeConfig, optional
        Vectorize within the task, into the scene's set (an ``s3://`` batch; a scene task
        vectorizes with ``predict.vector``, a stitch task after stitching).
    """

    scene: str
    out: str
    model: str
    predict: PredictConfig
    row_range: tuple[int, int] | None = None
    vectorize: VectorizeConfig | None = None


class ThreadShares(WorkerPlugin):
    """Worker plugin giving each worker process its share of the host's cores, so workers do not oversubscribe them.

    The share is the thread count of torch and ONNX Runtime (set when a task first runs a
    model, so a worker that only stitches never imports torch) and of GDAL's decoding and
    encoding (:func:`geopsp.device.set_gdal_threads`, at once).

    Parameters
    ----------
    by_host : mapping of str to int
        Threads by worker host name; ``"*"`` for every host.
    default : int, optional
        For a host not listed; None: the worker's cores divided by its task threads.
    """

    idempotent = True

    def __init__(self, by_host: Mapping[str, int], default: int | None = None) -> None:
        super().__init__()
        self.by_host = dict(by_host)
        self.default = default

    def setup(self, worker: Any) -> None:
        """Pick this worker's share: by host, else the default, else cores / task threads."""
        global _TORCH_THREADS
        host = urlparse(worker.address).hostname or ""
        n = self.by_host.get("*") or self.by_host.get(host) or self.default
        if n is None:
            n = max(1, cpu_count() // max(1, int(worker.state.nthreads)))
        _TORCH_THREADS = n
        set_gdal_threads(n)


_TORCH_THREADS: int | None = None
_BUNDLES: dict[tuple[str, int, int, str], Any] = {}
_BUNDLE_LOCK = threading.Lock()
BUNDLE_LOADS = 0
"""How many times this process loaded a bundle (tests check each worker loads it once)."""


def cached_bundle(path: str, device: str) -> Any:
    """Load a bundle once per process; reload only when the file changes.

    Parameters
    ----------
    path : str
        Bundle path.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (:func:`geopsp.device.resolve_device`).

    Returns
    -------
    Bundle
        The loaded model bundle.
    """
    global BUNDLE_LOADS
    from geopsp.device import resolve_device
    from geopsp.model.bundle import load_bundle

    device = str(resolve_device(device, key="predict.device"))
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns, device)
    with _BUNDLE_LOCK:
        bundle = _BUNDLES.get(key)
        if bundle is None:
            for old in [k for k in _BUNDLES if k[0] == path]:
                del _BUNDLES[old]
            bundle = load_bundle(path, device=device)
            _BUNDLES[key] = bundle
            BUNDLE_LOADS += 1
    return bundle


def worker_stats() -> dict[str, Any]:
    """Model-cache and thread state of this worker process (run it with ``client.run(worker_stats)``).

    Returns
    -------
    dict
        ``bundle_loads`` (bundles loaded so far), ``cached`` (bundles held),
        ``torch_threads`` (the share the batch set, or None), ``torch_num_threads`` (what
        torch uses, None before torch is imported), ``gdal_threads`` (GDAL's
        ``NUM_THREADS``) and ``cuda_visible_devices`` (this process's, or None).
    """
    torch = sys.modules.get("torch")
    return {
        "bundle_loads": BUNDLE_LOADS,
        "cached": len(_BUNDLES),
        "torch_threads": _TORCH_THREADS,
        "torch_num_threads": None if torch is None else int(torch.get_num_threads()),
        "gdal_threads": gdal_threads(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


@contextlib.contextmanager
def _quiet_georeferencing() -> Iterator[None]:
    """Silence the missing-georeferencing warning: the client gave it, once per scene, already.

    A worker's warnings go to its own stderr (a LocalCluster's is the user's terminal), raw, and
    once per strip; the client's one goes through the CLI's handler like every other message.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


def _set_model_threads(onnx: bool) -> None:
    """Give this worker's share of the cores to ONNX Runtime sessions, and to torch for bundles."""
    if _TORCH_THREADS is None:
        return
    from geopsp.inference.runtime import set_threads

    set_threads(_TORCH_THREADS)
    if onnx:
        return  # a torch-free worker must not import torch
    import torch

    if torch.get_num_threads() != _TORCH_THREADS:
        torch.set_num_threads(_TORCH_THREADS)


def _segment(task: SceneTask) -> Any:
    """Run the pipeline for one task (a module attribute so tests can wrap it in workers)."""
    from geopsp.inference.runtime import is_onnx_model, load_onnx
    from geopsp.pipeline import segment_raster

    if is_onnx_model(task.model):
        bundle: Any = load_onnx(task.model)  # one ONNX Runtime session per worker process
    else:
        bundle = cached_bundle(task.model, task.predict.device)
    # Anything under a final name that the manifest does not list as complete is a leftover
    # of an interrupted attempt; the client already decided the scene must be (re)computed.
    return segment_raster(
        task.scene,
        bundle,
        task.out,
        config=task.predict,
        overwrite=True,
        row_range=task.row_range,
        vector_config=task.vectorize,
    )


def run_scene(task: SceneTask) -> dict[str, Any]:
    """Worker task: segment one scene (or strip) and report outputs, or a permanent failure.

    Returns
    -------
    dict
        ``status`` (``"done"``/``"failed"``), ``outputs`` (absolute paths), ``summary``,
        ``seconds``, ``error``, ``error_type``.

    Raises
    ------
    Exception
        Transient errors (anything not an input, config or model error) propagate so dask
        retries the task.
    """
    t0 = time.perf_counter()
    from geopsp.inference.runtime import is_onnx_model

    _set_model_threads(is_onnx_model(task.model))
    try:
        with _quiet_georeferencing():
            result = _segment(task)
    except _PERMANENT as exc:
        return _failure(exc, t0)
    return {
        "status": "done",
        "outputs": _outputs_of(result),
        "summary": getattr(result, "summary", None),
        "seconds": time.perf_counter() - t0,
        "row_range": task.row_range,
        "worker": _worker_address(),
    }


def _outputs_of(result: Any) -> list[str]:
    """Where a result's outputs are: their paths, or their ``s3://`` URIs."""
    locations = getattr(result, "locations", None)
    if locations is not None:
        return [str(p) for p in locations]
    outputs = getattr(result, "outputs", ())
    if isinstance(outputs, Mapping):
        outputs = outputs.values()
    return [str(p) for p in outputs if p is not None]


def _failure(exc: BaseException, t0: float) -> dict[str, Any]:
    text = str(exc).strip().splitlines()
    return {
        "status": "failed",
        "error": text[0] if text else type(exc).__name__,
        "error_type": type(exc).__name__,
        "seconds": time.perf_counter() - t0,
        "outputs": [],
        "worker": _worker_address(),
    }


def _worker_address() -> str | None:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except ValueError:  # not running inside a worker (tests, in-process use)
        return None


def stitch_scene(task: SceneTask, parts: Sequence[Mapping[str, Any]], work: str) -> dict[str, Any]:
    """Worker task: stitch strip results into the scene's outputs (see :mod:`geopsp.batch.strips`).

    ``work`` is the strips' folder, or their ``s3://`` prefix; it is removed afterwards.
    """
    from geopsp.batch.strips import stitch_strips
    from geopsp.io.s3 import is_s3_uri

    t0 = time.perf_counter()
    failed = next((p for p in parts if p["status"] != "done"), None)
    if failed is not None:
        _remove_work(work)
        return dict(failed)
    try:
        if is_s3_uri(task.out):
            outputs = _stitch_to_s3(task, parts)
        else:
            stitched = stitch_strips(task.scene, parts, task.out, model=task.model, predict=task.predict)
            outputs = [str(p) for p in stitched]
    except _PERMANENT as exc:
        return _failure(exc, t0)
    _remove_work(work)  # not before: a retry after a transient error needs the strips
    seconds = sum(float(p["seconds"]) for p in parts) + time.perf_counter() - t0
    return {"status": "done", "outputs": outputs, "seconds": seconds, "worker": _worker_address()}


def _stitch_to_s3(task: SceneTask, parts: Sequence[Mapping[str, Any]]) -> list[str]:
    """Stitch strips stored in S3 in a local staging folder, vectorize there if asked, upload the set (summary last)."""
    from geopsp.batch.strips import stitch_strips, vectorize_outputs
    from geopsp.io.s3 import S3Destination

    with S3Destination.staged(task.out, overwrite=True) as dest:
        local = _download_strips(parts, dest.root / ".geopsp-strips")
        stitched = stitch_strips(
            task.scene, local, dest.local, model=task.model, predict=task.predict, locate=dest.uri_of
        )
        members, summary = stitched[:-1], stitched[-1]
        if task.vectorize is not None:
            with _quiet_georeferencing():
                members += vectorize_outputs(stitched, task.vectorize)
        return dest.upload(members, marker=summary)


def _download_strips(parts: Sequence[Mapping[str, Any]], folder: Path) -> list[dict[str, Any]]:
    """Fetch each strip's class (and QA) rasters from S3; the parts then name the local copies."""
    from geopsp.io.s3 import download_file

    local: list[dict[str, Any]] = []
    for i, part in enumerate(parts):
        summary = dict(part.get("summary") or {})
        named = summary.get("outputs")
        if isinstance(named, Mapping):
            here = {k: folder / f"{i:04d}" / str(uri).rsplit("/", 1)[-1] for k, uri in named.items()}
            for name in ("classes", *QA_LAYERS):  # the rasters the stitcher reads; the rest stays in S3
                if name in here:
                    here[name].parent.mkdir(parents=True, exist_ok=True)
                    download_file(str(named[name]), here[name])
            summary["outputs"] = {k: str(v) for k, v in here.items()}
        local.append({**part, "summary": summary})
    return local


def _remove_work(work: str) -> None:
    """Remove a scene's strips: a local folder, or every object below an ``s3://`` prefix."""
    from geopsp.errors import GeopspError
    from geopsp.io import s3

    if not s3.is_s3_uri(work):
        shutil.rmtree(work, ignore_errors=True)
        return
    with contextlib.suppress(GeopspError):  # litter only; the batch client sweeps again at the end
        s3.delete_objects(s3.list_objects(work))


def vectorize_scene(result: Mapping[str, Any], config: VectorizeConfig) -> dict[str, Any]:
    """Worker task (CPU): vectorize a finished scene's class raster next to it."""
    if result["status"] != "done":
        return dict(result)
    from geopsp.batch.strips import vectorize_outputs

    t0 = time.perf_counter()
    try:
        with _quiet_georeferencing():
            extra = vectorize_outputs([Path(p) for p in result["outputs"]], config)
    except _PERMANENT as exc:
        return _failure(exc, t0)
    out = dict(result)
    out["outputs"] = [*result["outputs"], *map(str, extra)]
    out["seconds"] = float(result["seconds"]) + time.perf_counter() - t0
    return out
