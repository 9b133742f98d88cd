"""The dask cluster a batch runs on: a local cluster planned for this machine, or a running one.

:func:`plan_cluster` decides, before anything starts, where the batch runs
(:class:`ClusterTarget`): a scheduler's address (checked against the TLS settings), or a
:class:`LocalPlan` of worker processes for this machine. With GPUs (``batch.gpus``) the plan
has one worker per GPU, pinned to it by ``CUDA_VISIBLE_DEVICES`` in its process environment
(set before the process imports anything, so inside it ``cuda`` is that GPU) and declaring
one ``GPU`` resource, plus CPU workers that hide every GPU and declare ``CPU`` for the stitch
and vectorize tasks. Every plan shares the host's cores among its worker threads: each
process gets ``cores // worker threads`` threads for torch, GDAL and ONNX Runtime.

:func:`connect` starts the plan as a :class:`distributed.SpecCluster` whose scheduler,
nannies, workers and dashboard all listen on 127.0.0.1 (unless ``batch.dashboard_address``
says otherwise), over TLS when ``batch.tls`` is set, or connects to the scheduler.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlparse

from geopsp.batch.security import scheduler_address, tls_security
from geopsp.batch.tasks import ThreadShares
from geopsp.config.schema import GeopspConfig, PredictConfig
from geopsp.device import cpu_count, visible_gpus
from geopsp.errors import ConfigError

if TYPE_CHECKING:
    from distributed import Security

__all__ = [
    "CPU_RESOURCE",
    "GPU_RESOURCE",
    "LOOPBACK",
    "ClusterTarget",
    "GpuRequest",
    "LocalPlan",
    "WorkerPlan",
    "cluster_specs",
    "connect",
    "plan_cluster",
    "plan_local_cluster",
]

logger = logging.getLogger(__name__)

GPU_RESOURCE = "GPU"
"""The dask resource a GPU worker declares (one) and each scene or strip task asks for."""
CPU_RESOURCE = "CPU"
"""The dask resource the CPU workers of a local GPU cluster declare, asked for by stitch and vectorize tasks."""
LOOPBACK = "127.0.0.1"
"""Where every service of a local cluster listens."""

GpuRequest = Literal["all"] | int | Sequence[str] | None
"""``"all"`` or a number of this machine's GPUs, or the ``CUDA_VISIBLE_DEVICES`` value of each GPU worker."""


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """One worker process of a local cluster.

    Parameters
    ----------
    name : str
        Its dask name (``"0"``, ``"gpu-0"``, ``"cpu-0"``).
    nthreads : int
        Tasks it runs at once.
    resources : dict of str to float
        dask resources it declares.
    cuda_visible_devices : str, optional
        ``CUDA_VISIBLE_DEVICES`` of its process: a GPU's index or UUID, ``""`` for none;
        None inherits this process's.
    """

    name: str
    nthreads: int
    resources: dict[str, float]
    cuda_visible_devices: str | None = None


@dataclass(frozen=True, slots=True)
class LocalPlan:
    """What a local cluster is made of, and what its tasks ask for.

    Parameters
    ----------
    workers : tuple of WorkerPlan
        The worker processes.
    threads : int
        Threads each worker process gives torch, GDAL and ONNX Runtime.
    scene_resources : dict of str to float
        What each scene or strip task asks for (``{"GPU": 1}`` with GPUs).
    cpu_resources : dict of str to float
        What each stitch or vectorize task asks for (``{"CPU": 1}`` with GPUs).
    """

    workers: tuple[WorkerPlan, ...]
    threads: int
    scene_resources: dict[str, float]
    cpu_resources: dict[str, float]

    @property
    def gpus(self) -> tuple[str, ...]:
        """The GPUs the workers are pinned to."""
        return tuple(w.cuda_visible_devices for w in self.workers if w.cuda_visible_devices)

    def describe(self) -> str:
        """One line for the log, e.g. ``"2 GPU worker(s) (0, 1) + 1 CPU worker(s), 4 thread(s) each"``."""
        gpus = self.gpus
        n_cpu = len(self.workers) - len(gpus)
        threads = f"{self.threads} torch/GDAL thread(s) each"
        if not gpus:
            return f"{n_cpu} worker(s) x {self.workers[0].nthreads} task thread(s), {threads}"
        return f"{len(gpus)} GPU worker(s) ({', '.join(gpus)}) + {n_cpu} CPU worker(s), {threads}"


@dataclass(frozen=True, slots=True)
class ClusterTarget:
    """Where a batch runs: a running scheduler, or a local cluster to start.

    Parameters
    ----------
    address : str or None
        The scheduler's address; None starts ``plan``.
    plan : LocalPlan or None
        The local cluster (None with an address).
    security : distributed.Security or None
        TLS settings (``batch.tls``), for the client and a local cluster alike.
    scene_resources, cpu_resources : dict of str to float
        What scene/strip tasks and stitch/vectorize tasks ask for.
    """

    address: str | None
    plan: LocalPlan | None
    security: Security | None
    scene_resources: dict[str, float]
    cpu_resources: dict[str, float]


def plan_cluster(
    cfg: GeopspConfig,
    *,
    address: str | None = None,
    n_workers: int | None = None,
    resources: Mapping[str, float] | None = None,
    gpus: GpuRequest = None,
) -> ClusterTarget:
    """Decide where a batch runs, checking every setting before anything starts.

    Parameters
    ----------
    cfg : GeopspConfig
        ``batch`` (and ``predict.device``) settings.
    address : str, optional
        A running scheduler; None plans a local cluster.
    n_workers : int, optional
        Local worker processes (CPU workers beside GPU ones); default ``batch.n_workers``.
    resources : mapping of str to float, optional
        What each scene task asks for; default ``batch.resources``.
    gpus : "all", int or sequence of str, optional
        Default ``batch.gpus``. ``"all"`` or a count picks this machine's GPUs
        (:func:`geopsp.device.visible_gpus`); a sequence gives each GPU worker's
        ``CUDA_VISIBLE_DEVICES`` as it is, unchecked.

    Returns
    -------
    ClusterTarget

    Raises
    ------
    ConfigError
        For TLS files that cannot be read, an address that disagrees with the TLS settings,
        GPUs asked for with an address or that this machine does not have, or a device the
        workers cannot have.
    """
    bcfg = cfg.batch
    security = tls_security(bcfg.tls)
    res = dict(bcfg.resources if resources is None else resources)
    request = bcfg.gpus if gpus is None else gpus
    if address:
        if request is not None:
            raise ConfigError(
                f"gpus={request!r} starts GPU workers on this machine, but the batch runs on {address}; start its "
                f"workers with `dask worker {address} --resources GPU=1` and pass --gpu instead",
                key="batch.gpus",
            )
        if n_workers is not None:
            logger.warning("n_workers applies to a local cluster only; the cluster at %s keeps its workers", address)
        return ClusterTarget(scheduler_address(address, security), None, security, res, dict(bcfg.cpu_resources))
    ids: tuple[str, ...]
    if request is None:
        ids = ()
    elif request == "all":
        ids = visible_gpus("all")
    elif isinstance(request, int):
        ids = visible_gpus(request)
    elif isinstance(request, str):
        raise ConfigError(f"gpus must be 'all' or a number of GPUs, got {request!r}", key="batch.gpus")
    else:
        ids = tuple(str(g) for g in request)
    plan = plan_local_cluster(cfg, n_workers=n_workers, resources=res, gpus=ids)
    return ClusterTarget(None, plan, security, plan.scene_resources, plan.cpu_resources)


def plan_local_cluster(
    cfg: GeopspConfig,
    *,
    n_workers: int | None = None,
    resources: Mapping[str, float] | None = None,
    gpus: Sequence[str] = (),
    cores: int | None = None,
) -> LocalPlan:
    """Plan a local cluster for this machine (a pure function of its arguments and the machine's size).

    Parameters
    ----------
    cfg : GeopspConfig
        ``batch.n_workers``, ``threads_per_worker``, ``torch_threads``, ``cpu_resources`` and
        ``predict.device``.
    n_workers : int, optional
        Worker processes; with ``gpus`` the CPU workers (default 1). Without either, sized to
        the machine: one with CUDA, else one per 1-4 cores and ~3 GiB of memory.
    resources : mapping of str to float, optional
        What each scene task asks for (every worker that runs scenes declares it).
    gpus : sequence of str
        ``CUDA_VISIBLE_DEVICES`` value of each GPU worker; empty plans CPU workers only.
    cores : int, optional
        The cores to share (default: :func:`geopsp.device.cpu_count`).

    Returns
    -------
    LocalPlan

    Raises
    ------
    ConfigError
        With ``gpus``, for ``predict.device`` ``cuda:N`` with N > 0 (each worker sees one GPU).

    Examples
    --------
    >>> from geopsp.config.schema import GeopspConfig
    >>> plan = plan_local_cluster(GeopspConfig(), gpus=["2", "3"], cores=16)
    >>> [(w.name, w.resources, w.cuda_visible_devices) for w in plan.workers]
    [('gpu-0', {'GPU': 1.0}, '2'), ('gpu-1', {'GPU': 1.0}, '3'), ('cpu-0', {'CPU': 1.0}, '')]
    >>> plan.threads, plan.scene_resources, plan.cpu_resources
    (5, {'GPU': 1.0}, {'CPU': 1.0})
    """
    bcfg = cfg.batch
    cores = cores or cpu_count()
    tpw = bcfg.threads_per_worker
    res = {k: float(v) for k, v in (bcfg.resources if resources is None else resources).items()}
    cpu_res = {k: float(v) for k, v in bcfg.cpu_resources.items()}
    workers: list[WorkerPlan]
    if gpus:
        _check_pinned_device(cfg.predict)
        cpu_res = cpu_res or {CPU_RESOURCE: 1.0}
        scene_res = {GPU_RESOURCE: 1.0, **res}
        declared = {**res, GPU_RESOURCE: 1.0}  # one GPU each, whatever share a scene asks for
        workers = [WorkerPlan(f"gpu-{i}", tpw, declared, str(g)) for i, g in enumerate(gpus)]
        offered = {k: v * tpw for k, v in cpu_res.items()}
        n_cpu = n_workers or bcfg.n_workers or 1
        workers += [WorkerPlan(f"cpu-{i}", tpw, offered, "") for i in range(n_cpu)]
    else:
        scene_res = res
        n = n_workers or bcfg.n_workers or _machine_workers(cfg.predict, cores)
        offered = {**res, **{k: v * tpw for k, v in cpu_res.items()}}
        workers = [WorkerPlan(str(i), tpw, offered) for i in range(n)]
    threads = bcfg.torch_threads or max(1, cores // sum(w.nthreads for w in workers))
    return LocalPlan(tuple(workers), threads, scene_res, cpu_res)


def _check_pinned_device(predict: PredictConfig) -> None:
    name = predict.device
    if name.startswith("cuda:") and name != "cuda:0":
        raise ConfigError(
            f"{name!r} with gpus: each GPU worker sees only its own GPU, as cuda (cuda:0); use cuda or auto",
            key="predict.device",
        )


def _machine_workers(predict: PredictConfig, cores: int) -> int:
    """Worker processes for a CPU-only local cluster on this machine."""
    import importlib.util

    if predict.device != "cpu" and importlib.util.find_spec("torch") is not None:  # without torch: ONNX on CPUs
        from geopsp.device import resolve_device

        if resolve_device(predict.device, key="predict.device").type == "cuda":
            return 1  # one process drives the GPU; more would only contend for its memory
    per = 1 if cores <= 4 else 2 if cores <= 16 else 4
    n = max(1, cores // per)
    try:
        import psutil

        mem_gb = psutil.virtual_memory().total / 2**30
        n = max(1, min(n, int(mem_gb // 3)))  # ~3 GiB per worker: model, tiles, mosaic
    except ImportError:  # pragma: no cover
        pass
    return n


def cluster_specs(
    plan: LocalPlan,
    *,
    security: Security | None = None,
    dashboard_address: str | None = None,
    memory_limit: str = "auto",
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Turn a plan into :class:`distributed.SpecCluster` specs: every service on 127.0.0.1.

    Parameters
    ----------
    plan : LocalPlan
        The workers.
    security : distributed.Security, optional
        TLS for every connection (then addresses are ``tls://``).
    dashboard_address : str, optional
        Where the scheduler's HTTP server (the dashboard, with bokeh) listens; a bare
        ``:port`` means every interface, as dask has it. None: no dashboard, and the server
        listens on 127.0.0.1:8787 or, when taken, another port.
    memory_limit : str
        Per worker (``"auto"``: the machine's memory shared by threads).

    Returns
    -------
    scheduler : dict
        The scheduler's spec.
    workers : dict
        One :class:`distributed.Nanny` spec per worker, by name; a pinned worker's spec sets
        ``CUDA_VISIBLE_DEVICES`` in its process environment.
    """
    from distributed import Nanny, Scheduler

    protocol = "tls://" if security is not None else "tcp://"
    listen = {"host": LOOPBACK, "protocol": protocol, "security": security}
    scheduler = {
        "cls": Scheduler,
        "options": {
            **listen,
            "port": 0,
            "dashboard": dashboard_address is not None,
            "dashboard_address": dashboard_address,
        },
    }
    workers: dict[str, dict[str, Any]] = {}
    for w in plan.workers:
        options: dict[str, Any] = {
            **listen,
            "nthreads": w.nthreads,
            "memory_limit": memory_limit,
            "resources": dict(w.resources) or None,
            "dashboard": False,
            "dashboard_address": None,  # its HTTP server (metrics) then listens on the worker's host
            "silence_logs": logging.ERROR,
        }
        if w.cuda_visible_devices is not None:
            options["env"] = {"CUDA_VISIBLE_DEVICES": w.cuda_visible_devices}
        workers[w.name] = {"cls": Nanny, "options": options}
    return scheduler, workers


@contextlib.contextmanager
def connect(target: ClusterTarget, cfg: GeopspConfig) -> Iterator[tuple[Any, str | None]]:
    """Start the local cluster or connect to the scheduler; yield ``(client, dashboard link or None)``.

    Each worker process gets its share of the host's cores for torch, GDAL and ONNX Runtime
    (:class:`geopsp.batch.tasks.ThreadShares`). Everything is closed on exit.

    Raises
    ------
    ConfigError
        If the scheduler cannot be reached (or refuses the TLS certificate), has no worker in
        time, or no worker offers the resources the tasks ask for.
    """
    from distributed import Client, SpecCluster

    bcfg = cfg.batch
    if target.plan is None:
        with _remote_client(target, cfg) as client:
            yield client, _dashboard(client)
        return
    plan = target.plan
    # The scheduler's HTTP server (the dashboard with bokeh, else a page asking for it) always
    # listens; without an address dask would try 8787, and a bare ":port" means every interface.
    scheduler, workers = cluster_specs(
        plan, security=target.security, dashboard_address=bcfg.dashboard_address, memory_limit=bcfg.memory_limit
    )
    logger.info("starting a local cluster: %s", plan.describe())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dask's own start-up chatter (ports in use, etc.)
        cluster = SpecCluster(  # type: ignore[no-untyped-call]
            workers=workers, scheduler=scheduler, security=target.security, silence_logs=logging.ERROR
        )
    try:
        client = Client(cluster, set_as_default=False)  # type: ignore[no-untyped-call]
        try:
            client.register_plugin(ThreadShares({}, default=plan.threads), name="geopsp-threads")
            yield client, _dashboard(client)
        finally:
            client.close()  # type: ignore[no-untyped-call]
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cluster.close()


@contextlib.contextmanager
def _remote_client(target: ClusterTarget, cfg: GeopspConfig) -> Iterator[Any]:
    from distributed import Client

    address = str(target.address)
    timeout = cfg.batch.connect_timeout_s
    logger.info("connecting to dask scheduler %s%s", address, " over TLS" if target.security else "")
    try:
        client = Client(  # type: ignore[no-untyped-call]
            address, timeout=timeout, security=target.security, set_as_default=False
        )
    except (OSError, ValueError) as exc:
        fix = "check that its CA signed --tls-cert" if target.security else "start one with `dask scheduler`"
        raise ConfigError(
            f"cannot reach dask scheduler {address} ({_first_line(exc)}); {fix} or drop --scheduler"
        ) from exc
    try:
        try:
            client.wait_for_workers(1, timeout=timeout)
        except TimeoutError as exc:
            raise ConfigError(
                f"dask scheduler {address} has no workers after {timeout:g}s; start some with `dask worker {address}`"
            ) from exc
        _check_resources(client, target.scene_resources)
        _check_resources(client, target.cpu_resources)
        shares = _threads_by_host(client, cfg.batch.torch_threads)
        client.register_plugin(ThreadShares(shares), name="geopsp-threads")
        yield client
    finally:
        client.close()  # type: ignore[no-untyped-call]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _have_bokeh() -> bool:
    import importlib.util

    return importlib.util.find_spec("bokeh") is not None


def _dashboard(client: Any) -> str | None:
    """Return the dashboard link when the scheduler really serves one (it needs bokeh there)."""
    try:
        served = client.run_on_scheduler(_have_bokeh) and "dashboard" in client.scheduler_info().get("services", {})
    except Exception:  # pragma: no cover - best effort
        return None
    if not served:
        logger.debug("the scheduler serves no dashboard (install bokeh for one)")
        return None
    link = str(client.dashboard_link)
    logger.info("dask dashboard: %s", link)
    return link


def _threads_by_host(client: Any, fixed: int | None) -> dict[str, int]:
    """Share each host's cores among the worker threads running on it."""
    if fixed is not None:
        return {"*": fixed}
    workers = client.scheduler_info().get("workers", {})
    cores = client.run(cpu_count)
    threads: dict[str, int] = {}
    host_cores: dict[str, int] = {}
    for addr, info in workers.items():
        host = urlparse(addr).hostname or addr
        threads[host] = threads.get(host, 0) + int(info.get("nthreads", 1))
        host_cores[host] = int(cores.get(addr, 1))
    return {h: max(1, host_cores[h] // max(1, threads[h])) for h in threads}


def _check_resources(client: Any, resources: Mapping[str, float]) -> None:
    if not resources:
        return
    workers = client.scheduler_info().get("workers", {})
    fit = [
        a for a, info in workers.items()
        if all(float(info.get("resources", {}).get(k, 0)) >= v for k, v in resources.items())
    ]  # fmt: skip
    if not fit:
        want = " ".join(f"{k}={v:g}" for k, v in resources.items())
        raise ConfigError(
            f"no worker of the cluster offers {want}; start workers with `dask worker ADDRESS --resources {want}`"
        )
    logger.info("%d of %d workers offer %s", len(fit), len(workers), dict(resources))
