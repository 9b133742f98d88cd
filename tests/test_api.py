"""The public surface: every package's curated ``__all__`` is the whole of what it exports."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

import geopsp

ROOT = Path(__file__).resolve().parents[1]
# The CLI package exports commands through entry points, not names; the QGIS plugin folder is
# loaded by QGIS (it imports qgis), not imported from geopsp.
PACKAGES = ["geopsp"] + [
    m.name
    for m in pkgutil.walk_packages(geopsp.__path__, "geopsp.")
    if m.ispkg and m.name not in ("geopsp.cli", "geopsp.qgis_plugin.geopsp_processing")
]
# Names `from __future__ import annotations` and typing-only imports bind in a package.
NOT_EXPORTS = {"annotations", "TYPE_CHECKING", "Any"}


def test_every_package_is_listed() -> None:
    assert PACKAGES == [
        "geopsp",
        "geopsp.batch",
        "geopsp.config",
        "geopsp.eval",
        "geopsp.inference",
        "geopsp.io",
        "geopsp.model",
        "geopsp.qgis_plugin",
        "geopsp.style",
        "geopsp.tiling",
        "geopsp.train",
        "geopsp.vectorize",
    ]


@pytest.mark.parametrize("package", PACKAGES)
def test_all_is_sorted_resolvable_and_complete(package: str) -> None:
    mod = importlib.import_module(package)
    exported = mod.__all__
    assert exported == sorted(exported)
    assert len(set(exported)) == len(exported)
    for name in exported:
        assert getattr(mod, name) is not None, name
    # what the package binds eagerly or maps lazily is exactly what __all__ names
    bound = {k for k, v in vars(mod).items() if not k.startswith("_") and not isinstance(v, types.ModuleType)}
    lazy = set(getattr(mod, "_LAZY", {}))
    dunders = {n for n in exported if n.startswith("__")}
    assert (bound | lazy | dunders) - NOT_EXPORTS == set(exported)
    assert set(exported) <= set(dir(mod))


@pytest.mark.parametrize("package", PACKAGES)
def test_unknown_names_raise_attribute_error(package: str) -> None:
    mod = importlib.import_module(package)
    with pytest.raises(AttributeError, match=f"module '{package}' has no attribute 'nope'"):
        mod.nope  # noqa: B018


def test_lazy_names_import_nothing_heavy_until_used() -> None:
    code = (
        "import sys, geopsp, geopsp.model, geopsp.inference, geopsp.batch, geopsp.vectorize\n"
        "heavy = [m for m in ('torch', 'distributed', 'shapely') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "geopsp.ClassTable, geopsp.model.BundleMeta\n"
        "assert 'torch' not in sys.modules\n"
        "geopsp.inference.Predictor\n"
        "assert 'torch' in sys.modules and geopsp.inference.__dict__['Predictor'].__name__ == 'Predictor'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
