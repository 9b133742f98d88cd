"""Training batches: random labeled windows, normalized and augmented, built ahead of the model.

Batch ``g`` (the global optimizer step) is drawn with its own generator seeded by
``(seed, 2, g)``, so its content does not depend on how many worker processes build batches,
on prefetching, or on where a resumed run starts: a resumed run gets the batches it would have got.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from geopsp.config.schema import AugmentConfig
from geopsp.device import cpu_count
from geopsp.model.meta import Normalization
from geopsp.train.augment import augment_pair, draw_read_size, resize_pair
from geopsp.train.datasets import Region, TrainingData
from geopsp.train.sampling import WindowSampler, read_region_window
from geopsp.train.stats import normalize_window

__all__ = ["BatchSource", "batch_loader", "default_workers", "make_batch"]

Batch = tuple[torch.Tensor, torch.Tensor]


def make_batch(
    data: TrainingData,
    sampler: WindowSampler,
    regions: list[Region],
    augment: AugmentConfig | None,
    norm: Normalization,
    rng: np.random.Generator,
    batch_size: int,
    window: int,
) -> Batch:
    """Draw, read, normalize and (unless ``augment`` is None) augment one batch.

    Returns
    -------
    (images, labels)
        float32 ``(N, C, window, window)`` and int64 ``(N, window, window)`` channel indices.
    """
    sizes = [draw_read_size(window, augment, rng) if augment is not None else window for _ in range(batch_size)]
    draws = sampler.sample(batch_size, rng, sizes=sizes)
    images, labels = [], []
    for d in draws:
        reg = regions[d.region]
        img, lab = read_region_window(data.readers[reg.scene], reg, d.row, d.col, d.size)
        img = normalize_window(img, norm)
        img, lab = resize_pair(img, lab, window)
        if augment is not None:
            img, lab = augment_pair(img, lab, augment, rng)
        images.append(img)
        labels.append(lab.astype(np.int64))
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(labels))


@dataclass
class BatchSource(torch.utils.data.Dataset[Batch]):
    """The batches of a run, indexed by global step (a map-style dataset for :class:`~torch.utils.data.DataLoader`)."""

    data: TrainingData
    sampler: WindowSampler
    augment: AugmentConfig
    norm: Normalization
    batch_size: int
    window: int
    seed: int

    def __getitem__(self, step: int) -> Batch:
        rng = np.random.default_rng([self.seed, 2, step])
        return make_batch(
            self.data, self.sampler, self.sampler.regions, self.augment, self.norm, rng, self.batch_size, self.window
        )


def default_workers(device: torch.device, threads: int | None = None, *, processes: int = 1) -> int:
    """Batch-building processes when ``train.loader_workers`` is not set.

    With CUDA, up to 4 (half the CPUs, shared among the ``processes`` training on this machine:
    one per GPU in data-parallel training), so that two or more batches are always built ahead
    of the GPU. On a CPU, 1 only when a core is left over by the torch threads: on 2 cores with 2
    threads a worker competes with the model (measured: ``bench/train_speed.py``, 11.7 vs
    10.5-11.8 s per epoch, no gain), and a batch costs 4 % of a step there anyway.
    """
    cpus = max(1, cpu_count() // max(processes, 1))
    if device.type == "cuda":
        return min(4, max(1, cpus // 2))
    return 1 if cpus > (threads if threads is not None else torch.get_num_threads()) else 0


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def batch_loader(source: BatchSource, steps: range, *, workers: int, pin_memory: bool = False) -> Iterator[Batch]:
    """Yield the batches of ``steps`` in order, built by ``workers`` processes ahead of use (0: inline).

    With workers the batches of the next steps are built while the model trains on this one,
    ``2 * workers`` of them in flight; on CUDA ``pin_memory`` lets the copy to the device run
    without the host waiting for it (``non_blocking``). ``steps`` may stride (data-parallel
    ranks take every ``world``-th batch).
    """
    if workers == 0:
        for g in steps:
            x, y = source[g]
            yield (x.pin_memory(), y.pin_memory()) if pin_memory else (x, y)
        return
    loader = torch.utils.data.DataLoader(
        source,
        batch_size=None,
        sampler=steps,
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=2,
        worker_init_fn=_worker_init,
        persistent_workers=False,
        # its own generator: creating the iterator must not draw from the global torch RNG,
        # whose state (dropout) has to be the same in a resumed run and an uninterrupted one
        generator=torch.Generator().manual_seed(0),
    )
    yield from loader
