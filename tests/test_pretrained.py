"""Pretrained encoders from local files: reading without pickle, key mapping, first-conv adaptation,
clear refusals, the fetch command (against loopback servers only) and `geopsp train --encoder-weights`."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import json
import os
import socket
import threading
import time

import pytest
import torch
import torchvision
import yaml
from click.testing import CliRunner
from safetensors.torch import save_file

from geopsp.cli.main import cli, main
from geopsp.errors import ConfigError, ModelError
from geopsp.model import build_model, load_bundle, load_encoder_weights, spec_from_preset
from geopsp.model import download as download_mod
from geopsp.model.pretrained import PretrainedInfo, adapt_first_conv, get_pretrained_info, read_state_dict

# Full-depth ResNet-18 (every stage built) and the `fast` cut (layer3 and layer4 dropped).
FULL = dict(encoder_depth=5, output_stride=32, aux=False, decoder_channels=16)
CUT = dict(decoder_channels=16)


def spec(bands=3, weights=None, encoder="resnet18", **kw):
    return spec_from_preset(
        "fast", encoder=encoder, in_channels=bands, num_classes=2, encoder_weights=weights, **{**CUT, **kw}
    )


def random_state(net: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """A state dict unlike any fresh init: every float tensor drawn anew (variances kept positive)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, t in net.state_dict().items():
        if t.is_floating_point():
            t = torch.randn(t.shape, generator=gen)
            if key.endswith("running_var"):
                t = t.abs() + 0.5
        out[key] = t.clone()
    return out


@pytest.fixture(scope="module")
def r18() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return random_state(torchvision.models.resnet18(weights=None), seed=1)


@pytest.fixture(scope="module")
def files(tmp_path_factory, r18):
    """The same ResNet-18 weights as .pth, .safetensors, with a `module.` prefix, and nested under 'state_dict'."""
    root = tmp_path_factory.mktemp("weights")
    out = {"pth": root / "r18.pth", "safetensors": root / "r18.safetensors"}
    torch.save(r18, out["pth"])
    save_file(r18, str(out["safetensors"]))
    out["module"] = root / "r18_dp.pt"
    torch.save({f"module.{k}": v for k, v in r18.items()}, out["module"])
    out["nested"] = root / "r18_ckpt.pth"
    torch.save({"epoch": 90, "state_dict": {f"backbone.{k}": v for k, v in r18.items()}}, out["nested"])
    return out


def encoder_of(model):
    return model.encoder


# --------------------------------------------------------------------------- loading


@pytest.mark.parametrize("kind", ["pth", "safetensors", "module", "nested"])
def test_file_tensors_land_bit_equal_in_the_encoder(files, r18, kind):
    model = build_model(spec(weights=str(files[kind]), **FULL))
    info = get_pretrained_info(model)
    assert isinstance(info, PretrainedInfo) and info.path == files[kind]
    enc = encoder_of(model).state_dict()
    assert set(enc) == set(r18) - {"fc.weight", "fc.bias"}
    for key, value in enc.items():
        assert torch.equal(value, r18[key]), key
    assert info.tensors == len(enc)
    assert info.as_provenance()["skipped"] == {"fc": 2}
    assert info.sha256 == hashlib.sha256(files[kind].read_bytes()).hexdigest()
    assert info.first_conv == "as is"


def test_timm_state_dict_loads(tmp_path):
    timm = pytest.importorskip("timm")
    state = random_state(timm.create_model("resnet18", pretrained=False), seed=2)
    path = tmp_path / "timm_r18.safetensors"
    save_file(state, str(path))
    model = build_model(spec(weights=str(path), **FULL))
    for key, value in encoder_of(model).state_dict().items():
        assert torch.equal(value, state[key]), key


def test_stages_the_cut_model_lacks_are_skipped(files, r18):
    model = build_model(spec(weights=str(files["pth"])))  # fast preset: depth 3
    info = get_pretrained_info(model)
    skipped = info.as_provenance()["skipped"]
    assert set(skipped) == {"fc", "layer3", "layer4"}
    assert skipped["layer4"] == sum(k.startswith("layer4.") for k in r18)
    assert torch.equal(encoder_of(model).layer2[1].conv2.weight, r18["layer2.1.conv2.weight"])


def test_named_weights_and_none_carry_no_file_info():
    model = build_model(spec())
    assert get_pretrained_info(model) is None


@pytest.mark.parametrize("bands", [1, 2, 4, 10])
def test_first_conv_follows_the_documented_rule(files, r18, bands):
    rgb = r18["conv1.weight"]
    if bands == 1:
        expected = rgb[:, 0:1] + rgb[:, 1:2] + rgb[:, 2:3]
    else:
        expected = torch.stack([rgb[:, i % 3] for i in range(bands)], dim=1) * (3.0 / bands)
    model = build_model(spec(bands=bands, weights=str(files["safetensors"])))
    conv = encoder_of(model).conv1.weight
    assert conv.shape == (64, bands, 7, 7)
    torch.testing.assert_close(conv.detach(), expected, rtol=0, atol=1e-6)
    assert torch.equal(encoder_of(model).layer1[0].conv1.weight, r18["layer1.0.conv1.weight"])
    info = get_pretrained_info(model)
    assert info.first_conv == ("summed RGB to 1 band" if bands == 1 else f"inflated RGB to {bands} bands")


def test_inflation_keeps_the_response_to_equal_bands_when_n_is_a_multiple_of_3(r18):
    rgb = r18["conv1.weight"]
    x3 = torch.full((1, 3, 7, 7), 0.7)
    for bands in (1, 6, 9):
        xn = torch.full((1, bands, 7, 7), 0.7)
        w = adapt_first_conv(rgb, bands)
        torch.testing.assert_close(torch.nn.functional.conv2d(xn, w), torch.nn.functional.conv2d(x3, rgb))


def test_a_file_with_the_models_band_count_loads_as_is(tmp_path, r18):
    state = dict(r18, **{"conv1.weight": torch.randn(64, 4, 7, 7)})
    path = tmp_path / "r18_4band.pth"
    torch.save(state, path)
    model = build_model(spec(bands=4, weights=str(path)))
    assert torch.equal(encoder_of(model).conv1.weight, state["conv1.weight"])
    with pytest.raises(ModelError, match=r"conv1\.weight has 4 input bands; geopsp adapts RGB"):
        build_model(spec(bands=5, weights=str(path)))


def test_smp_architectures_take_files_too(files, r18):
    model = build_model(spec(weights=str(files["pth"]), arch="unet", output_stride=32, encoder_depth=5, aux=False))
    assert torch.equal(model.model.encoder.layer4[1].conv1.weight, r18["layer4.1.conv1.weight"])


# --------------------------------------------------------------------------- refusals


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    return msg


def test_wrong_architectures_fail_with_one_clear_line(tmp_path, files, r18):
    torch.manual_seed(0)
    r34 = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), r34)
    with pytest.raises(ModelError) as err:
        build_model(spec(weights=str(r34), **FULL))
    msg = one_line(err)
    assert str(r34) in msg and "layer1.2." in msg and "more blocks" in msg and "resnet18" in msg
    # A narrower network: the first mismatching key and both shapes.
    narrow = dict(r18, **{"layer1.0.conv1.weight": torch.zeros(32, 64, 3, 3)})
    path = tmp_path / "narrow.safetensors"
    save_file(narrow, str(path))
    with pytest.raises(ModelError) as err:
        build_model(spec(weights=str(path)))
    assert "layer1.0.conv1.weight has shape (32, 64, 3, 3) in the file and (64, 64, 3, 3) in the model" in one_line(err)
    # A shallower one: ResNet-18 weights into ResNet-34.
    with pytest.raises(ModelError) as err:
        build_model(spec(weights=str(files["pth"]), encoder="resnet34", **FULL))
    assert "lacks 'layer1.2." in one_line(err)
    # Not a ResNet at all.
    other = tmp_path / "vgg_like.pth"
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Linear(8, 2)).state_dict(), other)
    with pytest.raises(ModelError) as err:
        build_model(spec(weights=str(other)))
    assert "not a ResNet state dict" in one_line(err) and "'0.weight'" in str(err.value)


def test_pickled_objects_are_refused_without_running_them(tmp_path, r18):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": r18["conv1.weight"], "payload": Payload()}, path)
    with pytest.raises(ModelError) as err:
        read_state_dict(path)
    msg = one_line(err)
    assert msg.startswith(f"{path}: refused: the file holds a Python object (posix.mkdir)") and "weights_only" in msg
    assert not marker.exists()
    whole = tmp_path / "whole_model.pth"
    torch.save(torch.nn.Conv2d(3, 3, 1), whole)
    with pytest.raises(
        ModelError, match=r"refused: the file holds a Python object \(torch\.nn\.modules\.conv\.Conv2d\)"
    ):
        read_state_dict(whole)


def test_missing_unreadable_and_odd_files(tmp_path, files):
    with pytest.raises(ModelError) as err:
        build_model(spec(weights=str(tmp_path / "nope.pth")))
    assert "nope.pth: encoder weights file not found" in one_line(err)
    (tmp_path / "junk.pth").write_bytes(b"not a torch file at all")
    with pytest.raises(ModelError) as err:
        read_state_dict(tmp_path / "junk.pth")
    assert "junk.pth: cannot read as a torch state dict" in one_line(err)
    (tmp_path / "junk.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(ModelError) as err:
        read_state_dict(tmp_path / "junk.safetensors")
    assert "junk.safetensors: cannot read as safetensors" in one_line(err)
    (tmp_path / "w.bin").write_bytes(b"")
    with pytest.raises(ModelError, match=r"unsupported encoder weights file type '\.bin'"):
        read_state_dict(tmp_path / "w.bin")
    (tmp_path / "dir.pth").mkdir()
    with pytest.raises(ModelError, match="is a folder"):
        read_state_dict(tmp_path / "dir.pth")
    (tmp_path / "cut.pth").write_bytes(files["pth"].read_bytes()[:1000])
    with pytest.raises(ModelError) as err:
        read_state_dict(tmp_path / "cut.pth")
    assert "cut.pth: cannot read as a torch state dict (RuntimeError: PytorchStreamReader" in one_line(err)
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(ModelError, match="holds a list, not a state dict"):
        read_state_dict(tmp_path / "list.pt")


def test_non_resnet_models_are_refused(files):
    with pytest.raises(ModelError, match="load into ResNet encoders"):
        load_encoder_weights(torch.nn.Conv2d(3, 3, 1), files["pth"])


# --------------------------------------------------------------------------- fetch-weights


@pytest.fixture
def restore_logging():
    """The CLI points geopsp's log handler at the current stderr; put the old handlers back."""
    import logging

    logger = logging.getLogger("geopsp")
    handlers, level = logger.handlers[:], logger.level
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)


@contextlib.contextmanager
def serve(folder):
    """A real HTTP server on 127.0.0.1 serving ``folder``; yields its base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fetch_offline_says_so_in_one_line_and_fast(tmp_path, monkeypatch, capsys, restore_logging):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    base = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("GEOPSP_WEIGHTS_URL", base)
    started = time.monotonic()
    with pytest.raises(SystemExit) as exit_info:
        main(["model", "fetch-weights", "resnet18", "--timeout", "2"])
    assert exit_info.value.code == 1
    assert time.monotonic() - started < 10
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"Error: cannot download resnet18 weights from {base}/resnet18-f37072fd.pth: no network")
    assert "pass --encoder-weights PATH" in lines[0]
    assert not list((tmp_path / "torch").rglob("*.pth"))


def test_fetch_downloads_into_the_torch_hub_cache(tmp_path, monkeypatch, r18):
    """timm source: no name to fake; the file lands in $TORCH_HOME/hub/checkpoints and trains."""
    pytest.importorskip("timm")
    srv = tmp_path / "srv"
    remote = srv / "timm" / "resnet18.a1_in1k" / "resolve" / "main"
    remote.mkdir(parents=True)
    save_file(r18, str(remote / "model.safetensors"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    runner = CliRunner()
    with serve(srv) as base:
        res = runner.invoke(cli, ["model", "fetch-weights", "resnet18", "--source", "timm", "--base-url", base])
    assert res.exit_code == 0, res.output
    path = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18.a1_in1k.safetensors"
    assert res.stdout.strip() == str(path)
    assert path.read_bytes() == (remote / "model.safetensors").read_bytes()
    model = build_model(spec(weights=res.stdout.strip()))
    assert torch.equal(encoder_of(model).bn1.running_var, r18["bn1.running_var"])
    # Already cached: no server needed.
    res = runner.invoke(cli, ["model", "fetch-weights", "resnet18", "--source", "timm", "--base-url", base])
    assert res.exit_code == 0 and res.stdout.strip() == str(path)


def test_fetch_checks_the_hash_in_torchvision_names(tmp_path, monkeypatch, files):
    srv = tmp_path / "srv"
    srv.mkdir()
    data = files["pth"].read_bytes()
    (srv / "resnet18-f37072fd.pth").write_bytes(data)  # not torchvision's file
    cache = tmp_path / "cache"
    with serve(srv) as base:
        with pytest.raises(ModelError, match=r"sha256 [0-9a-f]{12}\.\.\., not f37072fd\.\.\. as the file name says"):
            download_mod.fetch_weights("resnet18", base_url=base, cache_dir=cache)
        assert not cache.exists() or not any(cache.iterdir())
        with pytest.raises(ModelError, match=r"resnet34-b627a593\.pth: HTTP 404 File not found; on a machine"):
            download_mod.fetch_weights("resnet34", base_url=base, cache_dir=cache)
        # A file whose name carries its own hash, as torchvision's do, is accepted.
        named = f"resnet18-{hashlib.sha256(data).hexdigest()[:8]}.pth"
        (srv / named).write_bytes(data)
        monkeypatch.setattr(download_mod, "_remote_file", lambda name, source: (named, named))
        path = download_mod.fetch_weights("resnet18", base_url=base, cache_dir=cache)
        assert path == cache / named and path.read_bytes() == data


def test_fetch_rejects_unknown_names():
    with pytest.raises(ConfigError, match=r"no downloadable weights for encoder 'vgg16'; choose one of \['resnet18'"):
        download_mod.weights_url("vgg16")


# --------------------------------------------------------------------------- geopsp train


@pytest.mark.filterwarnings("ignore::geopsp.errors.TrainingDataWarning")  # the tiny scenes lack classes
def test_train_with_encoder_weights_records_the_file_and_loads_without_it(tmp_path, monkeypatch, r18, restore_logging):
    from geopsp.synthetic import SYNTHETIC_CLASSES, make_scene

    data = tmp_path / "data"
    for name, size, seed in (("scene_train", 96, 0), ("scene_val", 64, 1)):
        make_scene(
            data / "images" / f"{name}.tif",
            labels_path=data / "labels" / f"{name}.tif",
            width=size,
            height=size,
            bands=4,
            dtype="uint16",  # 4-band uint8 GeoTIFFs get an alpha band (RGBA); these keep NIR as data
            seed=seed,
        )
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    weights = weights_dir / "r18.safetensors"
    save_file(r18, str(weights))
    train = {
        "data": {"layout": "scenes", "root": "data", "images": "images/*.tif", "labels": "labels/{name}"},
        "classes": SYNTHETIC_CLASSES.to_list(),
        "split": {"val": ["scene_val"]},
        "sampling": {"window": 32, "batch_size": 2, "windows_per_epoch": 2, "grid": 16},
        "normalization": {"windows": 2},
        "model": {"preset": "fast", "encoder": "resnet18", "decoder_channels": 16, "encoder_weights": None},
        "epochs": 1,
        "val_tile": 64,
        "threads": 1,
    }
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump({"train": train}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    runner = CliRunner()

    # The key written in the config file is relative to the file, not to the working directory.
    train["model"]["encoder_weights"] = "weights/r18.safetensors"
    in_file = tmp_path / "train_weights.yaml"
    in_file.write_text(yaml.safe_dump({"train": train}))
    train["model"]["encoder_weights"] = None
    res = runner.invoke(cli, ["train", "--config", str(in_file), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["spec"]["encoder_weights"] == str(weights)
    # From --set it is relative to the working directory, where it was typed.
    res = runner.invoke(
        cli,
        ["train", "--config", str(cfg), "--set", "train.model.encoder_weights=../weights/r18.safetensors", "--dry-run"],
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["spec"]["encoder_weights"] == str(weights)
    # A missing file fails at once, naming it.
    res = runner.invoke(cli, ["train", "--config", str(cfg), "--encoder-weights", "r18.pth", "--dry-run"])
    assert isinstance(res.exception, ModelError)
    assert str(elsewhere / "r18.pth") in str(res.exception) and "not found" in str(res.exception)

    out = tmp_path / "run"
    res = runner.invoke(
        cli, ["train", "--config", str(cfg), "--encoder-weights", str(weights), "--out", str(out), "--no-progress"]
    )
    assert res.exit_code == 0, res.output
    record = load_bundle(out / "best.safetensors").meta.provenance["encoder_weights"]
    assert record["file"] == "r18.safetensors"
    assert record["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert record["first_conv"] == "inflated RGB to 4 bands"
    assert set(record["skipped"]) == {"fc", "layer3", "layer4"}

    weights.unlink()
    bundle = load_bundle(out / "last.safetensors")
    assert bundle.meta.spec.in_channels == 4 and bundle.meta.provenance["encoder_weights"] == record
    # --resume starts from the bundle and keeps the record, though the file is gone.
    res = runner.invoke(
        cli,
        [
            *("train", "--config", str(cfg), "--encoder-weights", str(weights), "--out", str(out), "--resume"),
            *("--set", "train.epochs=2", "--no-progress"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert load_bundle(out / "last.safetensors").meta.provenance["encoder_weights"] == record
