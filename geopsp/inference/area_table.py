"""The class areas table: one row per class (pixels, square metres, share, polygons), its sum and its CSV.

:class:`ClassAreas` is what :func:`geopsp.inference.areas.class_areas` measures on a class
raster, what a run summary holds under ``class_areas`` (:meth:`ClassAreas.to_dict`) and what
``<stem>_class_areas.csv`` lists (:func:`write_class_areas_csv`, :data:`CSV_COLUMNS`);
:func:`sum_class_areas` adds the tables of many scenes (the batch's ``class_areas.csv``).
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from geopsp.errors import OutputError

__all__ = ["CSV_COLUMNS", "AreaMethod", "ClassArea", "ClassAreas", "sum_class_areas", "write_class_areas_csv"]

logger = logging.getLogger(__name__)

AreaMethod = Literal["planar", "geodesic", "none", "mixed"]
"""How square metres were found (``"mixed"``: a sum over scenes measured both ways)."""

CSV_COLUMNS = ("class_id", "class_name", "pixels", "area_m2", "percent", "polygon_count")
"""The columns of a class areas CSV, in order."""


@dataclass(frozen=True, slots=True)
class ClassArea:
    """One class's row of the table.

    Attributes
    ----------
    id : int
        The class id (its value in the class raster).
    name : str
    pixels : int
        Its pixels.
    area_m2 : float or None
        Its area in square metres; None without a CRS.
    percent : float or None
        Its share of the valid area, 0-100; None when the raster has no valid pixel.
    polygon_count : int or None
        Its polygons in the vector output; None when no polygons were written.
    """

    id: int
    name: str
    pixels: int
    area_m2: float | None
    percent: float | None
    polygon_count: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, keyed by :data:`CSV_COLUMNS`."""
        return {
            "class_id": self.id,
            "class_name": self.name,
            "pixels": self.pixels,
            "area_m2": self.area_m2,
            "percent": self.percent,
            "polygon_count": self.polygon_count,
        }


@dataclass(frozen=True, slots=True)
class ClassAreas:
    """The class areas table of one class raster (or the sum of many).

    Attributes
    ----------
    rows : tuple of ClassArea
        One per class: the class table's order, then ids found that it lacks.
    method : {"planar", "geodesic", "none", "mixed"}
        How pixels became square metres (module docstring).
    nodata_pixels : int
        Pixels that are nodata (in no row).
    scenes : int
        How many class rasters were added up (1 for one raster).
    """

    rows: tuple[ClassArea, ...]
    method: AreaMethod
    nodata_pixels: int = 0
    scenes: int = 1

    @property
    def pixels(self) -> int:
        """Valid pixels, all classes together."""
        return sum(r.pixels for r in self.rows)

    @property
    def area_m2(self) -> float | None:
        """Valid area in square metres; None without a CRS."""
        if self.method == "none":
            return None
        return math.fsum(r.area_m2 or 0.0 for r in self.rows)

    @property
    def polygon_count(self) -> int | None:
        """Polygons, all classes together; None when no polygons were counted."""
        if any(r.polygon_count is None for r in self.rows):
            return None
        return sum(r.polygon_count or 0 for r in self.rows)

    def totals(self) -> dict[str, Any]:
        """Return the totals: ``pixels``, ``area_m2``, ``percent`` (100 or None), ``polygon_count``, nodata pixels."""
        return {
            "pixels": self.pixels,
            "area_m2": self.area_m2,
            "percent": 100.0 if self.pixels else None,
            "polygon_count": self.polygon_count,
            "nodata_pixels": self.nodata_pixels,
        }

    def with_polygon_counts(self, counts: Mapping[int, int] | None) -> ClassAreas:
        """Return the table with these polygon counts by class id (a class not in them: 0; None: no polygons)."""
        rows = tuple(replace(r, polygon_count=None if counts is None else int(counts.get(r.id, 0))) for r in self.rows)
        unknown = sorted(set(counts or {}) - {r.id for r in self.rows})
        if unknown:
            logger.warning("polygons of class ids %s that the class raster does not hold are left out", unknown)
        return replace(self, rows=rows)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``method``, ``scenes``, ``rows`` (:meth:`ClassArea.to_dict`) and ``totals``.

        Examples
        --------
        >>> t = ClassAreas((ClassArea(1, "water", 4, 400.0, 100.0),), "planar")
        >>> t.to_dict()["totals"]
        {'pixels': 4, 'area_m2': 400.0, 'percent': 100.0, 'polygon_count': None, 'nodata_pixels': 0}
        >>> ClassAreas.from_dict(t.to_dict()) == t
        True
        """
        return {
            "method": self.method,
            "scenes": self.scenes,
            "rows": [r.to_dict() for r in self.rows],
            "totals": self.totals(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "class areas") -> ClassAreas:
        """Read back a :meth:`to_dict` (a run summary's ``class_areas``).

        Raises
        ------
        OutputError
            Naming ``source`` when the table is malformed.
        """
        try:
            rows = tuple(
                ClassArea(
                    id=int(r["class_id"]),
                    name=str(r["class_name"]),
                    pixels=int(r["pixels"]),
                    area_m2=None if r.get("area_m2") is None else float(r["area_m2"]),
                    percent=None if r.get("percent") is None else float(r["percent"]),
                    polygon_count=None if r.get("polygon_count") is None else int(r["polygon_count"]),
                )
                for r in data["rows"]
            )
            method = str(data["method"])
            if method not in ("planar", "geodesic", "none", "mixed"):
                raise ValueError(f"unknown method {method!r}")
            totals = data.get("totals") or {}
            return cls(
                rows,
                method,  # type: ignore[arg-type]
                nodata_pixels=int(totals.get("nodata_pixels", 0)),
                scenes=int(data.get("scenes", 1)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise OutputError(f"{source}: not a class areas table ({exc}); rerun the scene") from exc


def sum_class_areas(tables: Iterable[ClassAreas]) -> ClassAreas | None:
    """Add up the tables of many class rasters, class by class (by id); shares are computed anew.

    ``area_m2`` is summed where every table has square metres (else None, shares of pixels),
    ``polygon_count`` where every table counted polygons. None when ``tables`` is empty.

    Examples
    --------
    >>> a = ClassAreas((ClassArea(1, "water", 3, 300.0, 75.0), ClassArea(2, "forest", 1, 100.0, 25.0)), "planar")
    >>> b = ClassAreas((ClassArea(1, "water", 4, 400.0, 100.0),), "planar", nodata_pixels=2)
    >>> s = sum_class_areas([a, b])
    >>> [(r.name, r.pixels, r.area_m2, r.percent) for r in s.rows], s.nodata_pixels, s.scenes
    ([('water', 7, 700.0, 87.5), ('forest', 1, 100.0, 12.5)], 2, 2)
    """
    items = list(tables)
    if not items:
        return None
    methods = {t.method for t in items}
    method: AreaMethod = methods.pop() if len(methods) == 1 else "none" if "none" in methods else "mixed"
    measured = method != "none"
    counted = all(r.polygon_count is not None for t in items for r in t.rows)
    names: dict[int, str] = {}
    pixels: dict[int, int] = {}
    areas: dict[int, float] = {}
    polygons: dict[int, int] = {}
    for t in items:
        for r in t.rows:
            names.setdefault(r.id, r.name)
            pixels[r.id] = pixels.get(r.id, 0) + r.pixels
            areas[r.id] = areas.get(r.id, 0.0) + (r.area_m2 or 0.0)
            polygons[r.id] = polygons.get(r.id, 0) + (r.polygon_count or 0)
    total = math.fsum(areas.values()) if measured else float(sum(pixels.values()))
    rows = tuple(
        ClassArea(
            cid,
            name,
            pixels[cid],
            areas[cid] if measured else None,
            (areas[cid] if measured else pixels[cid]) / total * 100.0 if total > 0 else None,
            polygons[cid] if counted else None,
        )
        for cid, name in names.items()
    )
    return ClassAreas(
        rows, method, nodata_pixels=sum(t.nodata_pixels for t in items), scenes=sum(t.scenes for t in items)
    )


def write_class_areas_csv(
    table: ClassAreas, path: str | os.PathLike[str], *, final: str | os.PathLike[str] | None = None
) -> Path:
    """Write ``table`` as CSV (:data:`CSV_COLUMNS`, one line per class) into ``path``.

    Empty cells stand for None (no square metres without a CRS, no polygons). ``path`` is
    usually the staged name of ``final`` (:class:`geopsp.io.atomic.StagedOutputs`), which
    messages name.

    Raises
    ------
    OutputError
        Naming ``final`` (else ``path``) when it cannot be written.
    """
    from geopsp.io.cog import output_error

    out = Path(path)
    try:
        with out.open("w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(CSV_COLUMNS)
            for r in table.rows:
                writer.writerow(
                    [
                        r.id,
                        r.name,
                        r.pixels,
                        "" if r.area_m2 is None else f"{r.area_m2:.3f}",
                        "" if r.percent is None else f"{r.percent:.4f}",
                        "" if r.polygon_count is None else r.polygon_count,
                    ]
                )
    except OSError as exc:
        raise output_error(Path(final) if final is not None else out, exc, "writing the class areas table") from exc
    return out
