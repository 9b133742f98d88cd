"""Which device a model runs on: the one home of ``auto``, ``cpu``, ``cuda`` and ``cuda:N``.

:func:`check_device_name` checks the spelling (the config models use it, so it needs no torch);
:func:`resolve_device` turns a name into a :class:`torch.device` on this machine, checking that
the CUDA device asked for exists. Prediction, training and batch runs all go through it.
:func:`cpu_has_native_bf16` tells whether bf16 autocast can be fast on this CPU.
:func:`gdal_threads` is the one home of how many threads GDAL may use in this process (block
decoding, COG encoding): all CPUs for a lone run, a worker's share of the host in a batch
(:func:`set_gdal_threads`). :func:`visible_gpus` names the GPUs a batch may pin its workers to.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Literal

from geopsp.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEVICE_NAMES",
    "check_device_name",
    "cpu_count",
    "cpu_has_native_bf16",
    "cpu_name",
    "gdal_threads",
    "resolve_device",
    "set_gdal_threads",
    "visible_gpus",
]

DEVICE_NAMES = "auto, cpu, cuda or cuda:N"
"""The device names geopsp accepts, as written in messages and help texts."""

_NAME = re.compile(r"auto|cpu|cuda(:\d+)?")
_GDAL_THREADS: int | None = None


def check_device_name(name: str) -> str:
    """Return ``name`` if it is a device name geopsp accepts.

    Raises
    ------
    ValueError
        Naming the valid spellings.

    Examples
    --------
    >>> check_device_name("cuda:1")
    'cuda:1'
    >>> check_device_name("gpu")
    Traceback (most recent call last):
    ...
    ValueError: unknown device 'gpu'; use auto, cpu, cuda or cuda:N
    """
    if not _NAME.fullmatch(name):
        raise ValueError(f"unknown device {name!r}; use {DEVICE_NAMES}")
    return name


def resolve_device(
    name: str | torch.device = "auto", *, key: str | None = None, local_rank: int | None = None
) -> torch.device:
    """Turn a device name into a :class:`torch.device` of this machine.

    Parameters
    ----------
    name : str or torch.device
        ``auto`` (CUDA when present, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``; a
        :class:`torch.device` is checked the same way.
    key : str, optional
        The config key the name came from, for the error message.
    local_rank : int, optional
        This process's rank on its machine in data-parallel training (torchrun's
        ``LOCAL_RANK``): ``auto`` and ``cuda`` then mean ``cuda:<local_rank>``, one GPU per
        process; ``cuda:N`` is refused, since every process would take the same GPU.

    Returns
    -------
    torch.device

    Raises
    ------
    ConfigError
        For an unknown name, CUDA asked for on a machine without it, or a CUDA index that is
        not there.

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    import torch

    text = str(name)
    try:
        check_device_name(text)
    except ValueError as exc:
        raise ConfigError(str(exc), key=key) from None
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(text)
    if local_rank is not None and device.type == "cuda":
        if device.index is not None:
            raise ConfigError(
                f"device {text!r} with several training processes: each process takes cuda:<LOCAL_RANK>; "
                "set auto or cuda",
                key=key,
            )
        device = torch.device("cuda", local_rank)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {text!r} requested but CUDA is not available; use cpu or auto", key=key)
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            if local_rank is not None:
                raise ConfigError(
                    f"process with LOCAL_RANK={local_rank} needs cuda:{local_rank} but this machine has {count} "
                    f"CUDA device(s); start at most {count} processes per machine",
                    key=key,
                )
            raise ConfigError(
                f"device {text!r} requested but this machine has {count} CUDA device(s); "
                f"use cuda:0..cuda:{count - 1} or cuda",
                key=key,
            )
    return device


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX-BF16)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = line.split()
                    return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        pass
    return False


def cpu_name() -> str:
    """Return the CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "cpu"


def cpu_count() -> int:
    """Return the CPUs this process may use (its affinity), at least 1."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS/Windows
        return os.cpu_count() or 1


def set_gdal_threads(threads: int | None) -> None:
    """Set the threads GDAL may use in this process from now on (None: all CPUs).

    Batch workers call it with their share of the host's cores, so that eight workers on a
    16-core host do not each decode and encode with all 16.
    """
    global _GDAL_THREADS
    _GDAL_THREADS = None if threads is None else max(1, int(threads))


def gdal_threads() -> str:
    """Return the value for GDAL's ``NUM_THREADS`` / ``GDAL_NUM_THREADS`` in this process.

    :func:`set_gdal_threads`'s number, else ``ALL_CPUS``.

    Examples
    --------
    >>> set_gdal_threads(3); gdal_threads()
    '3'
    >>> set_gdal_threads(None); gdal_threads()
    'ALL_CPUS'
    """
    return "ALL_CPUS" if _GDAL_THREADS is None else str(_GDAL_THREADS)


def visible_gpus(request: Literal["all"] | int = "all", *, key: str | None = "batch.gpus") -> tuple[str, ...]:
    """Name the CUDA GPUs this process sees, as ``CUDA_VISIBLE_DEVICES`` entries for worker processes.

    The count comes from :func:`torch.cuda.device_count`, which asks NVML when it can and so
    does not initialize CUDA in this process. The names honour this process's own
    ``CUDA_VISIBLE_DEVICES`` (indices or ``GPU-...`` UUIDs): with ``CUDA_VISIBLE_DEVICES=2,3``
    the GPUs are ``("2", "3")``, so a worker given ``"3"`` sees the same GPU this process calls
    ``cuda:1``.

    Parameters
    ----------
    request : "all" or int
        Every visible GPU, or the first ``request`` of them.
    key : str, optional
        The config key the request came from, for the error message.

    Returns
    -------
    tuple of str
        One ``CUDA_VISIBLE_DEVICES`` value per GPU, in order.

    Raises
    ------
    ConfigError
        If no CUDA GPU is visible (or torch is not installed), or ``request`` is more GPUs
        than there are.
    """
    if request != "all" and (isinstance(request, bool) or not isinstance(request, int) or request < 1):
        raise ConfigError(f"gpus must be 'all' or a number of GPUs of at least 1, got {request!r}", key=key)
    seen = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        import torch

        count = int(torch.cuda.device_count())
    except ImportError:
        count = 0
    where = "" if seen is None else f" with CUDA_VISIBLE_DEVICES={seen!r}"
    if count == 0:
        raise ConfigError(
            f"gpus={request!r} but this machine shows 0 CUDA GPUs{where} (torch.cuda.device_count()); "
            "run on a machine with a CUDA GPU and torch built for CUDA, or drop --gpus",
            key=key,
        )
    if request != "all" and request > count:
        raise ConfigError(
            f"gpus={request} but this machine shows {count} CUDA GPU(s){where}; use --gpus {count} or --gpus all",
            key=key,
        )
    names = [s.strip() for s in seen.split(",")] if seen is not None else [str(i) for i in range(count)]
    names = names[:count]  # CUDA stops at the first entry it cannot use
    return tuple(names if request == "all" else names[:request])
