"""Batch runs over many scenes on dask.distributed, resumable through a manifest.

``run_batch`` and ``BatchReport`` are imported lazily (they pull in dask.distributed).
"""

from __future__ import annotations

import importlib
from typing import Any

from geopsp.batch.jobs import Job, discover_jobs, safe_relative
from geopsp.batch.manifest import Manifest, SceneRecord
from geopsp.batch.strips import plan_strips

__all__ = [
    "BatchReport",
    "Job",
    "Manifest",
    "SceneRecord",
    "discover_jobs",
    "plan_strips",
    "run_batch",
    "safe_relative",
]

_LAZY = {"run_batch": "geopsp.batch.runner", "BatchReport": "geopsp.batch.runner"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'geopsp.batch' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
