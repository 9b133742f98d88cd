"""geopsp: PSPNet segmentation of large geospatial rasters.

Scenes of any size are tiled, segmented by a PSPNet, blended without seams into a
georeferenced class raster, and vectorized into clean land-use polygons with QGIS styles.

The public names below are imported lazily so that ``import geopsp`` (and the CLI's
``--help``) stays fast; torch is imported only when a model is used.
"""

from __future__ import annotations

import logging

from geopsp import _lazy
from geopsp.errors import (
    CheckpointError,
    ConfigError,
    CRSMismatchError,
    GeopspError,
    GeopspWarning,
    InputRasterError,
    InputVectorError,
    ModelError,
    NodataWarning,
    NotGeoreferencedWarning,
    OutputError,
    OutputExistsError,
    TilingError,
    TrainingDataWarning,
    TrainingDivergedError,
    TrainingWarning,
)

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

_LAZY: dict[str, str] = {
    "ClassTable": "geopsp.classes",
    "ClassInfo": "geopsp.classes",
    "load_config": "geopsp.config.load",
    "segment_raster": "geopsp.pipeline",
    "Tile": "geopsp.tiling.windows",
    "Mosaicker": "geopsp.inference.mosaic",
    "vectorize": "geopsp.vectorize",
    "load_bundle": "geopsp.model.bundle",
    "save_bundle": "geopsp.model.bundle",
    "build_model": "geopsp.model.registry",
}

__all__ = [
    "CRSMismatchError",
    "CheckpointError",
    "ClassInfo",
    "ClassTable",
    "ConfigError",
    "GeopspError",
    "GeopspWarning",
    "InputRasterError",
    "InputVectorError",
    "ModelError",
    "Mosaicker",
    "NodataWarning",
    "NotGeoreferencedWarning",
    "OutputError",
    "OutputExistsError",
    "Tile",
    "TilingError",
    "TrainingDataWarning",
    "TrainingDivergedError",
    "TrainingWarning",
    "__version__",
    "build_model",
    "load_bundle",
    "load_config",
    "save_bundle",
    "segment_raster",
    "vectorize",
]

__getattr__, __dir__ = _lazy.lazy_exports(__name__, _LAZY)
