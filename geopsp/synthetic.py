"""Synthetic labelled scenes: a georeferenced multi-band GeoTIFF and its class raster.

The scene is a crop of an endless, seeded landscape (:mod:`geopsp._landscape`): field
parcels with crop-row textures, forest, lakes, a road network and buildings clustered along
the roads. Every pixel is a pure function of ``(seed, row, col)``, so a scene written window
by window is identical whatever the window size, and a smaller scene is the top-left crop of
a larger one with the same seed (the optional nodata collar, which follows the scene's size,
aside). Memory stays at a few windows however large the scene is.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
from collections import deque
from collections.abc import Callable, Generator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from geopsp._landscape import LABEL_NODATA, U64, Footprint, Renderer
from geopsp.classes import ClassInfo, ClassTable
from geopsp.device import cpu_count
from geopsp.errors import ConfigError
from geopsp.io.atomic import atomic_output
from geopsp.io.class_metadata import CLASSES_TAG, pam_xml

__all__ = [
    "BAND_NAMES",
    "DTYPES",
    "LABEL_NODATA",
    "MAX_BANDS",
    "SYNTHETIC_CLASSES",
    "band_names",
    "default_labels_path",
    "make_scene",
]

logger = logging.getLogger(__name__)

SYNTHETIC_CLASSES: Final = ClassTable(
    (
        ClassInfo(0, "cropland", (229, 201, 92)),
        ClassInfo(1, "forest", (34, 110, 52)),
        ClassInfo(2, "water", (43, 116, 204)),
        ClassInfo(3, "road", (72, 72, 72)),
        ClassInfo(4, "building", (214, 58, 48)),
        ClassInfo(5, "grassland", (150, 212, 104)),
    )
)
"""The land-cover classes of synthetic label rasters (ids 0..5)."""

DTYPES: Final = ("uint8", "uint16", "int16", "float32")
"""Pixel types :func:`make_scene` writes."""

MAX_BANDS: Final = 64

BAND_NAMES: Final = ("red", "green", "blue", "nir", "rededge1", "rededge2", "rededge3", "nir08", "swir16", "swir22")
"""Names of the first ten bands (Sentinel-2-like); band 4 is near infrared. More bands repeat them."""

TILE_PX: Final = 512
"""GeoTIFF tile edge of written scenes."""

_MAX_THREADS = 4  # windows rendered in parallel
Progress = Callable[[int, int], None]


def band_names(bands: int) -> list[str]:
    """Descriptions of the bands of a synthetic scene with ``bands`` bands.

    Examples
    --------
    >>> band_names(1)
    ['pan']
    >>> band_names(4)
    ['red', 'green', 'blue', 'nir']
    >>> band_names(12)[-2:]
    ['red_2', 'green_2']
    """
    if bands == 1:
        return ["pan"]
    return [BAND_NAMES[i % 10] + (f"_{i // 10 + 1}" if i >= 10 else "") for i in range(bands)]


# --- writing -------------------------------------------------------------------------------------
def default_labels_path(path: str | os.PathLike[str]) -> Path:
    """Return the label raster written next to a scene: ``OUT_labels.tif``.

    Examples
    --------
    >>> default_labels_path("out/scene.tif").as_posix()
    'out/scene_labels.tif'
    """
    p = Path(path)
    return p.with_name(f"{p.stem}_labels.tif")


def _windows(width: int, height: int, block: int) -> list[tuple[int, int, int, int]]:
    return [
        (r, c, min(block, height - r), min(block, width - c))
        for r in range(0, height, block)
        for c in range(0, width, block)
    ]


def _rendered(
    renderer: Renderer, windows: list[tuple[int, int, int, int]], threads: int
) -> Generator[tuple[tuple[int, int, int, int], NDArray[Any], NDArray[np.uint8]], None, None]:
    """Yield ``(window, data, labels)`` in window order, rendering a few windows ahead in threads.

    numpy releases the GIL in its array loops, so threads render in parallel; at most
    ``2 * threads`` windows are in memory at once.
    """
    if threads <= 1:
        for win in windows:
            yield win, *renderer.render(*win)
        return
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="geopsp-synthetic")
    try:
        ahead: deque[tuple[tuple[int, int, int, int], Future[tuple[NDArray[Any], NDArray[np.uint8]]]]] = deque()
        todo = iter(windows)
        for win in itertools.islice(todo, 2 * threads):
            ahead.append((win, pool.submit(renderer.render, *win)))
        while ahead:
            win, future = ahead.popleft()
            data, labels = future.result()
            nxt = next(todo, None)
            if nxt is not None:
                ahead.append((nxt, pool.submit(renderer.render, *nxt)))
            yield win, data, labels
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _check_int(name: str, value: object, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        allowed = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ConfigError(f"{name} must be {allowed}, got {value}")
    return int(value)


def _check_args(
    width: object, height: object, bands: object, dtype: object, pixel_size: object, seed: object, block_size: object
) -> tuple[int, int, int, str, float, int, int]:
    w = _check_int("width", width, 1)
    h = _check_int("height", height, 1)
    n = _check_int("bands", bands, 1, MAX_BANDS)
    try:
        dt = np.dtype(dtype).name  # type: ignore[call-overload]
    except TypeError:
        dt = repr(dtype)
    if dt not in DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not supported; use one of {', '.join(DTYPES)}")
    try:
        ps = float(pixel_size)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"pixel_size must be a positive number, got {pixel_size!r}") from exc
    if not (math.isfinite(ps) and ps > 0):
        raise ConfigError(f"pixel_size must be a positive number, got {pixel_size!r}")
    s = _check_int("seed", seed, 0, U64)
    bs = _check_int("block_size", block_size, 1)
    return w, h, n, dt, ps, s, bs


def _parse_crs(crs: object) -> Any:
    import rasterio
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    try:
        with rasterio.Env():  # routes PROJ's complaints to logging instead of stderr
            return CRS.from_user_input(crs)
    except (CRSError, TypeError, ValueError) as exc:
        why = " ".join(str(exc).split())[:200]
        raise ConfigError(
            f"crs {crs!r} is not a coordinate reference system GDAL knows ({why}); "
            "give an EPSG code such as 'EPSG:32633', a WKT or a PROJ string"
        ) from exc


def make_scene(
    path: str | os.PathLike[str],
    *,
    width: int,
    height: int,
    bands: int = 3,
    dtype: str = "uint8",
    crs: Any = "EPSG:32633",
    pixel_size: float = 10.0,
    origin: tuple[float, float] = (500000.0, 5600000.0),
    nodata_edge: bool = False,
    seed: int = 0,
    labels_path: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    block_size: int = TILE_PX,
    progress: Progress | None = None,
) -> tuple[Path, Path]:
    """Write a synthetic scene and its label raster, window by window.

    Parameters
    ----------
    path : str or os.PathLike
        Output GeoTIFF of the scene.
    width, height : int
        Scene size in pixels (>= 1).
    bands : int, default 3
        Number of bands, 1..64. Band order is red, green, blue, NIR, then Sentinel-2-like
        red-edge, NIR and SWIR bands (:func:`band_names`); a single band is panchromatic.
    dtype : {"uint8", "uint16", "int16", "float32"}
        ``uint8`` holds reflectance x 510 in 1..255; ``uint16``/``int16`` hold reflectance x
        10000 in 1..10000 (like Sentinel-2 L2A); ``float32`` holds reflectance in (0, 1].
    crs : str or rasterio CRS, default "EPSG:32633"
        Anything :meth:`rasterio.crs.CRS.from_user_input` accepts.
    pixel_size : float, default 10.0
        Pixel edge in CRS units; the transform is north-up.
    origin : (float, float), default (500000.0, 5600000.0)
        Map coordinates (x, y) of the scene's top-left corner.
    nodata_edge : bool, default False
        Make the valid area a rectangle rotated 10-15 degrees inside the scene, as at the
        edge of a real scene. Outside it every band holds the nodata value (0 for integer
        types, NaN for float32, also set in the file) and labels hold 255.
    seed : int, default 0
        Seed of the landscape, 0..2**64-1.
    labels_path : str or os.PathLike, optional
        Output label raster; default :func:`default_labels_path` of ``path``.
    overwrite : bool, default False
        Replace existing outputs.
    block_size : int, default 512
        Edge of the windows generated and written at a time; it bounds memory and does not
        change a single pixel.
    progress : callable, optional
        Called as ``progress(done, total)`` after each window.

    Returns
    -------
    (Path, Path)
        The scene and the label raster. Labels are uint8 class ids of
        :data:`SYNTHETIC_CLASSES` with a colour table, nodata 255, the class table as JSON
        in the ``GEOPSP_CLASSES`` tag, and category names and a raster attribute table in a
        ``.aux.xml`` sidecar.

    Raises
    ------
    ConfigError
        An argument is out of range (the message names it and what is allowed).
    OutputExistsError
        An output exists and ``overwrite`` is False.

    Notes
    -----
    Windows are rendered ahead in up to four threads. With glibc's default malloc settings
    the window-sized numpy temporaries are returned to the OS and faulted in again for every
    window, which costs about 40 % of the throughput; ``geopsp sample-scene`` raises the
    thresholds for its own process, and a long-running caller can do the same by starting
    Python with ``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=134217728``.
    """
    import rasterio
    from affine import Affine

    w, h, n, dt, ps, s, bs = _check_args(width, height, bands, dtype, pixel_size, seed, block_size)
    crs_obj = _parse_crs(crs)
    try:
        x0, y0 = (float(v) for v in origin)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"origin must be two numbers (x, y), got {origin!r}") from exc
    scene = Path(path)
    labels = Path(labels_path) if labels_path is not None else default_labels_path(scene)
    if labels.absolute() == scene.absolute():
        raise ConfigError(f"labels path {str(labels)!r} equals the scene path; choose another labels path")

    nodata: float | None = None
    if nodata_edge:
        nodata = float("nan") if dt == "float32" else 0.0
    footprint = Footprint.for_scene(s, w, h) if nodata_edge else None
    renderer = Renderer.create(s, n, dt, nodata, footprint)
    transform = Affine(ps, 0.0, x0, 0.0, -ps, y0)  # north-up
    common: dict[str, Any] = {
        "driver": "GTiff",
        "width": w,
        "height": h,
        "crs": crs_obj,
        "transform": transform,
        "tiled": True,
        "blockxsize": TILE_PX,
        "blockysize": TILE_PX,
        # ZSTD level 1: as small as DEFLATE on noisy imagery at a fifth of the CPU time.
        "compress": "zstd",
        "zstd_level": 1,
        "BIGTIFF": "IF_SAFER",
    }
    scene_profile = {
        **common,
        "count": n,
        "dtype": dt,
        "nodata": nodata,
        "interleave": "pixel",
        "predictor": 3 if dt == "float32" else 2,
    }
    label_profile = {**common, "count": 1, "dtype": "uint8", "nodata": LABEL_NODATA}
    windows = _windows(w, h, bs)
    logger.info("writing synthetic scene %s (%d x %d, %d x %s, seed %d)", scene, w, h, n, dt, s)
    sidecars = (".aux.xml",)
    with (
        atomic_output(scene, overwrite=overwrite, sidecars=sidecars) as tmp_scene,
        atomic_output(labels, overwrite=overwrite, sidecars=sidecars) as tmp_labels,
    ):
        # A small GDAL block cache: whole tiles are written once, so caching more only costs memory.
        with (
            rasterio.Env(GDAL_CACHEMAX=64),
            rasterio.open(tmp_scene, "w", **scene_profile) as dst,
            rasterio.open(tmp_labels, "w", **label_profile) as lab,
        ):
            for i, name in enumerate(band_names(n), start=1):
                dst.set_band_description(i, name)
            dst.update_tags(GEOPSP_SYNTHETIC_SEED=str(s), GEOPSP_NODATA_EDGE=str(bool(nodata_edge)).lower())
            lab.set_band_description(1, "class")
            lab.update_tags(**{CLASSES_TAG: SYNTHETIC_CLASSES.to_json()}, GEOPSP_SYNTHETIC_SEED=str(s))
            colormap: dict[int, tuple[int, int, int, int]] = {c.id: (*c.color, 255) for c in SYNTHETIC_CLASSES}
            colormap[LABEL_NODATA] = (0, 0, 0, 0)
            lab.write_colormap(1, colormap)
            threads = max(1, min(_MAX_THREADS, cpu_count(), len(windows)))
            with contextlib.closing(_rendered(renderer, windows, threads)) as stream:
                for done, ((r, c, hh, ww), data, label) in enumerate(stream, start=1):
                    win = ((r, r + hh), (c, c + ww))
                    dst.write(data, window=win)
                    lab.write(label, 1, window=win)
                    if progress is not None:
                        progress(done, len(windows))
        # Category names and a raster attribute table for QGIS/GDAL (GeoTIFF has no place for them).
        Path(f"{tmp_labels}.aux.xml").write_text(pam_xml(SYNTHETIC_CLASSES, nodata=LABEL_NODATA), encoding="utf-8")
    return scene, labels
