"""``fit()``: train a segmentation model from a config, validate it, and write its bundles.

Outputs in the run folder (all written atomically)::

    model.safetensors       the weights the run keeps (train.select: best, last or ema)
    best.safetensors        bundle of the best validated weights (raw or EMA) after train.min_epochs
    last.safetensors        bundle of the last finished epoch (with last_state.* for --resume)
    ema.safetensors         the moving average of the weights at the last epoch (train.ema_decay)
    last_state.safetensors  optimizer tensors and the torch RNG (no pickle)
    last_state.json         epoch, step, history, best score, optimizer scalars
    metrics.csv             one row per epoch: losses, mIoU, OA, mean F1, kappa, per-class IoU
    curves.png              loss and scores per epoch
    config.yaml             the resolved configuration (absolute paths)
    train_summary.json      which weights were kept and why, their validation scores (written last)

The library never prints: progress goes to an optional callback.

Under ``torchrun`` (or :func:`~geopsp.train.distributed.launch`) each process is one rank of a
data-parallel run (see :mod:`geopsp.train.trainer`); rank 0 alone writes these files, and
:func:`fit` returns on every rank once they are complete.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml

from geopsp.config.schema import GeopspConfig, TrainConfig
from geopsp.device import cpu_count
from geopsp.errors import ConfigError, OutputExistsError
from geopsp.eval.metrics import Scores
from geopsp.io.atomic import atomic_output
from geopsp.io.outdir import ensure_output_dir
from geopsp.model.meta import BundleMeta, ModelSpec, Normalization
from geopsp.train.augment import augment_pair
from geopsp.train.checks import check_training_data, class_pixel_counts
from geopsp.train.datasets import Region, TrainingData, prepare_data, resolve_paths
from geopsp.train.distributed import Ranks, barrier, join_process_group
from geopsp.train.losses import SegmentationLoss
from geopsp.train.sampling import read_region_window
from geopsp.train.stats import compute_normalization, normalize_window
from geopsp.train.trainer import SUMMARY_NAME, Trainer

__all__ = ["OUTPUT_NAMES", "TrainEvent", "TrainResult", "build_spec", "dry_run", "fit"]

logger = logging.getLogger(__name__)

OUTPUT_NAMES = (
    "model.safetensors",
    "best.safetensors",
    "last.safetensors",
    "ema.safetensors",
    "last_state.safetensors",
    "last_state.json",
    "metrics.csv",
    "curves.png",
    "config.yaml",
    "train_summary.json",
)
"""Files ``fit`` writes into its output folder."""


@dataclass(frozen=True, slots=True)
class TrainEvent:
    """A progress report from :func:`fit`.

    ``phase`` is ``"train"`` every ``train.log_every`` optimizer steps and after an epoch's last
    one (``loss`` is then the mean main-head loss of the steps since the previous report, over
    all ranks), ``"val"`` after each batch of validation tiles (``step`` of ``steps`` tiles of
    this rank) and ``"epoch"`` when an epoch's scores are known and its files written.
    """

    phase: Literal["train", "val", "epoch"]
    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float | None = None
    lr: float | None = None
    val_loss: float | None = None
    val_miou: float | None = None
    best_miou: float | None = None


@dataclass
class TrainResult:
    """What :func:`fit` produced.

    ``model`` is the kept weights (``train.select``); ``kept`` names the file they were copied
    from and ``reason`` says why, in one sentence. ``scores`` are the kept weights' validation
    scores at the epoch they were validated (None without validation).
    """

    out_dir: Path
    model: Path
    best: Path
    last: Path
    metrics_csv: Path
    curves: Path
    config: Path
    summary: Path
    epochs_run: int
    best_epoch: int
    best_miou: float
    history: list[dict[str, Any]] = field(default_factory=list)
    scores: Scores | None = None
    stopped_early: bool = False
    kept: str = ""
    reason: str = ""


ProgressFn = Callable[[TrainEvent], None]


# --------------------------------------------------------------------------- helpers


def _train_section(config: TrainConfig | GeopspConfig) -> TrainConfig:
    return config.train if isinstance(config, GeopspConfig) else config


def build_spec(config: TrainConfig, *, in_channels: int, num_classes: int) -> ModelSpec:
    """Return the model spec of a config: its preset with the non-null overrides applied."""
    from geopsp.model.registry import spec_from_preset

    m = config.model
    overrides = {k: v for k, v in m.model_dump().items() if k not in ("preset", "encoder") and v is not None}
    if "ppm_bins" in overrides:
        overrides["ppm_bins"] = tuple(overrides["ppm_bins"])
    return spec_from_preset(m.preset, encoder=m.encoder, in_channels=in_channels, num_classes=num_classes, **overrides)


def _class_weights(config: TrainConfig, data: TrainingData, regions: Sequence[Region]) -> list[float] | None:
    cw = config.optim.class_weights
    k = len(data.classes)
    if cw is None:
        return None
    if cw == "balanced":
        counts = class_pixel_counts(data, regions).astype(np.float64)
        freq = counts / max(counts.sum(), 1.0)
        w = np.where(freq > 0, 1.0 / np.sqrt(np.maximum(freq, 1e-12)), 0.0)
        w = w / w[w > 0].mean() if (w > 0).any() else np.ones(k)
        return [float(v) for v in w]
    if len(cw) != k:
        raise ConfigError(f"{len(cw)} class weights for {k} classes", key="train.optim.class_weights")
    return [float(v) for v in cw]


def _loss(config: TrainConfig, data: TrainingData, spec: ModelSpec, regions: Sequence[Region]) -> SegmentationLoss:
    """Build the loss of a run, checking its class weights against the classes (fit and the dry run alike).

    ``balanced`` weights count the labels of ``regions``: the training regions, or the dry
    run's subsample of them.
    """
    return SegmentationLoss(
        config.optim.loss,
        ignore_index=config.ignore_index,
        class_weights=_class_weights(config, data, regions),
        aux_weight=spec.aux_weight if spec.aux else 0.0,
        focal_gamma=config.optim.focal_gamma,
        label_smoothing=config.optim.label_smoothing,
    )


def _optimizer(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    o = config.optim
    params = [p for p in model.parameters() if p.requires_grad]
    if o.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


def _write_config(path: Path, config: TrainConfig) -> None:
    text = "# Resolved by geopsp train; paths are absolute.\n" + yaml.safe_dump(
        {"train": config.model_dump(mode="json")}, sort_keys=False
    )
    with atomic_output(path, overwrite=True) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _bundle_meta(
    config: TrainConfig,
    data: TrainingData,
    spec: ModelSpec,
    norm: Normalization,
    provenance: dict[str, Any],
) -> BundleMeta:
    window = config.sampling.window
    tile = config.tile_size or min(max(2 * window, 256), 2048)
    overlap = config.overlap if config.overlap is not None else tile // 8
    if overlap * 2 >= tile:
        raise ConfigError(f"overlap {overlap} must be less than half of tile_size {tile}", key="train.overlap")
    nodata = 255 if data.classes.max_id < 255 else 65535
    return BundleMeta(
        spec=spec,
        classes=data.classes,
        bands=data.bands,
        band_names=data.band_names,
        input_dtype=data.input_dtype,
        normalization=norm,
        pixel_size=data.pixel_size,
        tile_size=tile,
        overlap=overlap,
        ignore_index=config.ignore_index,
        nodata=nodata,
        provenance=provenance,
    )


def _check_out(out: Path, *, resume: bool, overwrite: bool, writer: bool = True) -> None:
    """Refuse a folder holding a run unless resuming or overwriting; prepare it (``writer``: rank 0 only)."""
    existing = [] if resume else [n for n in OUTPUT_NAMES if (out / n).exists()]
    if existing and not overwrite:
        raise OutputExistsError(
            f"{out}: already holds a training run ({', '.join(existing)}); pass --resume to continue it "
            "or --overwrite to start again"
        )
    if not writer:
        return
    ensure_output_dir(out)
    if overwrite:
        for n in existing:
            (out / n).unlink(missing_ok=True)


@contextlib.contextmanager
def _threads(config: TrainConfig, ranks: Ranks) -> Iterator[None]:
    """Use ``config.threads`` torch threads inside the block, then restore the previous count.

    Unset (and without ``OMP_NUM_THREADS``, which torchrun sets), several training processes on
    one machine share its CPUs.
    """
    previous = torch.get_num_threads()
    threads = config.threads
    if threads is None and ranks.local_world > 1 and not os.environ.get("OMP_NUM_THREADS"):
        threads = max(1, cpu_count() // ranks.local_world)
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# --------------------------------------------------------------------------- fit


def fit(
    config: TrainConfig | GeopspConfig,
    out: str | os.PathLike[str] | None = None,
    *,
    base_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
) -> TrainResult:
    """Train a model as ``config`` describes and write its bundles and records to ``out``.

    Parameters
    ----------
    config : TrainConfig or GeopspConfig
        The ``train`` section (or the whole config).
    out : path, optional
        Output folder (default: ``config.out``).
    base_dir : path, optional
        Folder that relative paths in the config are relative to (the config file's folder);
        default: the working directory.
    resume : bool, default False
        Continue from ``out/last.safetensors`` and ``out/last_state.*``.
    overwrite : bool, default False
        Replace an existing run in ``out``.
    progress : callable, optional
        Called with a :class:`TrainEvent` every ``train.log_every`` steps, after each batch of
        validation tiles and after each epoch (on every rank of a data-parallel run).

    Returns
    -------
    TrainResult

    Raises
    ------
    ConfigError
        For an invalid or incomplete config (checked before any training).
    OutputExistsError
        If ``out`` holds a run and neither ``resume`` nor ``overwrite`` is set.
    CheckpointError
        If ``resume`` finds no usable state.

    Notes
    -----
    In a process started by ``torchrun`` (``WORLD_SIZE`` > 1) ``fit`` trains as one rank of a
    data-parallel run: it joins the process group (NCCL on ``cuda:LOCAL_RANK``, gloo on the
    CPU) unless one exists, and keeps it for the process's later runs.
    """
    ranks = Ranks.current()
    with _threads(_train_section(config), ranks):
        return _fit(config, out, base_dir=base_dir, resume=resume, overwrite=overwrite, progress=progress, ranks=ranks)


def _fit(
    config: TrainConfig | GeopspConfig,
    out: str | os.PathLike[str] | None,
    *,
    base_dir: str | os.PathLike[str] | None,
    resume: bool,
    overwrite: bool,
    progress: ProgressFn | None,
    ranks: Ranks,
) -> TrainResult:
    cfg = resolve_paths(_train_section(config), base_dir)
    if out is None and cfg.out is None:
        raise ConfigError("no output folder; pass out= (--out) or set train.out", key="train.out")
    out_dir = Path(out if out is not None else str(cfg.out)).resolve()
    started = time.monotonic()

    def event(phase: Literal["train", "val", "epoch"], epoch: int, step: int, steps: int, **values: Any) -> None:
        if progress is not None:
            progress(TrainEvent(phase, epoch, cfg.epochs, step, steps, **values))

    trainer = Trainer(
        cfg,
        out_dir,
        build_spec=lambda bands, classes: build_spec(cfg, in_channels=bands, num_classes=classes),
        build_meta=lambda data, spec, norm, prov: _bundle_meta(cfg, data, spec, norm, prov),
        make_loss=lambda data, spec: _loss(cfg, data, spec, data.train),
        make_optimizer=lambda model: _optimizer(cfg, model),
        event=event,
        ranks=ranks,
    )
    config_path = out_dir / "config.yaml"
    join_process_group(ranks, trainer.device)
    _check_out(out_dir, resume=resume, overwrite=overwrite, writer=ranks.main)
    barrier(ranks, trainer.device)
    trainer.setup(resume=resume)
    start_epoch = trainer.state.epoch
    if ranks.main:
        _write_config(config_path, cfg)
    trainer.run()
    summary = trainer.finish()
    st = trainer.state
    logger.info(
        "finished in %.1f s; best %s %s at epoch %d",
        time.monotonic() - started,
        cfg.select_metric,
        _fmt(st.best_score),
        st.best_epoch,
    )
    kept = trainer.kept
    return TrainResult(
        out_dir=out_dir,
        model=out_dir / "model.safetensors",
        best=out_dir / "best.safetensors",
        last=out_dir / "last.safetensors",
        metrics_csv=out_dir / "metrics.csv",
        curves=out_dir / "curves.png",
        config=config_path,
        summary=out_dir / SUMMARY_NAME,
        epochs_run=st.epoch - start_epoch,
        best_epoch=st.best_epoch,
        best_miou=st.best_score if st.best_score is not None else math.nan,
        history=st.history,
        scores=kept.scores if kept is not None else None,
        stopped_early=trainer.stopped_early,
        kept=str(summary["kept"]),
        reason=str(summary["reason"]),
    )


def _fmt(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.4f}"


# --------------------------------------------------------------------------- dry run


def dry_run(
    config: TrainConfig | GeopspConfig,
    *,
    base_dir: str | os.PathLike[str] | None = None,
    window: int = 64,
    batch_size: int = 2,
) -> dict[str, Any]:
    """Check a training config end to end without writing anything.

    Resolves the data, computes the split and normalization statistics on a tiny subsample,
    builds the model, and runs one forward/backward pass on one tiny batch with the loss
    :func:`fit` would use (its class weights checked, ``balanced`` ones counted on the subsample).

    Returns
    -------
    dict
        Summary: scenes, split, bands, classes, normalization, model spec, loss value.

    Raises
    ------
    ConfigError, InputRasterError, InputVectorError, ModelError
        Whatever a real run would raise at start.
    """
    with _threads(_train_section(config), Ranks()):
        return _dry_run(config, base_dir=base_dir, window=window, batch_size=batch_size)


def _dry_run(
    config: TrainConfig | GeopspConfig,
    *,
    base_dir: str | os.PathLike[str] | None,
    window: int,
    batch_size: int,
) -> dict[str, Any]:
    from geopsp.model.registry import build_model

    cfg = resolve_paths(_train_section(config), base_dir)
    data = prepare_data(cfg)
    train_small = [r for r in data.train if r.scene == data.train[0].scene][:1]
    win = min(window, cfg.sampling.window)
    rng = np.random.default_rng(cfg.seed)
    norm = compute_normalization(
        data.readers,
        train_small,
        cfg.normalization.model_copy(update={"windows": 2}),
        bands=len(data.bands),
        window=win,
        rng=rng,
    )
    spec = build_spec(cfg, in_channels=len(data.bands), num_classes=len(data.classes))
    torch.manual_seed(cfg.seed)
    model = build_model(spec)
    model.train()
    images, labels = [], []
    reg = train_small[0]
    reader = data.readers[reg.scene]
    for _ in range(batch_size):
        row = reg.row + int(rng.integers(0, max(reg.height - win, 0) + 1))
        col = reg.col + int(rng.integers(0, max(reg.width - win, 0) + 1))
        img, lab = read_region_window(reader, reg, row, col, win)
        img, lab = augment_pair(normalize_window(img, norm), lab, cfg.augment, rng)
        images.append(img)
        labels.append(lab.astype(np.int64))
    x, y = torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(labels))
    loss_fn = _loss(cfg, data, spec, train_small)
    optimizer = _optimizer(cfg, model)
    total, _ = loss_fn(model(x), y)
    optimizer.zero_grad()
    total.backward()
    optimizer.step()
    _bundle_meta(cfg, data, spec, norm, {})  # validates tile/overlap and band/class consistency
    data.warn_unknown()
    return {
        **data.describe(),
        "normalization": norm.to_dict(),
        "spec": spec.to_dict(),
        "loss": float(total.detach()),
        "data_checks": check_training_data(data).as_dict(),
        "labeled_fraction": float((y != cfg.ignore_index).float().mean()),
    }
