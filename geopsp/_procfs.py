"""Fields of Linux's ``/proc/self/status`` (peak memory, umask), ``None`` where there is none."""

from __future__ import annotations

import resource
import sys

__all__ = ["peak_rss_mb", "proc_status"]


def proc_status(field: str) -> str | None:
    """Return the value of ``field`` in ``/proc/self/status``, or ``None`` off Linux or when absent.

    Parameters
    ----------
    field : str
        The field's name without its colon (``"VmHWM"``, ``"Umask"``).

    Returns
    -------
    str or None
        The text after the colon, stripped (``"734512 kB"``, ``"0022"``).
    """
    prefix = f"{field}:"
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(prefix):
                    return line[len(prefix) :].strip()
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Return the peak resident memory of this process in MiB.

    Linux's ``VmHWM`` first: ``ru_maxrss`` survives ``exec``, so in a process started by a
    large parent (a benchmark harness, a worker pool) it reports the parent's size.
    """
    hwm = proc_status("VmHWM")  # "734512 kB"
    if hwm is not None:
        return round(int(hwm.split()[0]) / 1024.0, 1)
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kb / 1024.0 if sys.platform != "darwin" else kb / 1024.0 / 1024.0, 1)
