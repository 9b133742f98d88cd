"""The Mosaicker's two backends: torch tensors and NumPy arrays give the same rows; NumPy never imports torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geopsp.errors import ConfigError
from geopsp.inference.mosaic import Mosaicker
from geopsp.tiling import TileGrid

ROOT = Path(__file__).resolve().parents[1]


def _case(seed, height, width, tile, overlap, k, *, drop=0.2, nan=False):
    """Tiles of a grid with some missing, random probabilities, invalid pixels, garbage in the padding."""
    rng = np.random.default_rng(seed)
    grid = TileGrid(height, width, tile, overlap)
    tiles = [t for t in grid.tiles() if rng.random() >= drop]
    logits = rng.normal(size=(len(tiles), k, tile, tile)).astype(np.float32) * 2.5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    valid = rng.random((len(tiles), tile, tile)) > 0.05
    for n, t in enumerate(tiles):
        valid[n, t.height :] = False
        valid[n, :, t.width :] = False
        probs[n, :, t.height :] = probs[n, :, :, t.width :] = rng.random()  # padding: never read
    if nan:  # a model that produced NaN here and there: class of the first NaN, probability nodata
        probs[::3, 1:, 20:23, 30:33] = np.nan
        probs[1::3, 2, 40:50, 0:60] = np.nan
    return grid, tiles, probs.astype(np.float32), valid


def _mosaic(grid, tiles, probs, valid, *, backend, device="cpu", batch=3, **kw):
    rows = []
    m = Mosaicker(
        grid,
        sink=lambda r, c, q: rows.append((r, c, q.get("probability"))),
        backend=backend,
        device=device,
        floor=0.01,
        **kw,
    )
    wanted = set(grid.tiles(kw.get("row_range")))
    todo = [(n, t) for n, t in enumerate(tiles) if t in wanted]
    for i in range(0, len(todo), batch):
        idx = [n for n, _ in todo[i : i + batch]]
        p, v = np.ascontiguousarray(probs[idx]), np.ascontiguousarray(valid[idx])
        if backend == "torch":
            p, v = torch.from_numpy(p).to(device), torch.from_numpy(v).to(device)
        m.add([t for _, t in todo[i : i + batch]], p, v)
    m.finish()
    return rows, m


def _assert_same_rows(a, b):
    """The same rows, classes and probabilities, up to the last bit of float32 sums.

    torch adds with a fused multiply-add, NumPy multiplies then adds: an accumulator may differ
    in its last bit, so a class may differ only where two classes tie to float32 precision (a
    handful of pixels in a million) and a probability code by one step.
    """
    (rows_a, m_a), (rows_b, m_b) = a, b
    assert [r for r, _, _ in rows_a] == [r for r, _, _ in rows_b]
    differ = total = 0
    for (_, ca, pa), (_, cb, pb) in zip(rows_a, rows_b, strict=True):
        assert type(ca) is type(cb) is np.ndarray and ca.dtype == cb.dtype and ca.shape == cb.shape
        differ += int((ca != cb).sum())
        total += ca.size
        assert (pa is None) == (pb is None)
        if pa is not None:
            assert pa.dtype == pb.dtype == np.uint8
            assert np.abs(pa.astype(int) - pb.astype(int)).max(initial=0) <= 1
            assert np.array_equal(pa == 0, pb == 0)  # nodata in the same places
    assert differ <= max(1, total // 100_000)
    assert m_a.strip_bytes == m_b.strip_bytes


CASES = {
    "uint8-probabilities": dict(out_dtype="uint8", probabilities=True, row_range=None, class_ids=[3, 7, 11, 20]),
    "uint16-strip": dict(out_dtype="uint16", probabilities=True, row_range=(70, 233), class_ids=[3, 7, 11, 4000]),
    "uint8-classes-only": dict(out_dtype="uint8", probabilities=False, row_range=(0, 101), class_ids=[1, 2, 3, 4]),
    "uint16-nan": dict(out_dtype="uint16", probabilities=True, row_range=(150, 300), class_ids=[9, 8, 7, 60000]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_torch_and_numpy_backends_give_the_same_rows(name):
    kw = CASES[name]
    grid, tiles, probs, valid = _case(len(name), 300, 410, 64, 12, 4, nan=name.endswith("nan"))
    nodata = 255 if kw["out_dtype"] == "uint8" else 65535
    torch_rows = _mosaic(grid, tiles, probs, valid, backend="torch", nodata=nodata, **kw)
    numpy_rows = _mosaic(grid, tiles, probs, valid, backend="numpy", nodata=nodata, **kw)
    _assert_same_rows(torch_rows, numpy_rows)
    cls = np.concatenate([c for _, c, _ in numpy_rows[0]])
    r0, r1 = kw["row_range"] or (0, grid.height)
    assert cls.shape == (r1 - r0, grid.width) and cls.dtype == kw["out_dtype"]
    assert set(np.unique(cls)) == {*kw["class_ids"], nodata}  # every class wins somewhere; missing tiles: nodata


def test_backends_accumulate_the_same_sums():
    """The float accumulators agree to float32 precision, not only the rows."""
    grid, tiles, probs, valid = _case(7, 200, 300, 64, 16, 5, drop=0.0)
    first = [n for n, t in enumerate(tiles) if t.grid_row < 2][:-2]  # stop inside a band: chunks still open
    held = {}
    for backend in ("torch", "numpy"):
        m = Mosaicker(grid, class_ids=list(range(5)), nodata=255, sink=lambda *a: None, backend=backend)
        p, v = probs[first], valid[first]
        m.add(
            [tiles[n] for n in first], *((torch.from_numpy(p), torch.from_numpy(v)) if backend == "torch" else (p, v))
        )
        held[backend] = {
            j: (c.row0, np.asarray(c.acc), np.asarray(c.wsum), np.asarray(c.valid)) for j, c in m._chunks.items()
        }
    assert held["torch"].keys() == held["numpy"].keys() and len(held["numpy"]) == 5
    for j, (row0, *arrays) in held["torch"].items():
        assert row0 == held["numpy"][j][0]
        for a, b in zip(arrays, held["numpy"][j][1:], strict=True):
            assert a.dtype == b.dtype
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=0)


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_ties_and_nan_pick_the_class_torch_max_picks(backend):
    """The first maximum wins a tie, and a NaN wins (the first NaN): what ``torch.max(dim=0)`` gives."""
    probs = np.full((1, 4, 8, 8), 0.25, np.float32)  # all tied: class 0
    probs[0, :, 0] = np.array([0.1, 0.4, 0.4, 0.1])[:, None]  # tie between 1 and 2: 1
    probs[0, 2:, 1] = np.nan  # NaN in 2 and 3: 2
    probs[0, 0, 2] = np.nan  # NaN in 0: 0
    probs[0, 3, 3] = np.nan
    probs[0, 1, 3] = 0.9  # a larger value, and a NaN in 3: 3
    grid = TileGrid(8, 8, 8, 0)
    ids = [10, 11, 12, 13]
    (rows, _) = _mosaic(
        grid,
        list(grid.tiles()),
        probs,
        np.ones((1, 8, 8), bool),
        backend=backend,
        class_ids=ids,
        nodata=0,
        probabilities=True,
    )
    ((_, cls, prob),) = rows
    want = np.array(ids)[torch.from_numpy(probs[0]).max(dim=0).indices.numpy()]
    np.testing.assert_array_equal(cls, want)
    np.testing.assert_array_equal(cls[:4, 0], [11, 12, 10, 13])
    assert (prob[1:4] == 0).all() and (prob[4:] == 64).all()


@st.composite
def _grids(draw):
    tile = draw(st.integers(4, 40))
    overlap = draw(st.integers(0, (tile - 1) // 2))
    return TileGrid(draw(st.integers(1, 120)), draw(st.integers(1, 120)), tile, overlap)


@given(_grids(), st.data())
@settings(max_examples=30, deadline=None)
def test_backends_agree_on_any_grid(grid, data):
    k = data.draw(st.integers(1, 5))
    r0 = data.draw(st.integers(0, grid.height - 1))
    r1 = data.draw(st.integers(r0 + 1, grid.height))
    kw = dict(
        class_ids=list(range(10, 10 + k)),
        nodata=255,
        row_range=(r0, r1),
        probabilities=data.draw(st.booleans()),
        batch=data.draw(st.integers(1, 4)),
    )
    case = _case(data.draw(st.integers(0, 2**16)), grid.height, grid.width, grid.tile_size, grid.overlap, k, drop=0.1)
    _assert_same_rows(_mosaic(*case, backend="torch", **kw), _mosaic(*case, backend="numpy", **kw))


@pytest.mark.gpu
def test_cuda_backend_gives_the_numpy_rows():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    kw = dict(CASES["uint16-strip"], nodata=65535)
    case = _case(5, 300, 410, 64, 12, 4)
    _assert_same_rows(_mosaic(*case, backend="torch", device="cuda", **kw), _mosaic(*case, backend="numpy", **kw))


def test_numpy_backend_runs_on_the_cpu_and_takes_numpy_arrays():
    grid = TileGrid(32, 32, 32, 0)
    kw = dict(class_ids=[0, 1], nodata=9, sink=lambda *a: None)
    with pytest.raises(ConfigError, match="numpy mosaic backend runs on the CPU, not on 'cuda:0'") as info:
        Mosaicker(grid, device="cuda:0", backend="numpy", **kw)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="unknown mosaic backend 'jax'; choose 'torch' or 'numpy'"):
        Mosaicker(grid, backend="jax", **kw)
    tiles = list(grid.tiles())
    m = Mosaicker(grid, device=torch.device("cpu"), backend="numpy", **kw)
    assert m.device == "cpu"
    with pytest.raises(TypeError, match="backend 'numpy' takes NumPy arrays; probs is a Tensor"):
        m.add(tiles, torch.ones((1, 2, 32, 32)), np.ones((1, 32, 32), bool))
    with pytest.raises(TypeError, match="backend 'torch' takes torch tensors; valid is a ndarray"):
        Mosaicker(grid, **kw).add(tiles, torch.ones((1, 2, 32, 32)), np.ones((1, 32, 32), bool))


NO_TORCH = """
import sys

tried = []


class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            tried.append(name)
            raise ImportError(f"torch is blocked here: {name}")
        return None


sys.meta_path.insert(0, NoTorch())

import numpy as np

from geopsp.inference.mosaic import Mosaicker
from geopsp.tiling import TileGrid

grid = TileGrid(150, 170, 64, 16)
rows = []
m = Mosaicker(
    grid, class_ids=[3, 7, 9], nodata=255, probabilities=True, backend="numpy",
    sink=lambda r, c, q: rows.append((c, q["probability"])),
)
rng = np.random.default_rng(0)
tiles = list(grid.tiles())
for i in range(0, len(tiles), 4):
    batch = tiles[i : i + 4]
    p = rng.random((len(batch), 3, 64, 64), dtype=np.float32)
    m.add(batch, p / p.sum(1, keepdims=True), np.ones((len(batch), 64, 64), bool))
m.finish()
cls = np.concatenate([c for c, _ in rows])
prob = np.concatenate([p for _, p in rows])
assert cls.shape == prob.shape == (150, 170) and cls.dtype == prob.dtype == np.uint8
assert set(np.unique(cls)) == {3, 7, 9} and prob.min() >= 1, (np.unique(cls), prob.min())
try:
    import torch  # noqa: F401
except ImportError:
    pass
else:
    raise AssertionError("the blocker let torch in")
assert tried == ["torch"], tried  # only the probe above asked for torch
assert "torch" not in sys.modules, sorted(name for name in sys.modules if name.startswith("torch"))
print("torch-free")
"""


def test_numpy_backend_never_imports_torch():
    out = subprocess.run([sys.executable, "-c", NO_TORCH], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "torch-free"


def test_numpy_strips_stitch_bit_for_bit():
    """Each backend is deterministic: strips of the NumPy mosaic equal its whole-scene rows exactly."""
    grid, tiles, probs, valid = _case(11, 260, 190, 64, 12, 4)
    kw = dict(class_ids=[1, 2, 3, 4], nodata=255, probabilities=True)
    whole = _mosaic(grid, tiles, probs, valid, backend="numpy", **kw)[0]
    parts = [_mosaic(grid, tiles, probs, valid, backend="numpy", row_range=r, **kw)[0] for r in ((0, 97), (97, 260))]
    cls = np.concatenate([c for _, c, _ in whole])
    stitched = np.concatenate([c for rows in parts for _, c, _ in rows])
    assert cls.tobytes() == stitched.tobytes()
    prob = np.concatenate([p for _, _, p in whole])
    assert prob.tobytes() == np.concatenate([p for rows in parts for _, _, p in rows]).tobytes()
