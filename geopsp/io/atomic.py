"""Write outputs under a temporary name and rename them into place when complete.

A failure at any point (an exception, Ctrl-C, a full disk) leaves nothing under the final
name; an existing output is only replaced with ``overwrite=True``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import socket
import stat
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from geopsp._procfs import proc_status
from geopsp.errors import GeopspError, OutputError, OutputExistsError
from geopsp.io.outdir import ensure_output_dir

__all__ = ["atomic_output", "check_output_path", "remove_stale_temps", "temp_name", "temp_prefix"]

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
            if m is None or m.group(1) != _HOST or out.name not in m.group(3) or not tmp.is_file():
                continue
            if int(m.group(2)) == os.getpid() or _pid_alive(int(m.group(2))):
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
    """Yield a temporary path to write to; rename it to ``path`` when the block succeeds.

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
        they are renamed along with it.

    Yields
    ------
    Path
        Temporary path in the output's directory.

    Raises
    ------
    OutputExistsError, OutputError
        See :func:`check_output_path`; ``OutputError`` also for a full disk.
    """
    final = check_output_path(path, overwrite=overwrite, inputs=inputs)
    tmp = temp_name(final)
    try:
        yield tmp
        if not tmp.exists():
            raise OutputError(f"{final}: the writer produced no file")
        if final.exists() and not overwrite:
            # Someone else finished the same output while we worked.
            raise OutputExistsError(
                f"{final}: was created by another process meanwhile; pass --overwrite to replace it"
            )
        mode = _default_file_mode()
        for suffix in sidecars:
            side = Path(str(tmp) + suffix)
            if side.exists():
                _widen_to(side, mode)
                os.replace(side, Path(str(final) + suffix))
        _widen_to(tmp, mode)
        os.replace(tmp, final)
        logger.debug("wrote %s", final)
    except BaseException as exc:
        _cleanup(tmp, sidecars)
        if isinstance(exc, OSError) and not isinstance(exc, GeopspError) and exc.errno == errno.ENOSPC:
            raise OutputError(f"{final}: disk full while writing; free space and run again") from exc
        raise


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
