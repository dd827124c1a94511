"""The `.part` sidecar: which object the partial bytes belong to and how many of them are durable."""

from __future__ import annotations

import dataclasses
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path


@dataclass
class PartState:
    """The `.part` sidecar: what the partial bytes are and how many of them are durable."""

    url: str
    etag: str | None = None
    last_modified: str | None = None
    expected_size: int | None = None
    bytes_on_disk: int = 0
    prefix_sha256: str | None = None
    prefix_bytes: int = 0
    updated_at: float = 0.0
    # Set once the part is complete, before it is renamed into the store: after a crash between that
    # rename and the ledger commit, the sidecar names the blob the part became (no refetch).
    sha256: str | None = None

    @property
    def strong_etag(self) -> str | None:
        return self.etag if self.etag and not self.etag.startswith("W/") else None

    @classmethod
    def read(cls, path: Path) -> PartState | None:
        """The sidecar at `path`, or None when missing or unreadable (then the part is untrusted)."""
        try:
            data = json.loads(path.read_text())
            names = {f.name for f in dataclasses.fields(cls)}
            return cls(**{k: v for k, v in data.items() if k in names})
        except (OSError, ValueError, TypeError):
            return None

    def write(self, path: Path, fsync: bool = True) -> None:
        """Atomically replace the sidecar: tmp file, fsync, rename."""
        self.updated_at = time.time()
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        data = json.dumps(dataclasses.asdict(self)).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
