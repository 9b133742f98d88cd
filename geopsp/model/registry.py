"""Architectures by name, the documented presets, and :func:`build_model`.

``ARCHITECTURES`` maps a name to a builder taking a :class:`~geopsp.model.meta.ModelSpec`:
``"pspnet"`` is geopsp's paper-faithful PSPNet; ``"unet"``, ``"deeplabv3plus"`` and ``"fpn"``
are segmentation-models-pytorch architectures kept for comparison. Every built model takes
``(N, C, H, W)`` input of any size and returns ``(N, K, H, W)`` logits in eval mode.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from torch import nn

from geopsp.errors import ConfigError, ModelError
from geopsp.model.meta import ModelSpec
from geopsp.model.pretrained import PRETRAINED_ATTR, check_weights_file, is_weights_path, load_encoder_weights
from geopsp.model.pspnet import PadToMultiple, PSPNet, _check_weights_cached, _no_network, drop_unused_stages

__all__ = ["ARCHITECTURES", "PRESETS", "build_model", "spec_from_preset"]

logger = logging.getLogger(__name__)


def _build_pspnet(spec: ModelSpec) -> nn.Module:
    return PSPNet.from_spec(spec)


def _smp_builder(arch: str) -> Callable[[ModelSpec], nn.Module]:
    """Return a builder of smp's ``arch`` wrapped so that any input size works."""

    def build(spec: ModelSpec) -> nn.Module:
        import segmentation_models_pytorch as smp

        if spec.aux:
            raise ModelError(f"architecture {arch!r} has no auxiliary head; set aux=False")
        kwargs: dict[str, Any] = {"encoder_depth": spec.encoder_depth}
        if arch == "deeplabv3plus":
            if spec.output_stride not in (8, 16):
                raise ModelError(f"deeplabv3plus supports output_stride 8 or 16, got {spec.output_stride}")
            kwargs["encoder_output_stride"] = spec.output_stride
        elif spec.output_stride != 32:
            raise ModelError(f"{arch} uses an undilated encoder; set output_stride=32 (got {spec.output_stride})")
        if arch == "unet":
            kwargs["decoder_channels"] = (256, 128, 64, 32, 16)[: spec.encoder_depth]
        weights: str | bool | None = None
        if spec.encoder_weights is not None:
            weights = _check_weights_cached(spec.encoder, spec.encoder_weights)
        guard = _no_network() if weights is not None else contextlib.nullcontext()
        try:
            with guard:
                model = smp.create_model(
                    arch,
                    encoder_name=spec.encoder,
                    encoder_weights=weights,
                    in_channels=spec.in_channels,
                    classes=spec.num_classes,
                    **kwargs,
                )
        except Exception as exc:
            raise ModelError(f"cannot build smp {arch} with encoder {spec.encoder!r}: {exc}") from exc
        drop_unused_stages(model.encoder, spec.encoder_depth)
        return PadToMultiple(model, int(model.encoder.output_stride))

    build.__name__ = f"build_{arch}"
    return build


ARCHITECTURES: dict[str, Callable[[ModelSpec], nn.Module]] = {
    "deeplabv3plus": _smp_builder("deeplabv3plus"),
    "fpn": _smp_builder("fpn"),
    "pspnet": _build_pspnet,
    "unet": _smp_builder("unet"),
}
"""Architecture name -> builder. Register more with ``ARCHITECTURES[name] = builder``."""

PRESETS: dict[str, ModelSpec] = {
    # Zhao et al. 2017: dilated ResNet-50 at output stride 8, bins (1, 2, 3, 6), 512-channel
    # fusion conv, auxiliary FCN head on stage 4 with loss weight 0.4.
    "paper": ModelSpec(
        arch="pspnet",
        encoder="resnet50",
        output_stride=8,
        encoder_depth=5,
        ppm_bins=(1, 2, 3, 6),
        decoder_channels=512,
        dropout=0.1,
        aux=True,
        aux_weight=0.4,
    ),
    # Costs about what smp's default PSPNet does (resnet34 cut after stage 3, a 1x1 fusion conv):
    # ResNet-18 cut after stage 3 (pyramid at stride 8) with the paper's head, no auxiliary
    # head. Measured (docs/models.md): 76.7 vs smp's 74.3 kFLOP/px at 512 x 512.
    "fast": ModelSpec(
        arch="pspnet",
        encoder="resnet18",
        output_stride=8,
        encoder_depth=3,
        ppm_bins=(1, 2, 3, 6),
        decoder_channels=512,
        dropout=0.1,
        aux=False,
    ),
}
"""Named model specs; ``in_channels`` and ``num_classes`` are filled in by :func:`spec_from_preset`."""


def build_model(spec: ModelSpec) -> nn.Module:
    """Build the network ``spec`` describes, with random or pretrained encoder weights.

    ``spec.encoder_weights`` is ``None`` (random), a cached weight name (``"imagenet"``, see
    :func:`~geopsp.model.pspnet.create_encoder`) or the path of a ResNet state dict file (see
    :mod:`geopsp.model.pretrained`): the model is then built with random weights and the file
    loaded into its encoder, with the first convolution adapted to ``spec.in_channels``.

    Parameters
    ----------
    spec : ModelSpec
        Architecture and its parameters.

    Returns
    -------
    torch.nn.Module
        In training mode, as freshly built modules are. Built from a weights file, it carries
        a :class:`~geopsp.model.pretrained.PretrainedInfo` (file, sha256, tensors loaded) that
        :func:`~geopsp.model.pretrained.get_pretrained_info` returns.

    Raises
    ------
    ValueError
        For an unknown architecture (a :class:`~geopsp.errors.ConfigError`, listing the valid ones).
    ModelError
        When the model cannot be built (unknown encoder, weights not cached offline, a weights
        file that is missing, unreadable or of another architecture ...).
    """
    builder = ARCHITECTURES.get(spec.arch)
    if builder is None:
        raise ConfigError(f"unknown architecture {spec.arch!r}; choose one of {sorted(ARCHITECTURES)}", key="arch")
    logger.debug("building %s with encoder %s", spec.arch, spec.encoder)
    if not is_weights_path(spec.encoder_weights):
        return builder(spec)
    path = check_weights_file(str(spec.encoder_weights))  # fail before building
    model = builder(spec.replace(encoder_weights=None))
    setattr(model, PRETRAINED_ATTR, load_encoder_weights(model, path, encoder=spec.encoder))
    return model


def spec_from_preset(
    name: str,
    *,
    encoder: str | None = None,
    in_channels: int,
    num_classes: int,
    **overrides: Any,
) -> ModelSpec:
    """Return the preset ``name`` for a given band and class count.

    Parameters
    ----------
    name : str
        A key of :data:`PRESETS` (``"paper"`` or ``"fast"``).
    encoder : str, optional
        Replace the preset's encoder.
    in_channels, num_classes : int
        Input bands and output classes.
    **overrides
        Any other :class:`~geopsp.model.meta.ModelSpec` field.

    Returns
    -------
    ModelSpec

    Raises
    ------
    ConfigError
        For an unknown preset or field, or an invalid value.

    Examples
    --------
    >>> spec_from_preset("paper", in_channels=4, num_classes=6).encoder
    'resnet50'
    """
    base = PRESETS.get(name)
    if base is None:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}", key="preset")
    changes: dict[str, Any] = {"in_channels": in_channels, "num_classes": num_classes, **overrides}
    if encoder is not None:
        changes["encoder"] = encoder
    try:
        return base.replace(**changes)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"preset {name!r}: {exc}") from exc
