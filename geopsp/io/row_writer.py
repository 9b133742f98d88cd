"""The writer thread: finished class rows go to the raster writer off the main thread."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Mapping
from typing import Any

from geopsp._heap import heap_bounded, trim_heap

__all__ = ["RowWriterThread"]


class RowWriterThread:
    """Hands finished rows to the raster writer on a background thread.

    Rows arrive in strips of the tile stride; they are regrouped, through one preallocated
    block-row buffer, into strips that end on the writer's block rows, so each output block is
    compressed once and no strip-sized array is allocated per write.
    """

    def __init__(self, writer: Any, r0: int, block_rows: int) -> None:
        self.writer = writer
        self.r0 = r0
        self.block_rows = max(1, int(block_rows))
        self.seconds = 0.0
        self.rows = 0
        # A band is handed over only once the writer is done with the one before: the writer
        # writes band n while the mosaic fills band n + 1, and no band waits between them. Each
        # is a full-width band (with every QA layer's rows), so a band waiting in a queue would
        # cost memory that grows with the width: 45 MB on a 20000 px wide scene with QA layers.
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._idle = threading.Semaphore(1)
        self._error: BaseException | None = None
        self._cls_buf: Any = None  # block_rows x width, allocated at the first partial block row
        self._qa_bufs: dict[str, Any] = {}
        self._buf_row = 0  # output row of the buffer's first row
        self._fill = 0  # rows of the buffer in use
        self._thread = threading.Thread(target=self._run, name="geopsp-writer", daemon=True)
        self._thread.start()

    def put(self, scene_row: int, cls: Any, qa: Mapping[str, Any]) -> None:
        """Queue finished rows (scene coordinates) and their QA layers' rows for writing."""
        self._check()
        while not self._idle.acquire(timeout=0.1):
            self._check()
        self._queue.put((scene_row - self.r0, cls, dict(qa)))  # the writer is free: it takes it at once

    def close(self) -> None:
        """Wait until every row is written; re-raise a write error."""
        self._queue.put(None)
        self._thread.join()
        self._check()

    def stop(self) -> None:
        """Stop without waiting for queued rows (on failure)."""
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        self._thread.join(timeout=30)

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def _write(self, row: int, cls: Any, qa: Mapping[str, Any]) -> None:
        t0 = time.perf_counter()
        self.writer.write_rows(row, cls, layers=qa)
        self.rows += cls.shape[0]
        if heap_bounded():
            trim_heap()
        self.seconds += time.perf_counter() - t0

    def _flush(self) -> None:
        if self._fill:
            n = self._fill
            self._fill = 0
            self._write(self._buf_row, self._cls_buf[:n], {k: b[:n] for k, b in self._qa_bufs.items()})

    def _take(self, row: int, cls: Any, qa: Mapping[str, Any]) -> None:
        import numpy as np

        if self._fill and self._buf_row + self._fill != row:
            self._flush()  # not contiguous with the buffered rows
        i, n = 0, cls.shape[0]
        while i < n:
            if not self._fill:
                self._buf_row = row + i
            # rows left until the end of the output block row the buffer lies in
            room = (self._buf_row // self.block_rows + 1) * self.block_rows - self._buf_row - self._fill
            k = min(room, n - i)
            part = {name: rows[i : i + k] for name, rows in qa.items()}
            if not self._fill and k == room:  # a whole block row at once: no copy
                self._write(row + i, cls[i : i + k], part)
            else:
                if self._cls_buf is None:  # one run: the width, dtypes and QA layers never change
                    self._cls_buf = np.empty((self.block_rows, *cls.shape[1:]), cls.dtype)
                    self._qa_bufs = {n: np.empty((self.block_rows, *r.shape[1:]), r.dtype) for n, r in qa.items()}
                self._cls_buf[self._fill : self._fill + k] = cls[i : i + k]
                for name, rows in part.items():
                    self._qa_bufs[name][self._fill : self._fill + k] = rows
                self._fill += k
                if k == room:
                    self._flush()
            i += k

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                break
            try:
                if self._error is None:  # else keep draining so producers never block
                    self._take(*item)
            except BaseException as exc:
                self._error = exc
            finally:
                del item  # the band's rows go before the next one is handed over
                self._idle.release()
        if self._error is None:
            try:
                self._flush()
            except BaseException as exc:
                self._error = exc
        self._cls_buf = None
        self._qa_bufs = {}
