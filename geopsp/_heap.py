"""How glibc's heap hands freed memory back: the policy that keeps peak memory flat.

:func:`bound_heap_retention` is called once per run (``predict.bound_heap``); the row writer
calls :func:`trim_heap` after each write while the policy is on (:func:`heap_bounded`).
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

__all__ = ["HEAP_MMAP_THRESHOLD", "HEAP_TRIM_THRESHOLD", "bound_heap_retention", "heap_bounded", "trim_heap"]

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


def heap_bounded() -> bool:
    """Whether :func:`bound_heap_retention` is in force."""
    return _HEAP_BOUNDED
