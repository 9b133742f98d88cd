"""Training of segmentation models.

Data layouts, splits (by scene, date, stripe or stratified blocks), data checks, labeled-window
sampling, augmentation, normalization statistics, losses and the :func:`fit` loop that writes
model bundles.

Importing this package imports torch.
"""

from __future__ import annotations

from geopsp.train.checks import DataReport, check_training_data, class_pixel_counts
from geopsp.train.datasets import TrainingData, prepare_data
from geopsp.train.layouts import DEEPGLOBE_COLORS, Scene, discover_scenes, resolve_paths
from geopsp.train.loop import TrainEvent, TrainResult, dry_run, fit
from geopsp.train.losses import SegmentationLoss
from geopsp.train.quick import quick_config
from geopsp.train.reader import decode_color_mask
from geopsp.train.sampling import WindowSampler
from geopsp.train.split import Region, split_blocks, split_scenes
from geopsp.train.stats import compute_normalization

__all__ = [
    "DEEPGLOBE_COLORS",
    "DataReport",
    "Region",
    "Scene",
    "SegmentationLoss",
    "TrainEvent",
    "TrainResult",
    "TrainingData",
    "WindowSampler",
    "check_training_data",
    "class_pixel_counts",
    "compute_normalization",
    "decode_color_mask",
    "discover_scenes",
    "dry_run",
    "fit",
    "prepare_data",
    "quick_config",
    "resolve_paths",
    "split_blocks",
    "split_scenes",
]
