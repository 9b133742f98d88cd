"""The training loss of each step, kept on the device and read back every ``train.log_every`` steps.

Reading a loss (``float(loss)``, ``loss.item()``) makes the host wait until the device has
finished the step, so the next step's kernels are not queued meanwhile: a GPU idles at every
read. The loop instead keeps each step's main-head loss as a device tensor and reads them
together, in one copy, at a report: every ``log_every`` steps and at the end of an epoch. With
several ranks a report is one all-reduce, which also hands every rank rank 0's clock, so that
all of them take the same decisions (a diverged loss, a spent time budget, the learning rate of
a stretched schedule) at the same step.
"""

from __future__ import annotations

import torch

from geopsp.train.distributed import Ranks, all_reduce_sum

__all__ = ["StepLosses"]


class StepLosses:
    """Per-step losses waiting to be read (see the module docstring).

    Parameters
    ----------
    ranks : Ranks
        The run's ranks; a report averages each step's loss over them.
    device : torch.device
        Where the losses live (and the all-reduce runs).
    """

    def __init__(self, ranks: Ranks, device: torch.device) -> None:
        self.ranks = ranks
        self.device = device
        self._pending: list[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, loss: torch.Tensor) -> None:
        """Keep one step's loss (a 0-d tensor); nothing is read back."""
        self._pending.append(loss.detach())

    def read(self, elapsed_s: float) -> tuple[list[float], float]:
        """Return the waiting losses (each the mean over the ranks) and rank 0's ``elapsed_s``; forget them.

        Examples
        --------
        >>> meter = StepLosses(Ranks(), torch.device("cpu"))
        >>> meter.add(torch.tensor(0.5)); meter.add(torch.tensor(0.25))
        >>> meter.read(3.0)
        ([0.5, 0.25], 3.0)
        >>> len(meter)
        0
        """
        values = torch.stack(self._pending).double()
        self._pending = []
        if not self.ranks.parallel:
            return values.tolist(), elapsed_s
        clock = torch.tensor([elapsed_s if self.ranks.main else 0.0], dtype=torch.float64, device=self.device)
        *sums, clock_s = all_reduce_sum(self.ranks, torch.cat([values, clock])).tolist()
        return [v / self.ranks.world for v in sums], clock_s
