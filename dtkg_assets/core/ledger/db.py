"""The ledger: one writer process, serialized write transactions, a published read snapshot.

See docs/ledger-concurrency.md for the design. In short:
- `Ledger.open_writer` takes an exclusive `flock` on `$DTKG_HOME/ledger.lock` before DuckDB opens
  the file read-write, waiting with a clear message (never a raw DuckDB lock error).
- Inside the writer process all threads share one connection through per-thread cursors; write
  transactions are serialized by one lock, so read-check-write sequences (fencing, transitions)
  are atomic.
- Readers open the snapshot that the writer publishes atomically (CHECKPOINT, the spare snapshot
  brought up to date in place or a copy, fsync, rename) and never touch the live file while a
  writer may hold it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

import duckdb

from dtkg_assets.core.errors import Reason
from dtkg_assets.core.ledger import schema, storage
from dtkg_assets.core.ledger.interface import (
    Job,
    LeaseGrant,
    LeaseRequest,
    LeaseWrite,
    canonical_url,
    job_id_for,
    op_key_for,
    stable_hash,
)
from dtkg_assets.core.ledger.lease import (
    GroupCommit,
    Lease,
    LeaseLost,
    apply_guarded_writes,
    failure_values,
    reason_is_transient,
)
from dtkg_assets.core.ledger.planning import PlannedWorks, plan_columns
from dtkg_assets.core.ledger.schema import first_row
from dtkg_assets.core.ledger.states import (
    COMPLETE,
    COMPLETE_SQL,
    IN_FLIGHT,
    IN_FLIGHT_SQL,
    State,
    check_transition,
)
from dtkg_assets.core.ledger.storage import (
    FileLock,
    LedgerBusy,
    LedgerCorrupt,
    LedgerUnavailable,
    lock_path,
    read_holder,
)
from dtkg_assets.core.settings import Settings
from dtkg_assets.core.store import store_relative
from dtkg_assets.core.types import HttpAttempt, InputProblem, WorkRecord

if TYPE_CHECKING:
    import numpy as np

T = TypeVar("T")
# WAL a bulk load (`Ledger.bulk_load`) may collect before DuckDB checkpoints it into the file.
BULK_CHECKPOINT_THRESHOLD = "256MiB"
_JOB_COLS = ", ".join(f.name for f in fields(Job))
# Set on every connection the ledger opens. The batch lookups (`WHERE key IN (SELECT unnest($1))`,
# the `UPDATE … FROM (SELECT unnest(…))` of the write path) are hash joins whose small side DuckDB
# turns into an IN filter on the table scan, which the key's ART index (job_id, work_id) then
# answers, only while that side has at most `dynamic_or_filter_threshold` keys (default 50). Above it
# the whole key column is scanned: 100 works among a million 47 ms, 6 ms with the filter (10,000
# works: 2.1 vs 2.6 ms). Not higher: past a few hundred keys one index probe per key costs more than
# the scan (500 keys at a million 28 ms vs 46 ms, at 10,000 9.6 vs 2.4 ms). A run is 100 works by
# default. SET GLOBAL, not `connect(config=…)`: a connection with another configuration to a file
# this process already has open (a notebook's, recovery's checks) would be refused.
_DYNAMIC_FILTER_KEYS = 256


def _connect(path: Path, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(path), read_only=read_only)
    try:
        con.execute(f"SET GLOBAL dynamic_or_filter_threshold = {_DYNAMIC_FILTER_KEYS}")
    except BaseException:
        con.close()
        raise
    return con

# Re-exported: the ledger package's names for the deterministic keys and the lease error.
__all__ = ["Job", "LeaseLost", "Ledger", "canonical_url", "job_id_for", "op_key_for", "reason_is_transient",
           "stable_hash"]




@dataclass
class LedgerStats:
    """Time spent inside ledger calls (wall and this thread's CPU), for cost-per-artifact reports."""

    calls: int = 0
    transactions: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    snapshot_skips: int = 0
    snapshot_bytes: int = 0  # written to publish snapshots (whole copies, or a spare's changed chunks)
    batched_writes: int = 0  # writes that shared a transaction with others (group commit)


class _Ticket:
    """One queued write for the group commit."""

    __slots__ = ("done", "error", "fn", "value")

    def __init__(self, fn: Callable[[duckdb.DuckDBPyConnection], Any]) -> None:
        self.fn = fn
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None


class Ledger:
    """A DuckDB ledger handle: a writer (read-write, holds the lock) or a reader (read-only)."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        settings: Settings,
        *,
        path: Path,
        lock: FileLock | None,
        writable: bool,
        owner: str,
    ) -> None:
        self._con = con
        self.settings = settings
        self.path = path
        self._lock = lock
        self.writable = writable
        self.owner = owner
        self._wlock = threading.RLock()
        self._local = threading.local()
        self._closed = False
        self._last_publish = 0.0
        self.stats = LedgerStats()
        self.recovered: dict[str, int] = {}
        self.commits = GroupCommit(self)  # the batched lease write path (interface.py)
        self._qlock = threading.Lock()
        self._queue: list[_Ticket] = []
        self._publish_lock = threading.Lock()
        # Committed write transactions so far, and how many the published snapshot holds.
        self._generation = 0
        self._published_generation = -1
        self._whole_size = -1  # the file's size when it was last found whole (storage.blocks_problem)
        self.snapshot_error: str | None = None  # why the last publication failed (None: it did not)
        self._publisher: threading.Thread | None = None
        self._publisher_stop = threading.Event()
        self._holds_snapshot = False  # a snapshot reader: its file is held (storage.SnapshotHolds)

    # ---------------------------------------------------------------- opening and closing
    # Storage specifics of the DuckDB file (lock, snapshot, damaged files) live in `storage`; this
    # section only decides when to use them.

    @classmethod
    def try_open_writer(cls, settings: Settings, *, owner: str | None = None) -> Ledger | None:
        """Open for writing if nobody holds the writer lock right now, else None (sensors skip)."""
        if settings.ledger_is_postgres:  # many writers: there is no lock to wait for
            return _postgres(settings, owner=owner)
        owner = owner or default_owner()
        lock = FileLock.try_take(lock_path(settings), exclusive=True, owner=owner)
        return None if lock is None else cls._open_locked(settings, lock, owner)

    @classmethod
    def open_writer(
        cls,
        settings: Settings,
        *,
        wait_s: float | None = None,
        owner: str | None = None,
        notify: Callable[[str], None] | None = None,
    ) -> Ledger:
        """Take the single-writer lock (waiting up to `wait_s` with one message), then open read-write."""
        if settings.ledger_is_postgres:  # many writers: there is no lock to wait for
            return _postgres(settings, owner=owner)
        owner = owner or default_owner()
        wait_s = settings.ledger.writer_wait_s if wait_s is None else wait_s
        path = lock_path(settings)
        deadline = time.monotonic() + wait_s
        told = False
        delay = 0.05
        while True:
            lock = FileLock.try_take(path, exclusive=True, owner=owner)
            if lock is not None:
                return cls._open_locked(settings, lock, owner)
            holder = read_holder(path)
            if time.monotonic() >= deadline:
                raise LedgerBusy(
                    f"the ledger {settings.ledger_path} is in use by {holder.describe()} "
                    f"(or by a live reader); gave up after waiting {wait_s:g} s. Wait for that process "
                    "to finish (or stop it), or raise DTKG_LEDGER_WRITER_WAIT_S; analysts can read "
                    f"the published snapshot {settings.snapshot_path} meanwhile."
                )
            if not told:
                (notify or _stderr)(
                    f"ledger is in use by {holder.describe()}; waiting up to {wait_s:g} s for it to finish"
                )
                told = True
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 1.0)

    @classmethod
    def _open_locked(cls, settings: Settings, lock: FileLock, owner: str) -> Ledger:
        path = settings.ledger_path
        con: duckdb.DuckDBPyConnection | None = None
        try:
            storage.remove_stale_temps(settings)  # we hold the lock: any temp copy is a dead writer's
            if not path.exists() and settings.snapshot_path.exists():
                # Never start an empty ledger over a home that has data: repair restores it.
                raise LedgerCorrupt(path, f"the file is missing although {settings.snapshot_path.name} exists")
            if path.exists() and (problem := storage.header_problem(path)) is not None:
                raise LedgerCorrupt(path, problem)  # before DuckDB writes anything into it (or its snapshot)
            fresh = storage.snapshot_is_current(settings)  # judged before DuckDB touches the file
            path.parent.mkdir(parents=True, exist_ok=True)
            con = _connect(path)
            # A file the current snapshot was published from was found whole then (a publication
            # looks first) and has not changed since: the look for table blocks past its end (0.07 s
            # at a million works, at every run's open) is for a file changed or cut after that.
            if not fresh and (problem := storage.blocks_problem(con, path)) is not None:
                raise LedgerCorrupt(path, problem)  # before anything is written into it
            whole_size = path.stat().st_size
            applied = schema.migrate(con)
            ledger = cls(con, settings, path=path, lock=lock, writable=True, owner=owner)
            ledger._whole_size = whole_size
            ledger.recovered = ledger._void_dead_leases()
        except BaseException as exc:
            if con is not None:
                with contextlib.suppress(duckdb.Error):
                    con.close()
            lock.release()
            if isinstance(exc, (duckdb.Error, OSError)):
                raise storage.storage_error(exc, path) from None
            raise
        if fresh and not applied and not any(ledger.recovered.values()):
            ledger._published_generation = ledger._generation  # the snapshot already holds all of it
        else:
            ledger.publish_snapshot(force=True)
        ledger._start_publisher()
        return ledger

    def _void_dead_leases(self) -> dict[str, int]:
        """Every lease in the file was taken by an earlier writer process; that process no longer
        holds the writer lock, so it has exited or crashed and cannot commit anything. Release its
        leases now (attempts stay counted, tokens bumped) instead of waiting for their TTL."""
        released = self.expire_leases(include_live=True)
        abandoned = self.abandon_ops() if released else 0
        return {"released_leases": released, "abandoned_ops": abandoned}

    @classmethod
    def open_reader(cls, settings: Settings, *, live: bool = False) -> Ledger:
        """Read-only access that never writes anything and never blocks or breaks a writer.

        Default: the published snapshot, opened read-only as it is (no refresh, no migration, no
        repair; a full disk does not matter). `LedgerUnavailable` says in words why there is none
        yet; `LedgerCorrupt` when it cannot be read. With `live=True`, the live file read-only under
        a shared lock; fails with `LedgerBusy` while a writer holds it (writers then wait for this
        reader to close).
        """
        if settings.ledger_is_postgres:
            return _postgres(settings, owner=None, reader=True)
        if live:
            path = lock_path(settings)
            lock = FileLock.try_take(path, exclusive=False, owner="reader")
            if lock is None:
                raise LedgerBusy(
                    f"the ledger is being written by {read_holder(path).describe()}; "
                    f"open the snapshot instead (Ledger.open_reader(settings))"
                )
            if not settings.ledger_path.exists():
                lock.release()
                raise LedgerUnavailable(storage.no_snapshot_message(settings))
            try:
                con = _connect(settings.ledger_path, read_only=True)
            except duckdb.Error as exc:
                lock.release()
                raise storage.storage_error(exc, settings.ledger_path) from None
            return cls(con, settings, path=settings.ledger_path, lock=lock, writable=False, owner="reader")
        snap = settings.snapshot_path
        if not snap.is_file():
            if snap.exists():
                raise LedgerCorrupt(snap, "it is not a file", snapshot=True)
            raise LedgerUnavailable(storage.no_snapshot_message(settings))
        try:
            # Under a shared hold: a publication never rewrites a snapshot a reader has open.
            con = storage.SnapshotHolds.open(snap, lambda: _connect(snap, read_only=True))
        except (duckdb.Error, OSError) as exc:
            raise storage.storage_error(exc, snap, snapshot=True) from None
        reader = cls(con, settings, path=snap, lock=None, writable=False, owner="reader")
        reader._holds_snapshot = True
        return reader

    @property
    def snapshot_age_s(self) -> float | None:
        """Age of the data a snapshot reader sees (None for the live file)."""
        if self.path != self.settings.snapshot_path:
            return None
        try:
            return max(0.0, time.time() - self.path.stat().st_mtime)
        except OSError:
            return None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._stop_publisher()
            if self.writable:
                with contextlib.suppress(duckdb.Error, OSError):
                    self.publish_snapshot(force=True)
            if self._holds_snapshot:
                storage.SnapshotHolds.close(self.path, self._con.close)
            else:
                self._con.close()
        finally:
            if self._lock is not None:
                self._lock.release()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    _exclusive = threading.Lock()

    @contextlib.contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        """A critical section for the whole fleet (`PgLedger.exclusive`). One process writes a DuckDB
        ledger, so this process is the fleet: one thread at a time runs the block."""
        with self._exclusive:
            yield

    # ---------------------------------------------------------------- snapshot

    def publish_snapshot(self, *, force: bool = False) -> bool:
        """CHECKPOINT, give the spare snapshot the file's bytes (`storage.refresh_spare`: the chunks
        that changed; a whole copy when no spare can be used), fsync, rename it over the snapshot
        (atomic for readers), which becomes the next spare.

        Returns True when the snapshot is current: published now, or nothing was written since the
        last publish. Without `force`, at most one publication per `DTKG_LEDGER_SNAPSHOT_INTERVAL_S`
        (a refresh compares the whole file in memory, 0.12 s at a million works; a copy writes it,
        0.65 s). A publication that fails (a full disk) leaves nothing behind but the spare, keeps
        the previous snapshot and returns False.
        """
        if not self.writable:
            return False
        if self._generation == self._published_generation and self.settings.snapshot_path.exists():
            return True
        interval = self.settings.ledger.snapshot_interval_s
        if not force and time.monotonic() - self._last_publish < interval:
            return False
        with self._publish_lock:  # one publisher at a time (threads of this writer share the tmp name)
            return self._publish()

    def _publish(self) -> bool:
        snap = self.settings.snapshot_path
        short = storage.space_shortfall(self.path)
        if short is not None:
            # Not even a CHECKPOINT: one that fails for want of space stops this DuckDB connection
            # for good, and the copy would need that space anyway.
            return self._publish_failed(OSError(errno.ENOSPC, short))
        with self._wlock:
            generation = self._generation
            # No write of ours can start while we hold the write lock, and no result of ours is left
            # open (see `schema.first_row`); a read running on another thread at this moment can
            # still hold the checkpoint back, so retry briefly, then skip (the next publish catches
            # up). Not FORCE CHECKPOINT: in DuckDB 2.0 it waits for every open transaction and never
            # returns when one of them is an idle result of this process.
            for delay in (0.0, 0.01, 0.05, 0.1):
                time.sleep(delay)
                try:
                    self._cur().execute("CHECKPOINT")
                    break
                except duckdb.TransactionException:
                    continue
                except duckdb.Error as exc:
                    return self._publish_failed(exc)
            else:
                self.stats.snapshot_skips += 1
                return False
            # Never replace a good snapshot with a damaged file (it may be all a repair has left).
            # Only a file that shrank since it was last found whole can lack table blocks (0.05-0.1 s
            # to look at a million works): DuckDB extends the file over every block it writes, so
            # only a cut, or its own trimming of free blocks, makes it shorter.
            try:
                size = self.path.stat().st_size
                problem = None if size >= self._whole_size else storage.blocks_problem(self._cur(), self.path)
            except duckdb.Error as exc:
                problem = str(exc)
            except OSError as exc:
                return self._publish_failed(exc)
            if problem is None:
                self._whole_size = size
            if problem is not None:
                self.stats.snapshot_skips += 1
                _stderr(f"ledger snapshot not published: {self.path} is damaged ({problem}); "
                        "run `dtkg ledger repair`")
                return False
            # The copy must not see a checkpoint half done: copy while no write can start. The
            # snapshot published before the current one is brought up to date in place when no reader
            # has it open (the chunks that differ: O(changes) writes, one comparison of the files in
            # memory), else the whole file is copied.
            try:
                refreshed = storage.refresh_spare(self.path, snap)
                tmp = refreshed[0] if refreshed is not None else storage.copy_out(self.path, snap)
            except OSError as exc:
                return self._publish_failed(exc)
            self.stats.snapshot_bytes += refreshed[1] if refreshed is not None else self.path.stat().st_size
        if (problem := storage.header_problem(tmp)) is not None:
            tmp.unlink(missing_ok=True)
            self.stats.snapshot_skips += 1
            _stderr(f"ledger snapshot not published: the copy of {self.path} is damaged ({problem}); "
                    "run `dtkg ledger repair`")
            return False
        # The copy is complete and consistent: make it durable and visible without blocking writers.
        try:
            storage.install_snapshot(tmp, snap, fsync=self.settings.io.fsync)
        except OSError as exc:
            return self._publish_failed(exc)
        self._published_generation = generation
        self._last_publish = time.monotonic()
        self.snapshot_error = None
        return True

    def _publish_failed(self, exc: BaseException) -> bool:
        """Readers keep the previous snapshot; say so once per writer (not once per batch)."""
        error = storage.storage_error(exc, self.settings.snapshot_path, snapshot=True)
        self.stats.snapshot_skips += 1
        self._last_publish = time.monotonic()  # do not retry the copy at once on a full disk
        if self.snapshot_error is None:
            _stderr(f"ledger snapshot not published, readers see the previous one: {error}")
        self.snapshot_error = str(error)
        return False

    def _start_publisher(self) -> None:
        """Publish in the background at most every `snapshot_interval_s` while this writer lives, so
        readers of a long run are never more than that behind (close publishes the rest)."""
        interval = self.settings.ledger.snapshot_interval_s
        if interval <= 0:
            return
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(interval):
                with contextlib.suppress(duckdb.Error, OSError):
                    self.publish_snapshot()

        self._publisher_stop = stop
        self._publisher = threading.Thread(target=loop, name="dtkg-ledger-snapshot", daemon=True)
        self._publisher.start()

    def _stop_publisher(self) -> None:
        if self._publisher is not None:
            self._publisher_stop.set()
            if self._publisher is not threading.current_thread():
                self._publisher.join()
            self._publisher = None

    # ---------------------------------------------------------------- plumbing

    def _cur(self) -> duckdb.DuckDBPyConnection:
        cur = getattr(self._local, "cur", None)
        if cur is None:
            cur = self._con.cursor()
            self._local.cur = cur
        return cur

    @contextlib.contextmanager
    def _timed(self) -> Iterator[None]:
        w0, c0 = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            with self._qlock:
                self.stats.calls += 1
                self.stats.wall_s += time.perf_counter() - w0
                self.stats.cpu_s += time.thread_time() - c0

    def _tx(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Run `fn(cursor)` in a committed write transaction and return its value (or raise its error).

        Group commit: a transaction costs DuckDB 4-8 ms of CPU whatever its size, so writes that
        arrive while another thread is committing queue up, and the next thread to take the write
        lock runs all of them in ONE transaction. Each caller returns only after that commit. If any
        of them raises, the batch is rolled back and each is re-run in its own transaction, so one
        caller's error (a stale token, an illegal transition) never undoes another caller's write.
        """
        if not self.writable:
            raise PermissionError("this ledger handle is read-only (open it with Ledger.open_writer)")
        ticket = _Ticket(fn)
        try:
            with self._timed():
                with self._qlock:
                    self._queue.append(ticket)
                with self._wlock:
                    if not ticket.done:
                        with self._qlock:
                            batch, self._queue = self._queue, []
                        self._run_batch(batch)
            if ticket.error is not None:
                raise ticket.error
        except duckdb.Error as exc:
            if storage.is_disk_full(exc):
                # A commit or checkpoint that cannot grow the file: reason disk_full, in words, like
                # every other storage error (inside a Dagster run as in the CLI).
                raise storage.storage_error(exc, self.settings.ledger_path) from exc
            raise
        return ticket.value

    def _run_alone(self, ticket: _Ticket) -> None:
        cur = self._cur()
        cur.execute("BEGIN TRANSACTION")
        try:
            ticket.value = ticket.fn(cur)
        except BaseException as exc:
            cur.execute("ROLLBACK")
            ticket.error = exc
        else:
            cur.execute("COMMIT")
            self.stats.transactions += 1
            self._generation += 1
        ticket.done = True

    def _run_batch(self, batch: list[_Ticket]) -> None:
        if len(batch) == 1:
            self._run_alone(batch[0])
            return
        cur = self._cur()
        cur.execute("BEGIN TRANSACTION")
        try:
            for t in batch:
                t.value = t.fn(cur)
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            for t in batch:
                t.value = None
                self._run_alone(t)
            return
        self.stats.transactions += 1
        self._generation += 1
        self.stats.batched_writes += len(batch)
        for t in batch:
            t.done = True

    def query(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        with self._timed():
            return self._cur().execute(sql, params or []).fetchall()

    def query_keys(self, sql: str, keys: Iterable[str], params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """`sql` for many keys: `$1` is the list (`IN (SELECT unnest($1))`), `$2`… are `params`. The
        keys go in sorted lists of at most `_DYNAMIC_FILTER_KEYS`, which DuckDB answers from the key's
        index; a longer list scans the whole key column (500 works at a million: 80 ms and 86 MB of
        buffers held by the connection, against 31 ms and 3 MB as two lists of 250). The rows of a
        query ordered by the key come in key order."""
        with self._timed():
            return _rows_for_keys(self._cur(), sql, keys, params)

    def query_dicts(self, sql: str, params: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        with self._timed():
            cur = self._cur().execute(sql, params or [])
            names = [d[0] for d in cur.description or []]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor for ad-hoc analyst queries (read-only handles cannot write anyway)."""
        self._generation += 1  # whatever it runs, the next publish must not be skipped
        return self._con.cursor()

    # ---------------------------------------------------------------- schema maintenance

    def validate(self) -> list[str]:
        return schema.validate(self._cur())

    def health(self) -> dict[str, Any]:
        report = schema.health(self._cur())
        report["path"] = str(self.path)
        report["snapshot_age_s"] = self.snapshot_age_s
        return report

    def repair(self) -> list[str]:
        if not self.writable:
            raise PermissionError("repair needs the writer (Ledger.open_writer)")
        # Outside the group commit: migrations inside repair manage their own transactions.
        with self._timed(), self._wlock:
            self._generation += 1
            return schema.repair(self._cur())

    # ---------------------------------------------------------------- works and jobs

    @contextlib.contextmanager
    def bulk_load(self) -> Iterator[None]:
        """Many large write transactions in a row (a works import). DuckDB checkpoints after any
        commit that leaves more than `checkpoint_threshold` in the WAL, and a checkpoint costs more
        the larger the ledger: at the default (16 MiB) every 20,000-work batch paid one and a
        million-work import spent 36 s committing (6 s with one checkpoint at the end). Here the WAL
        may grow to `BULK_CHECKPOINT_THRESHOLD` first; commits stay durable (the WAL is fsynced),
        and the memory the larger WAL holds is bounded by that threshold."""
        if not self.writable:
            raise PermissionError("bulk_load needs the writer (Ledger.open_writer)")
        with self._wlock:
            row = first_row(self._cur(), "SELECT current_setting('checkpoint_threshold')")
            previous = str(row[0]) if row else "16.0 MiB"
            self._cur().execute(f"SET checkpoint_threshold = '{BULK_CHECKPOINT_THRESHOLD}'")
        try:
            yield
        finally:
            with self._wlock:
                self._cur().execute(f"SET checkpoint_threshold = '{previous}'")


    def plan(self, works: Iterable[WorkRecord], *, now: float | None = None) -> tuple[int, int]:
        """Upsert works and one job per candidate URL (rank order), in bulk. Returns (new works, new jobs)."""
        planned = plan_columns(works, self.settings)
        return (0, 0) if planned is None else self.write_planned(planned, now=now)

    def write_planned(self, planned: PlannedWorks, *, now: float | None = None) -> tuple[int, int]:
        """`plan` of works already turned into columns (`plan_columns`, perhaps in another process)."""
        now = time.time() if now is None else now
        # Each batch goes to DuckDB as columns (numpy object arrays, scanned in place) rather than as
        # list parameters, which DuckDB converts value by value: 3x faster for the works at 20,000 rows.
        works_cols = {name: _column(values) for name, values in planned.works.items()}
        jobs_cols = {name: _column(values) for name, values in planned.jobs.items()}
        jobs = planned.jobs["job_id"]

        def _body(cur: duckdb.DuckDBPyConnection) -> Any:
            before = _count(cur, "works"), _count(cur, "artifact_jobs")
            with _registered(cur, "dtkg_plan_works", works_cols):
                cur.execute(
                    """
                    INSERT INTO works
                    SELECT work_id, doi, title, publication_year::INTEGER, candidates::JSON, origin, raw::JSON,
                           $1, $1
                    FROM dtkg_plan_works
                    ON CONFLICT (work_id) DO UPDATE SET doi = excluded.doi, title = excluded.title,
                        publication_year = excluded.publication_year, candidates = excluded.candidates,
                        origin = excluded.origin, raw = excluded.raw, last_seen = excluded.last_seen
                    """,
                    [now],
                )
            if jobs:
                # The conflict target matters: DuckDB 2.0 checks a target-less ON CONFLICT against a
                # second unique column (idempotency_key, always equal to job_id) by scanning the table,
                # so each batch cost grew with the ledger (20,000 jobs: 0.2 s empty, 6 s at 60,000).
                with _registered(cur, "dtkg_plan_jobs", jobs_cols):
                    cur.execute(
                        """
                        INSERT INTO artifact_jobs (job_id, idempotency_key, work_id, artifact, url, host,
                            candidate_rank, candidate_source, state, created_at, updated_at)
                        SELECT job_id, job_id, work_id, 'pdf', url, host, candidate_rank::INTEGER, candidate_source,
                               'PLANNED', $1, $1
                        FROM dtkg_plan_jobs
                        ON CONFLICT (job_id) DO NOTHING
                        """,
                        [now],
                    )
            after = _count(cur, "works"), _count(cur, "artifact_jobs")
            return after[0] - before[0], after[1] - before[1]

        counts: tuple[int, int] = self._tx(_body)
        return counts

    def add_input_problems(self, problems: Sequence[InputProblem], *, now: float | None = None) -> int:
        if not problems:
            return 0
        now = time.time() if now is None else now
        def _body(cur: duckdb.DuckDBPyConnection) -> Any:
            # Re-importing the same input must not repeat its problems: insert only new ones.
            cur.execute(
                """INSERT INTO input_problems
                   SELECT n.* FROM (SELECT unnest($1) AS origin, unnest($2) AS line, unnest($3) AS work_id,
                                           unnest($4) AS reason, unnest($5) AS detail, $6 AS recorded_at) n
                   WHERE NOT EXISTS (
                       SELECT 1 FROM input_problems p
                       WHERE p.origin IS NOT DISTINCT FROM n.origin AND p.line IS NOT DISTINCT FROM n.line
                         AND p.work_id IS NOT DISTINCT FROM n.work_id AND p.reason = n.reason
                         AND p.detail IS NOT DISTINCT FROM n.detail)""",
                [[p.origin for p in problems], [p.line for p in problems], [p.work_id for p in problems],
                 [p.reason for p in problems], [p.detail for p in problems], now],
            )
        self._tx(_body)
        return len(problems)

    def job(self, job_id: str) -> Job | None:
        with self._timed():
            return _job(self._cur(), job_id)

    def jobs_for_work(self, work_id: str) -> list[Job]:
        with self._timed():
            rows = self._cur().execute(
                f"SELECT {_JOB_COLS} FROM artifact_jobs WHERE work_id = ? ORDER BY candidate_rank, job_id", [work_id]
            ).fetchall()
        return [Job(*r) for r in rows]

    def complete_work_ids(self, work_ids: Sequence[str]) -> set[str]:
        rows = self.query_keys(
            "SELECT DISTINCT work_id FROM artifact_jobs WHERE work_id IN (SELECT unnest($1)) "
            f"AND state IN {COMPLETE_SQL}",
            work_ids,
        )
        return {r[0] for r in rows}

    # ---------------------------------------------------------------- leases and state

    def jobs_for_works(self, work_ids: Sequence[str]) -> dict[str, list[Job]]:
        """Each work's jobs in candidate order, for a whole batch in one query (not one per work)."""
        out: dict[str, list[Job]] = {w: [] for w in work_ids}
        rows = self.query_keys(
            f"SELECT {_JOB_COLS} FROM artifact_jobs WHERE work_id IN (SELECT unnest($1)) "
            "ORDER BY work_id, candidate_rank, job_id", work_ids,
        )
        for r in rows:
            out[r[2]].append(Job(*r))
        return out

    # ---------------------------------------------------------------- the lease write path (interface.py)

    def lease(self, job_id: str, owner: str, *, ttl_s: float | None = None, run_id: str | None = None,
              now: float | None = None, other_jobs: Sequence[str] | None = None,
              work_id: str | None = None) -> Lease | None:
        """Lease a job (batched with other threads' requests); None if it is not leasable now.
        `other_jobs` and `work_id`: the work's other job ids and the job's work, when known. An
        explicit `now` (tests of expiry and backoff) commits this request on its own."""
        ttl = self.settings.ledger.lease_ttl_s if ttl_s is None else ttl_s
        request = LeaseRequest(job_id, owner, run_id, ttl, None if other_jobs is None else tuple(other_jobs),
                               work_id)
        grant = self.commits.acquire(request) if now is None else self.acquire([request], now=now)[0]
        return None if grant is None else Lease(self.commits, grant, ttl_s=ttl)

    def acquire(self, requests: Sequence[LeaseRequest], *, now: float) -> list[LeaseGrant | None]:
        """`LedgerWriteBackend.acquire`: one read of the requested rows, one update of the granted ones."""
        max_attempts = self.settings.ledger.max_attempts

        def _body(cur: duckdb.DuckDBPyConnection) -> list[LeaseGrant | None]:
            # Every job of the requests' works with its row id: the work's other candidates come with
            # the job. A request that does not name its work is found by job id, then its work read.
            named = {r.work_id for r in requests if r.work_id is not None}
            rows = _jobs_of_works(cur, named)
            unnamed = [r.job_id for r in requests if r.work_id is None]
            if unnamed:
                found = _job_rows(cur.execute(f"{_ROW_LITE_SELECT} WHERE job_id IN (SELECT unnest($1))",
                                              [unnamed]).fetchall())
                rows.update(_jobs_of_works(cur, {held.work_id for _, held in found.values()} - named))
            siblings: dict[str, list[str]] = {}
            for _, held in rows.values():
                siblings.setdefault(held.work_id, []).append(held.job_id)
            jobs = {job_id: held for job_id, (_, held) in rows.items()}
            grants: list[LeaseGrant | None] = []
            granted: list[LeaseRequest] = []
            for req in requests:
                job = jobs.get(req.job_id)
                if job is None or any(g.job_id == req.job_id for g in granted):
                    grants.append(None)
                    continue
                state = State(job.state)
                if state == State.FAILED:
                    eligible = job.next_eligible_at is None or job.next_eligible_at <= now
                    if job.failure_class != "transient" or not eligible or job.attempts >= max_attempts:
                        grants.append(None)
                        continue
                elif state in IN_FLIGHT:
                    if job.lease_expires_at is not None and job.lease_expires_at > now:
                        grants.append(None)  # someone holds a live lease
                        continue
                    if job.attempts >= max_attempts:
                        why = f"lease expired on attempt {job.attempts} (state {job.state})"
                        self._set_failed(cur, job, Reason.RETRIES_EXHAUSTED.value, why, now, permanent=True)
                        grants.append(None)
                        continue
                elif state != State.PLANNED:
                    grants.append(None)
                    continue
                check_transition(req.job_id, job.state, State.LEASED)
                granted.append(req)
                known = siblings.get(job.work_id, []) if req.other_jobs is None else req.other_jobs
                others = tuple(j for j in known if j != req.job_id)
                grants.append(LeaseGrant(req.job_id, job.work_id, req.owner, job.fencing_token + 1, job.attempts + 1,
                                         job.reopened_at, req.run_id or job.run_id, others))
            if granted:
                # No RETURNING (it costs DuckDB about as much as the update): under the write lock the
                # rows read above are the rows updated, so the new tokens and attempts are known.
                cur.execute(
                    """UPDATE artifact_jobs AS j SET state = 'LEASED', lease_owner = v.owner,
                           lease_expires_at = v.expires, fencing_token = j.fencing_token + 1,
                           attempts = j.attempts + 1, updated_at = $5, run_id = coalesce(v.run_id, j.run_id)
                       FROM (SELECT unnest($1::BIGINT[]) AS row_id, unnest($2) AS owner,
                                    unnest($3::DOUBLE[]) AS expires, unnest($4::VARCHAR[]) AS run_id) v
                       WHERE j.rowid = v.row_id""",
                    [[rows[r.job_id][0] for r in granted], [r.owner for r in granted],
                     [now + r.ttl_s for r in granted], [r.run_id for r in granted], now],
                )
            return grants

        grants: list[LeaseGrant | None] = self._tx(_body)
        return grants

    def commit(self, writes: Sequence[LeaseWrite], *, now: float) -> list[Exception | None]:
        """`LedgerWriteBackend.commit`: the writes of many works in one transaction, a few set-based
        statements per kind of write (not per work)."""
        errors: list[Exception | None] = self._tx(lambda cur: self._apply_writes(cur, writes, now))
        return errors

    def _apply_writes(self, cur: duckdb.DuckDBPyConnection, writes: Sequence[LeaseWrite],
                      now: float) -> list[Exception | None]:
        root = self.settings.store_dir
        # Paths are stored relative to the store root (the home can move).
        writes = [dataclasses.replace(w, values={**w.values, "path": store_relative(w.values["path"], root)})
                  if w.completion is not None and w.values.get("path") else w for w in writes]
        work_of = {w.job_id: w.work_id for w in writes}

        def held_jobs(job_ids: list[str]) -> dict[str, Job]:
            rows = _jobs_of_works(cur, {work_of[j] for j in job_ids})
            return {j: rows[j][1] for j in job_ids if j in rows}

        errors, ok = apply_guarded_writes(
            writes, lambda group, cols, bump: _guarded_update_many(cur, group, cols, bump), held_jobs)
        if ok:
            _record_effects(cur, ok)
            _record_attempts(cur, ok)
            _record_completions(cur, [w for w in ok if w.completion is not None], now, root)
        return errors

    def _set_state(self, cur: duckdb.DuckDBPyConnection, job: Job, to: State, now: float,
                   values: dict[str, Any], *, bump: bool = False) -> None:
        """Maintenance state writes (expiry, requeue, exhausted retries), checked against the table."""
        check_transition(job.job_id, job.state, to)
        cols = {"state": to.value, "updated_at": now, **values}
        sets = ", ".join(f"{k} = ?" for k in cols)
        if bump:
            sets += ", fencing_token = fencing_token + 1"
        cur.execute(f"UPDATE artifact_jobs SET {sets} WHERE job_id = ?", [*cols.values(), job.job_id])
        job.state = to.value

    def _set_failed(self, cur: duckdb.DuckDBPyConnection, job: Job, reason: str, detail: str | None,
                    now: float, *, permanent: bool = False) -> str:
        klass, values = failure_values(self.settings.ledger, job.attempts, reason, detail, now, permanent=permanent)
        self._set_state(cur, job, State.FAILED, now, values, bump=True)
        return klass

    def requeue(self, job_id: str, *, reason: str, detail: str = "", now: float | None = None) -> bool:
        """Explicit reopen of a finished or failed job (missing/corrupt file, changed object, operator)."""
        now = time.time() if now is None else now
        def _body(cur: duckdb.DuckDBPyConnection) -> Any:
            job = _job_lite(cur, job_id)
            if job is None or State(job.state) in IN_FLIGHT - {State.FINALIZED} or job.state == State.PLANNED:
                return False
            if job.state in COMPLETE and job.sha256:
                cur.execute("UPDATE blobs SET ref_count = greatest(ref_count - 1, 0) WHERE sha256 = ?", [job.sha256])
            self._set_state(cur, job, State.PLANNED, now,
                            {"last_reason": reason, "last_error": detail or None, "failure_class": None,
                             "next_eligible_at": None, "lease_owner": None, "lease_expires_at": None,
                             "finished_at": None, "attempts": 0, "reopened_at": now},
                            bump=True)
            # The work's other candidates become eligible again too.
            cur.execute(
                "UPDATE artifact_jobs SET state = 'PLANNED', updated_at = ? WHERE work_id = ? "
                "AND state = 'SKIPPED_DUPLICATE'", [now, job.work_id],
            )
            return True

        return bool(self._tx(_body))

    def expire_leases(self, *, now: float | None = None, include_live: bool = False) -> int:
        """In-flight jobs whose lease expired (or all of them, for a dead writer) → PLANNED, or FAILED
        retries_exhausted past the attempt limit; the token is bumped so the old holder is fenced."""
        now = time.time() if now is None else now
        why = "lease of an earlier writer process" if include_live else "lease expired"
        return self._expire_in_flight(
            "? OR lease_expires_at IS NULL OR lease_expires_at <= ?", [include_live, now], now, why
        )

    def _expire_in_flight(self, where: str, params: list[Any], now: float, why: str) -> int:
        """Give back every in-flight job matching `where` (see `_expire`) in one transaction."""
        def _body(cur: duckdb.DuckDBPyConnection) -> Any:
            # Row ids first, then the rows, if any: DuckDB reads every selected column of a row group
            # whose states it cannot rule out, so selecting the job columns here read 11 MB and took
            # 24 ms at a million jobs on every writer open (the row ids: 0.8 MB, 3 ms).
            found = [r[0] for r in cur.execute(
                f"SELECT rowid FROM artifact_jobs WHERE state IN {IN_FLIGHT_SQL} AND ({where})", params,
            ).fetchall()]
            if not found:
                return 0
            rows = cur.execute(
                f"SELECT {_JOB_COLS} FROM artifact_jobs WHERE rowid IN (SELECT unnest($1::BIGINT[]))", [found],
            ).fetchall()
            for r in rows:
                self._expire(cur, Job(*r), now, why)
            return len(rows)

        return int(self._tx(_body))

    def _expire(self, cur: duckdb.DuckDBPyConnection, job: Job, now: float, why: str) -> None:
        if job.attempts >= self.settings.ledger.max_attempts:
            self._set_failed(cur, job, Reason.RETRIES_EXHAUSTED.value, f"{why} in {job.state}", now, permanent=True)
        else:
            self._set_state(cur, job, State.PLANNED, now,
                            {"lease_owner": None, "lease_expires_at": None, "last_reason": Reason.LEASE_LOST.value,
                             "last_error": f"{why} in {job.state} (owner {job.lease_owner})"}, bump=True)

    def release_leases(self, *, owner: str | None = None, run_id: str | None = None,
                       now: float | None = None) -> int:
        """Release every in-flight lease held by an owner or a run (e.g. a failed run)."""
        if owner is None and run_id is None:
            raise ValueError("release_leases needs an owner or a run_id")
        now = time.time() if now is None else now
        return self._expire_in_flight("lease_owner = ? OR run_id = ?", [owner, run_id], now, "lease released")

    # ---------------------------------------------------------------- exactly-once effects

    def abandon_ops(self, *, now: float | None = None) -> int:
        """Ops started but not finished whose job is no longer leased by the op's owner/token."""
        now = time.time() if now is None else now
        def _body(cur: duckdb.DuckDBPyConnection) -> Any:
            row = first_row(
                cur,
                """UPDATE artifact_ops SET result_code = 'ABANDONED'
                   WHERE finished_at IS NULL AND coalesce(result_code, '') <> 'ABANDONED' AND op_key IN (
                     SELECT o.op_key FROM artifact_ops o JOIN artifact_jobs j USING (job_id)
                     WHERE o.finished_at IS NULL AND (j.fencing_token <> o.fencing_token
                        OR j.lease_owner IS DISTINCT FROM o.owner OR j.lease_expires_at IS NULL
                        OR j.lease_expires_at <= ?))
                   """,  # no RETURNING: DuckDB would delete and re-insert each row (see _guarded_update_many)
                [now],
            )
            return int(row[0]) if row else 0  # the count of rows updated

        return int(self._tx(_body))

    # ---------------------------------------------------------------- attempts and runs

    @staticmethod
    def _insert_attempts(cur: duckdb.DuckDBPyConnection, job_id: str, run_id: str | None,
                         attempts: Sequence[HttpAttempt]) -> None:
        if not attempts:
            return
        cur.execute(
            "INSERT INTO http_attempts (job_id, run_id, method, url, host, status, bytes, elapsed_s, error, "
            "started_at) SELECT $1, $2, unnest($3), unnest($4), unnest($5), unnest($6), unnest($7), unnest($8), "
            "unnest($9), unnest($10)",
            [job_id, run_id, [a.method for a in attempts], [a.url for a in attempts], [a.host for a in attempts],
             [a.status for a in attempts], [a.bytes for a in attempts], [a.elapsed_s for a in attempts],
             [a.error for a in attempts], [a.started_at for a in attempts]],
        )

    def record_attempts(self, job_id: str, run_id: str | None, attempts: Sequence[HttpAttempt]) -> None:
        if attempts:
            def _body(cur: duckdb.DuckDBPyConnection) -> Any:
                self._insert_attempts(cur, job_id, run_id, attempts)
            self._tx(_body)

    def start_run(self, run_id: str, *, kind: str, owner: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        def _body(cur: duckdb.DuckDBPyConnection) -> Any:
            cur.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, NULL, '{}') ON CONFLICT (run_id) DO NOTHING",
                [run_id, kind, owner, socket.gethostname(), os.getpid(), now],
            )
        self._tx(_body)

    def finish_run(self, run_id: str, counts: dict[str, Any], *, now: float | None = None) -> None:
        now = time.time() if now is None else now
        def _body(cur: duckdb.DuckDBPyConnection) -> Any:
            cur.execute("UPDATE runs SET finished_at = ?, counts = ? WHERE run_id = ?",
                        [now, json.dumps(counts), run_id])
        self._tx(_body)

    def mark_revalidated(self, job_ids: Sequence[str], *, now: float | None = None) -> None:
        """Revalidation found these jobs' objects unchanged: stamp their blobs as verified."""
        if not job_ids:
            return
        now = time.time() if now is None else now
        def _body(cur: duckdb.DuckDBPyConnection) -> Any:
            cur.execute(
                "UPDATE blobs SET verified_at = ? WHERE sha256 IN "
                "(SELECT sha256 FROM artifact_jobs WHERE job_id IN (SELECT unnest($2)))".replace("?", "$1"),
                [now, list(job_ids)],
            )
        self._tx(_body)

    def upsert_blob(self, sha256: str, path: str, size: int, *, ref_count: int = 0,
                    now: float | None = None) -> bool:
        """Adopt a blob found on disk; returns True when a row was created."""
        now = time.time() if now is None else now
        def _body(cur: duckdb.DuckDBPyConnection) -> Any:
            row = first_row(
                cur, "INSERT INTO blobs VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING sha256",
                [sha256, store_relative(path, self.settings.store_dir), size, ref_count, now, now],
            )
            return row is not None

        return bool(self._tx(_body))


def _column(values: list[Any]) -> np.ndarray[Any, Any]:
    """A column for DuckDB to scan: an object array (DuckDB reads the Python values; None is NULL)."""
    import numpy as np  # here: only planning needs it, and readers (`dtkg status`) start faster without

    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column


@contextlib.contextmanager
def _registered(cur: duckdb.DuckDBPyConnection, name: str, columns: dict[str, Any]) -> Iterator[None]:
    """`columns` (name -> numpy array) as the view `name` on this cursor while the block runs."""
    cur.register(name, columns)
    try:
        yield
    finally:
        cur.unregister(name)


def _count(cur: duckdb.DuckDBPyConnection, table: str) -> int:
    row = first_row(cur, f"SELECT count(*) FROM {table}")
    return int(row[0]) if row else 0


def _job(cur: duckdb.DuckDBPyConnection, job_id: str) -> Job | None:
    row = first_row(cur, f"SELECT {_JOB_COLS} FROM artifact_jobs WHERE job_id = ?", [job_id])
    return Job(*row) if row else None


# The columns state writes need. Every column a query returns costs DuckDB and the driver, NULL
# placeholders included: select only these, fill the rest of the Job in Python.
_LITE = ("job_id", "work_id", "state", "lease_owner", "lease_expires_at", "fencing_token", "attempts",
         "failure_class", "next_eligible_at", "reopened_at", "run_id", "sha256")
_LITE_SELECT = f"SELECT {', '.join(_LITE)} FROM artifact_jobs"
_LITE_SQL = f"{_LITE_SELECT} WHERE job_id = ?"
_ROW_LITE_SELECT = f"SELECT rowid, {', '.join(_LITE)} FROM artifact_jobs"
_NOT_LITE: dict[str, Any] = {f.name: None for f in fields(Job) if f.name not in _LITE}


def _lite(row: Sequence[Any]) -> Job:
    values: dict[str, Any] = dict(zip(_LITE, row, strict=True))
    job = Job(**values, **_NOT_LITE)
    job.fencing_token = int(job.fencing_token)
    job.attempts = int(job.attempts)
    return job


def _rows_for_keys(cur: duckdb.DuckDBPyConnection, sql: str, keys: Iterable[str],
                   params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """`Ledger.query_keys` on a cursor (inside a write transaction too)."""
    ordered = sorted(set(keys))
    rows: list[tuple[Any, ...]] = []
    for i in range(0, len(ordered), _DYNAMIC_FILTER_KEYS):
        rows += cur.execute(sql, [ordered[i : i + _DYNAMIC_FILTER_KEYS], *params]).fetchall()
    return rows


def _job_rows(rows: Iterable[Sequence[Any]]) -> dict[str, tuple[int, Job]]:
    """Rows of `_ROW_LITE_SELECT` by job id: (row id, the job's lease/state columns)."""
    return {str(r[1]): (int(r[0]), _lite(r[1:])) for r in rows}


def _jobs_of_works(cur: duckdb.DuckDBPyConnection, work_ids: Iterable[str]) -> dict[str, tuple[int, Job]]:
    """Every job of these works with its row id, for a write in the same transaction to update by row
    id. The write path finds jobs by work, never by job id: job ids are random 64-character hashes,
    so a run's lookups touched every part of their index and loaded all of it into the writer (78 MB
    at a million works, loaded again by every run's writer), while a run's works share index pages."""
    return _job_rows(_rows_for_keys(cur, f"{_ROW_LITE_SELECT} WHERE work_id IN (SELECT unnest($1))", work_ids))


def _job_lite(cur: duckdb.DuckDBPyConnection, job_id: str) -> Job | None:
    """The job's lease/state columns only (others None): for lease decisions."""
    row = first_row(cur, _LITE_SQL, [job_id])
    return None if row is None else _lite(row)


_JOB_TYPES: dict[str, str] = {name: kind.split()[0] for name, kind in schema.TABLES["artifact_jobs"]}


def _guarded_update_many(cur: duckdb.DuckDBPyConnection, writes: Sequence[LeaseWrite], cols: tuple[str, ...],
                         bump: bool) -> set[str]:
    """Move each job from its write's `from_state` to `to_state` with its values, only where the row
    still holds the write's token and owner and that state; returns the job ids updated."""
    # The guard is checked on the rows as read under the write lock, and the rows that pass it are
    # updated by row id in the same transaction. Not UPDATE ... RETURNING: DuckDB 2.0 runs that as a
    # delete and an insert, so every returned row was also taken out of and put back into each index
    # of the table, and the next CHECKPOINT rewrote those indexes (160 MB of a 650 MB ledger per 500
    # works at a million works, for every publication).
    held = _jobs_of_works(cur, {w.work_id for w in writes})
    passed = [(w, held[w.job_id][0]) for w in writes if w.job_id in held
              and _holds(held[w.job_id][1], w.token, w.owner, w.from_state)]
    if passed:
        params: list[Any] = [[row_id for _, row_id in passed], [w.to_state.value for w, _ in passed]]
        selects = ["unnest($1::BIGINT[]) AS row_id", "unnest($2) AS to_state"]
        sets = ["state = v.to_state"]
        for n, col in enumerate(cols, start=3):
            kind = _JOB_TYPES[col]
            params.append([w.values[col] for w, _ in passed])
            selects.append(f"unnest(${n}::{'VARCHAR' if kind == 'JSON' else kind}[]) AS c{n}")
            sets.append(f"{col} = v.c{n}")
        if bump:
            sets.append("fencing_token = j.fencing_token + 1")
        cur.execute(
            f"UPDATE artifact_jobs AS j SET {', '.join(sets)} FROM (SELECT {', '.join(selects)}) v "
            "WHERE j.rowid = v.row_id",
            params,
        )
    return {w.job_id for w, _ in passed}


def _holds(job: Job, token: int, owner: str, state: State) -> bool:
    """The job as held is the writer's: its fencing token and owner, in the state the write moves from."""
    return job.fencing_token == token and job.lease_owner == owner and job.state == state.value


def _record_effects(cur: duckdb.DuckDBPyConnection, writes: Sequence[LeaseWrite]) -> None:
    """Finished effect records: new op rows, or a re-run of an op an earlier holder recorded."""
    recs = [(w, e) for w in writes for e in w.effects]
    if not recs:
        return
    cur.execute(
        """INSERT INTO artifact_ops (op_key, job_id, op_type, effect_key, started_at, finished_at, owner,
               fencing_token, runs, result_code, result_json)
           SELECT unnest($1), unnest($2), unnest($3), unnest($4), unnest($5::DOUBLE[]), unnest($6::DOUBLE[]),
                  unnest($7), unnest($8::BIGINT[]), 1, 'OK', unnest($9)::JSON
           ON CONFLICT (op_key) DO UPDATE SET started_at = excluded.started_at, finished_at = excluded.finished_at,
               owner = excluded.owner, fencing_token = excluded.fencing_token, runs = artifact_ops.runs + 1,
               result_code = 'OK', result_json = excluded.result_json""",
        [[e.op_key for _, e in recs], [w.job_id for w, _ in recs], [e.op_type for _, e in recs],
         [e.key for _, e in recs], [e.started_at for _, e in recs], [e.finished_at for _, e in recs],
         [w.owner for w, _ in recs], [w.token for w, _ in recs], [e.result_json for _, e in recs]],
    )


def _record_attempts(cur: duckdb.DuckDBPyConnection, writes: Sequence[LeaseWrite]) -> None:
    rows = [(w, a) for w in writes for a in w.attempts]
    if not rows:
        return
    cur.execute(
        "INSERT INTO http_attempts (job_id, run_id, method, url, host, status, bytes, elapsed_s, error, started_at) "
        "SELECT unnest($1), unnest($2::VARCHAR[]), unnest($3), unnest($4), unnest($5::VARCHAR[]), "
        "unnest($6::INTEGER[]), unnest($7::BIGINT[]), unnest($8::DOUBLE[]), unnest($9::VARCHAR[]), "
        "unnest($10::DOUBLE[])",
        [[w.job_id for w, _ in rows], [w.run_id for w, _ in rows], [a.method for _, a in rows],
         [a.url for _, a in rows], [a.host for _, a in rows], [a.status for _, a in rows],
         [a.bytes for _, a in rows], [a.elapsed_s for _, a in rows], [a.error for _, a in rows],
         [a.started_at for _, a in rows]],
    )


def _record_completions(cur: duckdb.DuckDBPyConnection, writes: Sequence[LeaseWrite], now: float,
                        store_root: Path) -> None:
    """Blob references, work versions and the works' other candidates, for every completion at once."""
    if not writes:
        return
    blobs: dict[str, list[Any]] = {}
    for w in writes:
        r = w.completion
        assert r is not None and r.sha256 is not None
        entry = blobs.setdefault(r.sha256, [store_relative(r.blob_path or r.path, store_root), r.bytes, 0])
        entry[2] += 1
    cur.execute(
        """INSERT INTO blobs SELECT unnest($1), unnest($2), unnest($3::BIGINT[]), unnest($4::INTEGER[]), $5, $5
           ON CONFLICT (sha256) DO UPDATE SET ref_count = blobs.ref_count + excluded.ref_count,
               verified_at = excluded.verified_at""",
        [list(blobs), [b[0] for b in blobs.values()], [b[1] for b in blobs.values()],
         [b[2] for b in blobs.values()], now],
    )
    results = [w.completion for w in writes if w.completion is not None]
    cur.execute(
        "INSERT INTO work_versions SELECT unnest($1), unnest($2), unnest($3), unnest($4::VARCHAR[]), "
        "unnest($5::VARCHAR[]), unnest($6::BIGINT[]), $7",
        [[w.work_id for w in writes], [r.final_url or r.url for r in results], [r.sha256 for r in results],
         [r.etag for r in results], [r.last_modified for r in results], [r.bytes for r in results], now],
    )
    others = {j for w in writes for j in w.other_jobs}
    if others:
        jobs = _jobs_of_works(cur, {w.work_id for w in writes if w.other_jobs})
        skipped = [row_id for job_id, (row_id, job) in jobs.items() if job_id in others and (
            job.state == State.PLANNED.value or (job.state == State.FAILED.value and job.failure_class == "transient"))]
        if skipped:
            cur.execute(
                """UPDATE artifact_jobs AS j SET state = 'SKIPPED_DUPLICATE', updated_at = $2, next_eligible_at = NULL
                   FROM (SELECT unnest($1::BIGINT[]) AS row_id) v WHERE j.rowid = v.row_id""",
                [skipped, now],
            )


def _postgres(settings: Settings, *, owner: str | None, reader: bool = False) -> Ledger:
    """The PostgreSQL ledger (DTKG_LEDGER_URL), which answers every `Ledger` call the product makes."""
    from typing import cast

    from dtkg_assets.core.ledger.pg import PgLedger

    handle = PgLedger.open_reader(settings) if reader else PgLedger.open_writer(settings, owner=owner)
    return cast(Ledger, handle)


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


def _stderr(message: str, stream: TextIO | None = None) -> None:
    print(message, file=stream or sys.stderr, flush=True)
