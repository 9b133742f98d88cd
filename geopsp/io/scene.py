"""Scenes (input rasters): inspect them and read row strips with their validity masks.

The tiler reads a scene as strips of full-width rows, one strip per row of internal blocks, so
every compressed block is decoded once; tiles are then cut from the strips in memory. Reading
overlapping tile windows directly decodes each block several times over (see
``bench/read_pattern.py``).

Validity (nodata) comes from one of, in GDAL's order of precedence:

``"nodata"``
    the bands' nodata values: a pixel is invalid where *every* band read equals its nodata
    value (a dark pixel with one zero band stays valid);
``"alpha"``
    an alpha band: invalid where alpha is 0;
``"mask"``
    a GDAL mask band (internal or ``.msk``): invalid where the mask is 0;
``"none"``
    every pixel is valid.

In float scenes NaN and ±inf are invalid in addition, whatever the source.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import NDArray

from geopsp.errors import InputRasterError, NotGeoreferencedWarning, RemoteReadWarning
from geopsp.io.source import SceneSource, Warp, gdal_env, remote_failure_message, resolve_scene

if TYPE_CHECKING:
    import affine
    import rasterio
    import rasterio.crs

__all__ = ["SceneInfo", "inspect_scene", "open_raster", "open_scene", "read_failure", "read_rows"]

logger = logging.getLogger(__name__)

MaskSource = Literal["nodata", "mask", "alpha", "none"]


@dataclass(frozen=True, slots=True)
class SceneInfo:
    """What geopsp needs to know about a scene before reading pixels.

    Attributes
    ----------
    source : SceneSource
        The scene: what the user named and what GDAL opens (:func:`geopsp.io.source.resolve_scene`).
    width, height, count : int
        Columns, rows and bands.
    dtype : str
        NumPy dtype name shared by all bands.
    crs : rasterio.crs.CRS or None
        Coordinate reference system; ``None`` when the scene has none.
    transform : affine.Affine
        Pixel-to-map transform (identity when not georeferenced); always north-up.
    res : tuple of float
        Pixel size ``(x, y)`` in CRS units.
    nodata : float or None
        Nodata value of band 1, if any.
    mask_source : {"nodata", "mask", "alpha", "none"}
        Where the validity mask comes from (see the module docstring).
    alpha_band : int or None
        1-based index of the alpha band, if any; it is never a data band.
    georeferenced : bool
        False when the scene has no CRS (a PNG, a JPEG, a plain TIFF); outputs then have none.
    block_shape : tuple of int
        ``(rows, cols)`` of band 1's internal blocks (strips or tiles).
    band_descriptions : tuple of (str or None)
        Band descriptions, ``None`` where unset.
    """

    source: SceneSource
    width: int
    height: int
    count: int
    dtype: str
    crs: rasterio.crs.CRS | None
    transform: affine.Affine
    res: tuple[float, float]
    nodata: float | None
    mask_source: MaskSource
    alpha_band: int | None
    georeferenced: bool
    block_shape: tuple[int, int]
    band_descriptions: tuple[str | None, ...]

    @property
    def data_bands(self) -> tuple[int, ...]:
        """1-based indices of all bands except the alpha band."""
        return tuple(b for b in range(1, self.count + 1) if b != self.alpha_band)


@contextlib.contextmanager
def _quiet_open(source: SceneSource) -> Iterator[rasterio.DatasetReader]:
    """Open with rasterio, without its NotGeoreferencedWarning (we emit our own, once).

    Remote scenes are opened in :func:`geopsp.io.source.gdal_env`; the environment stays in
    force while the dataset is open, since GDAL reads its blocks later.
    """
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning as RioNotGeoreferenced

    with contextlib.ExitStack() as stack:
        if source.remote:
            stack.enter_context(gdal_env(source))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RioNotGeoreferenced)
            src = stack.enter_context(rasterio.open(source.gdal_path))
        if source.warp is None:
            yield src
            return
        yield stack.enter_context(_warped(src, source.warp))


@contextlib.contextmanager
def open_raster(
    path: str | os.PathLike[str] | SceneSource, *, what: str = "raster"
) -> Iterator[rasterio.DatasetReader]:
    """Open a raster that is not read as a scene (a class raster, a label raster), local or remote.

    The name means what it means for a scene (:func:`geopsp.io.source.resolve_scene`): a
    remote raster is opened, and read while open, in :func:`geopsp.io.source.gdal_env`, so
    it is fetched block by block and no sidecar file is probed over the network. Unlike
    :func:`inspect_scene` nothing is checked beyond that GDAL can open it.

    Parameters
    ----------
    path : str, os.PathLike or SceneSource
        A local path, an ``http(s)://`` or ``s3://`` URL, or a GDAL ``/vsi…/`` path.
    what : str, default "raster"
        What the raster is, for messages (``"class raster"``).

    Yields
    ------
    rasterio.DatasetReader

    Raises
    ------
    InputRasterError
        One line when the file is missing or GDAL cannot open it (for a remote raster: the
        HTTP/S3 status or the network failure, :func:`geopsp.io.source.remote_failure_message`).
    """
    from rasterio.errors import RasterioError

    source = resolve_scene(path)
    p = source.local
    if p is not None and not p.exists():
        raise InputRasterError(f"{p}: {what} not found; check the path")
    with contextlib.ExitStack() as stack:
        try:
            src = stack.enter_context(_quiet_open(source))
        except RasterioError as exc:
            message = remote_failure_message(source, exc) if p is None else _open_failure_message(p, exc)
            raise InputRasterError(message) from exc
        yield src


def read_failure(
    path: str | os.PathLike[str] | SceneSource, exc: Exception, *, rows: tuple[int, int]
) -> InputRasterError:
    """Make the one-line error for pixels of an open raster that could not be read (raise it from ``exc``).

    Parameters
    ----------
    path : str, os.PathLike or SceneSource
        The raster as the user named it.
    exc : Exception
        GDAL's error.
    rows : (int, int)
        First and last row (0-based, inclusive) of the failed read.

    Examples
    --------
    >>> str(read_failure("a.tif", OSError("TIFFReadEncodedTile() failed"), rows=(0, 63)))
    'a.tif: pixels fail to decode at rows 0-63 (file is corrupt or truncated); re-download or re-export it'
    >>> str(read_failure("http://127.0.0.1:9/a.tif", OSError("Connection refused"), rows=(0, 63)))[:61]
    'http://127.0.0.1:9/a.tif: cannot reach the server (Connection'
    """
    source = resolve_scene(path)
    if source.remote:
        return InputRasterError(remote_failure_message(source, exc))
    return InputRasterError(
        f"{source}: pixels fail to decode at rows {rows[0]}-{rows[1]} (file is corrupt or truncated); "
        "re-download or re-export it"
    )


def _warped(src: rasterio.DatasetReader, warp: Warp) -> Any:
    """``src`` read on the grid of ``warp``; pixels outside the scene (or nodata in it) are invalid.

    A scene with nodata values keeps them (outside pixels become nodata); one without gets an
    alpha band, so outside pixels are transparent, not zeros taken for data.
    """
    from affine import Affine
    from rasterio.crs import CRS
    from rasterio.enums import MaskFlags, Resampling
    from rasterio.vrt import WarpedVRT

    has_nodata = src.nodata is not None
    has_alpha = any(MaskFlags.alpha in f for f in src.mask_flag_enums)
    return WarpedVRT(
        src,
        crs=CRS.from_wkt(warp.crs_wkt),
        transform=Affine(*warp.transform),
        width=warp.width,
        height=warp.height,
        resampling=Resampling[warp.resampling],
        add_alpha=not has_nodata and not has_alpha,
        warp_mem_limit=64,
    )


def inspect_scene(path: str | os.PathLike[str] | SceneSource) -> SceneInfo:
    """Open a scene, check that it can be processed and describe it.

    Parameters
    ----------
    path : str, os.PathLike or SceneSource
        A raster GDAL can read (GeoTIFF, COG, PNG, JPEG, JPEG2000 ...), local or remote
        (``http(s)://``, ``s3://``, ``/vsi…/``; see :func:`geopsp.io.source.resolve_scene`).

    Returns
    -------
    SceneInfo

    Raises
    ------
    InputRasterError
        With a one-line message naming the file and the fix, when the path is missing, a
        directory, empty, not a raster, truncated, has bands of mixed types, or is rotated,
        sheared or georeferenced only by GCPs/RPCs.

    Warns
    -----
    NotGeoreferencedWarning
        When the scene has no CRS; the scene is still accepted and outputs have no CRS.
    RemoteReadWarning
        When a remote scene is not a cloud-optimized GeoTIFF (it is still read).
    """
    from rasterio.errors import RasterioError

    source = resolve_scene(path)
    p = source.local
    size: int | None = None
    if p is not None:
        if not p.exists():
            raise InputRasterError(f"{p}: no such file; check the path")
        if p.is_dir():
            raise InputRasterError(f"{p}: is a directory, not a raster; give the path of an image (GeoTIFF, PNG, JPEG)")
        size = p.stat().st_size
        if size == 0:
            raise InputRasterError(f"{p}: is empty (0 bytes); re-download or re-export it")
    try:
        with _quiet_open(source) as src:
            info = _describe(source, src, size)
            if source.kind in ("http", "s3", "vsi"):
                _warn_unless_cog(source, src)
    except RasterioError as exc:
        if p is None:
            raise InputRasterError(remote_failure_message(source, exc)) from exc
        raise InputRasterError(_open_failure_message(p, exc)) from exc
    if not info.georeferenced:
        what = "a geotransform but no CRS" if not info.transform.is_identity else "no CRS or geotransform (pixel grid)"
        warnings.warn(
            f"{source}: has {what}; output will have no CRS",
            NotGeoreferencedWarning,
            stacklevel=2,
        )
    logger.debug(
        "scene %s: %dx%dx%d %s, mask %s", source, info.width, info.height, info.count, info.dtype, info.mask_source
    )
    return info


def _warn_unless_cog(source: SceneSource, src: rasterio.DatasetReader) -> None:
    """Warn once when a remote scene is not a cloud-optimized GeoTIFF (GDAL's ``LAYOUT=COG``).

    A GeoTIFF in strips, or with its directory after the pixels, still reads block by block,
    but each read may fetch whole strips or seek across the file.
    """
    if src.driver == "GTiff" and src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG":
        return
    if src.driver == "VRT":  # a stacked STAC item: its assets are warned about one by one
        return
    layout = "in strips" if src.block_shapes[0][1] == src.width and src.width > 512 else "not laid out as a COG"
    warnings.warn(
        f"{source}: is not a cloud-optimized GeoTIFF ({src.driver}, {layout}); it is read, but remote reads "
        f"may fetch more than they need: convert it once with gdal_translate -of COG in.tif out.tif",
        RemoteReadWarning,
        stacklevel=3,
    )


def _open_failure_message(p: Path, exc: Exception) -> str:
    detail = str(exc).replace(str(p), "").strip(" :'\"")
    if detail.startswith(f"{p.name}:"):
        detail = detail[len(p.name) + 1 :].strip()
    if "not recognized as being in a supported file format" in detail:
        with contextlib.suppress(OSError):
            head = p.read_bytes()[:512]
            if head and all(32 <= c < 127 or c in (9, 10, 13) for c in head):
                return f"{p}: is a text file, not a raster; give a GeoTIFF, PNG or JPEG image"
        return f"{p}: is not in a raster format GDAL can read; convert it to GeoTIFF (gdal_translate in out.tif)"
    if "TIFF" in detail or "truncat" in detail.lower() or "read" in detail.lower():
        return f"{p}: cannot be read, the file is truncated or corrupt ({detail}); re-download or re-export it"
    return f"{p}: cannot be opened as a raster ({detail}); check that it is a complete GeoTIFF, PNG or JPEG"


def _describe(p: SceneSource, src: rasterio.DatasetReader, size: int | None) -> SceneInfo:
    from rasterio.enums import ColorInterp, MaskFlags

    if src.count < 1:
        raise InputRasterError(
            f"{p}: has no raster bands (it may hold subdatasets); open a subdataset or convert it with gdal_translate"
        )
    dtypes = list(dict.fromkeys(src.dtypes))
    if len(dtypes) > 1:
        raise InputRasterError(
            f"{p}: bands have different data types ({', '.join(dtypes)}); convert them to one type, "
            f"e.g. gdal_translate -ot Float32 {p.name} same_type.tif"
        )
    t = src.transform
    if t.b != 0 or t.d != 0:
        raise InputRasterError(
            f"{p}: has a rotated or sheared geotransform, which geopsp cannot tile; "
            f"warp it north-up first: gdalwarp {p.name} north_up.tif"
        )
    crs = src.crs
    if crs is None and t.is_identity:
        if src.gcps[0]:
            raise InputRasterError(
                f"{p}: is georeferenced only by ground control points; warp it first: gdalwarp {p.name} warped.tif"
            )
        if src.rpcs is not None:
            raise InputRasterError(
                f"{p}: is georeferenced only by RPCs; orthorectify it first: gdalwarp -rpc {p.name} ortho.tif"
            )
    alpha_band = next((i + 1 for i, ci in enumerate(src.colorinterp) if ci == ColorInterp.alpha), None)
    flags = src.mask_flag_enums[0]
    mask_source: MaskSource
    if MaskFlags.nodata in flags:
        mask_source = "nodata"
    elif MaskFlags.alpha in flags and alpha_band is not None:
        mask_source = "alpha"
    elif MaskFlags.all_valid in flags:
        mask_source = "none"
    else:
        mask_source = "mask"
    rows, cols = src.block_shapes[0]
    if src.driver == "GTiff" and size is not None:
        _check_not_truncated(p, src, size, (rows, cols))
    return SceneInfo(
        source=p,
        width=src.width,
        height=src.height,
        count=src.count,
        dtype=str(np.dtype(dtypes[0])),
        crs=crs,
        transform=t,
        res=(float(src.res[0]), float(src.res[1])),
        nodata=None if src.nodata is None else float(src.nodata),
        mask_source=mask_source,
        alpha_band=alpha_band,
        georeferenced=crs is not None,
        block_shape=(int(rows), int(cols)),
        band_descriptions=tuple(d if d else None for d in src.descriptions),
    )


def _check_not_truncated(p: SceneSource, src: rasterio.DatasetReader, size: int, block: tuple[int, int]) -> None:
    """Refuse a GeoTIFF whose last blocks lie past the end of the file (cut short in transit).

    Writers lay blocks out in index order, so the last block of the last band is (nearly
    always) the one furthest into the file; checking it and the first one is cheap.
    """
    ny = -(-src.height // block[0])
    nx = -(-src.width // block[1])
    for band in dict.fromkeys((1, src.count)):
        for x, y in ((0, 0), (nx - 1, ny - 1)):
            offset = src.get_tag_item(f"BLOCK_OFFSET_{x}_{y}", "TIFF", bidx=band)
            nbytes = src.get_tag_item(f"BLOCK_SIZE_{x}_{y}", "TIFF", bidx=band)
            if offset is None or nbytes is None:
                return
            if int(offset) + int(nbytes) > size:
                raise InputRasterError(
                    f"{p}: is truncated: its pixel data runs to byte {int(offset) + int(nbytes)} but the file "
                    f"has {size} (pixels fail to decode); re-download or re-export it"
                )


def read_rows(
    src: rasterio.DatasetReader,
    info: SceneInfo,
    row_off: int,
    height: int,
    bands: Sequence[int],
    col_off: int = 0,
    width: int | None = None,
) -> tuple[NDArray[Any], NDArray[np.bool_]]:
    """Read rows of some bands (all columns, or a column range), with their validity mask.

    The rows are read in one call, so GDAL decodes each block they touch once (and, with
    ``GDAL_NUM_THREADS``, in parallel). Reading block-aligned pieces (``row_off`` a multiple
    of ``info.block_shape[0]``, ``col_off`` of ``info.block_shape[1]``) decodes every block of
    the scene exactly once.

    Parameters
    ----------
    src : rasterio.DatasetReader
        The open scene (from :func:`open_scene`). Not thread-safe: one reader per thread.
    info : SceneInfo
        The scene's description.
    row_off : int
        First row, 0-based.
    height : int
        Number of rows, ``>= 1``; ``row_off + height <= info.height``.
    bands : sequence of int
        1-based band indices, in the order wanted.
    col_off : int, default 0
        First column, 0-based.
    width : int, optional
        Number of columns; default: every column from ``col_off`` on.

    Returns
    -------
    data : ndarray
        ``(len(bands), height, width)`` in the scene's dtype (raw values).
    valid : ndarray of bool
        ``(height, width)``; False where the pixel is nodata, masked, transparent or
        (float scenes) not finite.

    Raises
    ------
    ValueError
        If the rows, columns or bands are out of range.
    InputRasterError
        If pixels fail to decode (a corrupt or truncated file).
    """
    from rasterio.errors import RasterioError
    from rasterio.windows import Window

    if height < 1 or row_off < 0 or row_off + height > info.height:
        raise ValueError(f"rows {row_off}..{row_off + height - 1} are outside the scene's 0..{info.height - 1}")
    cols = info.width - col_off if width is None else int(width)
    if cols < 1 or col_off < 0 or col_off + cols > info.width:
        raise ValueError(f"columns {col_off}..{col_off + cols - 1} are outside the scene's 0..{info.width - 1}")
    idx = [int(b) for b in bands]
    if not idx or any(not 1 <= b <= info.count for b in idx):
        raise ValueError(f"bands {list(bands)} must be 1-based indices in 1..{info.count}")
    extra_alpha = info.mask_source == "alpha" and info.alpha_band is not None and info.alpha_band not in idx
    read_idx = [*idx, info.alpha_band] if extra_alpha and info.alpha_band is not None else idx
    window = Window(col_off, row_off, cols, height)
    try:
        arr = src.read(read_idx, window=window)
        mask = _read_mask(src, info, idx, window) if info.mask_source == "mask" else None
    except RasterioError as exc:
        if info.source.remote:  # the network, not the file: say which (404, 403, unreachable ...)
            msg = remote_failure_message(info.source, exc)
            if ": cannot be opened (" in msg:  # GDAL gave no status (a dropped connection mid-read)
                msg = (
                    f"{info.source}: reading rows {row_off}-{row_off + height - 1} over the network failed "
                    f"({exc}); check that the server is up and the network, then rerun"
                )
            raise InputRasterError(msg) from exc
        raise InputRasterError(
            f"{info.source}: pixels fail to decode at rows {row_off}-{row_off + height - 1}, "
            f"columns {col_off}-{col_off + cols - 1} "
            f"(file is corrupt or truncated); re-download or re-export it"
        ) from exc
    data = arr[: len(idx)]
    if info.mask_source == "alpha" and info.alpha_band is not None:
        valid = arr[read_idx.index(info.alpha_band)] > 0
    elif mask is not None:
        valid = mask
    elif info.mask_source == "nodata":
        valid = _valid_from_nodata(data, [src.nodatavals[b - 1] for b in idx])
    else:
        valid = np.ones((height, cols), dtype=np.bool_)
    if data.dtype.kind in "fc":
        for band in data:  # band by band: no (bands, rows, width) temporary
            valid &= np.isfinite(band)
    if info.source.aoi_wkb is not None:
        from geopsp.io.aoi import inside_mask

        valid &= inside_mask(info.source.aoi_wkb, info.transform, window)
    return data, valid


def _read_mask(src: rasterio.DatasetReader, info: SceneInfo, idx: Sequence[int], window: Any) -> NDArray[np.bool_]:
    from rasterio.enums import MaskFlags

    if MaskFlags.per_dataset in src.mask_flag_enums[0]:
        return np.asarray(src.read_masks(1, window=window) > 0)
    valid = np.ones((int(window.height), int(window.width)), dtype=np.bool_)
    for b in idx:
        valid &= src.read_masks(b, window=window) > 0
    return valid


def _valid_from_nodata(data: NDArray[Any], nodatavals: Sequence[float | None]) -> NDArray[np.bool_]:
    """Mark pixels valid unless every band equals its nodata value (NaN nodata matches NaN).

    Works in place on two ``(rows, width)`` masks, so a full-width read costs no band-sized
    temporaries.
    """
    shape = data.shape[1:]
    if any(nd is None for nd in nodatavals):
        return np.ones(shape, dtype=np.bool_)
    invalid = np.ones(shape, dtype=np.bool_)
    hit = np.empty(shape, dtype=np.bool_)
    for band, nd in zip(data, nodatavals, strict=True):
        assert nd is not None
        if np.isnan(nd):
            if band.dtype.kind not in "fc":
                return np.ones(shape, dtype=np.bool_)
            np.isnan(band, out=hit)
        elif not _representable(nd, band.dtype):
            return np.ones(shape, dtype=np.bool_)
        else:
            np.equal(band, np.asarray(nd).astype(band.dtype), out=hit)
        invalid &= hit
    return np.logical_not(invalid, out=invalid)


def _representable(value: float, dtype: np.dtype[Any]) -> bool:
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return float(value).is_integer() and info.min <= value <= info.max
    return True


def _default_cache_bytes(info: SceneInfo, n_bands: int) -> int:
    """Return a small, width-independent block cache size in bytes.

    Strip readers (``read_rows`` over aligned block-rows) decode each block once and keep the
    pixels themselves, so a cache holding whole block-rows only duplicates them (about 77 MB
    at 20000 px wide, 3 bands). Measured on 20000 px wide DEFLATE scenes (3-band uint8 and
    10-band uint16, 512 px tiles): GDAL's multi-threaded decoding and pixel-interleaved reads
    run as fast with a 4 MiB cache as with 64 MiB, so the default is 4 blocks of all bands,
    at least 8 MiB (4 blocks also keep a file stored as one tall strip from being decoded
    again for each read). Readers of overlapping windows should pass ``cache_bytes`` (see ``bench/read_pattern.py``).
    """
    itemsize = np.dtype(info.dtype).itemsize
    block = info.block_shape[0] * info.block_shape[1] * max(n_bands, 1) * itemsize
    return int(max(8 << 20, 4 * block))


@contextlib.contextmanager
def open_scene(
    path: str | os.PathLike[str] | SceneSource | SceneInfo,
    *,
    cache_bytes: int | None = None,
    threads: int | Literal["ALL_CPUS"] | None = None,
) -> Iterator[tuple[rasterio.DatasetReader, SceneInfo]]:
    """Inspect a scene and open it for strip reading, in a GDAL environment tuned for that.

    Parameters
    ----------
    path : str, os.PathLike, SceneSource or SceneInfo
        The scene (local or remote, see :func:`inspect_scene`), or its description from
        :func:`inspect_scene` (then it is not inspected again: readers that reopen a scene for
        each window, like training, pay for one open).
    cache_bytes : int, optional
        GDAL block cache size; default: 4 blocks of all bands, at least 8 MiB (enough for
        aligned strip reads, which decode each block once).
    threads : int or "ALL_CPUS", optional
        Threads GDAL may use to decode the blocks of one read (``GDAL_NUM_THREADS``); default:
        :func:`geopsp.device.gdal_threads` (all CPUs, or a batch worker's share).

    Yields
    ------
    tuple of (rasterio.DatasetReader, SceneInfo)

    Raises
    ------
    InputRasterError
        See :func:`inspect_scene`.
    """
    import rasterio

    info = path if isinstance(path, SceneInfo) else inspect_scene(path)
    cache = cache_bytes if cache_bytes is not None else _default_cache_bytes(info, info.count)
    from geopsp.device import gdal_threads

    n_threads = gdal_threads() if threads is None else str(threads)
    with rasterio.Env(GDAL_CACHEMAX=int(cache), GDAL_NUM_THREADS=n_threads), _quiet_open(info.source) as src:
        yield src, info
