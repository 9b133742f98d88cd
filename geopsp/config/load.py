"""Load and merge configuration: packaged defaults < YAML file < environment < ``--set``."""

from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from geopsp.config.paths import PATH_KEYS, PathOrigin, resolve_path
from geopsp.config.schema import GeopspConfig
from geopsp.errors import ConfigError

__all__ = ["ENV_PREFIX", "load_config", "merge", "parse_set_items", "to_yaml"]

ENV_PREFIX = "GEOPSP_"


def _defaults() -> dict[str, Any]:
    text = resources.files("geopsp.config").joinpath("defaults.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text) or {}
    return dict(data)


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``base``.

    Examples
    --------
    >>> merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}})
    {'a': {'b': 1, 'c': 3}}
    """
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set a key below a value ({dotted})", key=dotted)
        node = child
    node[parts[-1]] = value


def parse_set_items(items: Sequence[str]) -> dict[str, Any]:
    """Parse ``key.path=value`` strings into a nested mapping (values parsed as YAML scalars).

    Examples
    --------
    >>> parse_set_items(["predict.tile_size=256", "predict.tta=d4"])
    {'predict': {'tile_size': 256, 'tta': 'd4'}}
    """
    tree: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key.path=value, got {item!r}")
        _set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw.strip() else None)
    return tree


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    sections = set(GeopspConfig.model_fields)
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        dotted = name[len(ENV_PREFIX) :].lower().replace("__", ".")
        if dotted.split(".")[0] not in sections:
            continue
        _set_dotted(tree, dotted, yaml.safe_load(raw) if raw.strip() else None)
    return tree


def _env_name(dotted: str) -> str:
    return ENV_PREFIX + dotted.upper().replace(".", "__")


_MISSING = object()


def _get_dotted(tree: Mapping[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _resolve_paths(
    tree: dict[str, Any],
    layers: Sequence[tuple[Mapping[str, Any], str, Path | None]],
    environ: Mapping[str, str],
) -> dict[str, PathOrigin]:
    """Apply :mod:`geopsp.config.paths`' rule to the path keys of the merged ``tree``, in place.

    ``layers`` are (tree, source, config folder or ``None``) from the lowest to the highest
    priority; the layer that set a key decides what its relative path is relative to.
    """
    cwd = Path.cwd()
    origins: dict[str, PathOrigin] = {}
    for key in PATH_KEYS:
        value = _get_dotted(tree, key)
        if not isinstance(value, str):
            continue  # unset, None, or a list of classes
        setter = next((lay for lay in reversed(layers) if _get_dotted(lay[0], key) is not _MISSING), None)
        if setter is None:
            continue  # a packaged default
        _, source, folder = setter
        if source == "env":
            source = _env_name(key)
        resolved, origins[key] = resolve_path(
            value,
            key=key,
            source=source,
            from_file=folder is not None,
            base=folder if folder is not None else cwd,
            environ=environ,
            cwd=cwd,
        )
        _set_dotted(tree, key, resolved)
    return origins


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError("config file not found; check the path", path=str(path)) from exc
    except IsADirectoryError as exc:
        raise ConfigError("is a directory, expected a YAML file", path=str(path)) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file ({exc}); check the file", path=str(path)) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"invalid YAML{where}: {getattr(exc, 'problem', exc)}", path=str(path)) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping of sections at the top level, got {type(data).__name__}", path=str(path))
    return data


def _fields_at(model: type[BaseModel], loc: Sequence[str | int]) -> list[str]:
    """Return the valid field names of the (sub)model addressed by ``loc``."""
    current: Any = model
    for part in loc:
        field = current.model_fields.get(part) if isinstance(part, str) else None
        annotation = getattr(field, "annotation", None)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            current = annotation
        else:
            break
    return list(current.model_fields)


def validation_to_config_error(
    exc: ValidationError, model: type[BaseModel], *, path: str | None = None, prefix: str = ""
) -> ConfigError:
    """Turn the first pydantic error into a one-line :class:`ConfigError` with a suggestion."""
    err = exc.errors()[0]
    loc = [p for p in err["loc"] if isinstance(p, (str, int))]
    dotted = ".".join([prefix, *map(str, loc)] if prefix else [str(p) for p in loc])
    if err["type"] == "extra_forbidden":
        valid = _fields_at(model, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(sorted(valid))}"
        return ConfigError(f"unknown key; {hint}", path=path, key=dotted or None)
    msg = err["msg"].removeprefix("Value error, ")
    got = err.get("input")
    got_s = "" if isinstance(got, Mapping) else f" (got {got!r})"
    return ConfigError(f"{msg}{got_s}", path=path, key=dotted or None)


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    environ: Mapping[str, str] | None = None,
) -> GeopspConfig:
    """Resolve the configuration.

    Path keys (:data:`geopsp.config.paths.PATH_KEYS`: ``train.data.root``, ``train.classes``,
    ``train.out``, ``train.model.encoder_weights``, ``batch.tls.*``) come back absolute: a value
    written in the file is relative to the file's folder, one from ``overrides`` or the
    environment to the working directory, after ``~`` and ``${VAR}`` / ``${VAR:-default}`` expansion (the rule of
    :mod:`geopsp.config.paths`). ``train.data.images``, ``labels`` and ``vector`` are expanded and
    stay relative to ``train.data.root``.

    Parameters
    ----------
    path : path, optional
        A YAML file with any of the sections ``predict``, ``vectorize``, ``train``, ``batch``.
    overrides : sequence of str or mapping
        ``key.path=value`` strings (the CLI's ``--set``) or a nested mapping; applied last.
    environ : mapping, optional
        Environment to read ``GEOPSP_SECTION__KEY`` and ``${VAR}`` variables from (default:
        ``os.environ``).

    Returns
    -------
    GeopspConfig
        The validated, frozen configuration.

    Raises
    ------
    ConfigError
        Naming the file and the dotted key, with a did-you-mean suggestion for unknown keys, or
        the variable a path uses that is not set.
    """
    env = os.environ if environ is None else environ
    source: str | None = None
    layers: list[tuple[Mapping[str, Any], str, Path | None]] = []
    if path is not None:
        source = str(path)
        layers.append((_read_yaml(Path(path)), source, Path(path).resolve().parent))
    layers.append((_from_env(env), "env", None))
    layers.append((parse_set_items(overrides) if not isinstance(overrides, Mapping) else overrides, "--set", None))
    tree = _defaults()
    for layer, _, _ in layers:
        tree = merge(tree, layer)
    tree = copy.deepcopy(tree)
    origins = _resolve_paths(tree, layers, env)
    try:
        config = GeopspConfig.model_validate(tree)
    except ValidationError as exc:
        raise validation_to_config_error(exc, GeopspConfig, path=source) from exc
    if "train.data.root" in origins:  # for the message when the folder is missing
        config.train.data._root_origin = origins["train.data.root"]
    return config


def to_yaml(config: BaseModel) -> str:
    """Dump a config model as YAML (the form written next to every output)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
