"""The DuckDB file backend's storage: the single-writer file lock, the published read snapshot, and
damaged or unwritable files told apart in words. Nothing here speaks SQL beyond opening a file.

Files under `$DTKG_HOME`:
- `ledger.duckdb` (+ `.wal`): the live file, opened read-write by the one writer process only.
- `ledger.lock`: an `flock` (exclusive for the writer, shared for a live reader) and the holder's pid.
- `ledger.snapshot.duckdb`: the published copy that every reader opens read-only.
- `ledger.duckdb.damaged-<time>`: a damaged live file kept aside by `dtkg ledger repair`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb

from dtkg_assets.core.errors import DtkgError, Reason
from dtkg_assets.core.settings import Settings

# A DuckDB file starts with an 8-byte checksum and the magic bytes "DUCK".
_MAGIC = b"DUCK"
_MAGIC_OFFSET = 8
_HEADER_SIZE = 4096  # the main header, then two alternating database headers
_SNAPSHOT_TMP_GLOB = ".ledger.snapshot.duckdb.*.tmp"


class LedgerError(Exception):
    """A ledger problem a user can act on; the message names the file and what to do."""


class LedgerBusy(LedgerError):
    """The single-writer lock stayed held for the whole wait."""


class LedgerUnavailable(LedgerError):
    """No readable ledger: nothing published yet, or the file to read is damaged."""


class LedgerCorrupt(LedgerUnavailable):
    """The ledger file (or its snapshot) is damaged: `dtkg ledger repair` recovers."""

    def __init__(self, path: Path, detail: str, *, snapshot: bool = False) -> None:
        self.path = path
        self.detail = detail
        if snapshot:
            what = (f"the ledger snapshot {path} is damaged ({detail}). Readers cannot use it until a writer "
                    "publishes a new one: run `dtkg ledger repair` (or any command that writes, e.g. "
                    "`dtkg reconcile`).")
        else:
            what = (f"the ledger {path} is damaged ({detail}). Run `dtkg ledger repair`: it keeps the damaged "
                    "file aside and rebuilds the ledger from the newest snapshot and the store.")
        super().__init__(what)


class LedgerDiskFull(LedgerError, DtkgError):
    """No space left where the ledger writes (reason disk_full)."""

    def __init__(self, path: Path, detail: str) -> None:
        self.path = path
        message = (f"disk full: no space left on the filesystem of {path.parent} ({detail}). Free space there "
                   "(or move DTKG_HOME to a larger disk); read-only commands (status, ledger health, "
                   "export) keep working from the published snapshot.")
        DtkgError.__init__(self, Reason.DISK_FULL, message)
        self.args = (message,)

    def __str__(self) -> str:
        return str(self.args[0])


class LedgerUnwritable(LedgerError):
    """The ledger's directory cannot be written (read-only filesystem, permissions)."""

    def __init__(self, path: Path, detail: str, remedy: str | None = None) -> None:
        self.path = path
        remedy = remedy or f"Make {path.parent} writable, or point DTKG_HOME at a writable directory"
        super().__init__(
            f"cannot write the ledger {path} ({detail}). {remedy}; read-only commands keep working from the "
            "published snapshot."
        )


def lock_path(settings: Settings) -> Path:
    return settings.home / "ledger.lock"


def wal_path(path: Path) -> Path:
    return path.with_name(path.name + ".wal")


# ---------------------------------------------------------------- the single-writer lock


@dataclass
class HolderInfo:
    pid: int | None
    owner: str
    host: str
    since: float | None

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since)) if self.since else "?"
        return f"pid {self.pid} (owner {self.owner or '?'} on {self.host or '?'}) since {since}"


def read_holder(path: Path) -> HolderInfo:
    try:
        data = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    return HolderInfo(data.get("pid"), data.get("owner", ""), data.get("host", ""), data.get("since"))


class FileLock:
    """An flock on `$DTKG_HOME/ledger.lock`; exclusive for the writer, shared for live readers."""

    def __init__(self, path: Path, fd: int, exclusive: bool) -> None:
        self.path, self.fd, self.exclusive = path, fd, exclusive

    @classmethod
    def try_take(cls, path: Path, *, exclusive: bool, owner: str) -> FileLock | None:
        try:
            if exclusive or not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            else:
                fd = os.open(path, os.O_RDONLY)  # a shared lock needs no write access
        except OSError as exc:
            raise storage_error(exc, path) from None
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        if exclusive:
            info = {"pid": os.getpid(), "owner": owner, "host": socket.gethostname(), "since": time.time()}
            with contextlib.suppress(OSError):  # the holder note is informative; a full disk must not stop us
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(info).encode(), 0)
        return cls(path, fd, exclusive)

    def release(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1


# ---------------------------------------------------------------- errors in words

_DISK_FULL_WORDS = ("no space left", "disk quota exceeded", "enospc")
_UNWRITABLE_WORDS = ("read-only file system", "permission denied")
_BUSY_WORDS = ("could not set lock",)


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return any(w in str(exc).lower() for w in _DISK_FULL_WORDS)


def storage_error(exc: BaseException, path: Path, *, snapshot: bool = False) -> LedgerError:
    """What an OS or DuckDB error while opening or writing `path` means, as a `LedgerError`."""
    text = str(exc).lower()
    detail = _short(exc)
    if is_disk_full(exc):
        return LedgerDiskFull(path, detail)
    if (isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM)) or any(
        w in text for w in _UNWRITABLE_WORDS
    ):
        return LedgerUnwritable(path, detail)
    if "invalidated" in text:
        return LedgerError(
            f"the ledger {path} stopped accepting writes after an earlier error in this process ({detail}); "
            f"what was committed is safe in {path.name} and its WAL. Fix the cause (often a full disk) and run "
            "the command again: the next writer replays the WAL.")
    if any(w in text for w in _BUSY_WORDS):
        return LedgerBusy(f"the ledger {path} is open in another process ({detail}); wait for it to finish")
    if isinstance(exc, IsADirectoryError) or (isinstance(exc, OSError) and exc.errno == errno.EISDIR):
        return LedgerUnwritable(path, detail, f"{path} is a directory where dtkg keeps a file: move it away "
                                "(dtkg creates the file again)")
    if isinstance(exc, NotADirectoryError) or (isinstance(exc, OSError) and exc.errno == errno.ENOTDIR):
        return LedgerUnwritable(path, detail, f"a file is where a directory of {path} should be: move it away "
                                "or point DTKG_HOME at a directory")
    return LedgerCorrupt(path, detail, snapshot=snapshot)


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    for prefix in ("IO Error: ", "Invalid Input Error: ", "Serialization Error: ", "INTERNAL Error: "):
        text = text.replace(prefix, "")
    return text[:300] or type(exc).__name__


def header_problem(path: Path) -> str | None:
    """A cheap look at a DuckDB file without opening it: None when the header looks right."""
    try:
        with open(path, "rb") as f:
            head = f.read(_MAGIC_OFFSET + len(_MAGIC))
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        return "the file does not exist"
    except IsADirectoryError:
        return "it is a directory, not a file"
    except OSError as exc:
        return f"cannot read it ({exc.strerror or exc})"
    if size == 0:
        return "the file is empty (0 bytes)"
    if head[_MAGIC_OFFSET:] != _MAGIC:
        return "it is not a DuckDB database file (no DuckDB header)"
    if size < 3 * _HEADER_SIZE:
        return f"the file is truncated: {size} bytes, less than DuckDB's own headers"
    return None


def blocks_problem(con: duckdb.DuckDBPyConnection, path: Path) -> str | None:
    """Table data stored past the end of the file (a truncated file DuckDB still opens): the
    highest block in use must lie inside the file. Reads metadata only (0.07 s at a million works).
    The headers' block count cannot serve: DuckDB trims free blocks off the end of the file."""
    try:
        size = path.stat().st_size
        row = con.execute("SELECT block_size FROM pragma_database_size()").fetchall()
        block = int(row[0][0]) if row else 0
        tables = [r[0] for r in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database()").fetchall()]
        top = -1
        for table in tables:
            r = con.execute(f"SELECT max(block_id) FROM pragma_storage_info('{table}') WHERE persistent").fetchall()
            if r and r[0][0] is not None:
                top = max(top, int(r[0][0]))
    except OSError:
        return None
    if block <= 0 or top < 0:
        return None
    need = 3 * _HEADER_SIZE + (top + 1) * block
    if size < need:
        return f"the file is truncated: {size} bytes, but its tables use blocks up to byte {need}"
    return None


# ---------------------------------------------------------------- the published snapshot


def snapshot_is_current(settings: Settings) -> bool:
    """The snapshot holds what the live file holds: it was copied after the live file's last change
    and no WAL is pending. A false 'stale' only costs one more publication."""
    live, snap = settings.ledger_path, settings.snapshot_path
    try:
        ls, ss = live.stat(), snap.stat()
    except OSError:
        return False
    return not wal_path(live).exists() and ss.st_size == ls.st_size and ss.st_mtime_ns >= ls.st_mtime_ns


def copy_out(src: Path, dest: Path) -> Path:
    """Copy `src` beside `dest` under a temporary name and return it (the caller fsyncs and renames).
    Nothing is left behind when the copy fails (e.g. a full disk)."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(src, tmp)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return tmp


def install(tmp: Path, dest: Path, *, fsync: bool = True) -> None:
    """fsync `tmp`, rename it over `dest` (atomic for readers: old readers keep the old inode)."""
    from dtkg_assets.core.store import fsync_dir, fsync_file

    try:
        if fsync:
            fsync_file(tmp)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if fsync:
        with contextlib.suppress(OSError):
            fsync_dir(dest.parent)


def space_shortfall(live: Path) -> str | None:
    """Why a snapshot of `live` cannot be published for want of space (None: there is room). A
    publication checkpoints the WAL into the file and copies the file beside it."""
    try:
        need = live.stat().st_size + (wal_path(live).stat().st_size if wal_path(live).exists() else 0)
        free = shutil.disk_usage(live.parent).free
    except OSError:
        return None
    if free >= need:
        return None
    return f"No space left on device: {free} bytes free in {live.parent}, a snapshot needs about {need}"


def remove_stale_temps(settings: Settings) -> int:
    """Temporary snapshot copies left by a crashed writer (only the lock holder may call this)."""
    removed = 0
    with contextlib.suppress(OSError):
        for tmp in settings.home.glob(_SNAPSHOT_TMP_GLOB):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed += 1
    return removed


def no_snapshot_message(settings: Settings) -> str:
    """Why there is nothing to read yet, in words."""
    snap, live = settings.snapshot_path, settings.ledger_path
    if not settings.home.exists():
        return (f"no ledger yet: DTKG_HOME {settings.home} does not exist. Import works first "
                "(`dtkg works import FILE` or `dtkg fetch URL`), or set DTKG_HOME to an existing home.")
    if not live.exists():
        return (f"no ledger yet in {settings.home}: nothing has been imported or downloaded. Start with "
                "`dtkg works import FILE` or `dtkg fetch URL`.")
    holder = read_holder(lock_path(settings))
    return (f"the ledger {live} has no published snapshot {snap.name} yet (readers never open the live file). "
            f"It is published when a writer finishes (last writer: {holder.describe()}); run `dtkg reconcile` "
            "to publish one now.")


def keep_aside(path: Path, *, now: float | None = None) -> Path:
    """Rename a damaged ledger (and its WAL) to `<name>.damaged-<time>`, never deleting it."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(time.time() if now is None else now))
    dest = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while dest.exists():
        dest = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
        n += 1
    if path.exists():
        os.replace(path, dest)
    wal = wal_path(path)
    if wal.exists():
        os.replace(wal, dest.with_name(dest.name + ".wal"))
    return dest
