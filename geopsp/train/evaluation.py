"""Scoring a model on validation regions while it trains.

The regions of one scene are run together, in tiles of ``tile`` px over their bounding box.
Each tile is read with the scene around it as context (the image only: labels count inside the
regions alone), so a small validation block is judged as the model would see it in a
full-scene prediction, not cut out of its surroundings, and a scene with many blocks costs one
pass, not one per block.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

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


def _score_inside(core: NDArray[np.int64], window: NDArray[Any], reg: Region, row: int, col: int, ignore: int) -> None:
    """Copy into ``core`` the labels of ``window`` (top-left at ``row, col``) that lie in ``reg``."""
    h, w = core.shape
    a0, b0 = max(reg.row - row, 0), max(reg.col - col, 0)
    a1, b1 = min(reg.row + reg.height - row, h), min(reg.col + reg.width - col, w)
    if a0 >= a1 or b0 >= b1:
        return
    part = np.array(window[a0:a1, b0:b1], dtype=np.int64)
    reg.mask_excluded(part, row=row + a0, col=col + b0, fill=ignore)
    keep = part != ignore
    core[a0:a1, b0:b1][keep] = part[keep]


def _by_scene(regions: Sequence[Region]) -> dict[int, list[Region]]:
    out: dict[int, list[Region]] = {}
    for reg in regions:
        out.setdefault(reg.scene, []).append(reg)
    return out


def _context_start(core0: int, core1: int, tile: int, extent: int) -> int:
    """Start of a ``tile``-px read (``tile <= extent``) holding ``[core0, core1)`` centred, inside ``[0, extent)``."""
    return max(0, min((core0 + core1 - tile) // 2, extent - tile))


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
    for scene, regs in _by_scene(regions).items():
        # one pass over the bounding box of a scene's regions; pixels outside them are not scored
        top, left = min(r.row for r in regs), min(r.col for r in regs)
        bottom, right = max(r.row + r.height for r in regs), max(r.col + r.width for r in regs)
        for _, r0, r1 in tile_starts(bottom - top, tile):
            for _, c0, c1 in tile_starts(right - left, tile):
                jobs.append((scene, regs, top + r0, top + r1, left + c0, left + c1))
    for n, (scene, regs, r0, r1, c0, c1) in enumerate(jobs):
        reader = data.readers[scene]
        th, tw = min(tile, reader.height), min(tile, reader.width)
        rr = _context_start(r0, r1, th, reader.height)
        cr = _context_start(c0, c1, tw, reader.width)
        img, lab = reader.read(rr, cr, th, tw)
        core = np.full((r1 - r0, c1 - c0), ignore, dtype=np.int64)
        window = lab[r0 - rr : r1 - rr, c0 - cr : c1 - cr]
        for reg in regs:
            _score_inside(core, window, reg, r0, c0, ignore)
        if not (core != ignore).any():
            continue
        x = torch.from_numpy(normalize_window(img, norm))[None].to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        logits = logits.float()[..., r0 - rr : r1 - rr, c0 - cr : c1 - cr]
        target = torch.from_numpy(core)[None].to(device)
        labeled = int((target != ignore).sum())
        loss_sum += float(loss_fn.single(logits, target)) * labeled
        loss_px += labeled
        pred = logits.argmax(1).cpu().numpy()
        cm.update(core[None], pred, ignore=ignore)
        if progress is not None:
            progress(n + 1, len(jobs))
    return (loss_sum / loss_px if loss_px else math.nan), cm
