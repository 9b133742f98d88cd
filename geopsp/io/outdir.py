"""Output folders: the one place that creates a folder for outputs and checks it can be written."""

from __future__ import annotations

import os
from pathlib import Path

from geopsp.errors import OutputError

__all__ = ["ensure_output_dir"]


def ensure_output_dir(path: str | os.PathLike[str]) -> Path:
    """Create an output folder (with its parents) unless it exists, and check it can be written.

    Parameters
    ----------
    path : str or os.PathLike
        The folder.

    Returns
    -------
    Path
        The folder.

    Raises
    ------
    OutputError
        If the path is a file, the folder cannot be created, or it is not writable; the message
        names the folder and the reason.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     ensure_output_dir(Path(tmp) / "a" / "b").is_dir()
    True
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a directory; choose another output directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"{out}: cannot create output directory ({exc.strerror}); choose a writable location"
        ) from exc
    if not os.access(out, os.W_OK | os.X_OK):
        raise OutputError(f"{out}: output directory is not writable; choose a writable location")
    return out
