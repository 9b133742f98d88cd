"""Training state for ``--resume``, stored without pickle.

The optimizer's tensors (momentum buffers, Adam moments) go to a safetensors file; its
scalars, the parameter groups, the epoch, the history and the best score go to a JSON file.
The JSON is written last and names the epoch of the weights it belongs to, so a run killed
between the two writes is detected on resume instead of silently mixing epochs.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from geopsp.errors import CheckpointError
from geopsp.io.atomic import atomic_output

if TYPE_CHECKING:
    from geopsp.model.bundle import Bundle

__all__ = [
    "ResumedRun",
    "TrainState",
    "Weights",
    "load_run",
    "load_training_state",
    "match_param_layout",
    "restore_optimizer",
    "optimizer_from_flat",
    "optimizer_to_flat",
    "save_training_state",
]

STATE_VERSION = 1

Weights = Literal["raw", "ema"]
"""The two sets of weights a run validates: the optimizer's own and their moving average."""


@dataclass
class TrainState:
    """Everything about a run's progress that is not a tensor (saved as ``last_state.json``)."""

    epoch: int = 0
    step: int = 0
    elapsed_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_score: float | None = None
    best_epoch: int = 0
    best_weights: Weights | None = None
    best_loss: float | None = None
    amp: dict[str, Any] | None = None
    ema_updates: int = 0
    ranks: int = 1
    """Processes that trained the run data-parallel (1: one)."""

    def to_info(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> TrainState:
        """Read back :meth:`to_info` (and the state of runs written before selection existed)."""
        names = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in info.items() if k in names}
        if "best_score" not in info and info.get("best_miou") is not None:
            values["best_score"] = float(info["best_miou"])
            values["best_weights"] = "raw"
        return cls(**values)


def optimizer_to_flat(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer ``state_dict`` into tensors and JSON-ready scalars.

    Examples
    --------
    >>> p = torch.nn.Parameter(torch.ones(2))
    >>> opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    >>> p.grad = torch.ones(2); opt.step()
    >>> tensors, scalars = optimizer_to_flat(opt.state_dict())
    >>> sorted(tensors), scalars["param_groups"][0]["lr"]
    (['state.0.momentum_buffer'], 0.1)
    """
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, entry in state_dict["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"state": scalars, "param_groups": state_dict["param_groups"]}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> dict[str, Any]:
    """Rebuild an optimizer ``state_dict`` from :func:`optimizer_to_flat` output."""
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        if not name.startswith("state."):
            continue
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = t
    for name, value in scalars.get("state", {}).items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": scalars["param_groups"]}


def save_training_state(
    folder: str | os.PathLike[str],
    *,
    optimizer: torch.optim.Optimizer,
    info: dict[str, Any],
    name: str = "last",
) -> tuple[Path, Path]:
    """Write ``<name>_state.safetensors`` and ``<name>_state.json`` atomically.

    Parameters
    ----------
    folder : path
        Output folder.
    optimizer : torch.optim.Optimizer
        Its state is saved.
    info : dict
        JSON-ready run state (epoch, step, best score, history ...).
    name : str
        File prefix.

    Returns
    -------
    (tensors_path, json_path)
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    tensors, scalars = optimizer_to_flat(optimizer.state_dict())
    tensors["rng.torch"] = torch.get_rng_state()
    t_path = folder / f"{name}_state.safetensors"
    j_path = folder / f"{name}_state.json"
    with atomic_output(t_path, overwrite=True) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "geopsp-train-state"})
    payload = {"version": STATE_VERSION, "optimizer": scalars, **info}
    with atomic_output(j_path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(payload, indent=1, allow_nan=False), encoding="utf-8")
    return t_path, j_path


def load_training_state(folder: str | os.PathLike[str], *, name: str = "last") -> tuple[dict[str, Any], dict[str, Any]]:
    """Read the state written by :func:`save_training_state`.

    Returns
    -------
    (info, optimizer_state_dict)
        The JSON run state (including ``"torch_rng"`` as a tensor) and an optimizer state dict.

    Raises
    ------
    CheckpointError
        If the files are missing or damaged.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    j_path = folder / f"{name}_state.json"
    t_path = folder / f"{name}_state.safetensors"
    if not j_path.exists() or not t_path.exists():
        raise CheckpointError(
            f"{folder}: no training state to resume ({j_path.name} and {t_path.name}); train without --resume"
        )
    try:
        info = json.loads(j_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{j_path}: unreadable training state ({exc}); train again without --resume") from exc
    if not isinstance(info, dict) or info.get("version") != STATE_VERSION:
        raise CheckpointError(f"{j_path}: unknown training state version; train again without --resume")
    try:
        tensors = load_file(str(t_path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{t_path}: damaged training state ({exc}); train again without --resume") from exc
    info["torch_rng"] = tensors.pop("rng.torch", None)
    return info, optimizer_from_flat(tensors, info.pop("optimizer"))


@dataclass
class ResumedRun:
    """What ``--resume`` reads back from a run folder (:func:`load_run`)."""

    state: TrainState
    optimizer: dict[str, Any]
    """The optimizer's ``state_dict``."""
    bundle: Bundle
    """``last.safetensors``: the raw weights of the last finished epoch (on the CPU)."""
    average: dict[str, torch.Tensor] | None
    """``ema.safetensors``' ``state_dict`` (None for a run without EMA)."""


def load_run(
    folder: Path,
    *,
    epochs: int,
    classes: list[int],
    bands: tuple[int, ...],
    ema: float | None,
) -> ResumedRun:
    """Read a run to continue: its training state, last weights and their moving average.

    Raises
    ------
    CheckpointError
        When the run already trained ``epochs`` epochs, its files disagree on the epoch (it was
        stopped while saving), it was trained with other ``classes`` or ``bands``, or the average
        is missing though ``ema`` (the decay) asks for one.
    """
    from geopsp.model.bundle import load_bundle

    info, opt_state = load_training_state(folder)
    state = TrainState.from_info(info)
    if state.epoch >= epochs:
        raise CheckpointError(
            f"{folder}: the run already finished {state.epoch} epochs; raise train.epochs "
            "(--set train.epochs=N) to continue it"
        )
    bundle = load_bundle(folder / "last.safetensors", device="cpu")
    if int(bundle.meta.provenance.get("epochs", -1)) != state.epoch:
        raise CheckpointError(
            f"{folder}: last.safetensors (epoch {bundle.meta.provenance.get('epochs')}) and "
            f"last_state.json (epoch {state.epoch}) disagree; the run was interrupted while saving, start again"
        )
    if bundle.meta.classes.ids != classes or bundle.meta.bands != bands:
        raise CheckpointError(f"{folder}: the run was trained with other classes or bands; start again")
    average = None
    if ema is not None:
        ema_path = folder / "ema.safetensors"
        if not ema_path.exists():
            raise CheckpointError(f"{ema_path}: missing; the run was trained without EMA, start again")
        average = load_bundle(ema_path, device="cpu").model.state_dict()
    return ResumedRun(state, opt_state, bundle, average)


def restore_optimizer(optimizer: torch.optim.Optimizer, state_dict: dict[str, Any], *, folder: Path) -> None:
    """Load ``state_dict`` (of the run in ``folder``) into ``optimizer``, in its parameters' memory layout.

    Raises
    ------
    CheckpointError
        When the state does not fit the optimizer.
    """
    try:
        optimizer.load_state_dict(state_dict)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{folder}: optimizer state does not fit ({exc}); start again without --resume") from exc
    match_param_layout(optimizer)


def match_param_layout(optimizer: torch.optim.Optimizer) -> None:
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
