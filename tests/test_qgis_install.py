"""``geopsp qgis install|uninstall`` (geopsp.qgis_plugin) and the plugin's runner, without QGIS.

The plugin's runner (``geopsp_processing/runner.py``) imports neither QGIS nor geopsp, so it
runs here against the real ``python -m geopsp`` with a plain feedback object that records
what QGIS would be told.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest

from geopsp import __version__
from geopsp.qgis_plugin import CONFIG_NAME, PLUGIN_NAME, default_plugins_dir, install_plugin, plugin_source
from geopsp.testing import random_class_map, run_cli, write_geotiff


def test_install_records_this_python_and_is_idempotent(tmp_path, monkeypatch):
    monkeypatch.setenv("GDAL_DATA", str(tmp_path / "gdal-data"))
    plugins = tmp_path / "plugins"
    code, out, err = run_cli("qgis", "install", "--plugins-dir", plugins)
    assert code == 0, err
    target = plugins / PLUGIN_NAME
    assert out.strip() == str(target)
    assert "Plugins > Manage and Install Plugins > Installed > geopsp" in err
    config = json.loads((target / CONFIG_NAME).read_text())
    assert config["python"] == sys.executable and config["geopsp_version"] == __version__
    assert config["environment"]["GDAL_DATA"] == str(tmp_path / "gdal-data")
    metadata = (target / "metadata.txt").read_text()
    assert f"version={__version__}\n" in metadata and "qgisMinimumVersion=3.22\n" in metadata
    assert "hasProcessingProvider=yes" in metadata
    shipped = sorted(p.name for p in plugin_source().iterdir() if p.suffix in (".py", ".txt"))
    assert sorted(p.name for p in target.iterdir()) == sorted([*shipped, CONFIG_NAME])
    assert not [p for p in plugins.iterdir() if p != target]  # no staging folder left
    # the same install again changes nothing
    code, _, err = run_cli("qgis", "install", "--plugins-dir", plugins)
    assert code == 0 and "Already installed, unchanged" in err


def test_install_refuses_a_different_folder_without_overwrite(tmp_path):
    plugins = tmp_path / "plugins"
    foreign = plugins / PLUGIN_NAME
    foreign.mkdir(parents=True)
    (foreign / "keep.txt").write_text("someone else's")
    code, _, err = run_cli("qgis", "install", "--plugins-dir", plugins)
    assert code == 1
    assert err.strip() == (
        f"Error: {foreign}: already holds a folder that is not geopsp's plugin; pass --overwrite to replace it"
    )
    assert (foreign / "keep.txt").is_file()
    # a geopsp plugin recorded for another Python is different too
    assert run_cli("qgis", "install", "--plugins-dir", plugins, "--overwrite")[0] == 0
    config = json.loads((foreign / CONFIG_NAME).read_text())
    install_plugin(plugins, overwrite=True, config={**config, "python": "/opt/other/bin/python"})
    code, _, err = run_cli("qgis", "install", "--plugins-dir", plugins)
    assert code == 1 and "the geopsp" in err and "/opt/other/bin/python" in err and "--overwrite" in err
    code, _, err = run_cli("qgis", "install", "--plugins-dir", plugins, "--overwrite")
    assert code == 0 and "Replaced" in err
    assert json.loads((foreign / CONFIG_NAME).read_text())["python"] == sys.executable
    assert sorted(p.name for p in plugins.iterdir()) == [PLUGIN_NAME]


def test_uninstall_removes_only_geopsps_plugin(tmp_path):
    plugins = tmp_path / "plugins"
    code, _, err = run_cli("qgis", "uninstall", "--plugins-dir", plugins)
    assert code == 1 and "no geopsp plugin is installed there" in err
    assert run_cli("qgis", "install", "--plugins-dir", plugins)[0] == 0
    code, out, err = run_cli("qgis", "uninstall", "--plugins-dir", plugins)
    assert code == 0 and out.strip() == str(plugins / PLUGIN_NAME)
    assert not (plugins / PLUGIN_NAME).exists()
    (plugins / PLUGIN_NAME).mkdir()
    code, _, err = run_cli("qgis", "uninstall", "--plugins-dir", plugins)
    assert code == 1 and "not geopsp's plugin; remove it by hand" in err
    assert (plugins / PLUGIN_NAME).is_dir()


def test_default_plugins_dir_per_platform(tmp_path):
    env = {"APPDATA": str(tmp_path / "Roaming")}
    win = default_plugins_dir(platform="win32", environ=env, home=tmp_path)
    assert win == tmp_path / "Roaming" / "QGIS" / "QGIS3" / "profiles" / "default" / "python" / "plugins"
    custom = default_plugins_dir(platform="linux", environ={"QGIS_CUSTOM_CONFIG_PATH": str(tmp_path / "q")})
    assert custom == tmp_path / "q" / "profiles" / "default" / "python" / "plugins"


def test_the_plugin_imports_neither_geopsp_nor_torch():
    """QGIS's Python has neither; the plugin talks to geopsp only through a child process."""
    banned = {"geopsp", "torch", "numpy", "rasterio", "click"}
    for path in plugin_source().glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            assert not {n.split(".")[0] for n in names} & banned, f"{path.name} imports {names}"


class Feedback:
    """What a QgsProcessingFeedback is told, recorded (the runner's whole interface to QGIS)."""

    def __init__(self) -> None:
        self.progress: list[float] = []
        self.info: list[str] = []
        self.warnings: list[str] = []

    def setProgress(self, value: float) -> None:
        self.progress.append(value)

    def pushInfo(self, text: str) -> None:
        self.info.append(text)

    def pushWarning(self, text: str) -> None:
        self.warnings.append(text)

    def pushCommandInfo(self, text: str) -> None:
        self.info.append(text)

    def pushDebugInfo(self, text: str) -> None:
        pass

    def isCanceled(self) -> bool:
        return False


def test_runner_returns_outputs_and_raises_geopsps_error(tmp_path):
    from geopsp.qgis_plugin.geopsp_processing.runner import GeopspFailed, load_environment, run_geopsp

    plugins = tmp_path / "plugins"
    assert run_cli("qgis", "install", "--plugins-dir", plugins)[0] == 0
    config = load_environment(plugins / PLUGIN_NAME)
    raster = write_geotiff(tmp_path / "c.tif", random_class_map(60, 70, n_classes=3, seed=1)[None], nodata=255)
    feedback = Feedback()
    out = run_geopsp(["vectorize", str(raster), "--out", str(tmp_path / "v.gpkg")], feedback, config=config)
    assert out["vector"] == str(tmp_path / "v.gpkg") and Path(out["vector"]).is_file()
    assert feedback.progress[-1] == 100.0
    assert any(line.startswith("geopsp ") and "vectorize" in line for line in feedback.info)
    with pytest.raises(GeopspFailed) as failed:
        run_geopsp(["vectorize", str(raster), "--out", str(tmp_path / "v.gpkg")], Feedback(), config=config)
    code, _, err = run_cli("vectorize", raster, "--out", tmp_path / "v.gpkg")
    assert code == 1 and err.strip() == f"Error: {failed.value}"
    (plugins / PLUGIN_NAME / CONFIG_NAME).unlink()
    with pytest.raises(GeopspFailed, match="geopsp qgis install"):
        load_environment(plugins / PLUGIN_NAME)
