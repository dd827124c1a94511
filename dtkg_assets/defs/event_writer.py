"""Per-partition Dagster events written by one background thread, so download workers never wait.

On the embedded (SQLite) storage each event is a new engine, a commit and a close under one storage
lock, 10-30 ms of Python: sixteen workers logging inline would queue on that lock instead of
downloading. Here workers hand the event over and go on; one thread writes events back to back (the
storage serializes them anyway), overlapping the network waits. `close()` drains the queue before the
step ends, so every event is written inside the step, in the order the works finished.
"""

import queue
import threading
from collections.abc import Callable
from typing import Any

_STOP = object()


class BackgroundEvents:
    """`log(event)` from any thread; `close()` (or leaving the `with` block) waits for all of them."""

    def __init__(self, log_event: Callable[[Any], None]) -> None:
        self._log_event = log_event
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self.written = 0
        self._thread = threading.Thread(target=self._run, name="dtkg-dagster-events", daemon=True)
        self._thread.start()

    def log(self, event: Any) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(event)

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            if event is _STOP:
                return
            if self._error is not None:
                continue  # drain without writing: the step reports the first error
            try:
                self._log_event(event)
                self.written += 1
            except BaseException as exc:  # surfaced to the step by close()
                self._error = exc

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def __enter__(self) -> "BackgroundEvents":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
