"""GDAL plumbing for outputs: Cloud-Optimized GeoTIFF creation options and copies, write-error messages."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from geopsp.errors import OutputError

__all__ = ["cog_options", "output_error", "quiet_rasterio", "refuse_inputs", "to_cog", "with_overviews"]


@contextlib.contextmanager
def quiet_rasterio() -> Iterator[None]:
    """Silence rasterio's NotGeoreferencedWarning: outputs of scenes without a CRS have none on purpose."""
    from rasterio.errors import NotGeoreferencedWarning as RioNotGeoreferenced

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RioNotGeoreferenced)
        yield


def refuse_inputs(outputs: Sequence[str | os.PathLike[str]], inputs: Sequence[str | os.PathLike[str]]) -> None:
    """Raise OutputError if an output path is (resolves to) one of the inputs."""
    for out in outputs:
        for src in inputs:
            if os.path.realpath(out) == os.path.realpath(src):
                raise OutputError(f"{out}: output path equals input {src}; choose another output path")


def _disk_full(exc: BaseException, directory: Path) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        text = str(seen).lower()
        if "no space" in text or "disk space" in text or "disk full" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    with contextlib.suppress(OSError):
        return shutil.disk_usage(directory).free < (1 << 20)
    return False


def output_error(path: Path, exc: BaseException, what: str) -> OutputError:
    """Turn a failed write into a one-line OutputError; ``"disk full"`` when the disk is full."""
    if _disk_full(exc, path.parent):
        return OutputError(f"{path}: disk full while {what}; free space (or write elsewhere) and run again")
    return OutputError(f"{path}: failed while {what} ({exc}); check the disk and the folder's permissions")


def cog_options(*, compress: str, blocksize: int, sparse: bool = False) -> dict[str, Any]:
    """Return GDAL's COG creation options for an output; its overviews are given by the source.

    ``sparse`` leaves tiles of nodata out (for a skeleton with no tile at all, see
    :mod:`geopsp.io.tiff_layout`).
    """
    from geopsp.device import gdal_threads

    return {
        "driver": "COG",
        "COMPRESS": compress.upper(),
        "BLOCKSIZE": blocksize,
        "OVERVIEWS": "FORCE_USE_EXISTING",
        "BIGTIFF": "IF_SAFER",
        "NUM_THREADS": gdal_threads(),
        **({"SPARSE_OK": "TRUE"} if sparse else {}),
    }


def with_overviews(base: Path, overviews: Sequence[Path], vrt: Path) -> Path:
    """Write a VRT of ``base`` whose band has ``overviews`` (files, largest first) as its overviews."""
    import rasterio.shutil

    rasterio.shutil.copy(base, vrt, driver="VRT")
    tree = ET.parse(vrt)
    band = tree.getroot().find("VRTRasterBand")
    if band is None:
        raise OutputError(f"{vrt}: GDAL wrote a VRT without a band")
    for path in overviews:
        ovr = ET.SubElement(band, "Overview")
        ET.SubElement(ovr, "SourceFilename", relativeToVRT="0").text = str(path)
        ET.SubElement(ovr, "SourceBand").text = "1"
    tree.write(vrt)
    return vrt


def to_cog(stage: Path, out: Path, *, overviews: Sequence[Path], compress: str, blocksize: int) -> None:
    """Copy a staging GeoTIFF and its overview levels to a COG; GDAL decodes and encodes every tile.

    The slow way (:class:`~geopsp.io.cog_stage.CogStage` copies compressed tiles instead); used
    when the tiles cannot be copied.

    Parameters
    ----------
    stage : Path
        Tiled GeoTIFF holding the full-resolution pixels (and the colour table, tags, ...).
    out : Path
        COG to create (a temporary name; the caller renames it into place).
    overviews : sequence of Path
        One GeoTIFF per overview level, largest first (their sizes are the COG's).
    compress : str
        GDAL compression (``deflate``, ``zstd``, ``lzw``).
    blocksize : int
        Tile edge of the COG and its overviews.
    """
    import rasterio.shutil

    vrt = stage.with_name(f"{stage.name}.vrt")
    try:
        with quiet_rasterio():
            source = with_overviews(stage, overviews, vrt)
            rasterio.shutil.copy(source, out, **cog_options(compress=compress, blocksize=blocksize))
    finally:
        vrt.unlink(missing_ok=True)
