"""Scoring a model on validation regions while it trains.

The regions of one scene are run together, in tiles of ``tile`` px over their bounding box.
Each tile is read with the scene around it as context (the image only: labels count inside the
regions alone), so a small validation block is judged as the model would see it in a
full-scene prediction, not cut out of its surroundings, and a scene with many blocks costs one
pass, not one per block.

Tiles of one shape run ``batch_size`` at a time; each one's loss and confusion counts are
computed from its own slice of the batch's output, as they were one tile at a time, and stay on
the device until the end (nothing is read back per tile). With several ranks each scores every
``world``-th tile and the sums are added up over the ranks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from geopsp.eval.metrics import ConfusionMatrix
from geopsp.model.meta import Normalization
from geopsp.train.datasets import Region, TrainingData
from geopsp.train.distributed import Ranks, all_reduce_sum
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


def _tile_jobs(regions: Sequence[Region], tile: int) -> list[tuple[int, list[Region], int, int, int, int]]:
    """``(scene, its regions, row0, row1, col0, col1)`` of each core to score."""
    jobs = []
    for scene, regs in _by_scene(regions).items():
        # one pass over the bounding box of a scene's regions; pixels outside them are not scored
        top, left = min(r.row for r in regs), min(r.col for r in regs)
        bottom, right = max(r.row + r.height for r in regs), max(r.col + r.width for r in regs)
        for _, r0, r1 in tile_starts(bottom - top, tile):
            for _, c0, c1 in tile_starts(right - left, tile):
                jobs.append((scene, regs, top + r0, top + r1, left + c0, left + c1))
    return jobs


@dataclass(frozen=True, slots=True)
class _Tile:
    image: NDArray[np.float32]
    """Normalized ``(C, th, tw)`` read around the core."""
    target: NDArray[np.int64]
    """``(th, tw)``: the labels to score inside the core, ``ignore`` elsewhere."""
    core: tuple[int, int, int, int]
    """``(row0, row1, col0, col1)`` of the core inside the read."""
    labeled: int


class _Sums:
    """Loss and confusion counts, added up on the device."""

    def __init__(self, k: int, ignore: int, device: torch.device) -> None:
        self.k, self.ignore = k, ignore
        # the last bin takes the pixels that do not count
        self.counts = torch.zeros(k * (k + 1) + 1, dtype=torch.int64, device=device)
        self.loss = torch.zeros(2, dtype=torch.float64, device=device)  # sum of loss x pixels, pixels

    def add(self, logits: torch.Tensor, target: torch.Tensor, loss_fn: SegmentationLoss, labeled: int) -> None:
        """Add one tile: ``logits`` ``(1, K, h, w)`` float32 and ``target`` ``(1, h, w)`` of its core."""
        k = self.k
        self.loss[0] += loss_fn.single(logits, target).double() * labeled
        self.loss[1] += labeled
        pred = logits.argmax(1)
        # ConfusionMatrix.update's rules: references outside 0..K-1 and predictions equal to
        # `ignore` do not count, predictions >= K go to the "other" column
        keep = (target >= 0) & (target < k) & (pred != self.ignore)
        idx = torch.where(keep, target * (k + 1) + pred.clamp(max=k), k * (k + 1)).ravel()
        self.counts.scatter_add_(0, idx, torch.ones_like(idx))

    def result(self, ranks: Ranks | None) -> tuple[float, ConfusionMatrix]:
        if ranks is not None:
            all_reduce_sum(ranks, self.counts)
            all_reduce_sum(ranks, self.loss)
        cm = ConfusionMatrix(self.k)
        cm.counts += self.counts[:-1].reshape(self.k, self.k + 1).cpu().numpy()
        loss_sum, px = self.loss.tolist()
        return (loss_sum / px if px else math.nan), cm


def _read_tile(
    data: TrainingData, norm: Normalization, job: tuple[int, list[Region], int, int, int, int], tile: int, ignore: int
) -> _Tile | None:
    """Read one job's tile with its context; None when its core holds no labeled pixel."""
    scene, regs, r0, r1, c0, c1 = job
    reader = data.readers[scene]
    th, tw = min(tile, reader.height), min(tile, reader.width)
    rr = _context_start(r0, r1, th, reader.height)
    cr = _context_start(c0, c1, tw, reader.width)
    img, lab = reader.read(rr, cr, th, tw)
    core = np.full((r1 - r0, c1 - c0), ignore, dtype=np.int64)
    window = lab[r0 - rr : r1 - rr, c0 - cr : c1 - cr]
    for reg in regs:
        _score_inside(core, window, reg, r0, c0, ignore)
    labeled = int((core != ignore).sum())
    if not labeled:
        return None
    target = np.full((th, tw), ignore, dtype=np.int64)
    target[r0 - rr : r1 - rr, c0 - cr : c1 - cr] = core
    return _Tile(normalize_window(img, norm), target, (r0 - rr, r1 - rr, c0 - cr, c1 - cr), labeled)


def _to(array: NDArray[Any], device: torch.device) -> torch.Tensor:
    """Copy to ``device``; from pinned memory without waiting on CUDA (a pageable copy would)."""
    t = torch.from_numpy(array)
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


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
    batch_size: int = 1,
    amp: bool = False,
    channels_last: bool = False,
    progress: Callable[[int, int], None] | None = None,
    ranks: Ranks | None = None,
) -> tuple[float, ConfusionMatrix]:
    """Run ``model`` over validation regions, ``batch_size`` tiles at a time.

    Parameters
    ----------
    batch_size : int
        Tiles per forward pass (tiles of one shape are batched). The scores do not depend on it.
    progress : callable, optional
        ``progress(done, total)`` after each batch, in tiles of this rank.
    ranks : Ranks, optional
        Several ranks share the tiles; every rank gets the totals.

    Returns
    -------
    (loss, confusion)
        Mean main-head loss over labeled pixels, and the confusion matrix of labeled pixels.
    """
    model.eval()
    ignore = data.mapping.ignore_index
    sums = _Sums(len(data.classes), ignore, device)
    jobs = _tile_jobs(regions, tile)
    if ranks is not None:
        jobs = jobs[ranks.rank :: ranks.world]

    def run(batch: list[_Tile], done: int) -> None:
        x = _to(np.stack([t.image for t in batch]), device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        logits = logits.float()
        targets = _to(np.stack([t.target for t in batch]), device)
        for i, t in enumerate(batch):
            a0, a1, b0, b1 = t.core
            sums.add(logits[i : i + 1, :, a0:a1, b0:b1], targets[i : i + 1, a0:a1, b0:b1], loss_fn, t.labeled)
        if progress is not None:
            progress(done, len(jobs))

    batch: list[_Tile] = []
    for n, job in enumerate(jobs):
        t = _read_tile(data, norm, job, tile, ignore)
        if t is None:
            continue
        if batch and batch[0].image.shape != t.image.shape:
            run(batch, n)
            batch = []
        batch.append(t)
        if len(batch) >= batch_size:
            run(batch, n + 1)
            batch = []
    if batch:
        run(batch, len(jobs))
    return sums.result(ranks)
