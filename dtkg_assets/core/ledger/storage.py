"""The DuckDB file backend's storage: the single-writer file lock, the published read snapshot, and
damaged or unwritable files told apart in words. Nothing here speaks SQL beyond opening a file.

Files under `$DTKG_HOME`:
- `ledger.duckdb` (+ `.wal`): the live file, opened read-write by the one writer process only.
- `ledger.lock`: an `flock` (exclusive for the writer, shared for a live reader) and the holder's pid.
- `ledger.snapshot.duckdb`: the published copy that every reader opens read-only.
- `.ledger.snapshot.duckdb.spare`: the copy published before it, which the next publication brings
  up to date in place (only the bytes that differ) when no reader has it open.
- `ledger.duckdb.damaged-<time>`: a damaged live file kept aside by `dtkg ledger repair`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import mmap
import os
import shutil
import socket
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import duckdb

from dtkg_assets.core.errors import DtkgError, Reason
from dtkg_assets.core.settings import Settings

# A DuckDB file starts with an 8-byte checksum and the magic bytes "DUCK".
_MAGIC = b"DUCK"
_MAGIC_OFFSET = 8
_HEADER_SIZE = 4096  # the main header, then two alternating database headers
_SNAPSHOT_TMP_GLOB = ".ledger.snapshot.duckdb.*.tmp"
# A spare is compared with the live file, and written, in chunks of this size, mapped a window at a time.
# The mapped pages count in the process's RSS: two threads map two files, so 4 MiB windows keep
# 16 MiB mapped (16 MiB windows kept 64 MiB, the largest part of what a backfill's peak RSS grew by
# from 10k to a million works; the comparison of 650 MB takes 90 ms instead of 75).
_CHUNK = 256 * 1024
_WINDOW = 16 * _CHUNK
_PARALLEL_WINDOWS = 32  # files of at least this many windows (128 MiB) are compared on two threads


T = TypeVar("T")


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
    The block count alone cannot serve: DuckDB trims free blocks off the end of the file, so a file
    shorter than it says is not damaged for that; one at least that long is whole."""
    try:
        size = path.stat().st_size
        row = con.execute("SELECT block_size, total_blocks FROM pragma_database_size()").fetchall()
        block = int(row[0][0]) if row else 0
        # Every block id DuckDB has given out is below its block count: a file that long holds them
        # all (1 ms, where the tables' storage below takes 0.03-0.1 s at a million works).
        if row and block > 0 and size >= 3 * _HEADER_SIZE + int(row[0][1]) * block:
            return None
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


def spare_path(snapshot: Path) -> Path:
    """The snapshot published before `snapshot`'s current one, kept to be brought up to date in place."""
    return snapshot.with_name(f".{snapshot.name}.spare")


def refresh_spare(src: Path, snapshot: Path) -> tuple[Path, int] | None:
    """Give the spare of `snapshot` the bytes of `src` in place, writing only the chunks that differ,
    and return (spare, bytes written); None when it cannot be used (then copy `src` whole): there is
    no spare, or a reader has it open.

    A reader's hold is seen through its locks: DuckDB keeps a read lock (fcntl) on a file for as long
    as a connection has it open, and `Ledger.open_reader` also holds a shared `flock` on the snapshot
    it reads (`SnapshotHolds`). The spare is written under both kinds of write lock, so a reader can
    neither be reading it nor open it meanwhile (DuckDB refuses a file it cannot lock); and it is not
    at the published path while it is written. The comparison reads both files whole (from the page
    cache: 0.12 s for 700 MB), the writes are the changes (in a backfill at a million works,
    DuckDB's checkpoints moved 180-240 MB of a 700 MB file per two runs)."""
    setlk = getattr(fcntl, "F_OFD_SETLK", None)
    if setlk is None:  # not Linux: no lock that sees this process's own readers
        return None
    spare = spare_path(snapshot)
    try:
        fd = os.open(spare, os.O_RDWR)
    except OSError:
        return None
    try:
        try:
            # struct flock: l_type, l_whence, l_start, l_len (0: to the end), l_pid (0 for OFD locks).
            fcntl.fcntl(fd, setlk, struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return None  # a reader has it open
        written = _write_differences(src, fd)
        os.utime(fd)  # its time says when it was published (`snapshot_is_current`, `snapshot_age_s`)
        return spare, written
    finally:
        os.close(fd)  # releases both locks


def _write_differences(src: Path, fd: int) -> int:
    """Make the file open at `fd` byte for byte equal to `src`; returns the bytes written.

    The comparison reads both files whole (1.4 GB at a million works), in windows that two threads
    share when the file is large: numpy compares without holding the GIL, and the publication waits
    for nothing else (0.2-0.3 s at a million works on one thread, about a third less on two). The
    chunks that differ are copied inside the kernel (`os.copy_file_range`), not through this process."""
    import numpy as np  # here: only a writer's publication needs it, and readers start faster without

    with open(src, "rb") as f:
        sfd = f.fileno()
        size, have = os.fstat(sfd).st_size, os.fstat(fd).st_size
        common = min(size, have)

        def window(offset: int) -> int:
            n = min(_WINDOW, common - offset)
            a = mmap.mmap(sfd, n, access=mmap.ACCESS_READ, offset=offset)
            b = mmap.mmap(fd, n, access=mmap.ACCESS_READ, offset=offset)
            try:
                full = n // _CHUNK
                va = np.frombuffer(a, dtype=np.uint64, count=full * _CHUNK // 8).reshape(full, _CHUNK // 8)
                vb = np.frombuffer(b, dtype=np.uint64, count=full * _CHUNK // 8).reshape(full, _CHUNK // 8)
                starts = [int(i) * _CHUNK for i in np.nonzero((va != vb).any(axis=1))[0]]
                del va, vb  # before the maps close
                if n > full * _CHUNK and a[full * _CHUNK:n] != b[full * _CHUNK:n]:
                    starts.append(full * _CHUNK)
            finally:
                a.close()
                b.close()
            return sum(_copy_range(sfd, fd, offset + start, min(_CHUNK, n - start)) for start in starts)

        offsets = range(0, common, _WINDOW)
        if len(offsets) >= _PARALLEL_WINDOWS:
            with ThreadPoolExecutor(max_workers=2, thread_name_prefix="dtkg-snapshot-compare") as pool:
                written = sum(pool.map(window, offsets))
        else:
            written = sum(window(offset) for offset in offsets)
        if size > common:  # the live file grew past the spare
            written += _copy_range(sfd, fd, common, size - common)
    if have > size:
        os.ftruncate(fd, size)
    return written


def _copy_range(sfd: int, fd: int, offset: int, n: int) -> int:
    """Copy `n` bytes at `offset` of the file open at `sfd` to the same offset of `fd`; returns the
    bytes copied (fewer only if `sfd` ends first)."""
    done = 0
    with contextlib.suppress(OSError):  # no copy_file_range here (or not across these files): below
        while done < n:
            copied = os.copy_file_range(sfd, fd, n - done, offset + done, offset + done)
            if copied == 0:
                return done
            done += copied
        return done
    while done < n:
        data = os.pread(sfd, min(_WINDOW, n - done), offset + done)
        if not data:
            break
        view = memoryview(data)
        while view:
            w = os.pwrite(fd, view, offset + done)
            view, done = view[w:], done + w
    return done


def install_snapshot(staged: Path, snapshot: Path, *, fsync: bool = True) -> None:
    """`install` for the snapshot (`staged`: a copy, or the refreshed spare), keeping the snapshot it
    replaces as the next spare. Readers that have that one open keep it as it was: the next
    `refresh_spare` sees them and the publication after it copies instead."""
    from dtkg_assets.core.store import fsync_dir, fsync_file

    keep = snapshot.with_name(f".{snapshot.name}.{os.getpid()}.spare.tmp")
    kept = False  # the snapshot being replaced, linked at `keep` to become the spare
    try:
        if fsync:
            fsync_file(staged)
        keep.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # nothing published yet, or no hard links here: no spare
            os.link(snapshot, keep)
            kept = True
        os.replace(staged, snapshot)
    except BaseException:
        with contextlib.suppress(OSError):
            if staged != spare_path(snapshot):
                staged.unlink()
            if kept:
                keep.unlink()
        raise
    if kept:
        try:
            os.replace(keep, spare_path(snapshot))
        except OSError:
            with contextlib.suppress(OSError):
                keep.unlink()
    if fsync:
        with contextlib.suppress(OSError):
            fsync_dir(snapshot.parent)


def copy_held(src: Path, dest: Path) -> None:
    """Copy a published snapshot to `dest` under a shared `flock` on the file read, so that no
    publication refreshes it in place while it is being copied (see `refresh_spare`)."""
    with open(src, "rb") as fin:
        fcntl.flock(fin.fileno(), fcntl.LOCK_SH)
        with open(dest, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)


class SnapshotHolds:
    """The snapshot files this process's `Ledger.open_reader` handles have open, each under a shared
    `flock` held until the last handle on it closes (see `refresh_spare`).

    A DuckDB connection to a path this process already has open shares that database (DuckDB's
    instance cache), whatever file the path names now: so a handle opened while another is open
    reads the file the first one opened, and shares its hold. Only the first one opens the file: its
    `flock` must be on the file DuckDB reads, so the path must name the same file before and after
    DuckDB opened it (it cannot have named another in between: the file held cannot come back to
    the published path without being refreshed, which its hold prevents)."""

    _lock = threading.Lock()
    _held: dict[str, list[int]] = {}  # path -> [fd, handles]

    @classmethod
    def open(cls, path: Path, connect: Callable[[], T]) -> T:
        key = str(path)
        with cls._lock:
            held = cls._held.get(key)
            if held is not None:
                con = connect()
                held[1] += 1
                return con
            for _ in range(10):
                fd = os.open(path, os.O_RDONLY)
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while a publication refreshes this file
                    con = connect()
                except BaseException:
                    os.close(fd)
                    raise
                try:
                    same = os.fstat(fd).st_ino == os.stat(path).st_ino
                except OSError:
                    same = False
                if same:
                    cls._held[key] = [fd, 1]
                    return con
                close = getattr(con, "close", None)
                if close is not None:
                    close()
                os.close(fd)  # a publication replaced the file meanwhile: open the new one
            raise OSError(errno.EAGAIN, f"the snapshot {path} kept changing while it was being opened")

    @classmethod
    def close(cls, path: Path, close: Callable[[], None]) -> None:
        """`close` the handle's connection and give up its share of the hold (together: a handle
        opened meanwhile must find the database DuckDB shares still open, or no hold)."""
        with cls._lock:
            try:
                close()
            finally:
                held = cls._held.get(str(path))
                if held is not None:
                    held[1] -= 1
                    if held[1] <= 0:
                        del cls._held[str(path)]
                        os.close(held[0])


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
