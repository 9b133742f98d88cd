"""Polygonize one strip of a class raster into exact pixel-edge polygons ("pieces").

Coordinates are in pixel space of the whole raster (x = column, y = row, both exact
integers), so pieces of neighbouring strips meet exactly on the seam line ``y = row1``.
Besides the polygons, a strip records which columns each piece occupies in its first and
last row ("seam intervals"), which is all the stitcher needs to join pieces across seams.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np
import shapely
from numpy.typing import NDArray

from geopsp.vectorize._confidence import QualityRasters, open_quality, piece_stats, read_quality

__all__ = [
    "NODATA_VALUE",
    "Strip",
    "StripJob",
    "cache_mb",
    "polygonize_strip",
    "process_strip",
    "read_strip",
    "strip_task",
    "unpack",
]

NODATA_VALUE = -1
"""Class value of pieces that cover nodata (kept only as simplification context)."""

IntArray = NDArray[np.int64]


@dataclass
class Strip:
    """Pieces of rows ``row0:row1`` of a raster ``height`` rows tall.

    Attributes
    ----------
    geoms : ndarray of shapely.Polygon
        Pieces in pixel coordinates.
    values : ndarray of int64
        Class value of each piece (:data:`NODATA_VALUE` for nodata context pieces).
    top, bottom : ndarray of int64
        Seam intervals on ``y = row0`` and ``y = row1``: ``(n, 3)`` rows of ``(x0, x1, piece)``
        sorted by ``x0``; only pieces with a kept value appear.
    stats : ndarray of int64 or None
        ``(n, N_STATS)`` QA counts of each piece (:mod:`geopsp.vectorize._confidence`), when
        QA rasters are read.
    """

    index: int
    row0: int
    row1: int
    geoms: NDArray[np.object_]
    values: IntArray
    top: IntArray = field(repr=False)
    bottom: IntArray = field(repr=False)
    stats: IntArray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.geoms)


_EMPTY_IV = np.zeros((0, 3), dtype=np.int64)


def polygonize_strip(
    data: NDArray[Any],
    valid: NDArray[np.bool_] | None,
    *,
    index: int,
    row0: int,
    height: int,
    connectivity: int = 4,
    keep_nodata: bool = False,
    skip: tuple[int, ...] = (),
) -> Strip:
    """Polygonize ``data`` (rows ``row0 : row0 + len(data)`` of the raster).

    Parameters
    ----------
    data : ndarray, shape (rows, width)
        Integer class ids.
    valid : ndarray of bool or None
        False where the raster is nodata.
    index, row0, height : int
        Strip number, first row, and the raster's height (seams exist only inside it).
    connectivity : {4, 8}
        Pixel connectivity.
    keep_nodata : bool
        Also return nodata and ``skip`` regions as pieces (value :data:`NODATA_VALUE` or their
        class) so that simplification sees the full coverage; they get no seam intervals.
    skip : tuple of int
        Class ids left out of the output.
    """
    from rasterio.features import shapes
    from rasterio.transform import Affine

    rows = data.shape[0]
    row1 = row0 + rows
    arr, mask = _prepare(data, valid, keep_nodata=keep_nodata, skip=skip)
    # shapes() builds millions of small tuples; the cyclic garbage collector would rescan them
    # again and again (10-20 % of the time) although none of them can form a cycle. It stays
    # off until they are gone.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        parts = _shapes_to_arrays(
            shapes(arr, mask=mask, connectivity=connectivity, transform=Affine.translation(0, row0))
        )
    finally:
        if gc_was_enabled:
            gc.enable()
    if parts is None:
        empty = np.empty(0, dtype=object)
        return Strip(index, row0, row1, empty, np.zeros(0, np.int64), _EMPTY_IV, _EMPTY_IV)
    coords, ring_off, geom_off, vals = parts
    n_rings = np.diff(geom_off)
    geoms = shapely.from_ragged_array(shapely.GeometryType.POLYGON, coords, (ring_off, geom_off))
    if connectivity == 8:
        # GDAL joins diagonal pixels with self-touching rings, which are invalid polygons.
        bad = ~shapely.is_valid(geoms)
        if bad.any():
            geoms[bad] = shapely.make_valid(geoms[bad])
    ring_geom = np.repeat(np.arange(len(n_rings), dtype=np.int64), n_rings)
    kept = vals != NODATA_VALUE
    top = _seam_intervals(coords, ring_off, ring_geom, kept, row0) if row0 > 0 else _EMPTY_IV
    bottom = _seam_intervals(coords, ring_off, ring_geom, kept, row1) if row1 < height else _EMPTY_IV
    return Strip(index, row0, row1, geoms, vals, top, bottom)


def _shapes_to_arrays(
    features: Any,
) -> tuple[NDArray[np.float64], IntArray, IntArray, IntArray] | None:
    """Flatten ``(GeoJSON polygon, value)`` pairs into ragged coordinate arrays."""
    values: list[int] = []
    rings: list[Any] = []
    n_rings: list[int] = []
    for geom, value in features:
        coords = geom["coordinates"]
        rings.extend(coords)
        n_rings.append(len(coords))
        values.append(int(value))
    if not values:
        return None
    ring_len = np.fromiter(map(len, rings), dtype=np.int64, count=len(rings))
    total = int(ring_len.sum())
    flat = chain.from_iterable(chain.from_iterable(rings))
    coords = np.fromiter(flat, dtype=np.float64, count=2 * total).reshape(total, 2)
    ring_off = np.zeros(len(rings) + 1, dtype=np.int64)
    np.cumsum(ring_len, out=ring_off[1:])
    geom_off = np.zeros(len(n_rings) + 1, dtype=np.int64)
    np.cumsum(np.asarray(n_rings, dtype=np.int64), out=geom_off[1:])
    return coords, ring_off, geom_off, np.asarray(values, dtype=np.int64)


def _prepare(
    data: NDArray[Any], valid: NDArray[np.bool_] | None, *, keep_nodata: bool, skip: tuple[int, ...]
) -> tuple[NDArray[Any], NDArray[np.bool_] | None]:
    arr = data
    if arr.dtype not in (np.uint8, np.uint16, np.int16, np.int32):
        arr = arr.astype(np.int32)
    if keep_nodata:
        if valid is not None and not valid.all():
            arr = arr.astype(np.int32, copy=True)
            arr[~valid] = NODATA_VALUE
        return arr, None
    mask = valid
    if skip:
        keep = ~np.isin(arr, skip)
        mask = keep if mask is None else (mask & keep)
    if mask is not None and mask.all():
        mask = None
    return arr, mask


def _seam_intervals(
    coords: NDArray[np.float64], ring_off: IntArray, ring_geom: IntArray, kept: NDArray[np.bool_], y: int
) -> IntArray:
    """Column intervals ``[x0, x1)`` that each piece occupies along the line ``y``.

    A piece's boundary runs along the seam line exactly where the piece has pixels next to
    it, so consecutive ring vertices both on ``y`` delimit such an interval.
    """
    on = coords[:, 1] == y
    seg = on[:-1] & on[1:]
    # Pairs that straddle two rings are not segments.
    seg[ring_off[1:-1] - 1] = False
    idx = np.flatnonzero(seg)
    if idx.size == 0:
        return _EMPTY_IV
    ring = np.searchsorted(ring_off, idx, side="right") - 1
    piece = ring_geom[ring]
    xa = coords[idx, 0]
    xb = coords[idx + 1, 0]
    out = np.stack([np.minimum(xa, xb), np.maximum(xa, xb), piece], axis=1).astype(np.int64)
    out = out[kept[piece]]
    return out[np.argsort(out[:, 0], kind="stable")]


def read_strip(src: Any, row0: int, row1: int) -> tuple[NDArray[Any], NDArray[np.bool_] | None]:
    """Read rows ``row0:row1`` of band 1 and a validity mask (None when all valid)."""
    from rasterio.enums import MaskFlags
    from rasterio.windows import Window

    win = Window(0, row0, src.width, row1 - row0)
    data = src.read(1, window=win)
    flags = src.mask_flag_enums[0]
    valid: NDArray[np.bool_] | None
    if src.nodata is not None:
        valid = data != src.nodata if not np.isnan(src.nodata) else ~np.isnan(data)
    elif MaskFlags.all_valid in flags:
        valid = None
    else:
        valid = src.read_masks(1, window=win) > 0
    if data.dtype.kind == "f":
        data, valid = _float_classes(src, data, valid, row0)
    if valid is not None and valid.all():
        valid = None
    return data, valid


def _float_classes(
    src: Any, data: NDArray[Any], valid: NDArray[np.bool_] | None, row0: int
) -> tuple[NDArray[np.int32], NDArray[np.bool_]]:
    """Class ids stored as floats (label rasters often are): check they are whole numbers."""
    from geopsp.errors import InputRasterError

    ok = np.isfinite(data) if valid is None else (valid & np.isfinite(data))
    values = data[ok]
    frac = values != np.round(values)
    if frac.any():
        raise InputRasterError(
            f"{src.name}: band 1 holds non-integer values (e.g. {float(values[frac][0])!r} near row {row0}); "
            "a class raster holds whole-number class ids"
        )
    if values.size and (values.min() < -(2**31) or values.max() >= 2**31):
        raise InputRasterError(f"{src.name}: class ids beyond 32-bit integers near row {row0}")
    return np.where(ok, data, 0).astype(np.int32), ok


@dataclass(frozen=True)
class StripJob:
    """What is needed to polygonize one strip, in this process or a worker (picklable)."""

    path: str
    """The class raster as the user named it (a path, URL or ``/vsi…/`` path)."""
    index: int
    row0: int
    row1: int
    height: int
    connectivity: int
    keep_nodata: bool
    skip: tuple[int, ...]
    simplify_px: float = 0.0
    quality: QualityRasters | None = None
    """QA rasters whose values are counted under every piece (:func:`piece_stats`)."""


def process_strip(src: Any, job: StripJob, quality: tuple[Any, Any] = (None, None)) -> Strip:
    """Read, polygonize and (optionally) coverage-simplify one strip of an open dataset.

    With simplification the strip is read with one extra row above and below: the columns
    where classes change along those rows are the corners of the neighbouring strips'
    polygons on the seam lines, and inserting them keeps both sides of a seam edge-matched.
    With ``job.quality``, ``quality`` holds its open datasets (:func:`open_quality`); their
    rows of the strip are counted under the exact pieces, before any simplification.
    """
    from rasterio.errors import RasterioError

    from geopsp.io.scene import read_failure
    from geopsp.vectorize._geometry import row_breakpoints, seam_points, simplify_coverage

    halo = 1 if job.simplify_px > 0 else 0
    lo, hi = max(0, job.row0 - halo), min(job.height, job.row1 + halo)
    try:
        data, valid = read_strip(src, lo, hi)
    except RasterioError as exc:
        raise read_failure(job.path, exc, rows=(lo, hi - 1)) from exc
    core = slice(job.row0 - lo, job.row1 - lo)
    strip = polygonize_strip(
        data[core],
        None if valid is None else valid[core],
        index=job.index,
        row0=job.row0,
        height=job.height,
        connectivity=job.connectivity,
        keep_nodata=job.keep_nodata,
        skip=job.skip,
    )
    if job.quality is not None and job.quality.given:
        try:
            conf, dis = read_quality(quality, job.row0, job.row1)
        except RasterioError as exc:
            raise read_failure(job.path, exc, rows=(job.row0, job.row1 - 1)) from exc
        strip.stats = piece_stats(strip.geoms, job.row0, conf, dis)
    if job.simplify_px > 0 and len(strip):
        arr, _ = _prepare(data, valid, keep_nodata=True, skip=())
        extra = []
        if job.row0 > 0:
            extra.append(seam_points(row_breakpoints(arr[0], arr[1]), job.row0))
        if job.row1 < job.height:
            extra.append(seam_points(row_breakpoints(arr[-2], arr[-1]), job.row1))
        pts = np.concatenate(extra) if extra else None
        strip.geoms = simplify_coverage(strip.geoms, job.simplify_px, extra_points=pts)
    return strip


def cache_mb(src: Any) -> int:
    """GDAL block cache (MB) for reading strips: two rows of the file's blocks, at least 64 MB.

    Strips are read once, top to bottom, so a bigger cache would only fill with blocks that
    are never read again and make memory grow with the raster's height.
    """
    block_rows = int(src.block_shapes[0][0]) if src.block_shapes else 256
    itemsize = np.dtype(src.dtypes[0]).itemsize
    needed: int = math.ceil(2 * block_rows * int(src.width) * itemsize / 2**20)
    return max(64, needed)


@contextlib.contextmanager
def open_quietly(path: str | os.PathLike[str]) -> Iterator[Any]:
    """Open a class raster, local or remote, without rasterio's NotGeoreferencedWarning.

    This is :func:`geopsp.io.scene.open_raster`: a remote raster is opened and read in the
    GDAL environment for remote reads, in this process as in a worker (spawned workers
    inherit no GDAL configuration, so each enters it itself).
    """
    from geopsp.io.scene import open_raster

    with open_raster(path, what="class raster") as src:
        yield src


StripResult = tuple[int, int, int, bytes, IntArray, IntArray, IntArray, IntArray | None]


def strip_task(job: StripJob) -> StripResult:
    """Process one strip in a worker process; geometries travel back as WKB."""
    import rasterio

    with rasterio.Env(GDAL_NUM_THREADS="1"), open_quietly(job.path) as src:
        with rasterio.Env(GDAL_CACHEMAX=cache_mb(src)), open_quality(job.quality or QualityRasters()) as quality:
            strip = process_strip(src, job, quality)
    return (job.index, job.row0, job.row1, _pack(strip.geoms), strip.values, strip.top, strip.bottom, strip.stats)


def _pack(geoms: NDArray[np.object_]) -> bytes:
    import pickle

    return pickle.dumps(shapely.to_wkb(geoms), protocol=pickle.HIGHEST_PROTOCOL)


def unpack(result: StripResult) -> Strip:
    """Rebuild a :class:`Strip` from :func:`strip_task`'s result."""
    import pickle

    index, row0, row1, blob, values, top, bottom, stats = result
    geoms = shapely.from_wkb(pickle.loads(blob))
    return Strip(index, row0, row1, np.asarray(geoms, dtype=object), values, top, bottom, stats)
