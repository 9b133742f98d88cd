"""Scoring a model on validation regions while it trains.

A region is run in tiles of ``tile`` px. Each tile is read with the scene around it as context
(the image only: labels count inside the region alone), so a small validation block is judged as
the model would see it in a full-scene prediction, not cut out of its surroundings.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from geopsp.eval.metrics import ConfusionMatrix
from geopsp.model.meta import Normalization
from geopsp.train.datasets import Region, TrainingData
from geopsp.train.losses import SegmentationLoss
from geopsp.train.stats import normalize_window

__all__ = ["evaluate_regions", "tile_starts"]


def tile_starts(extent: int, tile: int) -> list[tuple[int, int, int]]:
    """``(read_start, core_start, core_end)`` along one axis: tiles of ``tile`` px covering ``extent``.

    The last tile is shifted back to end at ``extent`` (its read start moves, its core does not).

    Examples
    --------
    >>> tile_starts(10, 4)
    [(0, 0, 4), (4, 4, 8), (6, 8, 10)]
    """
    out = []
    nominal = 0
    while nominal < extent:
        read = max(min(nominal, extent - tile), 0)
        out.append((read, nominal, min(nominal + tile, extent)))
        nominal += tile
    return out


def _context_start(core0: int, core1: int, tile: int, extent: int) -> int:
    """Start of a ``tile``-px read that holds ``[core0, core1)`` centred, inside ``[0, extent)`` where it fits."""
    start = (core0 + core1 - tile) // 2
    return max(0, min(start, extent - tile)) if tile <= extent else -((tile - extent) // 2)


@torch.inference_mode()
def evaluate_regions(
    model: torch.nn.Module,
    data: TrainingData,
    regions: Sequence[Region],
    norm: Normalization,
    loss_fn: SegmentationLoss,
    *,
    tile: int,
    device: torch.device,
    amp: bool = False,
    channels_last: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[float, ConfusionMatrix]:
    """Run ``model`` over validation regions tile by tile.

    Returns
    -------
    (loss, confusion)
        Mean main-head loss over labeled pixels, and the confusion matrix of labeled pixels.
    """
    model.eval()
    k = len(data.classes)
    cm = ConfusionMatrix(k)
    ignore = data.mapping.ignore_index
    loss_sum, loss_px = 0.0, 0
    jobs = []
    for reg in regions:
        for _, r0, r1 in tile_starts(reg.height, tile):
            for _, c0, c1 in tile_starts(reg.width, tile):
                jobs.append((reg, reg.row + r0, reg.row + r1, reg.col + c0, reg.col + c1))
    for n, (reg, r0, r1, c0, c1) in enumerate(jobs):
        reader = data.readers[reg.scene]
        size = min(tile, max(reader.height, reader.width))
        rr = _context_start(r0, r1, size, reader.height)
        cr = _context_start(c0, c1, size, reader.width)
        img, lab = reader.read(rr, cr, size, size)
        x = torch.from_numpy(normalize_window(img, norm))[None].to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        logits = logits.float()[..., r0 - rr : r1 - rr, c0 - cr : c1 - cr]
        core = np.array(lab[r0 - rr : r1 - rr, c0 - cr : c1 - cr], dtype=np.int64)
        target = torch.from_numpy(core)[None].to(device)
        labeled = int((target != ignore).sum())
        if labeled:
            loss_sum += float(loss_fn.single(logits, target)) * labeled
            loss_px += labeled
        pred = logits.argmax(1).cpu().numpy()
        cm.update(core[None], pred, ignore=ignore)
        if progress is not None:
            progress(n + 1, len(jobs))
    return (loss_sum / loss_px if loss_px else math.nan), cm
