"""Paths in a configuration: what a relative path is relative to, ``~`` and ``${VAR}``.

The one rule, applied by :func:`geopsp.config.load_config` to the path keys
(:data:`PATH_KEYS`) before validation, so a loaded config holds absolute paths:

* a path **written in a config file** is relative to that file's folder, wherever the command
  runs (as in docker-compose or mkdocs);
* a path **from** ``--set`` **or a** ``GEOPSP_SECTION__KEY`` **variable** is relative to the
  working directory: it was typed where the user stands;
* ``~`` at the start is the home folder; ``${NAME}`` and ``$NAME`` are environment variables,
  ``${NAME:-default}`` takes ``default`` when ``NAME`` is unset or empty, ``$$`` is a ``$``.
  A variable used without a default must be set. When a value *starts* with a variable whose
  value (from the environment) is a relative path, that part is relative to the working
  directory like any other environment value; a ``:-default`` is text of the file;
* ``train.data.images``, ``labels`` and ``vector`` are relative to ``train.data.root`` (after
  the same expansion; absolute values are used as they are).

``GEOPSP_DATA`` (:data:`DATA_ENV`) names the folder holding the datasets. The example configs
refer to it as ``${GEOPSP_DATA:-../../shared/data}``: the variable where set, else
``shared/data`` beside the checkout the config belongs to (the config sits in
``<checkout>/configs/``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from geopsp.errors import ConfigError

__all__ = [
    "DATA_ENV",
    "PATH_KEYS",
    "WEIGHTS_SUFFIXES",
    "PathOrigin",
    "expand_vars",
    "is_weights_path",
    "resolve_path",
]

DATA_ENV = "GEOPSP_DATA"
"""Environment variable naming the folder that holds the datasets (the sample data)."""

PATH_KEYS: dict[str, Literal["base", "root"]] = {
    "train.data.root": "base",
    "train.data.images": "root",
    "train.data.labels": "root",
    "train.data.vector": "root",
    "train.classes": "base",
    "train.out": "base",
    "train.model.encoder_weights": "base",
    "batch.tls.ca_file": "base",
    "batch.tls.cert": "base",
    "batch.tls.key": "base",
}
"""Config keys holding paths: ``base`` ones are made absolute (against the config file's folder
or the working directory), ``root`` ones stay relative to ``train.data.root``."""

WEIGHTS_SUFFIXES = (".safetensors", ".pth", ".pt")
"""File suffixes of the encoder state dicts :func:`geopsp.model.pretrained.read_state_dict` reads."""

_VAR = re.compile(
    r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<dflt>:-[^}]*)?\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*)|(?P<dollar>\$))"
)


def is_weights_path(value: str | None) -> bool:
    """Return whether an ``encoder_weights`` value names a file rather than a cached weight name.

    A value is a path when it contains a path separator or ends in one of :data:`WEIGHTS_SUFFIXES`.

    Examples
    --------
    >>> is_weights_path("imagenet"), is_weights_path("resnet18.pth"), is_weights_path("w/r18")
    (False, True, True)
    """
    if not value:
        return False
    seps = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    return any(s in value for s in seps) or value.lower().endswith(WEIGHTS_SUFFIXES)


@dataclass(frozen=True, slots=True)
class PathOrigin:
    """Where a path value of a config came from, for messages that say how to fix it.

    Attributes
    ----------
    key : str
        Dotted config key (``train.data.root``).
    raw : str
        The value as written.
    source : str
        The config file (as given), ``--set``, or the ``GEOPSP_SECTION__KEY`` variable.
    from_file : bool
        Whether ``raw`` was written in the config file ``source``.
    base : Path or None
        The folder a relative value was taken from; ``None`` when the value was absolute.
    relative_to : {"config", "cwd"}
        What ``base`` is: the config file's folder or the working directory.
    variables : tuple of (str, str or None)
        Environment variables the value uses, with their values (``None``: unset).
    """

    key: str
    raw: str
    source: str
    from_file: bool
    base: Path | None
    relative_to: Literal["config", "cwd"] = "cwd"
    variables: tuple[tuple[str, str | None], ...] = ()

    def describe(self) -> str:
        """One clause: the value as written, where from, the variables and the folder it is relative to.

        Examples
        --------
        >>> PathOrigin("train.data.root", "data", "--set", False, Path("/work")).describe()
        "'data' from --set, relative to the working directory /work"
        """
        text = f"{self.raw!r}" if self.from_file else f"{self.raw!r} from {self.source}"
        if self.variables:
            text += " (" + ", ".join(f"{n}={v}" if v is not None else f"{n} unset" for n, v in self.variables) + ")"
        if self.base is not None:
            folder = "the config file's folder" if self.relative_to == "config" else "the working directory"
            text += f", relative to {folder} {self.base}"
        return text

    def fix(self) -> str:
        """Say what to do when the path does not exist (the end of a one-line message).

        Examples
        --------
        >>> PathOrigin("train.data.root", "data", "--set", False, Path("/work")).fix()
        'check the path given with --set'
        """
        alternative = f"--set {self.key}=PATH (relative to the working directory)"
        if any(name == DATA_ENV for name, _ in self.variables):
            return f"put the data there, set {DATA_ENV} to the folder that holds it, or pass {alternative}"
        if self.from_file:
            return f"fix {self.key} in the config file or pass {alternative}"
        return f"check the path given with {self.source}"


def expand_vars(value: str, environ: Mapping[str, str]) -> tuple[str, bool]:
    """Expand ``${NAME}``, ``$NAME``, ``${NAME:-default}`` and ``$$`` in ``value``.

    Returns
    -------
    text : str
        The expanded value.
    env_relative : bool
        Whether the value starts with a variable whose (environment) value is a relative
        path: that part is relative to the working directory.

    Raises
    ------
    ConfigError
        For a variable that is unset and has no default, or a ``${`` that is not closed.

    Examples
    --------
    >>> expand_vars("${DATA:-../data}/s2", {})
    ('../data/s2', False)
    >>> expand_vars("$DATA/s2", {"DATA": "here"})
    ('here/s2', True)
    >>> expand_vars("cost$$.tif", {})
    ('cost$.tif', False)
    """
    env_relative = False
    missing: list[str] = []

    def substitute(m: re.Match[str]) -> str:
        nonlocal env_relative
        if m["dollar"]:
            return "$"
        name = m["braced"] or m["bare"]
        got = environ.get(name)
        if m["dflt"] is not None and not got:
            return str(m["dflt"][2:])
        if got is None:
            missing.append(name)
            return ""
        if m.start() == 0 and not os.path.isabs(os.path.expanduser(got)):
            env_relative = True
        return got

    text = _VAR.sub(substitute, value)
    if missing:
        raise ConfigError(
            f"{value!r} uses ${{{missing[0]}}}, which is not set; set {missing[0]}, "
            f"or give a default as ${{{missing[0]}:-default}}"
        )
    if "${" in _VAR.sub("", value):
        raise ConfigError(f"{value!r} has a '${{' without a closing '}}'; write ${{NAME}} or ${{NAME:-default}}")
    return text, env_relative


def _variables(value: str, environ: Mapping[str, str]) -> tuple[tuple[str, str | None], ...]:
    names = dict.fromkeys(m["braced"] or m["bare"] for m in _VAR.finditer(value) if not m["dollar"])
    return tuple((n, environ.get(n)) for n in names)


def resolve_path(
    value: str,
    *,
    key: str,
    source: str,
    from_file: bool,
    base: Path,
    environ: Mapping[str, str],
    cwd: Path,
) -> tuple[str, PathOrigin]:
    """Apply the rule of this module to one path value of the config key ``key``.

    Parameters
    ----------
    value : str
        The value as written.
    key : str
        Its dotted key, one of :data:`PATH_KEYS`.
    source : str
        The config file, ``--set`` or the environment variable the value came from.
    from_file : bool
        Whether it was written in a config file (then ``base`` is the file's folder).
    base : Path
        Absolute folder a relative value is taken from: the config file's folder or ``cwd``.
    environ : mapping
        The environment ``${NAME}`` reads.
    cwd : Path
        The working directory (a relative variable value at the start is taken from it).

    Returns
    -------
    value : str
        Absolute for the ``base`` keys (a cached weight name such as ``imagenet`` unchanged);
        for the ``root`` keys expanded and left relative to ``train.data.root``.
    origin : PathOrigin

    Raises
    ------
    ConfigError
        Naming the file and key, for an unset variable or an unclosed ``${``.
    """
    try:
        text, env_relative = expand_vars(value, environ)
    except ConfigError as exc:
        raise ConfigError(str(exc), path=source if from_file else None, key=key) from exc
    if env_relative:
        base = cwd
    text = os.path.expanduser(text)
    if key == "train.model.encoder_weights" and not is_weights_path(text):
        absolute = text  # a cached weight name such as "imagenet"
    elif PATH_KEYS[key] == "root" and not env_relative:
        absolute = text  # relative to train.data.root
    else:
        absolute = str((base / text).resolve())
    origin = PathOrigin(
        key,
        value,
        source,
        from_file,
        base if not os.path.isabs(text) and absolute != text else None,
        "config" if from_file and not env_relative else "cwd",
        _variables(value, environ),
    )
    return absolute, origin
