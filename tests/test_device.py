"""geopsp.device: the one place that turns auto/cpu/cuda/cuda:N into a torch device."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from geopsp.config import load_config
from geopsp.device import check_device_name, resolve_device
from geopsp.errors import ConfigError


def test_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("name", ["gpu", "cuda:", "cuda:x", "CPU", "mps", ""])
def test_unknown_names_are_refused(name):
    with pytest.raises(ValueError, match="use auto, cpu, cuda or cuda:N"):
        check_device_name(name)
    with pytest.raises(ConfigError, match=r"^predict\.device: unknown device"):
        resolve_device(name, key="predict.device")


def test_cuda_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("cuda", "cuda:0"):
        with pytest.raises(ConfigError, match="CUDA is not available; use cpu or auto"):
            resolve_device(name, key="train.device")
    assert resolve_device("auto") == torch.device("cpu")


def test_cuda_index_must_exist(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda")
    msg = r"'cuda:2' requested but this machine has 2 CUDA device\(s\); use cuda:0\.\.cuda:1"
    with pytest.raises(ConfigError, match=msg):
        resolve_device("cuda:2")


def test_config_accepts_cuda_index_and_names_the_key():
    cfg = load_config(overrides=["predict.device=cuda:1", "train.device=cpu"])
    assert (cfg.predict.device, cfg.train.device) == ("cuda:1", "cpu")
    with pytest.raises(ConfigError, match=r"train\.device.*unknown device 'gpu'"):
        load_config(overrides=["train.device=gpu"])


def test_cli_device_is_a_usage_error():
    from geopsp.cli.main import cli

    res = CliRunner().invoke(cli, ["predict", "a.tif", "--model", "m.safetensors", "--out", "o", "--device", "gpu"])
    assert res.exit_code == 2
    assert "unknown device 'gpu'" in res.output
