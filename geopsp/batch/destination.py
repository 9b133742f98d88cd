"""Where a batch writes: a local folder (:class:`LocalOutputs`) or an ``s3://`` prefix (:class:`S3Outputs`).

The batch client names every job's outputs, its strips' work area and its manifest through
one of these, and turns what the workers report back into the manifest's relative names.
Outputs always lie below the folder or prefix, at the job's safe relative name
(:func:`geopsp.batch.jobs.safe_relative`).

With an ``s3://`` prefix each worker uploads its own scene's set once complete, the summary
last (:class:`geopsp.io.s3.S3Destination`; credentials and ``AWS_ENDPOINT_URL`` from each
worker's environment), strips go through ``<prefix>/.geopsp-work/``, and the manifest is an
object under the prefix (:class:`~geopsp.batch.manifest.S3Manifest`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath

from geopsp.batch.jobs import ITEMS_DIR, Job, output_dir_for
from geopsp.batch.manifest import Manifest, S3Manifest
from geopsp.config.schema import GeopspConfig
from geopsp.errors import GeopspError
from geopsp.inference.plan import output_set
from geopsp.io.atomic import TEMP_MARKER, atomic_output
from geopsp.io.outdir import ensure_output_dir

__all__ = ["WORK_DIR", "BatchOutputs", "LocalOutputs", "S3Outputs", "batch_outputs"]

logger = logging.getLogger(__name__)

WORK_DIR = ".geopsp-work"
"""Folder (or key prefix) below the output location holding the strips of split scenes."""


class LocalOutputs:
    """A batch writing into a local (or shared) folder.

    Parameters
    ----------
    out_dir : str or os.PathLike
        The folder; created and checked for writing.
    """

    remote = False

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.root = ensure_output_dir(out_dir)
        self.manifest: Manifest | S3Manifest = Manifest(self.root)

    @property
    def exclude(self) -> Path:
        """Files below this folder are never taken as inputs."""
        return self.root

    @property
    def items(self) -> str:
        """Where the items of an ItemCollection are written, one file each, for every worker to read."""
        return str(self.root / ITEMS_DIR)

    def scene_out(self, job: Job) -> str:
        """Name the class raster of a job (the other outputs are named after it)."""
        return str(output_dir_for(self.root, job) / f"{job.stem}_classes.tif")

    def work(self, job: Job) -> str:
        """Name the folder of a job's strips."""
        return str(self.root / WORK_DIR / job.key)

    def strip_out(self, job: Job, index: int) -> str:
        """Name the class raster of a job's strip ``index``."""
        return str(Path(self.work(job)) / f"strip-{index:04d}" / f"{job.stem}_classes.tif")

    def relative(self, output: str) -> str:
        """Name an output as the manifest records it: relative to the folder."""
        return Path(output).resolve().relative_to(self.root.resolve()).as_posix()

    def summary_of(self, job: Job) -> str:
        """Name the summary JSON of a job (:func:`~geopsp.inference.plan.output_set`'s name)."""
        return str(output_set(job.stem, self.scene_out(job)).summary)

    def write_report(self, name: str, write: Callable[[Path, str], object]) -> str:
        """Write a batch-level file ``name`` in the folder: ``write(tmp, final)`` fills a temporary, renamed into place.

        The file belongs to the batch, not to a scene, and says what the folder holds now, so
        each run replaces it (as it adds to the manifest).
        """
        final = self.root / name
        with atomic_output(final, overwrite=True) as tmp:
            write(tmp, str(final))
        return str(final)

    def finished(self, job: Job, cfg: GeopspConfig) -> tuple[str, ...] | None:
        """Find a job complete without a manifest record: never here (the local manifest decides)."""
        del job, cfg
        return None

    def cleanup(self, jobs: Sequence[Job]) -> None:
        """Remove temporary files left by workers that died mid-write, and finished strip folders."""
        for job in jobs:
            with contextlib.suppress(OSError, GeopspError):
                folder = output_dir_for(self.root, job)
                for tmp in folder.glob(f"{TEMP_MARKER}*-{job.stem}_*"):
                    with contextlib.suppress(OSError):
                        tmp.unlink()
            shutil.rmtree(self.root / WORK_DIR / job.key, ignore_errors=True)
        with contextlib.suppress(OSError):
            (self.root / WORK_DIR).rmdir()


class S3Outputs:
    """A batch writing below an ``s3://bucket/prefix/``.

    Parameters
    ----------
    uri : str
        The prefix; the bucket is checked, the prefix listed once and its manifest read.

    Raises
    ------
    OutputError
        One line when the bucket does not exist, access is refused or S3 cannot be reached.
    """

    remote = True
    exclude = None

    def __init__(self, uri: str) -> None:
        self._s3 = S3Manifest(uri)
        self.manifest: Manifest | S3Manifest = self._s3
        self.root = self._s3.out_dir  # ends with "/"

    def _uri(self, rel: str | os.PathLike[str]) -> str:
        return self.root + PurePosixPath(rel).as_posix()

    @property
    def items(self) -> str:
        """Where the items of an ItemCollection are uploaded, one object each, for every worker to read."""
        return self._uri(ITEMS_DIR) + "/"

    def scene_out(self, job: Job) -> str:
        """Name the class raster object of a job (the other outputs are named after it)."""
        return self._uri(job.rel.parent / f"{job.stem}_classes.tif")

    def work(self, job: Job) -> str:
        """Name the key prefix of a job's strips (ending with ``/``)."""
        return self._uri(f"{WORK_DIR}/{job.key}") + "/"

    def strip_out(self, job: Job, index: int) -> str:
        """Name the class raster object of a job's strip ``index``."""
        return self.work(job) + f"strip-{index:04d}/{job.stem}_classes.tif"

    def relative(self, output: str) -> str:
        """Name an output as the manifest records it: its key below the prefix."""
        return output.removeprefix(self.root)

    def summary_of(self, job: Job) -> str:
        """Name the summary object of a job (:func:`~geopsp.inference.plan.output_set`'s name)."""
        return self._uri(output_set(job.stem, PurePosixPath(self.relative(self.scene_out(job)))).summary)

    def write_report(self, name: str, write: Callable[[Path, str], object]) -> str:
        """Upload a batch-level object ``name`` below the prefix, written by ``write(path, uri)`` locally first.

        Each run replaces it, like the manifest object.
        """
        import tempfile

        from geopsp.io import s3

        with tempfile.TemporaryDirectory(prefix="geopsp-report-") as folder:
            local = Path(folder) / name
            write(local, self._uri(name))
            s3.upload_file(local, self._uri(name))
        return self._uri(name)

    def finished(self, job: Job, cfg: GeopspConfig) -> tuple[str, ...] | None:
        """Return the outputs of a job whose set is complete in S3 though the manifest has no record of it.

        A set is complete when its summary (uploaded last) and every other output this batch
        asks for (the class raster, the QA layers, the polygons) are objects. That happens
        when the batch stopped before its manifest was uploaded, or when ``geopsp predict``
        wrote the scene into the prefix.
        """
        planned = output_set(
            job.stem,
            PurePosixPath(self.relative(self.scene_out(job))),
            qa=cfg.predict.qa_layers,
            vector=cfg.predict.vector,
            vector_format=cfg.vectorize.format,
        )
        if not all(self._uri(p) in self._s3.objects for p in planned.checked):
            return None
        aux = planned.classes.with_name(planned.classes.name + ".aux.xml")
        names = [*planned.as_dict().values(), aux, *planned.qa_styles.values()]
        return tuple(PurePosixPath(p).as_posix() for p in names if self._uri(p) in self._s3.objects)

    def cleanup(self, jobs: Sequence[Job]) -> None:
        """Delete the strips left under ``.geopsp-work/`` by these jobs (one listing of it)."""
        from geopsp.io import s3

        keys = {self.work(job) for job in jobs}
        try:
            left = [u for u in s3.list_objects(self._uri(WORK_DIR) + "/") if u[: u.rfind("/strip-") + 1] in keys]
            s3.delete_objects(left)
        except GeopspError as exc:  # the batch's own outcome matters more; the strips are only litter
            logger.warning("could not remove the strips of this batch: %s", exc)


BatchOutputs = LocalOutputs | S3Outputs


def batch_outputs(out_dir: str | os.PathLike[str]) -> BatchOutputs:
    """Where a batch writes: :class:`S3Outputs` for an ``s3://`` URI, else :class:`LocalOutputs`."""
    from geopsp.io.s3 import is_s3_uri

    if is_s3_uri(out_dir):
        return S3Outputs(str(out_dir))
    return LocalOutputs(out_dir)
