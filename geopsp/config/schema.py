"""Frozen, typed configuration models, one section per stage.

Every model rejects unknown keys; :func:`geopsp.config.load_config` turns validation
failures into a :class:`~geopsp.errors.ConfigError` naming the file and dotted key, with a
did-you-mean suggestion for misspelt keys.

The ``train`` section's models live in :mod:`geopsp.config.train_schema` and are re-exported
here; every section derives from :class:`geopsp.config._base.Section`.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from geopsp.config._base import DeviceName
from geopsp.config._base import Section as _Section
from geopsp.config.train_schema import (
    AugmentConfig,
    ClassEntry,
    ColorLabel,
    DataConfig,
    NormalizationConfig,
    OptimConfig,
    SamplingConfig,
    SplitConfig,
    TrainConfig,
    TrainModelConfig,
)
from geopsp.encoding import QaLayer, qa_order

__all__ = [
    "AugmentConfig",
    "BatchConfig",
    "ClassEntry",
    "ColorLabel",
    "DataConfig",
    "GeopspConfig",
    "NormalizationConfig",
    "OptimConfig",
    "PredictConfig",
    "SamplingConfig",
    "SplitConfig",
    "TLSConfig",
    "TrainConfig",
    "TrainModelConfig",
    "VectorizeConfig",
]


class PredictConfig(_Section):
    """Options of ``geopsp predict``; ``None`` means "take it from the model bundle"."""

    tile_size: int | None = Field(None, ge=32, le=8192, description="Tile edge in pixels (default: the bundle's).")
    overlap: int | None = Field(
        None, ge=0, le=4096, description="Overlap between neighbouring tiles in pixels (default: the bundle's)."
    )
    batch_size: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Tiles per forward pass; null: 4 on the CPU, sized from the free memory on CUDA.",
    )
    device: DeviceName = Field(
        "auto", description="Where the model runs (auto, cpu, cuda or cuda:N); auto picks CUDA when present."
    )
    runtime: Literal["auto", "torch", "onnxruntime"] = Field(
        "auto",
        description="What runs the model: torch, onnxruntime (an exported .onnx, or the bundle exported once into "
        "the cache), or auto: the fastest with torch fp32's classes on this device (onnxruntime on a CPU "
        "when an export exists or pays for itself, torch on CUDA).",
    )
    amp: bool | None = Field(
        None, description="bf16 autocast; None: on for CUDA and for CPUs with native bf16 (AVX512-BF16/AMX), else off."
    )
    channels_last: bool = Field(True, description="Use channels_last memory format.")
    compile: bool = Field(False, description="torch.compile the model (CUDA only).")
    tta: Literal["none", "flip", "d4"] = Field(
        "none", description="Test-time augmentation, averaged in probability space."
    )
    blend: Literal["cosine", "uniform", "gaussian"] = Field(
        "cosine", description="Weight kernel used to blend overlapping tiles."
    )
    blend_floor: float = Field(
        0.001,
        gt=0.0,
        le=1.0,
        description="Smallest blend weight, so scene-edge pixels still count; small, so a tile's edge pixels "
        "give way to its neighbour's.",
    )
    margin_px: int = Field(
        16,
        ge=0,
        le=256,
        multiple_of=16,
        description="Pixels of reflection added around every tile before the model and cropped off its output, "
        "so the convolutions' zero padding falls outside the kept pixels (0: off); costs "
        "((tile + 2 margin) / tile)^2 model time.",
    )
    probabilities: bool = Field(
        False, description="Also write the winning class probability as a uint8 raster (the QA layer 'probability')."
    )
    qa: list[QaLayer] = Field(
        default_factory=list,
        description="QA layers to write beside the class raster, each a uint8 COG of stored = round(255 x) (0: "
        "nodata) with a QGIS style: probability (the winning class's), margin (top-1 minus top-2), entropy "
        "(normalized by ln K), disagreement (fraction of overlapping tiles whose own class differs).",
    )
    reader_threads: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Threads cutting and preprocessing tiles; null: 2 on the CPU, half the cores (2-8) on CUDA.",
    )
    bound_heap: bool = Field(
        True,
        description="Keep peak memory near the working set on glibc (large buffers mapped and unmapped, freed "
        "memory handed back); false trades about 15 % more peak memory on very wide scenes for about 25 % more "
        "CPU speed (page faults saved). No effect on the outputs.",
    )
    compress: Literal["zstd", "deflate", "lzw"] = Field("deflate", description="Compression of output rasters.")
    vector: bool = Field(False, description="Also vectorize the class raster to polygons.")
    preview: bool = Field(False, description="Also write a preview PNG of the scene with classes blended over it.")
    input_scale: tuple[float, float, float, float] | None = Field(
        None,
        description="Explicit linear mapping [SRC_MIN, SRC_MAX, DST_MIN, DST_MAX] of the scene's values, as "
        "gdal_translate -scale, applied as tiles are read, before normalization (no copy is written); rounded to "
        "whole numbers for an integer model, whose type the results must fit (never clipped). Default: values "
        "used as stored, a scene of another type than the model's accepted when its values fit.",
    )

    resolution: Literal["native", "model"] | float = Field(
        "native",
        description="Pixel size the scene is read at: native (as stored; a scene whose pixel size differs from "
        "the model's by more than 2x gets a warning), model (the bundle's training pixel size) or a number in the "
        "target CRS's units; the scene is warped on the fly and the outputs are on that grid.",
    )
    crs: str | None = Field(
        None,
        description="CRS the scene is read in (EPSG:32633, a WKT or PROJ string); warped on the fly, outputs in it. "
        "Default: the scene's own.",
    )
    aoi: str | None = Field(
        None,
        description="Area of interest: minx,miny,maxx,maxy in lon/lat (the STAC bbox convention) or a vector file "
        "(any CRS); only tiles over it are read, pixels outside its polygons are nodata in every output.",
    )

    @field_validator("resolution")
    @classmethod
    def _resolution_positive(cls, v: str | float) -> str | float:
        if not isinstance(v, str) and not (math.isfinite(v) and v > 0):
            raise ValueError(f"resolution must be native, model or a positive pixel size, got {v}")
        return v

    @field_validator("input_scale")
    @classmethod
    def _input_scale_maps(cls, v: tuple[float, float, float, float] | None) -> tuple[float, float, float, float] | None:
        if v is None:
            return v
        if not all(math.isfinite(x) for x in v):
            raise ValueError(f"input_scale must be four finite numbers SRC_MIN SRC_MAX DST_MIN DST_MAX, got {list(v)}")
        if v[0] == v[1] or v[2] == v[3]:
            raise ValueError(
                f"input_scale {list(v)} maps a range of one value; give SRC_MIN != SRC_MAX and DST_MIN != DST_MAX, "
                "e.g. [0, 1000, 0, 255]"
            )
        return v

    @model_validator(mode="after")
    def _overlap_below_tile(self) -> PredictConfig:
        if self.tile_size is not None and self.overlap is not None and self.overlap * 2 >= self.tile_size:
            raise ValueError(
                f"overlap ({self.overlap}) must be less than half the tile size ({self.tile_size}); "
                f"use at most {self.tile_size // 2 - 1}"
            )
        return self

    @property
    def qa_layers(self) -> tuple[QaLayer, ...]:
        """The QA layers this run writes (``qa``, and ``probability`` when ``probabilities``), in order.

        Examples
        --------
        >>> PredictConfig(qa=["entropy"], probabilities=True).qa_layers
        ('probability', 'entropy')
        """
        return qa_order([*self.qa, *(["probability"] if self.probabilities else [])])


class VectorizeConfig(_Section):
    """Options of ``geopsp vectorize``."""

    block_rows: int = Field(1024, ge=16, description="Rows of the class raster polygonized at a time.")
    sieve_px: int = Field(
        0, ge=0, description="Merge regions of fewer pixels into the neighbour sharing the longest border (0: off)."
    )
    simplify: float = Field(
        0.0, ge=0.0, description="Coverage simplification tolerance in map units, shared edges kept (0: off)."
    )
    min_area_m2: float = Field(
        0.0, ge=0.0, description="Merge polygons smaller than this (m2) into the neighbour sharing the longest border."
    )
    fill_holes_m2: float = Field(
        0.0, ge=0.0, description="Fill holes smaller than this (m2); the polygons inside are absorbed (0: off)."
    )
    min_confidence: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Merge polygons whose mean confidence (conf_mean, 0..1) is below this into the neighbour "
        "sharing the longest border; needs the confidence raster (None: off).",
    )
    connectivity: Literal[4, 8] = Field(4, description="Pixel connectivity of polygons.")
    format: Literal["gpkg", "geojson", "fgb", "shp", "parquet"] = Field("gpkg", description="Output vector format.")
    skip_classes: tuple[int, ...] = Field((), description="Class ids that produce no polygons (e.g. background).")
    workers: int = Field(0, ge=0, le=64, description="Processes polygonizing strips (0: one per CPU, at most 8).")
    style: Literal["classes", "confidence"] = Field(
        "classes",
        description="Default QGIS style: colours by class, or a graduated ramp on conf_mean (needs the confidence "
        "raster); a GeoPackage stores the other one too, by name.",
    )

    @property
    def reads_confidence(self) -> str | None:
        """The option that needs the polygons' ``conf_mean`` (so a confidence raster), or None.

        Examples
        --------
        >>> VectorizeConfig(min_confidence=0.5).reads_confidence
        'min_confidence'
        >>> VectorizeConfig().reads_confidence is None
        True
        """
        if self.min_confidence is not None:
            return "min_confidence"
        return "style" if self.style == "confidence" else None


class TLSConfig(_Section):
    """TLS of the dask cluster a batch runs on (PEM files; relative paths are relative to the config file)."""

    ca_file: str | None = Field(
        None, description="CA certificate that signed the scheduler's and workers' certificates."
    )
    cert: str | None = Field(None, description="This client's certificate, signed by ca_file.")
    key: str | None = Field(None, description="The certificate's private key (None: appended to cert).")

    @model_validator(mode="after")
    def _complete(self) -> TLSConfig:
        if (self.ca_file is None) != (self.cert is None) or (self.key is not None and self.cert is None):
            given = ", ".join(k for k in ("ca_file", "cert", "key") if getattr(self, k) is not None)
            raise ValueError(f"TLS needs ca_file and cert (key unless appended to cert), got only {given}")
        return self

    @property
    def enabled(self) -> bool:
        """Whether TLS settings are given."""
        return self.ca_file is not None


class BatchConfig(_Section):
    """Options of ``geopsp batch``: where scenes run and how big scenes are split."""

    scheduler: str | None = Field(
        None, description="Address of an existing dask scheduler (tcp://host:port); None starts a LocalCluster."
    )
    n_workers: int | None = Field(
        None, ge=1, le=1024, description="LocalCluster worker processes (default: sized to the machine)."
    )
    threads_per_worker: int = Field(1, ge=1, le=64, description="Scenes a worker runs at once (LocalCluster).")
    torch_threads: int | None = Field(
        None,
        ge=1,
        le=256,
        description="Threads of each worker process for torch, GDAL and ONNX Runtime (default: the host's cores "
        "shared among its worker threads).",
    )
    memory_limit: str = Field(
        "auto", description="LocalCluster memory limit per worker ('auto', '4GiB', '0' for none)."
    )
    resources: dict[str, float] = Field(
        default_factory=dict, description="dask resources each scene task asks for, e.g. {GPU: 1}."
    )
    retries: int = Field(
        2, ge=0, le=20, description="Retries of a scene after a transient error (input errors are never retried)."
    )
    strip_pixels: int = Field(
        50_000_000, ge=65_536, description="Scenes with more pixels are split into row strips predicted in parallel."
    )
    spacenet_products: tuple[str, ...] = Field(
        (), description="SpaceNet image folders to take (e.g. [PS-RGB]); empty: every image folder found."
    )
    gpus: Literal["all"] | int | None = Field(
        None,
        description="LocalCluster: one worker per GPU ('all' or how many), pinned to it with CUDA_VISIBLE_DEVICES, "
        "plus n_workers (default 1) CPU workers that stitch and vectorize.",
    )
    cpu_resources: dict[str, float] = Field(
        default_factory=dict,
        description="dask resources each stitch and vectorize task asks for, e.g. {CPU: 1} to keep them off GPU "
        "workers (a LocalCluster with gpus uses {CPU: 1}).",
    )
    dashboard_address: str | None = Field(
        "127.0.0.1:0",
        description="LocalCluster dashboard address (needs bokeh); ':8787' listens on every interface; None: no "
        "dashboard.",
    )
    tls: TLSConfig = TLSConfig()
    connect_timeout_s: float = Field(30.0, gt=0, description="Seconds to wait for the scheduler and a first worker.")

    @field_validator("gpus", mode="before")
    @classmethod
    def _gpu_count(cls, value: Any) -> Any:
        number = isinstance(value, int) or (isinstance(value, str) and value.isdigit())
        if isinstance(value, bool) or (number and not 1 <= int(value) <= 1024):
            raise ValueError(f"gpus must be 'all' or a number of GPUs (1 to 1024), got {value!r}")
        return value

    @model_validator(mode="after")
    def _scheduler_address(self) -> BatchConfig:
        if self.scheduler is not None and "://" not in self.scheduler and ":" not in self.scheduler:
            raise ValueError(f"scheduler must be an address like tcp://host:8786, got {self.scheduler!r}")
        return self


class GeopspConfig(_Section):
    """The whole configuration."""

    predict: PredictConfig = PredictConfig()
    vectorize: VectorizeConfig = VectorizeConfig()
    train: TrainConfig = TrainConfig()
    batch: BatchConfig = BatchConfig()
