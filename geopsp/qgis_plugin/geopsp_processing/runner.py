"""Run ``python -m geopsp ... --progress json`` in the environment recorded at install, for QGIS.

This module imports neither QGIS nor geopsp: QGIS's Python has neither geopsp nor torch,
so every algorithm runs geopsp as a child process with the Python that ran
``geopsp qgis install`` (recorded in ``geopsp_env.json`` next to this file). The child's
stderr carries JSON lines (``geopsp.progress/1``: ``start``, ``progress``, ``device``,
``output``, ``error``, ``done``) and plain log lines; :func:`run_geopsp` turns them into
calls on a QGIS feedback object and returns the outputs the child reported.

Cancelling (``feedback.isCanceled()``) sends SIGTERM; geopsp then removes its temporary
files and commits nothing. A child that has not ended after a grace period is killed
(a later geopsp run removes what a killed one left). On Windows the child is terminated at
once (there is no SIGTERM there).
"""

from __future__ import annotations

import json
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

__all__ = [
    "CONFIG_NAME",
    "ENVIRONMENT_KEYS",
    "GeopspCancelled",
    "GeopspFailed",
    "child_environment",
    "load_environment",
    "run_geopsp",
]

CONFIG_NAME = "geopsp_env.json"
"""The file ``geopsp qgis install`` writes into the installed plugin."""

# Variables that select a Python and its GDAL/PROJ. QGIS sets its own (its Python's paths,
# its GDAL's data and drivers), which would break the geopsp environment's rasterio; the
# child gets the values recorded at install instead (or none).
ENVIRONMENT_KEYS = (
    "PYTHONPATH",
    "PYTHONHOME",
    "GDAL_DATA",
    "GDAL_DRIVER_PATH",
    "PROJ_LIB",
    "PROJ_DATA",
)

_EOF = object()


class GeopspFailed(RuntimeError):
    """geopsp could not be started or exited with an error (the message is its one line)."""


class GeopspCancelled(GeopspFailed):
    """The run was cancelled; geopsp removed its temporary files and wrote no outputs."""


def load_environment(folder: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Read the environment recorded at install (``geopsp_env.json`` in the plugin folder).

    Raises
    ------
    GeopspFailed
        If the file is missing or unreadable, or its Python no longer exists.
    """
    path = Path(folder if folder is not None else Path(__file__).parent) / CONFIG_NAME
    hint = "run `geopsp qgis install` with the Python environment that has geopsp"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GeopspFailed(f"{path}: missing, so this plugin does not know which Python runs geopsp; {hint}") from None
    except (OSError, ValueError) as exc:
        raise GeopspFailed(f"{path}: unreadable ({exc}); {hint}") from None
    python = config.get("python")
    if not isinstance(python, str) or not Path(python).exists():
        raise GeopspFailed(f"{path}: the Python it names ({python}) does not exist any more; {hint}")
    return dict(config)


def child_environment(config: dict[str, Any], base: dict[str, str] | None = None) -> dict[str, str]:
    """Return the child's environment: this process's, with the recorded Python/GDAL variables."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in ENVIRONMENT_KEYS}
    recorded = config.get("environment") or {}
    env.update({k: str(v) for k, v in recorded.items() if k in ENVIRONMENT_KEYS})
    env["PYTHONIOENCODING"] = "utf-8"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_geopsp(
    args: list[str],
    feedback: Any,
    *,
    config: dict[str, Any] | None = None,
    grace_s: float = 15.0,
    poll_s: float = 0.1,
) -> dict[str, str]:
    """Run ``geopsp ARGS --progress json``, reporting to ``feedback``; return its outputs.

    Parameters
    ----------
    args : list of str
        The command and its options, e.g. ``["predict", scene, "--model", m, "--out", d]``.
    feedback : QgsProcessingFeedback
        Gets the progress (``setProgress``), the device and the log lines (``pushInfo``,
        ``pushWarning``); polled for ``isCanceled()``.
    config : dict, optional
        The recorded environment (default: :func:`load_environment`).
    grace_s : float
        Seconds a cancelled child has to clean up before it is killed.
    poll_s : float
        How often cancellation is checked.

    Returns
    -------
    dict of str to str
        Each ``output`` event's name and path (``classes``, ``vector``, ``summary`` ...).

    Raises
    ------
    GeopspCancelled
        The run was cancelled (and geopsp stopped).
    GeopspFailed
        geopsp exited with an error: its one-line message.
    """
    env_config = config if config is not None else load_environment()
    cmd = [env_config["python"], "-m", "geopsp", *args, "--progress", "json"]
    feedback.pushCommandInfo(" ".join(shlex.quote(c) for c in cmd))
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_environment(env_config),
            text=True,
            encoding="utf-8",
            errors="replace",
        )
    except OSError as exc:
        raise GeopspFailed(f"cannot start {cmd[0]} ({exc}); run `geopsp qgis install` again") from None
    return _Session(proc, feedback, grace_s=grace_s, poll_s=poll_s).wait()


class _Session:
    """One child process: its stderr read line by line, its stdout kept, cancellation watched."""

    def __init__(self, proc: subprocess.Popen[str], feedback: Any, *, grace_s: float, poll_s: float) -> None:
        self.proc = proc
        self.feedback = feedback
        self.grace_s = grace_s
        self.poll_s = poll_s
        self.lines: queue.Queue[object] = queue.Queue()
        self.stdout: list[str] = []
        self.outputs: dict[str, str] = {}
        self.errors: list[str] = []
        self.error_lines: list[str] = []
        self.last_line = ""
        self.done = False
        self.cancelled_at: float | None = None
        self.killed = False

    def wait(self) -> dict[str, str]:
        """Follow the child to its end; return its outputs or raise its error."""
        readers = [
            threading.Thread(target=self._read, args=(self.proc.stderr, True), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stdout, False), daemon=True),
        ]
        for t in readers:
            t.start()
        try:
            while True:
                try:
                    item = self.lines.get(timeout=self.poll_s)
                except queue.Empty:
                    item = None
                if item is _EOF:
                    break
                if isinstance(item, str):
                    self._line(item)
                self._watch_cancel()
        finally:
            if self.proc.poll() is None:  # an exception in QGIS's thread: do not leave geopsp running
                self._stop()
            code = self.proc.wait()
            for t in readers:
                t.join(timeout=5)
        if self.stdout:
            self.feedback.pushDebugInfo("".join(self.stdout).rstrip())
        return self._result(code)

    def _read(self, stream: Any, is_stderr: bool) -> None:
        for line in iter(stream.readline, ""):
            if is_stderr:
                self.lines.put(line.rstrip("\r\n"))
            else:
                self.stdout.append(line)
        stream.close()
        if is_stderr:
            self.lines.put(_EOF)

    def _watch_cancel(self) -> None:
        if self.cancelled_at is None and self.feedback.isCanceled():
            self.cancelled_at = time.monotonic()
            self.feedback.pushInfo("Cancelling: geopsp removes its temporary files and writes no outputs")
            self._stop()
        elif (
            self.cancelled_at is not None
            and not self.killed
            and time.monotonic() - self.cancelled_at > self.grace_s
            and self.proc.poll() is None
        ):
            self.killed = True
            self.feedback.pushWarning(f"geopsp did not stop within {self.grace_s:g} s; killing it")
            self.proc.kill()

    def _stop(self) -> None:
        if self.proc.poll() is not None:
            return
        if sys.platform == "win32":
            self.proc.terminate()
        else:
            self.proc.send_signal(signal.SIGTERM)

    def _line(self, line: str) -> None:
        if not line.strip():
            return
        event = _event(line)
        if event is None:
            self.last_line = line
            if line.startswith("Error:"):
                self.error_lines.append(line[len("Error:") :].strip())
                self.feedback.pushInfo(line)
            elif line.startswith("Warning:"):
                self.feedback.pushWarning(line[len("Warning:") :].strip())
            else:
                self.feedback.pushInfo(line)
            return
        kind = event.get("event")
        if kind == "progress":
            total = event.get("total") or 0
            if total > 0:
                self.feedback.setProgress(min(100.0, 100.0 * float(event.get("done", 0)) / float(total)))
        elif kind == "device":
            self.feedback.pushInfo(_device_line(event))
        elif kind == "output":
            self.outputs[str(event.get("name"))] = str(event.get("path"))
        elif kind == "start":
            self.feedback.pushInfo(f"geopsp {event.get('version')}: {event.get('command')} {event.get('scene')}")
        elif kind == "error":
            self.errors.append(str(event.get("message")))
        elif kind == "done":
            self.done = True

    def _result(self, code: int) -> dict[str, str]:
        if code == 0 and self.done:
            return self.outputs
        if self.cancelled_at is not None:
            how = "killed; a later geopsp run removes its temporary files" if self.killed else "stopped"
            raise GeopspCancelled(f"cancelled: geopsp {how}, no outputs were written")
        message = (self.errors or self.error_lines or [self.last_line or f"geopsp exited with status {code}"])[-1]
        raise GeopspFailed(message)


def _event(line: str) -> dict[str, Any] | None:
    """Parse a JSON event line; None for a plain log line."""
    if not line.startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) and "event" in obj else None


def _device_line(event: dict[str, Any]) -> str:
    device = event.get("device")
    name = event.get("device_name")
    text = f"geopsp ran on {device}" + (f" ({name})" if name else "") + f" with {event.get('runtime')}"
    if event.get("reason"):
        text += f": {event['reason']}"
    return text
