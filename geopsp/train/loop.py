"""``fit()``: train a segmentation model from a config, validate it, and write its bundles.

Outputs in the run folder (all written atomically)::

    best.safetensors        bundle of the epoch with the best validation mIoU
    last.safetensors        bundle of the last finished epoch (with last_state.* for --resume)
    last_state.safetensors  optimizer tensors and the torch RNG (no pickle)
    last_state.json         epoch, step, history, best score, optimizer scalars
    metrics.csv             one row per epoch: losses, mIoU, OA, mean F1, kappa, per-class IoU
    curves.png              loss and scores per epoch
    config.yaml             the resolved configuration (absolute paths)

The library never prints: progress goes to an optional callback.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml

from geopsp.config.schema import GeopspConfig, TrainConfig
from geopsp.device import resolve_device
from geopsp.errors import CheckpointError, ConfigError, OutputExistsError
from geopsp.eval.metrics import ConfusionMatrix, Scores
from geopsp.io.atomic import atomic_output
from geopsp.io.outdir import ensure_output_dir
from geopsp.model.meta import BundleMeta, ModelSpec, Normalization
from geopsp.train.augment import augment_pair, draw_read_size, resize_pair
from geopsp.train.datasets import Region, TrainingData, prepare_data, resolve_paths
from geopsp.train.losses import SegmentationLoss
from geopsp.train.report import write_curves, write_metrics_csv
from geopsp.train.sampling import WindowSampler, read_region_window
from geopsp.train.state import load_training_state, save_training_state
from geopsp.train.stats import compute_normalization, normalize_window

__all__ = ["OUTPUT_NAMES", "TrainEvent", "TrainResult", "build_spec", "dry_run", "fit"]

logger = logging.getLogger(__name__)

OUTPUT_NAMES = (
    "best.safetensors",
    "last.safetensors",
    "last_state.safetensors",
    "last_state.json",
    "metrics.csv",
    "curves.png",
    "config.yaml",
)
"""Files ``fit`` writes into its output folder."""


@dataclass(frozen=True, slots=True)
class TrainEvent:
    """A progress report from :func:`fit`.

    ``phase`` is ``"train"`` after each optimizer step, ``"val"`` after each validation tile
    and ``"epoch"`` when an epoch's scores are known.
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
    """What :func:`fit` produced."""

    out_dir: Path
    best: Path
    last: Path
    metrics_csv: Path
    curves: Path
    config: Path
    epochs_run: int
    best_epoch: int
    best_miou: float
    history: list[dict[str, Any]] = field(default_factory=list)
    scores: Scores | None = None
    stopped_early: bool = False


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
        counts = np.zeros(k, dtype=np.float64)
        for reg in regions:
            lab = data.readers[reg.scene].labels()[reg.row : reg.row + reg.height, reg.col : reg.col + reg.width]
            lab = lab[lab != data.mapping.ignore_index]
            counts += np.bincount(lab.ravel(), minlength=k)[:k]
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


def _lr_at(config: TrainConfig, step: int, total_steps: int, elapsed_s: float) -> float:
    o = config.optim
    progress = step / max(total_steps, 1)
    if config.max_minutes is not None:
        progress = max(progress, elapsed_s / (config.max_minutes * 60.0))
    progress = min(progress, 1.0)
    lr = float(o.lr * (1.0 - progress) ** o.poly_power)
    if o.warmup_steps and step < o.warmup_steps:
        lr *= (step + 1) / o.warmup_steps
    return max(lr, o.lr * 1e-4)


def _make_batch(
    data: TrainingData,
    sampler: WindowSampler,
    regions: list[Region],
    config: TrainConfig,
    norm: Normalization,
    rng: np.random.Generator,
    batch_size: int,
    window: int,
    *,
    augment: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    aug = config.augment
    sizes = [draw_read_size(window, aug, rng) if augment else window for _ in range(batch_size)]
    draws = sampler.sample(batch_size, rng, sizes=sizes)
    images, labels = [], []
    for d in draws:
        reg = regions[d.region]
        img, lab = read_region_window(data.readers[reg.scene], reg, d.row, d.col, d.size)
        img = normalize_window(img, norm)
        img, lab = resize_pair(img, lab, window)
        if augment:
            img, lab = augment_pair(img, lab, aug, rng)
        images.append(img)
        labels.append(lab.astype(np.int64))
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(labels))


def _tile_starts(extent: int, tile: int) -> list[tuple[int, int, int]]:
    """(read_start, core_start, core_end) along one axis: tiles of ``tile`` px covering ``extent``."""
    out = []
    nominal = 0
    while nominal < extent:
        read = max(min(nominal, extent - tile), 0)
        out.append((read, nominal, min(nominal + tile, extent)))
        nominal += tile
    return out


@torch.inference_mode()
def evaluate_regions(
    model: torch.nn.Module,
    data: TrainingData,
    regions: list[Region],
    norm: Normalization,
    loss_fn: SegmentationLoss,
    *,
    tile: int,
    device: torch.device,
    amp: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[float, ConfusionMatrix]:
    """Run ``model`` over validation regions tile by tile.

    Returns
    -------
    (loss, confusion)
        Mean main-head loss over labeled pixels, and the confusion matrix of labeled pixels.
    """
    model.eval()
    k = len(data.classes)
    cm = ConfusionMatrix(k)
    ignore = data.mapping.ignore_index
    loss_sum, loss_px = 0.0, 0
    jobs = []
    for reg in regions:
        for rr, rc0, rc1 in _tile_starts(reg.height, tile):
            for cr, cc0, cc1 in _tile_starts(reg.width, tile):
                jobs.append((reg, rr, rc0, rc1, cr, cc0, cc1))
    for n, (reg, rr, rc0, rc1, cr, cc0, cc1) in enumerate(jobs):
        th, tw = min(tile, reg.height), min(tile, reg.width)
        size = max(th, tw)
        img, lab = read_region_window(data.readers[reg.scene], reg, reg.row + rr, reg.col + cr, size)
        img = normalize_window(img, norm)
        x = torch.from_numpy(img)[None].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        logits = logits.float()[..., rc0 - rr : rc1 - rr, cc0 - cr : cc1 - cr]
        target = torch.from_numpy(lab[rc0 - rr : rc1 - rr, cc0 - cr : cc1 - cr].astype(np.int64))[None].to(device)
        labeled = int((target != ignore).sum())
        if labeled:
            loss_sum += float(loss_fn.single(logits, target)) * labeled
            loss_px += labeled
        pred = logits.argmax(1).cpu().numpy()
        cm.update(target.cpu().numpy(), pred, ignore=ignore)
        if progress is not None:
            progress(n + 1, len(jobs))
    return (loss_sum / loss_px if loss_px else math.nan), cm


def _nan_to_none(v: float) -> float | None:
    return None if v is None or math.isnan(v) else float(v)


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


def _check_out(out: Path, *, resume: bool, overwrite: bool) -> None:
    existing = [] if resume else [n for n in OUTPUT_NAMES if (out / n).exists()]
    if existing and not overwrite:
        raise OutputExistsError(
            f"{out}: already holds a training run ({', '.join(existing)}); pass --resume to continue it "
            "or --overwrite to start again"
        )
    ensure_output_dir(out)
    if overwrite:
        for n in existing:
            (out / n).unlink(missing_ok=True)


@contextlib.contextmanager
def _threads(config: TrainConfig) -> Iterator[None]:
    """Use ``config.threads`` torch threads inside the block, then restore the previous count."""
    previous = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
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
        Called with a :class:`TrainEvent` after every step, validation tile and epoch.

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
    """
    with _threads(_train_section(config)):
        return _fit(config, out, base_dir=base_dir, resume=resume, overwrite=overwrite, progress=progress)


def _fit(
    config: TrainConfig | GeopspConfig,
    out: str | os.PathLike[str] | None,
    *,
    base_dir: str | os.PathLike[str] | None,
    resume: bool,
    overwrite: bool,
    progress: ProgressFn | None,
) -> TrainResult:
    cfg = resolve_paths(_train_section(config), base_dir)
    if out is None and cfg.out is None:
        raise ConfigError("no output folder; pass out= (--out) or set train.out", key="train.out")
    out_dir = Path(out if out is not None else str(cfg.out)).resolve()
    _check_out(out_dir, resume=resume, overwrite=overwrite)
    device = resolve_device(cfg.device, key="train.device")
    amp = cfg.amp if cfg.amp is not None else device.type == "cuda"

    started = time.monotonic()
    data = prepare_data(cfg)
    k = len(data.classes)
    resume_info: dict[str, Any] | None = None
    opt_state: dict[str, Any] | None = None
    if resume:
        from geopsp.model.bundle import load_bundle

        resume_info, opt_state = load_training_state(out_dir)
        if int(resume_info["epoch"]) >= cfg.epochs:
            raise CheckpointError(
                f"{out_dir}: the run already finished {resume_info['epoch']} epochs; raise train.epochs "
                "(--set train.epochs=N) to continue it"
            )
        bundle = load_bundle(out_dir / "last.safetensors", device="cpu")
        if int(bundle.meta.provenance.get("epochs", -1)) != int(resume_info["epoch"]):
            raise CheckpointError(
                f"{out_dir}: last.safetensors (epoch {bundle.meta.provenance.get('epochs')}) and last_state.json "
                f"(epoch {resume_info['epoch']}) disagree; the run was interrupted while saving, start again"
            )
        if bundle.meta.classes.ids != data.classes.ids or bundle.meta.bands != data.bands:
            raise CheckpointError(f"{out_dir}: the run was trained with other classes or bands; start again")
        spec = bundle.meta.spec
        norm = bundle.meta.normalization
        model = bundle.model
        init_weights = bundle.meta.provenance.get("encoder_weights")  # h-weights: the first run's record
    else:
        norm = compute_normalization(
            data.readers,
            data.train,
            cfg.normalization,
            bands=len(data.bands),
            window=cfg.sampling.window,
            rng=np.random.default_rng([cfg.seed, 1]),
        )
        spec = build_spec(cfg, in_channels=len(data.bands), num_classes=k)
        from geopsp.model.pretrained import pretrained_provenance
        from geopsp.model.registry import build_model

        torch.manual_seed(cfg.seed)
        model = build_model(spec)
        init_weights = pretrained_provenance(model)  # h-weights: the encoder's weights file, if any
    model.to(device)
    optimizer = _optimizer(cfg, model)
    if opt_state is not None:
        try:
            optimizer.load_state_dict(opt_state)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointError(
                f"{out_dir}: optimizer state does not fit ({exc}); start again without --resume"
            ) from exc

    sampler = WindowSampler(
        data.readers,
        data.train,
        window=cfg.sampling.window,
        grid=cfg.sampling.grid,
        min_labeled=cfg.sampling.min_labeled,
        power=cfg.sampling.power,
        uniform=cfg.sampling.uniform,
    )
    data.warn_unknown()
    loss_fn = _loss(cfg, data, spec, data.train).to(device)
    logger.info(
        "training %s/%s on %d train and %d val regions (%s), %d classes, %d bands",
        spec.arch,
        spec.encoder,
        len(data.train),
        len(data.val),
        device,
        k,
        len(data.bands),
    )

    steps_per_epoch = math.ceil(cfg.sampling.windows_per_epoch / cfg.sampling.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    history: list[dict[str, Any]] = list(resume_info["history"]) if resume_info else []
    start_epoch = int(resume_info["epoch"]) if resume_info else 0
    global_step = int(resume_info["step"]) if resume_info else 0
    elapsed_before = float(resume_info.get("elapsed_s", 0.0)) if resume_info else 0.0
    best_miou = (
        float(resume_info["best_miou"]) if resume_info and resume_info.get("best_miou") is not None else -math.inf
    )
    best_epoch = int(resume_info.get("best_epoch", 0)) if resume_info else 0
    best_loss = math.inf
    if resume_info and resume_info.get("best_loss") is not None:
        best_loss = float(resume_info["best_loss"])
    describe = data.describe()
    config_path = out_dir / "config.yaml"
    _write_config(config_path, cfg)
    last_scores: Scores | None = None
    best_scores: Scores | None = None
    stopped_early = False
    train_started = time.monotonic()

    def elapsed() -> float:
        return elapsed_before + time.monotonic() - train_started

    epoch = start_epoch
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        model.train()
        rng = np.random.default_rng([cfg.seed, 2, epoch])
        torch.manual_seed(cfg.seed * 100003 + epoch)
        loss_sum, loss_n = 0.0, 0
        lr = cfg.optim.lr
        for step in range(1, steps_per_epoch + 1):
            x, y = _make_batch(data, sampler, data.train, cfg, norm, rng, cfg.sampling.batch_size, cfg.sampling.window)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            lr = _lr_at(cfg, global_step, total_steps, elapsed())
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                output = model(x)
            total, main = loss_fn(output, y)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            if cfg.optim.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            optimizer.step()
            global_step += 1
            value = float(main.detach())
            if not math.isfinite(value):
                raise ConfigError(
                    f"training diverged at epoch {epoch} step {step} (loss {value}); lower train.optim.lr",
                    key="train.optim.lr",
                )
            loss_sum += value
            loss_n += 1
            if progress is not None:
                progress(TrainEvent("train", epoch, cfg.epochs, step, steps_per_epoch, loss=value, lr=lr))
            if cfg.max_minutes is not None and elapsed() >= cfg.max_minutes * 60.0:
                stopped_early = True
                break
        train_loss = loss_sum / max(loss_n, 1)
        validate = data.val and (epoch % cfg.val_every == 0 or epoch == cfg.epochs or stopped_early)
        row: dict[str, Any] = {
            "epoch": epoch,
            "step": global_step,
            "lr": lr,
            "train_loss": train_loss,
            "val_loss": None,
            "val_miou": None,
            "val_oa": None,
            "val_mean_f1": None,
            "val_kappa": None,
            "val_iou": {},
        }
        improved = False
        if validate:

            def val_progress(i: int, n: int, _epoch: int = epoch) -> None:
                if progress is not None:
                    progress(TrainEvent("val", _epoch, cfg.epochs, i, n))

            val_loss, cm = evaluate_regions(
                model, data, data.val, norm, loss_fn, tile=cfg.val_tile, device=device, amp=amp, progress=val_progress
            )
            last_scores = cm.scores(data.classes)
            row.update(
                val_loss=_nan_to_none(val_loss),
                val_miou=_nan_to_none(last_scores.miou),
                val_oa=_nan_to_none(last_scores.overall_accuracy),
                val_mean_f1=_nan_to_none(last_scores.mean_f1),
                val_kappa=_nan_to_none(last_scores.kappa),
                val_iou={c.name: _nan_to_none(c.iou) for c in last_scores.classes},
            )
            miou = last_scores.miou if not math.isnan(last_scores.miou) else -math.inf
            if miou > best_miou:
                best_miou, best_epoch, improved = miou, epoch, True
                best_scores = last_scores
        elif not data.val and train_loss < best_loss:
            best_loss, best_epoch, improved = train_loss, epoch, True
        row["seconds"] = round(elapsed(), 1)
        history.append(row)

        provenance = {
            "geopsp_version": _version(),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "data": {
                "root": cfg.data.root,
                "layout": cfg.data.layout,
                "train_scenes": describe["train_scenes"],
                "val_scenes": describe["val_scenes"],
            },
            "epochs": epoch,
            "steps": global_step,
            "seed": cfg.seed,
            "preset": cfg.model.preset,
            "encoder_weights": init_weights,  # h-weights
            "metrics": _metrics_for_provenance(row),
            "train_config": cfg.model_dump(mode="json"),
        }
        meta = _bundle_meta(cfg, data, spec, norm, provenance)
        from geopsp.model.bundle import save_bundle

        if improved:
            save_bundle(model, meta, out_dir / "best.safetensors", overwrite=True)
        save_bundle(model, meta, out_dir / "last.safetensors", overwrite=True)
        save_training_state(
            out_dir,
            optimizer=optimizer,
            info={
                "epoch": epoch,
                "step": global_step,
                "elapsed_s": elapsed(),
                "best_miou": None if best_miou == -math.inf else best_miou,
                "best_epoch": best_epoch,
                "best_loss": None if best_loss == math.inf else best_loss,
                "history": history,
            },
        )
        write_metrics_csv(out_dir / "metrics.csv", history, data.classes.names)
        write_curves(out_dir / "curves.png", history, title=f"{spec.arch} / {spec.encoder}")
        if progress is not None:
            progress(
                TrainEvent(
                    "epoch",
                    epoch,
                    cfg.epochs,
                    steps_per_epoch,
                    steps_per_epoch,
                    loss=train_loss,
                    lr=lr,
                    val_loss=row["val_loss"],
                    val_miou=row["val_miou"],
                    best_miou=None if best_miou == -math.inf else best_miou,
                )
            )
        logger.info(
            "epoch %d/%d: train loss %.4f, val loss %s, val mIoU %s",
            epoch,
            cfg.epochs,
            train_loss,
            _fmt(row["val_loss"]),
            _fmt(row["val_miou"]),
        )
        if stopped_early:
            logger.info("time budget of %.1f min spent after epoch %d", cfg.max_minutes or 0, epoch)
            break

    logger.info("finished in %.1f s; best mIoU %s at epoch %d", time.monotonic() - started, _fmt(best_miou), best_epoch)
    return TrainResult(
        out_dir=out_dir,
        best=out_dir / "best.safetensors",
        last=out_dir / "last.safetensors",
        metrics_csv=out_dir / "metrics.csv",
        curves=out_dir / "curves.png",
        config=config_path,
        epochs_run=epoch - start_epoch,
        best_epoch=best_epoch,
        best_miou=best_miou if best_miou != -math.inf else math.nan,
        history=history,
        scores=best_scores or last_scores,
        stopped_early=stopped_early,
    )


def _fmt(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.4f}"


def _metrics_for_provenance(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "train_loss": row["train_loss"] if math.isfinite(row["train_loss"]) else None,
        "val_loss": row["val_loss"],
        "val_miou": row["val_miou"],
        "val_oa": row["val_oa"],
        "val_mean_f1": row["val_mean_f1"],
        "val_kappa": row["val_kappa"],
        "val_iou": row["val_iou"],
    }


def _version() -> str:
    from geopsp import __version__

    return __version__


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
    with _threads(_train_section(config)):
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
        "labeled_fraction": float((y != cfg.ignore_index).float().mean()),
    }
