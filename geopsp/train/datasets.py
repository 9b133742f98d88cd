"""Training data: the scenes, readers and split of a config, resolved once.

:func:`prepare_data` chains the data modules: find the scenes of the layout
(:mod:`geopsp.train.layouts`), open a reader per scene (:mod:`geopsp.train.reader`) and split
them into training and validation regions (:mod:`geopsp.train.split`). Their public names are
re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from geopsp.classes import ClassTable
from geopsp.config.schema import TrainConfig
from geopsp.errors import ConfigError, InputRasterError
from geopsp.labels import LabelMapping
from geopsp.train.layouts import (
    DEEPGLOBE_CLASSES,
    DEEPGLOBE_COLORS,
    Scene,
    discover_scenes,
    resolve_classes,
    resolve_paths,
)
from geopsp.train.reader import SceneCache, SceneReader, decode_color_mask
from geopsp.train.split import Region, split_blocks, split_scenes

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
    "split_blocks",
    "split_scenes",
]


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
            "train_pixels": int(sum(r.pixels for r in self.train)),
            "val_pixels": int(sum(r.pixels for r in self.val)),
            "val_regions": len(self.val),
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
    cache = SceneCache(data.cache_mb * 1024 * 1024)
    readers = [SceneReader(i, s, data.bands, mapping, data, cache) for i, s in enumerate(scenes)]
    split = config.split
    train, val = split_scenes(scenes, [(r.height, r.width) for r in readers], split, seed=config.seed)
    if split.val_blocks > 0:
        train, blocks = split_blocks(
            train,
            lambda i: readers[i].labels(),
            fraction=split.val_blocks,
            block_size=split.block_size,
            num_classes=len(classes),
            ignore_index=mapping.ignore_index,
            layout=split.block_layout,
            grids=[r.grid for r in readers],
            seed=config.seed,
        )
        val = val + blocks
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
