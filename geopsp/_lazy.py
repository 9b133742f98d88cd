"""Lazy re-exports: the one ``__getattr__``/``__dir__`` pair every package ``__init__`` uses.

A package names where each lazily exported name lives; the module is imported on first access
and the value is cached on the package, so ``import geopsp`` stays fast and torch, dask or
shapely are imported only by what uses them::

    __getattr__, __dir__ = lazy_exports(__name__, {"Predictor": "geopsp.inference.predict"})
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, names: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Return a module ``__getattr__`` importing ``names`` on first use, and a ``__dir__``.

    Parameters
    ----------
    package : str
        The package's ``__name__``.
    names : mapping of str to str
        Exported name -> the module that defines it.

    Returns
    -------
    (__getattr__, __dir__)
        ``__getattr__`` raises :class:`AttributeError` for any other name; ``__dir__`` lists
        the package's sorted ``__all__``.

    Examples
    --------
    >>> getattr_, dir_ = lazy_exports("geopsp", {"ClassTable": "geopsp.classes"})
    >>> getattr_("ClassTable").__name__
    'ClassTable'
    >>> getattr_("nope")
    Traceback (most recent call last):
    ...
    AttributeError: module 'geopsp' has no attribute 'nope'
    """
    lazy = dict(names)

    def __getattr__(name: str) -> Any:
        module = lazy.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)  # later lookups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted(sys.modules[package].__all__)

    return __getattr__, __dir__
