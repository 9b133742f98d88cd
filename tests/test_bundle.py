"""Model bundles: save/load round trip, damaged files, the ``geopsp model`` commands."""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from geopsp.classes import ClassTable
from geopsp.cli.main import cli, main
from geopsp.errors import CheckpointError, ModelError, OutputExistsError
from geopsp.model import (
    Bundle,
    BundleMeta,
    ModelSpec,
    Normalization,
    build_model,
    inspect_bundle,
    load_bundle,
    read_bundle_meta,
    save_bundle,
)
from geopsp.model.bundle import BUNDLE_FORMAT, _digest

SPEC = ModelSpec(encoder="resnet18", in_channels=3, num_classes=4, encoder_depth=3, decoder_channels=16, aux=True)


def make_meta(spec: ModelSpec = SPEC, **changes: Any) -> BundleMeta:
    n = spec.in_channels
    meta = BundleMeta(
        spec=spec,
        classes=ClassTable.from_names(["water", "forest", "field", "urban"][: spec.num_classes]),
        bands=tuple(range(1, n + 1)),
        band_names=tuple(f"B{i}" for i in range(1, n + 1)),
        input_dtype="uint16",
        normalization=Normalization.from_stats([300.0 + i for i in range(n)], [90.0] * n),
        pixel_size=10.0,
        tile_size=256,
        overlap=32,
        provenance={"epochs": 3, "metrics": {"miou": 0.5}},
    )
    return dataclasses.replace(meta, **changes)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, BundleMeta, Path]:
    torch.manual_seed(0)
    model = build_model(SPEC)
    # give BN layers non-trivial running statistics
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    model.eval()
    meta = make_meta()
    path = save_bundle(model, meta, tmp_path_factory.mktemp("bundle") / "model.safetensors")
    return model, meta, path


def rewrite(src: Path, dst: Path, *, meta: dict[str, Any] | None = None, drop: str | None = None) -> Path:
    """Re-save a bundle with changed metadata or tensors, with a valid checksum (a crafted file)."""
    from safetensors import safe_open

    with safe_open(str(src), "pt") as f:
        metadata = dict(f.metadata())
    tensors = load_file(str(src))
    if drop is not None:
        del tensors[drop]
    if meta is not None:
        metadata["geopsp"] = json.dumps(meta)
    metadata["sha256"] = _digest(metadata["geopsp"], tensors)
    save_file(tensors, str(dst), metadata=metadata)
    return dst


def test_round_trip_identical_predictions(saved) -> None:
    model, meta, path = saved
    bundle = load_bundle(path)
    assert isinstance(bundle, Bundle)
    assert bundle.path == path
    assert bundle.meta == meta
    assert not bundle.model.training
    with pytest.raises(dataclasses.FrozenInstanceError):
        bundle.meta = meta  # type: ignore[misc]
    x = torch.randn(2, 3, 45, 53)
    with torch.no_grad():
        assert torch.equal(model(x), bundle.model(x))
    for (k, a), (k2, b) in zip(model.state_dict().items(), bundle.model.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)


def test_read_meta_and_inspect(saved) -> None:
    _, meta, path = saved
    assert read_bundle_meta(path) == meta
    info = inspect_bundle(path)
    assert info["format_version"] == 1
    assert info["meta"] == meta.to_dict()
    assert info["parameters"] == sum(p.numel() for p in build_model(SPEC).parameters())
    assert info["size_bytes"] == path.stat().st_size


def test_header_format(saved) -> None:
    from safetensors import safe_open

    _, meta, path = saved
    with safe_open(str(path), "pt") as f:
        md = f.metadata()
    assert md["format"] == BUNDLE_FORMAT
    assert json.loads(md["geopsp"]) == meta.to_dict()


def test_save_refuses_overwrite_and_mismatch(saved, tmp_path: Path) -> None:
    model, meta, path = saved
    with pytest.raises(OutputExistsError):
        save_bundle(model, meta, path)
    out = save_bundle(model, meta, tmp_path / "m.safetensors")
    save_bundle(model, meta, out, overwrite=True)
    four_bands = make_meta(SPEC.replace(in_channels=4))
    with pytest.raises(ModelError, match=r"encoder.conv1.weight has shape \(64, 3, 7, 7\)"):
        save_bundle(model, four_bands, tmp_path / "bad.safetensors")
    assert not (tmp_path / "bad.safetensors").exists()


def test_save_from_gpu_layout_and_imagenet_spec(tmp_path: Path) -> None:
    """A spec recorded with encoder_weights='imagenet' loads without any weights cache."""
    spec = SPEC.replace(encoder_weights="imagenet")
    model = build_model(SPEC).eval()
    path = save_bundle(model.to(memory_format=torch.channels_last), make_meta(spec), tmp_path / "i.safetensors")
    bundle = load_bundle(path)
    assert bundle.meta.spec.encoder_weights == "imagenet"


# --------------------------------------------------------------------------------------------
# Damaged and foreign files


def expect_error(path: Path, match: str) -> None:
    with pytest.raises(CheckpointError, match=match) as info:
        load_bundle(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("keep", [0, 4, 100, -1000])
def test_truncated(saved, tmp_path: Path, keep: int) -> None:
    data = saved[2].read_bytes()
    bad = tmp_path / "t.safetensors"
    bad.write_bytes(data[:keep])
    expect_error(bad, "truncated|empty|not valid JSON")
    with pytest.raises(CheckpointError):
        read_bundle_meta(bad)


def test_tampered_header_json(saved, tmp_path: Path) -> None:
    data = bytearray(saved[2].read_bytes())
    i = data.index(b'"__metadata__"')
    data[i] = ord("[")
    bad = tmp_path / "h.safetensors"
    bad.write_bytes(bytes(data))
    expect_error(bad, "not valid JSON")


def test_tampered_metadata_value(saved, tmp_path: Path) -> None:
    data = saved[2].read_bytes()
    assert data.count(b'\\"pixel_size\\": 10.0') == 1
    bad = tmp_path / "m.safetensors"
    bad.write_bytes(data.replace(b'\\"pixel_size\\": 10.0', b'\\"pixel_size\\": 20.0'))
    assert read_bundle_meta(bad).pixel_size == 20.0  # the header alone still parses
    expect_error(bad, "checksum mismatch")


def test_tampered_weights(saved, tmp_path: Path) -> None:
    data = bytearray(saved[2].read_bytes())
    data[-5] ^= 0xFF
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(bytes(data))
    expect_error(bad, "checksum mismatch")


def test_torch_save_file(saved, tmp_path: Path) -> None:
    bad = tmp_path / "model.pt"
    torch.save(saved[0].state_dict(), bad)
    expect_error(bad, "zip archive.*never unpickles")


class _Payload:
    """Unpickling this creates a file: the attack load_bundle must never run."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.target), "w"))


@pytest.mark.parametrize("name", ["evil.pkl", "evil.safetensors"])
def test_pickle_payload_not_executed(tmp_path: Path, name: str) -> None:
    marker = tmp_path / "pwned"
    bad = tmp_path / name
    bad.write_bytes(pickle.dumps(_Payload(marker), protocol=4))
    expect_error(bad, "pickle.*never unpickles")
    with pytest.raises(CheckpointError):
        read_bundle_meta(bad)
    assert not marker.exists()
    bad.write_bytes(pickle.dumps(_Payload(marker), protocol=0))  # text protocol: no magic byte
    expect_error(bad, "not a safetensors file|truncated")
    assert not marker.exists()


def test_plain_safetensors_without_metadata(tmp_path: Path) -> None:
    bad = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(bad))
    expect_error(bad, "without geopsp metadata")
    save_file({"w": torch.zeros(2)}, str(bad), metadata={"format": "pt"})
    expect_error(bad, "expected 'geopsp-bundle'")


def test_missing_file(tmp_path: Path) -> None:
    expect_error(tmp_path / "nope.safetensors", "cannot read bundle")


def test_wrong_band_count(saved, tmp_path: Path) -> None:
    meta = make_meta(SPEC.replace(in_channels=4)).to_dict()
    bad = rewrite(saved[2], tmp_path / "b.safetensors", meta=meta)
    expect_error(bad, r"4 bands.*encoder.conv1.weight has shape \(64, 3, 7, 7\), the model needs \(64, 4, 7, 7\)")


def test_wrong_class_count(saved, tmp_path: Path) -> None:
    meta = make_meta(SPEC.replace(num_classes=3)).to_dict()
    bad = rewrite(saved[2], tmp_path / "c.safetensors", meta=meta)
    expect_error(bad, "head.classifier.weight has shape")


def test_unknown_architecture(saved, tmp_path: Path) -> None:
    meta = saved[1].to_dict()
    meta["spec"]["arch"] = "segformer"
    bad = rewrite(saved[2], tmp_path / "a.safetensors", meta=meta)
    expect_error(bad, "unknown architecture 'segformer'")


def test_unknown_encoder(saved, tmp_path: Path) -> None:
    meta = saved[1].to_dict()
    meta["spec"]["encoder"] = "resnet19"
    bad = rewrite(saved[2], tmp_path / "e.safetensors", meta=meta)
    expect_error(bad, "unknown encoder 'resnet19'")


def test_missing_keys(saved, tmp_path: Path) -> None:
    bad = rewrite(saved[2], tmp_path / "k.safetensors", drop="head.classifier.bias")
    expect_error(bad, "1 missing tensors \\(head.classifier.bias\\)")


def test_bundle_with_unused_encoder_stages_still_loads(saved, tmp_path: Path) -> None:
    """A bundle written before geopsp dropped the stages a shallow encoder never runs."""
    from safetensors import safe_open
    from segmentation_models_pytorch.encoders import get_encoder

    model, _, path = saved
    assert model.encoder.geopsp_dropped_stages == ("layer3", "layer4")
    full = get_encoder("resnet18", in_channels=3, depth=3, weights=None, output_stride=8)
    extra = {f"encoder.{k}": v for k, v in full.state_dict().items() if k.startswith(("layer3.", "layer4."))}
    assert extra
    with safe_open(str(path), "pt") as f:
        metadata = dict(f.metadata())
    tensors = {**load_file(str(path)), **extra}
    metadata["sha256"] = _digest(metadata["geopsp"], tensors)
    old = tmp_path / "old.safetensors"
    save_file(tensors, str(old), metadata=metadata)
    assert old.stat().st_size > 5 * path.stat().st_size
    x = torch.randn(1, 3, 37, 41)
    with torch.no_grad():
        assert torch.equal(load_bundle(old).model(x), model(x))
    # Only the dropped stages are forgiven: any other stray tensor is still an error.
    tensors = {**load_file(str(path)), "head.stray": torch.zeros(2)}
    metadata["sha256"] = _digest(metadata["geopsp"], tensors)
    save_file(tensors, str(tmp_path / "stray.safetensors"), metadata=metadata)
    expect_error(tmp_path / "stray.safetensors", "1 unexpected tensors \\(head.stray\\)")


def test_newer_format_version(saved, tmp_path: Path) -> None:
    meta = saved[1].to_dict()
    meta["format_version"] = 99
    bad = rewrite(saved[2], tmp_path / "v.safetensors", meta=meta)
    expect_error(bad, "format version 99 is newer")


def test_invalid_metadata_values(saved, tmp_path: Path) -> None:
    meta = saved[1].to_dict()
    meta["classes"] = [{"id": 0, "name": "a"}, {"id": 0, "name": "b"}, {"id": 1, "name": "c"}, {"id": 2, "name": "d"}]
    bad = rewrite(saved[2], tmp_path / "i.safetensors", meta=meta)
    expect_error(bad, "invalid metadata")
    meta = saved[1].to_dict()
    del meta["normalization"]
    bad = rewrite(saved[2], tmp_path / "n.safetensors", meta=meta)
    expect_error(bad, "lacks normalization")


# --------------------------------------------------------------------------------------------
# CLI


def test_cli_create_and_info(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "m.safetensors"
    args = ["model", "create", "--bands", "4", "--classes", "3", "--out", str(out), "--dtype", "uint16"]
    result = runner.invoke(cli, [*args, "--band-names", "b,g,r,nir", "--tile", "256", "--overlap", "32"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(out)
    meta = read_bundle_meta(out)
    assert meta.spec.encoder == "resnet18" and meta.spec.in_channels == 4 and meta.spec.num_classes == 3
    assert meta.band_names == ("b", "g", "r", "nir") and meta.input_dtype == "uint16"
    assert meta.normalization == Normalization.for_dtype("uint16", 4)
    assert (meta.tile_size, meta.overlap, meta.provenance["trained"]) == (256, 32, False)
    load_bundle(out)

    result = runner.invoke(cli, ["model", "info", str(out)])
    assert result.exit_code == 0, result.output
    assert "resnet18" in result.output and "class_2" in result.output and "nir" in result.output

    result = runner.invoke(cli, ["model", "info", str(out), "--json"])
    assert result.exit_code == 0
    assert json.loads(result.output)["meta"] == meta.to_dict()


def test_cli_create_class_file_and_encoder(tmp_path: Path) -> None:
    classes = tmp_path / "classes.yaml"
    classes.write_text("classes:\n  - {id: 1, name: water, color: '#0000ff'}\n  - {id: 5, name: forest}\n")
    out = tmp_path / "m.safetensors"
    args = [
        "model",
        "create",
        "--bands",
        "13",
        "--classes",
        str(classes),
        "--encoder",
        "mobilenet_v2",
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    meta = read_bundle_meta(out)
    assert meta.classes.ids == [1, 5] and meta.classes[0].color == (0, 0, 255)
    assert meta.spec.encoder == "mobilenet_v2" and meta.spec.in_channels == 13


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    damaged = tmp_path / "d.safetensors"
    damaged.write_bytes(b"\x80\x04junk")
    with pytest.raises(SystemExit) as info:
        main(["model", "info", str(damaged)])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and err.count("\n") == 1 and str(damaged) in err

    args = ["model", "create", "--bands", "3", "--classes", "2", "--out", str(damaged)]
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 1
    assert "already exists" in capsys.readouterr().err

    with pytest.raises(SystemExit) as info:
        main([*args[:-1], str(tmp_path / "x.safetensors"), "--band-names", "a,b"])
    assert info.value.code == 2

    with pytest.raises(SystemExit) as info:
        main([*args[:-1], str(tmp_path / "y.safetensors"), "--encoder", "resnet19"])
    assert info.value.code == 1
    assert "unknown encoder" in capsys.readouterr().err
    assert not (tmp_path / "y.safetensors").exists()
