"""Frozen, typed configuration models, one section per stage.

Every model rejects unknown keys; :func:`geopsp.config.load_config` turns validation
failures into a :class:`~geopsp.errors.ConfigError` naming the file and dotted key, with a
did-you-mean suggestion for misspelt keys.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "BatchConfig",
    "GeopspConfig",
    "PredictConfig",
    "TrainConfig",
    "VectorizeConfig",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class PredictConfig(_Section):
    """Options of ``geopsp predict``; ``None`` means "take it from the model bundle"."""

    tile_size: int | None = Field(None, ge=32, le=8192, description="Tile edge in pixels (default: the bundle's).")
    overlap: int | None = Field(None, ge=0, le=4096, description="Overlap between neighbouring tiles in pixels (default: the bundle's).")
    batch_size: int = Field(4, ge=1, le=1024, description="Tiles per forward pass.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where the model runs; auto picks CUDA when present.")
    amp: bool | None = Field(None, description="bf16 autocast; None: on for CUDA, off on CPU.")
    channels_last: bool = Field(True, description="Use channels_last memory format.")
    compile: bool = Field(False, description="torch.compile the model (CUDA only).")
    tta: Literal["none", "flip", "d4"] = Field("none", description="Test-time augmentation, averaged in probability space.")
    blend: Literal["cosine", "uniform", "gaussian"] = Field("cosine", description="Weight kernel used to blend overlapping tiles.")
    blend_floor: float = Field(0.05, gt=0.0, le=1.0, description="Smallest blend weight, so scene-edge pixels still count.")
    probabilities: bool = Field(False, description="Also write the winning class probability as a uint8 raster.")
    reader_threads: int = Field(2, ge=1, le=64, description="Background threads reading and preprocessing tiles.")
    compress: Literal["zstd", "deflate", "lzw"] = Field("deflate", description="Compression of output rasters.")
    vector: bool = Field(False, description="Also vectorize the class raster to polygons.")
    preview: bool = Field(False, description="Also write a preview PNG of the scene with classes blended over it.")

    @model_validator(mode="after")
    def _overlap_below_tile(self) -> PredictConfig:
        if self.tile_size is not None and self.overlap is not None and self.overlap * 2 >= self.tile_size:
            raise ValueError(
                f"overlap ({self.overlap}) must be less than half the tile size ({self.tile_size}); "
                f"use at most {self.tile_size // 2 - 1}"
            )
        return self


class VectorizeConfig(_Section):
    """Options of ``geopsp vectorize``."""

    block_rows: int = Field(1024, ge=16, description="Rows of the class raster polygonized at a time.")
    sieve_px: int = Field(0, ge=0, description="Remove connected regions smaller than this many pixels first (0: off).")
    simplify: float = Field(0.0, ge=0.0, description="Coverage simplification tolerance in map units (0: off).")
    min_area_m2: float = Field(0.0, ge=0.0, description="Merge polygons smaller than this into their largest neighbour.")
    fill_holes_m2: float = Field(0.0, ge=0.0, description="Fill holes smaller than this (0: off).")
    connectivity: Literal[4, 8] = Field(4, description="Pixel connectivity of polygons.")
    format: Literal["gpkg", "geojson", "fgb", "shp", "parquet"] = Field("gpkg", description="Output vector format.")
    skip_classes: tuple[int, ...] = Field((), description="Class ids that produce no polygons (e.g. background).")


class TrainConfig(_Section):
    """Options of ``geopsp train`` (filled in by the training issue)."""

    epochs: int = Field(20, ge=1)


class BatchConfig(_Section):
    """Options of ``geopsp batch`` (filled in by the batch issue)."""

    scheduler: str | None = Field(None, description="Address of an existing dask scheduler (tcp://host:port).")


class GeopspConfig(_Section):
    """The whole configuration."""

    predict: PredictConfig = PredictConfig()
    vectorize: VectorizeConfig = VectorizeConfig()
    train: TrainConfig = TrainConfig()
    batch: BatchConfig = BatchConfig()
