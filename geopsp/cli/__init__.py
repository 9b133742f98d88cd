"""The ``geopsp`` command-line interface (click). Heavy libraries are imported inside commands."""
