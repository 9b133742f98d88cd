"""PSPNet as in the paper (Zhao et al., "Pyramid Scene Parsing Network", CVPR 2017).

A dilated encoder (any segmentation-models-pytorch encoder, output stride 8 by default) feeds a
pyramid pooling module (bins 1, 2, 3, 6); the pooled maps are reduced to ``C / len(bins)``
channels, upsampled and concatenated with the encoder feature, fused by a 3x3 conv (512) with
BN, ReLU and dropout, classified by a 1x1 conv and upsampled bilinearly to the input size. In
training, an auxiliary FCN head on the stage-4 features adds a second output (loss weight 0.4).

Inputs of any height and width work: they are padded internally to a multiple of the encoder's
output stride and the logits are cropped back, so the output always matches the input size.

Deviations from the paper, on purpose:

- The bin-1 pyramid branch has no BatchNorm (a bias-carrying conv + ReLU instead): BN over a
  1x1 map has a single value per channel when the batch size is 1, which cannot be normalized
  in training. smp and several reference implementations do the same.
- The ResNet stem is torchvision's single 7x7 conv, not the paper's three 3x3 convs, so that
  smp's ImageNet weights apply.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import socket
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geopsp.errors import ModelError
from geopsp.model.meta import ModelSpec

__all__ = ["DROPPED_STAGES_ATTR", "PSPNet", "PadToMultiple", "create_encoder", "drop_unused_stages", "pad_to_multiple"]

DROPPED_STAGES_ATTR = "geopsp_dropped_stages"
"""Attribute naming the child modules :func:`drop_unused_stages` removed from an encoder."""

logger = logging.getLogger(__name__)

ALIGN_CORNERS = False


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Pad the bottom and right of ``x`` so height and width are multiples of ``multiple``.

    Reflection padding is used where possible (it keeps image statistics at the edge); inputs
    too small to reflect (the pad is not smaller than the side) are replicate-padded.

    Parameters
    ----------
    x : Tensor
        ``(N, C, H, W)``.
    multiple : int
        Target divisor (the encoder's output stride).

    Returns
    -------
    Tensor
        ``(N, C, H', W')`` with ``H' = ceil(H / multiple) * multiple`` (same for ``W``); ``x``
        itself when no padding is needed.
    """
    h, w = x.shape[-2:]
    ph = (-h) % multiple
    pw = (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


class PadToMultiple(nn.Module):
    """Wrap a dense-prediction model so any input size works.

    The input is padded to a multiple of ``multiple`` (see :func:`pad_to_multiple`) and the
    output cropped back to the input's height and width. Used for the smp comparison
    architectures, whose forward refuses sizes that are not multiples of their stride.
    """

    def __init__(self, model: nn.Module, multiple: int) -> None:
        super().__init__()
        self.model = model
        self.multiple = int(multiple)

    def forward(self, x: Tensor) -> Tensor:
        """Return ``(N, K, H, W)`` logits for ``(N, C, H, W)`` input."""
        h, w = x.shape[-2:]
        out: Tensor = self.model(pad_to_multiple(x, self.multiple))
        return out[..., :h, :w]


# --------------------------------------------------------------------------------------------
# Encoders and their pretrained weights


def create_encoder(
    name: str,
    *,
    in_channels: int,
    depth: int,
    weights: str | None,
    output_stride: int,
) -> nn.Module:
    """Build an smp encoder, dilated to ``output_stride``, refusing to download weights.

    Parameters
    ----------
    name : str
        Any ``segmentation_models_pytorch`` encoder name (``resnet50``, ``efficientnet-b0``,
        ``mobilenet_v2``, ``tu-<timm name>`` ...).
    in_channels : int
        Number of input bands; smp adapts the first conv (reusing ImageNet filters cyclically).
    depth : int
        Number of encoder stages (1..5).
    weights : str or None
        ``None`` for random initialization, or a pretrained weight name (``"imagenet"``). The
        weights must already be in the local Hugging Face cache: nothing is downloaded.
    output_stride : {8, 16, 32}
        Stages past this stride are dilated instead of strided.

    Returns
    -------
    torch.nn.Module
        The encoder; ``encoder(x)`` returns ``depth + 1`` feature maps. A ResNet-family encoder
        cut before stage 5 comes without the stages it never runs (see :func:`drop_unused_stages`).

    Raises
    ------
    ModelError
        For an unknown encoder, one that cannot be dilated, or weights that are not cached.
    """
    import segmentation_models_pytorch as smp
    from segmentation_models_pytorch.encoders import get_encoder

    names = smp.encoders.get_encoder_names()
    if not name.startswith("tu-") and name not in names:
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
        hint = (
            f"; did you mean one of {close}"
            if close
            else "; see segmentation_models_pytorch.encoders.get_encoder_names()"
        )
        raise ModelError(f"unknown encoder {name!r}{hint}, or use 'tu-<timm model name>'")
    smp_weights: str | bool | None = weights
    if weights is not None:
        smp_weights = _check_weights_cached(name, weights)
    guard = _no_network() if weights is not None else contextlib.nullcontext()
    try:
        with guard:
            encoder: nn.Module = get_encoder(
                name, in_channels=in_channels, depth=depth, weights=smp_weights, output_stride=output_stride
            )
    except ModelError:
        raise
    except Exception as exc:
        if weights is not None and _looks_like_network_error(exc):
            raise ModelError(
                f"{weights} weights for {name} could not be loaded offline ({type(exc).__name__}: {exc}); "
                f"download them on a machine with internet, or use encoder_weights=None"
            ) from exc
        raise ModelError(
            f"cannot build encoder {name!r} (in_channels={in_channels}, depth={depth}, "
            f"output_stride={output_stride}): {exc}"
        ) from exc
    drop_unused_stages(encoder, depth)
    return encoder


def drop_unused_stages(encoder: nn.Module, depth: int) -> tuple[str, ...]:
    """Remove the stages of a ResNet-family encoder that a ``depth``-stage cut never runs.

    smp builds the whole ResNet whatever ``encoder_depth`` says and only skips the deeper stages
    in ``forward``: ResNet-18 cut after stage 3 (the ``fast`` preset) would carry 10.5 M
    parameters that never run, 85 % of the model, into every bundle, optimizer and worker.
    Other encoders are left as they are (timm encoders build only the stages they return).

    Parameters
    ----------
    encoder : torch.nn.Module
        An encoder from :func:`create_encoder` or ``smp.encoders.get_encoder``, already dilated.
    depth : int
        Its number of stages (1..5).

    Returns
    -------
    tuple of str
        The names of the removed child modules (``("layer3", "layer4")`` for a ResNet at depth
        3), also recorded on the encoder as :data:`DROPPED_STAGES_ATTR` so that bundles written
        before the removal still load.

    Examples
    --------
    >>> from segmentation_models_pytorch.encoders import get_encoder
    >>> drop_unused_stages(get_encoder("resnet18", depth=3, weights=None), 3)
    ('layer3', 'layer4')
    """
    from segmentation_models_pytorch.encoders.resnet import ResNetEncoder

    if not isinstance(encoder, ResNetEncoder):
        return ()
    # ResNetEncoder.forward runs layer1 from depth 2, layer2 from 3, layer3 from 4, layer4 at 5.
    dropped = tuple(f"layer{k}" for k in range(max(int(depth), 1), 5) if hasattr(encoder, f"layer{k}"))
    for name in dropped:
        delattr(encoder, name)
    setattr(encoder, DROPPED_STAGES_ATTR, dropped)
    return dropped


def _check_weights_cached(name: str, weights: str) -> str | bool:
    """Return the value to pass to smp for ``weights``, or raise if they are not cached locally."""
    from huggingface_hub import constants as hf_constants
    from huggingface_hub import try_to_load_from_cache

    cache = hf_constants.HF_HUB_CACHE
    if name.startswith("tu-"):
        # timm encoders: the pretrained tag is part of the name; weights=True asks for it.
        import timm

        try:
            cfg = timm.models.get_pretrained_cfg(name[3:])
        except Exception as exc:
            raise ModelError(f"timm has no pretrained config for {name[3:]!r}: {exc}") from exc
        hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        if not hub_id:
            raise ModelError(
                f"pretrained weights for {name} are not hosted on the Hugging Face hub; "
                f"geopsp loads only cached hub weights; use encoder_weights=None"
            )
        if not any(
            isinstance(try_to_load_from_cache(hub_id, f), str)
            for f in ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin")
        ):
            raise ModelError(
                f"ImageNet weights for {name} are not cached at {cache} (repo {hub_id}); download them on a "
                f"machine with internet (huggingface-cli download {hub_id}), or use encoder_weights=None"
            )
        return True

    from segmentation_models_pytorch.encoders import encoders

    settings = encoders[name]["pretrained_settings"]
    if weights not in settings:
        raise ModelError(f"encoder {name} has no {weights!r} weights; available: {sorted(settings)} or None")
    repo_id = settings[weights]["repo_id"]
    revision = settings[weights]["revision"]
    missing = [
        f
        for f in ("config.json", "model.safetensors")
        if not isinstance(try_to_load_from_cache(repo_id, f, revision=revision), str)
    ]
    if missing:
        label = "ImageNet" if weights == "imagenet" else repo_id
        raise ModelError(
            f"{label} weights for {name} are not cached at {cache} (repo {repo_id}, revision {revision[:12]}); "
            f"download them on a machine with internet, or use encoder_weights=None"
        )
    return weights


@contextlib.contextmanager
def _no_network() -> Iterator[None]:
    """Make the Hugging Face hub refuse HTTP and bound socket waits, so nothing can hang.

    Cached weights load without any request (smp pins commit hashes); anything else fails fast.
    """
    from huggingface_hub import constants as hf_constants

    old_offline = hf_constants.HF_HUB_OFFLINE
    old_timeout = socket.getdefaulttimeout()
    hf_constants.HF_HUB_OFFLINE = True
    socket.setdefaulttimeout(5.0)
    try:
        yield
    finally:
        hf_constants.HF_HUB_OFFLINE = old_offline
        socket.setdefaulttimeout(old_timeout)


def _looks_like_network_error(exc: BaseException) -> bool:
    names = {type(e).__name__ for e in _chain(exc)}
    return bool(
        names
        & {
            "OfflineModeIsEnabled",
            "LocalEntryNotFoundError",
            "EntryNotFoundError",
            "URLError",
            "ConnectionError",
            "TimeoutError",
            "timeout",
            "gaierror",
        }
    )


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


# --------------------------------------------------------------------------------------------
# Heads


def _conv_bn_relu(in_ch: int, out_ch: int, kernel_size: int, *, norm: bool = True) -> nn.Sequential:
    conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=not norm)
    layers: list[nn.Module] = [conv]
    if norm:
        layers.append(nn.BatchNorm2d(out_ch))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class PyramidPooling(nn.Module):
    """Pyramid pooling module: pooled context at several bin sizes, concatenated with the input.

    Parameters
    ----------
    in_channels : int
        Channels ``C`` of the encoder feature.
    bins : sequence of int
        Output sizes of the adaptive average pools (paper: 1, 2, 3, 6).
    branch_channels : int
        Channels of each reduced branch (paper: ``C / len(bins)``).

    Notes
    -----
    The output has ``C + len(bins) * branch_channels`` channels and the input's size. The
    bin-1 branch has no BatchNorm (see the module docstring).
    """

    def __init__(self, in_channels: int, bins: Sequence[int], branch_channels: int) -> None:
        super().__init__()
        self.bins = tuple(int(b) for b in bins)
        self.branches = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), _conv_bn_relu(in_channels, branch_channels, 1, norm=b > 1))
            for b in self.bins
        )
        self.out_channels = in_channels + len(self.bins) * branch_channels

    def forward(self, x: Tensor) -> Tensor:
        """Return the input concatenated with each upsampled pyramid branch."""
        size = x.shape[-2:]
        outs = [x]
        for branch in self.branches:
            outs.append(F.interpolate(branch(x), size=size, mode="bilinear", align_corners=ALIGN_CORNERS))
        return torch.cat(outs, dim=1)


class PSPHead(nn.Module):
    """Pyramid pooling, 3x3 fusion conv + BN + ReLU + Dropout2d, and a 1x1 classifier."""

    def __init__(
        self, in_channels: int, num_classes: int, *, bins: Sequence[int], channels: int, dropout: float
    ) -> None:
        super().__init__()
        self.ppm = PyramidPooling(in_channels, bins, max(1, in_channels // len(bins)))
        self.fuse = _conv_bn_relu(self.ppm.out_channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier: nn.Module = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Return logits at the feature resolution."""
        out: Tensor = self.classifier(self.dropout(self.fuse(self.ppm(x))))
        return out


class DetailBranch(nn.Module):
    """Stride-4 refinement of the pyramid's output (see ``detail_channels`` of :class:`PSPNet`)."""

    def __init__(self, head_channels: int, low_channels: int, num_classes: int, *, detail_channels: int) -> None:
        super().__init__()
        out = max(1, head_channels // 2)
        self.project = _conv_bn_relu(low_channels, detail_channels, 1)
        self.fuse = _conv_bn_relu(head_channels + detail_channels, out, 3)
        self.classifier = nn.Conv2d(out, num_classes, 1)

    def forward(self, head: Tensor, low: Tensor) -> Tensor:
        """Return logits at the resolution of ``low``."""
        up = F.interpolate(head, size=low.shape[-2:], mode="bilinear", align_corners=ALIGN_CORNERS)
        out: Tensor = self.classifier(self.fuse(torch.cat([up, self.project(low)], dim=1)))
        return out


def _feature_strides(encoder: Any) -> list[int]:
    """Stride of each feature an smp ResNet-style encoder returns: 1, 2, 4, 8, ..., capped by its dilation."""
    cap = int(encoder.output_stride)
    return [min(2**i, cap) for i in range(len(encoder.out_channels))]


class FCNHead(nn.Module):
    """Auxiliary head: 3x3 conv + BN + ReLU + Dropout2d, then a 1x1 classifier."""

    def __init__(self, in_channels: int, num_classes: int, *, channels: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.conv = _conv_bn_relu(in_channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier: nn.Module = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Return logits at the feature resolution."""
        out: Tensor = self.classifier(self.dropout(self.conv(x)))
        return out


def _init_head(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------
# The network


class PSPNet(nn.Module):
    """Pyramid Scene Parsing Network on any smp encoder.

    Parameters
    ----------
    encoder : str
        smp encoder name (``resnet50`` in the paper).
    in_channels : int
        Input bands.
    num_classes : int
        Output classes.
    output_stride : {8, 16, 32}
        Encoder output stride; 8 as in the paper (ResNet stages 4 and 5 dilated by 2 and 4).
    encoder_depth : int
        Encoder stages used (1..5). The pyramid sits on the last one; the auxiliary head on the
        one before it (``features[-2]``: ResNet's stage 4 ``layer3`` when the depth is 5).
    ppm_bins : sequence of int
        Pyramid bins (paper: 1, 2, 3, 6).
    decoder_channels : int
        Channels of the fusion conv (paper: 512).
    dropout : float
        Dropout2d rate before both classifiers (paper: 0.1).
    aux : bool
        Build the auxiliary FCN head; its output is returned only in training mode.
    aux_weight : float
        Weight of the auxiliary loss (stored for the training loop; paper: 0.4).
    encoder_weights : str or None
        ``None`` or ``"imagenet"`` (must be cached locally; see :func:`create_encoder`).
    detail_channels : int
        0: the paper's head, whose stride-8 logits are upsampled bilinearly. Above 0: a detail
        branch in the manner of DeepLabV3+'s decoder (Chen et al., ECCV 2018): the encoder's
        stride-4 feature is projected to ``detail_channels`` by a 1x1 conv, concatenated with the
        pyramid's fused feature upsampled to stride 4, and fused by a 3x3 conv (``decoder_channels
        // 2``) before the classifier, so structures one or two pixels wide (roads, ditches) are
        classified at stride 4. Costs about 6 kMAC per input pixel with the ``fast`` preset.

    Notes
    -----
    ``forward(x)`` takes ``(N, in_channels, H, W)`` float input of any ``H, W >= 1`` and
    returns ``(N, num_classes, H, W)`` logits in eval mode; in training mode with ``aux`` it
    returns ``(main, aux)``, both ``(N, num_classes, H, W)``.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        encoder: str = "resnet50",
        *,
        in_channels: int = 3,
        num_classes: int = 2,
        output_stride: int = 8,
        encoder_depth: int = 5,
        ppm_bins: Sequence[int] = (1, 2, 3, 6),
        decoder_channels: int = 512,
        dropout: float = 0.1,
        aux: bool = True,
        aux_weight: float = 0.4,
        encoder_weights: str | None = None,
        detail_channels: int = 0,
    ) -> None:
        super().__init__()
        if not ppm_bins or any(int(b) < 1 for b in ppm_bins):
            raise ModelError(f"ppm_bins must be positive integers, got {tuple(ppm_bins)}; the paper uses (1, 2, 3, 6)")
        if decoder_channels < 1:
            raise ModelError(f"decoder_channels must be >= 1, got {decoder_channels}")
        if not 0.0 <= dropout < 1.0:
            raise ModelError(f"dropout must be in [0, 1), got {dropout}")
        self.encoder = create_encoder(
            encoder, in_channels=in_channels, depth=encoder_depth, weights=encoder_weights, output_stride=output_stride
        )
        enc: Any = self.encoder  # smp encoders are untyped
        channels: list[int] = [int(c) for c in enc.out_channels]
        self.pad_multiple = int(enc.output_stride)
        self.num_classes = num_classes
        self.aux_weight = float(aux_weight)
        self.head = PSPHead(channels[-1], num_classes, bins=ppm_bins, channels=decoder_channels, dropout=dropout)
        self.detail: DetailBranch | None = None
        if detail_channels > 0:
            reductions = _feature_strides(enc)
            if 4 not in reductions or reductions[-1] <= 4:
                raise ModelError(
                    f"the detail branch needs a stride-4 encoder feature below the pyramid, which {encoder} at "
                    f"depth {encoder_depth} lacks; use encoder_depth >= 3 or detail_channels=0"
                )
            self.detail_index = reductions.index(4)
            self.head.classifier = nn.Identity()  # the branch classifies
            self.detail = DetailBranch(
                decoder_channels, channels[self.detail_index], num_classes, detail_channels=detail_channels
            )
        self.aux_head: FCNHead | None = None
        if aux:
            if encoder_depth < 2 or channels[-2] < 1:
                raise ModelError(
                    f"the auxiliary head needs an intermediate encoder feature, which {encoder} at depth "
                    f"{encoder_depth} lacks; use encoder_depth >= 2 or aux=False"
                )
            self.aux_head = FCNHead(channels[-2], num_classes, dropout=dropout)
        _init_head(self.head)
        if self.detail is not None:
            _init_head(self.detail)
        if self.aux_head is not None:
            _init_head(self.aux_head)

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> PSPNet:
        """Build from a :class:`~geopsp.model.meta.ModelSpec`."""
        return cls(
            spec.encoder,
            in_channels=spec.in_channels,
            num_classes=spec.num_classes,
            output_stride=spec.output_stride,
            encoder_depth=spec.encoder_depth,
            ppm_bins=spec.ppm_bins,
            decoder_channels=spec.decoder_channels,
            dropout=spec.dropout,
            aux=spec.aux,
            aux_weight=spec.aux_weight,
            encoder_weights=spec.encoder_weights,
            detail_channels=spec.detail_channels,
        )

    def forward(self, x: Tensor) -> Any:
        """Segment ``x``.

        Parameters
        ----------
        x : Tensor
            ``(N, in_channels, H, W)`` float input, normalized.

        Returns
        -------
        Tensor or tuple of Tensor
            ``(N, num_classes, H, W)`` logits; in training mode with the auxiliary head, the
            tuple ``(main, aux)``.
        """
        if x.ndim != 4:
            raise ModelError(f"expected input of shape (N, C, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        padded = pad_to_multiple(x, self.pad_multiple)
        size = padded.shape[-2:]
        features = self.encoder(padded)
        head = self.head(features[-1])
        if self.detail is not None:
            head = self.detail(head, features[self.detail_index])
        main = self._upsample(head, size, h, w)
        if self.training and self.aux_head is not None:
            return main, self._upsample(self.aux_head(features[-2]), size, h, w)
        return main

    @staticmethod
    def _upsample(logits: Tensor, size: torch.Size, h: int, w: int) -> Tensor:
        out = F.interpolate(logits, size=size, mode="bilinear", align_corners=ALIGN_CORNERS)
        return out[..., :h, :w]
