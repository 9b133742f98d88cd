"""Train/validation split: which regions of which scenes train, and which validate.

The split is by scene (patterns), by date (regex), by a seeded fraction of whole scenes, a
spatial stripe of every scene (:func:`split_scenes`), or stratified square blocks of the
training scenes (:func:`split_blocks`); never random pixels of one scene.

Blocks stay inside their training region and are cut out of its labels only: a training
region lists them in :attr:`Region.exclude`, and whatever reads its labels (windows, class
counts, the sampler's labeled fractions) sees ``ignore_index`` there. Its image stays
visible, as a new date of a known area is at prediction.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from geopsp.config.schema import SplitConfig
from geopsp.errors import ConfigError
from geopsp.train.layouts import Scene

__all__ = ["Rect", "Region", "split_blocks", "split_scenes"]

Rect = tuple[int, int, int, int]
"""A rectangle ``(row, col, height, width)`` in scene pixel coordinates."""


@dataclass(frozen=True, slots=True)
class Region:
    """A rectangle of a scene used for training or validation (the whole scene, a stripe or a block).

    Attributes
    ----------
    scene : int
        Index of the scene (and its reader).
    row, col, height, width : int
        The rectangle in scene pixels.
    exclude : tuple of (row, col, height, width)
        Rectangles in scene pixel coordinates, not overlapping each other, whose labels this
        region must not use: they read as ignored (the image is left as it is). A training
        region excludes the validation blocks of :func:`split_blocks`.

        .. versionadded:: 0.2

    Examples
    --------
    >>> reg = Region(0, 0, 0, 4, 4, exclude=((0, 0, 2, 2),))
    >>> reg.crop_labels(np.ones((4, 4), dtype="uint8"), fill=255).tolist()[:2]
    [[255, 255, 1, 1], [255, 255, 1, 1]]
    >>> reg.pixels
    12
    """

    scene: int
    row: int
    col: int
    height: int
    width: int
    exclude: tuple[Rect, ...] = ()

    @property
    def pixels(self) -> int:
        """Pixels of the rectangle outside its excluded rectangles."""
        inside = sum(
            h * w for _, _, h, w in (_clip(e, self.row, self.col, self.height, self.width) for e in self.exclude)
        )
        return self.height * self.width - inside

    def mask_excluded(self, labels: NDArray[np.integer], *, row: int, col: int, fill: int) -> None:
        """Set ``labels`` under the excluded rectangles to ``fill``, in place.

        Parameters
        ----------
        labels : ndarray, shape (..., H, W)
            A window of labels whose top-left pixel is ``(row, col)`` in scene coordinates.
        row, col : int
            Where the window lies in the scene (may be negative for padded windows).
        fill : int
            The ignore index.
        """
        h, w = labels.shape[-2:]
        for r, c, eh, ew in self.exclude:
            r0, c0 = max(r - row, 0), max(c - col, 0)
            r1, c1 = min(r + eh - row, h), min(c + ew - col, w)
            if r0 < r1 and c0 < c1:
                labels[..., r0:r1, c0:c1] = fill

    def crop_labels(self, scene_labels: NDArray[np.integer], *, fill: int) -> NDArray[np.integer]:
        """Return a copy of the region's part of a scene's labels, its excluded rectangles set to ``fill``."""
        out = np.array(scene_labels[self.row : self.row + self.height, self.col : self.col + self.width], copy=True)
        self.mask_excluded(out, row=self.row, col=self.col, fill=fill)
        return out


def _clip(rect: Rect, row: int, col: int, height: int, width: int) -> Rect:
    """``rect`` clipped to another rectangle (zero size when they do not meet)."""
    r0, c0 = max(rect[0], row), max(rect[1], col)
    r1, c1 = min(rect[0] + rect[2], row + height), min(rect[1] + rect[3], col + width)
    return (r0, c0, max(r1 - r0, 0), max(c1 - c0, 0))


# --------------------------------------------------------------------------- split


def _matches(scene_id: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(scene_id, p) for p in patterns)


def split_scenes(
    scenes: Sequence[Scene], sizes: Sequence[tuple[int, int]], split: SplitConfig, *, seed: int = 0
) -> tuple[list[Region], list[Region]]:
    """Split scenes into training and validation regions.

    Parameters
    ----------
    scenes : sequence of Scene
        The scenes.
    sizes : sequence of (height, width)
        Their sizes in pixels.
    split : SplitConfig
        Patterns, dates, a seeded scene fraction or a spatial hold-out.
    seed : int
        Seeds the scene fraction.

    Returns
    -------
    (train, val) : lists of Region
        ``val`` may be empty when the split asks for no validation.

    Raises
    ------
    ConfigError
        When the split leaves no training data, or a pattern/date matches nothing.
    """
    n = len(scenes)
    is_val = np.zeros(n, dtype=bool)
    explicit = bool(split.val or split.val_dates or split.val_from_date)
    if split.val:
        hits = np.array([_matches(s.id, split.val) for s in scenes], dtype=bool)
        if not hits.any():
            raise ConfigError(
                f"no scene id matches {list(split.val)}; ids are {[s.id for s in scenes]}", key="train.split.val"
            )
        is_val |= hits
    if split.val_dates:
        hits = np.array([s.date in split.val_dates for s in scenes], dtype=bool)
        if not hits.any():
            dates = sorted({s.date for s in scenes if s.date})
            raise ConfigError(
                f"no scene is dated {list(split.val_dates)}; dates are {dates}", key="train.split.val_dates"
            )
        is_val |= hits
    if split.val_from_date:
        is_val |= np.array([s.date is not None and s.date >= split.val_from_date for s in scenes], dtype=bool)
    if not explicit and split.val_fraction > 0:
        k = max(1, round(n * split.val_fraction))
        if k >= n:
            raise ConfigError(
                f"val_fraction {split.val_fraction} of {n} scenes leaves none to train on",
                key="train.split.val_fraction",
            )
        pick = np.random.default_rng(seed).permutation(n)[:k]
        is_val[pick] = True
    is_train = ~is_val
    if split.train:
        is_train &= np.array([_matches(s.id, split.train) for s in scenes], dtype=bool)
    train: list[Region] = []
    val: list[Region] = []
    for i, (h, w) in enumerate(sizes):
        if is_val[i]:
            val.append(Region(i, 0, 0, h, w))
        elif is_train[i]:
            if split.holdout > 0:
                t, v = _stripe(i, h, w, split.holdout, split.holdout_side)
                train.append(t)
                val.append(v)
            else:
                train.append(Region(i, 0, 0, h, w))
    if not train:
        raise ConfigError("the split leaves no training scenes; check train.split", key="train.split")
    return train, val


def _stripe(i: int, h: int, w: int, fraction: float, side: str) -> tuple[Region, Region]:
    if side in ("left", "right"):
        cut = max(1, min(w - 1, round(w * fraction)))
        if side == "right":
            return Region(i, 0, 0, h, w - cut), Region(i, 0, w - cut, h, cut)
        return Region(i, 0, cut, h, w - cut), Region(i, 0, 0, h, cut)
    cut = max(1, min(h - 1, round(h * fraction)))
    if side == "bottom":
        return Region(i, 0, 0, h - cut, w), Region(i, h - cut, 0, cut, w)
    return Region(i, cut, 0, h - cut, w), Region(i, 0, 0, cut, w)


# --------------------------------------------------------------------------- blocks


def split_blocks(
    regions: Sequence[Region],
    labels: Callable[[int], NDArray[np.integer]],
    *,
    fraction: float,
    block_size: int,
    num_classes: int,
    ignore_index: int,
    layout: Literal["per_scene", "shared"] = "per_scene",
    grids: Sequence[Hashable | None] | None = None,
    seed: int = 0,
) -> tuple[list[Region], list[Region]]:
    """Hold out stratified square blocks of training regions for validation.

    Each region is cut into ``block_size`` blocks on a grid starting at its top-left corner
    (edge blocks are smaller). Blocks are taken greedily, seeded: first those that best fill
    the classes still short of ``fraction`` of their labeled pixels in validation (a class
    counts relative to its own target, so rare classes come first), then random ones until
    each scene (``per_scene``) or grid group (``shared``) holds about ``fraction`` of its
    labeled pixels. A block that would leave a class with no training pixel is never taken.

    Parameters
    ----------
    regions : sequence of Region
        The training regions to cut blocks from.
    labels : callable
        ``labels(scene)`` returns the scene's labels as channel indices, shape (H, W).
    fraction : float
        Share of each scene's (or group's) labeled pixels to hold out, in (0, 1).
    block_size : int
        Block edge in pixels.
    num_classes : int
        Channel indices are ``0 .. num_classes - 1``; anything else is unlabeled.
    ignore_index : int
        Labels equal to it are unlabeled.
    layout : {"per_scene", "shared"}
        ``per_scene``: every region draws its own blocks. ``shared``: regions of scenes with the
        same grid key and the same rectangle lose the same blocks.
    grids : sequence of hashable, optional
        Grid key per scene index (``None``: a grid of its own); needed for ``shared``.
    seed : int
        Seeds the choice.

    Returns
    -------
    (train, val) : lists of Region
        ``train``: the regions with the chosen blocks added to their ``exclude``; ``val``: one
        region per chosen block and scene, where the block has labeled pixels in that scene.

    Examples
    --------
    >>> lab = np.zeros((8, 8), dtype="uint8"); lab[:, 4:] = 1
    >>> train, val = split_blocks([Region(0, 0, 0, 8, 8)], lambda i: lab, fraction=0.5, block_size=4,
    ...                           num_classes=2, ignore_index=255)
    >>> sorted({int(lab[v.row, v.col]) for v in val}), train[0].pixels
    ([0, 1], 32)
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"val_blocks must be in (0, 1), got {fraction}", key="train.split.val_blocks")
    k = num_classes
    # groups of regions that lose the same blocks
    groups: dict[Hashable, list[int]] = {}
    for i, reg in enumerate(regions):
        grid = None if grids is None or layout == "per_scene" else grids[reg.scene]
        key: Hashable = ("region", i) if grid is None else (grid, reg.row, reg.col, reg.height, reg.width)
        groups.setdefault(key, []).append(i)
    members = list(groups.values())
    unit_group: list[int] = []
    unit_rect: list[Rect] = []
    unit_counts: list[NDArray[np.int64]] = []  # (K,) per unit, summed over the group's regions
    region_counts: dict[tuple[int, int], int] = {}  # (region, unit) -> labeled pixels
    for g, idx in enumerate(members):
        first = regions[idx[0]]
        rects = _blocks(first, block_size)
        counts = np.zeros((len(rects), k), dtype=np.int64)
        for i in idx:
            per = _block_counts(regions[i], labels(regions[i].scene), block_size, k, ignore_index)
            counts += per
            for b, n in enumerate(per.sum(axis=1).tolist()):
                if n:
                    region_counts[(i, len(unit_rect) + b)] = n
        unit_group += [g] * len(rects)
        unit_rect += rects
        unit_counts += list(counts)
    if not unit_rect:
        return list(regions), []
    n = np.stack(unit_counts)  # (U, K)
    group = np.array(unit_group)
    total = n.sum(axis=0)  # (K,)
    target = fraction * total
    budget = fraction * np.bincount(group, weights=n.sum(axis=1), minlength=len(members))
    rng = np.random.default_rng(seed)
    jitter = rng.uniform(0.5, 1.0, size=len(n))  # seeded preference among similar blocks
    taken = np.zeros(len(n), dtype=bool)
    val = np.zeros(k, dtype=np.int64)
    gval = np.zeros(len(members))
    has = n.sum(axis=1) > 0

    def keeps_train() -> NDArray[np.bool_]:
        # taking the unit leaves every class with training pixels (a class absent everywhere is no matter)
        left = total - val - n
        ok: NDArray[np.bool_] = np.all((left > 0) | (total == 0), axis=1)
        return ok

    # 1. stratify: fill the classes furthest below their target first
    while True:
        need = np.maximum(target - val, 0.0)
        if not (need > 0).any():
            break
        weight = np.where(need > 0, 1.0 / np.maximum(target, 1e-12), 0.0)
        gain = (np.minimum(n, need) * weight).sum(axis=1)
        eligible = ~taken & has & (gval[group] < budget[group]) & (gain > 0) & keeps_train()
        if not eligible.any():
            break
        u = int(np.argmax(np.where(eligible, gain * jitter, -np.inf)))
        taken[u] = True
        val += n[u]
        gval[group[u]] += n[u].sum()
    # 2. fill each group to its budget with random blocks that bring it closer
    for u in rng.permutation(len(n)).tolist():
        g = group[u]
        size = n[u].sum()
        if taken[u] or not has[u] or abs(gval[g] + size - budget[g]) >= abs(gval[g] - budget[g]):
            continue
        if not np.all((total - val - n[u] > 0) | (total == 0)):
            continue
        taken[u] = True
        val += n[u]
        gval[g] += size
    # 3. the regions: training ones exclude the blocks of their group, validation ones are the blocks
    chosen: dict[int, list[int]] = {}
    for u in np.flatnonzero(taken).tolist():
        chosen.setdefault(int(group[u]), []).append(u)
    train: list[Region] = []
    held: list[Region] = []
    region_group = {i: g for g, idx in enumerate(members) for i in idx}
    for i, reg in enumerate(regions):
        units = chosen.get(region_group[i], [])
        cut = tuple(unit_rect[u] for u in units)
        train.append(Region(reg.scene, reg.row, reg.col, reg.height, reg.width, exclude=reg.exclude + cut))
        for u in units:
            if region_counts.get((i, u)):
                r, c, h, w = unit_rect[u]
                held.append(Region(reg.scene, r, c, h, w, exclude=reg.exclude))
    held.sort(key=lambda v: (v.scene, v.row, v.col))
    return train, held


def _blocks(region: Region, size: int) -> list[Rect]:
    """List the ``size`` blocks of a region, row by row (edge blocks are cut to the region)."""
    return [
        (r, c, min(size, region.row + region.height - r), min(size, region.col + region.width - c))
        for r in range(region.row, region.row + region.height, size)
        for c in range(region.col, region.col + region.width, size)
    ]


def _block_counts(
    region: Region, scene_labels: NDArray[np.integer], size: int, k: int, ignore_index: int
) -> NDArray[np.int64]:
    """Labeled pixels per class of every block of a region, shape (blocks, k), in :func:`_blocks` order."""
    nbw = -(-region.width // size)
    nbh = -(-region.height // size)
    out = np.zeros((nbh, nbw, k), dtype=np.int64)
    col_block = np.arange(region.width) // size
    for b in range(nbh):
        r0 = region.row + b * size
        rows = np.array(
            scene_labels[r0 : min(r0 + size, region.row + region.height), region.col : region.col + region.width]
        )
        region.mask_excluded(rows, row=r0, col=region.col, fill=ignore_index)
        ok = (rows != ignore_index) & (rows >= 0) & (rows < k)
        code = col_block[None, :].repeat(rows.shape[0], axis=0)[ok] * k + rows[ok].astype(np.int64)
        out[b] = np.bincount(code, minlength=nbw * k).reshape(nbw, k)
    return out.reshape(nbh * nbw, k)
