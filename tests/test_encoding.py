"""geopsp.encoding: the probability raster's one encoding, shared by the mosaic and the writer."""

from __future__ import annotations

import numpy as np
import rasterio
import torch
from affine import Affine

from geopsp.classes import ClassTable
from geopsp.encoding import PROBABILITY_NODATA, encode_probability
from geopsp.inference.mosaic import Mosaicker
from geopsp.io.raster import ClassRasterWriter
from geopsp.tiling import TileGrid

P = [0.0, 0.001, 0.5, 0.6, 1.0, 1.5, -0.2, np.nan, np.inf, -np.inf, 0.9]
INVALID = [False] * 10 + [True]
EXPECTED = [1, 1, 128, 153, 255, 255, 1, 0, 255, 1, 0]


def test_numpy_encoding():
    got = encode_probability(np.array(P), invalid=np.array(INVALID))
    assert got.dtype == np.uint8 and got.tolist() == EXPECTED
    assert encode_probability(np.array([np.nan, 0.5])).tolist() == [PROBABILITY_NODATA, 128]


def test_torch_encoding_equals_numpy():
    got = encode_probability(torch.tensor(P, dtype=torch.float32), invalid=torch.tensor(INVALID))
    assert got.dtype == torch.uint8 and got.tolist() == EXPECTED
    rng = np.random.default_rng(0)
    p = rng.uniform(-0.1, 1.1, 10_000).astype(np.float32)
    p[::97] = np.nan
    np.testing.assert_array_equal(encode_probability(torch.from_numpy(p)).numpy(), encode_probability(p))


def test_nan_probabilities_are_nodata_in_the_mosaic_and_in_the_file(tmp_path):
    grid = TileGrid(8, 8, 8, 0)
    probs = torch.full((1, 2, 8, 8), 0.5)
    probs[0, :, :2] = torch.nan  # a model that produced NaN in the top rows
    probs[0, 1, 2:] = 0.8
    rows = []
    m = Mosaicker(
        grid, class_ids=[1, 2], nodata=0, sink=lambda r, c, q: rows.append((c, q["probability"])), probabilities=True
    )
    m.add(list(grid.tiles()), probs, torch.ones((1, 8, 8), dtype=torch.bool))
    m.finish()
    cls, prob = rows[0]
    assert (prob[:2] == PROBABILITY_NODATA).all() and (prob[2:] == 204).all()

    path, ppath = tmp_path / "c.tif", tmp_path / "p.tif"
    table = ClassTable.from_names(["a", "b"], start=1)
    transform = Affine(1.0, 0.0, 0.0, 0.0, -1.0, 8.0)
    w = ClassRasterWriter(
        path, width=8, height=8, crs="EPSG:32633", transform=transform, classes=table, nodata=0, probability_path=ppath
    )
    with w:
        w.write_rows(0, cls, prob)
    with rasterio.open(ppath) as src:
        stored = src.read(1)
    np.testing.assert_array_equal(stored, prob)  # an encoded 0 stays nodata; it is not raised to 1
