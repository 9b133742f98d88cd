"""STAC Items as scenes: the assets holding the model's bands, stacked into one virtual scene.

:func:`stac_scene` reads an Item (a local ``.json``, an ``http(s)://`` or ``s3://`` URL) with
``pystac``, matches its assets to the model's band names and stacks them into a GDAL VRT
(:mod:`geopsp.io.vrt`) on the grid of the finest asset, over the area all of them cover.
Assets on coarser grids (Sentinel-2's 20 m bands beside its 10 m ones) are resampled by GDAL
while reading (:func:`geopsp.io.grid.resampling_for`: bilinear; nearest for 8-bit data with a
colour table), so nothing is read or copied up front.

A model band matches, case-insensitively and ignoring leading zeros in band numbers
(``B8`` = ``B08``), in this order: an asset's key, a band's ``name`` (``eo:bands`` in STAC
1.0, ``bands`` in 1.1), then a band's ``common_name`` (``red``, ``nir``, ...).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from geopsp.errors import InputRasterError
from geopsp.io.grid import has_colour_table, resampling_for
from geopsp.io.source import SceneSource, read_uri, resolve_scene
from geopsp.io.vrt import BandSource, vrt_document

__all__ = ["stac_scene"]

_RGB = {1: "red", 2: "green", 3: "blue"}


@dataclass(frozen=True, slots=True)
class _AssetBand:
    key: str
    href: str
    band: int  # 1-based, within the asset
    names: tuple[str, ...]  # what it may be called, most specific first


def _norm(name: str) -> str:
    """Fold a band name for matching: lower case, no leading zeros in the number (``B08`` -> ``b8``)."""
    return re.sub(r"(?<=[a-z])0+(?=\d)", "", name.strip().lower())


def stac_scene(uri: str, *, bands: Mapping[int, str] | None = None) -> SceneSource:
    """Resolve a STAC Item into a scene stacking the assets of the model's bands.

    Parameters
    ----------
    uri : str
        The Item: a local JSON file, an ``http(s)://`` or ``s3://`` URL.
    bands : mapping of int to str, optional
        The model's bands: scene band index (1-based) -> name. Default ``{1: "red", 2: "green",
        3: "blue"}`` (a natural-colour view).

    Returns
    -------
    SceneSource
        ``kind="stac"``, named after the item's id, opening a VRT document.

    Raises
    ------
    InputRasterError
        One line: the item cannot be read or is not a STAC Item; a band has no asset (naming it
        and listing the item's assets); the assets are in different CRSs or types, or share no area.
    """
    import pystac

    wanted = dict(bands) if bands else dict(_RGB)
    try:
        doc = json.loads(read_uri(uri, what="STAC item"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputRasterError(f"{uri}: is not JSON ({exc}); give a STAC Item (a .json file or URL)") from exc
    if not isinstance(doc, dict) or doc.get("type") != "Feature" or "assets" not in doc:
        what = doc.get("type", "no type") if isinstance(doc, dict) else type(doc).__name__
        raise InputRasterError(
            f"{uri}: is not a STAC Item ({what}); give one Item (an ItemCollection goes to geopsp batch)"
        )
    try:
        item = pystac.Item.from_dict(doc, preserve_dict=False)
    except Exception as exc:  # pystac raises several kinds for a malformed item
        raise InputRasterError(f"{uri}: is not a valid STAC Item ({exc})") from exc
    item.set_self_href(uri if "://" in uri else str(_abspath(uri)))
    catalogue = _asset_bands(item)
    chosen: dict[int, _AssetBand] = {}
    for index, name in sorted(wanted.items()):
        hit = _match(name, catalogue)
        if hit is None:
            listed = ", ".join(_describe_asset(k, catalogue) for k in dict.fromkeys(a.key for a in catalogue))
            raise InputRasterError(
                f"{uri}: item {item.id} has no asset for band {name!r} (model bands: {', '.join(wanted.values())}); "
                f"its raster assets: {listed or 'none'}"
            )
        chosen[index] = hit
    document = _stack(uri, item.id, chosen, wanted)
    return SceneSource(uri, document, "stac", item.id)


def _abspath(path: str) -> Any:
    from pathlib import Path

    return Path(path).resolve()


def _asset_bands(item: Any) -> list[_AssetBand]:
    """Every band of every raster asset, with the names it goes by."""
    out: list[_AssetBand] = []
    for key, asset in item.get_assets().items():
        media = (asset.media_type or "").lower()
        href = asset.get_absolute_href() or asset.href
        roles = asset.roles or []
        is_raster = "tiff" in media or "jp2" in media or href.lower().split("?")[0].endswith((".tif", ".tiff", ".jp2"))
        if not is_raster or any(r in roles for r in ("thumbnail", "overview", "metadata")):
            continue
        band_dicts = asset.extra_fields.get("eo:bands") or asset.extra_fields.get("bands") or []
        if not band_dicts:
            out.append(_AssetBand(key, href, 1, (key,)))
            continue
        for i, b in enumerate(band_dicts, start=1):
            names = [key] if len(band_dicts) == 1 else []
            names += [str(v) for v in (b.get("name"), b.get("common_name"), b.get("eo:common_name")) if v]
            out.append(_AssetBand(key, href, i, tuple(names)))
    return out


def _match(name: str, catalogue: list[_AssetBand]) -> _AssetBand | None:
    want = _norm(name)
    for rank in range(3):  # key (single-band assets), band name, common name
        for a in catalogue:
            if len(a.names) > rank and _norm(a.names[rank]) == want:
                return a
    for a in catalogue:  # any name, e.g. a multi-band asset's band named like the model's
        if any(_norm(n) == want for n in a.names):
            return a
    return None


def _describe_asset(key: str, catalogue: list[_AssetBand]) -> str:
    names = sorted({n for a in catalogue if a.key == key for n in a.names if n != key})
    return f"{key} ({'/'.join(names)})" if names else key


def _stack(uri: str, item_id: str, chosen: Mapping[int, _AssetBand], wanted: Mapping[int, str]) -> str:
    """Open the chosen assets' headers and stack them on the finest grid over their common area."""
    from affine import Affine

    from geopsp.io.scene import open_raster

    infos: dict[str, dict[str, Any]] = {}
    for a in chosen.values():
        if a.href in infos:
            continue
        source = resolve_scene(a.href)
        try:
            with open_raster(source, what=f"asset {a.key}") as src:  # remote: in gdal_env, one-line failures
                infos[a.href] = {
                    "gdal": source.gdal_path,
                    "crs": src.crs,
                    "transform": src.transform,
                    "width": src.width,
                    "height": src.height,
                    "dtype": src.dtypes[a.band - 1] if a.band <= src.count else None,
                    "count": src.count,
                    "nodata": src.nodata,
                    "colormap": has_colour_table(src),
                }
        except InputRasterError as exc:
            raise InputRasterError(f"{uri}: asset {a.key}: {exc}") from exc
        if a.band > infos[a.href]["count"]:
            raise InputRasterError(f"{uri}: asset {a.key} has {infos[a.href]['count']} band(s), not band {a.band}")
    crss = {str(i["crs"]) for i in infos.values()}
    if len(crss) > 1:
        raise InputRasterError(
            f"{uri}: the assets of the model's bands are in different CRSs ({', '.join(sorted(crss))}); "
            f"geopsp stacks assets of one CRS"
        )
    dtypes = {i["dtype"] for i in infos.values()}
    if len(dtypes) > 1:
        raise InputRasterError(
            f"{uri}: the assets of the model's bands have different data types ({', '.join(sorted(dtypes))}); "
            f"use a model trained on one type, or convert the assets"
        )
    finest = min(infos.values(), key=lambda i: abs(i["transform"].a))
    res_x, res_y = finest["transform"].a, finest["transform"].e
    left = max(i["transform"].c for i in infos.values())
    top = min(i["transform"].f for i in infos.values())
    right = min(i["transform"].c + i["width"] * i["transform"].a for i in infos.values())
    bottom = max(i["transform"].f + i["height"] * i["transform"].e for i in infos.values())
    # snap the common area to the finest asset's pixel grid
    ox, oy = finest["transform"].c, finest["transform"].f
    c0 = round((left - ox) / res_x)
    r0 = round((top - oy) / res_y)
    c1 = round((right - ox) / res_x)
    r1 = round((bottom - oy) / res_y)
    if c1 <= c0 or r1 <= r0:
        raise InputRasterError(f"{uri}: the assets of the model's bands do not overlap; check the item")
    transform = Affine(res_x, 0.0, ox + c0 * res_x, 0.0, res_y, oy + r0 * res_y)
    dtype = str(dtypes.pop())
    count = max(chosen)
    layers: list[BandSource | None] = [None] * count
    for index, a in chosen.items():
        i = infos[a.href]
        layers[index - 1] = BandSource(
            i["gdal"],
            a.band,
            i["width"],
            i["height"],
            i["transform"],
            nodata=i["nodata"],
            description=wanted[index],
        )
    coarsest = max(abs(i["transform"].a) for i in infos.values())
    categorical = any(i["colormap"] for i in infos.values())
    up = resampling_for(dtype, ratio=abs(res_x) / coarsest, categorical=categorical)  # coarser assets upsampled
    crs = finest["crs"]
    return vrt_document(
        layers,
        width=c1 - c0,
        height=r1 - r0,
        transform=transform,
        crs_wkt=crs.to_wkt() if crs is not None else None,
        dtype=dtype,
        resampling=up,
    )
