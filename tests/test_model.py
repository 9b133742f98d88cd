"""PSPNet, registry, presets and FLOP counts."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch

from geopsp.errors import ConfigError, ModelError
from geopsp.model import (
    ARCHITECTURES,
    PRESETS,
    ModelSpec,
    PSPNet,
    build_model,
    count_parameters,
    flops_per_pixel,
    model_flops,
    spec_from_preset,
)
from geopsp.model.pspnet import PadToMultiple, pad_to_multiple


def small_spec(**changes) -> ModelSpec:
    """A paper-shaped PSPNet (dilated, depth 5, aux) that is cheap to run in tests."""
    base = ModelSpec(encoder="resnet18", in_channels=3, num_classes=5, decoder_channels=32, aux=True)
    return base.replace(**changes)


@pytest.fixture(scope="module")
def r18() -> PSPNet:
    torch.manual_seed(0)
    return PSPNet.from_spec(small_spec())


@pytest.mark.parametrize("size", [(97, 131), (64, 64), (5, 7), (1, 1), (8, 3), (33, 70)])
def test_output_size_equals_input(r18: PSPNet, size: tuple[int, int]) -> None:
    r18.eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        y = r18(x)
    assert isinstance(y, torch.Tensor)
    assert y.shape == (1, 5, *size)
    assert torch.isfinite(y).all()


def test_aux_only_in_training(r18: PSPNet) -> None:
    x = torch.randn(2, 3, 40, 56)
    r18.train()
    try:
        out = r18(x)
        assert isinstance(out, tuple) and len(out) == 2
        assert out[0].shape == out[1].shape == (2, 5, 40, 56)
    finally:
        r18.eval()
    with torch.no_grad():
        assert isinstance(r18(x), torch.Tensor)


def test_no_aux_returns_tensor_in_training() -> None:
    model = PSPNet.from_spec(small_spec(aux=False, encoder_depth=3))
    model.train()
    out = model(torch.randn(2, 3, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 5, 32, 32)
    assert model.aux_head is None


def test_forward_backward_cpu() -> None:
    torch.manual_seed(1)
    model = PSPNet.from_spec(small_spec())
    model.train()
    x = torch.randn(2, 3, 64, 64)
    target = torch.randint(0, 5, (2, 64, 64))
    main, aux = model(x)
    loss = torch.nn.functional.cross_entropy(main, target) + model.aux_weight * torch.nn.functional.cross_entropy(
        aux, target
    )
    loss.backward()
    assert model.aux_weight == pytest.approx(0.4)
    enc_conv: torch.nn.Conv2d = model.encoder.conv1  # type: ignore[assignment]
    assert enc_conv.weight.grad is not None and enc_conv.weight.grad.abs().sum() > 0
    assert model.aux_head is not None
    assert model.aux_head.classifier.weight.grad is not None
    assert model.head.classifier.weight.grad is not None


def test_batch_of_one_trains() -> None:
    # BN on the 1x1 pyramid bin would fail with batch size 1; that branch has no BN.
    model = PSPNet.from_spec(small_spec())
    model.train()
    main, aux = model(torch.randn(1, 3, 64, 64))
    (main.mean() + aux.mean()).backward()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.head.ppm.branches[0].modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.head.ppm.branches[1].modules())


def test_eval_deterministic(r18: PSPNet) -> None:
    r18.eval()
    x = torch.randn(2, 3, 50, 45)
    with torch.no_grad():
        a = r18(x)
        b = r18(x)
    assert torch.equal(a, b)


def test_paper_structure() -> None:
    model = PSPNet.from_spec(small_spec(decoder_channels=512))
    ppm = model.head.ppm
    assert ppm.bins == (1, 2, 3, 6)
    # ResNet-18's last stage has 512 channels: four branches of 512 / 4 = 128
    assert [b[1][0].out_channels for b in ppm.branches] == [128] * 4
    assert ppm.out_channels == 1024
    assert model.head.fuse[0].kernel_size == (3, 3) and model.head.fuse[0].out_channels == 512
    assert model.head.classifier.kernel_size == (1, 1)
    assert model.head.dropout.p == pytest.approx(0.1)
    assert model.aux_head is not None and model.aux_head.conv[0].out_channels == 256
    assert model.aux_head.conv[0].in_channels == 256  # ResNet-18 layer3 (stage 4)
    assert model.pad_multiple == 8
    # stride 8: the last two stages are dilated, not strided
    feats = model.encoder(torch.zeros(1, 3, 64, 64))
    assert feats[-1].shape[-2:] == (8, 8) and feats[-2].shape[-2:] == (8, 8)


@pytest.mark.parametrize("bands", [1, 4, 13])
def test_band_counts(bands: int) -> None:
    model = PSPNet.from_spec(small_spec(in_channels=bands, encoder_depth=4)).eval()
    with torch.no_grad():
        y = model(torch.randn(1, bands, 37, 29))
    assert y.shape == (1, 5, 37, 29)


@pytest.mark.parametrize("encoder", ["efficientnet-b0", "mobilenet_v2"])
def test_other_encoders(encoder: str) -> None:
    model = PSPNet.from_spec(small_spec(encoder=encoder, in_channels=4)).eval()
    with torch.no_grad():
        y = model(torch.randn(1, 4, 45, 66))
    assert y.shape == (1, 5, 45, 66)
    model.train()
    main, aux = model(torch.randn(2, 4, 32, 32))
    assert main.shape == aux.shape == (2, 5, 32, 32)


@pytest.mark.parametrize(("stride", "feature"), [(16, 4), (32, 2)])
def test_output_strides(stride: int, feature: int) -> None:
    model = PSPNet.from_spec(small_spec(output_stride=stride)).eval()
    assert model.pad_multiple == stride
    assert model.encoder(torch.zeros(1, 3, 64, 64))[-1].shape[-2:] == (feature, feature)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 70, 41)).shape == (1, 5, 70, 41)


def test_shallow_depth_aux_on_previous_stage() -> None:
    model = PSPNet.from_spec(small_spec(encoder_depth=3))
    assert model.aux_head is not None and model.aux_head.conv[0].in_channels == 64  # layer1
    with pytest.raises(ModelError, match="encoder_depth >= 2"):
        PSPNet.from_spec(small_spec(encoder_depth=1))
    assert PSPNet.from_spec(small_spec(encoder_depth=1, aux=False)).aux_head is None


@pytest.mark.parametrize(("depth", "dropped"), [(3, ("layer3", "layer4")), (4, ("layer4",)), (5, ())])
def test_shallow_resnet_carries_no_unused_stages(depth: int, dropped: tuple[str, ...]) -> None:
    from segmentation_models_pytorch.encoders import get_encoder

    torch.manual_seed(0)
    model = PSPNet.from_spec(small_spec(encoder_depth=depth))
    enc = model.encoder
    assert enc.geopsp_dropped_stages == dropped
    assert all(not hasattr(enc, name) for name in dropped)
    # Every remaining parameter takes part in the forward pass: a backward reaches each one.
    model.train()
    logits, aux = model(torch.randn(2, 3, 48, 40))
    (logits.sum() + aux.sum()).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None]
    assert dead == []
    # Same features as smp's full encoder with the same weights.
    full = get_encoder("resnet18", in_channels=3, depth=depth, weights=None, output_stride=8).eval()
    full_keys, kept = set(full.state_dict()), set(enc.state_dict())
    assert kept <= full_keys and {k.split(".")[0] for k in full_keys - kept} == set(dropped)
    full.load_state_dict(enc.state_dict(), strict=False)
    enc.eval()
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        for a, b in zip(full(x), enc(x), strict=True):
            assert torch.equal(a, b)


def test_fast_preset_parameters_all_run() -> None:
    model = build_model(spec_from_preset("fast", in_channels=3, num_classes=21))
    # ResNet-18 stages 1-3 (0.68 M) and the paper head; smp's full ResNet-18 alone has 11.2 M.
    assert 1.5e6 < count_parameters(model) < 2.5e6
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_unknown_encoder() -> None:
    with pytest.raises(ModelError, match="resnet18"):
        PSPNet.from_spec(small_spec(encoder="resnet19"))


def test_encoder_without_dilation() -> None:
    with pytest.raises(ModelError, match="vgg11"):
        PSPNet.from_spec(small_spec(encoder="vgg11"))


def test_pad_to_multiple() -> None:
    x = torch.arange(12.0).reshape(1, 1, 3, 4)
    y = pad_to_multiple(x, 4)
    assert y.shape == (1, 1, 4, 4)
    assert torch.equal(y[..., :3, :4], x)
    assert torch.equal(y[0, 0, 3], x[0, 0, 1])  # reflected
    one = torch.ones(1, 2, 1, 1)
    assert torch.equal(pad_to_multiple(one, 8), torch.ones(1, 2, 8, 8))  # replicated
    assert pad_to_multiple(x, 1) is x


# --------------------------------------------------------------------------------------------
# Pretrained weights: offline, fail fast; cached, load without the network


def test_imagenet_offline_fails_fast(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    start = time.monotonic()
    with pytest.raises(ModelError, match=r"ImageNet weights for resnet50 are not cached at .*encoder_weights=None"):
        build_model(spec_from_preset("paper", in_channels=3, num_classes=2, encoder_weights="imagenet"))
    assert time.monotonic() - start < 10
    with pytest.raises(ModelError, match="not cached"):
        build_model(ModelSpec(arch="unet", encoder="resnet18", output_stride=32, aux=False, encoder_weights="imagenet"))
    with pytest.raises(ModelError, match="no 'instagram' weights"):
        build_model(small_spec(encoder_weights="instagram"))


def test_imagenet_from_cache(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """Weights in the local Hugging Face cache load with no network access at all."""
    import socket

    from huggingface_hub import constants
    from safetensors.torch import save_file
    from segmentation_models_pytorch.encoders import encoders, get_encoder

    settings = encoders["resnet18"]["pretrained_settings"]["imagenet"]
    snap = tmp_path / "models--smp-hub--resnet18.imagenet" / "snapshots" / settings["revision"]
    snap.mkdir(parents=True)
    torch.manual_seed(3)
    reference = get_encoder("resnet18", weights=None)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(snap / "model.safetensors"))
    (snap / "config.json").write_text(json.dumps({"mean": [0.5] * 3, "std": [0.25] * 3}))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))

    def no_connections(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "create_connection", no_connections)
    model = build_model(small_spec(encoder_weights="imagenet", in_channels=3))
    assert torch.equal(model.encoder.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)
    # four bands: smp adapts the first conv from the pretrained one
    model4 = build_model(small_spec(encoder_weights="imagenet", in_channels=4))
    assert model4.encoder.conv1.weight.shape == (64, 4, 7, 7)


# --------------------------------------------------------------------------------------------
# Registry, presets, FLOPs


def test_registry_names_and_unknown() -> None:
    assert {"pspnet", "unet", "deeplabv3plus", "fpn"} <= set(ARCHITECTURES)
    with pytest.raises(ValueError, match=r"unknown architecture 'segnet'.*pspnet") as info:
        build_model(ModelSpec(arch="segnet"))
    assert isinstance(info.value, ConfigError)


@pytest.mark.parametrize(
    ("arch", "stride"),
    [("unet", 32), ("fpn", 32), ("deeplabv3plus", 16)],
)
def test_smp_architectures(arch: str, stride: int) -> None:
    spec = ModelSpec(arch=arch, encoder="resnet18", in_channels=4, num_classes=3, output_stride=stride, aux=False)
    model = build_model(spec).eval()
    assert isinstance(model, PadToMultiple)
    with torch.no_grad():
        assert model(torch.randn(1, 4, 45, 67)).shape == (1, 3, 45, 67)


def test_smp_architecture_rejects_bad_options() -> None:
    with pytest.raises(ModelError, match="aux=False"):
        build_model(ModelSpec(arch="unet", encoder="resnet18", output_stride=32))
    with pytest.raises(ModelError, match="output_stride=32"):
        build_model(ModelSpec(arch="fpn", encoder="resnet18", aux=False))


def test_presets() -> None:
    assert set(PRESETS) == {"paper", "fast"}
    paper = spec_from_preset("paper", in_channels=4, num_classes=6)
    assert (paper.encoder, paper.output_stride, paper.encoder_depth, paper.aux) == ("resnet50", 8, 5, True)
    assert (paper.ppm_bins, paper.decoder_channels, paper.aux_weight) == ((1, 2, 3, 6), 512, 0.4)
    fast = spec_from_preset("fast", encoder="mobilenet_v2", in_channels=13, num_classes=2)
    assert (fast.encoder, fast.in_channels, fast.aux) == ("mobilenet_v2", 13, False)
    with pytest.raises(ConfigError, match="unknown model preset"):
        spec_from_preset("huge", in_channels=3, num_classes=2)
    with pytest.raises(ConfigError, match="unknown model keys"):
        spec_from_preset("fast", in_channels=3, num_classes=2, colour="red")


def test_fast_preset_builds_and_runs() -> None:
    model = build_model(spec_from_preset("fast", in_channels=4, num_classes=3)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 4, 61, 77)).shape == (1, 3, 61, 77)


def test_paper_preset_builds_and_runs() -> None:
    model = build_model(spec_from_preset("paper", in_channels=3, num_classes=4))
    assert 45e6 < count_parameters(model) < 50e6
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 40, 40)).shape == (1, 4, 40, 40)


def test_flops_paper_and_fast() -> None:
    import segmentation_models_pytorch as smp

    paper = flops_per_pixel(spec_from_preset("paper", in_channels=3, num_classes=21))
    assert paper == pytest.approx(1.35e6, rel=0.02)
    fast = flops_per_pixel(spec_from_preset("fast", in_channels=3, num_classes=21))
    with torch.device("meta"):
        reference = smp.PSPNet(encoder_weights=None, classes=21)
    smp_default = model_flops(reference, in_channels=3) / 512**2
    assert fast == pytest.approx(smp_default, rel=0.10)


def test_meta_does_not_import_torch() -> None:
    code = (
        "import sys; import geopsp.model.meta; import geopsp.model; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "geopsp.model.BundleMeta; geopsp.model.read_bundle_meta; "
        "assert 'torch' not in sys.modules, 'torch imported by bundle'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_detail_branch_classifies_at_stride_4() -> None:
    """With a detail branch the logits are made at stride 4 from the stride-4 feature; without, at stride 8."""
    torch.manual_seed(0)
    spec = spec_from_preset("fast", in_channels=3, num_classes=2, decoder_channels=16, detail_channels=8)
    model = build_model(spec).eval()
    plain = build_model(spec.replace(detail_channels=0)).eval()
    assert isinstance(model.head.classifier, torch.nn.Identity) and plain.detail is None
    shapes: dict[str, tuple[int, ...]] = {}
    model.detail.register_forward_hook(lambda m, a, out: shapes.update(detail=tuple(out.shape)))
    plain.head.register_forward_hook(lambda m, a, out: shapes.update(plain=tuple(out.shape)))
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert model(x).shape == plain(x).shape == (1, 2, 64, 64)
    assert shapes == {"detail": (1, 2, 16, 16), "plain": (1, 2, 8, 8)}
    assert ModelSpec.from_dict(spec.to_dict()).detail_channels == 8  # survives the bundle's metadata
    with pytest.raises(ModelError, match="stride-4 encoder feature"):
        build_model(spec.replace(encoder_depth=2, aux=False))
