"""``geopsp sample-scene OUT.tif``: write a synthetic labelled scene."""

from __future__ import annotations

import ctypes
import ctypes.util
import re
import sys
from typing import Any

import click

from geopsp.cli.options import overwrite_option
from geopsp.cli.progress import ProgressBar
from geopsp.synthetic import DTYPES, MAX_BANDS

__all__ = ["sample_scene"]

_SIZE = re.compile(r"^\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?$")


def _parse_size(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, int]:
    match = _SIZE.match(value)
    if match is None:
        raise click.BadParameter(f"{value!r} is not W or WxH in pixels, e.g. 2000 or 3000x2000", ctx, param)
    width = int(match.group(1))
    height = int(match.group(2) or width)
    if width < 1 or height < 1:
        raise click.BadParameter(f"{value!r}: width and height must be at least 1 pixel", ctx, param)
    return width, height


def _tune_malloc() -> None:
    """Keep freed numpy temporaries in the heap instead of returning them to the OS.

    The generator allocates many window-sized arrays; with glibc's default thresholds each
    is handed back and page-faulted in again, which halves throughput. The command owns its
    process, so it may raise the thresholds; elsewhere this is a no-op.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 32 * 1024 * 1024)
    mallopt(m_trim_threshold, 128 * 1024 * 1024)


@click.command("sample-scene")
@click.argument("out", type=click.Path(dir_okay=False))
@click.option(
    "--size",
    default="1024",
    show_default=True,
    metavar="W[xH]",
    callback=_parse_size,
    help="Scene size in pixels: 2000 (square) or 3000x2000.",
)
@click.option(
    "--bands",
    type=click.IntRange(1, MAX_BANDS),
    default=3,
    show_default=True,
    help="Band count: red, green, blue, nir, then Sentinel-2-like red-edge/NIR/SWIR; 1 is panchromatic.",
)
@click.option(
    "--dtype",
    type=click.Choice(DTYPES),
    default="uint8",
    show_default=True,
    help="uint8: reflectance x 510; uint16/int16: x 10000 (Sentinel-2-like); float32: reflectance 0..1.",
)
@click.option("--crs", default="EPSG:32633", show_default=True, help="CRS: EPSG code, WKT or PROJ string.")
@click.option(
    "--pixel-size",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Pixel size in CRS units.",
)
@click.option(
    "--origin",
    type=(float, float),
    default=None,
    metavar="X Y",
    help="Map coordinates of the top-left corner [default: 500000 5600000].",
)
@click.option(
    "--nodata-edge", is_flag=True, help="Nodata collar around a rotated footprint, like the edge of a real scene."
)
@click.option("--seed", type=click.IntRange(0, 2**64 - 1), default=0, show_default=True, help="Landscape seed.")
@click.option(
    "--labels",
    "labels_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Label raster to write [default: OUT's stem + _labels.tif].",
)
@click.option(
    "--block-size",
    type=click.IntRange(16, 8192),
    default=512,
    show_default=True,
    help="Window edge generated at a time; bounds memory, never changes a pixel.",
)
@click.option("--no-progress", is_flag=True, help="Do not show the progress bar.")
@overwrite_option
@click.pass_context
def sample_scene(
    ctx: click.Context,
    out: str,
    size: tuple[int, int],
    bands: int,
    dtype: str,
    crs: str,
    pixel_size: float,
    origin: tuple[float, float] | None,
    nodata_edge: bool,
    seed: int,
    labels_path: str | None,
    block_size: int,
    no_progress: bool,
    overwrite: bool,
) -> None:
    """Write a synthetic, georeferenced, labelled scene to OUT.

    The landscape (field parcels with crop rows, forest, lakes, roads, buildings) is a pure
    function of the seed and pixel position, generated window by window in bounded memory.
    The label raster holds class ids 0 cropland, 1 forest, 2 water, 3 road, 4 building,
    5 grassland (255 outside the footprint) with a colour table. Stdout lists the two files
    written, one per line.
    """
    from geopsp.synthetic import make_scene

    _tune_malloc()
    width, height = size
    obj = ctx.find_root().obj
    verbosity = int(obj.get("verbosity", 0)) if isinstance(obj, dict) else 0
    extra: dict[str, Any] = {} if origin is None else {"origin": origin}
    with ProgressBar(
        "sample-scene", unit="windows", enabled=not no_progress and verbosity >= 0 and sys.stderr.isatty()
    ) as progress:
        paths = make_scene(
            out,
            width=width,
            height=height,
            bands=bands,
            dtype=dtype,
            crs=crs,
            pixel_size=pixel_size,
            nodata_edge=nodata_edge,
            seed=seed,
            labels_path=labels_path,
            overwrite=overwrite,
            block_size=block_size,
            progress=progress,
            **extra,
        )
    for path in paths:
        click.echo(str(path))
