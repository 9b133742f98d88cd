"""Fields of Linux's ``/proc/self/status`` (peak memory, umask), ``None`` where there is none."""

from __future__ import annotations

__all__ = ["proc_status"]


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
