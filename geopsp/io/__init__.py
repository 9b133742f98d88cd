"""Input and output: rasters, vectors, and safe (atomic) output files."""

from geopsp.io.atomic import atomic_output, check_output_path

__all__ = ["atomic_output", "check_output_path"]
