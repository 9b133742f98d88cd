"""Tiling: the global window grid of a scene and a streaming tile reader."""

from geopsp.tiling.windows import Tile, TileGrid, axis_offsets

__all__ = ["Tile", "TileGrid", "axis_offsets"]
