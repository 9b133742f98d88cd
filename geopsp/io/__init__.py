"""Input and output: rasters, vectors, and safe (atomic) output files."""

from geopsp.io.atomic import StagedOutputs, atomic_output, check_output_path
from geopsp.io.raster import (
    PROBABILITY_NODATA,
    PROBABILITY_SCALE,
    ClassRasterWriter,
    encode_probability,
    read_class_table,
    write_class_raster,
)
from geopsp.io.scene import SceneInfo, inspect_scene, open_raster, open_scene, read_failure, read_rows

__all__ = [
    "ClassRasterWriter",
    "PROBABILITY_NODATA",
    "PROBABILITY_SCALE",
    "SceneInfo",
    "StagedOutputs",
    "atomic_output",
    "check_output_path",
    "encode_probability",
    "inspect_scene",
    "open_raster",
    "open_scene",
    "read_class_table",
    "read_failure",
    "read_rows",
    "write_class_raster",
]
