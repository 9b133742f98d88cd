"""Class tables: ids, names and colours of the classes a model predicts.

A class table travels in every model bundle and is written into every output (colour table,
raster attribute table, QGIS styles, vector attributes).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from geopsp.errors import ConfigError

__all__ = ["ClassInfo", "ClassTable", "complete_classes", "default_palette"]

# Class names (lowercased, letters and digits only) that mean "no real class here": the
# background of a building model, unlabeled or void pixels. Previews paint no colour over them.
_BACKGROUND_NAMES = frozenset({"background", "nodata", "unlabeled", "unlabelled", "void", "unknown"})

# A qualitative palette (Tableau 20, reordered) that stays readable on imagery.
_PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
)  # fmt: skip


def default_palette(n: int) -> list[tuple[int, int, int]]:
    """Return ``n`` distinct RGB colours.

    Parameters
    ----------
    n : int
        Number of colours.

    Returns
    -------
    list of tuple of int
        ``n`` (r, g, b) triples in 0..255; the first 20 come from a qualitative palette,
        later ones from a golden-ratio hue walk.

    Examples
    --------
    >>> default_palette(2)
    [(31, 119, 180), (255, 127, 14)]
    """
    out = list(_PALETTE[:n])
    i = 0
    while len(out) < n:
        h = (i * 0.618033988749895) % 1.0
        r, g, b = _hsv_to_rgb(h, 0.65, 0.9)
        out.append((r, g, b))
        i += 1
    return out


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    import colorsys

    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return round(r * 255), round(g * 255), round(b * 255)


@dataclass(frozen=True, slots=True)
class ClassInfo:
    """One class: its integer id in the class raster, a name and an RGB colour."""

    id: int
    name: str
    color: tuple[int, int, int]

    def __post_init__(self) -> None:
        if not 0 <= self.id <= 65534:
            raise ConfigError(f"class id {self.id} is out of range; use 0..65534")
        if len(self.color) != 3 or any(not 0 <= c <= 255 for c in self.color):
            raise ConfigError(f"class {self.name!r}: colour {self.color} must be three values in 0..255")

    @property
    def hex(self) -> str:
        """Colour as ``#rrggbb``."""
        return "#{:02x}{:02x}{:02x}".format(*self.color)


@dataclass(frozen=True, slots=True)
class ClassTable:
    """An ordered, immutable collection of :class:`ClassInfo` with unique ids and names.

    The model's output channel ``i`` predicts ``classes[i]``; ids need not be contiguous.
    """

    classes: tuple[ClassInfo, ...]

    def __post_init__(self) -> None:
        if not self.classes:
            raise ConfigError("a class table needs at least one class")
        ids = [c.id for c in self.classes]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"class ids must be unique, got {ids}")
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ConfigError(f"class names must be unique, got {names}")

    def __len__(self) -> int:
        return len(self.classes)

    def __iter__(self) -> Iterator[ClassInfo]:
        return iter(self.classes)

    def __getitem__(self, index: int) -> ClassInfo:
        return self.classes[index]

    @property
    def ids(self) -> list[int]:
        """Class ids in channel order."""
        return [c.id for c in self.classes]

    @property
    def names(self) -> list[str]:
        """Class names in channel order."""
        return [c.name for c in self.classes]

    @property
    def max_id(self) -> int:
        """Largest class id."""
        return max(self.ids)

    @property
    def background_ids(self) -> list[int]:
        """Ids of the background classes, found by name.

        A class is background when its name is ``background``, ``nodata``, ``unlabeled``,
        ``void`` or ``unknown``, compared lowercased with everything but letters and digits
        removed: ``Background``, ``no-data``, ``No_Data`` and ``unlabelled`` count,
        ``background_trees`` does not. A preview paints no colour over these classes, so the
        scene shows through (:func:`geopsp.preview.render_preview`).

        .. versionadded:: 0.2

        Examples
        --------
        >>> ClassTable.from_names(["Background", "building", "no-data"]).background_ids
        [0, 2]
        """
        return [c.id for c in self.classes if _squeezed(c.name) in _BACKGROUND_NAMES]

    def by_id(self, class_id: int) -> ClassInfo:
        """Return the class with this id.

        Raises
        ------
        KeyError
            If no class has this id.
        """
        for c in self.classes:
            if c.id == class_id:
                return c
        raise KeyError(class_id)

    @classmethod
    def from_names(cls, names: Sequence[str], *, start: int = 0) -> ClassTable:
        """Build a table from names, with ids ``start, start+1, ...`` and default colours."""
        colors = default_palette(len(names))
        return cls(tuple(ClassInfo(start + i, str(n), colors[i]) for i, n in enumerate(names)))

    @classmethod
    def default(cls, n: int) -> ClassTable:
        """Return ``n`` classes named ``class_0 ... class_{n-1}``."""
        if n < 1:
            raise ConfigError(f"number of classes must be >= 1, got {n}")
        return cls.from_names([f"class_{i}" for i in range(n)])

    def to_list(self) -> list[dict[str, Any]]:
        """Return a JSON-ready list of ``{"id", "name", "color"}`` dicts."""
        return [{"id": c.id, "name": c.name, "color": list(c.color)} for c in self.classes]

    @classmethod
    def from_list(cls, items: Sequence[Mapping[str, Any]]) -> ClassTable:
        """Build a table from dicts with ``id``, ``name`` and optional ``color`` (list or ``#rrggbb``)."""
        palette = default_palette(len(items))
        out = []
        for i, item in enumerate(items):
            try:
                cid = int(item["id"]) if "id" in item else i
                name = str(item["name"])
            except (KeyError, TypeError, ValueError) as exc:
                raise ConfigError(f"class entry {i} needs 'name' (and an integer 'id'): {item!r}") from exc
            color = _parse_color(item.get("color"), palette[i])
            out.append(ClassInfo(cid, name, color))
        return cls(tuple(out))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> ClassTable:
        """Read a class table from YAML or JSON.

        The file is a list of ``{id, name, color}`` entries, or a mapping with a ``classes`` key
        holding such a list, or a mapping of ``id: name``.
        """
        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read class table: {exc.strerror}; check the path", path=str(p)) from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"not valid YAML/JSON: {exc}", path=str(p)) from exc
        if isinstance(data, Mapping) and "classes" in data:
            data = data["classes"]
        if isinstance(data, Mapping):
            data = [{"id": int(k), "name": v} for k, v in data.items()]
        if not isinstance(data, list):
            raise ConfigError("expected a list of {id, name, color} entries", path=str(p))
        try:
            return cls.from_list(data)
        except ConfigError as exc:
            raise ConfigError(str(exc), path=str(p)) from exc

    def to_json(self) -> str:
        """Serialize to a JSON string."""
        return json.dumps(self.to_list())


def complete_classes(table: ClassTable | None, ids: Iterable[Any]) -> ClassTable:
    """Return ``table`` extended with a default entry (``class_<id>``, a palette colour) per id it lacks.

    Parameters
    ----------
    table : ClassTable, optional
        The known classes (None: none).
    ids : iterable of int
        Class ids found in a raster.

    Examples
    --------
    >>> complete_classes(ClassTable.from_names(["forest"], start=1), [1, 3]).names
    ['forest', 'class_3']
    """
    present = sorted({int(v) for v in ids})
    known = {c.id for c in table} if table is not None else set()
    missing = [v for v in present if v not in known]
    if table is not None and not missing:
        return table
    base = list(table) if table is not None else []
    colors = default_palette(len(base) + len(missing))[len(base) :]
    names = {c.name for c in base}
    extra = []
    for v, color in zip(missing, colors, strict=True):
        name = f"class_{v}"
        while name in names:
            name += "_"
        extra.append(ClassInfo(v, name, color))
    return ClassTable(tuple(base + extra))


def _squeezed(name: str) -> str:
    """Lowercase ``name`` and keep only its letters and digits (``"No-Data"`` -> ``"nodata"``)."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


def _parse_color(value: Any, fallback: tuple[int, int, int]) -> tuple[int, int, int]:
    if value is None:
        return fallback
    if isinstance(value, str):
        s = value.lstrip("#")
        if len(s) != 6:
            raise ConfigError(f"colour {value!r} must be '#rrggbb' or [r, g, b]")
        return int(s[0:2], 16), int(s[2:4], 16), int(s[4:6], 16)
    try:
        r, g, b = (int(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"colour {value!r} must be '#rrggbb' or [r, g, b]") from exc
    return r, g, b
