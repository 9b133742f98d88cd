"""Join strip pieces across seams into whole connected regions, strip by strip.

A piece that occupies the last row of its strip is *open*: it may continue in the next
strip. Pieces of the next strip that share a run of seam pixels with it (same class; with
8-connectivity a diagonal touch suffices) belong to the same region, so they join its group.
A group none of whose pieces reaches the current strip's last row can grow no more: it is
*closed*, its pieces are unioned into one polygon and handed out at once. Only open groups
are kept between strips, so memory follows the width of the raster, not its height.

With QA rasters each piece carries its counts (:mod:`geopsp.vectorize._confidence`); a group
adds up those of its pieces, so a joined region's counts are those of all its pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import shapely
from numpy.typing import NDArray

from geopsp.vectorize._confidence import merge_stats
from geopsp.vectorize._geometry import drop_collinear
from geopsp.vectorize._strips import NODATA_VALUE, Strip

__all__ = ["Components", "Stitcher"]

IntArray = NDArray[np.int64]


@dataclass
class Components:
    """Closed regions: polygons (pixel coordinates), their class values and QA counts (or None)."""

    geoms: NDArray[np.object_]
    values: IntArray
    stats: IntArray | None = None

    def __len__(self) -> int:
        return len(self.geoms)

    @classmethod
    def empty(cls) -> Components:
        """Return no components."""
        return cls(np.empty(0, dtype=object), np.zeros(0, dtype=np.int64))

    @classmethod
    def concat(cls, parts: list[Components]) -> Components:
        """Concatenate several batches (all with QA counts, or none)."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        stats = None
        if parts[0].stats is not None:
            stats = np.concatenate([p.stats for p in parts if p.stats is not None])
            if len(stats) != sum(len(p) for p in parts):  # pragma: no cover - a programming error
                raise ValueError("cannot concatenate regions with and without QA counts")
        return cls(np.concatenate([p.geoms for p in parts]), np.concatenate([p.values for p in parts]), stats)


@dataclass
class _Group:
    value: int
    pieces: list[object] = field(default_factory=list)
    stats: IntArray | None = None  # QA counts of all its pieces so far


def _seam_pairs(above: IntArray, below: IntArray, connectivity: int) -> tuple[IntArray, IntArray]:
    """Return indices into ``above`` and ``below`` of interval pairs whose pixels touch across the seam."""
    if len(above) == 0 or len(below) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    # Intervals on each side are disjoint and sorted by x0 (they are pixel runs of one row).
    if connectivity == 4:
        lo = np.searchsorted(below[:, 1], above[:, 0], side="right")  # first below with x1 > a.x0
        hi = np.searchsorted(below[:, 0], above[:, 1], side="left")  # below with x0 < a.x1
    else:
        lo = np.searchsorted(below[:, 1], above[:, 0], side="left")  # x1 >= a.x0
        hi = np.searchsorted(below[:, 0], above[:, 1], side="right")  # x0 <= a.x1
    counts = np.maximum(hi - lo, 0)
    ia = np.repeat(np.arange(len(above), dtype=np.int64), counts)
    starts = np.repeat(lo - np.cumsum(counts) + counts, counts)
    ib = starts + np.arange(int(counts.sum()), dtype=np.int64)
    return ia, ib


class Stitcher:
    """Feed strips top to bottom with :meth:`add`; each call returns the regions it closed.

    Parameters
    ----------
    connectivity : {4, 8}
        Pixel connectivity, as used to polygonize the strips.
    drop_seam_vertices : bool, default True
        Remove the vertices that joining leaves on seam lines in the middle of straight edges
        (then the polygons equal the whole-raster ones vertex for vertex). Off for simplified
        pieces, whose neighbours keep those vertices: removing them on one side only would
        leave the coverage's edges unmatched.
    """

    def __init__(self, connectivity: int = 4, *, drop_seam_vertices: bool = True) -> None:
        self.connectivity = connectivity
        self.drop_seam_vertices = drop_seam_vertices
        self._groups: dict[int, _Group] = {}
        self._next_id = 0
        # Bottom seam of the previous strip: intervals (x0, x1, group id) and their values.
        self._prev: IntArray = np.zeros((0, 3), dtype=np.int64)
        self._prev_values: IntArray = np.zeros(0, dtype=np.int64)

    @property
    def open_groups(self) -> int:
        """Number of regions still open at the last seam."""
        return len(self._groups)

    @property
    def open_vertices(self) -> int:
        """Vertices held in open regions (a measure of the stitcher's memory)."""
        return int(
            sum(
                int(shapely.get_num_coordinates(np.asarray(g.pieces, dtype=object)).sum())
                for g in self._groups.values()
            )
        )

    def add(self, strip: Strip) -> Components:
        """Add the next strip; return the regions that are now closed."""
        geoms, values, stats = strip.geoms, strip.values, strip.stats
        n = len(geoms)
        kept = values != NODATA_VALUE
        top, bottom = strip.top, strip.bottom
        # --- join pieces of this strip to open groups across the top seam --------------------
        ia, ib = _seam_pairs(self._prev, top, self.connectivity)
        if len(ia):
            same = self._prev_values[ia] == values[top[ib, 2]]
            ia, ib = ia[same], ib[same]
        gid_of_piece = np.full(n, -1, dtype=np.int64)
        touched: set[int] = set()
        if len(ia):
            old = self._prev[ia, 2]
            new = top[ib, 2]
            gid_of_piece, touched = self._link(old, new, values, geoms, stats, gid_of_piece)
        # --- groups that no piece of this strip continued are closed -------------------------
        closed: list[_Group] = [self._groups.pop(gid) for gid in [g for g in self._groups if g not in touched]]
        # --- pieces reaching the bottom seam open (or keep open) their group -----------------
        at_bottom = np.zeros(n, dtype=bool)
        at_bottom[bottom[:, 2]] = True
        for p in np.flatnonzero(at_bottom & (gid_of_piece < 0)):
            gid = self._new_group(int(values[p]), [geoms[p]], None if stats is None else stats[p].copy())
            gid_of_piece[p] = gid
        still_open = set(gid_of_piece[at_bottom].tolist())
        closed.extend(self._groups.pop(gid) for gid in touched - still_open)
        self._prev = np.column_stack([bottom[:, :2], gid_of_piece[bottom[:, 2]]]) if len(bottom) else bottom
        self._prev_values = values[bottom[:, 2]]
        # --- pieces that touch no seam are whole regions already (the common case) ----------
        alone = kept & (gid_of_piece < 0)
        batch = [Components(geoms[alone], values[alone], None if stats is None else stats[alone])]
        if closed:
            batch.append(self._closed(closed))
        return Components.concat(batch)

    def finish(self) -> Components:
        """Close every group still open (after the last strip)."""
        groups = list(self._groups.values())
        self._groups.clear()
        self._prev = np.zeros((0, 3), dtype=np.int64)
        self._prev_values = np.zeros(0, dtype=np.int64)
        if not groups:
            return Components.empty()
        return self._closed(groups)

    def _union(self, pieces: list[object]) -> object:
        if len(pieces) == 1:
            return pieces[0]
        return shapely.union_all(np.asarray(pieces, dtype=object))

    def _closed(self, groups: list[_Group]) -> Components:
        arr = np.empty(len(groups), dtype=object)
        arr[:] = [self._union(g.pieces) for g in groups]
        if self.drop_seam_vertices:
            arr = drop_collinear(arr)
        stats = None
        if groups[0].stats is not None:
            stats = np.stack([g.stats for g in groups if g.stats is not None])
        return Components(arr, np.asarray([g.value for g in groups], dtype=np.int64), stats)

    def _new_group(self, value: int, pieces: list[object], stats: IntArray | None) -> int:
        gid = self._next_id
        self._next_id += 1
        self._groups[gid] = _Group(value, pieces, stats)
        return gid

    def _link(
        self,
        old: IntArray,
        new: IntArray,
        values: IntArray,
        geoms: NDArray[np.object_],
        stats: IntArray | None,
        gid_of_piece: IntArray,
    ) -> tuple[IntArray, set[int]]:
        """Union open groups ``old[i]`` with this strip's pieces ``new[i]``; return piece -> group."""
        # Union-find over group ids and pieces (pieces offset past the group ids).
        offset = self._next_id
        parent: dict[int, int] = {}

        def find(x: int) -> int:
            root = x
            while parent.get(root, root) != root:
                root = parent[root]
            while parent.get(x, x) != root:
                parent[x], x = root, parent[x]
            return root

        for g, p in zip(old.tolist(), new.tolist(), strict=True):
            a, b = find(g), find(offset + p)
            if a != b:
                # Keep a group id as the root whenever one is involved.
                if a >= offset:
                    a, b = b, a
                parent[b] = a
        members: dict[int, list[int]] = {}
        for node in parent.keys() | set(old.tolist()):
            members.setdefault(find(node), []).append(node)
        touched: set[int] = set()
        for root, nodes in members.items():
            gids = sorted(x for x in nodes if x < offset)
            pieces = sorted(x - offset for x in nodes if x >= offset)
            keep = gids[0]
            group = self._groups[keep]
            for other in gids[1:]:
                merged = self._groups.pop(other)
                group.pieces.extend(merged.pieces)
                if group.stats is not None and merged.stats is not None:
                    group.stats = merge_stats(np.stack([group.stats, merged.stats]))
            group.pieces.extend(geoms[pieces].tolist())
            if group.stats is not None and stats is not None:
                group.stats = merge_stats(np.vstack([group.stats[None], stats[pieces]]))
            gid_of_piece[pieces] = keep
            touched.add(keep)
            del root
        return gid_of_piece, touched
