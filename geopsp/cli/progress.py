"""The CLI's one progress bar: rich, on stderr, fed by the library's ``progress(done, total)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["ProgressBar"]


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

    def __enter__(self) -> Callable[[int, int], None] | None:
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
