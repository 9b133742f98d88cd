"""The device check script (bench/gpu_check.py): its correctness part runs here on the CPU, all of it on a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"


def _run(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), "--work", str(tmp_path / "work"), *args],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_device_check_correctness_and_speed_run_on_the_cpu(tmp_path):
    result = _run(
        tmp_path, "--device", "cpu", "--quick", "--parts", "correctness", "speed", "--size", "640", "--presets", "fast"
    )
    checks = result["correctness"]["checks"]
    names = " | ".join(c["check"] for c in checks)
    for want in ("fast uint8", "fast uint16 10-band", "paper uint8", "paper uint16", "TTA flip", "strips stitched"):
        assert want in names
    assert result["correctness"]["passed"] and all(c["passed"] for c in checks)
    # the batched, threaded path equals the one-tile reference exactly on the same device
    assert all(c.get("agreement", 1.0) == 1.0 for c in checks)
    speed = result["speed"]["fast"]
    assert speed["model_only_mpx_per_s"] > 0 and speed["end_to_end_mpx_per_s"] > 0
    assert speed["batch_size"] == 4 and speed["peak_gpu_mb"] is None
    assert set(speed["host_stage_ms_per_mp"]) == {"read", "preprocess", "write", "finalize_output"}
    secs = speed["seconds"]
    assert secs["tiles_loop"] + secs["finalize_output"] <= secs["total"] + 1e-3


@pytest.mark.gpu
def test_device_check_passes_on_cuda(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    result = _run(tmp_path, "--device", "cuda", "--quick", "--parts", "correctness")
    assert result["correctness"]["passed"], result["correctness"]["checks"]
