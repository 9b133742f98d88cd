"""The training loop: a :class:`Trainer` that moves a :class:`TrainState` forward one epoch at a time.

The config is read once, in :meth:`Trainer.__init__`; the parts below it get plain values. An
epoch is ``windows_per_epoch / batch_size`` optimizer steps on batches built ahead of the model
(:mod:`geopsp.train.batches`), then (every ``val_every`` epochs) a validation of the raw weights
and of their moving average (:mod:`geopsp.train.ema`), then the checkpoints. Which weights a run
keeps as ``model.safetensors`` is ``train.select``; the reason is logged and written to the run
summary.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geopsp.config.schema import TrainConfig
from geopsp.device import resolve_device
from geopsp.errors import CheckpointError, TrainingDivergedError, TrainingWarning
from geopsp.eval.metrics import Scores
from geopsp.io.atomic import atomic_output
from geopsp.model.meta import BundleMeta, ModelSpec, Normalization
from geopsp.train.amp import AmpChoice, choose_amp
from geopsp.train.batches import BatchSource, batch_loader, default_workers
from geopsp.train.checks import check_training_data
from geopsp.train.datasets import TrainingData, prepare_data
from geopsp.train.ema import WeightAverage
from geopsp.train.evaluation import evaluate_regions
from geopsp.train.losses import SegmentationLoss
from geopsp.train.report import write_curves, write_metrics_csv
from geopsp.train.sampling import WindowSampler
from geopsp.train.schedule import Schedule
from geopsp.train.selection import Candidate, choose_weights, finite_or_none, history_summary, scores_summary
from geopsp.train.state import TrainState, Weights, load_training_state, save_training_state
from geopsp.train.stats import compute_normalization

__all__ = ["SUMMARY_NAME", "Trainer"]

logger = logging.getLogger(__name__)

SUMMARY_NAME = "train_summary.json"
"""The run summary ``fit`` writes last: which weights were kept and why, their validation scores."""

EventFn = Callable[..., None]


def _row_scores(prefix: str, loss: float, scores: Scores) -> dict[str, Any]:
    return {
        f"{prefix}_loss": finite_or_none(loss),
        f"{prefix}_miou": finite_or_none(scores.miou_reference_classes),
        f"{prefix}_oa": finite_or_none(scores.overall_accuracy),
        f"{prefix}_mean_f1": finite_or_none(scores.mean_f1_reference_classes),
        f"{prefix}_kappa": finite_or_none(scores.kappa),
        f"{prefix}_iou": {c.name: finite_or_none(c.iou) for c in scores.classes},
        f"{prefix}_f1": {c.name: finite_or_none(c.f1) for c in scores.classes},
    }


class Trainer:
    """One training run of a path-resolved config into ``out_dir``.

    Parameters
    ----------
    config : TrainConfig
        With absolute paths.
    out_dir : Path
        The run folder (checked by the caller).
    event : callable, optional
        ``event(phase, epoch, step, steps, **values)`` progress callback.
    build_meta : callable
        ``build_meta(data, spec, norm, provenance) -> BundleMeta``.
    """

    def __init__(
        self,
        config: TrainConfig,
        out_dir: Path,
        *,
        build_spec: Callable[[int, int], ModelSpec],
        build_meta: Callable[[TrainingData, ModelSpec, Normalization, dict[str, Any]], BundleMeta],
        make_loss: Callable[[TrainingData, ModelSpec], SegmentationLoss],
        make_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer],
        event: EventFn | None = None,
    ) -> None:
        self.config = config
        self.out_dir = out_dir
        self._build_spec = build_spec
        self._build_meta = build_meta
        self._make_loss = make_loss
        self._make_optimizer = make_optimizer
        self._event = event
        c = config
        self.device = resolve_device(c.device, key="train.device")
        self.epochs = c.epochs
        self.window = c.sampling.window
        self.batch_size = c.sampling.batch_size
        self.steps_per_epoch = math.ceil(c.sampling.windows_per_epoch / c.sampling.batch_size)
        self.val_every = c.val_every
        self.val_tile = c.val_tile
        self.seed = c.seed
        self.budget_s = c.max_minutes * 60.0 if c.max_minutes is not None else None
        self.select = c.select if c.ema_decay is not None or c.select != "ema" else "last"
        self.select_metric = c.select_metric
        self.min_epochs = c.min_epochs if c.min_epochs is not None else max(1, math.ceil(c.epochs / 4))
        self.ema_decay = c.ema_decay
        self.channels_last = c.channels_last
        self.workers = c.loader_workers if c.loader_workers is not None else default_workers(self.device, c.threads)
        self.grad_clip = c.optim.grad_clip
        self.schedule = Schedule.of(c, self.steps_per_epoch * c.epochs)
        self.state = TrainState()
        self.stopped_early = False
        self.amp = AmpChoice(False, "not decided")
        self.best: Candidate | None = None
        self.last: dict[Weights, Candidate] = {}

    # ------------------------------------------------------------------ setup

    def setup(self, *, resume: bool) -> None:
        """Read the data; build or restore the model, optimizer, average and state."""
        from geopsp.model.bundle import load_bundle
        from geopsp.model.pretrained import pretrained_provenance
        from geopsp.model.registry import build_model

        c = self.config
        self.data = data = prepare_data(c)
        opt_state: dict[str, Any] | None = None
        ema_state: dict[str, torch.Tensor] | None = None
        if resume:
            info, opt_state = load_training_state(self.out_dir)
            self.state = TrainState.from_info(info)
            if self.state.epoch >= c.epochs:
                raise CheckpointError(
                    f"{self.out_dir}: the run already finished {self.state.epoch} epochs; raise train.epochs "
                    "(--set train.epochs=N) to continue it"
                )
            bundle = load_bundle(self.out_dir / "last.safetensors", device="cpu")
            if int(bundle.meta.provenance.get("epochs", -1)) != self.state.epoch:
                raise CheckpointError(
                    f"{self.out_dir}: last.safetensors (epoch {bundle.meta.provenance.get('epochs')}) and "
                    f"last_state.json (epoch {self.state.epoch}) disagree; the run was interrupted while saving, "
                    "start again"
                )
            if bundle.meta.classes.ids != data.classes.ids or bundle.meta.bands != data.bands:
                raise CheckpointError(f"{self.out_dir}: the run was trained with other classes or bands; start again")
            self.spec, self.norm, model = bundle.meta.spec, bundle.meta.normalization, bundle.model
            self.init_weights = bundle.meta.provenance.get("encoder_weights")  # the first session's record
            if self.ema_decay is not None:
                ema_path = self.out_dir / "ema.safetensors"
                if not ema_path.exists():
                    raise CheckpointError(f"{ema_path}: missing; the run was trained without EMA, start again")
                ema_state = load_bundle(ema_path, device="cpu").model.state_dict()
        else:
            self.norm = compute_normalization(
                data.readers,
                data.train,
                c.normalization,
                bands=len(data.bands),
                window=self.window,
                rng=np.random.default_rng([self.seed, 1]),
            )
            self.spec = self._build_spec(len(data.bands), len(data.classes))
            torch.manual_seed(self.seed)
            model = build_model(self.spec)
            self.init_weights = pretrained_provenance(model)  # the encoder's weights file, if any
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.optimizer = self._make_optimizer(model)
        if opt_state is not None:
            try:
                self.optimizer.load_state_dict(opt_state)
            except (ValueError, KeyError, RuntimeError) as exc:
                raise CheckpointError(
                    f"{self.out_dir}: optimizer state does not fit ({exc}); start again without --resume"
                ) from exc
        if self.channels_last:
            _match_param_layout(self.optimizer)
        self.ema = WeightAverage(model, self.ema_decay) if self.ema_decay is not None else None
        if self.ema is not None and ema_state is not None:
            self.ema.load(ema_state, self.state.ema_updates)
        s = c.sampling
        self.sampler = WindowSampler(
            data.readers,
            data.train,
            window=self.window,
            grid=s.grid,
            min_labeled=s.min_labeled,
            power=s.power,
            uniform=s.uniform,
            rare=s.rare,
        )
        self.source = BatchSource(data, self.sampler, c.augment, self.norm, self.batch_size, self.window, self.seed)
        data.warn_unknown()
        self.data_report = check_training_data(data)
        self.loss_fn = self._make_loss(data, self.spec).to(self.device)
        self.amp = self._decide_amp()
        self.describe = data.describe()
        logger.info(
            "training %s/%s on %d train and %d val regions (%s, %s, %d loader workers), %d classes, %d bands",
            self.spec.arch,
            self.spec.encoder,
            len(data.train),
            len(data.val),
            self.device,
            "bf16" if self.amp.enabled else "fp32",
            self.workers,
            len(data.classes),
            len(data.bands),
        )

    def _decide_amp(self) -> AmpChoice:
        if self.state.amp is not None:  # a resumed run keeps its precision
            return AmpChoice(bool(self.state.amp["bf16"]), "kept from the run being resumed")
        x, y = self._to_device(*self.source[0])

        def step(model: torch.nn.Module, opt: torch.optim.Optimizer, amp: bool) -> None:
            model.train()
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=amp):
                out = model(x)
            total, _ = self.loss_fn(out, y)
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)

        choice = choose_amp(
            self.config.amp, self.device, model=self.model, make_optimizer=self._make_optimizer, step=step
        )
        self.state.amp = choice.as_dict()
        return choice

    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)

    # ------------------------------------------------------------------ the loop

    def elapsed(self) -> float:
        """Seconds of training, over all sessions of a resumed run."""
        return self._elapsed_before + time.monotonic() - self._started

    def run(self) -> None:
        """Train from ``state.epoch + 1`` to ``epochs`` (or until the time cap)."""
        self._elapsed_before = self.state.elapsed_s
        self._started = time.monotonic()
        first = self.state.step
        steps = range(first, self.steps_per_epoch * self.epochs)
        batches = batch_loader(self.source, steps, workers=self.workers, pin_memory=self.device.type == "cuda")
        try:
            for epoch in range(self.state.epoch + 1, self.epochs + 1):
                train_loss, lr = self._train_epoch(epoch, batches)
                row = self._validate(epoch, train_loss, lr)
                self._checkpoint(epoch, row)
                if self.stopped_early and self.config.budget == "guard":
                    warnings.warn(
                        f"the time cap of {self.config.max_minutes:g} min (train.max_minutes) stopped the run after "
                        f"epoch {epoch} of {self.epochs}, before its schedule ended; raise the cap or lower "
                        "train.epochs for a complete run",
                        TrainingWarning,
                        stacklevel=2,
                    )
                if self.stopped_early:
                    logger.info("time budget of %.1f min spent after epoch %d", (self.budget_s or 0.0) / 60.0, epoch)
                    break
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()

    def _train_epoch(self, epoch: int, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
        model, optimizer = self.model, self.optimizer
        model.train()
        torch.manual_seed(self.seed * 100003 + epoch)
        loss_sum, loss_n = 0.0, 0
        lr = self.schedule.base
        for step in range(1, self.steps_per_epoch + 1):
            x, y = self._to_device(*next(batches))
            lr = self.schedule.lr(self.state.step, self.elapsed())
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp.enabled):
                output = model(x)
            total, main = self.loss_fn(output, y)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            if self.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip)
            optimizer.step()
            if self.ema is not None:
                self.ema.update(model)
            self.state.step += 1
            value = float(main.detach())
            if not math.isfinite(value):
                raise TrainingDivergedError(
                    f"training diverged at epoch {epoch} step {step}: the loss is {value}; lower train.optim.lr "
                    f"(now {self.schedule.base:g}), set train.optim.grad_clip, or train with train.amp=false"
                )
            loss_sum += value
            loss_n += 1
            self._emit("train", epoch, step, self.steps_per_epoch, loss=value, lr=lr)
            if self.budget_s is not None and self.elapsed() >= self.budget_s:
                self.stopped_early = True
                break
        return loss_sum / max(loss_n, 1), lr

    def _validate(self, epoch: int, train_loss: float, lr: float) -> dict[str, Any]:
        data, st = self.data, self.state
        row: dict[str, Any] = {"epoch": epoch, "step": st.step, "lr": lr, "train_loss": train_loss}
        for key in ("val_loss", "val_miou", "val_oa", "val_mean_f1", "val_kappa"):
            row[key] = None
        row["val_iou"], row["val_f1"] = {}, {}
        validate = bool(data.val) and (epoch % self.val_every == 0 or epoch == self.epochs or self.stopped_early)
        row["improved"] = False
        if validate:
            models: list[tuple[Weights, torch.nn.Module]] = [("raw", self.model)]
            if self.ema is not None:
                models.append(("ema", self.ema.module))
            for name, model in models:

                def val_progress(i: int, n: int, _epoch: int = epoch) -> None:
                    self._emit("val", _epoch, i, n)

                loss, cm = evaluate_regions(
                    model,
                    data,
                    data.val,
                    self.norm,
                    self.loss_fn,
                    tile=self.val_tile,
                    device=self.device,
                    amp=self.amp.enabled,
                    channels_last=self.channels_last,
                    progress=val_progress,
                )
                cand = Candidate(name, epoch, cm.scores(data.classes), loss)
                self.last[name] = cand
                row.update(_row_scores("val" if name == "raw" else "ema_val", loss, cand.scores))
                score = cand.score(self.select_metric)
                best = st.best_score if st.best_score is not None else -math.inf
                if epoch >= self.min_epochs and score > best:
                    st.best_score, st.best_epoch, st.best_weights = score, epoch, name
                    self.best = cand
                    row["improved"] = name
        elif not data.val and (st.best_loss is None or train_loss < st.best_loss) and epoch >= self.min_epochs:
            st.best_loss, st.best_epoch, st.best_weights = train_loss, epoch, "raw"
            row["improved"] = "raw"
        row["seconds"] = round(self.elapsed(), 1)
        return row

    # ------------------------------------------------------------------ saving

    def _provenance(self, epoch: int, row: dict[str, Any], weights: Weights) -> dict[str, Any]:
        from geopsp import __version__

        c = self.config
        prefix = "val" if weights == "raw" else "ema_val"
        metrics = {
            "train_loss": row["train_loss"] if math.isfinite(row["train_loss"]) else None,
            **{f"val_{k}": row.get(f"{prefix}_{k}") for k in ("loss", "miou", "oa", "mean_f1", "kappa", "iou", "f1")},
        }
        return {
            "geopsp_version": __version__,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "data": {
                "root": c.data.root,
                "layout": c.data.layout,
                "train_scenes": self.describe["train_scenes"],
                "val_scenes": self.describe["val_scenes"],
            },
            "epochs": epoch,
            "steps": self.state.step,
            "seed": c.seed,
            "preset": c.model.preset,
            "encoder_weights": self.init_weights,
            "weights": "moving average (EMA)" if weights == "ema" else "raw",
            "metrics": metrics,
            "train_config": c.model_dump(mode="json"),
        }

    def _save(self, model: torch.nn.Module, name: str, epoch: int, row: dict[str, Any], weights: Weights) -> None:
        from geopsp.model.bundle import save_bundle

        meta = self._build_meta(self.data, self.spec, self.norm, self._provenance(epoch, row, weights))
        save_bundle(model, meta, self.out_dir / name, overwrite=True)

    def _checkpoint(self, epoch: int, row: dict[str, Any]) -> None:
        st = self.state
        improved = row.pop("improved")
        st.history.append(row)
        st.epoch = epoch
        if improved:
            best_model = self.model if improved == "raw" or self.ema is None else self.ema.module
            self._save(best_model, "best.safetensors", epoch, row, improved)
        self._save(self.model, "last.safetensors", epoch, row, "raw")
        if self.ema is not None:
            self._save(self.ema.module, "ema.safetensors", epoch, row, "ema")
            st.ema_updates = self.ema.updates
        st.elapsed_s = self.elapsed()
        save_training_state(self.out_dir, optimizer=self.optimizer, info=st.to_info())
        write_metrics_csv(self.out_dir / "metrics.csv", st.history, self.data.classes.names)
        write_curves(self.out_dir / "curves.png", st.history, title=f"{self.spec.arch} / {self.spec.encoder}")
        self._emit(
            "epoch",
            epoch,
            self.steps_per_epoch,
            self.steps_per_epoch,
            loss=row["train_loss"],
            lr=row["lr"],
            val_loss=row["val_loss"],
            val_miou=row["val_miou"],
            best_miou=st.best_score,
        )
        logger.info(
            "epoch %d/%d: train loss %.4f, val loss %s, val mIoU %s%s",
            epoch,
            self.epochs,
            row["train_loss"],
            _fmt(row["val_loss"]),
            _fmt(row["val_miou"]),
            f", EMA val mIoU {_fmt(row.get('ema_val_miou'))}" if "ema_val_miou" in row else "",
        )

    # ------------------------------------------------------------------ selection

    def finish(self) -> dict[str, Any]:
        """Copy the kept weights to ``model.safetensors`` and write the run summary; return it."""
        kind, path, reason = choose_weights(
            self.select,
            self.state,
            self.out_dir,
            min_epochs=self.min_epochs,
            select_metric=self.select_metric,
            ema_decay=self.ema_decay,
            configured=self.config.select,
        )
        model_path = self.out_dir / "model.safetensors"
        with atomic_output(model_path, overwrite=True) as tmp:
            shutil.copyfile(path, tmp)
        kept: Candidate | None
        if kind == "best":
            kept = self.best
        else:
            kept = self.last.get(kind)
        weights = kind if kind != "best" else (self.state.best_weights or "raw")
        epoch = self.state.best_epoch if kind == "best" else self.state.epoch
        validation = scores_summary(kept.scores) if kept is not None else history_summary(self.state, epoch, weights)
        logger.info("kept %s as model.safetensors: %s", path.name, reason)
        summary: dict[str, Any] = {
            "schema": "geopsp.train-summary/1",
            "model": str(model_path),
            "kept": path.name,
            "weights": weights,
            "reason": reason,
            "epochs": self.state.epoch,
            "steps": self.state.step,
            "seconds": round(self.state.elapsed_s, 1),
            "stopped_early": self.stopped_early,
            "amp": self.amp.as_dict(),
            "loader_workers": self.workers,
            "channels_last": self.channels_last,
            "best_epoch": self.state.best_epoch,
            "best_score": self.state.best_score,
            "select_metric": self.select_metric,
            "validation": validation,
            "validation_epoch": (kept.epoch if kept is not None else epoch) if validation else None,
            "data": self.data_report.as_dict(),
        }
        with atomic_output(self.out_dir / SUMMARY_NAME, overwrite=True) as tmp:
            tmp.write_text(json.dumps(summary, indent=1, allow_nan=False), encoding="utf-8")
        self.kept = kept
        return summary

    def _emit(self, phase: str, epoch: int, step: int, steps: int, **values: Any) -> None:
        if self._event is not None:
            self._event(phase, epoch, step, steps, **values)


def _match_param_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give restored optimizer state the memory layout of its parameters (channels-last ones included).

    A fresh run creates its moment buffers with ``zeros_like(param)``; state read back from a
    file is contiguous. Elementwise kernels take other code paths for other layouts, so a resumed
    run would drift from an uninterrupted one by rounding.
    """
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.shape == p.shape and value.stride() != p.stride():
                    state[key] = torch.empty_like(p).copy_(value)


def _fmt(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.4f}"
