"""Write polygon layers: GeoPackage, GeoJSON, FlatGeobuf, Shapefile or GeoParquet; count their features.

Large layers arrive as a stream of GeoDataFrame chunks; OGR formats append chunk by chunk
(pyogrio), so the whole layer is never in memory; :func:`count_by_value` counts features
without reading a geometry. Everything is written under a temporary
name and renamed into place when complete (:func:`geopsp.io.atomic.atomic_output`).

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from geopsp.errors import ConfigError, InputVectorError, OutputError
from geopsp.io.atomic import atomic_output

if TYPE_CHECKING:
    import geopandas as gpd

__all__ = [
    "VECTOR_FORMATS",
    "VectorFormat",
    "count_by_value",
    "format_from_path",
    "vector_files",
    "vector_suffix",
    "write_vector",
]

logger = logging.getLogger(__name__)

VectorFormat = Literal["gpkg", "geojson", "fgb", "shp", "parquet"]

VECTOR_FORMATS: dict[str, tuple[str, str]] = {
    # name: (OGR driver or "parquet", file suffix)
    "gpkg": ("GPKG", ".gpkg"),
    "geojson": ("GeoJSON", ".geojson"),
    "fgb": ("FlatGeobuf", ".fgb"),
    "shp": ("ESRI Shapefile", ".shp"),
    "parquet": ("parquet", ".parquet"),
}
"""Supported formats: name -> (driver, suffix)."""

_SUFFIXES: dict[str, str] = {
    ".gpkg": "gpkg",
    ".geojson": "geojson",
    ".json": "geojson",
    ".fgb": "fgb",
    ".shp": "shp",
    ".parquet": "parquet",
    ".geoparquet": "parquet",
}

# Files an ESRI Shapefile consists of besides .shp; renamed along with it.
_SHP_SIDECARS = (".shx", ".dbf", ".prj", ".cpg")


def format_from_path(path: str | os.PathLike[str], default: VectorFormat | None = None) -> VectorFormat:
    """Return the vector format implied by a file's suffix.

    Parameters
    ----------
    path : str or os.PathLike
        Output file name.
    default : str, optional
        Format used when the suffix is unknown; without it an unknown suffix is an error.

    Raises
    ------
    ConfigError
        The suffix is not one of the supported formats and no default was given.

    Examples
    --------
    >>> format_from_path("parcels.fgb")
    'fgb'
    >>> format_from_path("parcels.out", default="gpkg")
    'gpkg'
    """
    suffix = Path(path).suffix.lower()
    fmt = _SUFFIXES.get(suffix)
    if fmt is not None:
        return fmt  # type: ignore[return-value]
    if default is not None:
        return default
    known = ", ".join(sorted(_SUFFIXES))
    raise ConfigError(
        f"cannot tell the vector format of {str(path)!r} from its suffix; use one of {known} or pass format="
    )


def vector_files(path: str | os.PathLike[str], *, existing: bool = True) -> list[Path]:
    """Return the files a vector dataset at ``path`` consists of, ``path`` last.

    A Shapefile is its ``.shp`` and the companions ``.shx``, ``.dbf``, ``.prj`` and ``.cpg``;
    every other format is one file.

    Parameters
    ----------
    path : str or os.PathLike
        The dataset's main file.
    existing : bool, default True
        List only the companions that exist (what a writer made); False: every one the format
        may have (to check for them before writing).

    Examples
    --------
    >>> [p.name for p in vector_files("roads.shp", existing=False)]
    ['roads.shx', 'roads.dbf', 'roads.prj', 'roads.cpg', 'roads.shp']
    >>> vector_files("roads.gpkg")
    [PosixPath('roads.gpkg')]

    .. versionadded:: 0.2
    """
    main = Path(path)
    if main.suffix.lower() != ".shp":
        return [main]
    parts = [main.with_suffix(suffix) for suffix in _SHP_SIDECARS]
    return [*(p for p in parts if not existing or p.is_file()), main]


def vector_suffix(fmt: str) -> str:
    """Return the usual file suffix of a format name (``"gpkg"`` -> ``".gpkg"``)."""
    return _check_format(fmt)[1]


def _check_format(fmt: str) -> tuple[str, str]:
    try:
        return VECTOR_FORMATS[fmt]
    except KeyError:
        raise ConfigError(f"unknown vector format {fmt!r}; use one of {', '.join(VECTOR_FORMATS)}") from None


def write_vector(
    data: gpd.GeoDataFrame | Iterable[gpd.GeoDataFrame],
    path: str | os.PathLike[str],
    *,
    format: VectorFormat | None = None,
    layer: str | None = None,
    overwrite: bool = False,
    geometry_type: str | None = None,
    finalize: Callable[[Path, str], None] | None = None,
    inputs: Iterable[str | os.PathLike[str]] = (),
) -> Path:
    """Write a GeoDataFrame, or a stream of GeoDataFrame chunks, to a vector file atomically.

    Parameters
    ----------
    data : GeoDataFrame or iterable of GeoDataFrame
        The features. Chunks must share columns, dtypes and CRS; each is appended as it
        arrives (GeoParquet chunks are collected and written at the end). An empty stream
        writes an empty layer only when a chunk (possibly empty) carries the schema.
    path : str or os.PathLike
        Output file.
    format : {"gpkg", "geojson", "fgb", "shp", "parquet"}, optional
        Default: from the suffix of ``path``.
    layer : str, optional
        Layer name (GeoPackage); default: the file's stem.
    overwrite : bool, default False
        Replace an existing file.
    geometry_type : str, optional
        OGR geometry type of the layer (``"Polygon"``, ``"MultiPolygon"``); default: taken from
        the first chunk. Fixing it matters when later chunks may hold other types.
    finalize : callable, optional
        Called as ``finalize(temporary_path, layer)`` after the last chunk and before the
        rename, e.g. to add a style table to a GeoPackage.
    inputs : iterable of path
        Input files the output must not overwrite.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    ConfigError
        Unknown format, or GeoParquet without pyarrow.
    OutputExistsError
        ``path`` exists and ``overwrite`` is False.
    OutputError
        Nothing to write (no chunk at all), or the driver failed.
    """
    import geopandas as gpd

    out = Path(path)
    fmt: VectorFormat = format if format is not None else format_from_path(out)
    driver, _ = _check_format(fmt)
    layer_name = layer or out.stem
    chunks: Iterator[gpd.GeoDataFrame] = iter([data]) if isinstance(data, gpd.GeoDataFrame) else iter(data)
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError as exc:
            raise ConfigError(
                "GeoParquet output needs pyarrow; install it (pip install pyarrow) or choose gpkg"
            ) from exc
    if fmt == "shp":
        n = _write_shapefile(
            chunks, out, layer_name, overwrite=overwrite, inputs=list(inputs), geometry_type=geometry_type
        )
        logger.info("wrote %d features to %s", n, out)
        return out
    with atomic_output(out, overwrite=overwrite, inputs=list(inputs)) as tmp:
        if fmt == "parquet":
            n = _write_parquet(chunks, tmp)
        else:
            n = _write_ogr(chunks, tmp, driver=driver, layer=layer_name, geometry_type=geometry_type)
        if finalize is not None:
            finalize(tmp, layer_name)
    logger.info("wrote %d features to %s", n, out)
    return out


def _write_shapefile(
    chunks: Iterator[gpd.GeoDataFrame],
    out: Path,
    layer: str,
    *,
    overwrite: bool,
    inputs: list[str | os.PathLike[str]],
    geometry_type: str | None,
) -> int:
    """Write the files of a Shapefile in a temporary folder, then move them next to each other."""
    import shutil
    import uuid

    from geopsp.io.atomic import TEMP_MARKER, check_output_path

    final = check_output_path(out, overwrite=overwrite, inputs=inputs)
    for suffix in _SHP_SIDECARS:
        check_output_path(final.with_suffix(suffix), overwrite=overwrite, inputs=inputs)
    folder = final.parent / f"{TEMP_MARKER}{uuid.uuid4().hex[:12]}"
    folder.mkdir()
    try:
        tmp = folder / final.name
        n = _write_ogr(chunks, tmp, driver="ESRI Shapefile", layer=layer, geometry_type=geometry_type)
        # The .shp goes last: a reader never sees it without its companions.
        for suffix in (*_SHP_SIDECARS, ".shp"):
            part = tmp.with_suffix(suffix)
            if part.exists():
                os.replace(part, final.with_suffix(suffix))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return n


def _write_ogr(
    chunks: Iterator[gpd.GeoDataFrame], tmp: Path, *, driver: str, layer: str, geometry_type: str | None
) -> int:
    import pyogrio

    n = 0
    first = True
    # The Arrow path is ~15 % faster per chunk but holds extra copies of it; chunks are small.
    kwargs: dict[str, Any] = {}
    if driver == "GeoJSON":
        kwargs["RFC7946"] = "NO"  # keep the layer's CRS; RFC 7946 would force WGS 84
    for chunk in chunks:
        if not first and len(chunk) == 0:
            continue
        gtype = geometry_type or _geometry_type(chunk)
        options = dict(kwargs)
        if first and driver == "GPKG":
            # GeoPackage 1.3: read without warnings by the GDAL of QGIS 3.22 LTR (Debian 12).
            options["dataset_options"] = {"VERSION": "1.3"}
        try:
            with warnings.catch_warnings():
                # A layer without CRS is what was asked for; callers say so in their own words.
                warnings.filterwarnings("ignore", message="'crs' was not provided", category=UserWarning)
                pyogrio.write_dataframe(
                    chunk,
                    tmp,
                    layer=layer,
                    driver=driver,
                    append=not first,
                    geometry_type=gtype,
                    **options,
                )
        except Exception as exc:  # pyogrio raises its own DataSourceError/FieldError family
            raise OutputError(f"{tmp.name}: {driver} driver failed: {exc}") from exc
        first = False
        n += len(chunk)
    if first:
        raise OutputError(f"{tmp.name}: no features and no schema to write")
    return n


def _geometry_type(chunk: gpd.GeoDataFrame) -> str:
    types = set(chunk.geom_type.dropna().unique()) if len(chunk) else set()
    if types <= {"Polygon"}:
        return "Polygon"
    if types <= {"Polygon", "MultiPolygon"}:
        return "MultiPolygon"
    return "Unknown"


def _write_parquet(chunks: Iterator[gpd.GeoDataFrame], tmp: Path) -> int:
    import geopandas as gpd
    import pandas as pd  # type: ignore[import-untyped]

    parts = [c for c in chunks]
    if not parts:
        raise OutputError(f"{tmp.name}: no features and no schema to write")
    gdf = parts[0] if len(parts) == 1 else gpd.GeoDataFrame(pd.concat(parts, ignore_index=True), crs=parts[0].crs)
    gdf.to_parquet(tmp, index=False)
    return len(gdf)


def count_by_value(path: str | os.PathLike[str], column: str, *, layer: str | None = None) -> dict[int, int]:
    """Count a layer's features per value of an integer column, reading neither geometries nor other columns.

    OGR formats answer one ``GROUP BY`` query (GDAL's SQLite dialect, native in a GeoPackage);
    GeoParquet is read in batches of that one column. Memory stays small however many
    features the layer has.

    Parameters
    ----------
    path : str or os.PathLike
        A vector file of a format in :data:`VECTOR_FORMATS` (by its suffix; others are read by OGR).
    column : str
        The integer attribute (``"class_id"``); features where it is null are not counted.
    layer : str, optional
        Default: the file's first layer with geometries.

    Returns
    -------
    dict of int to int
        Features per value, values in ascending order.

    Raises
    ------
    InputVectorError
        One line naming the file when it cannot be read or has no such column.
    """
    p = Path(path)
    try:
        if p.suffix.lower() in (".parquet", ".geoparquet"):
            counts = _count_parquet(p, column)
        else:
            counts = _count_ogr(p, column, layer)
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        text = str(exc).strip().splitlines()
        raise InputVectorError(
            f"{p}: cannot count its features by {column!r} ({text[0] if text else type(exc).__name__}); "
            "check that it is a polygon file written by geopsp"
        ) from exc
    return dict(sorted(counts.items()))


def _count_ogr(path: Path, column: str, layer: str | None) -> dict[int, int]:
    import pyogrio

    if layer is None:
        layers = [str(name) for name, geom in pyogrio.list_layers(path) if geom is not None]
        if not layers:
            raise ValueError("no layer with geometries")
        layer = layers[0]

    def quoted(name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    sql = f"SELECT {quoted(column)} AS v, COUNT(*) AS n FROM {quoted(layer)} GROUP BY {quoted(column)}"
    table = pyogrio.read_dataframe(path, sql=sql, sql_dialect="SQLITE", read_geometry=False)
    return {int(v): int(n) for v, n in zip(table["v"], table["n"], strict=True) if v is not None and v == v}


def _count_parquet(path: Path, column: str) -> dict[int, int]:
    import numpy as np
    import pyarrow.parquet as pq

    counts: dict[int, int] = {}
    for batch in pq.ParquetFile(path).iter_batches(columns=[column], batch_size=65_536):
        values = batch.column(0).drop_null().to_numpy(zero_copy_only=False)
        for v, n in zip(*np.unique(values, return_counts=True), strict=True):
            counts[int(v)] = counts.get(int(v), 0) + int(n)
    return counts
