"""The ``geopsp`` click group: logging, error handling, lazily loaded subcommands, plugins."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import signal
import sys
import threading
import warnings
from importlib.metadata import entry_points
from typing import Any, NoReturn

import click

from geopsp import __version__
from geopsp.errors import GeopspError, GeopspWarning

__all__ = ["cli", "describe_error", "main"]

# name -> "module:attribute". Modules are imported only when the command runs or its help is shown.
COMMANDS: dict[str, str] = {
    "predict": "geopsp.cli.predict:predict",
    "vectorize": "geopsp.cli.vectorize:vectorize",
    "preview": "geopsp.cli.preview:preview",
    "train": "geopsp.cli.train:train",
    "evaluate": "geopsp.cli.evaluate:evaluate",
    "batch": "geopsp.cli.batch:batch",
    "model": "geopsp.cli.model:model",
    "sample-scene": "geopsp.cli.sample:sample_scene",
    "config": "geopsp.cli.config:config",
    "demo": "geopsp.cli.demo:demo",
    "qgis": "geopsp.cli.qgis:qgis",
}

SHORT_HELP: dict[str, str] = {
    "predict": "Segment scenes into class rasters (tiled, blended, streamed).",
    "vectorize": "Turn a class raster into clean land-use polygons.",
    "preview": "Render a scene with its classes blended over it to PNG.",
    "train": "Train a PSPNet from a YAML config.",
    "evaluate": "Score a prediction against reference labels.",
    "batch": "Run predict over many scenes on a dask cluster.",
    "model": "Create and inspect model bundles; fetch encoder weights.",
    "sample-scene": "Write a synthetic labelled scene for demos and tests.",
    "config": "Show or validate the resolved configuration.",
    "demo": "Run the whole job on synthetic data (the quick start).",
    "qgis": "Install the QGIS Processing provider into a QGIS profile.",
}

logger = logging.getLogger("geopsp")


class LazyGroup(click.Group):
    """A click group that imports each subcommand only when it is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = set(super().list_commands(ctx)) | set(_available())
        return sorted(names)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None:
            return cmd
        target = _available().get(cmd_name)
        if target is None:
            return None
        return _load(cmd_name, target)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Short help from a static table keeps `geopsp --help` instant (no torch import).
        rows = [(name, SHORT_HELP.get(name, "")) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _plugins() -> dict[str, str]:
    out: dict[str, str] = {}
    for ep in entry_points(group="geopsp.commands"):
        out[ep.name] = ep.value
    return out


def _available() -> dict[str, str]:
    avail: dict[str, str] = {}
    for name, target in COMMANDS.items():
        module = target.split(":")[0]
        if importlib.util.find_spec(module) is not None:
            avail[name] = target
    for name, target in _plugins().items():
        avail.setdefault(name, target)
    return avail


def _load(name: str, target: str) -> click.Command | None:
    module_name, _, attr = target.partition(":")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except Exception as exc:  # a broken plugin must not break the CLI
        warnings.warn(f"geopsp: cannot load command {name!r} from {target}: {exc}", stacklevel=2)
        return None
    return obj if isinstance(obj, click.Command) else None


def configure_logging(verbosity: int) -> None:
    """Send geopsp's log records to stderr at a level set by ``-v``/``-q``."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    if verbosity < 0:
        level = logging.ERROR
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s" if verbosity > 1 else "%(message)s"))
    root = logging.getLogger("geopsp")
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)
    warnings.formatwarning = _format_warning
    warn_logger = logging.getLogger("py.warnings")
    warn_logger.handlers[:] = [handler]


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="geopsp")
@click.option("-v", "--verbose", count=True, help="More output; -v info with tracebacks on error, -vv debug.")
@click.option("-q", "--quiet", count=True, help="Less output.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: int) -> None:
    """geopsp: PSPNet segmentation of large geospatial rasters.

    Scenes in, georeferenced class maps, clean polygons and QGIS styles out.
    """
    ctx.ensure_object(dict)
    ctx.obj["verbosity"] = verbose - quiet
    configure_logging(verbose - quiet)


def _format_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None
) -> str:
    """One line per warning: geopsp's own say what and how to fix it; others keep their category."""
    if issubclass(category, GeopspWarning):
        return f"Warning: {message}"
    return f"Warning: {category.__name__}: {message}"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that cleanup runs exactly as for Ctrl-C."""


def _on_sigterm(signum: int, frame: object) -> None:
    # A second SIGTERM during cleanup terminates at once (the default action).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise Terminated


def _install_sigterm_handler() -> Any:
    """Turn SIGTERM into :class:`Terminated`; return the handler to restore (None: nothing installed)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_DFL:
        return None
    signal.signal(signal.SIGTERM, _on_sigterm)
    return previous


def main(argv: list[str] | None = None) -> Any:
    """Run the CLI; a :class:`GeopspError` becomes one line on stderr and exit code 1.

    Ctrl-C exits with 130 and SIGTERM with 143, both after the same cleanup (temporary
    outputs removed, nothing left under a final name).
    """
    previous = _install_sigterm_handler()
    try:
        return _run(argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(argv: list[str] | None) -> Any:
    try:
        return cli.main(args=argv, prog_name="geopsp", standalone_mode=False)
    except click.exceptions.Abort as exc:
        # click turns KeyboardInterrupt (Ctrl-C, and SIGTERM via Terminated) into Abort
        if isinstance(exc.__cause__, KeyboardInterrupt):
            _interrupted(exc.__cause__)
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt as exc:
        _interrupted(exc)
    except GeopspError as exc:
        if _verbosity() > 0:
            logger.exception("geopsp failed")
        click.echo(f"Error: {describe_error(exc)}", err=True)
        sys.exit(1)
    except ModuleNotFoundError as exc:
        if _missing_extra(exc) is None:
            raise
        if _verbosity() > 0:
            logger.exception("geopsp failed")
        click.echo(f"Error: {describe_error(exc)}", err=True)
        sys.exit(1)


_EXTRAS = {
    "torch": "pip install 'geopsp[torch]' (or run an exported .onnx model with 'geopsp[onnx]')",
    "torchvision": "pip install 'geopsp[torch]'",
    "segmentation_models_pytorch": "pip install 'geopsp[torch]'",
    "onnxruntime": "pip install 'geopsp[onnx]'",
    "onnx": "pip install 'geopsp[export]'",
    "onnxscript": "pip install 'geopsp[export]'",
    "pystac": "pip install 'geopsp[export]'",
}
"""The install extra that brings each optional module (a missing one is one line, not a traceback)."""


def _missing_extra(exc: ModuleNotFoundError) -> str | None:
    return _EXTRAS.get((exc.name or "").split(".")[0])


def describe_error(exc: BaseException) -> str:
    """Return the one line the CLI prints for ``exc`` (after ``Error:``; ``--progress json``'s message).

    Examples
    --------
    >>> from geopsp.errors import ConfigError
    >>> describe_error(ConfigError("tile_size must be positive"))
    'tile_size must be positive'
    >>> describe_error(Terminated())
    'Terminated; no partial outputs were left under final names.'
    """
    if isinstance(exc, KeyboardInterrupt):
        what = "Terminated" if isinstance(exc, Terminated) else "Interrupted"
        return f"{what}; no partial outputs were left under final names."
    if isinstance(exc, click.ClickException):
        return exc.format_message()
    if isinstance(exc, ModuleNotFoundError) and (extra := _missing_extra(exc)) is not None:
        return f"{exc.name} is not installed, and this command needs it: {extra}"
    if isinstance(exc, GeopspError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _interrupted(exc: BaseException) -> NoReturn:
    click.echo(describe_error(exc), err=True)
    sys.exit(143 if isinstance(exc, Terminated) else 130)


def _verbosity() -> int:
    ctx = click.get_current_context(silent=True)
    if ctx is not None and isinstance(ctx.obj, dict):
        return int(ctx.obj.get("verbosity", 0))
    return sum(1 for a in sys.argv if a.startswith("-v") and not a.startswith("--v")) or 0
