"""Plain metadata of a model bundle: architecture spec, band normalization, class table.

These are frozen value objects with a JSON form; they import neither torch nor rasterio, so
the tiler, the CLI and the batch runner can read a bundle's metadata cheaply.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from geopsp.classes import ClassTable
from geopsp.errors import CheckpointError

__all__ = ["FORMAT_VERSION", "BundleMeta", "ModelSpec", "Normalization"]

FORMAT_VERSION = 1
"""Bundle format version written by this geopsp; newer versions are refused on load."""

OutputStride = Literal[8, 16, 32]


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Everything needed to rebuild a network's structure (not its weights).

    Parameters
    ----------
    arch : str
        Architecture name in :data:`geopsp.model.registry.ARCHITECTURES` (``"pspnet"``).
    encoder : str
        Any segmentation-models-pytorch encoder name (``resnet50``, ``efficientnet-b0`` ...).
    in_channels : int
        Number of input bands.
    num_classes : int
        Number of output channels (classes).
    output_stride : {8, 16, 32}
        Encoder output stride; the paper dilates ResNet to 8.
    encoder_depth : int
        Encoder stages used (3 to 5); 5 is the paper's full ResNet.
    ppm_bins : tuple of int
        Pyramid pooling bin sizes; the paper uses (1, 2, 3, 6).
    decoder_channels : int
        Channels of the 3x3 fusion conv after the pyramid (paper: 512).
    dropout : float
        Dropout before the classifier (paper: 0.1).
    aux : bool
        Auxiliary FCN head on the stage-4 features, used only in training.
    aux_weight : float
        Weight of the auxiliary loss (paper: 0.4).
    encoder_weights : str or None
        ``None`` (random init), ``"imagenet"`` (needs the weights cached locally), or the path
        of a torchvision/timm ResNet state dict file (see :mod:`geopsp.model.pretrained`).
    detail_channels : int
        PSPNet only: 0 (the paper's head) or the channels of a stride-4 detail branch that refines
        the pyramid's output with the encoder's stride-4 feature before the classifier (thin
        structures such as roads; see :class:`~geopsp.model.pspnet.PSPNet`).
    """

    arch: str = "pspnet"
    encoder: str = "resnet50"
    in_channels: int = 3
    num_classes: int = 2
    output_stride: int = 8
    encoder_depth: int = 5
    ppm_bins: tuple[int, ...] = (1, 2, 3, 6)
    decoder_channels: int = 512
    dropout: float = 0.1
    aux: bool = True
    aux_weight: float = 0.4
    encoder_weights: str | None = None
    detail_channels: int = 0

    def __post_init__(self) -> None:
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {self.in_channels}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {self.output_stride}")
        if not 1 <= self.encoder_depth <= 5:
            raise ValueError(f"encoder_depth must be in 1..5, got {self.encoder_depth}")
        if self.detail_channels < 0:
            raise ValueError(f"detail_channels must be >= 0, got {self.detail_channels}")

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        d = asdict(self)
        d["ppm_bins"] = list(self.ppm_bins)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        """Build from a dict; unknown keys raise ``ValueError``."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model keys {sorted(unknown)}")
        kwargs = dict(data)
        if "ppm_bins" in kwargs:
            kwargs["ppm_bins"] = tuple(int(b) for b in kwargs["ppm_bins"])
        return cls(**kwargs)

    def replace(self, **changes: Any) -> ModelSpec:
        """Return a copy with some fields changed."""
        return ModelSpec.from_dict({**self.to_dict(), **changes})


@dataclass(frozen=True, slots=True)
class Normalization:
    """Per-band affine scaling applied identically at train and predict time.

    ``x_norm = (x - offset) / scale``, then clipped to ``clip`` if given. Mean/std statistics
    use ``offset=mean, scale=std``; a percentile range uses ``offset=low, scale=high-low`` and
    ``clip=(0, 1)`` (or a looser clip to keep some headroom).

    Parameters
    ----------
    method : {"meanstd", "percentile", "none"}
        How the numbers were obtained (documentation; the arithmetic is the same).
    offset, scale : tuple of float
        One value per model input band, in the scene's raw units.
    clip : tuple of float, optional
        Range to clip normalized values to.
    """

    method: Literal["meanstd", "percentile", "none"]
    offset: tuple[float, ...]
    scale: tuple[float, ...]
    clip: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if len(self.offset) != len(self.scale):
            raise ValueError(f"normalization has {len(self.offset)} offsets but {len(self.scale)} scales")
        if any((not math.isfinite(s)) or s <= 0 for s in self.scale):
            raise ValueError(f"normalization scales must be finite and > 0, got {self.scale}")
        if any(not math.isfinite(o) for o in self.offset):
            raise ValueError(f"normalization offsets must be finite, got {self.offset}")

    @property
    def bands(self) -> int:
        """Number of bands this normalization covers."""
        return len(self.offset)

    @classmethod
    def identity(cls, bands: int) -> Normalization:
        """No scaling (for float inputs already normalized)."""
        return cls("none", (0.0,) * bands, (1.0,) * bands)

    @classmethod
    def for_dtype(cls, dtype: str, bands: int) -> Normalization:
        """Return a neutral default scaling from a dtype's range (uint8: /255; uint16: /10000 reflectance).

        Used only by untrained bundles; trained bundles store statistics of their training data.
        """
        scale = {"uint8": 255.0, "uint16": 10000.0, "int16": 10000.0}.get(dtype, 1.0)
        return cls("none", (0.0,) * bands, (scale,) * bands)

    @classmethod
    def from_stats(cls, mean: Sequence[float], std: Sequence[float]) -> Normalization:
        """Mean/std normalization, guarding against zero std."""
        return cls("meanstd", tuple(float(m) for m in mean), tuple(max(float(s), 1e-6) for s in std))

    @classmethod
    def from_percentiles(
        cls, low: Sequence[float], high: Sequence[float], *, clip: tuple[float, float] = (-0.5, 1.5)
    ) -> Normalization:
        """Percentile-range normalization mapping ``low`` to 0 and ``high`` to 1."""
        scale = tuple(max(float(h) - float(lo), 1e-6) for lo, h in zip(low, high, strict=True))
        return cls("percentile", tuple(float(v) for v in low), scale, clip)

    def apply(self, x: NDArray[Any], *, axis: int = -3, out: NDArray[np.float32] | None = None) -> NDArray[np.float32]:
        """Normalize an array with bands on ``axis`` (default: ``(..., C, H, W)``).

        Parameters
        ----------
        x : ndarray
        axis : int
            The band axis.
        out : ndarray of float32, optional
            Where to write the result (``x``'s shape); default: a new array. The bits are the same.

        Returns
        -------
        ndarray of float32
            Same shape as ``x`` (``out`` when given).
        """
        shape = [1] * x.ndim
        shape[axis] = self.bands
        off = np.asarray(self.offset, dtype=np.float32).reshape(shape)
        sc = np.asarray(self.scale, dtype=np.float32).reshape(shape)
        if out is None:
            out = x.astype(np.float32)  # one allocation; the arithmetic runs in place
        else:
            np.copyto(out, x, casting="unsafe")
        out -= off
        out /= sc
        if self.clip is not None:
            np.clip(out, self.clip[0], self.clip[1], out=out)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "method": self.method,
            "offset": list(self.offset),
            "scale": list(self.scale),
            "clip": list(self.clip) if self.clip is not None else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Normalization:
        """Build from :meth:`to_dict` output."""
        clip = data.get("clip")
        return cls(
            data["method"],
            tuple(float(v) for v in data["offset"]),
            tuple(float(v) for v in data["scale"]),
            (float(clip[0]), float(clip[1])) if clip is not None else None,
        )


@dataclass(frozen=True, slots=True)
class BundleMeta:
    """The JSON metadata stored with a model's weights.

    Parameters
    ----------
    spec : ModelSpec
        Architecture.
    classes : ClassTable
        Output channel ``i`` is ``classes[i]``; its id is what the class raster stores.
    bands : tuple of int
        1-based indices of the scene bands the model reads, in model input order.
    band_names : tuple of str
        Names of those bands (``"B04"``, ``"red"`` ...), for humans and checks.
    input_dtype : str
        NumPy dtype name of the training scenes (``"uint8"``, ``"uint16"``, ``"int16"``, ``"float32"``).
    normalization : Normalization
        Per-band scaling of the raw values.
    pixel_size : float or None
        Ground sampling distance of the training data, in its CRS units.
    tile_size, overlap : int
        Default prediction tile edge and overlap in pixels.
    ignore_index : int
        Label value ignored in the loss and metrics.
    nodata : int
        Value written to the class raster where the input is nodata.
    provenance : dict
        Free-form: training data, epochs, metrics, geopsp version, creation time.
    format_version : int
        Bundle format version.
    """

    spec: ModelSpec
    classes: ClassTable
    bands: tuple[int, ...]
    band_names: tuple[str, ...]
    input_dtype: str
    normalization: Normalization
    pixel_size: float | None = None
    tile_size: int = 512
    overlap: int = 64
    ignore_index: int = 255
    nodata: int = 255
    provenance: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        n = self.spec.in_channels
        if len(self.bands) != n or len(self.band_names) != n or self.normalization.bands != n:
            raise ValueError(
                f"model expects {n} bands but metadata lists {len(self.bands)} bands, "
                f"{len(self.band_names)} names and {self.normalization.bands} normalization entries"
            )
        if len(self.classes) != self.spec.num_classes:
            raise ValueError(f"model has {self.spec.num_classes} outputs but the class table has {len(self.classes)}")
        if self.nodata in self.classes.ids:
            raise ValueError(f"nodata value {self.nodata} collides with a class id")
        if any(b < 1 for b in self.bands):
            raise ValueError(f"band indices are 1-based, got {self.bands}")
        if self.overlap * 2 >= self.tile_size:
            raise ValueError(f"overlap {self.overlap} must be less than half of tile size {self.tile_size}")

    @property
    def named_bands(self) -> dict[int, str]:
        """The scene bands the model reads, by 1-based index, with their names (``{1: "red", ...}``)."""
        return dict(zip(self.bands, self.band_names, strict=True))

    @property
    def output_dtype(self) -> str:
        """``uint8`` when class ids and nodata fit, else ``uint16``."""
        return "uint8" if max(self.classes.max_id, self.nodata) <= 255 else "uint16"

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "format_version": self.format_version,
            "spec": self.spec.to_dict(),
            "classes": self.classes.to_list(),
            "bands": list(self.bands),
            "band_names": list(self.band_names),
            "input_dtype": self.input_dtype,
            "normalization": self.normalization.to_dict(),
            "pixel_size": self.pixel_size,
            "tile_size": self.tile_size,
            "overlap": self.overlap,
            "ignore_index": self.ignore_index,
            "nodata": self.nodata,
            "provenance": self.provenance,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "bundle") -> BundleMeta:
        """Validate and build from a dict.

        Raises
        ------
        CheckpointError
            Naming ``source`` and what is missing, malformed or too new.
        """
        if not isinstance(data, Mapping):
            raise CheckpointError(f"{source}: metadata is not a JSON object; the bundle is damaged, re-export it")
        version = data.get("format_version")
        if not isinstance(version, int):
            raise CheckpointError(f"{source}: metadata has no integer format_version; the bundle is damaged")
        if version > FORMAT_VERSION:
            raise CheckpointError(
                f"{source}: bundle format version {version} is newer than this geopsp supports "
                f"({FORMAT_VERSION}); upgrade geopsp"
            )
        required = ("spec", "classes", "bands", "band_names", "input_dtype", "normalization")
        missing = [k for k in required if k not in data]
        if missing:
            raise CheckpointError(
                f"{source}: metadata lacks {', '.join(missing)}; the bundle is damaged or not a geopsp bundle"
            )
        try:
            return cls(
                spec=ModelSpec.from_dict(data["spec"]),
                classes=ClassTable.from_list(data["classes"]),
                bands=tuple(int(b) for b in data["bands"]),
                band_names=tuple(str(b) for b in data["band_names"]),
                input_dtype=str(np.dtype(data["input_dtype"])),
                normalization=Normalization.from_dict(data["normalization"]),
                pixel_size=None if data.get("pixel_size") is None else float(data["pixel_size"]),
                tile_size=int(data.get("tile_size", 512)),
                overlap=int(data.get("overlap", 64)),
                ignore_index=int(data.get("ignore_index", 255)),
                nodata=int(data.get("nodata", 255)),
                provenance=dict(data.get("provenance") or {}),
                format_version=version,
            )
        except CheckpointError:
            raise
        except (TypeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{source}: invalid metadata ({exc}); the bundle is damaged or incompatible") from exc
