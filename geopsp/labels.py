"""Labels: map label values to model channels, and burn vector labels onto a scene's grid.

A *label value* is what a label raster stores or what a vector attribute holds; after an
optional ``value_map`` it is a *class id*, and the class table places class id ``classes[i].id``
in model channel ``i``. Everything that maps to no class (unlabeled, nodata, values missing from
the table) becomes the ignore index, which the loss and the metrics skip.

Vector labels (GeoPackage, GeoJSON, Shapefile ...) are reprojected to the scene's CRS and
rasterized with :func:`rasterio.features.rasterize` on the scene grid, smallest polygons last so
footprints inside larger areas keep their class. Label rasters on another grid are warped onto
it with nearest neighbour (:func:`label_raster_on_grid`), for training and evaluation alike.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from geopsp.classes import ClassTable
from geopsp.errors import ConfigError, CRSMismatchError, GeopspWarning, InputVectorError

if TYPE_CHECKING:
    import geopandas as gpd
    from affine import Affine

__all__ = [
    "UNLABELED",
    "LabelMapping",
    "UnknownLabelWarning",
    "VectorLabels",
    "label_raster_on_grid",
    "local_vector_path",
    "rasterize_labels",
    "value_key",
    "window_transform",
]

logger = logging.getLogger(__name__)

UNLABELED = 65535
"""Class-id raster value of pixels that no polygon covers (when there is no background class)."""


class UnknownLabelWarning(GeopspWarning):
    """Label values that are in no class table were found; those pixels are ignored."""


def value_key(value: Any) -> str:
    """Return the canonical string form of a label value used by ``value_map`` lookups.

    Examples
    --------
    >>> value_key(3.0), value_key("3"), value_key(" forest ")
    ('3', '3', 'forest')
    """
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return str(value).strip()


def _as_class_id(value: Any) -> int | None:
    """Integer class id of an unmapped label value, or None when it is not an integer."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(f) or not f.is_integer():
        return None
    return int(f)


_IGNORED = -1
_UNKNOWN = -2


@dataclass(frozen=True)
class LabelMapping:
    """Turns label values into model channel indices.

    Parameters
    ----------
    classes : ClassTable
        Channel ``i`` predicts ``classes[i]``; a label value equal to ``classes[i].id`` maps to ``i``.
    value_map : mapping, optional
        Label value (any type; compared by :func:`value_key`) -> class id, or ``None`` to ignore it.
        Values not in the map fall back to "the value is the class id".
    ignore_values : iterable of float
        Values that mean unlabeled; they map to ``ignore_index`` without a warning.
    ignore_index : int
        Channel index written for ignored pixels (255 by default; must not be a channel).

    Examples
    --------
    >>> from geopsp.classes import ClassTable
    >>> m = LabelMapping(ClassTable.from_names(["a", "b"], start=1), ignore_values=(0,))
    >>> m.encode(np.array([[0, 1, 2]], dtype="float32")).tolist()
    [[255, 0, 1]]
    """

    classes: ClassTable
    value_map: Mapping[str, int | None] | None = None
    ignore_values: tuple[float, ...] = ()
    ignore_index: int = 255
    _channel: dict[int, int] = field(init=False, repr=False, compare=False)
    _ignore_keys: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.ignore_index < len(self.classes):
            raise ConfigError(
                f"ignore index {self.ignore_index} collides with a model channel (there are {len(self.classes)}); "
                "use 255 or another value >= the number of classes"
            )
        object.__setattr__(self, "_channel", {c.id: i for i, c in enumerate(self.classes)})
        object.__setattr__(self, "_ignore_keys", frozenset(value_key(v) for v in self.ignore_values))
        if self.value_map:
            bad = sorted({v for v in self.value_map.values() if v is not None and v not in self._channel})
            if bad:
                raise ConfigError(
                    f"value_map targets class ids {bad} that are not in the class table {self.classes.ids}; "
                    "fix value_map or add the classes",
                    key="train.data.value_map",
                )

    @property
    def dtype(self) -> np.dtype[Any]:
        """Smallest unsigned dtype holding every channel index and the ignore index."""
        return np.dtype("uint8") if self.ignore_index <= 255 else np.dtype("uint16")

    def class_id(self, value: Any) -> int:
        """Class id of one label value; ``-1`` when ignored, ``-2`` when it maps to no class."""
        key = value_key(value)
        if key in self._ignore_keys:
            return _IGNORED
        if self.value_map is not None and key in self.value_map:
            target = self.value_map[key]
            return _IGNORED if target is None else int(target)
        cid = _as_class_id(value)
        if cid is None or cid not in self._channel:
            return _UNKNOWN
        return cid

    def channel_of(self, value: Any) -> int | None:
        """Channel index of one label value, or None when it is ignored or unknown."""
        cid = self.class_id(value)
        return self._channel.get(cid) if cid >= 0 else None

    def encode(
        self,
        labels: NDArray[Any],
        *,
        nodata: float | None = None,
        valid: NDArray[np.bool_] | None = None,
        unknown: set[str] | None = None,
    ) -> NDArray[Any]:
        """Map a label array to channel indices.

        Parameters
        ----------
        labels : ndarray
            Label values of any numeric dtype, any shape.
        nodata : float, optional
            The label raster's nodata value; those pixels are ignored.
        valid : ndarray of bool, optional
            Where the scene has data; elsewhere the labels are ignored.
        unknown : set of str, optional
            Receives the values that map to no class (the caller warns once with all of them).

        Returns
        -------
        ndarray of uint8 (or uint16 for a large ignore index)
            Same shape; channel index or ``ignore_index``.
        """
        arr = np.asarray(labels)
        out = np.full(arr.shape, self.ignore_index, dtype=self.dtype)
        if arr.size == 0:
            return out
        keep = None if valid is None else np.asarray(valid, dtype=bool).reshape(arr.shape)
        flat = arr.ravel() if keep is None else arr[keep]
        uniq, inverse = np.unique(flat, return_inverse=True)
        lut = np.full(uniq.shape, self.ignore_index, dtype=self.dtype)
        for i, v in enumerate(uniq.tolist()):
            if isinstance(v, float) and math.isnan(v):
                continue
            if nodata is not None and (v == nodata or (isinstance(nodata, float) and math.isnan(nodata) and v != v)):
                continue
            cid = self.class_id(v)
            if cid == _UNKNOWN:
                if unknown is not None:
                    unknown.add(value_key(v))
                continue
            if cid >= 0:
                lut[i] = self._channel[cid]
        if keep is None:
            out = lut[inverse].reshape(arr.shape)
        else:
            out[keep] = lut[inverse]
        return out

    def warn_unknown(self, unknown: set[str], source: str) -> None:
        """Warn once that ``source`` holds label values in no class table (those pixels are ignored)."""
        if unknown:
            values = ", ".join(sorted(unknown, key=_sort_key)[:20])
            more = f" and {len(unknown) - 20} more" if len(unknown) > 20 else ""
            warnings.warn(
                f"{source}: label values {values}{more} are not in the class table {self.classes.ids}; "
                "those pixels are ignored (add them to the classes, value_map or ignore_values)",
                UnknownLabelWarning,
                stacklevel=3,
            )


def _sort_key(s: str) -> tuple[int, float, str]:
    try:
        return (0, float(s), s)
    except ValueError:
        return (1, 0.0, s)


class VectorLabels:
    """Vector labels read once, reprojected to a target CRS, ready to be burnt into any window.

    Parameters
    ----------
    source : path or GeoDataFrame
        A vector file (anything GDAL/OGR reads) or a GeoDataFrame.
    crs : CRS-like
        The grid's CRS; the polygons are reprojected to it.
    field : str, optional
        Attribute holding each polygon's label value.
    value_map : mapping, optional
        Attribute value -> class id (``None``: skip the polygon).
    burn_value : int, optional
        Class id burnt for every polygon (footprints); used when ``field`` is None.
    layer : str, optional
        Layer of a multi-layer file.

    Raises
    ------
    InputVectorError
        If the file cannot be read, the field is missing, or no value can be burnt.
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | gpd.GeoDataFrame,
        *,
        crs: Any,
        field: str | None = None,
        value_map: Mapping[str, int | None] | None = None,
        burn_value: int | None = None,
        layer: str | None = None,
    ) -> None:
        import geopandas as gpd
        import shapely

        name = "GeoDataFrame" if isinstance(source, gpd.GeoDataFrame) else str(source)
        self.name = name
        gdf = source if isinstance(source, gpd.GeoDataFrame) else read_vector(source, layer=layer)
        if field is None and burn_value is None:
            raise InputVectorError(f"{name}: give a class field (class_field) or a fixed class (burn_class) to burn")
        if field is not None and field not in gdf.columns:
            cols = ", ".join(c for c in gdf.columns if c != gdf.geometry.name)
            raise InputVectorError(f"{name}: has no field {field!r}; fields are: {cols}")
        gdf = gdf[gdf.geometry.notna() & ~gdf.geometry.is_empty]
        if crs is not None:
            if gdf.crs is None:
                warnings.warn(
                    f"{name}: vector labels have no CRS; assuming the scene's CRS",
                    GeopspWarning,
                    stacklevel=2,
                )
                gdf = gdf.set_crs(crs, allow_override=True)
            elif not _same_crs(gdf.crs, crs):
                logger.info("reprojecting %s from %s to %s", name, gdf.crs, crs)
                gdf = gdf.to_crs(crs)
        values: list[int | None] = []
        unknown: set[str] = set()
        if field is not None:
            for v in gdf[field].tolist():
                if v is None or (isinstance(v, float) and math.isnan(v)):
                    values.append(None)
                    continue
                key = value_key(v)
                if value_map is not None and key in value_map:
                    values.append(value_map[key])
                    continue
                cid = _as_class_id(v)
                if cid is None:
                    unknown.add(key)
                    values.append(None)
                else:
                    values.append(cid)
        else:
            values = [burn_value] * len(gdf)
        if unknown:
            warnings.warn(
                f"{name}: values {sorted(unknown, key=_sort_key)} of field {field!r} are neither in value_map "
                "nor integer class ids; those polygons are ignored",
                UnknownLabelWarning,
                stacklevel=2,
            )
        keep = np.array([v is not None for v in values], dtype=bool)
        geoms = shapely.make_valid(np.asarray(gdf.geometry.values, dtype=object)[keep])
        vals = np.array([v for v in values if v is not None], dtype=np.int64)
        # Larger polygons first: small features (buildings, roads) burnt last stay visible.
        order = np.argsort(-shapely.area(geoms), kind="stable")
        self.geometries: NDArray[Any] = geoms[order]
        self.values: NDArray[np.int64] = vals[order]
        self.crs = gdf.crs
        self._tree = shapely.STRtree(self.geometries)

    def __len__(self) -> int:
        return len(self.geometries)

    @property
    def class_ids(self) -> list[int]:
        """Distinct class ids the polygons carry."""
        return sorted(set(self.values.tolist()))

    def rasterize(
        self,
        transform: Affine,
        width: int,
        height: int,
        *,
        fill: int = UNLABELED,
        all_touched: bool = False,
        dtype: str = "uint16",
    ) -> NDArray[Any]:
        """Burn the polygons that touch a grid (a whole scene or one window of it).

        Parameters
        ----------
        transform : Affine
            The grid's geotransform (a window's transform for a window).
        width, height : int
            Grid size in pixels.
        fill : int, default 65535
            Value of pixels no polygon covers (a background class id, or "unlabeled").
        all_touched : bool, default False
            Burn every touched pixel instead of those whose centre is covered.
        dtype : str, default "uint16"
            Output dtype.

        Returns
        -------
        ndarray, shape (height, width)
            Class ids, ``fill`` elsewhere.
        """
        import shapely
        from rasterio.features import rasterize

        out_shape = (int(height), int(width))
        if len(self) == 0 or width <= 0 or height <= 0:
            return np.full(out_shape, fill, dtype=dtype)
        x0, y0 = transform @ (0, 0)
        x1, y1 = transform @ (width, height)
        box = shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        idx = np.sort(self._tree.query(box))
        if idx.size == 0:
            return np.full(out_shape, fill, dtype=dtype)
        shapes = zip(self.geometries[idx], self.values[idx].tolist(), strict=True)
        out: NDArray[Any] = rasterize(
            shapes, out_shape=out_shape, transform=transform, fill=fill, all_touched=all_touched, dtype=dtype
        )
        return out


def window_transform(transform: Affine, row: int, col: int) -> Affine:
    """Geotransform of a window whose top-left pixel is ``(row, col)`` of a grid.

    Examples
    --------
    >>> from affine import Affine
    >>> window_transform(Affine(10, 0, 500, 0, -10, 900), 2, 3).c
    530.0
    """
    from affine import Affine

    out: Affine = transform @ Affine.translation(col, row)
    return out


@contextmanager
def label_raster_on_grid(src: Any, grid: Any, *, onto: str = "the grid") -> Iterator[Any]:
    """Yield a label raster as read on ``grid``: itself when it lies on it, else warped onto it.

    The label raster lies on the grid when the sizes and geotransforms match and the CRSs match
    or one is missing, or when neither has a CRS and the sizes match (pixel grids). Otherwise it
    is warped with nearest neighbour, so every pixel keeps a label value that exists.

    Parameters
    ----------
    src : rasterio.DatasetReader
        The open label raster.
    grid : rasterio dataset or any object with ``crs``, ``transform``, ``width``, ``height``
        The target grid.
    onto : str
        What the grid belongs to, for the log and the error message.

    Yields
    ------
    rasterio dataset
        ``src`` or a :class:`rasterio.vrt.WarpedVRT` of it; read band 1 with any window of the
        grid. Its ``nodata`` is the label raster's, or :data:`UNLABELED` when it had none and
        was warped (pixels outside the label raster).

    Raises
    ------
    CRSMismatchError
        When the grids differ and only one of the two has a CRS.
    """
    same_size = src.width == grid.width and src.height == grid.height
    lined_up = grid.transform is None or src.transform.almost_equals(grid.transform)
    one_crs = src.crs is None or grid.crs is None
    if same_size and ((lined_up and (one_crs or src.crs == grid.crs)) or (src.crs is None and grid.crs is None)):
        yield src
        return
    if one_crs:
        raise CRSMismatchError(
            f"{src.name} and {onto} are on different grids and one has no CRS; "
            "georeference both or give labels on the grid of the scene"
        )
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    logger.info("warping labels %s onto the grid of %s", src.name, onto)
    with WarpedVRT(
        src,
        crs=grid.crs,
        transform=grid.transform,
        width=grid.width,
        height=grid.height,
        resampling=Resampling.nearest,
        nodata=src.nodata if src.nodata is not None else UNLABELED,
    ) as vrt:
        yield vrt


def local_vector_path(path: str | os.PathLike[str]) -> Path:
    """Return a vector file's local path; vector labels are read whole, from local files only.

    Raises
    ------
    InputVectorError
        For a remote one (``http(s)://``, ``s3://``, ``/vsi…/``): download it first. OGR's
        readers of such files (GeoPackage's SQLite over ``/vsicurl/``) can stall on plain
        HTTP servers, and the whole file is needed anyway.

    Examples
    --------
    >>> local_vector_path("labels/roads.gpkg").as_posix()
    'labels/roads.gpkg'
    """
    from geopsp.io.source import is_remote

    if is_remote(path):
        raise InputVectorError(
            f"{os.fspath(path)}: vector labels are read from local files; download it first "
            "(curl -O URL, aws s3 cp s3://...) and give the local path"
        )
    return Path(path)


def read_vector(path: str | os.PathLike[str], *, layer: str | None = None) -> gpd.GeoDataFrame:
    """Read a vector file into a GeoDataFrame.

    Raises
    ------
    InputVectorError
        If the file is missing, remote (:func:`local_vector_path`) or unreadable, naming it
        and the reason.
    """
    import geopandas as gpd

    p = local_vector_path(path)
    if not p.exists():
        raise InputVectorError(f"{p}: vector labels not found; check the path")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            gdf = gpd.read_file(p, layer=layer) if layer else gpd.read_file(p)
    except Exception as exc:  # pyogrio raises several types
        raise InputVectorError(f"{p}: cannot read vector labels ({exc}); check the file and layer") from exc
    return gdf


def _same_crs(a: Any, b: Any) -> bool:
    from rasterio.crs import CRS

    try:
        return bool(CRS.from_user_input(a) == CRS.from_user_input(b))
    except Exception:
        return False


def rasterize_labels(
    vector: str | os.PathLike[str] | gpd.GeoDataFrame,
    like: str | os.PathLike[str],
    *,
    field: str | None = None,
    value_map: Mapping[str, int | None] | None = None,
    burn_value: int | None = None,
    fill: int = UNLABELED,
    all_touched: bool = False,
    layer: str | None = None,
) -> NDArray[np.uint16]:
    """Burn vector labels onto the grid of a scene, reprojecting them to the scene's CRS.

    Parameters
    ----------
    vector : path or GeoDataFrame
        Polygons with a class field, or footprints burnt with ``burn_value``.
    like : path
        The scene whose CRS, transform and size define the grid.
    field, value_map, burn_value, layer
        See :class:`VectorLabels`.
    fill : int, default 65535
        Value where no polygon lies.
    all_touched : bool, default False
        Burn every touched pixel.

    Returns
    -------
    ndarray of uint16, shape (height, width)
        Class ids, ``fill`` elsewhere.

    Examples
    --------
    >>> rasterize_labels("labels.gpkg", "scene.tif", field="class")  # doctest: +SKIP
    """
    import rasterio

    with rasterio.open(like) as src:
        crs, transform, width, height = src.crs, src.transform, src.width, src.height
    labels = VectorLabels(vector, crs=crs, field=field, value_map=value_map, burn_value=burn_value, layer=layer)
    return labels.rasterize(transform, width, height, fill=fill, all_touched=all_touched)


def unique_values(arrays: Iterable[NDArray[Any]]) -> list[float]:
    """Sorted distinct finite values over several arrays (a helper for reports)."""
    seen: set[float] = set()
    for a in arrays:
        u = np.unique(np.asarray(a))
        seen.update(float(v) for v in u.tolist() if not (isinstance(v, float) and math.isnan(v)))
    return sorted(seen)
