"""Data-parallel training: which rank a process is, its process group, and the collectives the loop uses.

The one home of :mod:`torch.distributed` in geopsp. A process started by ``torchrun`` (or by
:func:`launch`, which ``geopsp train --gpus N`` calls) reads its place from the environment
``torchrun`` sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``); any other
process is rank 0 of 1, and every collective here is then a no-op, so a single-process run
executes exactly what it did before data parallelism existed.

Ranks on CUDA devices talk over NCCL, ranks on the CPU over gloo (:func:`backend_for`).
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from geopsp import errors

__all__ = [
    "Ranks",
    "all_reduce_sum",
    "backend_for",
    "barrier",
    "broadcast_",
    "join_process_group",
    "launch",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Ranks:
    """Where this process stands in a data-parallel run.

    Examples
    --------
    >>> Ranks().main, Ranks().parallel
    (True, False)
    >>> Ranks(rank=1, world=2, local_rank=1, local_world=2).main
    False
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the one that writes the run's files."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        """Whether more than one process trains."""
        return self.world > 1

    @classmethod
    def current(cls) -> Ranks:
        """Return this process's ranks: from an initialized process group, else from torchrun's environment."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            rank, world = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
        local_rank, local_world = _env_int("LOCAL_RANK", rank), _env_int("LOCAL_WORLD_SIZE", world)
        if not 0 <= rank < world or not 0 <= local_rank < local_world:
            raise errors.ConfigError(
                f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local_rank}, "
                f"LOCAL_WORLD_SIZE={local_world}; start the processes with torchrun"
            )
        return cls(rank, world, local_rank, local_world)


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise errors.ConfigError(f"environment variable {name}={text!r} is not an integer") from None


def backend_for(device: torch.device) -> str:
    """Return the collective backend of ranks on ``device``: ``nccl`` on CUDA, else ``gloo``."""
    return "nccl" if device.type == "cuda" else "gloo"


def join_process_group(ranks: Ranks, device: torch.device) -> None:
    """Join the default process group, when there are several ranks and it does not exist yet.

    The group is kept for later runs in the same process and left at exit: creating the default
    group anew in a process reuses the keys of the old one in torchrun's store, and ranks may
    then meet the wrong peers. A group that already exists (made by the caller's own launcher)
    is used as it is.
    """
    dist = torch.distributed
    if not ranks.parallel or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend_for(device), device_id=device if device.type == "cuda" else None)
    atexit.register(_leave)


def _leave() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def all_reduce_sum(ranks: Ranks, tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over the ranks, in place (a no-op on one rank); return it."""
    if ranks.parallel:
        torch.distributed.all_reduce(tensor)
    return tensor


def broadcast_(ranks: Ranks, tensors: Iterable[torch.Tensor], *, src: int = 0) -> None:
    """Overwrite ``tensors`` on every rank with those of rank ``src`` (a no-op on one rank)."""
    if ranks.parallel:
        for t in tensors:
            torch.distributed.broadcast(t, src)


def barrier(ranks: Ranks, device: torch.device) -> None:
    """Wait until every rank gets here (a no-op on one rank)."""
    if ranks.parallel:
        if device.type == "cuda":
            torch.distributed.barrier(device_ids=[device.index or 0])
        else:
            torch.distributed.barrier()


def _run_rank(fn: Callable[..., Any], *args: Any) -> Any:
    """Call ``fn(*args)`` in a launched process, recording a failure for the launcher's report."""
    from torch.distributed.elastic.multiprocessing.errors import record

    return record(fn)(*args)


def launch(nproc: int, fn: Callable[..., T], *args: Any) -> list[T]:
    """Run ``fn(*args)`` in ``nproc`` new local processes that form one process group, as ``torchrun`` would.

    ``fn`` and ``args`` must be picklable (a module-level function): the processes are
    spawned. Each one finds its rank in the environment (:meth:`Ranks.current`).

    Returns
    -------
    list
        ``fn``'s return value of each rank, in rank order.

    Raises
    ------
    GeopspError
        A geopsp error raised on a rank, as the same class, its message prefixed with the rank.
    RuntimeError
        Any other failure of a rank (the other ranks are stopped).

    Notes
    -----
    While the processes run, SIGINT and SIGTERM stop them all; the signal is then delivered
    again to this process's own handlers (Ctrl-C raises :class:`KeyboardInterrupt` as usual).
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # a free port, as torchrun --standalone
        max_restarts=0,
        start_method="spawn",
    )
    saved = {sig: signal.getsignal(sig) for sig in _SIGNALS}
    try:
        results = elastic_launch(config, _run_rank)(fn, *args)
    except SignalException as exc:
        _restore(saved)  # the launcher's handlers raise SignalException; the caller's decide
        signal.raise_signal(exc.sigval)
        raise
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        message = failure.message
        text = str(message.get("message", message) if isinstance(message, dict) else message)
        name, _, detail = text.partition(": ")
        cls = getattr(errors, name, None)
        if isinstance(cls, type) and issubclass(cls, errors.GeopspError) and detail:
            raise cls(f"rank {rank}: {detail}") from exc
        raise RuntimeError(f"rank {rank} of {nproc} failed: {text}") from exc
    finally:
        _restore(saved)
    return [results[r] for r in range(nproc)]


_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
"""The signals torch's launcher takes over (its default ``signals_to_handle``)."""


def _restore(saved: dict[signal.Signals, Any]) -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for sig, handler in saved.items():
        if handler is not None:
            signal.signal(sig, handler)
