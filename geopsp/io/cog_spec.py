"""What a class or probability COG holds besides its pixels: size, type, tiling, compression, georeferencing, styling.

:class:`CogSpec` gives the creation profile of every file a :class:`~geopsp.io.cog_stage.CogStage`
writes (staging, overview levels, skeleton) and puts the colour table, descriptions, scales and
tags on them, so all of them agree with the COG.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import rasterio

__all__ = ["CogSpec"]


@dataclass(frozen=True, slots=True)
class CogSpec:
    """What one COG holds besides its pixels.

    Attributes
    ----------
    width, height : int
        Size in pixels.
    dtype : str
        ``uint8`` or ``uint16``.
    nodata : int
        Nodata value.
    blocksize : int
        Tile edge of the COG and its overviews.
    compress : str
        ``deflate``, ``zstd`` or ``lzw``.
    resampling : {"MODE", "AVERAGE"}
        How the overviews are computed.
    crs, transform
        Georeferencing (None for none).
    colormap : mapping of int to RGBA, optional
        Colour table.
    description : str
        Band description.
    tags : mapping of str to str
        Dataset tags.
    scale, offset : float, optional
        Band scale and offset.
    """

    width: int
    height: int
    dtype: str
    nodata: int
    blocksize: int
    compress: str
    resampling: Literal["MODE", "AVERAGE"]
    crs: Any = None
    transform: Any = None
    colormap: Mapping[int, tuple[int, int, int, int]] | None = None
    description: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
    scale: float | None = None
    offset: float | None = None

    def profile(self, width: int | None = None, height: int | None = None) -> dict[str, Any]:
        """Return the rasterio profile of a tiled staging GeoTIFF of this COG (or of a level)."""
        from geopsp.device import gdal_threads

        profile: dict[str, Any] = {
            "driver": "GTiff",
            "width": width or self.width,
            "height": height or self.height,
            "count": 1,
            "dtype": self.dtype,
            "nodata": self.nodata,
            "tiled": True,
            "blockxsize": self.blocksize,
            "blockysize": self.blocksize,
            "compress": self.compress,
            "num_threads": gdal_threads(),
            # Blocks never written, or of nodata only, are left out; the assembly fills them.
            "sparse_ok": True,
            "bigtiff": "IF_SAFER",
        }
        if width is None and self.crs is not None:
            profile["crs"] = self.crs
        if width is None and self.transform is not None:
            profile["transform"] = self.transform
        return profile

    def decorate(self, dst: rasterio.io.DatasetWriter) -> None:
        """Set the colour table, description, tags, scale and offset on a dataset being written."""
        if self.colormap is not None:
            dst.write_colormap(1, dict(self.colormap))
        dst.set_band_description(1, self.description)
        dst.update_tags(**dict(self.tags))
        if self.scale is not None:
            dst.scales = (self.scale,)
            dst.offsets = (self.offset or 0.0,)
