"""Remove small regions by merging them into a neighbour, and fill small holes.

Works on whole, exact regions (after stitching), so the result does not depend on how the
raster was cut into strips. The rules, applied once to the regions as polygonized:

1. A region is *small* when it has fewer than ``sieve_px`` pixels or less than
   ``min_area_m2`` square metres. Nodata is never small and never absorbs anything.
2. Each small region points at the neighbour it shares the longest border with (ties: the
   larger neighbour, then the lower class id, then the top-most, left-most one). A small
   region with no neighbour but nodata stays as it is.
3. Regions linked by pointers form one cluster and take the class of the cluster's one region
   that is not small (pointers always end there, or in a loop of small regions, which takes
   the class of its largest member).
4. Clusters of the same class that touch are dissolved, as polygonizing the sieved raster
   would do.
5. A hole smaller than ``fill_holes_m2`` is filled: the enclosing polygon absorbs it and the
   polygons inside are dropped. Holes that contain nodata stay.

Nothing leaves a gap: every pixel ends up in exactly one polygon or stays nodata. The one
exception is asked for by the caller: a region marked ``drop_alone`` (low confidence) that has
no neighbour but nodata is dropped, and its pixels become nodata.

QA counts (:mod:`geopsp.vectorize._confidence`) follow the pixels: a dissolved region adds up
those of its members, a polygon that fills a hole those of the polygons it absorbs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import shapely
from numpy.typing import NDArray

from geopsp.vectorize._confidence import merge_stats, reduce_stats
from geopsp.vectorize._stitch import Components
from geopsp.vectorize._strips import NODATA_VALUE

__all__ = ["eliminate_small", "fill_small_holes"]

Geoms = NDArray[np.object_]
IntArray = NDArray[np.int64]
AreaFn = Callable[[Geoms], NDArray[np.float64]]


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = np.arange(n, dtype=np.int64)

    def find(self, x: int) -> int:
        parent = self.parent
        root = x
        while parent[root] != root:
            root = int(parent[root])
        while parent[x] != root:
            parent[x], x = root, int(parent[x])
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def roots(self) -> IntArray:
        return np.fromiter((self.find(i) for i in range(len(self.parent))), dtype=np.int64, count=len(self.parent))


def eliminate_small(
    regions: Components, small: NDArray[np.bool_], *, drop_alone: NDArray[np.bool_] | None = None
) -> Components:
    """Merge small regions into neighbours (rules 1-4 of the module docstring).

    Parameters
    ----------
    regions : Components
        Exact regions in pixel coordinates (a full coverage of the raster's valid pixels,
        with nodata regions carrying :data:`NODATA_VALUE`), their classes and QA counts.
    small : ndarray of bool
        Which regions are small (merged into a neighbour).
    drop_alone : ndarray of bool, optional
        Which small regions are dropped when they have no neighbour but nodata (instead of
        staying as they are).

    Returns
    -------
    Components
        The dissolved regions.
    """
    geoms, values = regions.geoms, regions.values
    n = len(geoms)
    nodata = values == NODATA_VALUE
    small = small & ~nodata
    cand = np.flatnonzero(small)
    if cand.size == 0:
        return regions
    npx = shapely.area(geoms)
    bounds = shapely.bounds(geoms)
    tree = shapely.STRtree(geoms)
    qi, qj = tree.query(geoms[cand], predicate="intersects")
    a = cand[qi]
    b = qj.astype(np.int64)
    keep = (a != b) & ~nodata[b]
    a, b = a[keep], b[keep]
    shared = shapely.length(shapely.intersection(shapely.boundary(geoms[a]), shapely.boundary(geoms[b])))
    touch = shared > 0
    a, b, shared = a[touch], b[touch], shared[touch]
    ptr = np.arange(n, dtype=np.int64)
    if a.size:
        order = np.lexsort((bounds[b, 0], bounds[b, 1], values[b], -npx[b], -shared, a))
        a_s, b_s = a[order], b[order]
        first = np.ones(len(a_s), dtype=bool)
        first[1:] = a_s[1:] != a_s[:-1]
        ptr[a_s[first]] = b_s[first]
    sink = _follow(ptr, cand, npx, bounds)
    new_values = values[sink]
    uf = _UnionFind(n)
    for x in cand.tolist():
        uf.union(x, int(ptr[x]))
    same = new_values[a] == new_values[b]
    for x, y in zip(a[same].tolist(), b[same].tolist(), strict=True):
        uf.union(x, y)
    roots = uf.roots()
    keep = np.ones(n, dtype=bool)
    if drop_alone is not None:
        # alone: small with no neighbour, so a cluster of its own (nothing points at it either)
        keep &= ~(drop_alone & small & (ptr == np.arange(n)))
    if not keep.all():
        regions = Components(geoms[keep], values[keep], None if regions.stats is None else regions.stats[keep])
        new_values, roots = new_values[keep], roots[keep]
    return _dissolve(regions, new_values, roots)


def _follow(ptr: IntArray, cand: IntArray, npx: NDArray[np.float64], bounds: NDArray[np.float64]) -> IntArray:
    """For every region, the region its pointer chain ends in (loops end in their largest member)."""
    sink = np.arange(len(ptr), dtype=np.int64)
    state = np.zeros(len(ptr), dtype=np.int8)  # 0 new, 1 on the current path, 2 resolved
    for start in cand.tolist():
        if state[start] == 2:
            continue
        path: list[int] = []
        x = start
        while state[x] == 0 and ptr[x] != x:
            state[x] = 1
            path.append(x)
            x = int(ptr[x])
        if state[x] == 1:  # a loop of small regions: the largest (then top-left) one wins
            loop = path[path.index(x) :]
            root = max(loop, key=lambda i: (npx[i], -bounds[i, 1], -bounds[i, 0]))
        else:
            root = int(sink[x])
        for p in path:
            sink[p] = root
            state[p] = 2
        state[root] = 2
        sink[root] = root
    return sink


def _dissolve(regions: Components, values: IntArray, roots: IntArray) -> Components:
    geoms = regions.geoms
    order = np.argsort(roots, kind="stable")
    r = roots[order]
    starts = np.flatnonzero(np.r_[True, r[1:] != r[:-1]])
    ends = np.r_[starts[1:], len(r)]
    out = np.empty(len(starts), dtype=object)
    vals = np.empty(len(starts), dtype=np.int64)
    for k, (s, e) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        members = order[s:e]
        vals[k] = values[members[0]]
        if e - s == 1:
            out[k] = geoms[members[0]]
        else:
            out[k] = shapely.simplify(shapely.union_all(geoms[members]), 0.0)
    stats = None if regions.stats is None else reduce_stats(regions.stats, order, starts)
    return Components(out, vals, stats)


def fill_small_holes(regions: Components, max_area_m2: float, area_m2: AreaFn) -> Components:
    """Fill holes smaller than ``max_area_m2`` (rule 5): the polygons inside are dropped.

    Parameters
    ----------
    regions : Components
        Exact regions (pixel coordinates) covering the raster, nodata included.
    max_area_m2 : float
        Holes with a smaller area are filled.
    area_m2 : callable
        Area in square metres of pixel-space polygons.
    """
    geoms, values = regions.geoms, regions.values
    n = len(geoms)
    n_holes = shapely.get_num_interior_rings(geoms)
    has = np.flatnonzero((n_holes > 0) & (values != NODATA_VALUE))
    if has.size == 0:
        return regions
    # Every hole as a polygon, with its owner.
    owner = np.repeat(has, n_holes[has])
    ring_no = np.concatenate([np.arange(k) for k in n_holes[has].tolist()])
    rings = shapely.get_interior_ring(geoms[owner], ring_no)
    holes = shapely.polygons(rings)
    fill = area_m2(holes) < max_area_m2
    if not fill.any():
        return regions
    owner, ring_no, holes = owner[fill], ring_no[fill], holes[fill]
    tree = shapely.STRtree(geoms)
    hi, inside = tree.query(holes, predicate="contains")
    dropped = np.zeros(n, dtype=bool)
    blocked = np.zeros(len(holes), dtype=bool)
    blocked[hi[values[inside] == NODATA_VALUE]] = True
    out = geoms.copy()
    # Largest owners first, so a hole inside a filled hole is simply dropped with it.
    areas = shapely.area(geoms)
    filled: dict[int, list[int]] = {}  # owner -> its holes that are filled
    for h in np.argsort(-areas[owner], kind="stable").tolist():
        o = int(owner[h])
        if blocked[h] or dropped[o]:
            continue
        filled.setdefault(o, []).append(h)
        dropped[inside[hi == h]] = True
    stats = None if regions.stats is None else regions.stats.copy()
    for o, hole_ids in filled.items():
        if dropped[o]:
            continue
        ring_set = {int(ring_no[h]) for h in hole_ids}
        poly = geoms[o]
        keep = [r for i, r in enumerate(poly.interiors) if i not in ring_set]
        out[o] = shapely.Polygon(poly.exterior, keep)
        if stats is not None:
            # The filled holes of owners that stay are disjoint: each absorbed polygon counts once.
            absorbed = inside[np.isin(hi, hole_ids)]
            stats[o] = merge_stats(np.vstack([stats[o][None], stats[absorbed]]))
    return Components(out[~dropped], values[~dropped], None if stats is None else stats[~dropped])
