"""The test suite's own guard: a nearly full temporary disk stops the run with one clear line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_full_temporary_disk_stops_the_run_with_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "GEOPSP_TEST_NEEDED_FREE_GIB": "1e9"}  # more than any disk has free
    basetemp = tmp_path / "bt"
    args = ["-q", "-p", "no:cacheprovider", f"--basetemp={basetemp}", "tests/test_atomic.py"]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 3, done.stdout + done.stderr
    out = done.stdout + done.stderr
    assert "GiB free, the test suite needs about" in out and "--basetemp" in out
    assert "passed" not in out  # no test ran
