"""How class rasters describe their classes to GDAL, QGIS and geopsp.

- :func:`pam_xml`: a GDAL PAM document (``<raster>.aux.xml``) with category names and a
  thematic raster attribute table; GeoTIFF has no place for either, and every GDAL reader
  (QGIS included) loads the PAM sidecar.
- :data:`CLASSES_TAG`: the dataset tag holding the class table as JSON
  (:func:`read_class_table`); :data:`SCENE_TAG`: the name of the scene it was predicted from.

The probability raster's encoding (``round(p * 255)``, 0 for nodata) lives in
:mod:`geopsp.encoding`, shared with the mosaic.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import TYPE_CHECKING

from geopsp.classes import ClassTable

if TYPE_CHECKING:
    from geopsp.io.source import SceneSource

__all__ = ["CLASSES_TAG", "LEGACY_SCENE_TAG", "SCENE_TAG", "class_table_from_tags", "pam_xml", "read_class_table"]

CLASSES_TAG = "GEOPSP_CLASSES"
"""Dataset tag holding the class table as JSON."""

SCENE_TAG = "GEOPSP_SCENE"
"""Dataset tag holding the file name of the scene a class raster was predicted from."""

LEGACY_SCENE_TAG = "GEOPSP_SOURCE"
"""The name earlier geopsp versions wrote :data:`SCENE_TAG` under; still read."""


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


def read_class_table(path: str | os.PathLike[str] | SceneSource) -> ClassTable | None:
    """Return the class table stored in a class raster by geopsp, or None if it has none.

    The raster may be remote (``http(s)://``, ``s3://``, ``/vsi…/``; :func:`geopsp.io.scene.open_raster`).
    """
    from geopsp.io.scene import open_raster

    with open_raster(path, what="class raster") as src:
        return class_table_from_tags(src.tags())


def class_table_from_tags(tags: Mapping[str, str]) -> ClassTable | None:
    """Return the class table in a class raster's dataset tags (:data:`CLASSES_TAG`), or None.

    Examples
    --------
    >>> class_table_from_tags({CLASSES_TAG: '[{"id": 1, "name": "water"}]'}).names
    ['water']
    >>> class_table_from_tags({}) is None
    True
    """
    text = tags.get(CLASSES_TAG)
    if not text:
        return None
    return ClassTable.from_list(json.loads(text))
