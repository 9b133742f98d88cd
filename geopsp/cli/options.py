"""Options shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

__all__ = [
    "config_options",
    "device_option",
    "grid_options",
    "grid_overrides",
    "input_scale_option",
    "load_cli_config",
    "overwrite_option",
    "runtime_option",
]

F = TypeVar("F", bound=Callable[..., Any])


def overwrite_option(f: F) -> F:
    """``--overwrite``: replace existing outputs."""
    return click.option("--overwrite", is_flag=True, help="Replace existing outputs.")(f)


def _device_name(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """Check ``--device`` (a usage error, exit code 2)."""
    from geopsp.device import check_device_name

    try:
        return None if value is None else check_device_name(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def device_option(f: F) -> F:
    """``--device auto|cpu|cuda|cuda:N`` (``predict.device``; :mod:`geopsp.device`)."""
    return click.option(
        "--device",
        default=None,
        metavar="DEVICE",
        callback=_device_name,
        help="Where the model runs: auto, cpu, cuda or cuda:N [default: auto].",
    )(f)


def runtime_option(f: F) -> F:
    """``--runtime auto|torch|onnxruntime`` (``predict.runtime``; :mod:`geopsp.inference.runtime` decides ``auto``)."""
    return click.option(
        "--runtime",
        type=click.Choice(["auto", "torch", "onnxruntime"]),
        default=None,
        help="What runs the model [default: predict.runtime, auto: the fastest with torch fp32's classes here].",
    )(f)


def input_scale_option(f: F) -> F:
    """``--input-scale SRC_MIN SRC_MAX DST_MIN DST_MAX`` (``predict.input_scale``; :mod:`geopsp.inference.cast`)."""
    return click.option(
        "--input-scale",
        "input_scale",
        type=float,
        nargs=4,
        default=None,
        metavar="SRC_MIN SRC_MAX DST_MIN DST_MAX",
        help="Map the scene's values linearly before the model, as gdal_translate -scale does, as tiles are read "
        "(no copy); rounded for integer models. Without it a scene of another type than the model's is accepted "
        "when its values fit.",
    )(f)


def grid_options(f: F) -> F:
    """``--resolution``, ``--crs``, ``--aoi``: the grid a scene is read on (:mod:`geopsp.io.grid`)."""
    f = click.option(
        "--aoi",
        default=None,
        metavar="MINX,MINY,MAXX,MAXY|FILE",
        help="Read and write only this area: a lon/lat box or a vector file's polygons (any CRS); outside is nodata.",
    )(f)
    f = click.option(
        "--crs", default=None, metavar="CRS", help="Read the scene in this CRS (e.g. EPSG:32633), warped on the fly."
    )(f)
    f = click.option(
        "--resolution",
        default=None,
        metavar="native|model|SIZE",
        help="Pixel size to read at: native [default], model (the bundle's) or a size in CRS units.",
    )(f)
    return f


def qa_options(f: F) -> F:
    """``--qa`` and ``--qa-layer``: the QA layers written beside the class raster (``predict.qa``)."""
    from geopsp.encoding import QA_LAYERS

    f = click.option(
        "--qa-layer",
        "qa_layers",
        multiple=True,
        type=click.Choice(QA_LAYERS),
        help="Write this QA layer (repeatable): probability, margin, entropy or disagreement.",
    )(f)
    f = click.option(
        "--qa",
        "qa_all",
        is_flag=True,
        default=False,
        help="Write every QA layer: probability, margin, entropy, disagreement (uint8 COGs with QGIS ramps).",
    )(f)
    return f


def qa_overrides(qa_all: bool, qa_layers: tuple[str, ...]) -> dict[str, object]:
    """Return the config override of :func:`qa_options` (none when neither was given)."""
    from geopsp.encoding import QA_LAYERS

    if qa_all:
        return {"predict.qa": list(QA_LAYERS)}
    return {"predict.qa": list(qa_layers)} if qa_layers else {}


def grid_overrides(resolution: str | None, crs: str | None, aoi: str | None) -> dict[str, object]:
    """Turn :func:`grid_options` into config overrides (a number given as text becomes a float)."""
    res: object = resolution
    if resolution is not None and resolution not in ("native", "model"):
        try:
            res = float(resolution)
        except ValueError:
            raise click.BadParameter(
                f"{resolution!r}: give native, model or a pixel size such as 10", param_hint="--resolution"
            ) from None
    return {"predict.resolution": res, "predict.crs": crs, "predict.aoi": aoi}


def config_options(f: F) -> F:
    """``--config FILE`` and repeatable ``--set key.path=value``."""
    f = click.option(
        "--set",
        "set_items",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override a config key, e.g. --set predict.tile_size=256 (repeatable).",
    )(f)
    f = click.option(
        "--config",
        "config_path",
        type=click.Path(),  # load_config names a missing file or a directory in one line
        default=None,
        help="YAML config file (see `geopsp config show`).",
    )(f)
    return f


def load_cli_config(config_path: str | None, set_items: tuple[str, ...], **extra: Any) -> Any:
    """Resolve the config from ``--config``, ``--set`` and explicit CLI options.

    ``extra`` maps dotted keys to values from dedicated options; ``None`` values are ignored,
    so options left unset fall back to the file and defaults.
    """
    from geopsp.config import load_config

    items = list(set_items)
    overrides = [f"{k}={_yaml_scalar(v)}" for k, v in extra.items() if v is not None]
    return load_config(config_path, overrides=items + overrides)


def _yaml_scalar(value: Any) -> str:
    import json

    return json.dumps(value) if not isinstance(value, str) else value
