import subprocess
import sys
import time
from pathlib import Path

import pytest

GEOPSP = [sys.executable, "-m", "geopsp"]


def run(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GEOPSP, *args], capture_output=True, text=True, timeout=120, **kw)  # type: ignore[call-overload]


def test_help_is_instant_and_imports_no_torch() -> None:
    code = (
        "import sys, time; t=time.perf_counter(); from geopsp.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy=[m for m in ('torch','rasterio','geopandas','dask','segmentation_models_pytorch') if m in sys.modules]\n"
        "print('HEAVY', heavy, time.perf_counter()-t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("HEAVY"))
    assert "[]" in line, line
    assert "predict" in out.stdout and "sample-scene" in out.stdout


def test_version() -> None:
    from geopsp import __version__

    res = run("--version")
    assert res.returncode == 0 and __version__ in res.stdout


def test_geopsp_error_is_one_line_exit_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("predict:\n  tile_sise: 3\n")
    res = run("config", "validate", "--config", str(bad))
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "tile_size" in lines[0]
    assert "Traceback" not in res.stderr


def test_verbose_shows_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("predict:\n  tile_sise: 3\n")
    res = run("-v", "config", "validate", "--config", str(bad))
    assert res.returncode == 1 and "Traceback" in res.stderr


def test_usage_error_exit_2() -> None:
    res = run("config", "show", "--no-such-option")
    assert res.returncode == 2


def test_config_show_resolves_set() -> None:
    res = run("config", "show", "--set", "predict.tile_size=256")
    assert res.returncode == 0 and "tile_size: 256" in res.stdout


COMMANDS = ["predict", "vectorize", "preview", "train", "evaluate", "batch", "model", "sample-scene"]


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_has_help(cmd: str) -> None:
    t = time.perf_counter()
    res = run(cmd, "--help")
    assert res.returncode == 0, res.stderr
    assert "Usage:" in res.stdout
    assert time.perf_counter() - t < 60


def test_every_public_name_resolves() -> None:
    import geopsp

    for name in geopsp.__all__:
        assert getattr(geopsp, name) is not None, name
    assert callable(geopsp.segment_raster) and callable(geopsp.vectorize)
