"""Input and output: rasters, vectors, and safe (atomic) output files."""

from geopsp.io.atomic import OutputSet, atomic_output, check_output_path
from geopsp.io.raster import (
    PROBABILITY_NODATA,
    PROBABILITY_SCALE,
    ClassRasterWriter,
    probability_to_uint8,
    read_class_table,
    write_class_raster,
)
from geopsp.io.scene import SceneInfo, inspect_scene, open_scene, read_rows

__all__ = [
    "PROBABILITY_NODATA",
    "PROBABILITY_SCALE",
    "ClassRasterWriter",
    "OutputSet",
    "SceneInfo",
    "atomic_output",
    "check_output_path",
    "inspect_scene",
    "open_scene",
    "probability_to_uint8",
    "read_class_table",
    "read_rows",
    "write_class_raster",
]
