"""Where training data lies: find the scenes of a layout and pair each with its labels.

Four layouts are understood (``train.data.layout``):

``scenes``
    GeoTIFF scenes with a label raster each (``labels: "labels/{name}"``). A label raster on
    another grid is warped onto the scene's (nearest neighbour).
``vector``
    GeoTIFF scenes with vector labels (one file for all, or a ``{stem}`` template), reprojected
    to each scene's CRS and rasterized on its grid.
``spacenet``
    Image chips with a building GeoJSON per chip, matched by chip id.
``deepglobe``
    ``<id>_sat.jpg`` with a colour-coded ``<id>_mask.png`` (channels thresholded at 128).

The config's paths are made absolute here too (:func:`resolve_paths`), and the class table
resolved, with the defaults of the spacenet and deepglobe layouts (:func:`resolve_classes`).
"""

from __future__ import annotations

import glob
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from geopsp.classes import ClassInfo, ClassTable
from geopsp.config.schema import ColorLabel, DataConfig, SplitConfig, TrainConfig
from geopsp.errors import ConfigError

__all__ = [
    "DEEPGLOBE_CLASSES",
    "DEEPGLOBE_COLORS",
    "SPACENET_CLASSES",
    "LabelKind",
    "Scene",
    "discover_scenes",
    "resolve_classes",
    "resolve_paths",
]

logger = logging.getLogger(__name__)

DEEPGLOBE_COLORS: tuple[ColorLabel, ...] = (
    ColorLabel(color=(0, 255, 255), value=0, name="urban"),
    ColorLabel(color=(255, 255, 0), value=1, name="agriculture"),
    ColorLabel(color=(255, 0, 255), value=2, name="rangeland"),
    ColorLabel(color=(0, 255, 0), value=3, name="forest"),
    ColorLabel(color=(0, 0, 255), value=4, name="water"),
    ColorLabel(color=(255, 255, 255), value=5, name="barren"),
    ColorLabel(color=(0, 0, 0), value=None, name="unknown"),
)
"""DeepGlobe land-cover mask colours; ``unknown`` is ignored."""

DEEPGLOBE_CLASSES = ClassTable(
    tuple(ClassInfo(int(c.value), str(c.name), c.color) for c in DEEPGLOBE_COLORS if c.value is not None)
)
"""The six DeepGlobe classes a model predicts (``unknown`` is not one of them)."""

SPACENET_CLASSES = ClassTable((ClassInfo(0, "background", (0, 0, 0)), ClassInfo(1, "building", (227, 26, 28))))

LabelKind = Literal["raster", "vector", "deepglobe"]


@dataclass(frozen=True, slots=True)
class Scene:
    """One training scene and where its labels come from."""

    id: str
    image: Path
    labels: Path
    kind: LabelKind
    date: str | None = None


# --------------------------------------------------------------------------- paths and classes


def resolve_paths(config: TrainConfig, base_dir: str | os.PathLike[str] | None) -> TrainConfig:
    """Make the config's paths absolute: relative ones are taken from ``base_dir``.

    :func:`geopsp.config.load_config` has already made the paths of a loaded config absolute
    (by the rule of :mod:`geopsp.config.paths`); this resolves those of a config built in code,
    and sets an unset ``data.root`` to ``base_dir``. ``data.root``, a ``classes`` file and
    ``out`` are resolved against ``base_dir`` (the config file's folder; default: the working
    directory); ``images``, ``labels`` and ``vector`` stay relative to ``data.root``.
    """
    base = Path(base_dir if base_dir is not None else os.getcwd()).resolve()
    data = config.data
    root = base if data.root is None else (base / data.root).resolve()
    changes: dict[str, Any] = {"data": data.model_copy(update={"root": str(root)})}
    if isinstance(config.classes, str):
        changes["classes"] = str((base / config.classes).resolve())
    if config.out is not None:
        changes["out"] = str((base / config.out).resolve())
    return config.model_copy(update=changes)


def resolve_classes(config: TrainConfig) -> ClassTable:
    """Return the class table of a (path-resolved) config; layouts spacenet and deepglobe have defaults.

    Raises
    ------
    ConfigError
        If no table is given and the layout has none, or the file is invalid.
    """
    classes = config.classes
    if isinstance(classes, str):
        return ClassTable.from_file(classes)
    if classes:
        return ClassTable.from_list([c.model_dump() for c in classes])
    if config.data.layout == "deepglobe":
        if config.data.color_map is not None:
            items = [c for c in config.data.color_map if c.value is not None]
            return ClassTable(tuple(ClassInfo(int(c.value), c.name or f"class_{c.value}", c.color) for c in items))  # type: ignore[arg-type]
        return DEEPGLOBE_CLASSES
    if config.data.layout == "spacenet":
        return SPACENET_CLASSES
    raise ConfigError(
        "no class table; set train.classes to a YAML file or a list of {id, name, color}", key="train.classes"
    )


# --------------------------------------------------------------------------- discovery


def _glob(root: Path, pattern: str) -> list[Path]:
    pat = pattern if os.path.isabs(pattern) else str(root / pattern)
    return sorted(Path(p) for p in glob.glob(pat, recursive=True) if Path(p).is_file())


def _fill(template: str, image: Path, **extra: str) -> str:
    try:
        return template.format(stem=image.stem, name=image.name, **extra)
    except (KeyError, IndexError) as exc:
        raise ConfigError(f"template {template!r} uses an unknown placeholder {exc}; use {{stem}} or {{name}}") from exc


def _missing_root(data: DataConfig, root: Path) -> ConfigError:
    """Build the one-line error for a missing data folder: what, where it came from, the fix."""
    what = "is not a folder" if root.exists() else "does not exist"
    origin = data._root_origin
    if origin is None:
        return ConfigError(f"data folder {root} {what}; check train.data.root", key="train.data.root")
    return ConfigError(
        f"data folder {root} {what}: {origin.describe()}; {origin.fix()}",
        path=origin.source if origin.from_file else None,
        key="train.data.root",
    )


def _chip_id(stem: str, regex: str) -> str | None:
    matches = re.findall(regex, stem)
    if not matches:
        return None
    last = matches[-1]
    return last if isinstance(last, str) else next(m for m in last if m)


def discover_scenes(data: DataConfig, split: SplitConfig | None = None) -> list[Scene]:
    """Find the scenes of a (path-resolved) data section and pair each with its labels.

    Returns
    -------
    list of Scene
        Sorted by id.

    Raises
    ------
    ConfigError
        If nothing matches or a scene has no labels.
    """
    root = Path(data.root or ".")
    if not root.is_dir():
        raise _missing_root(data, root)
    date_regex = split.date_regex if split is not None else r"(\d{8})"
    layout = data.layout
    if layout == "deepglobe":
        pattern = data.images if data.images != "*.tif" else "*_sat.jpg"
        images = _glob(root, pattern)
    else:
        images = _glob(root, data.images)
    if not images:
        raise ConfigError(f"no scenes match {data.images!r} under {root}", key="train.data.images")
    scenes: list[Scene] = []
    if layout == "scenes":
        if not data.labels:
            raise ConfigError(
                "layout 'scenes' needs a label raster template, e.g. 'labels/{name}'", key="train.data.labels"
            )
        for img in images:
            lab = root / _fill(data.labels, img)
            if not lab.exists():
                raise ConfigError(f"scene {img.name} has no label raster {lab}", key="train.data.labels")
            scenes.append(Scene(img.stem, img, lab, "raster"))
    elif layout == "vector":
        if not data.vector:
            raise ConfigError(
                "layout 'vector' needs train.data.vector (a file or a {stem} template)", key="train.data.vector"
            )
        for img in images:
            vec = root / _fill(data.vector, img)
            if not vec.exists():
                raise ConfigError(f"scene {img.name} has no vector labels {vec}", key="train.data.vector")
            scenes.append(Scene(img.stem, img, vec, "vector"))
    elif layout == "spacenet":
        vectors = _glob(root, data.vector or "**/*.geojson")
        by_id: dict[str, Path] = {}
        for v in vectors:
            cid = _chip_id(v.stem, data.chip_id_regex)
            if cid is not None:
                by_id.setdefault(cid, v)
        for img in images:
            cid = _chip_id(img.stem, data.chip_id_regex)
            if cid is None or cid not in by_id:
                raise ConfigError(
                    f"chip {img.name} has no building GeoJSON with chip id {cid!r}; check train.data.vector "
                    "and train.data.chip_id_regex",
                    key="train.data.vector",
                )
            scenes.append(Scene(img.stem, img, by_id[cid], "vector"))
    elif layout == "deepglobe":
        for img in images:
            stem = img.stem[: -len("_sat")] if img.stem.endswith("_sat") else img.stem
            mask = img.with_name(f"{stem}_mask.png") if data.labels is None else root / _fill(data.labels, img, id=stem)
            if not mask.exists():
                raise ConfigError(f"DeepGlobe image {img.name} has no mask {mask.name}", key="train.data.labels")
            scenes.append(Scene(stem, img, mask, "deepglobe"))
    else:  # pragma: no cover - the schema restricts layout
        raise ConfigError(f"unknown layout {layout!r}", key="train.data.layout")
    out = []
    for s in scenes:
        m = re.search(date_regex, s.id)
        date = (m.group(1) if m.groups() else m.group(0)) if m else None
        out.append(Scene(s.id, s.image, s.labels, s.kind, date))
    ids = [s.id for s in out]
    if len(set(ids)) != len(ids):
        raise ConfigError("two scenes share a file stem; scene ids must be unique", key="train.data.images")
    return sorted(out, key=lambda s: s.id)
