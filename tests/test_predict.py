"""The Predictor: devices, host vs device normalization, AMP, TTA, model output checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from geopsp.classes import ClassTable
from geopsp.errors import ConfigError, ModelError
from geopsp.inference.predict import TTA_TRANSFORMS, Predictor, resolve_device, unwrap_logits
from geopsp.model.inputs import MODEL_FILL
from geopsp.model.meta import BundleMeta, ModelSpec, Normalization
from geopsp.tiling import Tile

TILE = Tile(0, 0, 0, 0, 0, 32, 32, 32)


def make_meta(bands=3, classes=4, dtype="uint8", norm=None, tile=64, overlap=8):
    return BundleMeta(
        spec=ModelSpec(in_channels=bands, num_classes=classes),
        classes=ClassTable.default(classes),
        bands=tuple(range(1, bands + 1)),
        band_names=tuple(f"b{i}" for i in range(bands)),
        input_dtype=dtype,
        normalization=norm or Normalization.for_dtype(dtype, bands),
        tile_size=tile,
        overlap=overlap,
    )


def conv_model(bands=3, classes=4, k=1, seed=0):
    torch.manual_seed(seed)
    return nn.Conv2d(bands, classes, k, padding=k // 2)


def test_resolve_device_is_the_one_in_geopsp_device():
    import geopsp.device

    assert resolve_device is geopsp.device.resolve_device


def test_unwrap_logits():
    t = torch.zeros(1, 2, 3, 3)
    assert unwrap_logits(t) is t
    assert unwrap_logits((t, torch.ones(1))) is t
    assert unwrap_logits({"out": t, "aux": None}) is t
    with pytest.raises(ModelError, match="expected a logits tensor"):
        unwrap_logits("nope")


@pytest.mark.parametrize(
    ("dtype", "norm"),
    [
        ("uint8", Normalization.from_stats([100.0, 90.0, 80.0], [50.0, 40.0, 30.0])),
        ("uint16", Normalization.from_percentiles([100.0] * 3, [3000.0] * 3)),
        ("int16", Normalization.for_dtype("int16", 3)),
        ("float32", Normalization.identity(3)),
    ],
)
def test_device_normalization_equals_host_normalization(dtype, norm):
    """The CUDA path (raw tiles, normalized on the device) gives the same numbers as the CPU path."""
    meta = make_meta(dtype=dtype, norm=norm)
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype) if dtype != "float32" else None
    lo, hi = (info.min, info.max) if info else (-1.0, 2.0)
    raw = (rng.uniform(lo, hi, size=(3, 32, 32))).astype(dtype)
    valid = rng.random((32, 32)) > 0.2
    if dtype == "float32":
        raw[0, :3, :3] = np.nan  # not finite: the reader marks these invalid
        valid[:3, :3] = False
    host = Predictor(conv_model(), meta, device="cpu")
    dev = Predictor(conv_model(), meta, device="cpu")
    dev.normalize_on_device = True  # exercise the GPU code path on the CPU
    a, _ = host.prepare(TILE, raw, valid)
    b, _ = dev.prepare(TILE, raw, valid)
    assert a.dtype == np.float32 and b.dtype != np.uint16
    expected = norm.apply(raw)
    expected[:, ~valid] = MODEL_FILL
    np.testing.assert_array_equal(a, expected)
    xa, va = host.to_device([a], [valid])
    xb, vb = dev.to_device([b], [valid])
    assert xb.dtype == torch.float32 and torch.isfinite(xb).all()
    torch.testing.assert_close(xa, xb, rtol=0, atol=0)
    assert torch.equal(va, vb) and torch.equal(va[0], torch.from_numpy(valid))


def test_probabilities_are_softmax_of_the_model():
    meta = make_meta()
    model = conv_model(k=3)
    p = Predictor(model, meta, device="cpu", channels_last=False, amp=False)
    x = torch.randn(2, 3, 32, 32)
    probs = p.probabilities(x)
    with torch.no_grad():
        ref = torch.softmax(model(x), 1)
    torch.testing.assert_close(probs, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 32, 32))


@pytest.mark.parametrize("tta", ["flip", "d4"])
def test_tta_with_an_equivariant_model_changes_nothing(tta):
    meta = make_meta()
    x = torch.randn(2, 3, 32, 32)
    plain = Predictor(conv_model(k=1), meta, device="cpu", tta="none", amp=False).probabilities(x)
    aug = Predictor(conv_model(k=1), meta, device="cpu", tta=tta, amp=False).probabilities(x)
    torch.testing.assert_close(plain, aug, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tta", ["flip", "d4"])
def test_tta_averages_transformed_predictions(tta):
    meta = make_meta()
    model = conv_model(k=3, seed=1)
    x = torch.randn(1, 3, 16, 16)
    got = Predictor(model, meta, device="cpu", channels_last=False, tta=tta, amp=False).probabilities(x)
    with torch.no_grad():
        ref = torch.stack([inv(torch.softmax(model(fwd(x)), 1)) for fwd, inv in TTA_TRANSFORMS[tta]]).mean(0)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    assert len(TTA_TRANSFORMS[tta]) == {"flip": 3, "d4": 8}[tta]
    # all D4 transforms are distinct and each inverse undoes its forward
    t = torch.arange(16.0).view(1, 1, 4, 4)
    outs = {tuple(fwd(t).flatten().tolist()) for fwd, _ in TTA_TRANSFORMS[tta]}
    assert len(outs) == len(TTA_TRANSFORMS[tta])
    for fwd, inv in TTA_TRANSFORMS[tta]:
        torch.testing.assert_close(inv(fwd(t)), t)


def test_reflection_margin_runs_the_model_on_a_reflected_border_and_crops_it():
    meta = make_meta()
    model = conv_model(k=3, seed=2)
    x = torch.randn(2, 3, 32, 48)
    got = Predictor(model, meta, device="cpu", channels_last=False, amp=False, margin_px=16).probabilities(x)
    with torch.no_grad():
        ref = torch.softmax(model(nn.functional.pad(x, (16, 16, 16, 16), mode="reflect")), 1)[:, :, 16:48, 16:64]
    assert got.shape == (2, 4, 32, 48)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    # the zero padding no longer shows: the border pixels differ from the plain run's
    plain = Predictor(model, meta, device="cpu", channels_last=False, amp=False).probabilities(x)
    assert not torch.allclose(got[..., 0, :], plain[..., 0, :])
    torch.testing.assert_close(got[..., 1:-1, 1:-1], plain[..., 1:-1, 1:-1], rtol=1e-5, atol=1e-6)
    # a pointwise model is unchanged; a margin wider than a small input is narrowed to fit
    one = conv_model(k=1)
    small = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(
        Predictor(one, meta, device="cpu", amp=False, margin_px=16, tta="d4").probabilities(small),
        Predictor(one, meta, device="cpu", amp=False).probabilities(small),
        rtol=1e-5,
        atol=1e-6,
    )
    with pytest.raises(ConfigError, match="margin_px"):
        Predictor(one, meta, device="cpu", margin_px=-1)


def test_d4_on_non_square_tiles_pads_and_crops():
    meta = make_meta()
    x = torch.randn(2, 3, 32, 64)
    plain = Predictor(conv_model(k=1), meta, device="cpu", amp=False).probabilities(x)
    d4 = Predictor(conv_model(k=1), meta, device="cpu", amp=False, tta="d4").probabilities(x)
    assert d4.shape == (2, 4, 32, 64)
    torch.testing.assert_close(plain, d4, rtol=1e-5, atol=1e-6)


def test_cpu_bf16_autocast_agrees():
    meta = make_meta()
    model = conv_model(k=3, seed=2)
    x = torch.randn(2, 3, 32, 32)
    a = Predictor(model, meta, device="cpu", amp=False).probabilities(x).argmax(1)
    b = Predictor(model, meta, device="cpu", amp=True).probabilities(x).argmax(1)
    assert (a == b).float().mean() > 0.97


def test_wrong_model_outputs_are_clear_errors():
    meta = make_meta(classes=4)
    with pytest.raises(ModelError, match="channels but the bundle lists 4"):
        Predictor(conv_model(classes=3), meta, device="cpu").probabilities(torch.zeros(1, 3, 8, 8))
    shrink = nn.Sequential(conv_model(), nn.AvgPool2d(2))
    with pytest.raises(ModelError, match="expected"):
        Predictor(shrink, meta, device="cpu").probabilities(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ConfigError, match="unknown TTA"):
        Predictor(conv_model(), meta, device="cpu", tta="rot")


def test_cpu_amp_default_follows_native_bf16():
    from geopsp.inference.predict import CPU_AMP_DEFAULT, cpu_has_native_bf16

    assert CPU_AMP_DEFAULT == cpu_has_native_bf16()
    assert Predictor(conv_model(), make_meta(), device="cpu").amp == CPU_AMP_DEFAULT


def test_settings_describe_the_run():
    p = Predictor(conv_model(), make_meta(), device="cpu", tta="flip")
    s = p.settings
    assert s["device"] == "cpu" and s["tta"] == "flip" and s["normalize_on"] == "host"
    assert s["amp"] is p.amp


@pytest.mark.gpu
def test_cuda_path_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    meta = make_meta(dtype="uint16", norm=Normalization.from_stats([500.0] * 3, [300.0] * 3))
    rng = np.random.default_rng(0)
    raw = [rng.integers(0, 3000, size=(3, 64, 64)).astype("uint16") for _ in range(3)]
    model = conv_model(k=3, seed=3)
    cpu = Predictor(model, meta, device="cpu", amp=False)
    gpu = Predictor(conv_model(k=3, seed=3), meta, device="cuda", amp=True)
    assert gpu.normalize_on_device
    ones = [np.ones((64, 64), bool)] * len(raw)
    pc = cpu.probabilities(cpu.to_device([cpu.prepare(TILE, r, ones[0])[0] for r in raw], ones)[0])
    pg = gpu.probabilities(gpu.to_device([gpu.prepare(TILE, r, ones[0])[0] for r in raw], ones)[0])
    assert pg.device.type == "cuda"
    agree = (pc.argmax(1) == pg.argmax(1).cpu()).float().mean().item()
    assert agree >= 0.99
