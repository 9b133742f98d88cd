"""The batch manifest: one JSON line per scene outcome in ``OUT_DIR/manifest.jsonl``.

Only the batch client writes it. Each record is appended with a single ``write`` on a file
opened with ``O_APPEND`` under an exclusive ``flock``, then fsynced, so concurrent batches
on the same folder never interleave lines and a crash leaves at most one torn last line,
which readers skip. The newest record of a scene wins.

Output paths in records are relative to the output folder and informational only: geopsp
never writes to a path read from a manifest. A batch writing to ``s3://`` keeps its manifest
as an object under the prefix (:class:`S3Manifest`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from geopsp.errors import OutputError
from geopsp.io.outdir import ensure_output_dir

__all__ = ["MANIFEST_NAME", "Manifest", "S3Manifest", "SceneRecord", "Status"]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.jsonl"

Status = Literal["done", "failed", "skipped"]


@dataclass(frozen=True, slots=True)
class SceneRecord:
    """The outcome of one scene in one batch run.

    Parameters
    ----------
    id : str
        The job's relative name (its key in the manifest).
    scene : str
        Input path.
    status : {"done", "failed", "skipped"}
        ``skipped``: complete outputs from an earlier run were kept.
    outputs : tuple of str
        Output files, relative to the output folder.
    seconds : float
        Wall time of the scene (0 when skipped).
    error : str or None
        One-line error message of a failed scene.
    error_type : str or None
        Exception class name of a failed scene.
    strips : int
        Number of row strips the scene was split into (1: whole scene).
    fingerprint : str or None
        Model and settings the outputs were made with.
    worker : str or None
        Address of the dask worker that ran the scene (the last one, for strips).
    time : float
        Unix time the record was written.
    """

    id: str
    scene: str
    status: Status
    outputs: tuple[str, ...] = ()
    seconds: float = 0.0
    error: str | None = None
    error_type: str | None = None
    strips: int = 1
    fingerprint: str | None = None
    worker: str | None = None
    time: float = field(default_factory=time.time)

    @property
    def complete(self) -> bool:
        """Whether the record says the scene's outputs are finished."""
        return self.status in ("done", "skipped") and bool(self.outputs)

    def to_json(self) -> str:
        """Return the record as one JSON line (no newline)."""
        data = asdict(self)
        data["outputs"] = list(self.outputs)
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SceneRecord:
        """Build from a parsed JSON line; raises ``KeyError``/``TypeError``/``ValueError`` if malformed."""
        status = str(data["status"])
        if status not in ("done", "failed", "skipped"):
            raise ValueError(f"unknown status {status!r}")
        return cls(
            id=str(data["id"]),
            scene=str(data.get("scene", "")),
            status=status,  # type: ignore[arg-type]
            outputs=tuple(str(o) for o in data.get("outputs") or ()),
            seconds=float(data.get("seconds") or 0.0),
            error=None if data.get("error") is None else str(data["error"]),
            error_type=None if data.get("error_type") is None else str(data["error_type"]),
            strips=int(data.get("strips") or 1),
            fingerprint=None if data.get("fingerprint") is None else str(data["fingerprint"]),
            worker=None if data.get("worker") is None else str(data["worker"]),
            time=float(data.get("time") or 0.0),
        )


class Manifest:
    """Append-only JSON-lines record of a batch output folder.

    Parameters
    ----------
    out_dir : str or os.PathLike
        The batch output folder; the manifest is ``out_dir / "manifest.jsonl"``.
    """

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / MANIFEST_NAME

    def records(self) -> Iterator[SceneRecord]:
        """Yield every readable record in file order; torn or malformed lines are skipped."""
        try:
            fh = self.path.open("r", encoding="utf-8")
        except FileNotFoundError:
            return
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot read the manifest ({exc.strerror}); check permissions") from exc
        with fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    yield SceneRecord.from_dict(json.loads(line))
                except (ValueError, KeyError, TypeError) as exc:
                    logger.warning("%s:%d: skipping unreadable manifest line (%s)", self.path, lineno, exc)

    def latest(self) -> dict[str, SceneRecord]:
        """Return the newest record per scene id."""
        out: dict[str, SceneRecord] = {}
        for rec in self.records():
            out[rec.id] = rec
        return out

    def is_complete(self, record: SceneRecord | None) -> bool:
        """Whether ``record`` says complete and all its outputs still exist in the folder."""
        if record is None or not record.complete:
            return False
        root = self.out_dir.resolve()
        for rel in record.outputs:
            p = (root / rel).resolve()
            if root not in p.parents or not p.is_file():
                return False
        return True

    def close(self) -> None:
        """Do nothing: every record is on disk when :meth:`append` returns (as :meth:`S3Manifest.close` needs)."""

    def append(self, records: SceneRecord | Sequence[SceneRecord]) -> None:
        """Append records atomically (one ``write`` per call, under an exclusive lock).

        Raises
        ------
        OutputError
            If the manifest cannot be written.
        """
        recs = [records] if isinstance(records, SceneRecord) else list(records)
        if not recs:
            return
        payload = "".join(r.to_json() + "\n" for r in recs).encode("utf-8")
        ensure_output_dir(self.out_dir)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot write the manifest ({exc.strerror}); check permissions") from exc
        try:
            with _locked(fd):
                _repair_torn_tail(fd)
                view = memoryview(payload)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                os.fsync(fd)
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot write the manifest ({exc.strerror}); free space and rerun") from exc
        finally:
            os.close(fd)


@contextlib.contextmanager
def _locked(fd: int) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: O_APPEND alone
        yield
        return
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _repair_torn_tail(fd: int) -> None:
    """Terminate a last line left without newline by a crash, so new records start clean."""
    size = os.fstat(fd).st_size
    if size == 0:
        return
    if os.pread(fd, 1, size - 1) != b"\n":
        os.write(fd, b"\n")


class S3Manifest:
    """The manifest of a batch writing to ``s3://``: a local copy, uploaded whole as ``<prefix>/manifest.jsonl``.

    S3 cannot append, so the records go into a private local :class:`Manifest` (the object's
    earlier lines first) and the whole file is uploaded at most every ``flush_s`` seconds and by
    :meth:`close`. Finished scenes are told by their objects: :meth:`is_complete` checks a
    record's outputs against one listing of the prefix, taken when the batch starts.
    Two batches writing the same prefix at once would overwrite each other's manifest.

    Parameters
    ----------
    uri : str
        The batch output prefix, ``s3://bucket/prefix/``.
    flush_s : float, default 10
        Least time between two uploads of the manifest.

    Raises
    ------
    OutputError
        One line when the bucket cannot be used or the manifest cannot be read.
    """

    def __init__(self, uri: str, *, flush_s: float = 10.0) -> None:
        import tempfile

        from geopsp.io import s3

        self.out_dir = uri if uri.endswith("/") else uri + "/"
        self.path = self.out_dir + MANIFEST_NAME
        self.flush_s = flush_s
        self._client = s3.client()
        s3.check_bucket(self.out_dir, s3=self._client)
        self.objects = set(s3.list_objects(self.out_dir, s3=self._client))
        self._folder = Path(tempfile.mkdtemp(prefix="geopsp-manifest-"))
        self._local = Manifest(self._folder)
        if self.path in self.objects:
            try:
                s3.download_file(self.path, self._local.path, s3=self._client)
            except BaseException:
                shutil.rmtree(self._folder, ignore_errors=True)
                raise
        self._flushed = time.monotonic()

    def records(self) -> Iterator[SceneRecord]:
        """Yield every readable record, the object's first."""
        return self._local.records()

    def latest(self) -> dict[str, SceneRecord]:
        """Return the newest record per scene id."""
        return self._local.latest()

    def is_complete(self, record: SceneRecord | None) -> bool:
        """Whether ``record`` says complete and all its outputs were objects when the batch started."""
        if record is None or not record.complete:
            return False
        return all(self.out_dir + rel in self.objects for rel in record.outputs)

    def append(self, records: SceneRecord | Sequence[SceneRecord]) -> None:
        """Record outcomes; upload the manifest when ``flush_s`` passed since the last upload."""
        self._local.append(records)
        if time.monotonic() - self._flushed >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        """Upload the manifest now (when it has any record).

        Raises
        ------
        OutputError
            One line naming the manifest object.
        """
        from geopsp.io import s3

        if self._local.path.is_file():
            s3.upload_file(self._local.path, self.path, s3=self._client)
        self._flushed = time.monotonic()

    def close(self) -> None:
        """Upload the manifest a last time and remove the local copy."""
        try:
            self.flush()
        finally:
            shutil.rmtree(self._folder, ignore_errors=True)
