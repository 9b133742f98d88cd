"""``geopsp qgis install|uninstall``: the QGIS Processing plugin in a QGIS profile."""

from __future__ import annotations

import click

from geopsp.cli.options import overwrite_option

__all__ = ["qgis"]

_PLUGINS_DIR = click.option(
    "--plugins-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="A QGIS profile's python/plugins folder [default: the default profile's, on this platform].",
)


@click.group("qgis")
def qgis() -> None:
    """Install geopsp's QGIS Processing provider (geopsp:segment, geopsp:vectorize, geopsp:evaluate)."""


@qgis.command("install")
@_PLUGINS_DIR
@overwrite_option
def install(plugins_dir: str | None, overwrite: bool) -> None:
    """Copy the QGIS plugin into a QGIS profile, recording this Python as the one that runs geopsp.

    Run it from the environment that has geopsp (and torch or onnxruntime): QGIS's own
    Python has neither, so the plugin runs `python -m geopsp` with this environment's
    Python. Run it again after moving or upgrading the environment. Prints the installed
    folder on stdout.
    """
    from geopsp.qgis_plugin import install_plugin

    done = install_plugin(plugins_dir, overwrite=overwrite)
    verb = {"installed": "Installed", "replaced": "Replaced", "unchanged": "Already installed, unchanged:"}
    click.echo(
        f"{verb[done.status]} the geopsp {done.config['geopsp_version']} QGIS plugin in {done.path}\n"
        f"  it runs geopsp with {done.config['python']}\n"
        "Enable it in QGIS: Plugins > Manage and Install Plugins > Installed > geopsp (restart QGIS if it is open);\n"
        "its algorithms are in the Processing Toolbox under geopsp.",
        err=True,
    )
    click.echo(str(done.path))


@qgis.command("uninstall")
@_PLUGINS_DIR
def uninstall(plugins_dir: str | None) -> None:
    """Remove the QGIS plugin that `geopsp qgis install` put into a QGIS profile."""
    from geopsp.qgis_plugin import uninstall_plugin

    removed = uninstall_plugin(plugins_dir)
    click.echo(f"Removed the geopsp QGIS plugin from {removed}", err=True)
    click.echo(str(removed))
