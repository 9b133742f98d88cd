"""``geopsp train --config FILE [--set ...] [--out DIR] [--encoder-weights PATH] [--gpus N] [--resume] [--dry-run]``.

Data-parallel training runs either under ``torchrun --nproc-per-node N -m geopsp train ...``
(any number of machines; each process runs this command, rank 0 alone shows progress and
prints the summary) or with ``--gpus N``, which starts the N processes on this machine itself,
as ``torchrun --standalone`` would.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from geopsp.cli.options import config_options, load_cli_config, overwrite_option

if TYPE_CHECKING:
    from geopsp.train.distributed import Ranks

__all__ = ["train"]


@click.command("train")
@click.option(
    "-o",
    "--out",
    "out",
    type=click.Path(file_okay=False),
    default=None,
    help="Run folder [default: train.out, else runs/<config name>].",
)
@click.option(
    "--encoder-weights",
    "encoder_weights",
    default=None,
    metavar="PATH",
    help="Start the encoder from a torchvision/timm ResNet state dict (.pth, .pt, .safetensors; RGB weights "
    "adapted to the band count), overriding train.model.encoder_weights. See `geopsp model fetch-weights`.",
)
@click.option(
    "--band-names",
    default=None,
    metavar="A,B,C",
    help="Names of the bands the model reads, stored in the bundle (STAC items are matched by them) "
    "[default: train.data.band_names, else the scenes' band descriptions, else band_N].",
)
@click.option(
    "--gpus",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Train data-parallel on N GPUs of this machine, one process each (per-GPU batch: "
    "train.sampling.batch_size; the learning rate is not scaled). For several machines use torchrun.",
)
@click.option("--resume", is_flag=True, help="Continue the run in OUT from its last checkpoint.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Resolve data, split and statistics on a tiny subsample, build the model and run one "
    "forward/backward pass; write nothing.",
)
@click.option("--no-progress", is_flag=True, help="Do not show the progress bar.")
@overwrite_option
@config_options
@click.pass_context
def train(
    ctx: click.Context,
    out: str | None,
    encoder_weights: str | None,
    band_names: str | None,
    gpus: int | None,
    resume: bool,
    dry_run: bool,
    no_progress: bool,
    overwrite: bool,
    config_path: str | None,
    set_items: tuple[str, ...],
) -> None:
    """Train a PSPNet from a YAML config (its `train` section).

    Paths in the config file are relative to its folder, paths given with --set to the working
    directory; ~ and ${VAR} (${VAR:-default}) are expanded, GEOPSP_DATA names the data folder
    of the example configs. OUT receives model.safetensors (the
    weights train.select keeps: best, last or ema; the console and train_summary.json say which
    and why), best.safetensors (the best validated weights), last.safetensors with last_state.*
    (for --resume), ema.safetensors (the moving average), metrics.csv, curves.png and the
    resolved config.yaml. Stdout gets a JSON summary; progress goes to stderr.

    On several GPUs (--gpus N, or under torchrun) each process trains on its own share of every
    epoch's batches with train.sampling.batch_size windows, so a step sees N times as many
    windows and an epoch takes 1/N of the steps; resume with the same N for the same result.
    """
    from geopsp.errors import ConfigError
    from geopsp.train.distributed import Ranks

    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite exclude each other")
    if config_path is None and not set_items:
        raise ConfigError("give a training config with --config FILE (see configs/*.yaml)")
    names = [n.strip() for n in band_names.split(",")] if band_names else None
    if names is not None and not all(names):
        raise click.BadParameter(f"empty name in {band_names!r}", param_hint="--band-names")
    conf = load_cli_config(config_path, set_items, **{"train.data.band_names": names})
    base_dir = Path(config_path).resolve().parent if config_path else Path.cwd()
    conf = _with_encoder_weights(conf, encoder_weights, base_dir, resume=resume)

    from geopsp.train.loop import dry_run as run_dry

    ranks = Ranks.current()
    if gpus is not None:
        _check_gpus(gpus, conf.train.device, ranks)
    if dry_run:
        checked = run_dry(conf.train, base_dir=base_dir)
        if ranks.main:
            click.echo(json.dumps({"dry_run": True, **checked}, indent=2))
        return
    if out is None:
        if conf.train.out is not None:
            out_dir = (base_dir / conf.train.out).resolve()
        else:
            name = Path(config_path).stem if config_path else "train"
            out_dir = (Path.cwd() / "runs" / name).resolve()
    else:
        out_dir = Path(out).resolve()
    obj = ctx.find_root().obj
    verbosity = int(obj.get("verbosity", 0)) if isinstance(obj, dict) else 0
    args = (conf.train, out_dir, base_dir, resume, overwrite, not no_progress, verbosity)
    if gpus is not None and gpus > 1:
        from geopsp.train.distributed import launch

        if verbosity < 1:
            _quiet_launcher()
        summary = launch(gpus, _train_rank, *args)[0]
    else:
        summary = _train_rank(*args)
        if not ranks.main:
            return  # under torchrun rank 0 alone reports
    click.echo(f"kept {summary['kept']} as {Path(summary['model']).name}: {summary['reason']}", err=True)
    click.echo(json.dumps(summary, indent=2))


def _quiet_launcher() -> None:
    """Keep torch's launcher to its errors' one line (its loggers print a failed rank's traceback; -v shows it)."""
    import logging

    import torch.distributed.launcher.api  # noqa: F401 - creates the launcher's loggers, each with its own level

    for name, log in list(logging.Logger.manager.loggerDict.items()):
        if name.startswith("torch.distributed.elastic") and isinstance(log, logging.Logger):
            log.setLevel(logging.CRITICAL)


def _check_gpus(gpus: int, device: str, ranks: Ranks) -> None:
    """Refuse ``--gpus N`` beyond the visible GPUs, with a device other than CUDA, or under torchrun."""
    import os

    import torch

    if ranks.parallel:
        raise click.UsageError("--gpus starts its own processes; under torchrun leave it out")
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus > visible:
        mask = os.environ.get("CUDA_VISIBLE_DEVICES")
        where = f" (CUDA_VISIBLE_DEVICES={mask})" if mask is not None else ""
        fix = f"give at most {visible}" if visible else "torch sees no CUDA GPU here; train without --gpus"
        raise click.BadParameter(f"{gpus} GPUs asked for, {visible} visible{where}; {fix}", param_hint="--gpus")
    if device not in ("auto", "cuda"):
        raise click.BadParameter(f"trains on CUDA; train.device is {device!r} (set auto or cuda)", param_hint="--gpus")


def _train_rank(
    train_config: Any, out_dir: Path, base_dir: Path, resume: bool, overwrite: bool, progress: bool, verbosity: int
) -> dict[str, Any]:
    """Train as this process's rank (or the only process); return the JSON summary.

    Module-level so that ``--gpus`` can start it in new processes (which set up logging anew):
    rank 0 logs and draws progress as a lone run does, the other ranks only log errors.
    """
    from geopsp.cli.main import configure_logging
    from geopsp.train.distributed import Ranks
    from geopsp.train.loop import fit

    ranks = Ranks.current()
    main = ranks.main
    if ranks.parallel:  # a process that --gpus started has no logging set up yet
        configure_logging(verbosity if main else min(verbosity, -1))
    with _progress(enabled=progress and main and verbosity >= 0) as bar:
        result = fit(train_config, out_dir, base_dir=base_dir, resume=resume, overwrite=overwrite, progress=bar)
    scores = result.scores
    summary: dict[str, Any] = {
        "out": str(result.out_dir),
        "model": str(result.model),
        "kept": result.kept,
        "reason": result.reason,
        "best": str(result.best),
        "last": str(result.last),
        "metrics": str(result.metrics_csv),
        "curves": str(result.curves),
        "summary": str(result.summary),
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "best_score": None if math.isnan(result.best_miou) else result.best_miou,
        "stopped_early": result.stopped_early,
    }
    if scores is not None:
        present = [c for c in scores.classes if c.reference_pixels > 0]
        summary["val"] = {
            "miou": _none(scores.miou_reference_classes),
            "overall_accuracy": _none(scores.overall_accuracy),
            "mean_f1": _none(scores.mean_f1_reference_classes),
            "kappa": _none(scores.kappa),
            "f1": {c.name: _none(c.f1) for c in present},
            "iou": {c.name: _none(c.iou) for c in present},
        }
    return summary


def _with_encoder_weights(conf: Any, option: str | None, base_dir: Path, *, resume: bool) -> Any:
    """Apply ``--encoder-weights`` and make a weights path absolute, checking that the file is there.

    A path given on the command line is relative to the working directory; the config key was
    resolved by ``load_config`` like the config's other paths (in the file: relative to its
    folder; from ``--set``: to the working directory). A resumed run starts from its own
    bundle, so the file need not exist any more.
    """
    from geopsp.model.pretrained import check_weights_file, is_weights_path, resolve_weights_path

    model_cfg = conf.train.model
    if option is not None:
        weights = resolve_weights_path(option, Path.cwd())
    else:
        weights = resolve_weights_path(model_cfg.encoder_weights, base_dir)  # already absolute: a no-op
    if is_weights_path(weights) and not resume:
        check_weights_file(str(weights))  # before any data are read
    if weights == model_cfg.encoder_weights:
        return conf
    train_cfg = conf.train.model_copy(update={"model": model_cfg.model_copy(update={"encoder_weights": weights})})
    return conf.model_copy(update={"train": train_cfg})


def _none(v: float) -> float | None:
    return None if v is None or math.isnan(v) else float(v)


@contextlib.contextmanager
def _progress(*, enabled: bool) -> Iterator[Callable[[Any], None] | None]:
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    columns = (
        TextColumn("[bold]epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("val mIoU {task.fields[miou]}"),
        TextColumn("best {task.fields[best]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("train", total=None, epoch="-", loss="-", miou="-", best="-")
        state = {"miou": "-", "best": "-"}

        def update(event: Any) -> None:
            epoch = f"{event.epoch}/{event.epochs}"
            if event.phase == "train":
                bar.update(task, total=event.steps, completed=event.step, epoch=epoch, loss=f"{event.loss:.4f}")
            elif event.phase == "val":
                bar.update(task, epoch=f"{epoch} (val {event.step}/{event.steps})")
            else:
                if event.val_miou is not None:
                    state["miou"] = f"{event.val_miou:.4f}"
                if event.best_miou is not None:
                    state["best"] = f"{event.best_miou:.4f}"
                bar.update(task, epoch=epoch, loss=f"{event.loss:.4f}", miou=state["miou"], best=state["best"])

        yield update
