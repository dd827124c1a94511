"""Content-addressed PDF store on the local filesystem.

Layout under ``settings.store_dir``::

    <sha[:width]>/<sha>.pdf     one blob per distinct content
    works/<work_id>.pdf         per-work name: a hardlink to the blob (a copy when links fail)

Partial downloads live in ``settings.staging_dir`` (same filesystem, so finalize is a rename).
Every effect is idempotent: finalizing identical bytes again or re-linking a work is a no-op, so
a crash between two steps is repaired by simply running them again.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dtkg_assets.core.crashpoints import crash_point
from dtkg_assets.core.errors import DtkgError, Reason
from dtkg_assets.core.settings import Settings

HASH_BLOCK = 1024 * 1024
_WORK_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")

LinkMode = Literal["hardlink", "copy", "existing"]


@dataclass(frozen=True)
class FinalizeResult:
    path: Path
    created: bool  # False: the blob already existed (dedupe), the part was dropped


@dataclass(frozen=True)
class LinkResult:
    path: Path
    mode: LinkMode


def sha256_file(path: Path | str, limit: int | None = None) -> str:
    """SHA-256 of a file (or of its first `limit` bytes)."""
    h = hashlib.sha256()
    remaining = limit
    with open(path, "rb", buffering=0) as f:
        while True:
            want = HASH_BLOCK if remaining is None else min(HASH_BLOCK, remaining)
            if want <= 0:
                break
            block = f.read(want)
            if not block:
                break
            h.update(block)
            if remaining is not None:
                remaining -= len(block)
    return h.hexdigest()


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def store_relative(path: str | Path | None, root: Path) -> str | None:
    """The ledger's name for a file in the store: its path relative to the store root, so a home can
    be moved or copied (`mv`, `cp -a`). A path outside the store is kept as given."""
    if path is None:
        return None
    p = Path(path)
    if not p.is_absolute():
        return str(p)
    try:
        return str(p.relative_to(root))
    except ValueError:
        try:
            return str(p.resolve().relative_to(root.resolve()))
        except (ValueError, OSError):
            return str(p)


def resolve_store_path(path: str | Path, root: Path) -> Path:
    """A path from the ledger as a file on this machine: relative paths are under the store root."""
    p = Path(path)
    return p if p.is_absolute() else root / p


def check_work_id(work_id: str) -> str:
    """Work ids become file names: refuse anything that could escape the store."""
    if not _WORK_ID_RE.match(work_id):
        raise DtkgError(
            Reason.BAD_INPUT,
            f"work id {work_id!r} is not usable as a file name (letters, digits, '.', '_', '-'; max 200)",
        )
    return work_id


class QuotaGuard:
    """Refuses a download before any byte is written when the disk would get too full.

    Free space minus the bytes reserved by downloads in flight (in this process) must exceed
    ``free_bytes_min + margin_factor * expected``. Reservations are released when the block ends.
    """

    def __init__(self, settings: Settings, free_bytes: Callable[[], int] | None = None) -> None:
        self.settings = settings
        self._free_bytes = free_bytes or self._disk_free
        self._lock = threading.Lock()
        self._reserved = 0

    def _disk_free(self) -> int:
        path = self.settings.store_dir
        while not path.exists() and path != path.parent:
            path = path.parent
        return shutil.disk_usage(path).free

    @property
    def reserved(self) -> int:
        with self._lock:
            return self._reserved

    @contextmanager
    def reserve(self, expected_bytes: int | None) -> Iterator[int]:
        """Reserve room for `expected_bytes` (unknown size: only the free-space floor is checked)."""
        quota = self.settings.quota
        expected = max(0, expected_bytes or 0)
        need = quota.free_bytes_min + int(quota.margin_factor * expected)
        with self._lock:
            free = self._free_bytes()
            available = free - self._reserved
            if available < need:
                raise DtkgError(
                    Reason.QUOTA_EXCEEDED,
                    f"not enough free space on the store's filesystem ({self.settings.store_dir}): free {free} - "
                    f"reserved {self._reserved} = {available} bytes < required {need} (floor "
                    f"DTKG_QUOTA_FREE_BYTES_MIN={quota.free_bytes_min} + DTKG_QUOTA_MARGIN_FACTOR={quota.margin_factor}"
                    f" x {expected} expected bytes). Free space there, or lower DTKG_QUOTA_FREE_BYTES_MIN",
                )
            self._reserved += expected
        try:
            yield expected
        finally:
            with self._lock:
                self._reserved -= expected


class Store:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.store_dir
        self.works_dir = self.root / "works"
        self.staging_dir = settings.staging_dir
        self.quota = QuotaGuard(settings)
        self._lock = threading.Lock()
        self._dedupe_count = 0
        self.ensure_dirs()

    def ensure_dirs(self) -> None:
        for d in (self.root, self.works_dir, self.staging_dir):
            d.mkdir(parents=True, exist_ok=True)

    # ---- names -------------------------------------------------------------------------------
    def blob_path(self, sha256: str) -> Path:
        if not _SHA_RE.match(sha256):
            raise ValueError(f"not a lower-case hex SHA-256: {sha256!r}")
        return self.root / sha256[: self.settings.store.shard_width] / f"{sha256}.pdf"

    def work_path(self, work_id: str) -> Path:
        return self.works_dir / f"{check_work_id(work_id)}.pdf"

    def part_paths(self, work_id: str | None, url: str) -> tuple[Path, Path]:
        """(`.part`, sidecar) for one (work, URL): two works fetching one URL never share a part."""
        name = hashlib.sha256(f"{work_id or ''}\n{url}".encode()).hexdigest()[:32]
        part = self.staging_dir / f"{name}.part"
        return part, part.with_name(part.name + ".json")

    @property
    def dedupe_count(self) -> int:
        with self._lock:
            return self._dedupe_count

    # ---- effects -----------------------------------------------------------------------------
    def finalize(self, part: Path, sha256: str) -> FinalizeResult:
        """Move a verified part into its content address (atomic; idempotent for identical bytes).

        The part's bytes must be durable already: the engine's last checkpoint synced them (a second
        fsync here cost every artifact a syscall and an open for nothing)."""
        dest = self.blob_path(sha256)
        try:
            part_size = os.stat(part).st_size
        except FileNotFoundError:
            # A previous run already moved it (crash after the rename): the effect is done.
            if dest.exists():
                return FinalizeResult(dest, created=False)
            raise DtkgError(Reason.HASH_MISMATCH, f"part {part} is gone and blob {dest.name} is missing") from None
        created = True
        try:
            # link() creates only if absent: two workers finalizing the same bytes cannot both "create".
            try:
                os.link(part, dest)
            except FileNotFoundError:  # the first blob under this fan-out directory
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.link(part, dest)
        except FileExistsError:
            if self._holds(dest, sha256, part_size):
                created = False
            else:
                # A damaged blob under this address (a flipped byte keeps the size): replace it with the
                # verified bytes, never dedupe against it.
                os.replace(part, dest)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP):
                raise
            if dest.exists() and self._holds(dest, sha256, part_size):
                created = False
            else:
                os.replace(part, dest)
        crash_point("finalize_linked")  # crash tests: the blob and the part are one file with two names
        part.unlink(missing_ok=True)
        if not created:
            with self._lock:
                self._dedupe_count += 1
        if self.settings.io.fsync:
            # The blob's name is made durable; the part's removal need not be. Should a power loss bring
            # the part back, it is a second name of the blob, which the engine never resumes
            # (`part_is_a_stored_blob`) and finishes from disk when its sidecar names the blob.
            fsync_dir(dest.parent)
        return FinalizeResult(dest, created=created)

    @staticmethod
    def _holds(blob: Path, sha256: str, size: int) -> bool:
        """An existing blob counts only when it has the size and hashes to its address."""
        try:
            return blob.stat().st_size == size and sha256_file(blob) == sha256
        except FileNotFoundError:
            return False

    def link_work(self, work_id: str, sha256: str) -> LinkResult:
        """Give the work its own name for the blob: hardlink, or a copy when links are impossible."""
        blob = self.blob_path(sha256)
        target = self.work_path(work_id)
        hardlink = self.settings.store.dedupe_hardlink and self.settings.store.dedupe_enabled
        if target.exists():
            if os.path.samefile(target, blob):
                return LinkResult(target, "existing")
            if not hardlink:
                tst, bst = target.stat(), blob.stat()
                if tst.st_size == bst.st_size and sha256_file(target) == sha256:
                    return LinkResult(target, "existing")
        elif hardlink:
            # A new name: link() creates it at once, pointing at complete bytes (no temporary name).
            try:
                os.link(blob, target)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP):
                    raise
            else:
                if self.settings.io.fsync:
                    fsync_dir(target.parent)
                return LinkResult(target, "hardlink")
        mode: LinkMode = "copy"
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            if hardlink:
                try:
                    os.link(blob, tmp)
                    mode = "hardlink"
                except OSError as exc:
                    if exc.errno not in (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP):
                        raise
            if mode == "copy":
                shutil.copyfile(blob, tmp)
                if self.settings.io.fsync:
                    fsync_file(tmp)
            # Atomic: the work name always points at complete bytes, old or new.
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                tmp.unlink()
        if self.settings.io.fsync:
            fsync_dir(target.parent)
        return LinkResult(target, mode)

    def verify(self, sha256: str) -> bool:
        """Re-hash a blob: True when it exists and its bytes match its address."""
        path = self.blob_path(sha256)
        try:
            return sha256_file(path) == sha256
        except FileNotFoundError:
            return False

    def discard_part(self, part: Path, sidecar: Path) -> None:
        for p in (part, sidecar):
            p.unlink(missing_ok=True)
