"""Augmentations that keep geometry honest.

Flips, 90-degree rotations, mild scale jitter, and per-band brightness/contrast.

Each transform applies the same geometric change to image and labels; labels are resampled
with nearest neighbour only, so no class is ever invented by interpolation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from geopsp.config.schema import AugmentConfig

__all__ = ["augment_pair", "draw_read_size", "resize_pair"]


def draw_read_size(window: int, config: AugmentConfig, rng: np.random.Generator) -> int:
    """Edge of the window to read so that resizing it to ``window`` applies a random scale.

    A scale factor ``s`` drawn from ``config.scale`` enlarges the content by ``s``: the read
    window is ``window / s`` pixels.
    """
    lo, hi = config.scale
    if hi <= lo:
        s = lo
    else:
        s = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    return max(8, round(window / s))


def resize_pair(
    image: NDArray[np.float32], labels: NDArray[Any], size: int
) -> tuple[NDArray[np.float32], NDArray[Any]]:
    """Resize a (C, h, w) image bilinearly and its (h, w) labels by nearest neighbour to ``size``."""
    if image.shape[-1] == size and image.shape[-2] == size:
        return image, labels
    import torch
    import torch.nn.functional as F

    img = F.interpolate(
        torch.from_numpy(np.ascontiguousarray(image))[None], size=(size, size), mode="bilinear", align_corners=False
    )
    h, w = labels.shape
    ri = np.minimum((np.arange(size) + 0.5) * h / size, h - 1).astype(np.intp)
    ci = np.minimum((np.arange(size) + 0.5) * w / size, w - 1).astype(np.intp)
    return img[0].numpy(), labels[np.ix_(ri, ci)]


def augment_pair(
    image: NDArray[np.float32],
    labels: NDArray[Any],
    config: AugmentConfig,
    rng: np.random.Generator,
) -> tuple[NDArray[np.float32], NDArray[Any]]:
    """Apply random flips, rotations and per-band brightness/contrast.

    Parameters
    ----------
    image : ndarray of float32, shape (C, H, W)
        Normalized image.
    labels : ndarray, shape (H, W)
        Channel indices.
    config : AugmentConfig
        Which transforms, how strong.
    rng : numpy.random.Generator
        Randomness.

    Returns
    -------
    (image, labels)
        Contiguous arrays of the same shapes (square windows keep their shape under rotation).
    """
    if config.flips:
        if rng.random() < 0.5:
            image, labels = image[:, :, ::-1], labels[:, ::-1]
        if rng.random() < 0.5:
            image, labels = image[:, ::-1, :], labels[::-1, :]
    if config.rot90 and image.shape[-1] == image.shape[-2]:
        k = int(rng.integers(0, 4))
        if k:
            image, labels = np.rot90(image, k, axes=(1, 2)), np.rot90(labels, k)
    image = np.ascontiguousarray(image, dtype=np.float32)
    labels = np.ascontiguousarray(labels)
    c = image.shape[0]
    if config.contrast > 0:
        gain = np.asarray(rng.uniform(1 - config.contrast, 1 + config.contrast, size=c), dtype=np.float32)
        image *= gain[:, None, None]
    if config.brightness > 0:
        shift = np.asarray(rng.uniform(-config.brightness, config.brightness, size=c), dtype=np.float32)
        image += shift[:, None, None]
    return image, labels
