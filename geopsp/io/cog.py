"""GDAL plumbing for outputs: Cloud-Optimized GeoTIFF conversion and write-error messages."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

from geopsp.errors import OutputError

__all__ = ["output_error", "quiet_rasterio", "refuse_inputs", "to_cog"]


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


def to_cog(stage: Path, out: Path, *, compress: str, blocksize: int, resampling: str) -> None:
    """Copy a staging GeoTIFF to a COG with internal overviews, then delete the staging file.

    Parameters
    ----------
    stage : Path
        Tiled GeoTIFF holding the full-resolution pixels.
    out : Path
        COG to create (a temporary name; the caller renames it into place).
    compress : str
        GDAL compression (``deflate``, ``zstd``, ``lzw``).
    blocksize : int
        Tile edge of the COG and its overviews.
    resampling : str
        Overview resampling: ``MODE`` for classes (never invents a class), ``AVERAGE`` for
        probabilities.
    """
    import rasterio.shutil

    from geopsp.device import gdal_threads

    with quiet_rasterio():
        rasterio.shutil.copy(
            stage,
            out,
            driver="COG",
            COMPRESS=compress.upper(),
            BLOCKSIZE=blocksize,
            OVERVIEW_RESAMPLING=resampling,
            BIGTIFF="IF_SAFER",
            NUM_THREADS=gdal_threads(),
        )
    stage.unlink()
    # GDAL may leave a PAM file for the staging dataset (e.g. statistics); it is ours to drop.
    with contextlib.suppress(OSError):
        Path(f"{stage}.aux.xml").unlink()
