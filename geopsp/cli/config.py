"""``geopsp config show|validate``."""

from __future__ import annotations

import click

from geopsp.cli.options import config_options, load_cli_config

__all__ = ["config"]


@click.group()
def config() -> None:
    """Show or validate the resolved configuration."""


@config.command("show")
@config_options
def show(config_path: str | None, set_items: tuple[str, ...]) -> None:
    """Print the resolved configuration (defaults < FILE < environment < --set) as YAML."""
    from geopsp.config.load import to_yaml

    click.echo(to_yaml(load_cli_config(config_path, set_items)), nl=False)


@config.command("validate")
@config_options
def validate(config_path: str | None, set_items: tuple[str, ...]) -> None:
    """Check a configuration; exit 1 with the offending key if it is invalid."""
    load_cli_config(config_path, set_items)
    click.echo(f"{config_path or 'defaults'}: ok")
