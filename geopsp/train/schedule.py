"""The learning-rate schedule of a run: linear warm-up, then poly decay over the steps (or the time budget)."""

from __future__ import annotations

from dataclasses import dataclass

from geopsp.config.schema import TrainConfig

__all__ = ["Schedule"]


@dataclass(frozen=True, slots=True)
class Schedule:
    """``lr = base * (1 - progress) ** power`` after ``warmup`` linear steps, never below ``base * 1e-4``.

    ``progress`` is the share of ``total_steps`` done; with a ``budget_s`` it is the larger of that
    and the share of the time budget spent (``train.budget: stretch``).

    Examples
    --------
    >>> s = Schedule(base=0.01, total_steps=100, power=1.0)
    >>> s.lr(0, 0.0), s.lr(50, 0.0)
    (0.01, 0.005)
    >>> Schedule(base=0.01, total_steps=100, power=1.0, budget_s=60.0).lr(0, 45.0)
    0.0025
    """

    base: float
    total_steps: int
    power: float = 0.9
    warmup: int = 0
    budget_s: float | None = None

    @classmethod
    def of(cls, config: TrainConfig, total_steps: int) -> Schedule:
        """Return the schedule a config asks for, over ``total_steps`` optimizer steps."""
        stretch = config.max_minutes is not None and config.budget == "stretch"
        return cls(
            base=config.optim.lr,
            total_steps=total_steps,
            power=config.optim.poly_power,
            warmup=config.optim.warmup_steps,
            budget_s=config.max_minutes * 60.0 if stretch and config.max_minutes is not None else None,
        )

    def lr(self, step: int, elapsed_s: float) -> float:
        """Learning rate of optimizer step ``step`` (0-based) after ``elapsed_s`` seconds of training."""
        progress = step / max(self.total_steps, 1)
        if self.budget_s is not None:
            progress = max(progress, elapsed_s / self.budget_s)
        progress = min(progress, 1.0)
        lr = float(self.base * (1.0 - progress) ** self.power)
        if self.warmup and step < self.warmup:
            lr *= (step + 1) / self.warmup
        return max(lr, self.base * 1e-4)
