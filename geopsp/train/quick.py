"""A training config for one labelled scene, built in code (for demos, notebooks and tests)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from geopsp.classes import ClassTable
from geopsp.config.load import merge
from geopsp.config.schema import TrainConfig

__all__ = ["quick_config"]


def quick_config(
    scene: str | os.PathLike[str],
    labels: str | os.PathLike[str],
    *,
    classes: ClassTable,
    window: int = 64,
    batch_size: int = 4,
    windows_per_epoch: int = 32,
    epochs: int = 2,
    holdout: float = 0.25,
    preset: str = "fast",
    encoder: str | None = "resnet18",
    seed: int = 0,
    **overrides: Any,
) -> TrainConfig:
    """Return a small training config for one scene and its label raster.

    A ``holdout`` share of the scene's labeled pixels is held out for validation, as stratified
    spatial blocks (``train.split.val_blocks``), so every class has training and validation pixels.

    Parameters
    ----------
    scene, labels : path
        A GeoTIFF scene and its label raster on the same grid (label value = class id;
        values in no class, and the raster's nodata, are ignored).
    classes : ClassTable
        The classes to learn, e.g. :data:`geopsp.synthetic.SYNTHETIC_CLASSES`.
    window, batch_size, windows_per_epoch, epochs : int
        Sampling and length of the run.
    holdout : float
        Share of the scene's labeled pixels held out for validation (in blocks of ``window`` / 2 px).
    preset, encoder : str
        Model preset and encoder.
    seed : int
        Seed.
    **overrides
        Further ``train`` keys as nested mappings, e.g. ``optim={"lr": 0.005}``.

    Returns
    -------
    TrainConfig

    Examples
    --------
    >>> from geopsp.synthetic import SYNTHETIC_CLASSES
    >>> cfg = quick_config("scene.tif", "scene_labels.tif", classes=SYNTHETIC_CLASSES, epochs=1)
    >>> cfg.data.layout, cfg.split.val_blocks, cfg.split.block_size, cfg.sampling.window
    ('scenes', 0.25, 32, 64)
    """
    scene_p = Path(scene).resolve()
    labels_p = Path(labels).resolve()
    base: dict[str, Any] = {
        "data": {
            "layout": "scenes",
            "root": str(scene_p.parent),
            "images": scene_p.name,
            "labels": str(labels_p),
        },
        "classes": classes.to_list(),
        "split": {"val_blocks": holdout, "block_size": max(8, window // 2)},
        "sampling": {
            "window": window,
            "batch_size": batch_size,
            "windows_per_epoch": windows_per_epoch,
            "grid": max(4, min(32, window // 4)),
        },
        "normalization": {"windows": 16},
        "model": {"preset": preset, "encoder": encoder},
        "optim": {"optimizer": "adamw", "lr": 0.002},
        "epochs": epochs,
        "val_tile": max(64, window * 2),
        "seed": seed,
    }
    return TrainConfig.model_validate(merge(base, overrides))
