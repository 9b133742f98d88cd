"""Typed, validated configuration: packaged defaults < YAML file < environment < ``--set``."""

from geopsp.config.load import load_config, parse_set_items
from geopsp.config.schema import (
    BatchConfig,
    GeopspConfig,
    PredictConfig,
    TrainConfig,
    VectorizeConfig,
)

__all__ = [
    "BatchConfig",
    "GeopspConfig",
    "PredictConfig",
    "TrainConfig",
    "VectorizeConfig",
    "load_config",
    "parse_set_items",
]
