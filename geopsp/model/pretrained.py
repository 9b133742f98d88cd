"""Pretrained ResNet encoders from local files: torchvision or timm state dicts, any band count.

``train.model.encoder_weights`` (and ``geopsp train --encoder-weights``) takes either a cached
weight name (``"imagenet"``, see :func:`geopsp.model.pspnet.create_encoder`) or the path of a
state dict file; :func:`is_weights_path` tells them apart. :func:`~geopsp.model.build_model`
builds the network with random weights and then loads the file into its encoder with
:func:`load_encoder_weights`, so a file never reaches smp and nothing is downloaded.

Reading never unpickles arbitrary objects: ``.safetensors`` files are read by safetensors
(plain tensors by construction), ``.pth``/``.pt`` files by ``torch.load(weights_only=True)``,
whose restricted unpickler accepts only tensors, dicts, lists and plain scalars and refuses any
other class or callable, so a file cannot run code while it loads.

Names are matched after stripping the wrappers training code adds (``module.`` from
``DataParallel``, ``encoder.``, ``backbone.``, ``model.``). torchvision's and timm's ResNets
share their names (``conv1``, ``bn1``, ``layer1`` ... ``layer4``, ``fc``). The classifier
``fc.*`` is dropped, as are stages the model does not build (an ``encoder_depth`` cut, see
:func:`geopsp.model.pspnet.drop_unused_stages`) and keys outside the ResNet (a decoder's).

First convolution
-----------------
``conv1.weight`` of an RGB file has shape ``(64, 3, 7, 7)``; a model with ``N`` bands needs
``(64, N, 7, 7)``. :func:`adapt_first_conv` applies the rule smp applies to its own ImageNet
weights, so a file and ``encoder_weights="imagenet"`` start alike:

- ``N == 3``: the kernels as they are;
- ``N == 1``: the sum of the red, green and blue kernels (a grey band ``x`` gets the response
  the RGB kernels give to ``(x, x, x)``);
- any other ``N``: band ``i`` takes RGB kernel ``i mod 3`` and every kernel is scaled by
  ``3 / N``, so the summed weight over the input bands, and with it the activation scale of an
  input whose bands carry the same value, stays that of the RGB kernels (exactly when ``N`` is
  a multiple of 3, approximately otherwise). Band 4 (often NIR) thus starts as a red filter.

A file whose first convolution already has ``N`` input bands is loaded as it is.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from geopsp.config.paths import WEIGHTS_SUFFIXES, is_weights_path
from geopsp.errors import ModelError
from geopsp.model.pspnet import DROPPED_STAGES_ATTR

__all__ = [
    "PRETRAINED_ATTR",
    "WEIGHTS_SUFFIXES",
    "PretrainedInfo",
    "adapt_first_conv",
    "check_weights_file",
    "get_pretrained_info",
    "is_weights_path",
    "load_encoder_weights",
    "pretrained_provenance",
    "read_state_dict",
    "resolve_weights_path",
]

logger = logging.getLogger(__name__)

PRETRAINED_ATTR = "geopsp_pretrained"
"""Attribute on a model built from a weights file holding its :class:`PretrainedInfo`."""

_PREFIXES = ("module.", "encoder.", "backbone.", "model.")
_RESNET_TOPS = frozenset({"conv1", "bn1", "layer1", "layer2", "layer3", "layer4"})
_CLASSIFIER = "fc"
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")  # what torch's weights-only unpickler refused


@dataclass(frozen=True, slots=True)
class PretrainedInfo:
    """What :func:`load_encoder_weights` loaded.

    Parameters
    ----------
    path : Path
        The weights file.
    sha256 : str
        Hex digest of the file's bytes.
    tensors : int
        Encoder tensors taken from the file.
    skipped : tuple of str
        File keys not loaded, wrapper prefixes stripped (the classifier ``fc``, stages the
        model does not build, keys outside the ResNet).
    first_conv : str
        How ``conv1.weight`` was adapted: ``"as is"``, ``"summed RGB to 1 band"`` or
        ``"inflated RGB to N bands"``.

    .. versionadded:: 0.1.0
    """

    path: Path
    sha256: str
    tensors: int
    skipped: tuple[str, ...]
    first_conv: str

    def as_provenance(self) -> dict[str, Any]:
        """Return the JSON-ready record a bundle's provenance keeps (file name, not the full path).

        Examples
        --------
        >>> info = PretrainedInfo(Path("/w/r18.pth"), "ab" * 32, 62, ("fc.bias", "fc.weight"), "as is")
        >>> info.as_provenance()["skipped"]
        {'fc': 2}
        """
        groups: dict[str, int] = {}
        for key in self.skipped:
            top = key.split(".", 1)[0]
            groups[top] = groups.get(top, 0) + 1
        return {
            "file": self.path.name,
            "sha256": self.sha256,
            "tensors": self.tensors,
            "skipped": groups,
            "first_conv": self.first_conv,
        }


def resolve_weights_path(value: str | None, base_dir: str | os.PathLike[str]) -> str | None:
    """Return ``value`` with a relative weights path made absolute against ``base_dir``.

    Names (``"imagenet"``) and ``None`` come back unchanged. ``geopsp train`` resolves
    ``--encoder-weights`` against the working directory; :func:`geopsp.config.load_config` has
    resolved the config key already (against the config file's folder, or the working directory
    for ``--set``).

    Examples
    --------
    >>> resolve_weights_path("imagenet", "/cfg"), resolve_weights_path("/w/r18.pth", "/cfg")
    ('imagenet', '/w/r18.pth')
    """
    if value is None or not is_weights_path(value):
        return value
    return str((Path(base_dir) / Path(value).expanduser()).resolve())


def check_weights_file(path: str | os.PathLike[str]) -> Path:
    """Return ``path`` as a :class:`~pathlib.Path` if it is a readable weights file, else raise.

    Raises
    ------
    ModelError
        When it does not exist, is a folder, or has a suffix other than :data:`WEIGHTS_SUFFIXES`.
    """
    p = Path(path)
    if not p.exists():
        raise ModelError(
            f"{p}: encoder weights file not found; check the path (train.model.encoder_weights or --encoder-weights)"
        )
    if p.is_dir():
        raise ModelError(f"{p}: is a folder, not an encoder weights file; name the .pth, .pt or .safetensors file")
    if p.suffix.lower() not in WEIGHTS_SUFFIXES:
        raise ModelError(
            f"{p}: unsupported encoder weights file type {p.suffix or '(none)'!r}; "
            f"give a state dict saved as {', '.join(WEIGHTS_SUFFIXES)}"
        )
    return p


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a state dict from a ``.safetensors``, ``.pth`` or ``.pt`` file, without unpickling objects.

    ``.pth``/``.pt`` files go through ``torch.load(map_location="cpu", weights_only=True)``: its
    unpickler rebuilds only tensors and plain containers and refuses every other class, so a
    checkpoint that stores a model object (``torch.save(model)``) or any custom class is refused
    instead of executed. A checkpoint that nests the state dict under ``state_dict``,
    ``model_state_dict`` or ``model`` is unwrapped.

    Parameters
    ----------
    path : str or os.PathLike
        The file.

    Returns
    -------
    dict of str to Tensor
        Tensors on the CPU, in the file's dtypes.

    Raises
    ------
    ModelError
        One line naming the file: missing, unreadable, refused (custom objects) or not a
        mapping of names to tensors.
    """
    p = check_weights_file(path)
    if p.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(p), device="cpu"))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise ModelError(
                f"{p}: cannot read as safetensors ({_first_line(exc)}); the file is damaged or not a safetensors file"
            ) from exc
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _GLOBAL.search(str(exc))
        if found is None:  # not a pickle torch can read at all
            raise ModelError(
                f"{p}: cannot read as a torch state dict (not a torch file or damaged); "
                "give a state dict saved with torch.save(model.state_dict(), path)"
            ) from exc
        raise ModelError(
            f"{p}: refused: the file holds a Python object ({found.group(1)}) besides tensors, which "
            "torch.load(weights_only=True) does not unpickle; save the state dict alone "
            "(torch.save(model.state_dict(), path)) or convert it to .safetensors"
        ) from exc
    except (OSError, RuntimeError, ValueError, EOFError) as exc:
        raise ModelError(
            f"{p}: cannot read as a torch state dict ({type(exc).__name__}: {_first_line(exc)[:160]}); "
            "the file is damaged or not a torch file"
        ) from exc
    return _as_state_dict(p, obj)


def adapt_first_conv(weight: Tensor, in_channels: int) -> Tensor:
    """Adapt RGB first-convolution kernels to ``in_channels`` bands (the rule in the module docstring).

    Parameters
    ----------
    weight : Tensor
        ``(out, 3, kh, kw)`` kernels of an RGB network.
    in_channels : int
        Bands of the model, >= 1.

    Returns
    -------
    Tensor
        ``(out, in_channels, kh, kw)`` in ``weight``'s dtype: ``weight`` itself for 3 bands,
        the sum of the RGB kernels for 1, else band ``i`` = RGB kernel ``i mod 3`` times ``3 / N``.

    Examples
    --------
    >>> w = torch.tensor([1.0, 2.0, 3.0]).reshape(1, 3, 1, 1)
    >>> adapt_first_conv(w, 1).flatten().tolist()
    [6.0]
    >>> adapt_first_conv(w, 6).flatten().tolist()
    [0.5, 1.0, 1.5, 0.5, 1.0, 1.5]
    """
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise ModelError(f"adapt_first_conv takes RGB kernels (out, 3, kh, kw), got {tuple(weight.shape)}")
    if in_channels < 1:
        raise ModelError(f"in_channels must be >= 1, got {in_channels}")
    if in_channels == 3:
        return weight
    w = weight.float()
    if in_channels == 1:
        out = w.sum(dim=1, keepdim=True)
    else:
        out = w[:, [i % 3 for i in range(in_channels)]] * (3.0 / in_channels)
    return out.to(weight.dtype)


def load_encoder_weights(
    model: nn.Module, path: str | os.PathLike[str], *, encoder: str | None = None
) -> PretrainedInfo:
    """Load a torchvision- or timm-format ResNet state dict from ``path`` into ``model``'s encoder.

    Parameters
    ----------
    model : torch.nn.Module
        A model from :func:`~geopsp.model.build_model` with a ResNet-family encoder (or the
        encoder itself); its first convolution already has the model's band count.
    path : str or os.PathLike
        A ``.safetensors``, ``.pth`` or ``.pt`` state dict (see :func:`read_state_dict`).
    encoder : str, optional
        The encoder's name (``"resnet18"``), used in messages.

    Returns
    -------
    PretrainedInfo
        The file, its sha256, the tensors loaded and the keys skipped. Also logged at INFO.

    Raises
    ------
    ModelError
        One line naming the file: unreadable or refused (see :func:`read_state_dict`), not a
        ResNet, a ResNet of another depth or width (the first mismatching key with both
        shapes), or an encoder that is not a ResNet.
    """
    p = check_weights_file(path)
    enc = _resnet_encoder(model, encoder)
    name = encoder or "the encoder"
    state = read_state_dict(p)
    target = enc.state_dict()
    dropped = frozenset(getattr(enc, DROPPED_STAGES_ATTR, ()))

    mapped: dict[str, Tensor] = {}
    skipped: list[str] = []
    extra: list[str] = []
    for raw, tensor in state.items():
        key = _strip_prefixes(raw)
        top = key.split(".", 1)[0]
        if key in target:
            if key in mapped:
                raise ModelError(f"{p}: two tensors map to {key!r} (one is {raw!r}); keep one encoder in the file")
            mapped[key] = tensor
        elif top == _CLASSIFIER or top in dropped or top not in _RESNET_TOPS:
            skipped.append(key)
        else:
            extra.append(raw)
    if not mapped:
        example = next(iter(state), "(no tensors)")
        raise ModelError(
            f"{p}: not a ResNet state dict: none of its {len(state)} tensors is a ResNet encoder weight "
            f"(conv1.weight, bn1.*, layer1.* ...; the file has e.g. {example!r}); pass a torchvision or timm ResNet"
        )
    first_conv = "as is"
    conv = mapped.get("conv1.weight")
    bands = int(target["conv1.weight"].shape[1])
    if conv is not None and conv.ndim == 4 and conv.shape[1] != bands:
        if conv.shape[1] != 3:
            raise ModelError(
                f"{p}: conv1.weight has {conv.shape[1]} input bands; geopsp adapts RGB (3-band) weights to "
                f"{bands} bands or takes {bands}-band weights as they are"
            )
        mapped["conv1.weight"] = adapt_first_conv(conv, bands)
        first_conv = "summed RGB to 1 band" if bands == 1 else f"inflated RGB to {bands} bands"
    for key, tensor in mapped.items():
        want = tuple(target[key].shape)
        if tuple(tensor.shape) != want:
            raise ModelError(
                f"{p}: does not fit {name}: {key} has shape {tuple(tensor.shape)} in the file and {want} in the "
                f"model; the file is a ResNet of another depth or width, pass weights of {name}"
            )
    if extra:
        raise ModelError(
            f"{p}: does not fit {name}: it has {extra[0]!r} and {len(extra) - 1} more encoder tensors the model "
            f"lacks; the file is a ResNet with more blocks, pass weights of {name}"
        )
    # Files saved before BatchNorm counted its batches (torchvision's first releases) lack them.
    missing = [k for k in target if k not in mapped and not k.endswith("num_batches_tracked")]
    if missing:
        raise ModelError(
            f"{p}: does not fit {name}: it lacks {missing[0]!r} and {len(missing) - 1} more encoder tensors; "
            f"the file is a shallower or different ResNet, pass weights of {name}"
        )
    enc.load_state_dict(mapped, strict=False)
    info = PretrainedInfo(p, _sha256(p), len(mapped), tuple(skipped), first_conv)
    logger.info(
        "loaded %d encoder tensors from %s (sha256 %s, first conv %s); skipped %s",
        info.tensors,
        p,
        info.sha256[:12],
        first_conv,
        info.as_provenance()["skipped"] or "none",
    )
    return info


def get_pretrained_info(model: nn.Module) -> PretrainedInfo | None:
    """Return the :class:`PretrainedInfo` of a model built from a weights file, else ``None``."""
    info = getattr(model, PRETRAINED_ATTR, None)
    return info if isinstance(info, PretrainedInfo) else None


def pretrained_provenance(model: nn.Module) -> dict[str, Any] | None:
    """Return :meth:`PretrainedInfo.as_provenance` of a model built from a weights file, else ``None``.

    The record a training run keeps in its bundles' provenance (``encoder_weights``).
    """
    info = get_pretrained_info(model)
    return None if info is None else info.as_provenance()


# --------------------------------------------------------------------------- helpers


def _resnet_encoder(model: nn.Module, encoder: str | None) -> nn.Module:
    from segmentation_models_pytorch.encoders.resnet import ResNetEncoder

    wrapped = getattr(model, "model", None)  # PadToMultiple around an smp architecture
    candidates = (model, getattr(model, "encoder", None), getattr(wrapped, "encoder", None))
    for m in candidates:
        if isinstance(m, ResNetEncoder):
            found: nn.Module = m
            return found
    kind = next((type(m).__name__ for m in candidates[1:] if m is not None), type(model).__name__)
    raise ModelError(
        f"encoder weight files load into ResNet encoders (resnet18 ... resnet152, resnext*); "
        f"{encoder or kind!r} is not one; use a ResNet encoder, a cached name such as 'imagenet', or no weights"
    )


def _strip_prefixes(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                stripped = True
    return key


def _as_state_dict(path: Path, obj: Any) -> dict[str, Tensor]:
    if isinstance(obj, Mapping) and not all(isinstance(v, Tensor) for v in obj.values()):
        for wrapper in _WRAPPER_KEYS:
            inner = obj.get(wrapper)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping):
        raise ModelError(
            f"{path}: holds a {type(obj).__name__}, not a state dict (names to tensors); "
            "save it with torch.save(model.state_dict(), path)"
        )
    bad = next((k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)), None)
    if bad is not None:
        raise ModelError(
            f"{path}: entry {bad!r} is a {type(obj[bad]).__name__}, not a tensor; give a state dict "
            "(torch.save(model.state_dict(), path))"
        )
    return dict(obj)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
