"""Read windows of a training scene: raw image, channel-index labels, validity.

Whole scenes are kept in a byte-bounded LRU cache shared by the readers (:class:`SceneCache`);
DeepGlobe colour masks are decoded by :func:`decode_color_mask`.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from geopsp.config.schema import ColorLabel, DataConfig
from geopsp.errors import ConfigError, InputRasterError, NotGeoreferencedWarning
from geopsp.io.scene import SceneInfo, inspect_scene, open_scene, read_rows
from geopsp.labels import UNLABELED, LabelMapping, VectorLabels, window_transform
from geopsp.train.layouts import DEEPGLOBE_COLORS, Scene

__all__ = ["SceneCache", "SceneReader", "decode_color_mask"]


def decode_color_mask(
    rgb: NDArray[Any], color_map: Sequence[ColorLabel], *, unknown: set[str] | None = None
) -> NDArray[np.uint16]:
    """Decode a colour-coded mask (DeepGlobe) into label values.

    Each channel is thresholded at 128 (JPEG/PNG resampling blurs the pure colours), giving one
    of 8 colours; each maps to its ``value``, or to 65535 (unlabeled) when its value is null or
    it is not listed.

    Parameters
    ----------
    rgb : ndarray, shape (3, H, W) or (H, W, 3)
        The mask.
    color_map : sequence of ColorLabel
        Colour -> label value.
    unknown : set of str, optional
        Receives ``"r,g,b"`` of colours present but not listed.

    Returns
    -------
    ndarray of uint16, shape (H, W)

    Examples
    --------
    >>> m = np.array([[[0, 255, 250], [10, 0, 3]]], dtype="uint8")  # (1, 2, 3): H=1, W=2, RGB last
    >>> decode_color_mask(m, DEEPGLOBE_COLORS).tolist()
    [[0, 65535]]
    """
    arr = np.asarray(rgb)
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim != 3 or arr.shape[-1] < 3:
        raise InputRasterError(f"a colour mask needs 3 channels, got shape {arr.shape}")
    bits = (arr[..., 0] >= 128).astype(np.uint8) * 4 + (arr[..., 1] >= 128) * 2 + (arr[..., 2] >= 128)
    lut = np.full(8, UNLABELED, dtype=np.uint16)
    listed = np.zeros(8, dtype=bool)
    for c in color_map:
        code = (c.color[0] >= 128) * 4 + (c.color[1] >= 128) * 2 + (c.color[2] >= 128)
        listed[code] = True
        if c.value is not None:
            lut[code] = c.value
    if unknown is not None:
        present = np.bincount(bits.ravel(), minlength=8) > 0
        for code in np.flatnonzero(present & ~listed).tolist():
            unknown.add(f"{255 * (code >> 2 & 1)},{255 * (code >> 1 & 1)},{255 * (code & 1)}")
    out: NDArray[np.uint16] = lut[bits]
    return out


class SceneCache:
    """Least-recently-used store of whole scenes, bounded in bytes."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self.used = 0
        self.items: OrderedDict[tuple[int, str], tuple[Any, int]] = OrderedDict()

    def get(self, key: tuple[int, str]) -> Any:
        """Return the cached value of ``key`` (marking it recently used), or None."""
        item = self.items.get(key)
        if item is None:
            return None
        self.items.move_to_end(key)
        return item[0]

    def put(self, key: tuple[int, str], value: Any, nbytes: int) -> None:
        """Store ``value`` of ``nbytes``, evicting the least recently used; a value over the budget is not kept."""
        if nbytes > self.budget:
            return
        while self.items and self.used + nbytes > self.budget:
            _, (_, size) = self.items.popitem(last=False)
            self.used -= size
        self.items[key] = (value, nbytes)
        self.used += nbytes


@dataclass
class SceneReader:
    """Reads windows of one scene as (raw image, channel-index labels, valid mask).

    Whole scenes are held in a shared LRU cache when they fit its budget; otherwise windows are
    read from disk (GeoTIFF) or the file is decoded each time (JPEG/PNG).
    """

    index: int
    scene: Scene
    bands: tuple[int, ...] | None
    mapping: LabelMapping
    data: DataConfig
    cache: SceneCache
    height: int = 0
    width: int = 0
    count: int = 0
    dtype: str = "uint8"
    crs: Any = None
    transform: Any = None
    nodata: float | None = None
    descriptions: tuple[str | None, ...] = ()
    unknown: set[str] = field(default_factory=set)
    _vector: VectorLabels | None = None
    _info: SceneInfo | None = None

    def __post_init__(self) -> None:
        with warnings.catch_warnings():
            # training needs no CRS (DeepGlobe JPEGs have none; vector labels say so themselves)
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            info = inspect_scene(self.scene.image)
        self._info = info
        self.width, self.height, self.count = info.width, info.height, info.count
        self.dtype = info.dtype
        self.crs, self.transform, self.nodata = info.crs, info.transform, info.nodata
        self.descriptions = info.band_descriptions
        if self.scene.kind == "deepglobe" and not any(self.descriptions):
            self.descriptions = ("red", "green", "blue")[: self.count]
        # the alpha band is validity, never data (as at prediction)
        bands = self.bands or info.data_bands
        if max(bands) > self.count or min(bands) < 1:
            raise ConfigError(
                f"{self.scene.image.name} has {self.count} bands but train.data.bands asks for {list(bands)}",
                key="train.data.bands",
            )
        if info.alpha_band in bands:
            raise ConfigError(
                f"{self.scene.image.name}: band {info.alpha_band} is the alpha (transparency) band, which "
                f"marks valid pixels and is not data; drop it from train.data.bands",
                key="train.data.bands",
            )
        self.bands = bands

    @property
    def nbytes(self) -> int:
        """Bytes of the cached scene (image as float32 plus labels)."""
        return self.height * self.width * (4 * len(self.bands or ()) + 2)

    @property
    def pixel_size(self) -> float | None:
        """Pixel width in CRS units (None without a geotransform)."""
        if self.transform is None or self.crs is None:
            return None
        return float(abs(self.transform.a))

    @property
    def grid(self) -> tuple[Any, ...] | None:
        """Key equal for scenes on the same pixel grid (size, CRS, geotransform); None without georeferencing."""
        if self.transform is None or self.crs is None:
            return None
        return (self.height, self.width, str(self.crs), tuple(self.transform)[:6])

    # -- whole-scene loaders ------------------------------------------------------------
    def _load_image(self, window: tuple[int, int, int, int] | None) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        # the pixels and their validity exactly as prediction reads them (nodata per band,
        # alpha, GDAL masks, NaN/inf): one definition of a valid pixel
        info = self._info
        assert info is not None and self.bands is not None
        r, c, h, w = window if window is not None else (0, 0, self.height, self.width)
        with open_scene(info, threads=1) as (src, _):
            data, valid = read_rows(src, info, r, h, self.bands, col_off=c, width=w)
        return data.astype(np.float32, copy=False), valid

    def _load_labels(self, window: tuple[int, int, int, int] | None) -> NDArray[Any]:
        kind = self.scene.kind
        if kind == "deepglobe":
            from PIL import Image

            with Image.open(self.scene.labels) as im:
                rgb = np.asarray(im.convert("RGB"))
            values = decode_color_mask(rgb, self.data.color_map or DEEPGLOBE_COLORS, unknown=self.unknown)
            if window is not None:
                r, c, h, w = window
                values = values[r : r + h, c : c + w]
            return self.mapping.encode(values, nodata=UNLABELED, unknown=self.unknown)
        if kind == "vector":
            if self._vector is None:
                burn = self.data.burn_class
                if burn is None and self.data.class_field is None and self.data.layout == "spacenet":
                    burn = 1
                self._vector = VectorLabels(
                    self.scene.labels,
                    crs=self.crs,
                    field=self.data.class_field,
                    value_map=self.data.value_map,
                    burn_value=burn,
                    layer=self.data.layer,
                )
            r, c, h, w = window if window is not None else (0, 0, self.height, self.width)
            bg = self.data.background_class
            if bg is None and self.data.layout == "spacenet":
                bg = 0
            values = self._vector.rasterize(
                window_transform(self.transform, r, c),
                w,
                h,
                fill=UNLABELED if bg is None else bg,
                all_touched=self.data.all_touched,
            )
            return self.mapping.encode(values, nodata=UNLABELED, unknown=self.unknown)
        return self._read_label_raster(window)

    def _read_label_raster(self, window: tuple[int, int, int, int] | None) -> NDArray[Any]:
        import rasterio
        from rasterio.windows import Window

        from geopsp.labels import label_raster_on_grid

        win = None if window is None else Window(window[1], window[0], window[3], window[2])
        try:
            with (
                rasterio.open(self.scene.labels) as src,
                label_raster_on_grid(src, self, onto=str(self.scene.image)) as on,
            ):
                values, nodata = on.read(1, window=win), on.nodata
        except rasterio.errors.RasterioIOError as exc:
            raise InputRasterError(f"{self.scene.labels}: cannot read label raster ({exc})") from exc
        return self.mapping.encode(values, nodata=nodata, unknown=self.unknown)

    # -- public -----------------------------------------------------------------------
    def _full(self) -> tuple[NDArray[np.float32], NDArray[Any]] | None:
        key = (self.index, "scene")
        hit = self.cache.get(key)
        if hit is not None:
            return hit  # type: ignore[no-any-return]
        if self.nbytes > self.cache.budget:
            return None
        image, valid = self._load_image(None)
        labels = self._load_labels(None)
        labels[~valid] = self.mapping.ignore_index
        image[:, ~valid] = np.nan
        self.cache.put(key, (image, labels), self.nbytes)
        return image, labels

    def labels(self) -> NDArray[Any]:
        """All labels of the scene as channel indices (``ignore_index`` where unlabeled or nodata)."""
        full = self._full()
        if full is not None:
            return full[1]
        labels = self._load_labels(None)
        # The scene does not fit the cache: find its nodata in blocks of rows.
        block = max(1, (64 * 1024 * 1024) // max(1, 4 * len(self.bands or ()) * self.width))
        for r0 in range(0, self.height, block):
            h = min(block, self.height - r0)
            _, valid = self._load_image((r0, 0, h, self.width))
            labels[r0 : r0 + h][~valid] = self.mapping.ignore_index
        return labels

    def read(self, row: int, col: int, height: int, width: int) -> tuple[NDArray[np.float32], NDArray[Any]]:
        """Read a window, padding beyond the scene.

        Returns
        -------
        image : ndarray of float32, shape (bands, height, width)
            Raw values; NaN where the scene has no data (nodata or padding).
        labels : ndarray, shape (height, width)
            Channel indices; ``ignore_index`` where unlabeled, nodata or padding.
        """
        assert self.bands is not None
        r0, c0 = max(row, 0), max(col, 0)
        r1, c1 = min(row + height, self.height), min(col + width, self.width)
        full = self._full()
        if full is not None:
            img = full[0][:, r0:r1, c0:c1]
            lab = full[1][r0:r1, c0:c1]
        else:
            win = (r0, c0, r1 - r0, c1 - c0)
            img, valid = self._load_image(win)
            lab = self._load_labels(win)
            lab[~valid] = self.mapping.ignore_index
            img[:, ~valid] = np.nan
        if (r0, c0, r1, c1) == (row, col, row + height, col + width):
            return np.array(img, dtype=np.float32, copy=True), np.array(lab, copy=True)
        image = np.full((len(self.bands), height, width), np.nan, dtype=np.float32)
        labels = np.full((height, width), self.mapping.ignore_index, dtype=lab.dtype)
        image[:, r0 - row : r1 - row, c0 - col : c1 - col] = img
        labels[r0 - row : r1 - row, c0 - col : c1 - col] = lab
        return image, labels
