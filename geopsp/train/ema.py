"""An exponential moving average of a model's weights, evaluated and saved alongside the raw weights.

The average uses a warm-up (``decay_t = min(decay, (1 + t) / (10 + t))`` after ``t`` updates),
as in Tarvainen & Valpola (2017) and timm's ``ModelEmaV2``: early on it follows the raw weights
closely, so a short run's average is not dominated by the random initialization. Floating-point
parameters and buffers (batch-norm statistics included) are averaged; integer buffers are copied.
"""

from __future__ import annotations

import copy

import torch

__all__ = ["WeightAverage"]


class WeightAverage:
    """EMA of ``model``'s floating-point state.

    Parameters
    ----------
    model : torch.nn.Module
        The model being trained; a frozen copy of it holds the average (:attr:`module`).
    decay : float
        Per-update decay (for example 0.998: a horizon of about 500 steps).
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = float(decay)
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def _pairs(
        self, model: torch.nn.Module
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]]]:
        mine = self.module.state_dict(keep_vars=True)
        theirs = model.state_dict(keep_vars=True)
        avg, cur, copies = [], [], []
        for name, t in mine.items():
            src = theirs[name].detach()
            if t.dtype.is_floating_point:
                avg.append(t.detach())
                cur.append(src)
            else:
                copies.append((t.detach(), src))
        return avg, cur, copies

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Move the average towards ``model``'s current weights (call after every optimizer step)."""
        self.updates += 1
        t = self.updates
        decay = min(self.decay, (1.0 + t) / (10.0 + t))
        avg, cur, copies = self._pairs(model)
        for a, c in zip(avg, cur, strict=True):
            a.lerp_(c, 1.0 - decay)
        for dst, src in copies:
            dst.copy_(src)

    @torch.no_grad()
    def load(self, state: dict[str, torch.Tensor], updates: int) -> None:
        """Restore an average saved with the module's ``state_dict`` (resume)."""
        self.module.load_state_dict(state)
        self.updates = int(updates)
