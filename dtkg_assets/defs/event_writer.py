"""Per-partition Dagster events written by one background thread, so download workers never wait.

On the embedded (SQLite) storage each event is a new engine, a commit and a close under one storage
lock, 10-30 ms of Python: sixteen workers logging inline would queue on that lock instead of
downloading. Here workers hand the event over and go on; one thread writes events back to back (the
storage serializes them anyway), overlapping the network waits. `close()` drains the queue before the
step ends, so every event is written inside the step, in the order the works finished.
"""

from collections.abc import Callable
from typing import Any

from dtkg_assets.core.background import BackgroundWorker


class BackgroundEvents(BackgroundWorker):
    """`log(event)` from any thread; `close()` (or leaving the `with` block) waits for all of them and
    raises the first error (a later `log` raises it too: the step stops handing events over)."""

    def __init__(self, log_event: Callable[[Any], None]) -> None:
        self.written = 0

        def write(event: Any) -> None:
            log_event(event)
            self.written += 1

        super().__init__(write, name="dtkg-dagster-events")

    def log(self, event: Any) -> None:
        if self.error is not None:
            raise self.error
        self.put(event)

    def __enter__(self) -> "BackgroundEvents":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
