"""The QGIS Processing plugin shipped inside geopsp, and its installer (``geopsp qgis install``).

The plugin folder :data:`PLUGIN_NAME` next to this module is a QGIS 3 plugin (a Processing
provider, ``geopsp``). It imports neither geopsp nor torch, which QGIS's Python lacks: each
algorithm runs ``python -m geopsp`` with the Python that installed it. :func:`install_plugin`
copies the folder into a QGIS profile's ``python/plugins`` and writes ``geopsp_env.json``
into the copy, recording that Python (:data:`sys.executable`), geopsp's version and the
variables that select its libraries (``PYTHONPATH``, ``GDAL_DATA``, ``PROJ_LIB`` ...).

.. versionadded:: 0.1.0
"""

from geopsp.qgis_plugin._install import (
    CONFIG_NAME,
    CONFIG_SCHEMA,
    PLUGIN_NAME,
    InstalledPlugin,
    default_plugins_dir,
    install_plugin,
    plugin_config,
    plugin_source,
    uninstall_plugin,
)

__all__ = [
    "CONFIG_NAME",
    "CONFIG_SCHEMA",
    "InstalledPlugin",
    "PLUGIN_NAME",
    "default_plugins_dir",
    "install_plugin",
    "plugin_config",
    "plugin_source",
    "uninstall_plugin",
]
