"""Helpers for tests across geopsp: tiny GeoTIFFs, blobby class maps, synthetic scenes.

Nothing here imports pytest, so the helpers also serve notebooks, benchmarks and plugins.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from geopsp._landscape import hash_coords, layer_key, unit, value_noise
from geopsp.config.paths import DATA_ENV
from geopsp.synthetic import make_scene

__all__ = ["make_scene", "random_class_map", "run_cli", "sample_data_dir", "small_scene", "write_geotiff"]

DEFAULT_ORIGIN = (500000.0, 5600000.0)
"""Top-left map coordinates (x, y) of rasters written without an explicit transform."""


def sample_data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Return the folder holding the sample data sets (it may not exist).

    ``$GEOPSP_DATA`` (:data:`geopsp.config.paths.DATA_ENV`; ``~`` expanded, a relative value
    taken from the working directory) where set, else ``shared/data`` beside the source
    checkout, ``<checkout>/../shared/data``: the folder the example configs read as
    ``${GEOPSP_DATA:-../../shared/data}``. Tests that need it skip when it is absent;
    benchmarks refuse to run.

    .. versionadded:: 0.2

    Parameters
    ----------
    environ : mapping, optional
        The environment to read (default: ``os.environ``).

    Examples
    --------
    >>> str(sample_data_dir({"GEOPSP_DATA": "/data/geopsp"}))
    '/data/geopsp'
    """
    value = (os.environ if environ is None else environ).get(DATA_ENV)
    if value:
        return Path(value).expanduser().resolve()
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def write_geotiff(
    path: str | os.PathLike[str],
    array: NDArray[Any],
    *,
    crs: Any = "EPSG:32633",
    transform: Any = None,
    nodata: float | None = None,
    pixel_size: float = 10.0,
    tiled: bool = True,
    blocksize: int = 256,
    compress: str | None = "deflate",
    colormap: Mapping[int, Sequence[int]] | None = None,
) -> Path:
    """Write ``array`` as a GeoTIFF and return its path.

    Parameters
    ----------
    path : str or os.PathLike
        Output file; its directory must exist. An existing file is replaced.
    array : ndarray
        ``(bands, height, width)`` or ``(height, width)``; the dtype is kept.
    crs : str, rasterio CRS or None, default "EPSG:32633"
        ``None`` writes a raster without CRS; with ``transform=None`` too it has no
        georeferencing at all (rasterio's NotGeoreferencedWarning is suppressed).
    transform : affine.Affine, optional
        Default: north-up, ``pixel_size`` pixels, top-left corner at :data:`DEFAULT_ORIGIN`
        (none when ``crs`` is None).
    nodata : float, optional
        Nodata value written into the file.
    pixel_size : float, default 10.0
        Pixel size of the default transform.
    tiled : bool, default True
        Tiled (``blocksize`` square tiles, a multiple of 16) or striped.
    blocksize : int, default 256
        Tile edge in pixels.
    compress : str or None, default "deflate"
        GDAL compression, or None.
    colormap : mapping, optional
        ``{value: (r, g, b[, a])}`` colour table for band 1.

    Returns
    -------
    Path
        ``path``.
    """
    import rasterio
    from affine import Affine
    from rasterio.errors import NotGeoreferencedWarning

    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"array must be (height, width) or (bands, height, width), got shape {np.shape(array)}")
    if transform is None and crs is not None:
        transform = Affine(pixel_size, 0.0, DEFAULT_ORIGIN[0], 0.0, -pixel_size, DEFAULT_ORIGIN[1])
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "count": arr.shape[0],
        "height": arr.shape[1],
        "width": arr.shape[2],
        "dtype": arr.dtype.name,
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
    }
    if tiled:
        profile.update(tiled=True, blockxsize=blocksize, blockysize=blocksize)
    if compress:
        profile["compress"] = compress
    out = Path(path)
    with warnings.catch_warnings():
        if transform is None:
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(out, "w", **profile) as dst:
            dst.write(arr)
            if colormap is not None:
                dst.write_colormap(1, {int(k): tuple(int(c) for c in v) for k, v in colormap.items()})
    return out


def random_class_map(
    height: int,
    width: int,
    *,
    n_classes: int,
    seed: int = 0,
    blob_scale: float = 12.0,
) -> NDArray[np.uint8] | NDArray[np.uint16]:
    """Return a blobby class map: connected patches of every class, like a land-cover map.

    Each pixel takes the class whose smooth noise field is highest there, so classes form
    irregular blobs about ``blob_scale`` pixels across. Deterministic in ``seed``.

    Parameters
    ----------
    height, width : int
        Shape of the map.
    n_classes : int
        Classes ``0 .. n_classes - 1``.
    seed : int, default 0
        Seed.
    blob_scale : float, default 12.0
        Typical blob size in pixels.

    Returns
    -------
    ndarray
        ``(height, width)`` class ids, uint8 (uint16 for more than 256 classes).

    Examples
    --------
    >>> m = random_class_map(40, 50, n_classes=3, seed=1)
    >>> m.shape, m.dtype.name, sorted(set(m.ravel().tolist()))
    ((40, 50), 'uint8', [0, 1, 2])
    """
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got {height} x {width}")
    if not blob_scale > 0:
        raise ValueError(f"blob_scale must be > 0, got {blob_scale}")
    rows = np.arange(height, dtype=np.int64)
    cols = np.arange(width, dtype=np.int64)
    best = np.full((height, width), -1.0, dtype=np.float32)
    out = np.zeros((height, width), dtype=np.uint8 if n_classes <= 256 else np.uint16)
    # A random per-class bias keeps some classes common and others rare but present.
    bias = unit(hash_coords(layer_key(seed, 1000), np.arange(n_classes, dtype=np.int64))) * 0.1
    for k in range(n_classes):
        field = value_noise(layer_key(seed, 1001 + k), rows, cols, blob_scale) + np.float32(bias[k])
        better = field > best
        best[better] = field[better]
        out[better] = k
    return out


def small_scene(
    directory: str | os.PathLike[str],
    *,
    width: int = 97,
    height: int = 131,
    bands: int = 3,
    dtype: str = "uint8",
    nodata_edge: bool = False,
    seed: int = 0,
    name: str | None = None,
    **kwargs: Any,
) -> tuple[Path, Path]:
    """Write a small synthetic scene and its labels into ``directory``.

    A thin wrapper of :func:`geopsp.synthetic.make_scene` with test-sized defaults (odd
    sizes, so code that assumes multiples of 16 or 32 fails loudly). The file name encodes
    the arguments unless ``name`` is given; an existing file of that name is replaced.

    Returns
    -------
    (Path, Path)
        The scene and its label raster.
    """
    if name is None:
        name = f"scene_{width}x{height}_{bands}b_{dtype}_s{seed}{'_edge' if nodata_edge else ''}.tif"
    kwargs.setdefault("overwrite", True)
    return make_scene(
        Path(directory) / name,
        width=width,
        height=height,
        bands=bands,
        dtype=dtype,
        nodata_edge=nodata_edge,
        seed=seed,
        **kwargs,
    )


def run_cli(*args: object) -> tuple[int, str, str]:
    """Run ``geopsp ARGS`` through the real entry point in this process; (exit code, stdout, stderr).

    Errors become what a user sees (one line on stderr, exit 1), unlike click's ``CliRunner``
    on the bare command group; the logging and warning setup the CLI changes is restored.
    """
    import contextlib
    import io
    import logging
    import warnings

    from geopsp.cli.main import main

    logger = logging.getLogger("geopsp")
    handlers, level = logger.handlers[:], logger.level
    formatwarning = warnings.formatwarning
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    logging.captureWarnings(False)
    warnings.formatwarning = formatwarning
    logger.handlers[:] = handlers
    logger.setLevel(level)
    return code, out.getvalue(), err.getvalue()
