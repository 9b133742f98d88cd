"""Stage clocks that tell the truth on a GPU: the one home of how a run times its stages.

CUDA kernels run asynchronously: a host timer around a forward pass measures the launch, and
the model's real time shows up wherever the host next waits (the blend, a copy back). On
CUDA a :class:`StageClock` therefore records a pair of CUDA events around each stage on the
stream it runs on and sums their elapsed times, folding finished pairs as it goes (so it holds
a few pairs, however long the run); on the CPU it sums wall-clock time.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

__all__ = ["StageClock"]


class StageClock:
    """Seconds spent in named stages, on the host or on a CUDA device.

    Parameters
    ----------
    device : torch.device or str
        Where the timed work runs; ``cuda`` devices are timed with CUDA events.

    Examples
    --------
    >>> clock = StageClock("cpu")
    >>> with clock.time("model"):
    ...     pass
    >>> clock.seconds("model") >= 0.0, clock.seconds("blend")
    (True, 0.0)
    """

    def __init__(self, device: Any = "cpu") -> None:
        self.cuda = getattr(device, "type", str(device).split(":")[0]) == "cuda"
        self._device = device
        self._host: dict[str, float] = {}
        self._pending: dict[str, deque[tuple[Any, Any]]] = {}

    @contextlib.contextmanager
    def time(self, stage: str, stream: Any = None) -> Iterator[None]:
        """Time the work issued inside the block (on ``stream``, default the current CUDA stream)."""
        if not self.cuda:
            t0 = time.perf_counter()
            try:
                yield
            finally:
                self._host[stage] = self._host.get(stage, 0.0) + time.perf_counter() - t0
            return
        import torch

        start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        start.record(stream)
        try:
            yield
        finally:
            end.record(stream)
            pending = self._pending.setdefault(stage, deque())
            pending.append((start, end))
            self._fold(stage, wait=False)

    def _fold(self, stage: str, *, wait: bool) -> None:
        """Add the elapsed time of finished event pairs (all of them, waiting, when ``wait``)."""
        pending = self._pending.get(stage)
        while pending:
            start, end = pending[0]
            if wait:
                end.synchronize()
            elif not end.query():
                break
            pending.popleft()
            self._host[stage] = self._host.get(stage, 0.0) + start.elapsed_time(end) / 1000.0

    def seconds(self, stage: str) -> float:
        """Return the seconds spent in ``stage`` so far (waits for the device's pending work of it)."""
        self._fold(stage, wait=True)
        return self._host.get(stage, 0.0)

    def add(self, stage: str, seconds: float) -> None:
        """Add host seconds to a stage (work the host itself did)."""
        self._host[stage] = self._host.get(stage, 0.0) + seconds
