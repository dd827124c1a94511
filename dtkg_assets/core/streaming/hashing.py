"""SHA-256 beside the stream: hashing a large body on a helper thread while the streaming thread reads
the socket and writes the file (hashlib releases the GIL)."""

from __future__ import annotations

from typing import Any

from dtkg_assets.core.background import BackgroundWorker
from dtkg_assets.core.settings import MiB

# Bodies at least this large are hashed on a helper thread, beside the socket reads and file writes.
HASH_THREAD_MIN = 8 * MiB


class HashPipe(BackgroundWorker):
    """Feeds a hashlib object from a helper thread. At most `depth` chunks wait (memory stays flat);
    `close` returns once every chunk handed over is in the hash."""

    def __init__(self, hasher: Any, depth: int = 8) -> None:
        super().__init__(hasher.update, name="dtkg-sha256", depth=depth)
        self.update = self.put
