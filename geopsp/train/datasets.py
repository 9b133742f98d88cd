"""Training data: find scenes and their labels, split them, and read windows of them.

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

The split is by scene (patterns), by date (regex), by a seeded fraction of whole scenes, or a
spatial stripe of every scene; never random pixels of one scene.
"""

from __future__ import annotations

import fnmatch
import glob
import logging
import os
import re
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from geopsp.classes import ClassInfo, ClassTable
from geopsp.config.schema import ColorLabel, DataConfig, SplitConfig, TrainConfig
from geopsp.errors import ConfigError, InputRasterError, NotGeoreferencedWarning
from geopsp.io.scene import SceneInfo, inspect_scene, open_scene, read_rows
from geopsp.labels import UNLABELED, LabelMapping, VectorLabels, window_transform

__all__ = [
    "DEEPGLOBE_CLASSES",
    "DEEPGLOBE_COLORS",
    "Region",
    "Scene",
    "SceneReader",
    "TrainingData",
    "decode_color_mask",
    "discover_scenes",
    "prepare_data",
    "resolve_classes",
    "resolve_paths",
    "split_scenes",
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


@dataclass(frozen=True, slots=True)
class Region:
    """A rectangle of a scene used for training or validation (the whole scene, or a stripe)."""

    scene: int
    row: int
    col: int
    height: int
    width: int


# --------------------------------------------------------------------------- paths and classes


def resolve_paths(config: TrainConfig, base_dir: str | os.PathLike[str] | None) -> TrainConfig:
    """Make the config's paths absolute: relative ones are taken from ``base_dir``.

    ``data.root`` and a ``classes`` file are resolved against ``base_dir`` (the config file's
    folder); ``images``, ``labels`` and ``vector`` stay relative to ``data.root``.
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
        raise ConfigError(f"data folder {root} does not exist; check train.data.root", key="train.data.root")
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


# --------------------------------------------------------------------------- reading


def decode_color_mask(
    rgb: NDArray[Any], color_map: Sequence[ColorLabel], *, unknown: set[str] | None = None
) -> NDArray[np.uint16]:
    """Decode a colour-coded mask (DeepGlobe) into label values.

    Each channel is thresholded at 128 (JPEG/PNG resampling blurs the pure colours), giving one
    of 8 colours; each maps to its ``value``, or to 65535 (unlabeled) when its value is null or
    it is not listed.

    Parameters
    ----------
    rgb : ndarray, shape (3, H, W) or (H, W, 3)
        The mask.
    color_map : sequence of ColorLabel
        Colour -> label value.
    unknown : set of str, optional
        Receives ``"r,g,b"`` of colours present but not listed.

    Returns
    -------
    ndarray of uint16, shape (H, W)

    Examples
    --------
    >>> m = np.array([[[0, 255, 250], [10, 0, 3]]], dtype="uint8")  # (1, 2, 3): H=1, W=2, RGB last
    >>> decode_color_mask(m, DEEPGLOBE_COLORS).tolist()
    [[0, 65535]]
    """
    arr = np.asarray(rgb)
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim != 3 or arr.shape[-1] < 3:
        raise InputRasterError(f"a colour mask needs 3 channels, got shape {arr.shape}")
    bits = (arr[..., 0] >= 128).astype(np.uint8) * 4 + (arr[..., 1] >= 128) * 2 + (arr[..., 2] >= 128)
    lut = np.full(8, UNLABELED, dtype=np.uint16)
    listed = np.zeros(8, dtype=bool)
    for c in color_map:
        code = (c.color[0] >= 128) * 4 + (c.color[1] >= 128) * 2 + (c.color[2] >= 128)
        listed[code] = True
        if c.value is not None:
            lut[code] = c.value
    if unknown is not None:
        present = np.bincount(bits.ravel(), minlength=8) > 0
        for code in np.flatnonzero(present & ~listed).tolist():
            unknown.add(f"{255 * (code >> 2 & 1)},{255 * (code >> 1 & 1)},{255 * (code & 1)}")
    out: NDArray[np.uint16] = lut[bits]
    return out


class _Cache:
    """Least-recently-used store of whole scenes, bounded in bytes."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self.used = 0
        self.items: OrderedDict[tuple[int, str], tuple[Any, int]] = OrderedDict()

    def get(self, key: tuple[int, str]) -> Any:
        item = self.items.get(key)
        if item is None:
            return None
        self.items.move_to_end(key)
        return item[0]

    def put(self, key: tuple[int, str], value: Any, nbytes: int) -> None:
        if nbytes > self.budget:
            return
        while self.items and self.used + nbytes > self.budget:
            _, (_, size) = self.items.popitem(last=False)
            self.used -= size
        self.items[key] = (value, nbytes)
        self.used += nbytes


@dataclass
class SceneReader:
    """Reads windows of one scene as (raw image, channel-index labels, valid mask).

    Whole scenes are held in a shared LRU cache when they fit its budget; otherwise windows are
    read from disk (GeoTIFF) or the file is decoded each time (JPEG/PNG).
    """

    index: int
    scene: Scene
    bands: tuple[int, ...] | None
    mapping: LabelMapping
    data: DataConfig
    cache: _Cache
    height: int = 0
    width: int = 0
    count: int = 0
    dtype: str = "uint8"
    crs: Any = None
    transform: Any = None
    nodata: float | None = None
    descriptions: tuple[str | None, ...] = ()
    unknown: set[str] = field(default_factory=set)
    _vector: VectorLabels | None = None
    _info: SceneInfo | None = None

    def __post_init__(self) -> None:
        with warnings.catch_warnings():
            # training needs no CRS (DeepGlobe JPEGs have none; vector labels say so themselves)
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            info = inspect_scene(self.scene.image)
        self._info = info
        self.width, self.height, self.count = info.width, info.height, info.count
        self.dtype = info.dtype
        self.crs, self.transform, self.nodata = info.crs, info.transform, info.nodata
        self.descriptions = info.band_descriptions
        if self.scene.kind == "deepglobe" and not any(self.descriptions):
            self.descriptions = ("red", "green", "blue")[: self.count]
        # the alpha band is validity, never data (as at prediction)
        bands = self.bands or info.data_bands
        if max(bands) > self.count or min(bands) < 1:
            raise ConfigError(
                f"{self.scene.image.name} has {self.count} bands but train.data.bands asks for {list(bands)}",
                key="train.data.bands",
            )
        if info.alpha_band in bands:
            raise ConfigError(
                f"{self.scene.image.name}: band {info.alpha_band} is the alpha (transparency) band, which "
                f"marks valid pixels and is not data; drop it from train.data.bands",
                key="train.data.bands",
            )
        self.bands = bands

    @property
    def nbytes(self) -> int:
        """Bytes of the cached scene (image as float32 plus labels)."""
        return self.height * self.width * (4 * len(self.bands or ()) + 2)

    @property
    def pixel_size(self) -> float | None:
        """Pixel width in CRS units (None without a geotransform)."""
        if self.transform is None or self.crs is None:
            return None
        return float(abs(self.transform.a))

    # -- whole-scene loaders ------------------------------------------------------------
    def _load_image(self, window: tuple[int, int, int, int] | None) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        # the pixels and their validity exactly as prediction reads them (nodata per band,
        # alpha, GDAL masks, NaN/inf): one definition of a valid pixel
        info = self._info
        assert info is not None and self.bands is not None
        r, c, h, w = window if window is not None else (0, 0, self.height, self.width)
        with open_scene(info, threads=1) as (src, _):
            data, valid = read_rows(src, info, r, h, self.bands, col_off=c, width=w)
        return data.astype(np.float32, copy=False), valid

    def _load_labels(self, window: tuple[int, int, int, int] | None) -> NDArray[Any]:
        kind = self.scene.kind
        if kind == "deepglobe":
            from PIL import Image

            with Image.open(self.scene.labels) as im:
                rgb = np.asarray(im.convert("RGB"))
            values = decode_color_mask(rgb, self.data.color_map or DEEPGLOBE_COLORS, unknown=self.unknown)
            if window is not None:
                r, c, h, w = window
                values = values[r : r + h, c : c + w]
            return self.mapping.encode(values, nodata=UNLABELED, unknown=self.unknown)
        if kind == "vector":
            if self._vector is None:
                burn = self.data.burn_class
                if burn is None and self.data.class_field is None and self.data.layout == "spacenet":
                    burn = 1
                self._vector = VectorLabels(
                    self.scene.labels,
                    crs=self.crs,
                    field=self.data.class_field,
                    value_map=self.data.value_map,
                    burn_value=burn,
                    layer=self.data.layer,
                )
            r, c, h, w = window if window is not None else (0, 0, self.height, self.width)
            bg = self.data.background_class
            if bg is None and self.data.layout == "spacenet":
                bg = 0
            values = self._vector.rasterize(
                window_transform(self.transform, r, c),
                w,
                h,
                fill=UNLABELED if bg is None else bg,
                all_touched=self.data.all_touched,
            )
            return self.mapping.encode(values, nodata=UNLABELED, unknown=self.unknown)
        return self._read_label_raster(window)

    def _read_label_raster(self, window: tuple[int, int, int, int] | None) -> NDArray[Any]:
        import rasterio
        from rasterio.windows import Window

        from geopsp.labels import label_raster_on_grid

        win = None if window is None else Window(window[1], window[0], window[3], window[2])
        try:
            with (
                rasterio.open(self.scene.labels) as src,
                label_raster_on_grid(src, self, onto=str(self.scene.image)) as on,
            ):
                values, nodata = on.read(1, window=win), on.nodata
        except rasterio.errors.RasterioIOError as exc:
            raise InputRasterError(f"{self.scene.labels}: cannot read label raster ({exc})") from exc
        return self.mapping.encode(values, nodata=nodata, unknown=self.unknown)

    # -- public -----------------------------------------------------------------------
    def _full(self) -> tuple[NDArray[np.float32], NDArray[Any]] | None:
        key = (self.index, "scene")
        hit = self.cache.get(key)
        if hit is not None:
            return hit  # type: ignore[no-any-return]
        if self.nbytes > self.cache.budget:
            return None
        image, valid = self._load_image(None)
        labels = self._load_labels(None)
        labels[~valid] = self.mapping.ignore_index
        image[:, ~valid] = np.nan
        self.cache.put(key, (image, labels), self.nbytes)
        return image, labels

    def labels(self) -> NDArray[Any]:
        """All labels of the scene as channel indices (``ignore_index`` where unlabeled or nodata)."""
        full = self._full()
        if full is not None:
            return full[1]
        labels = self._load_labels(None)
        # The scene does not fit the cache: find its nodata in blocks of rows.
        block = max(1, (64 * 1024 * 1024) // max(1, 4 * len(self.bands or ()) * self.width))
        for r0 in range(0, self.height, block):
            h = min(block, self.height - r0)
            _, valid = self._load_image((r0, 0, h, self.width))
            labels[r0 : r0 + h][~valid] = self.mapping.ignore_index
        return labels

    def read(self, row: int, col: int, height: int, width: int) -> tuple[NDArray[np.float32], NDArray[Any]]:
        """Read a window, padding beyond the scene.

        Returns
        -------
        image : ndarray of float32, shape (bands, height, width)
            Raw values; NaN where the scene has no data (nodata or padding).
        labels : ndarray, shape (height, width)
            Channel indices; ``ignore_index`` where unlabeled, nodata or padding.
        """
        assert self.bands is not None
        r0, c0 = max(row, 0), max(col, 0)
        r1, c1 = min(row + height, self.height), min(col + width, self.width)
        full = self._full()
        if full is not None:
            img = full[0][:, r0:r1, c0:c1]
            lab = full[1][r0:r1, c0:c1]
        else:
            win = (r0, c0, r1 - r0, c1 - c0)
            img, valid = self._load_image(win)
            lab = self._load_labels(win)
            lab[~valid] = self.mapping.ignore_index
            img[:, ~valid] = np.nan
        if (r0, c0, r1, c1) == (row, col, row + height, col + width):
            return np.array(img, dtype=np.float32, copy=True), np.array(lab, copy=True)
        image = np.full((len(self.bands), height, width), np.nan, dtype=np.float32)
        labels = np.full((height, width), self.mapping.ignore_index, dtype=lab.dtype)
        image[:, r0 - row : r1 - row, c0 - col : c1 - col] = img
        labels[r0 - row : r1 - row, c0 - col : c1 - col] = lab
        return image, labels


@dataclass
class TrainingData:
    """Everything resolved from a config's data, class and split sections."""

    classes: ClassTable
    mapping: LabelMapping
    scenes: list[Scene]
    readers: list[SceneReader]
    train: list[Region]
    val: list[Region]
    bands: tuple[int, ...]
    band_names: tuple[str, ...]
    input_dtype: str
    pixel_size: float | None

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary (used in provenance and the dry run)."""
        train_ids = sorted({self.scenes[r.scene].id for r in self.train})
        val_ids = sorted({self.scenes[r.scene].id for r in self.val})
        return {
            "scenes": len(self.scenes),
            "train_scenes": train_ids,
            "val_scenes": val_ids,
            "train_pixels": int(sum(r.height * r.width for r in self.train)),
            "val_pixels": int(sum(r.height * r.width for r in self.val)),
            "bands": list(self.bands),
            "band_names": list(self.band_names),
            "input_dtype": self.input_dtype,
            "classes": self.classes.names,
        }

    def warn_unknown(self) -> None:
        """Warn once per scene about label values in no class table."""
        for reader in self.readers:
            if reader.unknown:
                self.mapping.warn_unknown(reader.unknown, str(reader.scene.labels))
                reader.unknown.clear()


def prepare_data(config: TrainConfig, *, max_scenes: int | None = None) -> TrainingData:
    """Discover, check and split the data of a path-resolved config.

    Parameters
    ----------
    config : TrainConfig
        With absolute paths (see :func:`resolve_paths`).
    max_scenes : int, optional
        Keep at most this many training and validation scenes each (dry runs).

    Raises
    ------
    ConfigError, InputRasterError, InputVectorError
        For missing data, inconsistent scenes, or a split without training data.
    """
    data = config.data
    classes = resolve_classes(config)
    value_map = data.value_map if data.layout == "scenes" else None
    mapping = LabelMapping(
        classes, value_map=value_map, ignore_values=data.ignore_values, ignore_index=config.ignore_index
    )
    scenes = discover_scenes(data, config.split)
    cache = _Cache(data.cache_mb * 1024 * 1024)
    readers = [SceneReader(i, s, data.bands, mapping, data, cache) for i, s in enumerate(scenes)]
    train, val = split_scenes(scenes, [(r.height, r.width) for r in readers], config.split, seed=config.seed)
    if max_scenes is not None:
        train = _first_scenes(train, max_scenes)
        val = _first_scenes(val, max_scenes)
    used = sorted({r.scene for r in train + val})
    first = readers[used[0]]
    bands = first.bands or ()
    for i in used:
        rd = readers[i]
        if len(rd.bands or ()) != len(bands) or rd.dtype != first.dtype:
            raise InputRasterError(
                f"{rd.scene.image.name} has {rd.count} bands of {rd.dtype} but {first.scene.image.name} has "
                f"{first.count} of {first.dtype}; train on scenes of one kind (or select bands with train.data.bands)"
            )
    if data.band_names is not None:
        if len(data.band_names) != len(bands):
            raise ConfigError(f"{len(data.band_names)} band names for {len(bands)} bands", key="train.data.band_names")
        names = tuple(data.band_names)
    else:
        desc = first.descriptions
        names = tuple(str(desc[b - 1]) if b - 1 < len(desc) and desc[b - 1] else f"band_{b}" for b in bands)
    return TrainingData(
        classes=classes,
        mapping=mapping,
        scenes=scenes,
        readers=readers,
        train=train,
        val=val,
        bands=tuple(bands),
        band_names=names,
        input_dtype=first.dtype,
        pixel_size=first.pixel_size,
    )


def _first_scenes(regions: list[Region], n: int) -> list[Region]:
    keep = sorted({r.scene for r in regions})[:n]
    return [r for r in regions if r.scene in keep]
