"""Batch runs over many scenes on dask.distributed, resumable through a manifest.

``run_batch`` and ``BatchReport`` are imported lazily (they pull in dask.distributed).
"""

from __future__ import annotations

from geopsp import _lazy
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

__getattr__, __dir__ = _lazy.lazy_exports(__name__, _LAZY)
