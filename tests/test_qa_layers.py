"""QA layers (probability, margin, entropy, disagreement): values against a direct computation.

The mosaic computes them in the same reduction as the classes; these tests feed it tiles with
known probabilities and compare with NumPy on the same numbers, then check the written COGs
and their styles end to end with a real (small) PSPNet.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch

from geopsp.encoding import PROBABILITY_NODATA, QA_LAYERS, encode_probability
from geopsp.inference.mosaic import Mosaicker
from geopsp.style.qa import QA_RAMPS, qa_qml
from geopsp.testing import run_cli
from geopsp.tiling import TileGrid


def _mosaic(grid, tile_probs, *, valid=None, backend="numpy", class_ids=None, qa=QA_LAYERS, kernel="cosine"):
    """Blend one ``(K, size, size)`` probability array per tile; return the classes and the QA rows."""
    k = tile_probs[0].shape[0]
    rows = []
    m = Mosaicker(
        grid,
        class_ids=class_ids or list(range(k)),
        nodata=255,
        sink=lambda r, c, q: rows.append((r, c, q)),
        qa=qa,
        backend=backend,
        kernel=kernel,
        floor=0.05,
    )
    for tile, p in zip(grid.tiles(), tile_probs, strict=True):
        v = np.ones((1, grid.tile_size, grid.tile_size), bool) if valid is None else valid[None]
        x = p[None].astype(np.float32)
        if backend == "torch":
            x, v = torch.from_numpy(x), torch.from_numpy(np.ascontiguousarray(v))
        m.add([tile], x, v)
    m.finish()
    cls = np.concatenate([c for _, c, _ in rows])
    return cls, {name: np.concatenate([q[name] for _, _, q in rows]) for name in qa}


def _pixel_field(h, w, k, seed):
    """Per-pixel probabilities (a softmax of noise): what every tile predicts at a pixel, so blending is exact."""
    logits = np.random.default_rng(seed).normal(scale=2.0, size=(k, h, w))
    e = np.exp(logits - logits.max(0))
    return (e / e.sum(0)).astype(np.float32)


def _tiles_of(grid, field):
    out = []
    for t in grid.tiles():
        p = np.zeros((field.shape[0], grid.tile_size, grid.tile_size), np.float32)
        p[:, : t.height, : t.width] = field[:, t.row : t.row_end, t.col : t.col_end]
        out.append(p)
    return out


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("k", [2, 5])
def test_margin_and_entropy_equal_the_direct_computation_from_the_probabilities(backend, k):
    grid = TileGrid(70, 90, 32, 8)
    field = _pixel_field(70, 90, k, seed=k)
    cls, qa = _mosaic(grid, _tiles_of(grid, field), backend=backend)
    ordered = np.sort(field, axis=0)
    p1, p2 = ordered[-1], ordered[-2]
    entropy = -(field * np.log(field)).sum(0) / np.log(k)
    np.testing.assert_array_equal(cls, field.argmax(0))
    for name, direct in (("probability", p1), ("margin", p1 - p2), ("entropy", entropy)):
        got = qa[name].astype(int)
        want = encode_probability(direct).astype(int)
        assert np.abs(got - want).max() <= 1, name  # the blend's float32 sums round the last bit
        assert np.mean(got == want) > 0.99, name
    assert (qa["disagreement"] == encode_probability(np.zeros(1))[0]).all()  # every tile says the same


def test_disagreement_of_two_overlapping_tiles_with_known_outputs():
    """Tile A says class 0 (p = 0.9), tile B class 1 (p = 0.7): in the overlap one tile of two disagrees."""
    grid = TileGrid(16, 48, 32, 8)
    a, b = list(grid.tiles())
    assert (a.col, b.col) == (0, 16)  # columns 16..31 are covered by both
    pa = np.zeros((2, 32, 32), np.float32)
    pa[0], pa[1] = 0.9, 0.1
    pb = np.zeros((2, 32, 32), np.float32)
    pb[0], pb[1] = 0.3, 0.7
    cls, qa = _mosaic(grid, [pa, pb], kernel="uniform")
    # uniform blend: the overlap averages to (0.6, 0.4): class 0 wins, tile B disagrees
    assert (cls[:, :32] == 0).all() and (cls[:, 32:] == 1).all()
    dis = qa["disagreement"]
    assert (dis[:, :16] == 1).all() and (dis[:, 32:] == 1).all()  # one tile: no disagreement (stored 1 = 0.0)
    assert (dis[:, 16:32] == round(0.5 * 255)).all()
    np.testing.assert_array_equal(qa["probability"][:, 16:32], encode_probability(np.full((16, 16), 0.6)))
    np.testing.assert_array_equal(qa["margin"][:, 16:32], encode_probability(np.full((16, 16), 0.2)))
    np.testing.assert_array_equal(qa["margin"][:, :16], encode_probability(np.full((16, 16), 0.8)))
    h = -(0.6 * np.log(0.6) + 0.4 * np.log(0.4)) / np.log(2)
    np.testing.assert_array_equal(qa["entropy"][:, 16:32], encode_probability(np.full((16, 16), h)))


def test_ties_have_no_margin_and_full_entropy_and_nodata_stays_nodata():
    grid = TileGrid(20, 20, 32, 4)
    p = np.full((3, 32, 32), 1 / 3, np.float32)
    valid = np.ones((32, 32), bool)
    valid[:5] = False
    cls, qa = _mosaic(grid, [p], valid=valid)
    assert (cls[:5] == 255).all()
    for name in QA_LAYERS:
        assert (qa[name][:5] == PROBABILITY_NODATA).all(), name
    assert (qa["margin"][5:] == 1).all()  # 0, stored as the lowest value
    assert (qa["entropy"][5:] >= 254).all()  # ln 3 / ln 3 = 1, within float32


def test_one_class_is_certain():
    grid = TileGrid(10, 10, 16, 2)
    _, qa = _mosaic(grid, [np.ones((1, 16, 16), np.float32)])
    assert (qa["probability"] == 255).all() and (qa["margin"] == 255).all()
    assert (qa["entropy"] == 1).all() and (qa["disagreement"] == 1).all()


def test_backends_agree_on_every_layer():
    grid = TileGrid(60, 75, 32, 8)
    rng = np.random.default_rng(4)
    tiles = [rng.dirichlet(np.ones(4), size=(32, 32)).transpose(2, 0, 1).astype(np.float32) for _ in grid.tiles()]
    cls_n, qa_n = _mosaic(grid, tiles, backend="numpy")
    cls_t, qa_t = _mosaic(grid, tiles, backend="torch")
    assert np.mean(cls_n == cls_t) > 0.999
    for name in QA_LAYERS:
        assert np.abs(qa_n[name].astype(int) - qa_t[name].astype(int)).max() <= 1, name
    assert (qa_n["disagreement"] > 1).mean() > 0.05  # random tiles disagree in the overlaps


def test_each_layer_is_asked_for_alone():
    grid = TileGrid(30, 30, 32, 4)
    p = _tiles_of(grid, _pixel_field(30, 30, 3, seed=1))
    _, only = _mosaic(grid, p, qa=["entropy"])
    _, every = _mosaic(grid, p)
    assert list(only) == ["entropy"]
    np.testing.assert_array_equal(only["entropy"], every["entropy"])


def test_qa_styles_are_ramps_over_the_decoded_values():
    import xml.etree.ElementTree as ET

    for name in QA_LAYERS:
        root = ET.fromstring(qa_qml(name).split("\n", 1)[1])
        shader = root.find("pipe/rasterrenderer/rastershader/colorrampshader")
        assert shader is not None and shader.get("colorRampType") == "INTERPOLATED"
        values = [float(i.get("value")) for i in shader.findall("item")]
        assert values == pytest.approx([v for v, _, _ in QA_RAMPS[name]], rel=1e-5) and values[-1] == 1.0
    with pytest.raises(ValueError, match="unknown QA layer"):
        qa_qml("certainty")


def _scene(path, h=150, w=170):
    from affine import Affine

    arr = np.kron(np.random.default_rng(2).integers(0, 256, (3, 19, 22)), np.ones((1, 8, 8)))[:, :h, :w]
    profile = dict(driver="GTiff", width=w, height=h, count=3, dtype="uint8", crs="EPSG:32633")
    with rasterio.open(path, "w", transform=Affine(10, 0, 500000, 0, -10, 6000000), **profile) as dst:
        dst.write(arr.astype(np.uint8))
    return path


def test_predict_qa_writes_every_layer_as_a_styled_cog(tmp_path, tiny_bundle):
    scene = _scene(tmp_path / "s.tif")
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        "predict", scene, "--model", tiny_bundle, "--out", out, "--qa", "--device", "cpu", "--no-progress"
    )
    assert code == 0, err
    listed = stdout.split()
    summary = json.loads((out / "s_summary.json").read_text())
    with rasterio.open(out / "s_classes.tif") as src:
        cls = src.read(1)
        nodata = src.nodata
    layers = {}
    for name in QA_LAYERS:
        path = out / f"s_{name}.tif"
        assert str(path) in listed and summary["outputs"][name] == str(path)
        assert 'type="singlebandpseudocolor"' in path.with_suffix(".qml").read_text()
        with rasterio.open(path) as src:
            assert src.dtypes[0] == "uint8" and src.nodata == PROBABILITY_NODATA
            assert src.scales[0] == pytest.approx(1 / 255) and src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
            layers[name] = src.read(1).astype(int)
    valid = cls != nodata
    for name, a in layers.items():
        assert ((a == PROBABILITY_NODATA) == ~valid).all(), name
    p, m = layers["probability"] / 255, layers["margin"] / 255
    # top-1 minus top-2 is at most top-1 and at least 2 top-1 - 1 (the others share 1 - top-1)
    assert (m <= p + 1 / 255)[valid].all() and (m >= 2 * p - 1 - 2 / 255)[valid].all()


def test_predict_qa_layer_picks_some(tmp_path, tiny_bundle):
    scene = _scene(tmp_path / "s.tif", 70, 80)
    out = tmp_path / "out"
    code, _, err = run_cli(
        "predict", scene, "--model", tiny_bundle, "--out", out, "--qa-layer", "margin", "--device", "cpu",
        "--qa-layer", "disagreement", "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    tifs = sorted(p.name for p in out.glob("*.tif"))
    assert tifs == ["s_classes.tif", "s_disagreement.tif", "s_margin.tif"]
    code, _, err = run_cli("predict", scene, "--model", tiny_bundle, "--out", out, "--qa-layer", "certainty")
    assert code == 2 and "certainty" in err
