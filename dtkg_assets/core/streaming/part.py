"""The `.part` of one download and its durability: opened with the rolling hash seeded from the
bytes kept, preallocated, made durable by checkpoints (fsync first, then the sidecar, which never
claims more than is durable; on a helper thread while streaming, one in flight at most), cut back
and recorded after an error, finished (final size and hash) before the rename into the store.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dtkg_assets.core.crashpoints import crash_point
from dtkg_assets.core.errors import DtkgError, Reason
from dtkg_assets.core.settings import MiB, Settings
from dtkg_assets.core.store import sha256_file
from dtkg_assets.core.streaming.sidecar import PartState
from dtkg_assets.core.streaming.validators import ServerValidators
from dtkg_assets.core.types import FetchHooks, FetchResult


@dataclass
class Download:
    """Per-fetch state (the Engine itself holds none, so one Engine serves many threads), and what
    happens to its `.part`: opened with the hash seeded from the kept bytes, preallocated,
    checkpointed, cut back to what is durable after an error, finished."""

    settings: Settings
    url: str
    work_id: str | None
    part: Path
    sidecar: Path
    hooks: FetchHooks
    result: FetchResult
    validators: ServerValidators | None = None
    fd: int = -1
    pos: int = 0  # logical bytes written to the part (preallocated space excluded)
    durable: int = 0  # bytes covered by the last fsync + sidecar
    checkpointing: threading.Thread | None = None  # the background checkpoint in flight, if any
    checkpoint_error: BaseException | None = None  # what the last background checkpoint raised
    total: int | None = None
    hasher: Any = None
    prefix_sha256: str | None = None
    prefix_bytes: int = 0
    preallocated: bool = False
    reservations: contextlib.ExitStack | None = None
    reserved: bool = False

    def open_part(self, offset: int) -> int:
        """Open the part, drop anything past `offset`, and seed the hash with the kept bytes."""
        self.settle()
        if self.fd < 0:
            self.fd = os.open(self.part, os.O_RDWR | os.O_CREAT, 0o644)
        fd = self.fd
        os.ftruncate(fd, offset)
        self.preallocated = False
        h = hashlib.sha256()
        pos = 0
        while pos < offset:
            block = os.pread(fd, min(4 * MiB, offset - pos), pos)
            if not block:
                raise DtkgError(Reason.HASH_MISMATCH, f"part {self.part} shorter than {offset} while seeding")
            h.update(block)
            pos += len(block)
        prefix_len = min(self.settings.resume.prefix_check_bytes, offset)
        prefix_hash = sha256_file(self.part, prefix_len) if offset else None
        self.hasher = h
        self.pos = self.durable = offset
        self.prefix_bytes = prefix_len
        self.prefix_sha256 = prefix_hash
        os.lseek(fd, offset, os.SEEK_SET)
        return offset

    def close_part(self) -> None:
        self.settle()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def restart(self) -> int:
        self.settle()
        self.sidecar.unlink(missing_ok=True)
        self.total = None
        return self.open_part(0)

    def preallocate(self) -> None:
        io = self.settings.io
        total = self.total
        if not io.preallocate or total is None or total < io.preallocate_min_size_bytes or total <= self.pos:
            return
        if not hasattr(os, "posix_fallocate"):
            return
        try:
            os.posix_fallocate(self.fd, self.pos, total - self.pos)
            self.preallocated = True
        except OSError as exc:
            if exc.errno in (28, 122):
                raise DtkgError(Reason.DISK_FULL, f"cannot preallocate {total} bytes: {exc}") from exc
            # Filesystems without fallocate: stream without preallocation.

    def checkpoint_behind(self) -> None:
        """Start a checkpoint of `pos` bytes on a helper thread; the stream goes on meanwhile (the
        fsync covers at least the bytes written before it began, and the sidecar claims only those).
        One is in flight at most: a previous one still running is waited for first, so when the disk
        is slower than the network the stream slows down instead of the durable mark falling behind
        (a crash loses the bytes since the last finished checkpoint: at most two intervals)."""
        self.settle()
        self.raise_checkpoint_error()
        if not self.settings.io.fsync:
            self.checkpoint()  # no fsync: the sidecar alone is cheap
            crash_point("body_checkpoint")
            return
        thread = threading.Thread(target=self._checkpoint_thread, args=(self.pos,), daemon=True,
                                  name=f"dtkg-checkpoint-{self.part.name[:24]}")
        self.checkpointing = thread
        thread.start()

    def _checkpoint_thread(self, pos: int) -> None:
        try:
            self.checkpoint(upto=pos)
        except BaseException as exc:  # handed to the streaming thread at its next checkpoint
            self.checkpoint_error = exc
            return
        crash_point("body_checkpoint")  # dies with the sidecar durable at `pos`

    def settle(self) -> None:
        """Wait for the background checkpoint in flight, if any (before the fd or the sidecar change)."""
        running = self.checkpointing
        if running is not None:
            running.join()
            self.checkpointing = None

    def raise_checkpoint_error(self) -> None:
        """What the last background checkpoint raised (ENOSPC, EIO), now on the streaming thread."""
        exc, self.checkpoint_error = self.checkpoint_error, None
        if exc is not None:
            raise exc

    def checkpoint(self, sha256: str | None = None, upto: int | None = None, sync_sidecar: bool = True) -> None:
        """Make `upto` (default `pos`) bytes durable, then record them in the sidecar (never the
        other way round). Runs on the streaming thread or, with `upto`, on the checkpoint thread."""
        durable = self.pos if upto is None else upto
        if self.settings.io.fsync:
            t0 = time.perf_counter()
            os.fdatasync(self.fd)
            self.result.fsync_s += time.perf_counter() - t0
        if self.prefix_sha256 is None or self.prefix_bytes < min(self.settings.resume.prefix_check_bytes, durable):
            n = min(self.settings.resume.prefix_check_bytes, durable)
            self.prefix_sha256 = hashlib.sha256(os.pread(self.fd, n, 0)).hexdigest() if n else None
            self.prefix_bytes = n
        v = self.validators
        PartState(
            url=self.url,
            etag=v.etag if v else None,
            last_modified=v.last_modified if v else None,
            expected_size=self.total,
            bytes_on_disk=durable,
            prefix_sha256=self.prefix_sha256,
            prefix_bytes=self.prefix_bytes,
            sha256=sha256,
        ).write(self.sidecar, fsync=self.settings.io.fsync and sync_sidecar)
        self.durable = durable

    def save_progress(self) -> None:
        """After an error: cut preallocated space and record what is durable, for the next attempt."""
        if self.fd < 0:
            return
        self.settle()
        self.checkpoint_error = None  # a failed background checkpoint is superseded by this one
        try:
            os.ftruncate(self.fd, self.pos)
            if self.pos > 0:
                self.checkpoint()
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                self._back_to_durable()

    def _back_to_durable(self) -> None:
        """The disk is full, so the bytes past the last checkpoint cannot be recorded (the sidecar
        cannot be rewritten) and would only hold the last free space: give it back. The part stays
        resumable from what its sidecar records, and goes when that is nothing."""
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, self.durable)
            self.pos = self.durable
            if self.durable == 0:
                self.part.unlink(missing_ok=True)
                self.sidecar.unlink(missing_ok=True)

    def finish_part(self) -> None:
        """Body complete: cut any preallocation, sync, and record the final size and hash."""
        self.settle()
        self.raise_checkpoint_error()
        os.ftruncate(self.fd, self.pos)
        # The checkpoint's fdatasync covers the new size too (needed to read the data back). A part
        # with no earlier checkpoint (most PDFs) gets its sidecar unsynced: it only spares a rerun
        # after a crash the request, so a power loss that loses it costs this one download, never a
        # wrong byte (the bytes are synced first; a missing or torn sidecar leaves the part untrusted).
        # One that replaces an earlier checkpoint is synced, so that it cannot cost the bytes before.
        self.checkpoint(sha256=self.hasher.hexdigest(), sync_sidecar=self.durable > 0)
        crash_point("part_fsynced")


def write_rest(fd: int, chunk: bytes, written: int) -> None:
    view = memoryview(chunk)
    while written < len(chunk):
        written += os.write(fd, view[written:])
