"""SpaceNet-style building F1: one-to-one footprint matching at polygon IoU >= 0.5.

Predicted footprints are the connected regions of the building class in a class raster
(vectorized with :func:`rasterio.features.shapes`); reference footprints come from a vector
file (reprojected to the prediction's CRS) or from a raster. Candidate pairs are found with an
STRtree; pairs are matched greedily by IoU, highest first, each footprint at most once.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from geopsp.io.scene import open_raster, read_failure
from geopsp.io.source import SceneSource, resolve_scene

__all__ = ["BuildingScores", "building_scores", "evaluate_buildings", "match_footprints", "raster_footprints"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BuildingScores:
    """Footprint-level precision, recall and F1 (SpaceNet metric)."""

    true_positives: int
    false_positives: int
    false_negatives: int
    precision: float
    recall: float
    f1: float
    iou_threshold: float
    mean_matched_iou: float
    predicted: int
    reference: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN as None)."""
        out: dict[str, Any] = {}
        for k in self.__slots__:
            v = getattr(self, k)
            out[k] = None if isinstance(v, float) and math.isnan(v) else v
        return out


def match_footprints(
    predicted: Sequence[Any], reference: Sequence[Any], *, iou_threshold: float = 0.5
) -> list[tuple[int, int, float]]:
    """Match predicted to reference polygons one to one, greedily by IoU (highest first).

    Parameters
    ----------
    predicted, reference : sequences of shapely geometries
        Footprints in the same CRS.
    iou_threshold : float, default 0.5
        Smallest IoU of a match (inclusive, as SpaceNet).

    Returns
    -------
    list of (pred_index, ref_index, iou)
        The matches, in descending IoU.

    Examples
    --------
    >>> from shapely import box
    >>> match_footprints([box(0, 0, 10, 10)], [box(2, 0, 12, 10)])
    [(0, 0, 0.6666666666666666)]
    """
    import shapely

    pred = np.asarray(shapely.make_valid(np.asarray(list(predicted), dtype=object)), dtype=object)
    ref = np.asarray(shapely.make_valid(np.asarray(list(reference), dtype=object)), dtype=object)
    if pred.size == 0 or ref.size == 0:
        return []
    tree = shapely.STRtree(ref)
    pi, ri = tree.query(pred, predicate="intersects")
    if pi.size == 0:
        return []
    inter = shapely.area(shapely.intersection(pred[pi], ref[ri]))
    union = shapely.area(pred[pi]) + shapely.area(ref[ri]) - inter
    iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    keep = iou >= iou_threshold
    order = np.lexsort((ri[keep], pi[keep], -iou[keep]))
    cand = list(zip(pi[keep][order].tolist(), ri[keep][order].tolist(), iou[keep][order].tolist(), strict=True))
    used_p: set[int] = set()
    used_r: set[int] = set()
    out = []
    for p, r, v in cand:
        if p in used_p or r in used_r:
            continue
        used_p.add(p)
        used_r.add(r)
        out.append((int(p), int(r), float(v)))
    return out


def building_scores(
    predicted: Sequence[Any], reference: Sequence[Any], *, iou_threshold: float = 0.5
) -> BuildingScores:
    """Precision, recall and F1 of footprint matching (see :func:`match_footprints`).

    With no footprint on either side, precision, recall and F1 are NaN (nothing to score).
    """
    matches = match_footprints(predicted, reference, iou_threshold=iou_threshold)
    tp = len(matches)
    n_pred, n_ref = len(predicted), len(reference)
    fp, fn = n_pred - tp, n_ref - tp
    precision = tp / n_pred if n_pred else math.nan
    recall = tp / n_ref if n_ref else math.nan
    if n_pred == 0 and n_ref == 0:
        f1 = math.nan
    else:
        f1 = 2 * tp / (n_pred + n_ref)
    mean_iou = float(np.mean([m[2] for m in matches])) if matches else math.nan
    return BuildingScores(tp, fp, fn, precision, recall, f1, iou_threshold, mean_iou, n_pred, n_ref)


def raster_footprints(
    path: str | os.PathLike[str] | SceneSource,
    values: Sequence[int],
    *,
    min_area_px: float = 0.0,
    connectivity: int = 8,
) -> tuple[list[Any], Any]:
    """Polygons of the connected regions whose value is in ``values``.

    ``path`` may be remote (``http(s)://``, ``s3://``, ``/vsi…/``; :func:`geopsp.io.scene.open_raster`).

    Returns
    -------
    (polygons, crs)
        Shapely polygons in the raster's CRS (pixel coordinates without one).
    """
    import shapely
    from rasterio.errors import RasterioError
    from rasterio.features import shapes

    with open_raster(path) as src:
        try:
            band = src.read(1)
        except RasterioError as exc:
            raise read_failure(path, exc, rows=(0, src.height - 1)) from exc
        transform, crs = src.transform, src.crs
        px_area = abs(transform.a * transform.e - transform.b * transform.d)
    mask: NDArray[np.bool_] = np.isin(band, np.asarray(list(values)))
    polys = []
    for geom, _ in shapes(mask.astype(np.uint8), mask=mask, transform=transform, connectivity=connectivity):
        poly = shapely.geometry.shape(geom)
        if poly.area >= min_area_px * px_area:
            polys.append(poly)
    return polys, crs


def evaluate_buildings(
    prediction: str | os.PathLike[str],
    reference: str | os.PathLike[str],
    *,
    building_values: Sequence[int] = (1,),
    reference_values: Sequence[int] | None = None,
    iou_threshold: float = 0.5,
    min_area_px: float = 0.0,
    layer: str | None = None,
) -> BuildingScores:
    """SpaceNet F1 of a class raster's building footprints against reference footprints.

    Parameters
    ----------
    prediction : path or URL
        Class raster, local or remote; regions with a value in ``building_values`` are footprints.
    reference : path or URL
        Vector footprints (every polygon is a building), or a raster, local or remote
        (``reference_values``, default ``building_values``).
    building_values : sequence of int, default (1,)
        Class ids of the building class in the prediction.
    iou_threshold : float, default 0.5
        Match threshold.
    min_area_px : float, default 0
        Drop predicted and reference footprints smaller than this many pixels (SpaceNet drops
        tiny ones).
    layer : str, optional
        Vector layer.

    Returns
    -------
    BuildingScores
    """
    import shapely

    from geopsp.eval.raster import is_vector_path
    from geopsp.labels import read_vector

    pred_polys, crs = raster_footprints(prediction, building_values, min_area_px=min_area_px)
    if is_vector_path(reference):
        gdf = read_vector(reference, layer=layer)
        gdf = gdf[gdf.geometry.notna() & ~gdf.geometry.is_empty]
        if crs is not None and gdf.crs is not None and gdf.crs != crs:
            gdf = gdf.to_crs(crs)
        ref_polys = [g for g in shapely.make_valid(np.asarray(gdf.geometry.values, dtype=object)) if g.area > 0]
        if min_area_px > 0 and ref_polys:
            with open_raster(prediction, what="prediction") as src:
                t = src.transform
            px_area = abs(t.a * t.e - t.b * t.d)
            ref_polys = [g for g in ref_polys if g.area >= min_area_px * px_area]
    else:
        ref_polys, _ = raster_footprints(
            resolve_scene(reference), reference_values or building_values, min_area_px=min_area_px
        )
    logger.info("%d predicted and %d reference footprints", len(pred_polys), len(ref_polys))
    return building_scores(pred_polys, ref_polys, iou_threshold=iou_threshold)
