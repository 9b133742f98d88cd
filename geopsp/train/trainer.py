"""The training loop: a :class:`Trainer` that moves a :class:`TrainState` forward one epoch at a time.

The config is read once, in :meth:`Trainer.__init__`; the parts below it get plain values. An
epoch is ``windows_per_epoch / batch_size`` batches built ahead of the model
(:mod:`geopsp.train.batches`), then (every ``val_every`` epochs) a validation of the raw weights
and of their moving average (:mod:`geopsp.train.ema`), then the checkpoints. Which weights a run
keeps as ``model.safetensors`` is ``train.select``; the reason is logged and written to the run
summary.

A step reads nothing back from the device: its loss waits on the device until the next report
(:mod:`geopsp.train.meter`, every ``train.log_every`` steps).

Data-parallel (:mod:`geopsp.train.distributed`, under ``torchrun``): the model is wrapped in
:class:`~torch.nn.parallel.DistributedDataParallel`; at optimizer step ``s`` rank ``r`` of
``world`` trains on batch ``s * world + r``, so an epoch's batches are shared out and each rank
takes ``1 / world`` of the steps; gradients are averaged over the ranks. At the end of an epoch
rank 0's batch-norm statistics (of the model and of its average) are given to every rank, the
ranks share the validation tiles, and rank 0 alone writes files while the others wait.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geopsp.config.schema import TrainConfig
from geopsp.device import resolve_device
from geopsp.errors import TrainingDivergedError, TrainingWarning
from geopsp.model.meta import BundleMeta, ModelSpec, Normalization
from geopsp.train.amp import AmpChoice, choose_amp, training_step
from geopsp.train.batches import BatchSource, batch_loader, default_workers
from geopsp.train.checks import check_training_data
from geopsp.train.datasets import TrainingData, prepare_data
from geopsp.train.distributed import Ranks, barrier, broadcast_
from geopsp.train.ema import WeightAverage
from geopsp.train.evaluation import evaluate_regions
from geopsp.train.losses import SegmentationLoss
from geopsp.train.meter import StepLosses
from geopsp.train.records import RunFolder
from geopsp.train.sampling import WindowSampler
from geopsp.train.schedule import Schedule
from geopsp.train.selection import Candidate, choose_weights, history_summary, row_scores, scores_summary
from geopsp.train.state import TrainState, Weights, load_run, restore_optimizer
from geopsp.train.stats import compute_normalization

__all__ = ["SUMMARY_NAME", "Trainer"]

logger = logging.getLogger(__name__)

SUMMARY_NAME = "train_summary.json"
"""The run summary ``fit`` writes last: which weights were kept and why, their validation scores."""

EventFn = Callable[..., None]


class Trainer:
    """One training run of a path-resolved config into ``out_dir``.

    Parameters
    ----------
    config : TrainConfig
        With absolute paths.
    out_dir : Path
        The run folder (checked by the caller).
    event : callable, optional
        ``event(phase, epoch, step, steps, **values)`` progress callback (called on every rank).
    build_meta : callable
        ``build_meta(data, spec, norm, provenance) -> BundleMeta``.
    ranks : Ranks, optional
        This process's place in a data-parallel run (default: the only process).
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
        ranks: Ranks | None = None,
    ) -> None:
        self.config = config
        self.out_dir = out_dir
        self._build_spec = build_spec
        self._build_meta = build_meta
        self._make_loss = make_loss
        self._make_optimizer = make_optimizer
        self._event = event
        c = config
        self.ranks = ranks = ranks if ranks is not None else Ranks()
        self.device = resolve_device(
            c.device, key="train.device", local_rank=ranks.local_rank if ranks.parallel else None
        )
        self.epochs = c.epochs
        self.window = c.sampling.window
        self.batch_size = c.sampling.batch_size
        batches_per_epoch = math.ceil(c.sampling.windows_per_epoch / c.sampling.batch_size)
        self.steps_per_epoch = math.ceil(batches_per_epoch / ranks.world)
        self.log_every = c.log_every if c.log_every is not None else (20 if self.device.type == "cuda" else 1)
        self.val_every = c.val_every
        self.val_tile = c.val_tile
        self.val_batch_size = c.val_batch_size if c.val_batch_size is not None else c.sampling.batch_size
        self.seed = c.seed
        self.budget_s = c.max_minutes * 60.0 if c.max_minutes is not None else None
        self.select = c.select if c.ema_decay is not None or c.select != "ema" else "last"
        self.select_metric = c.select_metric
        self.min_epochs = c.min_epochs if c.min_epochs is not None else max(1, math.ceil(c.epochs / 4))
        self.ema_decay = c.ema_decay
        self.channels_last = c.channels_last
        self.workers = (
            c.loader_workers
            if c.loader_workers is not None
            else default_workers(self.device, c.threads, processes=ranks.local_world)
        )
        self.grad_clip = c.optim.grad_clip
        self.schedule = Schedule.of(c, self.steps_per_epoch * c.epochs)
        self.state = TrainState(ranks=ranks.world)
        self.stopped_early = False
        self.amp = AmpChoice(False, "not decided")
        self.best: Candidate | None = None
        self.last: dict[Weights, Candidate] = {}

    # ------------------------------------------------------------------ setup

    def setup(self, *, resume: bool) -> None:
        """Read the data; build or restore the model, optimizer, average and state."""
        from geopsp.model.pretrained import pretrained_provenance
        from geopsp.model.registry import build_model

        c = self.config
        self.data = data = prepare_data(c)
        opt_state: dict[str, Any] | None = None
        ema_state: dict[str, torch.Tensor] | None = None
        if resume:
            run = load_run(
                self.out_dir, epochs=c.epochs, classes=data.classes.ids, bands=data.bands, ema=self.ema_decay
            )
            self.state, opt_state, ema_state = run.state, run.optimizer, run.average
            self._continue_with_other_ranks()
            bundle = run.bundle
            self.spec, self.norm, model = bundle.meta.spec, bundle.meta.normalization, bundle.model
            self.init_weights = bundle.meta.provenance.get("encoder_weights")  # the first session's record
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
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # the training windows all have one size
        self.model = model
        self.optimizer = self._make_optimizer(model)
        if opt_state is not None:
            restore_optimizer(self.optimizer, opt_state, folder=self.out_dir)
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
        self.net: torch.nn.Module = model
        if self.ranks.parallel:
            from torch.nn.parallel import DistributedDataParallel

            cuda = self.device.type == "cuda"
            self.net = DistributedDataParallel(model, device_ids=[self.device.index] if cuda else None)
        self.describe = data.describe()
        self.folder = RunFolder(
            self.out_dir,
            c,
            writer=self.ranks.main,
            build_meta=lambda prov: self._build_meta(data, self.spec, self.norm, prov),
            describe=self.describe,
            init_weights=self.init_weights,
            class_names=data.classes.names,
            title=f"{self.spec.arch} / {self.spec.encoder}",
        )
        logger.info(
            "training %s/%s on %d train and %d val regions (%s%s, %s, %d loader workers), %d classes, %d bands",
            self.spec.arch,
            self.spec.encoder,
            len(data.train),
            len(data.val),
            self.device,
            f", rank {self.ranks.rank} of {self.ranks.world}" if self.ranks.parallel else "",
            "bf16" if self.amp.enabled else "fp32",
            self.workers,
            len(data.classes),
            len(data.bands),
        )

    def _continue_with_other_ranks(self) -> None:
        """Let a run go on with another number of processes than it was trained with (warning that it differs)."""
        st, world = self.state, self.ranks.world
        if st.ranks == world:
            return
        warnings.warn(
            f"{self.out_dir}: the run was trained by {st.ranks} process(es) and continues with {world}; from epoch "
            f"{st.epoch + 1} on it differs from a run trained by either number throughout",
            TrainingWarning,
            stacklevel=3,
        )
        st.step, st.ranks = st.epoch * self.steps_per_epoch, world

    def _decide_amp(self) -> AmpChoice:
        if self.state.amp is not None:  # a resumed run keeps its precision
            return AmpChoice(bool(self.state.amp["bf16"]), "kept from the run being resumed")
        choice = AmpChoice(False, "not decided")
        if self.ranks.main:
            choice = self._measure_amp()
        if self.ranks.parallel:  # a CPU measurement may come out otherwise on another rank: rank 0's holds
            flag = torch.tensor([int(choice.enabled)], device=self.device)
            broadcast_(self.ranks, [flag])
            if not self.ranks.main:
                choice = AmpChoice(bool(flag.item()), "rank 0's choice")
        self.state.amp = choice.as_dict()
        return choice

    def _measure_amp(self) -> AmpChoice:
        step = training_step(self.loss_fn, *self._to_device(*self.source[0]))
        return choose_amp(
            self.config.amp, self.device, model=self.model, make_optimizer=self._make_optimizer, step=step
        )

    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)

    # ------------------------------------------------------------------ the loop

    def elapsed(self) -> float:
        """Seconds of training, over all sessions of a resumed run."""
        return self._elapsed_before + time.monotonic() - self._started

    def _clock(self) -> float:
        """Seconds of training as the schedule and the time budget see them: rank 0's at the last report."""
        return self.elapsed() if not self.ranks.parallel else self._agreed_s

    def _over_budget(self) -> bool:
        return self.budget_s is not None and self._clock() >= self.budget_s

    def run(self) -> None:
        """Train from ``state.epoch + 1`` to ``epochs`` (or until the time cap)."""
        self._elapsed_before = self._agreed_s = self.state.elapsed_s
        self._started = time.monotonic()
        world, rank = self.ranks.world, self.ranks.rank
        # this rank's batches: batch s * world + rank at optimizer step s
        steps = range(self.state.step * world + rank, self.steps_per_epoch * self.epochs * world, world)
        batches = batch_loader(self.source, steps, workers=self.workers, pin_memory=self.device.type == "cuda")
        try:
            for epoch in range(self.state.epoch + 1, self.epochs + 1):
                train_loss, lr = self._train_epoch(epoch, batches)
                if self.ranks.parallel:  # rank 0's batch-norm statistics, which it validates and saves
                    broadcast_(self.ranks, self.model.buffers())
                    if self.ema is not None:
                        broadcast_(self.ranks, self.ema.module.buffers())
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
        model, net, optimizer, steps = self.model, self.net, self.optimizer, self.steps_per_epoch
        net.train()
        torch.manual_seed((self.seed * 100003 + epoch) * self.ranks.world + self.ranks.rank)  # dropout
        losses = StepLosses(self.ranks, self.device)
        loss_sum, loss_n = 0.0, 0
        lr = self.schedule.base
        for step in range(1, steps + 1):
            x, y = self._to_device(*next(batches))
            lr = self.schedule.lr(self.state.step, self._clock())
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp.enabled):
                output = net(x)
            total, main = self.loss_fn(output, y)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            if self.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip)
            optimizer.step()
            if self.ema is not None:
                self.ema.update(model)
            self.state.step += 1
            losses.add(main)
            # one process checks its clock every step (no device read); ranks agree on it at reports
            over = not self.ranks.parallel and self._over_budget()
            if step % self.log_every and step < steps and not over:
                continue
            values, self._agreed_s = losses.read(self.elapsed())
            for i, value in enumerate(values):
                if not math.isfinite(value):
                    raise TrainingDivergedError(
                        f"training diverged at epoch {epoch} step {step - len(values) + 1 + i}: the loss is {value}; "
                        f"lower train.optim.lr (now {self.schedule.base:g}), set train.optim.grad_clip, or train "
                        "with train.amp=false"
                    )
                loss_sum += value
                loss_n += 1
            self._emit("train", epoch, step, steps, loss=sum(values) / len(values), lr=lr)
            if self._over_budget():
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
                    batch_size=self.val_batch_size,
                    amp=self.amp.enabled,
                    channels_last=self.channels_last,
                    progress=val_progress,
                    ranks=self.ranks if self.ranks.parallel else None,
                )
                cand = Candidate(name, epoch, cm.scores(data.classes), loss)
                self.last[name] = cand
                row.update(row_scores("val" if name == "raw" else "ema_val", loss, cand.scores))
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

    def _checkpoint(self, epoch: int, row: dict[str, Any]) -> None:
        st = self.state
        improved = row.pop("improved")
        st.history.append(row)
        st.epoch = epoch
        if self.ema is not None:
            st.ema_updates = self.ema.updates
        st.elapsed_s = self.elapsed()
        self.folder.save_epoch(
            st,
            row,
            improved=improved or None,
            model=self.model,
            average=self.ema.module if self.ema is not None else None,
            optimizer=self.optimizer,
        )
        barrier(self.ranks, self.device)  # the epoch's files are complete before any rank goes on
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
        model_path = self.folder.keep(path)
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
            "ranks": self.ranks.world,
            "batch_size": {"per_rank": self.batch_size, "effective": self.batch_size * self.ranks.world},
            "log_every": self.log_every,
            "val_batch_size": self.val_batch_size,
            "best_epoch": self.state.best_epoch,
            "best_score": self.state.best_score,
            "select_metric": self.select_metric,
            "validation": validation,
            "validation_epoch": (kept.epoch if kept is not None else epoch) if validation else None,
            "data": self.data_report.as_dict(),
        }
        self.folder.write_summary(SUMMARY_NAME, summary)
        barrier(self.ranks, self.device)
        self.kept = kept
        return summary

    def _emit(self, phase: str, epoch: int, step: int, steps: int, **values: Any) -> None:
        if self._event is not None:
            self._event(phase, epoch, step, steps, **values)


def _fmt(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.4f}"
