"""What a command shows while it runs: a rich bar, JSON lines for programs, or nothing.

``--progress bar`` (the default) draws the rich bar on stderr; ``--progress json`` writes one
JSON object per line on stderr instead, for programs that drive geopsp (the QGIS plugin);
``--progress none`` (or ``--no-progress``) shows nothing. Log messages and warnings stay on
stderr as plain lines, which never start with ``{``; stdout is unchanged.

Every JSON object has an ``"event"`` key; :data:`EVENTS` lists them and their fields (the
reference page of the CLI is generated from it). The last event is ``done`` when the exit
status is 0, else ``error``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar, cast

import click

__all__ = ["EVENTS", "PROGRESS_SCHEMA", "ProgressBar", "ProgressMode", "Reporter", "progress_option"]

PROGRESS_SCHEMA = "geopsp.progress/1"
"""The version tag of the JSON events (in each ``start`` event)."""

ProgressMode = Literal["bar", "json", "none"]

EVENTS: dict[str, str] = {
    "start": "`command`, `scene`, `index` and `count` (its place among the command's scenes), `schema` "
    "(`geopsp.progress/1`), `version` (geopsp's), `pid`: a scene is about to be processed.",
    "progress": "`done`, `total`, `unit` (`tiles`, `rows`, `scenes`): at most every 0.25 s, plus the first and "
    "the last report.",
    "device": "`device` (`cpu`, `cuda:0`), `device_name`, `runtime` (`torch` or `onnxruntime`), `reason` (why that "
    "runtime), `amp`: what the scene ran on, from its run summary (sent once its tiles ran).",
    "output": "`name` (`classes`, `qml`, `probability`, `vector`, `vector_qml`, `summary`, `report` ...; a file name "
    "for `batch`) and `path` (a path or an `s3://` URI), plus `scene` for `batch`: a file complete under its final "
    "name.",
    "error": "`message`: the one line the CLI prints after `Error:`; `scene` when only that scene failed and the "
    "command goes on with the others; `cancelled: true` after SIGINT or SIGTERM (nothing was left behind).",
    "done": "`command`: the command finished with exit status 0.",
}
"""The JSON events of ``--progress json`` and their fields (Markdown)."""

F = TypeVar("F", bound=Callable[..., Any])
Callback = Callable[[int, int], None]


class ProgressBar:
    """A rich progress bar on stderr; entering yields a ``progress(done, total)`` callback.

    Parameters
    ----------
    label : str
        Text left of the bar (a scene name, a command).
    unit : str, optional
        Word right of the counts (``"tiles"``, ``"windows"``).
    enabled : bool, default True
        When False, entering yields ``None`` and nothing is drawn (``-q``, no terminal).
    """

    def __init__(self, label: str, *, unit: str | None = None, enabled: bool = True) -> None:
        self.label = label
        self.unit = unit
        self.enabled = enabled
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> Callback | None:
        if not self.enabled:
            return None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        columns: list[Any] = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
        if self.unit:
            columns.append(TextColumn(self.unit))
        columns.append(TimeElapsedColumn())
        self._bar = Progress(*columns, console=Console(stderr=True), transient=False)
        self._bar.start()
        self._task = self._bar.add_task(self.label, total=None)
        return self._update

    def _update(self, done: int, total: int) -> None:
        self._bar.update(self._task, completed=done, total=total)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()


class Reporter:
    """One command's progress reports, in the mode ``--progress`` chose.

    Commands get one from :func:`progress_option`; outside ``json`` mode every method but
    :meth:`bar` does nothing.

    Parameters
    ----------
    mode : {"bar", "json", "none"}
        What to show.
    command : str
        The command's name, for the ``start`` and ``done`` events.
    interval_s : float, default 0.25
        Least time between two ``progress`` events.
    """

    def __init__(self, mode: ProgressMode, *, command: str, interval_s: float = 0.25) -> None:
        self.mode = mode
        self.command = command
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._errors = 0

    @property
    def json(self) -> bool:
        """Whether events are written as JSON lines."""
        return self.mode == "json"

    def event(self, kind: str, /, **fields: Any) -> None:
        """Write one event (``{"event": kind, **fields}``) as a JSON line on stderr (``json`` mode only)."""
        if not self.json:
            return
        line = json.dumps({"event": kind, **fields}, default=str, allow_nan=False)
        with self._lock:
            stream = sys.stderr  # looked up each time: tests and callers may redirect it
            stream.write(line + "\n")
            stream.flush()

    def start(self, scene: object, *, index: int = 1, count: int = 1) -> None:
        """Report that ``scene`` (the ``index``-th of ``count``) is about to be processed."""
        from geopsp import __version__

        self.event(
            "start",
            command=self.command,
            scene=str(scene),
            index=index,
            count=count,
            schema=PROGRESS_SCHEMA,
            version=__version__,
            pid=os.getpid(),
        )

    def bar(self, label: str, *, unit: str, enabled: bool = True) -> contextlib.AbstractContextManager[Callback | None]:
        """Return what yields the library's ``progress(done, total)`` callback (or None) for one loop.

        ``enabled`` applies to the bar only (``-q``, stderr not a terminal); asked-for JSON
        events are always written.
        """
        if self.mode == "bar":
            return ProgressBar(label, unit=unit, enabled=enabled)
        if self.json:
            return contextlib.nullcontext(self._throttled(unit))
        return contextlib.nullcontext(None)

    def _throttled(self, unit: str) -> Callback:
        last: dict[str, Any] = {"at": -float("inf"), "counts": None}

        def progress(done: int, total: int) -> None:
            now, counts = time.monotonic(), (int(done), int(total))
            if counts != last["counts"] and (done >= total or now - last["at"] >= self.interval_s):
                last["at"], last["counts"] = now, counts
                self.event("progress", done=counts[0], total=counts[1], unit=unit)

        return progress

    def device(self, settings: Mapping[str, Any]) -> None:
        """Report the device a scene ran on, from its run summary's ``device`` section."""
        self.event(
            "device",
            device=settings.get("device"),
            device_name=settings.get("device_name"),
            runtime=settings.get("runtime"),
            reason=settings.get("runtime_reason"),
            amp=settings.get("amp"),
        )

    def outputs(self, outputs: Mapping[str, object], **fields: Any) -> None:
        """Report each complete output (name to path or URI), in order; ``fields`` go into each event."""
        for name, path in outputs.items():
            where = os.fspath(path) if isinstance(path, os.PathLike) else str(path)
            self.event("output", name=name, path=where, **fields)

    def failed(self, message: str, *, scene: object | None = None) -> None:
        """Report an error: of one scene (the command goes on) or of the command."""
        self._errors += 1
        fields: dict[str, Any] = {"message": message}
        if scene is not None:
            fields["scene"] = str(scene)
        self.event("error", **fields)

    def finish(self, exc: BaseException | None) -> None:
        """Write the last event: ``done``, or ``error`` for ``exc`` (an exit status other than 0)."""
        if exc is None or (isinstance(exc, SystemExit) and exc.code in (0, None)):
            self.event("done", command=self.command)
            return
        if isinstance(exc, click.exceptions.Exit) and exc.exit_code == 0:
            self.event("done", command=self.command)
            return
        if isinstance(exc, (SystemExit, click.exceptions.Exit)):
            if self._errors == 0:  # the command printed its own message
                code = exc.code if isinstance(exc, SystemExit) else exc.exit_code
                self.failed(f"{self.command} exited with status {code}")
            return
        from geopsp.cli.main import describe_error

        message = describe_error(exc)
        if isinstance(exc, KeyboardInterrupt):
            self._errors += 1
            self.event("error", message=message, cancelled=True)
        else:
            self.failed(message)


def progress_option(command: str) -> Callable[[F], F]:
    """Add ``--progress bar|json|none`` and ``--no-progress``; the command gets ``report: Reporter``.

    Apply it below the command's other options (it passes their arguments through). The
    reporter writes the last event (``done`` or ``error``) when the command returns or raises.
    """

    def decorate(f: F) -> F:
        @functools.wraps(f)
        def run(*args: Any, progress: str, no_progress: bool, **kwargs: Any) -> Any:
            mode = cast("ProgressMode", "none" if no_progress else progress)
            report = Reporter(mode, command=command)
            try:
                result = f(*args, report=report, **kwargs)
            except BaseException as exc:
                report.finish(exc)
                raise
            report.finish(None)
            return result

        opts = [
            click.option(
                "--progress",
                type=click.Choice(["bar", "json", "none"]),
                default="bar",
                show_default=True,
                help="Progress on stderr: a bar, JSON lines for programs (see Progress as JSON lines), or nothing.",
            ),
            click.option("--no-progress", is_flag=True, help="Same as --progress none."),
        ]
        wrapped: Any = run
        for opt in reversed(opts):
            wrapped = opt(wrapped)
        return cast("F", wrapped)

    return decorate
