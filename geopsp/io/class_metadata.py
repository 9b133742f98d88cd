"""How class rasters describe their classes and probabilities to GDAL, QGIS and geopsp.

- :func:`pam_xml`: a GDAL PAM document (``<raster>.aux.xml``) with category names and a
  thematic raster attribute table; GeoTIFF has no place for either, and every GDAL reader
  (QGIS included) loads the PAM sidecar.
- :data:`CLASSES_TAG`: the dataset tag holding the class table as JSON
  (:func:`read_class_table`); :data:`SCENE_TAG`: the name of the scene it was predicted from.
- :func:`probability_to_uint8`: the probability raster's encoding, ``round(p * 255)`` (at
  least 1) and 0 for nodata. The winning probability of ``K`` classes is at least ``1/K``, so
  0 is free for nodata and 1.0 keeps full resolution.
"""

from __future__ import annotations

import json
import os
import warnings
import xml.etree.ElementTree as ET
from typing import Any

import numpy as np
from numpy.typing import NDArray

from geopsp.classes import ClassTable

__all__ = [
    "CLASSES_TAG",
    "LEGACY_SCENE_TAG",
    "PROBABILITY_NODATA",
    "PROBABILITY_SCALE",
    "SCENE_TAG",
    "pam_xml",
    "probability_to_uint8",
    "read_class_table",
]

PROBABILITY_SCALE = 255
"""A probability ``p`` is stored as ``max(round(p * PROBABILITY_SCALE), 1)``."""

PROBABILITY_NODATA = 0
"""Stored where there is no probability (the class raster is nodata there)."""

CLASSES_TAG = "GEOPSP_CLASSES"
"""Dataset tag holding the class table as JSON."""

SCENE_TAG = "GEOPSP_SCENE"
"""Dataset tag holding the file name of the scene a class raster was predicted from."""

LEGACY_SCENE_TAG = "GEOPSP_SOURCE"
"""The name earlier geopsp versions wrote :data:`SCENE_TAG` under; still read."""


def probability_to_uint8(prob: NDArray[np.floating[Any]], valid: NDArray[np.bool_] | None = None) -> NDArray[np.uint8]:
    """Scale probabilities in 0..1 to the probability raster's uint8 encoding.

    Parameters
    ----------
    prob : ndarray of float
        Probabilities, any shape; values are clipped to 0..1.
    valid : ndarray of bool, optional
        Same shape; False marks nodata.

    Returns
    -------
    ndarray of uint8
        ``round(p * 255)`` but at least 1; 0 where ``valid`` is False or ``p`` is NaN.

    Examples
    --------
    >>> probability_to_uint8(np.array([0.0, 0.5, 1.0, np.nan])).tolist()
    [1, 128, 255, 0]
    """
    p = np.asarray(prob, dtype=np.float32)
    bad = np.isnan(p)
    scaled = np.rint(np.clip(np.nan_to_num(p, nan=0.0), 0.0, 1.0) * PROBABILITY_SCALE)
    out = np.maximum(scaled, 1).astype(np.uint8)
    out[bad] = PROBABILITY_NODATA
    if valid is not None:
        out[~np.asarray(valid, dtype=np.bool_)] = PROBABILITY_NODATA
    return out


def pam_xml(classes: ClassTable, *, nodata: int | None) -> str:
    """Return a GDAL PAM document (``.aux.xml``) with category names and a thematic RAT for band 1.

    ``<CategoryNames>`` lists one name per value from 0 to the largest class id (empty for
    values that are no class); the RAT has one row per class with its value, name and colour.

    Examples
    --------
    >>> from geopsp.classes import ClassTable
    >>> xml = pam_xml(ClassTable.from_names(["forest", "water"], start=1), nodata=0)
    >>> "<Category>forest</Category>" in xml and "<F>water</F>" in xml
    True
    """
    root = ET.Element("PAMDataset")
    band = ET.SubElement(root, "PAMRasterBand", {"band": "1"})
    names = ET.SubElement(band, "CategoryNames")
    by_id = {c.id: c.name for c in classes}
    for value in range(classes.max_id + 1):
        ET.SubElement(names, "Category").text = by_id.get(value, "")
    rat = ET.SubElement(band, "GDALRasterAttributeTable", {"tableType": "thematic"})
    # GDALRATFieldType: 0 integer, 2 string; GDALRATFieldUsage: 5 MinMax (the value), 2 Name, 6-9 RGBA.
    columns = (("Value", 0, 5), ("Class", 2, 2), ("Red", 0, 6), ("Green", 0, 7), ("Blue", 0, 8), ("Alpha", 0, 9))
    for i, (name, ftype, usage) in enumerate(columns):
        field = ET.SubElement(rat, "FieldDefn", {"index": str(i)})
        ET.SubElement(field, "Name").text = name
        ET.SubElement(field, "Type").text = str(ftype)
        ET.SubElement(field, "Usage").text = str(usage)
    for row, c in enumerate(sorted(classes, key=lambda c: c.id)):
        r = ET.SubElement(rat, "Row", {"index": str(row)})
        for cell in (c.id, c.name, *c.color, 255):
            ET.SubElement(r, "F").text = str(cell)
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="unicode") + "\n"


def read_class_table(path: str | os.PathLike[str]) -> ClassTable | None:
    """Return the class table stored in a class raster by geopsp, or None if it has none."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning as RioNotGeoreferenced

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RioNotGeoreferenced)
        with rasterio.open(path) as src:
            text = src.tags().get(CLASSES_TAG)
    if not text:
        return None
    return ClassTable.from_list(json.loads(text))
