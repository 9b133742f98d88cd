"""The ``train`` section of the configuration: data, split, sampling, augmentation, model, optimizer.

Re-exported by :mod:`geopsp.config.schema`, where the whole configuration lives.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from geopsp.config._base import DeviceName
from geopsp.config._base import Section as _Section
from geopsp.config.paths import PathOrigin

__all__ = [
    "AugmentConfig",
    "ClassEntry",
    "ColorLabel",
    "DataConfig",
    "NormalizationConfig",
    "OptimConfig",
    "SamplingConfig",
    "SplitConfig",
    "TrainConfig",
    "TrainModelConfig",
]


class ColorLabel(_Section):
    """One entry of a colour-coded mask: an RGB colour and the label value it stands for."""

    color: tuple[int, int, int] = Field(description="RGB colour in the mask (each channel thresholded at 128).")
    value: int | None = Field(description="Label value (class id) of this colour; null: ignored (e.g. 'unknown').")
    name: str | None = Field(None, description="Name, for humans.")


class DataConfig(_Section):
    """Where the training scenes and their labels are, and how labels map to classes.

    ``root`` written in a config file is relative to the file's folder; from ``--set`` or a
    ``GEOPSP_TRAIN__DATA__ROOT`` variable, to the working directory; ``~`` and ``${VAR}``
    (``${VAR:-default}``) are expanded (:mod:`geopsp.config.paths`). ``images``, ``labels`` and
    ``vector`` are relative to ``root``.
    """

    layout: Literal["scenes", "vector", "spacenet", "deepglobe"] = Field(
        "scenes",
        description="scenes: GeoTIFFs with label rasters; vector: GeoTIFFs with vector labels; "
        "spacenet: image chips with a building GeoJSON per chip; deepglobe: <id>_sat.jpg with <id>_mask.png.",
    )
    root: str | None = Field(
        None,
        description="Folder holding the data: in a config file relative to the file's folder, from --set or the "
        "environment relative to the working directory; ~ and ${VAR} / ${VAR:-default} are expanded "
        "(default: the config file's folder).",
    )
    images: str = Field("*.tif", description="Glob of the scenes, relative to root ('**' recurses).")
    labels: str | None = Field(
        None,
        description="Label raster of each scene (layout scenes): a path template relative to root with "
        "{stem} (scene file stem) and {name} (file name), e.g. 'labels/{name}'.",
    )
    vector: str | None = Field(
        None,
        description="Vector labels (layout vector: one file or a template with {stem}; layout spacenet: "
        "a glob of GeoJSON files matched to chips by chip id).",
    )
    layer: str | None = Field(None, description="Layer of a multi-layer vector file.")
    class_field: str | None = Field(None, description="Attribute holding each polygon's class (value_map maps it).")
    value_map: dict[str, int | None] | None = Field(
        None, description="Label value (raster value or attribute) -> class id; null ignores the value."
    )
    burn_class: int | None = Field(
        None, description="Class id burnt for every polygon (footprints) when class_field is unset."
    )
    background_class: int | None = Field(
        None, description="Class id of pixels covered by no polygon (e.g. background for buildings); null: ignored."
    )
    all_touched: bool = Field(
        False, description="Burn every pixel a polygon touches, not only those whose centre it covers."
    )
    ignore_values: tuple[float, ...] = Field(
        (), description="Label values that mean unlabeled (ignored without a warning)."
    )
    bands: tuple[int, ...] | None = Field(None, description="1-based scene bands to train on (default: all).")
    band_names: tuple[str, ...] | None = Field(
        None, description="Names of those bands (default: the scene's band descriptions)."
    )
    chip_id_regex: str = Field(
        r"img\d+|\d+_\d+", description="SpaceNet: the last match of this regex in a file stem is its chip id."
    )
    color_map: tuple[ColorLabel, ...] | None = Field(
        None, description="DeepGlobe: mask colour -> label value (default: the 7 DeepGlobe land-cover colours)."
    )
    cache_mb: int = Field(2048, ge=0, description="Scenes up to this total size are held in memory while training.")

    # Where load_config took root from, for the message when the folder does not exist.
    _root_origin: PathOrigin | None = PrivateAttr(default=None)

    @field_validator("value_map", mode="before")
    @classmethod
    def _keys_as_str(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {_value_key(k): v for k, v in value.items()}
        return value


def _value_key(value: Any) -> str:
    """Canonical string form of a label value: ``1``, ``1.0`` and ``"1"`` all become ``"1"``."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


class ClassEntry(_Section):
    """One class of the table: id (the label value), name and colour."""

    id: int = Field(ge=0, le=65534)
    name: str
    color: tuple[int, int, int] | str | None = Field(None, description="[r, g, b] or '#rrggbb'.")


class SplitConfig(_Section):
    """Train/validation split by scene, by date, by a spatial stripe or by stratified blocks; never random pixels."""

    val: tuple[str, ...] = Field((), description="Glob patterns of scene ids (file stems) held out for validation.")
    train: tuple[str, ...] = Field(
        (), description="Glob patterns of scene ids to train on (default: all not held out)."
    )
    date_regex: str = Field(r"(\d{8})", description="Regex whose first group is a scene's date (YYYYMMDD).")
    val_dates: tuple[str, ...] = Field((), description="Dates (as date_regex extracts them) held out for validation.")
    val_from_date: str | None = Field(None, description="Scenes dated on or after this date are held out.")
    val_fraction: float = Field(
        0.0, ge=0.0, lt=1.0, description="Hold out this fraction of whole scenes, chosen with the seed (0: off)."
    )
    holdout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Hold out this fraction of every scene as a spatial stripe (for single scenes).",
    )
    holdout_side: Literal["left", "right", "top", "bottom"] = Field(
        "right", description="Where the hold-out stripe lies."
    )
    val_blocks: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description=(
            "Hold out square blocks holding about this fraction of the labeled pixels of every training scene "
            "(0: off). Blocks are chosen seeded and stratified, so every class with labeled pixels gets "
            "validation pixels; their labels are never trained on. Combines with val, val_dates, val_from_date "
            "and val_fraction (whole scenes held out), not with holdout."
        ),
    )
    block_size: int = Field(64, ge=8, le=4096, description="Edge (px) of the validation blocks of val_blocks.")
    block_layout: Literal["per_scene", "shared"] = Field(
        "per_scene",
        description=(
            "per_scene: each scene (date) draws its own blocks, so a stack of dates of one area still trains on "
            "every location at some date (validates predicting a new date of a known area); shared: the same "
            "blocks are held out of every scene on the same grid (validates unseen places)."
        ),
    )

    @model_validator(mode="after")
    def _one_spatial_split(self) -> SplitConfig:
        if self.val_blocks > 0 and self.holdout > 0:
            raise ValueError(
                f"val_blocks ({self.val_blocks}) and holdout ({self.holdout}) are two spatial hold-outs; "
                "set one of them to 0"
            )
        return self


class SamplingConfig(_Section):
    """Random training windows, drawn in proportion to how much of them is labeled."""

    window: int = Field(256, ge=16, le=4096, description="Window edge in pixels.")
    batch_size: int = Field(8, ge=1, le=1024)
    windows_per_epoch: int = Field(512, ge=1, description="Windows drawn per epoch.")
    grid: int = Field(
        32, ge=4, description="Cell size (px) of the coarse grid on which labeled fractions are measured."
    )
    min_labeled: float = Field(
        0.02, ge=0.0, le=1.0, description="Windows with less labeled area are never drawn (unless nothing else is)."
    )
    power: float = Field(1.0, ge=0.0, description="Draw probability grows with labeled fraction ** power (0: uniform).")
    uniform: float = Field(0.1, ge=0.0, le=1.0, description="Share of windows drawn uniformly among the eligible ones.")
    rare: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Share of windows aimed at one class, each class with training pixels equally often "
        "(rare-class sampling: roads and bare soil are seen as often as forest).",
    )


class AugmentConfig(_Section):
    """Augmentations that keep geometry honest (no shears, no colour-space swaps)."""

    flips: bool = Field(True, description="Random horizontal and vertical flips.")
    rot90: bool = Field(True, description="Random 90-degree rotations.")
    scale: tuple[float, float] = Field((0.9, 1.1), description="Mild scale jitter range; (1, 1) turns it off.")
    brightness: float = Field(0.1, ge=0.0, le=2.0, description="Per-band additive jitter, in normalized units.")
    contrast: float = Field(0.1, ge=0.0, lt=1.0, description="Per-band multiplicative jitter: factor in 1 +- contrast.")

    @field_validator("scale")
    @classmethod
    def _scale_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        lo, hi = value
        if not 0.25 <= lo <= hi <= 4.0:
            raise ValueError(f"must be [low, high] with 0.25 <= low <= high <= 4, got {list(value)}")
        return value


class NormalizationConfig(_Section):
    """Per-band statistics computed from the training scenes (valid pixels only) and stored in the bundle."""

    method: Literal["meanstd", "percentile", "none"] = Field(
        "meanstd", description="meanstd: (x - mean) / std; percentile: (x - p_low) / (p_high - p_low); none: as is."
    )
    percentiles: tuple[float, float] = Field(
        (2.0, 98.0), description="Low and high percentile of the percentile method."
    )
    windows: int = Field(64, ge=1, description="Windows sampled to compute the statistics.")
    max_pixels: int = Field(1_000_000, ge=1000, description="Pixels per band kept for the percentile method.")

    @field_validator("percentiles")
    @classmethod
    def _percentile_order(cls, value: tuple[float, float]) -> tuple[float, float]:
        lo, hi = value
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(f"must be [low, high] with 0 <= low < high <= 100, got {list(value)}")
        return value


class TrainModelConfig(_Section):
    """The network: a preset plus optional overrides of its fields."""

    preset: str = Field("fast", description="Model preset (geopsp.model.PRESETS: 'paper', 'fast').")
    arch: str | None = Field(None, description="Architecture override (pspnet, unet, deeplabv3plus, fpn).")
    encoder: str | None = Field(None, description="Encoder override (resnet18, resnet34, resnet50 ...).")
    encoder_depth: int | None = Field(None, ge=1, le=5)
    output_stride: Literal[8, 16, 32] | None = None
    ppm_bins: tuple[int, ...] | None = None
    decoder_channels: int | None = Field(None, ge=1)
    dropout: float | None = Field(None, ge=0.0, lt=1.0)
    aux: bool | None = None
    aux_weight: float | None = Field(None, ge=0.0)
    encoder_weights: str | None = Field(
        None,
        description="'imagenet' uses cached weights (offline); a path (relative like train.data.root; .pth, .pt, "
        "or .safetensors) loads a torchvision/timm ResNet state dict; null: from scratch.",
    )
    detail_channels: int | None = Field(
        None,
        ge=0,
        le=1024,
        description="PSPNet: channels of a stride-4 detail branch before the classifier (0: the paper's head).",
    )


class OptimConfig(_Section):
    """Loss, optimizer and learning-rate schedule (paper defaults: CE + 0.4 aux, SGD 0.9, wd 1e-4, poly 0.9)."""

    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.01, gt=0.0, le=10.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    poly_power: float = Field(0.9, ge=0.0, description="lr = base * (1 - progress) ** poly_power.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps.")
    loss: Literal["ce", "dice", "focal", "ce+dice"] = Field("ce", description="Main loss; ignored pixels never count.")
    focal_gamma: float = Field(2.0, ge=0.0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    class_weights: tuple[float, ...] | Literal["balanced"] | None = Field(
        None, description="Per-class loss weights in class-table order, or 'balanced' (inverse sqrt frequency)."
    )
    grad_clip: float | None = Field(None, gt=0.0, description="Clip the gradient norm to this value.")


class TrainConfig(_Section):
    """Options of ``geopsp train``."""

    data: DataConfig = DataConfig()
    classes: str | tuple[ClassEntry, ...] | None = Field(
        None,
        description="Class table: a YAML file (relative like train.data.root) or a list of {id, name, color}.",
    )
    split: SplitConfig = SplitConfig()
    sampling: SamplingConfig = SamplingConfig()
    augment: AugmentConfig = AugmentConfig()
    normalization: NormalizationConfig = NormalizationConfig()
    model: TrainModelConfig = TrainModelConfig()
    optim: OptimConfig = OptimConfig()
    epochs: int = Field(20, ge=1, description="Epochs of sampling.windows_per_epoch windows each.")
    max_minutes: float | None = Field(
        None, gt=0.0, description="Time budget in minutes; what happens when it is spent is train.budget."
    )
    budget: Literal["stretch", "guard"] = Field(
        "stretch",
        description=(
            "stretch: the poly schedule is compressed to end when max_minutes is spent (the result depends on "
            "the machine's speed); guard: the schedule follows the epochs and max_minutes only stops a run that "
            "overruns (with a warning), so the result is the same on any machine that finishes."
        ),
    )
    select: Literal["best", "last", "ema"] = Field(
        "ema",
        description=(
            "Which weights become model.safetensors: best (the best validation score of the raw or EMA "
            "weights after min_epochs), last (the raw weights of the last epoch) or ema (the moving average "
            "of the weights at the end; falls back to last without ema_decay)."
        ),
    )
    select_metric: Literal["miou", "mean_f1"] = Field(
        "miou", description="Validation score that picks the best epoch (over the classes present in validation)."
    )
    min_epochs: int | None = Field(
        None,
        ge=1,
        description="No 'best' is declared before this epoch (default: a quarter of train.epochs).",
    )
    ema_decay: float | None = Field(
        0.998,
        gt=0.0,
        lt=1.0,
        description="Per-step decay of the exponential moving average of the weights (null: no EMA).",
    )
    channels_last: bool = Field(True, description="Train in channels-last memory format (faster convolutions).")
    loader_workers: int | None = Field(
        None,
        ge=0,
        le=64,
        description="Processes that build batches ahead of the model (0: in the main process; default: up to 4 "
        "with CUDA; on a CPU 1 when a core is left over by train.threads, else 0).",
    )
    log_every: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="Read the training loss back from the device, check it and report progress every this many "
        "optimizer steps (and at each epoch's end); each read waits for the device (default: 1 on a CPU, 20 on CUDA).",
    )
    val_every: int = Field(1, ge=1, description="Validate every this many epochs (and after the last).")
    val_tile: int = Field(512, ge=32, le=8192, description="Tile edge used to run validation scenes.")
    val_batch_size: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Validation tiles per forward pass (default: sampling.batch_size; 1: one at a time). Each tile "
        "is still scored on its own; batching only rounds the last bits of the logits otherwise.",
    )
    seed: int = Field(0, ge=0, description="Seeds sampling, augmentation and weight initialization.")
    device: DeviceName = Field("auto", description="Where the model trains (auto, cpu, cuda or cuda:N).")
    amp: bool | Literal["auto"] | None = Field(
        "auto",
        description=(
            "bf16 autocast: true, false, or auto (null too): on CUDA where bf16 is supported; on a CPU whichever "
            "of bf16 and fp32 a timed training step on this machine finds faster."
        ),
    )
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice).")
    ignore_index: int = Field(255, ge=0, le=65535, description="Label value of ignored pixels in the bundle.")
    tile_size: int | None = Field(
        None, ge=32, le=8192, description="Prediction tile size stored in the bundle (default: 2 x window)."
    )
    overlap: int | None = Field(
        None, ge=0, description="Prediction overlap stored in the bundle (default: tile_size / 8)."
    )
    out: str | None = Field(
        None,
        description="Output folder, relative like train.data.root (default: runs/<config name> in the working "
        "directory).",
    )
