"""Score a class raster against reference labels, streamed block by block.

The reference is a raster (warped onto the prediction's grid with nearest neighbour when the
grids differ) or a vector file (reprojected to the prediction's CRS and rasterized one block at
a time). Pixels where the prediction is nodata, or the reference is unlabeled, nodata or in
``ignore_values``, are excluded. Memory is bounded by one block of rows, whatever the size.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import numpy as np
from numpy.typing import NDArray

from geopsp.classes import ClassTable
from geopsp.errors import InputRasterError, InputVectorError
from geopsp.eval.metrics import ConfusionMatrix, Scores
from geopsp.io.scene import open_raster, read_failure
from geopsp.io.source import SceneSource, resolve_scene, scene_name
from geopsp.labels import (
    UNLABELED,
    LabelMapping,
    UnknownLabelWarning,
    VectorLabels,
    label_raster_on_grid,
    local_vector_path,
    value_key,
    window_transform,
)

__all__ = ["Evaluation", "evaluate_rasters", "is_vector_path", "resolve_class_table"]

logger = logging.getLogger(__name__)

VECTOR_SUFFIXES = (".gpkg", ".geojson", ".json", ".shp", ".fgb", ".parquet", ".gml", ".kml", ".sqlite")
_UNKNOWN_REF = -3


def is_vector_path(path: str | os.PathLike[str]) -> bool:
    """Tell whether ``path`` (a local path or a URL) looks like a vector file (by suffix).

    Examples
    --------
    >>> is_vector_path("labels.gpkg"), is_vector_path("labels.tif"), is_vector_path("https://h/l.gpkg?sig=1")
    (True, False, True)
    """
    return PurePosixPath(scene_name(path)).suffix.lower() in VECTOR_SUFFIXES


@dataclass(frozen=True)
class Evaluation:
    """Scores of a prediction against a reference, with what was counted and excluded.

    ``prediction`` and ``reference`` are the inputs as given: local paths or URLs.
    """

    prediction: str
    reference: str
    classes: ClassTable
    scores: Scores
    excluded: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready report (NaN as null)."""
        return {
            "prediction": self.prediction,
            "reference": self.reference,
            **self.scores.to_dict(),
            "excluded_pixels": self.excluded,
            "class_table": self.classes.to_list(),
        }


@contextmanager
def _quiet() -> Iterator[None]:
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


def _lut_lookup(
    values: NDArray[Any], fn: Callable[[Any], int], cache: dict[Any, NDArray[np.int64]]
) -> NDArray[np.int64]:
    """Map an array through ``fn`` (value -> int), with a full lookup table for small integer dtypes."""
    dt = values.dtype
    if dt.kind in "iu" and dt.itemsize <= 2:
        lut = cache.get(dt)
        if lut is None:
            info = np.iinfo(dt)
            lut = np.array([fn(v) for v in range(int(info.min), int(info.max) + 1)], dtype=np.int64)
            cache[dt] = lut
        offset = -int(np.iinfo(dt).min)
        return lut[values.astype(np.int64) + offset]
    uniq, inverse = np.unique(values, return_inverse=True)
    mapped = np.array([fn(v) for v in uniq.tolist()], dtype=np.int64)
    return mapped[inverse].reshape(values.shape)


def _infer_classes(pred_path: SceneSource, block_rows: int) -> ClassTable:
    """Class table from the values of a class raster (when neither the raster nor the caller has one)."""
    from rasterio.errors import RasterioError
    from rasterio.windows import Window

    seen: set[int] = set()
    with open_raster(pred_path, what="prediction") as src:
        nodata = src.nodata
        for r0 in range(0, src.height, block_rows):
            h = min(block_rows, src.height - r0)
            try:
                block = src.read(1, window=Window(0, r0, src.width, h))
            except RasterioError as exc:
                raise read_failure(pred_path, exc, rows=(r0, r0 + h - 1)) from exc
            seen.update(int(v) for v in np.unique(block).tolist() if nodata is None or v != nodata)
    if not seen:
        raise InputRasterError(f"{pred_path}: holds no class value (only nodata); nothing to evaluate")
    ids = sorted(seen)
    return ClassTable.from_list([{"id": i, "name": f"class_{i}"} for i in ids])


def evaluate_rasters(
    prediction: str | os.PathLike[str],
    reference: str | os.PathLike[str],
    *,
    classes: ClassTable | str | os.PathLike[str] | None = None,
    ignore_values: Sequence[float] = (),
    value_map: Mapping[str, int | None] | None = None,
    field: str | None = None,
    burn_value: int | None = None,
    background: int | None = None,
    layer: str | None = None,
    all_touched: bool = False,
    block_rows: int = 512,
) -> Evaluation:
    """Score a class raster against a reference raster or vector, block by block.

    Parameters
    ----------
    prediction : path or URL
        A class raster (band 1 holds class ids; its nodata is excluded), local or remote
        (``http(s)://``, ``s3://``, ``/vsi…/``: :func:`geopsp.io.scene.open_raster`).
    reference : path or URL
        A label raster (local or remote), or a local vector file (``.gpkg``, ``.geojson``, ``.shp`` ...).
    classes : ClassTable or path, optional
        Class table (YAML/JSON); default: the table geopsp stored in the prediction, else the
        values found in it.
    ignore_values : sequence of float
        Reference values that mean unlabeled.
    value_map : mapping, optional
        Reference value (or vector attribute) -> class id; null ignores it.
    field : str, optional
        Vector attribute holding the class (default: ``class_id``, ``class`` or ``label`` if present).
    burn_value : int, optional
        Class id of every polygon (footprints) when there is no class field.
    background : int, optional
        Class id of pixels no polygon covers (vector references); default: unlabeled.
    layer : str, optional
        Vector layer.
    all_touched : bool, default False
        Rasterize every pixel a polygon touches.
    block_rows : int, default 512
        Rows per block.

    Returns
    -------
    Evaluation

    Raises
    ------
    InputRasterError, InputVectorError
        For unreadable inputs.
    CRSMismatchError
        If a reference raster has no CRS while the prediction has one and the grids differ.
    """
    from rasterio.errors import RasterioError
    from rasterio.windows import Window

    ref_is_vector = is_vector_path(reference)
    pred_path = resolve_scene(prediction)
    ref_path = local_vector_path(reference) if ref_is_vector else resolve_scene(reference)
    for p in (pred_path, ref_path):
        local = p.local if isinstance(p, SceneSource) else p
        if local is not None and not local.exists():
            raise (InputRasterError if isinstance(p, SceneSource) else InputVectorError)(
                f"{local}: not found; check the path"
            )
    table = resolve_class_table(classes, pred_path, block_rows=block_rows)
    k = len(table)
    pred_index = {c.id: i for i, c in enumerate(table)}
    ref_mapping = LabelMapping(table, value_map=value_map, ignore_values=tuple(ignore_values), ignore_index=65535)
    cm = ConfusionMatrix(k)
    excluded = {"prediction_nodata": 0, "reference_unlabeled": 0}
    unknown_ref: set[str] = set()
    unknown_pred: set[int] = set()
    pred_cache: dict[Any, NDArray[np.int64]] = {}
    ref_cache: dict[Any, NDArray[np.int64]] = {}

    with ExitStack() as stack:
        stack.enter_context(_quiet())
        src = stack.enter_context(open_raster(pred_path, what="prediction"))
        pred_nodata = src.nodata

        def pred_fn(v: Any) -> int:
            if pred_nodata is not None and v == pred_nodata:
                return -2
            if v in pred_index:
                return pred_index[v]
            return k  # "other" column: an error, not ignored

        vector: VectorLabels | None = None
        ref_src: Any = None
        ref_nodata: float | None = None
        if not isinstance(ref_path, SceneSource):
            vec_field = field
            if vec_field is None and burn_value is None:
                vec_field = _guess_field(ref_path, layer)
            vector = VectorLabels(
                ref_path, crs=src.crs, field=vec_field, value_map=value_map, burn_value=burn_value, layer=layer
            )
            # value_map is applied while burning; the rasterized values are class ids already.
            ref_mapping = LabelMapping(table, ignore_values=tuple(ignore_values), ignore_index=65535)
        else:
            ref_ds = stack.enter_context(open_raster(ref_path, what="reference"))
            ref_src = stack.enter_context(label_raster_on_grid(ref_ds, src, onto=str(pred_path)))
            ref_nodata = ref_src.nodata

        def ref_fn(v: Any) -> int:
            if isinstance(v, float) and math.isnan(v):
                return -2
            if ref_nodata is not None and v == ref_nodata:
                return -2
            if vector is not None and v == UNLABELED:
                return -2
            cid = ref_mapping.channel_of(v)
            if cid is None:
                return _UNKNOWN_REF if ref_mapping.class_id(v) == -2 else -2
            return cid

        fill = UNLABELED if background is None else background
        labeled = 0
        for r0 in range(0, src.height, block_rows):
            h = min(block_rows, src.height - r0)
            win = Window(0, r0, src.width, h)
            try:
                raw_pred = src.read(1, window=win)
            except RasterioError as exc:
                raise read_failure(pred_path, exc, rows=(r0, r0 + h - 1)) from exc
            pred = _lut_lookup(raw_pred, pred_fn, pred_cache)
            other = pred == k
            if other.any():
                unknown_pred.update(int(v) for v in np.unique(raw_pred[other]).tolist())
            if vector is not None:
                raw = vector.rasterize(
                    window_transform(src.transform, r0, 0), src.width, h, fill=fill, all_touched=all_touched
                )
            else:
                try:
                    raw = ref_src.read(1, window=win)
                except RasterioError as exc:
                    raise read_failure(ref_path, exc, rows=(r0, r0 + h - 1)) from exc
            ref = _lut_lookup(raw, ref_fn, ref_cache)
            odd = ref == _UNKNOWN_REF
            if odd.any():
                unknown_ref.update(value_key(v) for v in np.unique(raw[odd]).tolist())
                ref[odd] = -2
            pred_bad = pred < 0
            ref_bad = ref < 0
            excluded["prediction_nodata"] += int(pred_bad.sum())
            excluded["reference_unlabeled"] += int((ref_bad & ~pred_bad).sum())
            labeled += int((~ref_bad).sum())
            cm.update(ref, pred, valid=~(pred_bad | ref_bad))
    if labeled == 0:
        raise (InputVectorError if vector is not None else InputRasterError)(
            f"{ref_path}: no labelled reference pixel overlaps the prediction {pred_path}; "
            "check the reference's CRS, extent and class field/values"
        )
    if unknown_ref:
        ref_mapping.warn_unknown(unknown_ref, str(ref_path))
    if unknown_pred:
        warnings.warn(
            f"{pred_path}: predicted values {sorted(unknown_pred)} are not in the class table {table.ids}; "
            "they count as errors",
            UnknownLabelWarning,
            stacklevel=2,
        )
    return Evaluation(str(pred_path), str(ref_path), table, cm.scores(table), excluded)


def resolve_class_table(
    classes: ClassTable | str | os.PathLike[str] | None,
    prediction: str | os.PathLike[str] | SceneSource,
    *,
    block_rows: int = 512,
) -> ClassTable:
    """Return the class table a prediction is scored with.

    ``classes`` itself (a table, or a YAML/JSON file) when given; else the table geopsp stored
    in the prediction; else one entry per value found in it (read ``block_rows`` rows at a time).

    Raises
    ------
    InputRasterError
        If the prediction cannot be read or holds only nodata.
    """
    pred_path = resolve_scene(prediction)
    if isinstance(classes, ClassTable):
        return classes
    if classes is not None:
        return ClassTable.from_file(classes)
    try:
        from geopsp.io.raster import read_class_table

        with _quiet():
            stored = read_class_table(pred_path)
    except ImportError:  # pragma: no cover - io.raster is part of geopsp
        stored = None
    except InputRasterError:
        raise
    except Exception as exc:
        raise InputRasterError(f"{pred_path}: cannot read the prediction ({exc})") from exc
    if stored is not None:
        return stored
    return _infer_classes(pred_path, block_rows)


def _guess_field(path: str | os.PathLike[str], layer: str | None) -> str:
    import pyogrio

    try:
        info = pyogrio.read_info(path, layer=layer)
    except Exception as exc:
        raise InputVectorError(f"{path}: cannot read vector reference ({exc})") from exc
    fields = [str(f) for f in info["fields"]]
    for cand in ("class_id", "class", "label", "classe", "value"):
        for f in fields:
            if f.lower() == cand:
                return f
    raise InputVectorError(
        f"{path}: cannot tell which field holds the class; pass the field (--field) or a fixed class "
        f"(--burn-value) for footprints; fields are: {', '.join(fields)}"
    )
