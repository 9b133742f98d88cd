"""Write outputs under temporary names and commit them into place, one file or a set at once.

What is guaranteed
------------------
* Every output is written under a temporary name (:func:`temp_name`) in its destination
  folder; nothing incomplete ever carries a final name.
* Committing (:class:`StagedOutputs`, and :func:`atomic_output` for one file) fsyncs each
  temporary file, then renames it into place with ``renameat2(RENAME_NOREPLACE)`` (Linux,
  glibc), else ``link`` + ``unlink``. Both refuse an output that appeared after the checks
  (a concurrent run): :class:`~geopsp.errors.OutputExistsError` names it and
  ``--overwrite``, and nothing is replaced. Only ``overwrite=True`` replaces a file
  (``os.replace``), keeping the old one aside until the whole set is in place. The folders
  are fsynced after the renames.
* A set goes into place members first and its *marker* (a run's summary JSON) last, after
  the members' renames were made durable. If any member cannot be placed, those already
  placed are removed again and the files they replaced are restored (as is an older marker
  set aside), so either the whole set is under its final names or none of it is.
* SIGINT and SIGTERM arriving during the renames (a few milliseconds) are held until the set
  is in place or rolled back, then delivered: an interrupted run has either its complete set
  or nothing of it under final names.

Not covered: SIGKILL, a crash or a power cut *during the renames* can leave some members
without their marker (a set without its marker is incomplete; rerun with ``--overwrite``),
and a replaced file's old version under a temporary name (a later run removes it, see
:func:`remove_stale_temps`). Where the file system supports neither ``renameat2`` nor hard
links (FAT, some network shares), the no-replace rename falls back to check-then-rename.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import logging
import os
import re
import signal
import socket
import stat
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from geopsp._procfs import proc_status
from geopsp.errors import GeopspError, OutputError, OutputExistsError
from geopsp.io.outdir import ensure_output_dir

__all__ = [
    "StagedOutputs",
    "atomic_output",
    "check_output_path",
    "fsync_path",
    "left_by_dead_process",
    "remove_stale_temps",
    "rename_noreplace",
    "signals_deferred",
    "temp_name",
    "temp_prefix",
]

logger = logging.getLogger(__name__)

TEMP_MARKER = ".geopsp-tmp-"


_HOST = hashlib.sha1(socket.gethostname().encode(), usedforsecurity=False).hexdigest()[:6]
_OWNED = re.compile(rf"^{re.escape(TEMP_MARKER)}([0-9a-f]{{6}})-(\d+)-[0-9a-f]{{8}}-(.+)$")


def temp_prefix() -> str:
    """Return a unique prefix for temporary files: the marker, this host and process, a random part.

    The host and process id let a later run recognise (and remove) the temporaries of a
    process that was killed before it could clean up; see :func:`remove_stale_temps`.
    """
    return f"{TEMP_MARKER}{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}-"


def temp_name(path: Path) -> Path:
    """Return a unique temporary sibling of ``path`` that keeps its suffix.

    The suffix is kept so format drivers chosen by extension (GDAL, OGR) still work.
    """
    return path.with_name(f"{temp_prefix()}{path.name}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    return True


def left_by_dead_process(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is named by :func:`temp_prefix` for a process of this host that no longer runs.

    Temporaries of live processes, of other hosts (shared folders) and other names are not.
    """
    m = _OWNED.match(Path(path).name)
    if m is None or m.group(1) != _HOST:
        return False
    pid = int(m.group(2))
    return pid != os.getpid() and not _pid_alive(pid)


def remove_stale_temps(path: str | os.PathLike[str]) -> list[Path]:
    """Remove temporary files for ``path`` left by dead processes of this host (e.g. after SIGKILL).

    Only files named by :func:`temp_prefix` whose process no longer runs on this host are
    removed; temporaries of live processes, of other hosts (shared folders) and any other
    file are left alone.

    Returns
    -------
    list of Path
        The files removed.
    """
    out = Path(path)
    removed: list[Path] = []
    with contextlib.suppress(OSError):
        for tmp in out.parent.glob(f"{TEMP_MARKER}*"):
            m = _OWNED.match(tmp.name)
            if m is None or out.name not in m.group(3) or not tmp.is_file() or not left_by_dead_process(tmp):
                continue
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
                logger.info("removed %s, left by a process that was killed", tmp)
    return removed


def check_output_path(
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    inputs: Sequence[str | os.PathLike[str]] = (),
) -> Path:
    """Validate an output path before any work is done.

    Parameters
    ----------
    path : str or os.PathLike
        The output file.
    overwrite : bool, default False
        Whether an existing file may be replaced.
    inputs : sequence of path
        Input files; the output may never be one of them.

    Returns
    -------
    Path
        The output path.

    Raises
    ------
    OutputExistsError
        If the file exists and ``overwrite`` is False.
    OutputError
        If the output is an input, or its directory cannot be created or written.
    """
    out = Path(path)
    for src in inputs:
        try:
            same = out.resolve() == Path(src).resolve()
        except OSError:
            same = False
        if same:
            raise OutputError(f"{out}: output path equals input {src}; choose another output path")
    if out.is_dir():
        raise OutputError(f"{out}: is a directory; give a file name")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out}: already exists; pass --overwrite (overwrite=True) to replace it")
    ensure_output_dir(out.parent)
    remove_stale_temps(out)
    return out


@contextlib.contextmanager
def atomic_output(
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    inputs: Sequence[str | os.PathLike[str]] = (),
    sidecars: Sequence[str] = (),
) -> Iterator[Path]:
    """Yield a temporary path to write to; commit it to ``path`` when the block succeeds.

    Parameters
    ----------
    path : str or os.PathLike
        Final output path.
    overwrite : bool, default False
        Replace an existing output.
    inputs : sequence of path
        Inputs that the output must not equal.
    sidecars : sequence of str
        Suffixes of files GDAL writes next to the main file (``".aux.xml"``, ``".ovr"``);
        they are committed with it, before it (see :class:`StagedOutputs`).

    Yields
    ------
    Path
        Temporary path in the output's directory.

    Raises
    ------
    OutputExistsError, OutputError
        See :func:`check_output_path`; ``OutputExistsError`` also when another process
        created the output meanwhile, ``OutputError`` also for a full disk.
    """
    final = check_output_path(path, overwrite=overwrite, inputs=inputs)
    outputs = StagedOutputs(overwrite=overwrite)
    tmp = outputs.temp(final, marker=True)
    try:
        yield tmp
        if not tmp.exists():
            raise OutputError(f"{final}: the writer produced no file")
        for suffix in sidecars:
            side = Path(str(tmp) + suffix)
            if side.exists():
                outputs.add(side, Path(str(final) + suffix))
        outputs.commit()
        logger.debug("wrote %s", final)
    except BaseException as exc:
        outputs.discard()
        _cleanup(tmp, sidecars)
        if isinstance(exc, OSError) and not isinstance(exc, GeopspError) and exc.errno == errno.ENOSPC:
            raise OutputError(f"{final}: disk full while writing; free space and run again") from exc
        raise


# --- no-replace rename and fsync ------------------------------------------------------------

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
# errno values meaning "this file system (or kernel) cannot do that", not "it failed"
_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP})
_NO_LINKS = frozenset({errno.EPERM, errno.EMLINK, errno.EXDEV, *_UNSUPPORTED})
_renameat2: Any = None  # None: not looked up yet; False: not available here


def _libc_renameat2() -> Any:
    global _renameat2
    if _renameat2 is None:
        _renameat2 = False
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError, AttributeError):
                fn = ctypes.CDLL(None, use_errno=True).renameat2  # glibc 2.28+
                fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
                fn.restype = ctypes.c_int
                _renameat2 = fn
    return _renameat2 or None


def rename_noreplace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Rename ``src`` to ``dst`` in one step that fails if ``dst`` exists, never replacing it.

    Uses ``renameat2(RENAME_NOREPLACE)`` where the kernel, the C library and the file system
    support it, else ``link(src, dst)`` (which fails on an existing ``dst``) and
    ``unlink(src)``; only where hard links are refused too (FAT, some network shares) it
    checks, then renames, which a concurrent writer could still race.

    Raises
    ------
    FileExistsError
        If ``dst`` exists; ``src`` is left as it was.
    OSError
        If the rename fails otherwise.
    """
    fn = _libc_renameat2()
    if fn is not None:
        if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in _UNSUPPORTED:
            raise OSError(err, os.strerror(err), os.fspath(src), None, os.fspath(dst))
    try:
        os.link(src, dst, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in _NO_LINKS:
            raise
        if os.path.lexists(dst):
            raise FileExistsError(
                errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(src), None, os.fspath(dst)
            ) from None
        os.rename(src, dst)
        return
    os.unlink(src)


def fsync_path(path: str | os.PathLike[str]) -> None:
    """Flush a file's data, or a folder's entries, to the disk (``fsync``).

    A file system that cannot sync a folder (``EINVAL``, some network shares) is accepted.
    """
    is_dir = os.path.isdir(path)
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if is_dir else 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if not (is_dir and exc.errno in (*_UNSUPPORTED, errno.EBADF, errno.EACCES)):
            raise
    finally:
        os.close(fd)


# --- signals --------------------------------------------------------------------------------

_DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_deferring = False


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while the block runs; deliver them to their handlers after it.

    Only the main thread receives Python signals; elsewhere (a dask worker thread) and when
    nested this does nothing. A signal whose handler is ``SIG_IGN`` stays ignored; one left
    to the default action (``SIG_DFL``) takes it after the block.
    """
    global _deferring
    if _deferring or threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[tuple[int, Any]] = []
    previous: dict[int, Any] = {}

    def hold(signum: int, frame: Any) -> None:
        pending.append((signum, frame))

    _deferring = True
    try:
        for sig in _DEFERRED_SIGNALS:
            old = signal.getsignal(sig)
            if old is None or old == signal.SIG_IGN:
                continue
            previous[sig] = old
            signal.signal(sig, hold)
        yield
    finally:
        for restored, old in previous.items():
            signal.signal(restored, old)
        _deferring = False
        for signum, frame in pending:
            handler = previous[signum]
            if callable(handler):
                handler(signum, frame)  # Ctrl-C: raises KeyboardInterrupt
            else:
                signal.raise_signal(signum)  # SIG_DFL: terminate as the signal would have


# --- sets of outputs ------------------------------------------------------------------------


@dataclass
class _Step:
    """One change made while committing, undone in reverse order on failure."""

    final: Path
    backup: Path | None  # the file that was at ``final`` before, set aside
    placed: bool  # a new file was put at ``final``


@dataclass
class _Member:
    tmp: Path
    final: Path


class StagedOutputs:
    """Outputs staged under temporary names and committed together, the marker last, or not at all.

    Register each output with :meth:`temp` (a fresh temporary name to write to) or
    :meth:`add` (a temporary some writer made), then :meth:`commit`. Used as a context
    manager, leaving the block without committing (an exception, Ctrl-C) removes every
    registered temporary. See the module docstring for what a commit guarantees.

    Parameters
    ----------
    overwrite : bool, default False
        Replace outputs that exist; without it a commit refuses them.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder, StagedOutputs() as outputs:
    ...     _ = outputs.temp(Path(folder, "a.tif")).write_bytes(b"a")
    ...     _ = outputs.temp(Path(folder, "a_summary.json"), marker=True).write_text("{}")
    ...     [p.name for p in outputs.commit()]
    ['a.tif', 'a_summary.json']
    """

    def __init__(self, *, overwrite: bool = False) -> None:
        self.overwrite = overwrite
        self._prefix = temp_prefix()
        self._members: list[_Member] = []
        self._marker: _Member | None = None
        self._removals: list[Path] = []
        self._steps: list[_Step] = []
        self._state: Literal["open", "committed", "discarded"] = "open"

    # -- registering -------------------------------------------------------------------------

    def temp(self, final: str | os.PathLike[str], *, marker: bool = False) -> Path:
        """Register ``final`` and return the temporary path to write it to (same folder and suffix)."""
        out = Path(final)
        tmp = out.with_name(f"{self._prefix}{out.name}")
        self.add(tmp, out, marker=marker)
        return tmp

    def add(self, tmp: str | os.PathLike[str], final: str | os.PathLike[str], *, marker: bool = False) -> None:
        """Register a temporary file ``tmp`` to be committed to ``final``.

        Parameters
        ----------
        tmp, final : str or os.PathLike
            The temporary (in ``final``'s folder, so the rename is atomic) and its final name.
        marker : bool, default False
            Commit this one last: its presence says the set is complete (a run's summary).

        Raises
        ------
        ValueError
            If the set was committed or discarded, ``final`` is registered already, or a
            second marker is given.
        """
        self._check_open()
        member = _Member(Path(tmp), Path(final))
        if member.final in self.finals:
            raise ValueError(f"{member.final}: already in this set of outputs")
        if marker:
            if self._marker is not None:
                raise ValueError(f"{member.final}: the set already has a marker, {self._marker.final}")
            self._marker = member
        else:
            self._members.append(member)

    def remove(self, final: str | os.PathLike[str]) -> None:
        """Remove ``final`` (if present) when the set is committed, e.g. a stale sidecar; needs ``overwrite``.

        It is set aside during the commit and restored if the commit fails.
        """
        self._check_open()
        if not self.overwrite:
            raise ValueError(f"{final}: removing an existing file needs overwrite=True")
        self._removals.append(Path(final))

    def staged(self, final: str | os.PathLike[str]) -> Path:
        """Return the temporary path registered for ``final`` (to read a staged output back)."""
        for m in self._ordered():
            if m.final == Path(final):
                return m.tmp
        raise KeyError(f"{final}: not in this set of outputs")

    @property
    def finals(self) -> list[Path]:
        """The final paths, in commit order (the marker last)."""
        return [m.final for m in self._ordered()]

    def _ordered(self) -> list[_Member]:
        return [*self._members, *([self._marker] if self._marker is not None else [])]

    def _check_open(self) -> None:
        if self._state != "open":
            raise ValueError(f"this set of outputs is already {self._state}")

    # -- committing --------------------------------------------------------------------------

    def commit(self) -> list[Path]:
        """Put every registered output under its final name, the marker last; or none of them.

        Returns
        -------
        list of Path
            The final paths, in commit order.

        Raises
        ------
        OutputExistsError
            An output exists (another process made it after the checks) and ``overwrite`` is
            False; nothing of the set was left in place, and that file is untouched.
        OutputError
            A temporary is missing, or a sync or rename failed (``"disk full"`` when the disk is
            full); nothing of the set was left in place, replaced files were restored.
        """
        self._check_open()
        ordered = self._ordered()
        try:
            for m in ordered:
                if not m.tmp.is_file():
                    raise OutputError(f"{m.final}: the writer produced no file")
            if not self.overwrite:
                for m in ordered:
                    if os.path.lexists(m.final):
                        raise _exists(m.final)
            mode = _default_file_mode()
            for m in ordered:  # before the critical section: syncing a large file takes a while
                _widen_to(m.tmp, mode)
                _guarded(m.final, fsync_path, m.tmp)
            with signals_deferred():
                try:
                    self._place(ordered)
                except BaseException:
                    self._rollback()
                    raise
                self._state = "committed"
                for step in self._steps:
                    if step.backup is not None:
                        with contextlib.suppress(OSError):
                            step.backup.unlink()
        except BaseException:
            self.discard()
            raise
        return [m.final for m in ordered]

    def _place(self, ordered: list[_Member]) -> None:
        folders = sorted({m.final.parent for m in ordered} | {p.parent for p in self._removals})
        marker = self._marker
        if marker is not None and self._members and self.overwrite and os.path.lexists(marker.final):
            # An older marker goes first, so that no moment shows it next to new members.
            self._steps.append(_Step(marker.final, self._set_aside(marker.final), placed=False))
        for stale in self._removals:
            if os.path.lexists(stale):
                self._steps.append(_Step(stale, self._set_aside(stale), placed=False))
        for m in self._members:
            self._place_one(m)
        if marker is not None:
            if self._members:
                self._sync(folders)  # the members are durable before the marker says so
            self._place_one(marker)
        self._sync(folders)

    def _place_one(self, m: _Member) -> None:
        if not self.overwrite:
            try:
                _guarded(m.final, rename_noreplace, m.tmp, m.final)
            except FileExistsError as exc:
                raise _exists(m.final) from exc
            self._steps.append(_Step(m.final, None, placed=True))
            return
        backup = None
        if m.final.is_dir() and not m.final.is_symlink():
            raise OutputError(f"{m.final}: is a directory; remove it or choose another output path")
        if os.path.lexists(m.final):
            backup = self._backup_name(m.final)
            try:  # a second name for the old file: the final name never goes missing
                os.link(m.final, backup, follow_symlinks=False)
            except OSError:
                _guarded(m.final, os.rename, m.final, backup)
        self._steps.append(_Step(m.final, backup, placed=False))
        _guarded(m.final, os.replace, m.tmp, m.final)
        self._steps[-1].placed = True

    def _set_aside(self, final: Path) -> Path:
        backup = self._backup_name(final)
        _guarded(final, os.rename, final, backup)
        return backup

    @staticmethod
    def _backup_name(final: Path) -> Path:
        return final.with_name(f"{temp_prefix()}{final.name}")

    def _sync(self, folders: Sequence[Path]) -> None:
        for folder in folders:
            _guarded(folder, fsync_path, folder)

    def _rollback(self) -> None:
        """Undo the steps taken, last first: new files removed, set-aside ones put back."""
        for step in reversed(self._steps):
            try:
                if step.placed:
                    if step.backup is not None:
                        os.replace(step.backup, step.final)
                    else:
                        step.final.unlink()
                elif step.backup is not None:
                    os.replace(step.backup, step.final)
            except OSError as exc:
                left = f"; the earlier version is kept as {step.backup}" if step.backup else ""
                logger.error("%s: could not undo the partial commit (%s)%s", step.final, exc.strerror, left)
        self._steps.clear()

    def discard(self) -> None:
        """Remove every registered temporary not committed (safe to call more than once)."""
        if self._state == "committed":
            return
        self._state = "discarded"
        for m in self._ordered():
            with contextlib.suppress(OSError):
                m.tmp.unlink()

    def __enter__(self) -> StagedOutputs:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.discard()


def _exists(final: Path) -> OutputExistsError:
    return OutputExistsError(
        f"{final}: was created by another process meanwhile; pass --overwrite (overwrite=True) to replace it"
    )


def _guarded(final: Path, fn: Callable[..., object], *args: Any) -> None:
    """Call ``fn(*args)``; an OSError becomes a one-line OutputError about ``final``."""
    try:
        fn(*args)
    except FileExistsError:
        raise
    except OSError as exc:
        if isinstance(exc, GeopspError):
            raise
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OutputError(f"{final}: disk full while committing the output; free space and run again") from exc
        raise OutputError(
            f"{final}: cannot commit the output ({exc.strerror}); check the disk and the folder's permissions"
        ) from exc


def _default_file_mode() -> int:
    """Return the mode a plainly created file gets here: ``0o666`` less the process umask."""
    umask = proc_status("Umask")
    if umask is not None:
        return 0o666 & ~int(umask, 8)
    current = os.umask(0o022)  # no /proc: read it by setting it, and put it back at once
    os.umask(current)
    return 0o666 & ~current


def _widen_to(path: Path, mode: int) -> None:
    """Give a finished file the umask's permissions.

    Some writers (safetensors, ``tempfile``) create files readable by their owner only, which
    would keep a model or map from the dask workers and colleagues that share the folder.
    """
    st = path.stat()
    if stat.S_ISREG(st.st_mode) and (st.st_mode & 0o777) != mode:
        with contextlib.suppress(OSError):  # not our file to change (another owner): leave it
            os.chmod(path, mode)


def _cleanup(tmp: Path, sidecars: Sequence[str]) -> None:
    for p in [tmp, *(Path(str(tmp) + s) for s in sidecars)]:
        with contextlib.suppress(OSError):
            p.unlink()
