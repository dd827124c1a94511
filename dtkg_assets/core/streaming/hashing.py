"""SHA-256 beside the stream: hashing a large body on a helper thread while the streaming thread reads
the socket and writes the file (hashlib releases the GIL)."""

from __future__ import annotations

import queue
import threading
from typing import Any

from dtkg_assets.core.settings import MiB

# Bodies at least this large are hashed on a helper thread, beside the socket reads and file writes.
HASH_THREAD_MIN = 8 * MiB


class HashPipe:
    """Feeds a hashlib object from a helper thread, so hashing (which releases the GIL) overlaps the
    socket reads and file writes of the streaming thread. At most `depth` chunks wait (memory stays
    flat); `close` returns once every chunk handed over is in the hash."""

    def __init__(self, hasher: Any, depth: int = 8) -> None:
        self._queue: queue.Queue[bytes | None] = queue.Queue(depth)
        self._thread = threading.Thread(target=self._run, args=(hasher.update,), daemon=True, name="dtkg-sha256")
        self._error: BaseException | None = None
        self._thread.start()
        self.update = self._queue.put

    def _run(self, update: Any) -> None:
        get = self._queue.get
        while (chunk := get()) is not None:
            if self._error is None:
                try:
                    update(chunk)
                except BaseException as exc:  # keeps taking chunks, so `update` never blocks for good
                    self._error = exc

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
