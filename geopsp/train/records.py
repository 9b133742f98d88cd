"""What a training run writes into its folder, and which process writes it.

Every rank of a data-parallel run keeps the same state, but one writes the files: a
:class:`RunFolder` made with ``writer=False`` (ranks other than 0) returns from every method
without touching a file. Each file is written atomically
(:func:`~geopsp.io.atomic.atomic_output`); of an epoch's files the training state is written
after the bundles it belongs to, so a run killed in between is detected on ``--resume``.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from geopsp.config.schema import TrainConfig
from geopsp.io.atomic import atomic_output
from geopsp.model.meta import BundleMeta
from geopsp.train.report import write_curves, write_metrics_csv
from geopsp.train.state import TrainState, Weights, save_training_state

__all__ = ["RunFolder"]


class RunFolder:
    """The files of one run folder (see the module docstring).

    Parameters
    ----------
    out_dir : Path
        The run folder.
    config : TrainConfig
        The run's resolved config (written into every bundle's provenance).
    writer : bool
        Whether this process writes (rank 0).
    build_meta : callable
        ``build_meta(provenance) -> BundleMeta`` of the run's model.
    describe : dict
        The data's description (its ``train_scenes`` and ``val_scenes`` go into the provenance).
    init_weights : object
        Record of the weights the encoder started from (None: random).
    class_names : list of str
        Column names of ``metrics.csv``.
    title : str
        Title of ``curves.png``.
    """

    def __init__(
        self,
        out_dir: Path,
        config: TrainConfig,
        *,
        writer: bool,
        build_meta: Callable[[dict[str, Any]], BundleMeta],
        describe: dict[str, Any],
        init_weights: Any,
        class_names: list[str],
        title: str,
    ) -> None:
        self.out_dir = out_dir
        self.config = config
        self.writer = writer
        self._build_meta = build_meta
        self._describe = describe
        self._init_weights = init_weights
        self._class_names = class_names
        self._title = title

    def provenance(self, epoch: int, steps: int, row: dict[str, Any], weights: Weights) -> dict[str, Any]:
        """Return the provenance of weights saved after ``epoch`` (``row``: the epoch's metrics)."""
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
                "train_scenes": self._describe["train_scenes"],
                "val_scenes": self._describe["val_scenes"],
            },
            "epochs": epoch,
            "steps": steps,
            "seed": c.seed,
            "preset": c.model.preset,
            "encoder_weights": self._init_weights,
            "weights": "moving average (EMA)" if weights == "ema" else "raw",
            "metrics": metrics,
            "train_config": c.model_dump(mode="json"),
        }

    def _save(
        self, model: torch.nn.Module, name: str, state: TrainState, row: dict[str, Any], weights: Weights
    ) -> None:
        from geopsp.model.bundle import save_bundle

        meta = self._build_meta(self.provenance(state.epoch, state.step, row, weights))
        save_bundle(model, meta, self.out_dir / name, overwrite=True)

    def save_epoch(
        self,
        state: TrainState,
        row: dict[str, Any],
        *,
        improved: Weights | None,
        model: torch.nn.Module,
        average: torch.nn.Module | None,
        optimizer: torch.optim.Optimizer,
    ) -> None:
        """Write the bundles of the epoch ``state`` has just finished, the training state, the metrics and curves.

        ``improved`` names the weights that became the best (``best.safetensors``), if any;
        ``average`` is the moving average of the weights, if the run keeps one.
        """
        if not self.writer:
            return
        if improved is not None:
            best = model if improved == "raw" or average is None else average
            self._save(best, "best.safetensors", state, row, improved)
        self._save(model, "last.safetensors", state, row, "raw")
        if average is not None:
            self._save(average, "ema.safetensors", state, row, "ema")
        save_training_state(self.out_dir, optimizer=optimizer, info=state.to_info())
        write_metrics_csv(self.out_dir / "metrics.csv", state.history, self._class_names)
        write_curves(self.out_dir / "curves.png", state.history, title=self._title)

    def keep(self, path: Path) -> Path:
        """Copy the kept weights ``path`` to ``model.safetensors``; return that path."""
        model_path = self.out_dir / "model.safetensors"
        if self.writer:
            with atomic_output(model_path, overwrite=True) as tmp:
                shutil.copyfile(path, tmp)
        return model_path

    def write_summary(self, name: str, summary: dict[str, Any]) -> None:
        """Write the run summary JSON ``name`` (the run's last file)."""
        if self.writer:
            with atomic_output(self.out_dir / name, overwrite=True) as tmp:
                tmp.write_text(json.dumps(summary, indent=1, allow_nan=False), encoding="utf-8")
