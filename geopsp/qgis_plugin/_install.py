"""Install the QGIS plugin folder into a QGIS profile (the implementation of :mod:`geopsp.qgis_plugin`)."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from geopsp.errors import OutputError, OutputExistsError
from geopsp.qgis_plugin.geopsp_processing.runner import CONFIG_NAME, ENVIRONMENT_KEYS

__all__ = [
    "CONFIG_NAME",
    "CONFIG_SCHEMA",
    "PLUGIN_NAME",
    "InstalledPlugin",
    "default_plugins_dir",
    "install_plugin",
    "plugin_config",
    "plugin_source",
    "uninstall_plugin",
]  # the package re-exports these

PLUGIN_NAME = "geopsp_processing"
"""The plugin's folder name under ``python/plugins`` (QGIS's plugin id)."""

CONFIG_SCHEMA = "geopsp.qgis-plugin/1"
"""The version tag of ``geopsp_env.json`` (:data:`CONFIG_NAME`, defined by the plugin's runner, which reads it)."""

_SKIP = ("__pycache__", "*.pyc", "*.pyo", CONFIG_NAME)


@dataclass(frozen=True, slots=True)
class InstalledPlugin:
    """What :func:`install_plugin` did.

    Attributes
    ----------
    path : Path
        The installed plugin folder (``<plugins_dir>/geopsp_processing``).
    config : dict
        The recorded environment written to ``path / "geopsp_env.json"``.
    status : {"installed", "replaced", "unchanged"}
        ``unchanged``: the same plugin for the same environment was already there.
    """

    path: Path
    config: dict[str, Any]
    status: Literal["installed", "replaced", "unchanged"]


def plugin_source() -> Path:
    """Return the plugin folder shipped inside the geopsp package."""
    return Path(__file__).resolve().parent / PLUGIN_NAME


def default_plugins_dir(
    *, platform: str | None = None, environ: Mapping[str, str] | None = None, home: str | os.PathLike[str] | None = None
) -> Path:
    r"""Return the ``python/plugins`` folder of QGIS 3's default profile on this platform.

    ``$QGIS_CUSTOM_CONFIG_PATH/profiles/default/...`` when that variable is set (QGIS then
    keeps its profiles there); else, under the user's home,
    ``.local/share/QGIS/QGIS3/...`` (Linux), ``Library/Application Support/QGIS/QGIS3/...``
    (macOS) or ``%APPDATA%\QGIS\QGIS3\...`` (Windows).

    Examples
    --------
    >>> default_plugins_dir(platform="linux", environ={}, home="/home/ana").as_posix()
    '/home/ana/.local/share/QGIS/QGIS3/profiles/default/python/plugins'
    >>> default_plugins_dir(platform="darwin", environ={}, home="/Users/ana").as_posix()
    '/Users/ana/Library/Application Support/QGIS/QGIS3/profiles/default/python/plugins'
    """
    env = os.environ if environ is None else environ
    where = Path(home) if home is not None else Path.home()
    plat = sys.platform if platform is None else platform
    tail = Path("profiles", "default", "python", "plugins")
    if env.get("QGIS_CUSTOM_CONFIG_PATH"):
        return Path(env["QGIS_CUSTOM_CONFIG_PATH"]) / tail
    if plat.startswith("win"):
        base = Path(env["APPDATA"]) if env.get("APPDATA") else where / "AppData" / "Roaming"
        return base / "QGIS" / "QGIS3" / tail
    if plat == "darwin":
        return where / "Library" / "Application Support" / "QGIS" / "QGIS3" / tail
    data = Path(env["XDG_DATA_HOME"]) if env.get("XDG_DATA_HOME") else where / ".local" / "share"
    return data / "QGIS" / "QGIS3" / tail


def plugin_config(*, python: str | None = None, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Return the environment record an installed plugin runs geopsp with (this process's by default)."""
    from geopsp import __version__

    env = os.environ if environ is None else environ
    return {
        "schema": CONFIG_SCHEMA,
        "python": python if python is not None else sys.executable,
        "geopsp_version": __version__,
        "geopsp_package": str(Path(__file__).resolve().parents[1]),
        "environment": {k: env[k] for k in ENVIRONMENT_KEYS if env.get(k)},
    }


def install_plugin(
    plugins_dir: str | os.PathLike[str] | None = None,
    *,
    overwrite: bool = False,
    config: dict[str, Any] | None = None,
) -> InstalledPlugin:
    """Copy the plugin into ``plugins_dir`` and record the environment that runs geopsp.

    The copy is made under a temporary name next to its destination and renamed into place,
    so QGIS never sees half a plugin.

    Parameters
    ----------
    plugins_dir : str or os.PathLike, optional
        A QGIS profile's ``python/plugins`` folder (made if missing); default:
        :func:`default_plugins_dir`.
    overwrite : bool, default False
        Replace a different ``geopsp_processing`` folder already there (another geopsp
        version or environment, or not a geopsp plugin at all).
    config : dict, optional
        The environment record (default: :func:`plugin_config`, this Python).

    Returns
    -------
    InstalledPlugin

    Raises
    ------
    OutputExistsError
        A different plugin folder is there and ``overwrite`` is False.
    OutputError
        The folder cannot be written.
    """
    from geopsp.io.atomic import temp_name

    root = Path(plugins_dir) if plugins_dir is not None else default_plugins_dir()
    target = root / PLUGIN_NAME
    record = config if config is not None else plugin_config()
    status: Literal["installed", "replaced"] = "installed"
    if target.exists() or target.is_symlink():
        if _same_install(target, record):
            return InstalledPlugin(target, record, "unchanged")
        if not overwrite:
            raise OutputExistsError(f"{target}: already holds {_describe(target)}; pass --overwrite to replace it")
        status = "replaced"
    staging = temp_name(target)
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.copytree(plugin_source(), staging, ignore=shutil.ignore_patterns(*_SKIP))
        _stamp_version(staging / "metadata.txt", record["geopsp_version"])
        (staging / CONFIG_NAME).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        if status == "replaced":
            old = temp_name(target)
            os.replace(target, old)
            os.replace(staging, target)
            _remove(old)
        else:
            os.rename(staging, target)
    except OSError as exc:
        raise OutputError(f"{target}: cannot install the QGIS plugin ({exc}); check the folder's permissions") from exc
    finally:
        if staging.exists():
            _remove(staging)
    return InstalledPlugin(target, record, status)


def uninstall_plugin(plugins_dir: str | os.PathLike[str] | None = None) -> Path:
    """Remove the installed plugin from ``plugins_dir`` (default: :func:`default_plugins_dir`).

    Returns
    -------
    Path
        The folder that was removed.

    Raises
    ------
    OutputError
        Nothing is installed there, or the folder there is not geopsp's plugin (left alone).
    """
    root = Path(plugins_dir) if plugins_dir is not None else default_plugins_dir()
    target = root / PLUGIN_NAME
    if not target.is_dir():
        raise OutputError(f"{target}: no geopsp plugin is installed there; give its folder with --plugins-dir")
    if _read_config(target) is None:
        raise OutputError(f"{target}: {_describe(target)} is there, not geopsp's plugin; remove it by hand")
    _remove(target)
    return target


def _read_config(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("schema") == CONFIG_SCHEMA else None


def _describe(folder: Path) -> str:
    found = _read_config(folder)
    if found is None:
        return "a folder that is not geopsp's plugin"
    return f"the geopsp {found.get('geopsp_version')} plugin for {found.get('python')}"


def _same_install(target: Path, record: Mapping[str, Any]) -> bool:
    """Whether ``target`` holds exactly this plugin (same files) recorded for this environment."""
    if _read_config(target) != dict(record) or target.is_symlink():
        return False
    src = plugin_source()
    for path in src.rglob("*"):
        if any(part == "__pycache__" for part in path.parts) or path.suffix in (".pyc", ".pyo") or path.is_dir():
            continue
        rel = path.relative_to(src)
        other = target / rel
        if rel.as_posix() == "metadata.txt":
            if not other.is_file() or other.read_text(encoding="utf-8") != _stamped(path, record["geopsp_version"]):
                return False
        elif not other.is_file() or not filecmp.cmp(path, other, shallow=False):
            return False
    return True


def _stamped(metadata: Path, version: str) -> str:
    lines = metadata.read_text(encoding="utf-8").splitlines(keepends=True)
    return "".join(f"version={version}\n" if ln.startswith("version=") else ln for ln in lines)


def _stamp_version(metadata: Path, version: str) -> None:
    """Write geopsp's version into the copy's ``metadata.txt`` (QGIS shows it in the plugin manager)."""
    metadata.write_text(_stamped(metadata, version), encoding="utf-8")


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    else:
        shutil.rmtree(path)
