"""Train/validation split: which regions of which scenes train, and which validate.

The split is by scene (patterns), by date (regex), by a seeded fraction of whole scenes, or a
spatial stripe of every scene; never random pixels of one scene.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from geopsp.config.schema import SplitConfig
from geopsp.errors import ConfigError
from geopsp.train.layouts import Scene

__all__ = ["Region", "split_scenes"]


@dataclass(frozen=True, slots=True)
class Region:
    """A rectangle of a scene used for training or validation (the whole scene, or a stripe)."""

    scene: int
    row: int
    col: int
    height: int
    width: int


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
