"""Data-parallel training: two real processes on the CPU (gloo), a tiny PSPNet and two tiny epochs.

One launch (starting processes costs about 10 s on two cores) trains three runs in the same
process group: an uninterrupted one, and one stopped after its first epoch and resumed.
"""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train import easy_data, tiny_config  # noqa: F401 - easy_data is a fixture

from geopsp.testing import run_cli
from geopsp.train.distributed import Ranks, launch


class Interrupt(Exception):
    pass


def _stop_after_first_epoch(event) -> None:
    if event.phase == "epoch" and event.epoch == 1:
        raise Interrupt


def _digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _config(root: Path):
    # 8 windows of 2: four batches an epoch, two steps on each of two ranks; four validation tiles
    return tiny_config(root, epochs=2, amp=False, device="cpu", sampling={"windows_per_epoch": 8})


def _rank(root: Path, straight: Path, resumed: Path) -> dict:
    """One rank's share of the test: returns what it wrote and the weights it ended with."""
    from geopsp.train import fit

    written: list[str] = []
    models: list[torch.nn.Module] = []

    def audit(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], (str, Path)) and any(m in str(args[1]) for m in "wax+"):
            written.append(str(args[0]))
        elif event in ("os.rename", "os.replace", "shutil.copyfile"):
            written.append(str(args[1]))

    def capture(module, args, output):
        if type(module).__name__ == "PSPNet" and all(module is not m for m in models):
            models.append(module)

    sys.addaudithook(audit)
    hook = torch.nn.modules.module.register_module_forward_hook(capture)
    try:
        fit(_config(root), straight)
        trained = [_digest(m.state_dict()) for m in models]
        models.clear()
        try:
            fit(_config(root), resumed, progress=_stop_after_first_epoch)
        except Interrupt:
            pass
        fit(_config(root), resumed, resume=True)
    finally:
        hook.remove()
    runs = (str(straight), str(resumed))
    return {"ranks": Ranks.current(), "written": [w for w in written if w.startswith(runs)], "weights": trained}


def _file_digest(path: Path) -> str:
    from safetensors.torch import load_file

    return _digest(load_file(str(path)))


@pytest.mark.timeout(300)  # a collective that waits for ever fails here, not after the 10-minute default
def test_two_ranks_train_together_write_once_and_resume_to_the_same_weights(easy_data):  # noqa: F811
    straight, resumed = easy_data / "straight", easy_data / "resumed"
    first, second = launch(2, _rank, easy_data, straight, resumed)
    assert (first["ranks"].rank, second["ranks"].rank) == (0, 1) and first["ranks"].world == 2
    # rank 0 alone writes; everything it writes lands in place under a final name
    assert second["written"] == []
    names = {Path(w).name for w in first["written"]}
    assert {"model.safetensors", "last.safetensors", "ema.safetensors", "train_summary.json"} <= names
    # the gradients were averaged: both ranks end with the same weights (and the same moving average) ...
    assert len(first["weights"]) == 2 and first["weights"] == second["weights"]
    # ... which are the weights rank 0 saved
    assert sorted(first["weights"]) == sorted(
        _file_digest(straight / n) for n in ("last.safetensors", "ema.safetensors")
    )
    # stopped after epoch 1 and resumed with the same number of ranks: the same run
    for name in ("last.safetensors", "ema.safetensors", "model.safetensors", "best.safetensors"):
        assert _file_digest(resumed / name) == _file_digest(straight / name), name
    summary = json.loads((straight / "train_summary.json").read_text())
    assert summary["ranks"] == 2 and summary["batch_size"] == {"per_rank": 2, "effective": 4}
    assert summary["epochs"] == 2 and summary["steps"] == 4  # two steps an epoch on each rank
    a, b = (list(csv.DictReader((run / "metrics.csv").read_text().splitlines())) for run in (straight, resumed))
    for row in (*a, *b):
        row.pop("seconds")
    assert len(a) == 2 and a == b


def test_gpus_beyond_the_visible_ones_is_one_line(easy_data, tmp_path):  # noqa: F811
    import yaml

    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump({"train": _config(easy_data).model_dump(mode="json")}))
    code, out, err = run_cli("train", "--config", cfg, "--out", tmp_path / "run", "--gpus", 64)
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert code == 2 and out == ""
    errors = [line for line in err.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and f"--gpus: 64 GPUs asked for, {visible} visible" in errors[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_torchrun_runs_the_cli_as_two_ranks(easy_data, tmp_path):  # noqa: F811
    import yaml

    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump({"train": _config(easy_data).model_dump(mode="json")}))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "geopsp", "train", "--config", str(cfg), "--out", str(out), "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)  # one JSON document: rank 0's alone
    assert summary["epochs_run"] == 2 and Path(summary["model"]).exists()
    assert proc.stderr.count("kept ") == 1
    assert json.loads((out / "train_summary.json").read_text())["ranks"] == 2


def _config_error_on_rank_1() -> None:
    from geopsp.errors import ConfigError

    if Ranks.current().rank == 1:
        raise ConfigError("bad value", key="train.epochs")
    torch.distributed.init_process_group("gloo")
    torch.distributed.barrier()  # waits for rank 1, which never comes: the launcher stops it


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_rank_s_geopsp_error_comes_back_as_itself():
    from geopsp.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^rank 1: train.epochs: bad value$"):
        launch(2, _config_error_on_rank_1)
