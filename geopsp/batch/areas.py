"""The batch's class areas table: every finished scene's table added up, in ``<out>/class_areas.csv``.

After the scenes, the batch client reads the summary of each finished scene of its jobs,
those computed now and those kept from earlier runs alike (a resumed batch adds up all of
them), takes the summary's ``class_areas`` and sums them class by class
(:func:`geopsp.inference.area_table.sum_class_areas`): pixels, square metres and polygons,
shares computed anew. The table is written into the output folder (or uploaded below the
``s3://`` prefix) under :data:`CLASS_AREAS_NAME`, replaced by each run.

A summary that cannot be read, or holds no table (written by an older geopsp), leaves its
scene out with a warning.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from geopsp.batch.destination import BatchOutputs
from geopsp.batch.jobs import Job
from geopsp.batch.manifest import SceneRecord
from geopsp.errors import GeopspError
from geopsp.inference.area_table import ClassAreas, sum_class_areas, write_class_areas_csv

__all__ = ["CLASS_AREAS_NAME", "BatchAreas", "batch_class_areas"]

logger = logging.getLogger(__name__)

CLASS_AREAS_NAME = "class_areas.csv"
"""The batch's class areas table, in the output folder (beside ``manifest.jsonl``)."""


@dataclass(frozen=True, slots=True)
class BatchAreas:
    """The batch's class areas table and where it went.

    Attributes
    ----------
    table : ClassAreas
        The sum over :attr:`ClassAreas.scenes` finished scenes.
    path : str
        The CSV: a path, or an ``s3://`` URI.
    left_out : tuple of str
        Ids of finished scenes whose summary gave no table.
    """

    table: ClassAreas
    path: str
    left_out: tuple[str, ...] = ()


def batch_class_areas(jobs: Sequence[Job], records: Sequence[SceneRecord], outputs: BatchOutputs) -> BatchAreas | None:
    """Add up the class areas of the finished scenes of ``jobs`` and write the batch's table.

    Parameters
    ----------
    jobs : sequence of Job
        The batch's jobs.
    records : sequence of SceneRecord
        Their outcomes (``done`` or ``skipped`` with outputs: finished).
    outputs : BatchOutputs
        Where the batch writes; each scene's summary is read from its name there.

    Returns
    -------
    BatchAreas or None
        None when no finished scene gave a table (nothing is written then).

    Raises
    ------
    OutputError
        If the table cannot be written.
    """
    finished = {r.id for r in records if r.complete}
    tables: list[ClassAreas] = []
    left_out: list[str] = []
    for job in jobs:
        if job.id not in finished:
            continue
        table = _scene_table(outputs.summary_of(job), job)
        if table is None:
            left_out.append(job.id)
        else:
            tables.append(table)
    if left_out:
        logger.warning(
            "%d finished scene(s) left out of %s: their summary holds no class areas (%s); rerun them with --overwrite",
            len(left_out),
            CLASS_AREAS_NAME,
            ", ".join(left_out[:3]) + (" ..." if len(left_out) > 3 else ""),
        )
    total = sum_class_areas(tables)
    if total is None:
        return None
    path = outputs.write_report(CLASS_AREAS_NAME, lambda tmp, final: write_class_areas_csv(total, tmp, final=final))
    return BatchAreas(total, path, tuple(left_out))


def _scene_table(summary: str, job: Job) -> ClassAreas | None:
    """Return the class areas in a scene's summary, or None (logged at debug) when it gives none."""
    from geopsp.io.source import read_uri

    try:
        data = json.loads(read_uri(summary, what="summary"))
        table = data.get("class_areas") if isinstance(data, dict) else None
        return None if table is None else ClassAreas.from_dict(table, source=summary)
    except (GeopspError, ValueError) as exc:  # an unreadable summary leaves its scene out, as an old one does
        logger.debug("%s: no class areas from %s (%s)", job.id, summary, exc)
        return None
