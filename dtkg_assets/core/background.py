"""One helper thread that applies a function to the items handed to it, in order, so the thread that
hands them over goes on at once (hashing beside the socket reads, Dagster events beside the
downloads). The first error stops the applying, not the taking, so `put` never blocks for good; it
is raised by `close`."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

_STOP = object()


class BackgroundWorker:
    """`put(item)` from any thread (it blocks while `depth` items wait; 0 = no limit); `close()` returns
    once every item handed over was applied, and raises the first error `apply` raised. With
    `batch` > 1, `apply` gets a list: the items waiting when it is called, at most `batch`."""

    def __init__(self, apply: Callable[[Any], object], *, name: str, depth: int = 0, batch: int = 1) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(depth)
        self._apply = apply
        self._batch = batch
        self.error: BaseException | None = None
        self.put = self._queue.put
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        get, apply = self._queue.get, self._apply
        stopping = False
        while not stopping and (item := get()) is not _STOP:
            items = [item]
            while len(items) < self._batch:
                try:
                    waiting = self._queue.get_nowait()
                except queue.Empty:
                    break
                if waiting is _STOP:
                    stopping = True
                    break
                items.append(waiting)
            if self.error is None:
                try:
                    apply(items if self._batch > 1 else item)
                except BaseException as exc:  # keeps taking items, so `put` never blocks for good
                    self.error = exc

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join()
        if self.error is not None:
            raise self.error
