"""The range of a scene's values on its valid pixels: from its stored statistics, or a sampled read.

Two sources, the cheap one first:

:func:`stored_statistics`
    GDAL band statistics already in the file (``STATISTICS_MINIMUM``/``MAXIMUM`` in its
    metadata or its ``.aux.xml``, as ``gdalinfo -stats`` writes them). They count only when
    exact: statistics marked ``STATISTICS_APPROXIMATE=YES`` (``gdalinfo -approx_stats``,
    computed from overviews or a subsample) can miss the extremes, and a ``.aux.xml`` older
    than the file may describe an earlier version of it; both are ignored. Nothing is decoded.
:func:`sample_values`
    A read of at most ``windows`` block-aligned windows of about ``window_px`` pixels square,
    spread evenly over the scene (corners and edges included), one at a time: memory is one
    window whatever the scene's size. A scene of no more windows than that is read whole.

Which pixels count follows :mod:`geopsp.io.scene`: only valid ones (not nodata, masked,
transparent or non-finite). A :class:`ValueRange` says whether its extremes bound every valid
value (``bound``) and whether they occur on valid pixels (``attained``): exact statistics of a
scene without a mask do both; statistics of a scene with a mask band may include masked
pixels (bound only); a sample finds values that occur, not the extremes (attained only).

.. versionadded:: 0.2
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from geopsp.io.scene import SceneInfo, open_scene, read_rows

__all__ = ["ValueRange", "sample_values", "stored_statistics"]

ValueSource = Literal["statistics", "sample", "every pixel"]

SAMPLE_WINDOWS = 64
"""Windows a sampled read takes at most."""

SAMPLE_WINDOW_PX = 512
"""Edge of a sampled window in pixels (rounded to whole blocks where blocks are smaller)."""


@dataclass(frozen=True, slots=True)
class ValueRange:
    """The smallest and largest value seen over some bands' valid pixels.

    Attributes
    ----------
    low, high : float or None
        The extremes over every band; ``None`` when no valid pixel was seen.
    source : {"statistics", "sample", "every pixel"}
        Where they come from.
    bound : bool
        Every valid value lies within ``[low, high]`` or in ``also``.
    attained : bool
        ``low`` and ``high`` occur on valid pixels.
    also : tuple of float
        Values valid pixels may hold outside ``[low, high]``: with the ``"nodata"`` mask, a
        pixel is valid unless *every* band is nodata, but GDAL's statistics leave out each
        band's nodata value.
    whole : bool or None
        Every value seen is a whole number (``None``: not known, from statistics).
    fraction : float
        Share of the scene's pixels read (0 from statistics).
    windows : int
        Windows read (0 from statistics).
    example : float or None
        A value seen that is not a whole number, if any.
    """

    low: float | None
    high: float | None
    source: ValueSource
    bound: bool
    attained: bool
    also: tuple[float, ...] = ()
    whole: bool | None = None
    fraction: float = 0.0
    windows: int = 0
    example: float | None = None

    @property
    def described(self) -> str:
        """Where the range comes from, for messages.

        Examples
        --------
        >>> ValueRange(0.0, 9.0, "sample", False, True, windows=64, fraction=0.031).described
        'from a sampled read of 64 windows, 3.1 % of the pixels'
        """
        if self.source == "statistics":
            return "from the file's statistics"
        if self.source == "every pixel":
            return "from a read of every pixel"
        return f"from a sampled read of {self.windows} windows, {100 * self.fraction:.2g} % of the pixels"


def _statistics_are_fresh(path: Path) -> bool:
    """Return False when a ``.aux.xml`` sidecar is older than the file it describes."""
    aux = path.with_name(path.name + ".aux.xml")
    try:
        return not aux.is_file() or aux.stat().st_mtime_ns >= path.stat().st_mtime_ns
    except OSError:
        return False


def stored_statistics(info: SceneInfo, bands: Sequence[int]) -> ValueRange | None:
    """Return the range of some bands from exact statistics stored with the scene, or ``None``.

    ``None`` when any band lacks them, they are approximate, they count no valid pixel, or
    a ``.aux.xml`` holding them may be stale (older than the file). Decodes no pixel.

    Parameters
    ----------
    info : SceneInfo
    bands : sequence of int
        1-based bands.
    """
    if info.source.local is not None and not _statistics_are_fresh(info.source.local):
        return None  # (remote scenes: no sidecars are probed, only statistics in the file count)
    lows: list[float] = []
    highs: list[float] = []
    also: list[float] = []
    with open_scene(info, threads=1) as (src, _):
        for b in bands:
            tags = src.tags(int(b))
            if str(tags.get("STATISTICS_APPROXIMATE", "NO")).upper() in ("YES", "TRUE", "1"):
                return None
            try:
                lo, hi = float(tags["STATISTICS_MINIMUM"]), float(tags["STATISTICS_MAXIMUM"])
                percent = float(tags.get("STATISTICS_VALID_PERCENT", 100.0))
            except (KeyError, ValueError):
                return None
            if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi or percent <= 0:
                return None
            lows.append(lo)
            highs.append(hi)
            nodata = src.nodatavals[int(b) - 1]
            if info.mask_source == "nodata" and nodata is not None and math.isfinite(nodata):
                also.append(float(nodata))
    # statistics count every pixel GDAL does not call nodata; a mask or alpha band may hide some
    attained = info.mask_source in ("none", "nodata")
    return ValueRange(min(lows), max(highs), "statistics", bound=True, attained=attained, also=tuple(also))


def _window_grid(info: SceneInfo, window_px: int) -> tuple[int, int, int, int]:
    """Window rows and columns (block-aligned where blocks are smaller) and the count of each."""
    br, bc = info.block_shape
    rows = br * max(1, window_px // br) if br <= window_px else window_px
    cols = bc * max(1, window_px // bc) if bc <= window_px else window_px
    rows, cols = min(rows, info.height), min(cols, info.width)
    return rows, cols, -(-info.height // rows), -(-info.width // cols)


def _spread(n: int, k: int) -> list[int]:
    """``k`` indices of ``range(n)`` spread evenly, first and last included."""
    if k >= n:
        return list(range(n))
    return sorted({round(i * (n - 1) / max(1, k - 1)) for i in range(k)})


_CACHE: OrderedDict[tuple[object, ...], ValueRange] = OrderedDict()
_CACHE_LOCK = threading.Lock()


def sample_values(
    info: SceneInfo,
    bands: Sequence[int],
    *,
    windows: int | None = None,
    window_px: int | None = None,
) -> ValueRange:
    """Return the range of some bands over a bounded read spread evenly over the scene.

    The same file (path, size and modification time) and bands are read once per process:
    the dry check of the command line and the run after it share one read.

    Parameters
    ----------
    info : SceneInfo
    bands : sequence of int
        1-based bands.
    windows : int, optional
        Windows read at most (default :data:`SAMPLE_WINDOWS`); a scene of no more windows is
        read whole (``source`` then ``"every pixel"``).
    window_px : int, optional
        Edge of a window (default :data:`SAMPLE_WINDOW_PX`); rounded down to whole blocks
        where blocks are smaller.

    Raises
    ------
    InputRasterError
        If pixels fail to decode.
    """
    idx = tuple(int(b) for b in bands)
    windows = SAMPLE_WINDOWS if windows is None else max(1, int(windows))
    window_px = SAMPLE_WINDOW_PX if window_px is None else max(1, int(window_px))
    key: tuple[object, ...] | None
    if info.source.local is None:  # a remote or virtual scene: the same document, the same pixels
        key = (info.source.gdal_path, idx, windows, window_px)
    else:
        try:
            st = os.stat(info.source.local)
            local = str(info.source.local.resolve())
            key = (local, st.st_size, st.st_mtime_ns, idx, windows, window_px)
        except OSError:
            key = None
    if key is not None:
        with _CACHE_LOCK:
            hit = _CACHE.get(key)
        if hit is not None:
            return hit
    result = _sample(info, idx, windows, window_px)
    if key is not None:
        with _CACHE_LOCK:
            _CACHE[key] = result
            while len(_CACHE) > 32:
                _CACHE.popitem(last=False)
    return result


def _sample(info: SceneInfo, bands: tuple[int, ...], windows: int, window_px: int) -> ValueRange:
    rows, cols, ny, nx = _window_grid(info, window_px)
    if ny * nx <= windows:
        picks = [(i, j) for i in range(ny) for j in range(nx)]
        source: ValueSource = "every pixel"
    else:
        ky = max(1, min(ny, round(math.sqrt(windows * ny / nx))))
        kx = max(1, min(nx, windows // ky))
        picks = [(i, j) for i in _spread(ny, ky) for j in _spread(nx, kx)]
        source = "sample"
    low = high = example = None
    whole = True
    pixels = 0
    floating = np.dtype(info.dtype).kind == "f"
    with open_scene(info) as (src, _):
        for i, j in picks:
            r0, c0 = i * rows, j * cols
            h, w = min(rows, info.height - r0), min(cols, info.width - c0)
            data, valid = read_rows(src, info, r0, h, bands, c0, w)
            pixels += h * w
            if not valid.any():
                continue
            values = data.reshape(len(bands), -1) if valid.all() else data[:, valid]
            lo, hi = float(values.min()), float(values.max())
            low = lo if low is None else min(low, lo)
            high = hi if high is None else max(high, hi)
            if floating and whole:
                fractional = values != np.floor(values)
                if fractional.any():
                    whole = False
                    example = float(values[fractional][0])
    every = source == "every pixel"
    return ValueRange(
        low,
        high,
        source,
        bound=every,
        attained=True,
        whole=whole,
        fraction=pixels / (info.width * info.height),
        windows=len(picks),
        example=example,
    )
