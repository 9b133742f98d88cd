"""Shared pytest fixtures."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from geopsp.testing import sample_data_dir
from geopsp.testing_servers import MotoS3Server

SHARED_DATA = sample_data_dir()
SYSTEM_PYTHON = Path("/usr/bin/python3")
"""Where Debian's python3-qgis lives (QGIS's Python bindings are in the system Python)."""

# One full run writes about 0.45 GB under its basetemp at its peak (measured); ask for room to spare.
NEEDED_FREE_BYTES = int(float(os.environ.get("GEOPSP_TEST_NEEDED_FREE_GIB", "2")) * 1024**3)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Stop at once, with one clear line, when the temporary folder's disk is nearly full.

    Without this a full disk shows up as a handful of unrelated-looking failures deep inside
    safetensors or GDAL ("No space left on device") halfway through the run.
    """
    where = Path(session.config.option.basetemp or tempfile.gettempdir())
    probe = where if where.exists() else where.parent
    free = shutil.disk_usage(probe).free
    if free < NEEDED_FREE_BYTES:
        pytest.exit(
            f"{probe}: only {free / 1024**3:.1f} GiB free, the test suite needs about "
            f"{NEEDED_FREE_BYTES / 1024**3:.0f} GiB for its temporary files; free some space "
            f"or run with --basetemp on a larger disk",
            returncode=3,
        )


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep the ONNX exports ``--runtime onnxruntime`` caches out of the user's ~/.cache."""
    os.environ["GEOPSP_CACHE_DIR"] = str(tmp_path_factory.mktemp("geopsp-cache"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real sample data folder ($GEOPSP_DATA, else ../shared/data); skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA}; set GEOPSP_DATA to its folder")
    return SHARED_DATA


@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoS3Server]:
    """A real S3 API (moto's server mode) on 127.0.0.1; ``AWS_ENDPOINT_URL`` points at it meanwhile."""
    with MotoS3Server() as server:
        yield server


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fast-preset bundle for 3-band scenes: 4 classes, 64 px tiles with 8 px overlap (cluster and batch tests)."""
    from geopsp.testing import run_cli

    path = tmp_path_factory.mktemp("tiny-model") / "m.safetensors"
    code, _, err = run_cli(
        "model", "create", "--preset", "fast", "--encoder", "resnet18", "--bands", "3", "--classes", "4",
        "--tile", "64", "--overlap", "8", "--out", path,
    )  # fmt: skip
    assert code == 0, err
    return path


@pytest.fixture(scope="session")
def qgis_env() -> dict[str, str]:
    """The environment for the system Python running QGIS: offscreen, none of this venv's Python variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["QT_QPA_PLATFORM"] = "offscreen"
    return env


@pytest.fixture(scope="session")
def qgis_python(qgis_env: dict[str, str]) -> Path:
    """``/usr/bin/python3`` when it imports ``qgis.core``; skips the test with the reason otherwise."""
    if not SYSTEM_PYTHON.exists():
        pytest.skip("no /usr/bin/python3; QGIS's Python bindings live in the system Python")
    probe = subprocess.run(
        [str(SYSTEM_PYTHON), "-c", "import qgis.core"], capture_output=True, text=True, env=qgis_env, timeout=120
    )
    if probe.returncode != 0:
        reason = (probe.stderr.strip().splitlines() or ["import failed"])[-1]
        pytest.skip(f"/usr/bin/python3 cannot import qgis.core ({reason}); run scripts/system-deps.sh")
    return SYSTEM_PYTHON
