"""Geometry helpers for pixel-edge polygons: noding, coverage simplification, seam points.

GDAL's polygonizer drops every vertex that lies on a straight edge, including the points
where a third polygon touches that edge (T-junctions). A coverage in that state is not
"edge-matched", and GEOS's coverage simplifier needs matched edges to keep neighbours
sharing them. :func:`node_grid_polygons` inserts exactly the missing vertices; all edges are
axis-parallel with integer coordinates, so this is a sorted search, not a general overlay.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import shapely
from numpy.typing import NDArray

__all__ = ["drop_collinear", "node_grid_polygons", "row_breakpoints", "simplify_coverage"]


def row_breakpoints(*rows: NDArray[Any]) -> NDArray[np.int64]:
    """Columns where the value changes along any of ``rows`` (plus 0 and the width).

    These are the x coordinates of every polygon corner that can lie on the line between
    two raster rows, so inserting them into edges on that line nodes both sides of a seam.
    """
    width = rows[0].shape[-1]
    cols = [np.array([0, width], dtype=np.int64)]
    for row in rows:
        cols.append(np.flatnonzero(row[1:] != row[:-1]).astype(np.int64) + 1)
    return _sorted_unique(np.concatenate(cols))


def node_grid_polygons(
    geoms: NDArray[np.object_], extra_points: NDArray[np.float64] | None = None
) -> NDArray[np.object_]:
    """Insert into every axis-parallel edge the polygon vertices (and extra points) lying on it.

    Parameters
    ----------
    geoms : ndarray of Polygon or MultiPolygon
        Pixel-edge polygons with integer, non-negative coordinates.
    extra_points : ndarray, shape (n, 2), optional
        More points to insert where they fall on an edge (e.g. corners of polygons beyond a
        seam).

    Returns
    -------
    ndarray of geometries
        The same polygons with matched vertices (Polygon stays Polygon).
    """
    if len(geoms) == 0:
        return geoms
    gtype, coords, offsets = shapely.to_ragged_array(geoms)
    ring_off = offsets[0]
    n = len(coords)
    pts = coords if extra_points is None or len(extra_points) == 0 else np.concatenate([coords, extra_points])
    ipts = pts.astype(np.int64)
    icoords = ipts[:n]
    k = int(ipts.max()) + 2
    # Sorted unique keys of all points, by (y, x) for horizontal and (x, y) for vertical edges.
    kh = _sorted_unique(ipts[:, 1] * k + ipts[:, 0])
    kv = _sorted_unique(ipts[:, 0] * k + ipts[:, 1])
    a, b = icoords[:-1], icoords[1:]
    edge = np.ones(n - 1, dtype=bool)
    edge[ring_off[1:-1] - 1] = False  # pairs across two rings are not edges
    horiz = edge & (a[:, 1] == b[:, 1]) & (a[:, 0] != b[:, 0])
    vert = edge & (a[:, 0] == b[:, 0]) & (a[:, 1] != b[:, 1])
    lo = np.zeros(n - 1, dtype=np.int64)
    hi = np.zeros(n - 1, dtype=np.int64)
    hmin = np.minimum(a[:, 0], b[:, 0]) + a[:, 1] * k
    hmax = np.maximum(a[:, 0], b[:, 0]) + a[:, 1] * k
    vmin = np.minimum(a[:, 1], b[:, 1]) + a[:, 0] * k
    vmax = np.maximum(a[:, 1], b[:, 1]) + a[:, 0] * k
    lo[horiz] = np.searchsorted(kh, hmin[horiz], side="right")
    hi[horiz] = np.searchsorted(kh, hmax[horiz], side="left")
    lo[vert] = np.searchsorted(kv, vmin[vert], side="right")
    hi[vert] = np.searchsorted(kv, vmax[vert], side="left")
    cnt = np.maximum(hi - lo, 0)
    total = int(cnt.sum())
    if total == 0:
        return geoms
    # Vertex i moves to i + (insertions before it); edge i's insertions follow vertex i.
    shift = np.zeros(n, dtype=np.int64)
    np.cumsum(cnt, out=shift[1:])
    newpos = np.arange(n, dtype=np.int64) + shift
    out = np.empty((n + total, 2), dtype=np.float64)
    out[newpos] = coords
    e = np.repeat(np.arange(n - 1, dtype=np.int64), cnt)
    rank = np.arange(total, dtype=np.int64) - np.repeat(shift[:-1], cnt)
    forward = np.where(horiz[e], a[e, 0] < b[e, 0], a[e, 1] < b[e, 1])
    pick = np.where(forward, lo[e] + rank, hi[e] - 1 - rank)
    key = np.where(horiz[e], kh[np.minimum(pick, len(kh) - 1)], kv[np.minimum(pick, len(kv) - 1)])
    other = key // k
    along = key % k
    ins = np.where(horiz[e][:, None], np.column_stack([along, other]), np.column_stack([other, along]))
    out[newpos[e] + 1 + rank] = ins
    new_ring_off = np.append(newpos[ring_off[:-1]], n + total)
    new_offsets = (new_ring_off, *offsets[1:])
    noded = shapely.from_ragged_array(gtype, out, new_offsets)
    if gtype == shapely.GeometryType.MULTIPOLYGON:
        single = shapely.get_num_geometries(noded) == 1
        noded[single] = shapely.get_geometry(noded[single], 0)
    return np.asarray(noded, dtype=object)


def drop_collinear(geoms: NDArray[np.object_]) -> NDArray[np.object_]:
    """Remove vertices in the middle of straight axis-parallel edges, all polygons at once.

    Joining pieces across a seam leaves a vertex where a vertical edge crosses the seam line;
    this drops it (the ring's first vertex is always kept). Equivalent to
    ``shapely.simplify(g, 0)`` for pixel-edge polygons, but vectorized over the batch.
    """
    if len(geoms) == 0:
        return geoms
    gtype, coords, offsets = shapely.to_ragged_array(geoms)
    ring_off = offsets[0]
    n = len(coords)
    coords = _start_rings_at_corners(coords, ring_off)
    prev = np.empty_like(coords)
    nxt = np.empty_like(coords)
    prev[1:] = coords[:-1]
    nxt[:-1] = coords[1:]
    # A ring's first and last vertex (the same point) are never dropped.
    first = ring_off[:-1]
    last = ring_off[1:] - 1
    drop = _collinear(prev, coords, nxt)
    drop[first] = False
    drop[last] = False
    if not drop.any():
        return geoms
    keep = ~drop
    kept_before = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(keep, out=kept_before[1:])
    new_offsets = (kept_before[ring_off], *offsets[1:])
    out = shapely.from_ragged_array(gtype, coords[keep], new_offsets)
    if gtype == shapely.GeometryType.MULTIPOLYGON:
        single = shapely.get_num_geometries(out) == 1
        out[single] = shapely.get_geometry(out[single], 0)
    return np.asarray(out, dtype=object)


def _collinear(prev: NDArray[np.float64], cur: NDArray[np.float64], nxt: NDArray[np.float64]) -> NDArray[np.bool_]:
    same_x = (prev[:, 0] == cur[:, 0]) & (cur[:, 0] == nxt[:, 0])
    same_y = (prev[:, 1] == cur[:, 1]) & (cur[:, 1] == nxt[:, 1])
    out: NDArray[np.bool_] = same_x | same_y
    return out


def _start_rings_at_corners(coords: NDArray[np.float64], ring_off: NDArray[np.int64]) -> NDArray[np.float64]:
    """Rotate the (few) rings whose first vertex lies inside a straight edge to start at a corner."""
    first = ring_off[:-1]
    last = ring_off[1:] - 1  # the closing copy of the first vertex
    bad = np.flatnonzero(_collinear(coords[last - 1], coords[first], coords[first + 1]))
    if bad.size == 0:
        return coords
    coords = coords.copy()
    for r in bad.tolist():
        a, b = int(first[r]), int(last[r])
        ring = coords[a:b]
        corner = ~_collinear(np.roll(ring, 1, axis=0), ring, np.roll(ring, -1, axis=0))
        if not corner.any():  # pragma: no cover - a ring always has corners
            continue
        ring = np.roll(ring, -int(np.argmax(corner)), axis=0)
        coords[a:b] = ring
        coords[b] = ring[0]
    return coords


def _sorted_unique(keys: NDArray[np.int64]) -> NDArray[np.int64]:
    s = np.sort(keys)
    if len(s) == 0:
        return s
    keep = np.empty(len(s), dtype=bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]


def simplify_coverage(
    geoms: NDArray[np.object_], tolerance: float, *, extra_points: NDArray[np.float64] | None = None
) -> NDArray[np.object_]:
    """Simplify pixel-edge polygons as a coverage, keeping its outer boundary as it is.

    Shared edges are simplified once for both neighbours (GEOS coverage simplification,
    Visvalingam-Whyatt), so no gaps or overlaps open; the outer boundary (seams between
    strips, the raster's edge) is frozen so that separately simplified strips still fit.
    """
    if len(geoms) == 0 or tolerance <= 0:
        return geoms
    noded = node_grid_polygons(geoms, extra_points)
    out = shapely.coverage_simplify(noded, tolerance, simplify_boundary=False)
    return np.asarray(out, dtype=object)


def seam_points(cols: NDArray[np.int64], y: int) -> NDArray[np.float64]:
    """Points ``(x, y)`` for each column in ``cols``."""
    return np.column_stack([cols.astype(np.float64), np.full(len(cols), float(y))])


def as_object_array(values: Any) -> NDArray[np.object_]:
    """Return a 1-D object array of geometries."""
    arr = np.empty(len(values), dtype=object)
    arr[:] = list(values)
    return arr
