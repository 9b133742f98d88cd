"""Virtual scenes as GDAL VRT documents: bands of several rasters stacked on one grid.

A VRT reads its sources only when its own blocks are read, so stacking a STAC item's assets
costs no pixel read and no copy; a source on another pixel size is resampled by GDAL as it is
read (``resampling`` on each source).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape

import numpy as np

if TYPE_CHECKING:
    import affine

__all__ = ["BandSource", "gdal_type_name", "vrt_document"]


def gdal_type_name(dtype: str) -> str:
    """GDAL's name of a NumPy dtype (``uint8`` -> ``Byte``), as ``-ot`` and VRTs spell it.

    Examples
    --------
    >>> gdal_type_name("uint8"), gdal_type_name("float32")
    ('Byte', 'Float32')
    """
    from rasterio.dtypes import dtype_rev, typename_fwd

    return str(typename_fwd[dtype_rev[str(np.dtype(dtype))]])


@dataclass(frozen=True, slots=True)
class BandSource:
    """One band of a raster GDAL opens, placed on a VRT's grid.

    Attributes
    ----------
    path : str
        What GDAL opens (a local path, ``/vsicurl/…``, ``/vsis3/…``).
    band : int
        1-based band of ``path``.
    width, height : int
        The source raster's size.
    transform : affine.Affine
        The source raster's north-up transform, in the VRT's CRS.
    nodata : float or None
        Its nodata value (not blended into neighbours when resampling).
    description : str or None
        The band's name in the VRT.
    """

    path: str
    band: int
    width: int
    height: int
    transform: affine.Affine
    nodata: float | None = None
    description: str | None = None


def _number(v: float) -> str:
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


def vrt_document(
    bands: Sequence[BandSource | None],
    *,
    width: int,
    height: int,
    transform: affine.Affine,
    crs_wkt: str | None,
    dtype: str,
    resampling: str = "nearest",
    block: int = 512,
) -> str:
    """Build a VRT document: one band per entry of ``bands``, on the grid ``width`` x ``height`` at ``transform``.

    Parameters
    ----------
    bands : sequence of BandSource or None
        The VRT's bands, in order; ``None`` is a band with no source (never read; all 0).
    width, height : int
        The grid's size in pixels.
    transform : affine.Affine
        The grid's north-up transform.
    crs_wkt : str or None
        Its CRS.
    dtype : str
        NumPy dtype name of every band.
    resampling : str, default "nearest"
        GDAL resampling of sources on another pixel size (``nearest``, ``bilinear``, ``average`` ...).
    block : int, default 512
        The VRT's block edge.

    Returns
    -------
    str
        The XML document, which GDAL opens as it is.

    Examples
    --------
    >>> from affine import Affine
    >>> src = BandSource("a.tif", 1, 100, 100, Affine(20, 0, 0, 0, -20, 2000))
    >>> doc = vrt_document([src], width=200, height=200, transform=Affine(10, 0, 0, 0, -10, 2000),
    ...                    crs_wkt=None, dtype="uint16")
    >>> '<DstRect xOff="0" yOff="0" xSize="200" ySize="200"/>' in doc
    True
    """
    gdal_type = gdal_type_name(dtype)
    t = transform
    parts = [f'<VRTDataset rasterXSize="{int(width)}" rasterYSize="{int(height)}">']
    if crs_wkt:
        parts.append(f"  <SRS>{escape(crs_wkt)}</SRS>")
    parts.append(f"  <GeoTransform>{', '.join(_number(v) for v in (t.c, t.a, t.b, t.f, t.d, t.e))}</GeoTransform>")
    for i, b in enumerate(bands, start=1):
        parts.append(f'  <VRTRasterBand dataType="{gdal_type}" band="{i}" blockXSize="{block}" blockYSize="{block}">')
        if b is not None:
            if b.description:
                parts.append(f"    <Description>{escape(b.description)}</Description>")
            if b.nodata is not None:
                parts.append(f"    <NoDataValue>{_number(b.nodata)}</NoDataValue>")
            parts.append(_source(b, t, resampling, "    "))
        parts.append("  </VRTRasterBand>")
    parts.append("</VRTDataset>")
    return "\n".join(parts)


def _source(b: BandSource, t: Any, resampling: str, indent: str) -> str:
    """Place ``b`` (all of it) on the grid of ``t`` as a source element; GDAL clips it to the grid."""
    s = b.transform
    x_off = (s.c - t.c) / t.a
    y_off = (s.f - t.f) / t.e
    x_size = b.width * s.a / t.a
    y_size = b.height * s.e / t.e
    kind = "ComplexSource" if b.nodata is not None else "SimpleSource"
    lines = [
        f'{indent}<{kind} resampling="{resampling}">',
        f'{indent}  <SourceFilename relativeToVRT="0">{escape(b.path)}</SourceFilename>',
        f"{indent}  <SourceBand>{b.band}</SourceBand>",
        f'{indent}  <SrcRect xOff="0" yOff="0" xSize="{b.width}" ySize="{b.height}"/>',
        f'{indent}  <DstRect xOff="{_number(x_off)}" yOff="{_number(y_off)}" '
        f'xSize="{_number(x_size)}" ySize="{_number(y_size)}"/>',
    ]
    if b.nodata is not None:
        lines.append(f"{indent}  <NODATA>{_number(b.nodata)}</NODATA>")
    lines.append(f"{indent}</{kind}>")
    return "\n".join(lines)
