"""Class rasters (outputs): streamed, atomic, Cloud-Optimized GeoTIFFs that open styled in QGIS.

:class:`ClassRasterWriter` takes full-width row strips in any order and keeps memory
independent of the scene's height: rows are compressed into a tiled staging GeoTIFF as they
come, and reduced to the overview levels as well when they come in order (MODE, so every
overview pixel is a class id; :mod:`geopsp.io.cog_stage`). :meth:`close` copies the compressed
tiles into the COG next to the final path, decoding nothing, and commits its files together,
the class raster last (:class:`~geopsp.io.atomic.StagedOutputs`; or stages them in the
caller's set of outputs).

Each class raster carries:

- the input's CRS and transform (none when the input was not georeferenced) and nodata;
- an embedded colour table (class colours, nodata transparent);
- class names for GDAL and QGIS: GDAL has no place for category names or a raster attribute
  table (RAT) inside a GeoTIFF, so they live in the standard PAM sidecar
  ``<name>.tif.aux.xml`` (``<CategoryNames>`` and a thematic ``<GDALRasterAttributeTable>``
  with Value, Class, Red, Green, Blue, Alpha), which every GDAL reader, QGIS included, loads;
- the class table as JSON in the ``GEOPSP_CLASSES`` dataset tag (:func:`read_class_table`);
- a QGIS style ``<name>.qml`` (paletted renderer; QGIS loads it as the default style).

The optional QA rasters (the probability raster, i.e. the winning class's probability, the
margin, the entropy, the disagreement) store values in 0..1 as uint8 (see
:mod:`geopsp.encoding`); their band scale is ``1/255``, so GDAL and QGIS show the values, and
each has a ``.qml`` colour ramp (:func:`geopsp.style.qa.qa_qml`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from geopsp.classes import ClassTable
from geopsp.encoding import PROBABILITY_NODATA, PROBABILITY_SCALE, encode_probability
from geopsp.io.class_metadata import CLASSES_TAG, pam_xml, read_class_table
from geopsp.io.class_writer import ClassRasterWriter
from geopsp.io.scene import SceneInfo, inspect_scene, open_scene, read_rows

if TYPE_CHECKING:
    import affine

__all__ = [
    "CLASSES_TAG",
    "PROBABILITY_NODATA",
    "PROBABILITY_SCALE",
    "ClassRasterWriter",
    "SceneInfo",
    "encode_probability",
    "inspect_scene",
    "open_scene",
    "pam_xml",
    "read_class_table",
    "read_rows",
    "write_class_raster",
]


def write_class_raster(
    path: str | os.PathLike[str],
    array: NDArray[np.integer[Any]],
    *,
    crs: Any,
    transform: affine.Affine | None,
    classes: ClassTable,
    nodata: int,
    dtype: str | None = None,
    probability: NDArray[Any] | None = None,
    probability_path: str | os.PathLike[str] | None = None,
    **options: Any,
) -> Path:
    """Write an in-memory class array as a styled COG (for small rasters and tests).

    Parameters
    ----------
    path : str or os.PathLike
        Output path.
    array : ndarray of int
        ``(height, width)`` class ids (or ``nodata``).
    crs, transform, classes, nodata
        As for :class:`ClassRasterWriter`.
    dtype : {"uint8", "uint16"}, optional
        Default: uint8 when the class ids and nodata fit, else uint16.
    probability : ndarray, optional
        ``(height, width)`` probabilities (float 0..1 or encoded uint8); needs ``probability_path``.
    probability_path : str or os.PathLike, optional
        Where to write them.
    **options
        Other :class:`ClassRasterWriter` keywords (``compress``, ``overwrite``, ``inputs``,
        ``blocksize``, ``tags``).

    Returns
    -------
    Path
        The class raster.
    """
    arr = np.asarray(array)
    if arr.ndim != 2:
        raise ValueError(f"array must be 2-D (height, width), got shape {arr.shape}")
    if dtype is None:
        dtype = "uint8" if max(classes.max_id, nodata) <= 255 else "uint16"
    with ClassRasterWriter(
        path,
        width=arr.shape[1],
        height=arr.shape[0],
        crs=crs,
        transform=transform,
        classes=classes,
        nodata=nodata,
        dtype=dtype,
        probability_path=probability_path,
        **options,
    ) as writer:
        step = writer.blocksize
        for row in range(0, arr.shape[0], step):
            prob = None if probability is None else probability[row : row + step]
            writer.write_rows(row, arr[row : row + step], prob)
    return writer.path
