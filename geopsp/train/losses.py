"""Segmentation losses that skip ignored pixels, plus the PSPNet auxiliary loss.

The paper's loss is cross-entropy on the main output plus 0.4 times cross-entropy on the
auxiliary head. Dice and focal losses are selectable for imbalanced classes; all of them give
ignored pixels (unlabeled, nodata, padding) no weight.

None of them reads a value back to the host (no ``bool(tensor)``, no boolean-mask indexing): a
training step on a GPU queues its kernels without waiting for them. A batch without labeled
pixels gets the loss 0 through :func:`torch.where`, not through a Python ``if``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LOSSES", "SegmentationLoss", "dice_loss", "focal_loss"]

LossName = Literal["ce", "dice", "focal", "ce+dice"]


def focal_loss(
    logits: Tensor, target: Tensor, *, ignore_index: int, gamma: float = 2.0, weight: Tensor | None = None
) -> Tensor:
    """Focal loss (Lin et al. 2017) averaged over labeled pixels.

    Parameters
    ----------
    logits : Tensor, shape (N, K, H, W)
    target : Tensor of int64, shape (N, H, W)
        Channel indices; ``ignore_index`` pixels are skipped.
    gamma : float
        Focusing parameter; 0 gives (weighted) cross-entropy.
    weight : Tensor, shape (K,), optional
        Per-class weights.
    """
    logp = F.log_softmax(logits.float(), dim=1)
    valid = target != ignore_index
    t = torch.where(valid, target, torch.zeros_like(target))
    logp_t = logp.gather(1, t[:, None]).squeeze(1)
    loss = -((1.0 - logp_t.exp()) ** gamma) * logp_t
    w = valid.float() if weight is None else weight[t] * valid
    mean = (loss * w).sum() / w.sum().clamp_min(1e-12)
    return torch.where(valid.any(), mean, logits.sum() * 0.0)


def dice_loss(logits: Tensor, target: Tensor, *, ignore_index: int, eps: float = 1.0) -> Tensor:
    """Soft multi-class Dice loss over labeled pixels, averaged over the classes present.

    Parameters
    ----------
    logits : Tensor, shape (N, K, H, W)
    target : Tensor of int64, shape (N, H, W)
    ignore_index : int
        Skipped label value.
    eps : float
        Smoothing term.
    """
    k = logits.shape[1]
    valid = (target != ignore_index).unsqueeze(1).float()
    prob = F.softmax(logits.float(), dim=1) * valid
    t = torch.where(target == ignore_index, torch.zeros_like(target), target)
    onehot = F.one_hot(t, k).permute(0, 3, 1, 2).float() * valid
    dims = (0, 2, 3)
    inter = (prob * onehot).sum(dims)
    denom = prob.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + eps) / (denom + eps)
    present = onehot.sum(dims) > 0
    n = present.sum()
    mean = torch.where(present, dice, torch.zeros_like(dice)).sum() / n.clamp_min(1)
    return torch.where(n > 0, 1.0 - mean, logits.sum() * 0.0)


class SegmentationLoss(nn.Module):
    """Main loss plus ``aux_weight`` times the same loss on the auxiliary output.

    Parameters
    ----------
    kind : {"ce", "dice", "focal", "ce+dice"}
        Main loss.
    ignore_index : int
        Label value that never counts.
    class_weights : sequence of float, optional
        Per-class weights (cross-entropy and focal).
    aux_weight : float
        Weight of the auxiliary loss (paper: 0.4).
    focal_gamma : float
        Focal loss focusing parameter.
    label_smoothing : float
        Cross-entropy label smoothing.

    Notes
    -----
    ``forward(output, target)`` takes the model's output (logits, or ``(main, aux)`` in training)
    and returns ``(total, main)``: the loss to optimize and the main-head loss to report.
    """

    def __init__(
        self,
        kind: LossName = "ce",
        *,
        ignore_index: int = 255,
        class_weights: Sequence[float] | None = None,
        aux_weight: float = 0.4,
        focal_gamma: float = 2.0,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if kind not in LOSSES:
            raise ValueError(f"unknown loss {kind!r}; choose one of {sorted(LOSSES)}")
        self.kind = kind
        self.ignore_index = ignore_index
        self.aux_weight = aux_weight
        self.focal_gamma = focal_gamma
        self.label_smoothing = label_smoothing
        weight = None if class_weights is None else torch.tensor(list(class_weights), dtype=torch.float32)
        self.register_buffer("weight", weight, persistent=False)

    def single(self, logits: Tensor, target: Tensor) -> Tensor:
        """Return the main loss of one output."""
        weight = self.weight if isinstance(self.weight, Tensor) else None
        if self.kind in ("ce", "ce+dice"):
            ce = F.cross_entropy(
                logits.float(),
                target,
                weight=weight,
                ignore_index=self.ignore_index,
                label_smoothing=self.label_smoothing,
            )
            # NaN (0 / 0) without labeled pixels; where() keeps it out of the value and the gradient
            loss = torch.where((target != self.ignore_index).any(), ce, logits.sum() * 0.0)
            if self.kind == "ce+dice":
                loss = loss + dice_loss(logits, target, ignore_index=self.ignore_index)
            return loss
        if self.kind == "focal":
            return focal_loss(logits, target, ignore_index=self.ignore_index, gamma=self.focal_gamma, weight=weight)
        return dice_loss(logits, target, ignore_index=self.ignore_index)

    def forward(self, output: Any, target: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(total, main)`` losses."""
        if isinstance(output, (tuple, list)):
            main_logits, aux_logits = output[0], output[1] if len(output) > 1 else None
        else:
            main_logits, aux_logits = output, None
        main = self.single(main_logits, target)
        total = main
        if aux_logits is not None and self.aux_weight > 0:
            total = main + self.aux_weight * self.single(aux_logits, target)
        return total, main


LOSSES: dict[str, str] = {
    "ce": "cross-entropy with ignore index (the paper's)",
    "dice": "soft Dice over labeled pixels",
    "focal": "focal loss (gamma = optim.focal_gamma)",
    "ce+dice": "cross-entropy plus soft Dice",
}
"""Loss names accepted by :class:`SegmentationLoss`."""
