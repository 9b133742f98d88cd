"""Overview levels computed while rows stream in: GDAL's MODE and AVERAGE, pixel for pixel."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import rasterio.shutil

from geopsp.io.overviews import OverviewPyramid, average_reduce, mode_reduce, overview_sizes, reducer
from geopsp.testing import random_class_map

# the GeoTIFFs given to GDAL here have no georeferencing, on purpose
pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")

SIZES = [(64, 64), (63, 65), (101, 77), (7, 300), (3, 90), (1, 70), (70, 9), (2, 2), (1, 1)]


def classes_with_holes(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A blobby class map, salted with noise (ties), speckled with nodata and one nodata block."""
    rng = np.random.default_rng(seed)
    arr = random_class_map(height, width, n_classes=5, seed=seed, blob_scale=3.0)
    noise = rng.random((height, width)) < 0.2
    arr[noise] = rng.integers(0, 5, int(noise.sum()))
    arr[rng.random((height, width)) < 0.05] = 255
    arr[: height // 3, : width // 4] = 255
    return arr


def probabilities(height: int, width: int, seed: int = 0, holes: bool = True) -> np.ndarray:
    rng = np.random.default_rng(seed)
    arr = rng.integers(1, 256, (height, width)).astype(np.uint8)
    if holes:
        arr[rng.random((height, width)) < 0.1] = 0
        arr[: height // 3, : width // 4] = 0
    return arr


def window(n: int, i: int) -> range:
    """The source pixels output ``i`` reads along an axis of ``n`` (the rule, spelled out)."""
    if n == 1:
        return range(1)
    return range(2 * i, 2 * i + (3 if n % 2 else 2))


def mode_by_hand(a: np.ndarray, nodata: int) -> np.ndarray:
    """One level of MODE, window by window: the first value to reach the top count wins."""
    h, w = max(1, a.shape[0] // 2), max(1, a.shape[1] // 2)
    out = np.full((h, w), nodata, a.dtype)
    for i in range(h):
        for j in range(w):
            seen: dict[int, int] = {}
            best, top = nodata, 0
            for y in window(a.shape[0], i):
                for x in window(a.shape[1], j):
                    v = int(a[y, x])
                    if v == nodata:
                        continue
                    seen[v] = seen.get(v, 0) + 1
                    if seen[v] > top:
                        best, top = v, seen[v]
            out[i, j] = best
    return out


def pyramid_levels(a: np.ndarray, nodata: int, resampling: str, blocksize: int, chunks: list[int]) -> list[np.ndarray]:
    sizes = overview_sizes(a.shape[1], a.shape[0], blocksize)
    got: dict[int, list[tuple[int, np.ndarray]]] = {k + 1: [] for k in range(len(sizes))}
    pyramid = OverviewPyramid(
        a.shape[1],
        a.shape[0],
        sizes,
        reduce=reducer(resampling),
        nodata=nodata,
        sink=lambda level, row, rows: got[level].append((row, rows.copy())),
    )
    row, i = 0, 0
    while row < a.shape[0]:
        n = chunks[i % len(chunks)]
        pyramid.push(a[row : row + n])
        row, i = row + n, i + 1
    assert pyramid.complete
    levels = []
    for k in got:
        offsets = [r for r, _ in got[k]]
        assert offsets == sorted(offsets) and offsets[0] == 0  # each level's rows in order
        levels.append(np.concatenate([rows for _, rows in got[k]]))
    return levels


def gdal_levels(tmp_path, a: np.ndarray, nodata: int, resampling: str, blocksize: int) -> list[np.ndarray]:
    """The overviews GDAL's COG driver makes of ``a``."""
    src, cog = tmp_path / "src.tif", tmp_path / "cog.tif"
    profile = {"driver": "GTiff", "width": a.shape[1], "height": a.shape[0], "count": 1, "dtype": a.dtype.name}
    with rasterio.open(src, "w", nodata=nodata, **profile) as dst:
        dst.write(a, 1)
    rasterio.shutil.copy(src, cog, driver="COG", BLOCKSIZE=blocksize, OVERVIEW_RESAMPLING=resampling)
    with rasterio.open(cog) as ds:
        n = len(ds.overviews(1))
    out = []
    for k in range(n):
        with rasterio.open(cog, overview_level=k) as ds:
            out.append(ds.read(1))
    return out


def test_overview_sizes_are_the_cog_drivers(tmp_path):
    for height, width in [(1001, 1537), (7, 5000), (600, 600), (513, 3000), (1024, 1024)]:
        a = np.zeros((height, width), np.uint8)
        levels = gdal_levels(tmp_path, a, 255, "NEAREST", 256)
        assert [(lv.shape[1], lv.shape[0]) for lv in levels] == overview_sizes(width, height, 256)


@pytest.mark.parametrize(("height", "width"), [(1001, 1537), (999, 1003), (1024, 2048), (2048, 2047), (7, 5000)])
def test_mode_equals_gdal(tmp_path, height, width):
    a = classes_with_holes(height, width)
    ours = pyramid_levels(a, 255, "MODE", 256, [512])
    theirs = gdal_levels(tmp_path, a, 255, "MODE", 256)
    assert len(ours) == len(theirs)
    for mine, gdal in zip(ours, theirs, strict=True):
        assert np.array_equal(mine, gdal)


@pytest.mark.parametrize(
    ("height", "width", "holes"), [(1001, 1537, True), (2048, 2047, True), (7, 5000, True), (1001, 999, False)]
)
def test_average_equals_gdal(tmp_path, height, width, holes):
    a = probabilities(height, width, holes=holes)
    ours = pyramid_levels(a, 0, "AVERAGE", 256, [300])
    theirs = gdal_levels(tmp_path, a, 0, "AVERAGE", 256)
    assert len(ours) == len(theirs)
    for mine, gdal in zip(ours, theirs, strict=True):
        assert np.array_equal(mine, gdal)


@pytest.mark.parametrize(("height", "width"), SIZES)
def test_mode_is_the_rule_window_by_window(height, width):
    a = classes_with_holes(height, width, seed=height + width)
    assert np.array_equal(mode_reduce(a, 0, height, 255), mode_by_hand(a, 255))


@pytest.mark.parametrize(("height", "width"), SIZES)
def test_mode_never_invents_a_class(height, width):
    a = classes_with_holes(height, width, seed=3)
    out = mode_reduce(a, 0, height, 255)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            values = {int(a[y, x]) for y in window(height, i) for x in window(width, j)}
            assert int(out[i, j]) in values


def test_mode_ties_go_to_the_value_reaching_the_count_first():
    a = np.array([[1, 2, 2, 1], [2, 1, 1, 2]], np.uint8)  # 1 2 / 2 1: 2 reaches two at pixel 2
    assert mode_reduce(a, 0, 2, 255).tolist() == [[2, 1]]
    b = np.array([[3, 4], [5, 6]], np.uint8)  # all different: the first pixel
    assert mode_reduce(b, 0, 2, 255).tolist() == [[3]]
    c = np.array([[255, 255], [255, 7]], np.uint8)  # nodata does not count
    assert mode_reduce(c, 0, 2, 255).tolist() == [[7]]
    d = np.full((2, 2), 255, np.uint8)
    assert mode_reduce(d, 0, 2, 255).tolist() == [[255]]


def test_average_rounds_half_up_and_skips_nodata():
    a = np.array([[1, 2, 0, 0], [0, 0, 0, 0]], np.uint8)
    assert average_reduce(a, 0, 2, 0).tolist() == [[2, 0]]  # 1.5 -> 2; nodata only -> nodata
    b = np.array([[254, 254], [255, 255]], np.uint16)
    assert average_reduce(b, 0, 2, 255).tolist() == [[254]]


@pytest.mark.parametrize("chunks", [[1], [3, 5, 2], [512], [10_000]])
def test_streaming_does_not_change_the_levels(chunks):
    a = classes_with_holes(301, 257, seed=1)
    whole = pyramid_levels(a, 255, "MODE", 32, [10_000])
    assert all(np.array_equal(x, y) for x, y in zip(whole, pyramid_levels(a, 255, "MODE", 32, chunks), strict=True))
    p = probabilities(301, 257)
    whole = pyramid_levels(p, 0, "AVERAGE", 32, [10_000])
    assert all(np.array_equal(x, y) for x, y in zip(whole, pyramid_levels(p, 0, "AVERAGE", 32, chunks), strict=True))


def test_uint16_classes():
    a = (classes_with_holes(64, 64).astype(np.uint16) * 1000).astype(np.uint16)
    a[a == 255 * 1000] = 65535
    assert np.array_equal(mode_reduce(a, 0, 64, 65535), mode_by_hand(a, 65535))


def test_pyramid_checks_its_input():
    sink = lambda *_: None  # noqa: E731
    with pytest.raises(ValueError, match="halving"):
        OverviewPyramid(100, 100, [(60, 50)], reduce=mode_reduce, nodata=255, sink=sink)
    pyramid = OverviewPyramid(100, 100, [(50, 50)], reduce=mode_reduce, nodata=255, sink=sink)
    with pytest.raises(ValueError, match="shape"):
        pyramid.push(np.zeros((3, 99), np.uint8))
    pyramid.push(np.zeros((100, 100), np.uint8))
    with pytest.raises(ValueError, match="past its end"):
        pyramid.push(np.zeros((1, 100), np.uint8))
    with pytest.raises(ValueError, match="MODE, AVERAGE"):
        reducer("CUBIC")  # type: ignore[arg-type]
