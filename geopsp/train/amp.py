"""Whether a run trains under bf16 autocast: the one home of ``train.amp``.

``true``/``false`` are obeyed. ``auto`` (and null) turns bf16 on for CUDA devices that support it.
On a CPU without bf16 instructions (AVX512-BF16 or AMX-BF16) autocast is emulated and always
slower, so fp32 is used. On a CPU with them it measures: one warm-up and two timed training
steps of the run's own model and first batch in each precision (on a copy, so the run itself is
untouched), and bf16 is kept only when it is at least :data:`MIN_SPEEDUP` times faster. The
choice is logged, written to the run summary and kept by ``--resume``. CPUs differ here more than anywhere: bf16 ran
1.7x faster on an AMD EPYC with AVX512-BF16, no faster on an Intel Xeon, and 6x slower on an
AVX2-only AMD EPYC, where it is emulated (measured on the project's machines).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

__all__ = ["MIN_SPEEDUP", "AmpChoice", "choose_amp", "training_step"]

logger = logging.getLogger(__name__)

MIN_SPEEDUP = 1.1
"""bf16 must beat fp32 by this factor on a CPU to be chosen (below it, fp32's accuracy wins)."""

StepFn = Callable[[torch.nn.Module, torch.optim.Optimizer, bool], None]


@dataclass(frozen=True, slots=True)
class AmpChoice:
    """The precision a run uses and why."""

    enabled: bool
    reason: str
    seconds: dict[str, float] = field(default_factory=dict)
    speedup: float | None = None
    """fp32 step time over bf16 step time, where measured."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (run summary and training state)."""
        return {
            "bf16": self.enabled,
            "reason": self.reason,
            "step_seconds": dict(self.seconds),
            "speedup": self.speedup,
        }


def training_step(loss_fn: Callable[[Any, torch.Tensor], Any], x: torch.Tensor, y: torch.Tensor) -> StepFn:
    """Return the step :func:`choose_amp` times: one optimizer step on the batch ``(x, y)``, waited for."""

    def step(model: torch.nn.Module, opt: torch.optim.Optimizer, amp: bool) -> None:
        model.train()
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(x)
        total, _ = loss_fn(out, y)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)

    return step


def _timed(
    step: StepFn, model: torch.nn.Module, make_opt: Callable[[torch.nn.Module], torch.optim.Optimizer], amp: bool
) -> float:
    trial = copy.deepcopy(model)
    opt = make_opt(trial)
    step(trial, opt, amp)  # warm-up: kernels, allocator
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        step(trial, opt, amp)
        best = min(best, time.perf_counter() - t0)
    return best


def choose_amp(
    setting: bool | Literal["auto"] | None,
    device: torch.device,
    *,
    model: torch.nn.Module,
    make_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer],
    step: StepFn,
    native_bf16: bool | None = None,
) -> AmpChoice:
    """Decide bf16 autocast for a run (see the module docstring).

    Parameters
    ----------
    setting : bool, "auto" or None
        ``train.amp``.
    device : torch.device
        Where the run trains.
    model : torch.nn.Module
        The run's model; only copies of it are trained by the measurement.
    make_optimizer : callable
        Builds an optimizer for a copy.
    step : callable
        ``step(model, optimizer, amp)`` runs one training step on the run's first batch.
    native_bf16 : bool, optional
        Whether the CPU has bf16 instructions (default: read from ``/proc/cpuinfo``).
    """
    if isinstance(setting, bool):
        return AmpChoice(setting, "train.amp is set")
    if device.type == "cuda":
        ok = bool(torch.cuda.is_bf16_supported())
        return AmpChoice(ok, "CUDA device with bf16" if ok else "this CUDA device has no bf16")
    if native_bf16 is None:
        from geopsp.device import cpu_has_native_bf16

        native_bf16 = cpu_has_native_bf16()
    if not native_bf16:
        return AmpChoice(False, "this CPU has no bf16 instructions (bf16 would be emulated, several times slower)")
    try:
        fp32 = _timed(step, model, make_optimizer, False)
        bf16 = _timed(step, model, make_optimizer, True)
    except RuntimeError as exc:  # an op without a bf16 CPU kernel
        return AmpChoice(False, f"bf16 autocast failed on this CPU ({exc.__class__.__name__}); fp32")
    speedup = fp32 / bf16 if bf16 > 0 else 0.0
    enabled = speedup >= MIN_SPEEDUP
    reason = f"measured on this CPU: bf16 step {bf16:.3f} s, fp32 {fp32:.3f} s ({speedup:.2f}x)"
    logger.info("amp auto: %s; training in %s", reason, "bf16" if enabled else "fp32")
    return AmpChoice(enabled, reason, {"fp32": round(fp32, 4), "bf16": round(bf16, 4)}, speedup)
