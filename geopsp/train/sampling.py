"""Random training windows that favour labeled pixels.

Sparse labels (a quarter of a scene, say) make uniformly drawn windows mostly empty. The
labeled fraction of every region is measured once on a coarse grid of ``grid`` x ``grid`` pixel
cells; candidate windows start at cell corners and are drawn with probability proportional to
``fraction ** power`` (plus a ``uniform`` share), then shifted by a random sub-cell offset.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from geopsp.errors import ConfigError
from geopsp.train.reader import SceneReader
from geopsp.train.split import Region

__all__ = ["Draw", "WindowSampler", "cell_fractions", "read_region_window"]


@dataclass(frozen=True, slots=True)
class Draw:
    """One window to read: a region, the window's top-left pixel in scene coordinates, its edge."""

    region: int
    row: int
    col: int
    size: int


def cell_fractions(labels: NDArray[np.integer], grid: int, ignore_index: int) -> NDArray[np.float64]:
    """Labeled fraction of each ``grid`` x ``grid`` cell (partial edge cells count their real pixels).

    Examples
    --------
    >>> lab = np.full((4, 4), 255); lab[:2, :2] = 1
    >>> cell_fractions(lab, 2, 255).tolist()
    [[1.0, 0.0], [0.0, 0.0]]
    """
    h, w = labels.shape
    gh, gw = math.ceil(h / grid), math.ceil(w / grid)
    labeled = np.zeros((gh * grid, gw * grid), dtype=np.float64)
    area = np.zeros_like(labeled)
    labeled[:h, :w] = labels != ignore_index
    area[:h, :w] = 1.0
    lab_c = labeled.reshape(gh, grid, gw, grid).sum(axis=(1, 3))
    area_c = area.reshape(gh, grid, gw, grid).sum(axis=(1, 3))
    out: NDArray[np.float64] = lab_c / np.maximum(area_c, 1.0)
    return out


def _window_fractions(cells: NDArray[np.float64], span: int) -> NDArray[np.float64]:
    """Mean cell fraction of every ``span`` x ``span`` block of cells (clipped at the edges)."""
    gh, gw = cells.shape
    sh, sw = min(span, gh), min(span, gw)
    integral = np.zeros((gh + 1, gw + 1))
    integral[1:, 1:] = cells.cumsum(0).cumsum(1)
    ni, nj = gh - sh + 1, gw - sw + 1
    total = (
        integral[sh : sh + ni, sw : sw + nj]
        - integral[:ni, sw : sw + nj]
        - integral[sh : sh + ni, :nj]
        + integral[:ni, :nj]
    )
    out: NDArray[np.float64] = total / float(sh * sw)
    return out


class WindowSampler:
    """Draw windows from regions in proportion to their labeled fraction.

    Parameters
    ----------
    readers : sequence of SceneReader
        Scene readers, indexed by ``Region.scene``.
    regions : sequence of Region
        Where windows may lie.
    window : int
        Window edge in pixels.
    grid : int
        Coarse cell size in pixels.
    min_labeled : float
        Windows with a smaller labeled fraction are not drawn (unless no window reaches it).
    power : float
        Weight is ``fraction ** power`` (0 gives all eligible windows the same weight).
    uniform : float
        Share of draws made uniformly among eligible windows.
    rare : float
        Share of draws aimed at one class, every class with training pixels equally often, the
        window drawn in proportion to that class's share of it: rare classes (roads, bare soil)
        are seen as often as common ones, in the manner of the rare-class sampling of Hoyer et
        al. (DAFormer, CVPR 2022) with a uniform class prior.

    Raises
    ------
    ConfigError
        If the regions hold no labeled pixel at all.
    """

    def __init__(
        self,
        readers: Sequence[SceneReader],
        regions: Sequence[Region],
        *,
        window: int,
        grid: int = 32,
        min_labeled: float = 0.02,
        power: float = 1.0,
        uniform: float = 0.1,
        rare: float = 0.0,
    ) -> None:
        self.readers = readers
        self.regions = list(regions)
        self.window = window
        self.grid = grid
        span = max(1, math.ceil(window / grid))
        reg_idx, cell_i, cell_j, fracs, class_fracs = [], [], [], [], []
        labeled_px, total_px = 0, 0
        for k, reg in enumerate(self.regions):
            reader = readers[reg.scene]
            labels = reg.crop_labels(reader.labels(), fill=reader.mapping.ignore_index)
            labeled_px += int(np.count_nonzero(labels != reader.mapping.ignore_index))
            total_px += labels.size
            cells = cell_fractions(labels, grid, reader.mapping.ignore_index)
            wf = _window_fractions(cells, span)
            ii, jj = np.meshgrid(np.arange(wf.shape[0]), np.arange(wf.shape[1]), indexing="ij")
            reg_idx.append(np.full(wf.size, k))
            cell_i.append(ii.ravel())
            cell_j.append(jj.ravel())
            fracs.append(wf.ravel())
            if rare > 0:
                k_classes = len(reader.mapping.classes)
                per_class = [
                    _window_fractions(cell_fractions(np.where(labels == c, c, -1), grid, -1), span).ravel()
                    for c in range(k_classes)
                ]
                class_fracs.append(np.stack(per_class))
        self._region = np.concatenate(reg_idx)
        self._i = np.concatenate(cell_i)
        self._j = np.concatenate(cell_j)
        frac = np.concatenate(fracs)
        self.labeled_fraction = labeled_px / max(total_px, 1)
        """Share of labeled pixels in the regions."""
        eligible = frac >= max(min_labeled, 1e-12)
        if not eligible.any():
            eligible = frac > 0
        if not eligible.any():
            raise ConfigError("the training regions contain no labeled pixel; check the labels, classes and split")
        weights = np.where(eligible, frac**power if power > 0 else 1.0, 0.0)
        p = weights / weights.sum()
        q = eligible / eligible.sum()
        self._p = (1.0 - uniform) * p + uniform * q
        if rare > 0:
            # rare-class sampling: each class with training pixels is aimed at equally often, with a
            # window drawn in proportion to that class's share of it
            cf = np.concatenate(class_fracs, axis=1) * eligible
            totals = cf.sum(axis=1)
            present = totals > 0
            per_class = (cf[present] / totals[present, None]).mean(axis=0)
            self._p = (1.0 - rare) * self._p + rare * per_class
        self._p /= self._p.sum()

    def __len__(self) -> int:
        return int(np.count_nonzero(self._p))

    def sample(self, n: int, rng: np.random.Generator, *, sizes: Sequence[int] | None = None) -> list[Draw]:
        """Draw ``n`` windows.

        Parameters
        ----------
        n : int
            How many.
        rng : numpy.random.Generator
            Source of randomness (seeded by the caller for determinism).
        sizes : sequence of int, optional
            Edge of each window (scale jitter reads larger or smaller windows); default ``window``.
        """
        picks = rng.choice(self._p.size, size=n, p=self._p)
        offsets = rng.integers(0, self.grid, size=(n, 2))
        out = []
        for t, idx in enumerate(picks.tolist()):
            size = self.window if sizes is None else int(sizes[t])
            reg = self.regions[int(self._region[idx])]
            row = reg.row + _place(int(self._i[idx]) * self.grid + int(offsets[t, 0]), size, reg.height)
            col = reg.col + _place(int(self._j[idx]) * self.grid + int(offsets[t, 1]), size, reg.width)
            out.append(Draw(int(self._region[idx]), row, col, size))
        return out


def _place(offset: int, size: int, extent: int) -> int:
    """Clip a window start so the window stays inside ``extent`` (centred when it cannot fit)."""
    if size >= extent:
        return -((size - extent) // 2)
    return min(max(offset, 0), extent - size)


def read_region_window(
    reader: SceneReader, region: Region, row: int, col: int, size: int
) -> tuple[NDArray[np.float32], NDArray[np.integer]]:
    """Read a window, blanking whatever lies outside ``region`` (NaN image, ignored labels).

    Blanking keeps a spatial hold-out honest: a training window never sees validation pixels.
    The labels under the region's ``exclude`` rectangles (validation blocks) are ignored too;
    the image there is kept, as context.
    """
    image, labels = reader.read(row, col, size, size)
    region.mask_excluded(labels, row=row, col=col, fill=reader.mapping.ignore_index)
    r0, c0 = region.row - row, region.col - col
    r1, c1 = r0 + region.height, c0 + region.width
    if r0 > 0 or c0 > 0 or r1 < size or c1 < size:
        inside = np.zeros((size, size), dtype=bool)
        inside[max(r0, 0) : max(min(r1, size), 0), max(c0, 0) : max(min(c1, size), 0)] = True
        image[:, ~inside] = np.nan
        labels[~inside] = reader.mapping.ignore_index
    return image, labels
