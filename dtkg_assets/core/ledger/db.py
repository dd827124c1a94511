"""The ledger: one writer process, serialized write transactions, a published read snapshot.

See docs/ledger-concurrency.md for the design. In short:
- `Ledger.open_writer` takes an exclusive `flock` on `$DTKG_HOME/ledger.lock` before DuckDB opens
  the file read-write, waiting with a clear message (never a raw DuckDB lock error).
- Inside the writer process all threads share one connection through per-thread cursors; write
  transactions are serialized by one lock, so read-check-write sequences (fencing, transitions)
  are atomic.
- Readers open the snapshot that the writer publishes atomically (CHECKPOINT, copy, fsync,
  rename) and never touch the live file while a writer may hold it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TextIO, TypeVar

import duckdb

from dtkg_assets.core import crashpoints
from dtkg_assets.core.errors import TRANSIENT_REASONS, DtkgError, Reason
from dtkg_assets.core.http import host_of
from dtkg_assets.core.ledger import schema, storage
from dtkg_assets.core.ledger.schema import first_row
from dtkg_assets.core.ledger.states import COMPLETE, IN_FLIGHT, IllegalTransition, State, check_transition
from dtkg_assets.core.ledger.storage import (
    FileLock,
    LedgerBusy,
    LedgerCorrupt,
    LedgerUnavailable,
    lock_path,
    read_holder,
)
from dtkg_assets.core.store import store_relative
from dtkg_assets.core.types import FetchResult, HttpAttempt, InputProblem, WorkRecord
from dtkg_assets.settings import Settings

T = TypeVar("T")


class LeaseLost(DtkgError):
    """This worker's lease was taken over (stale fencing token) or released: it must not commit."""

    def __init__(self, job_id: str, detail: str) -> None:
        super().__init__(Reason.LEASE_LOST, f"job {job_id}: {detail}")
        self.job_id = job_id


def stable_hash(obj: Any) -> str:
    """SHA-256 of canonical JSON (sorted keys, no spaces): deterministic across processes."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def canonical_url(url: str) -> str:
    """Scheme and host lower-cased, default port and fragment dropped (path and query kept as is)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    port = parts.port
    if port and not ((scheme == "http" and port == 80) or (scheme == "https" and port == 443)):
        host = f"{host}:{port}"
    if parts.username:
        host = f"{parts.username}@{host}"
    return urlunsplit((scheme, host, parts.path or "/", parts.query, ""))


def job_id_for(work_id: str, url: str, artifact: str = "pdf") -> str:
    return stable_hash({"work_id": work_id, "artifact": artifact, "url": canonical_url(url)})


def op_key_for(job_id: str, op_type: str, effect_key: str) -> str:
    return stable_hash({"job_id": job_id, "op_type": op_type, "key": effect_key})


def reason_is_transient(reason: str) -> bool:
    return reason in {r.value for r in TRANSIENT_REASONS}


@dataclass
class Job:
    job_id: str
    idempotency_key: str
    work_id: str
    artifact: str
    url: str
    host: str | None
    candidate_rank: int | None
    candidate_source: str | None
    state: str
    lease_owner: str | None
    lease_expires_at: float | None
    fencing_token: int
    attempts: int
    failure_class: str | None
    last_error: str | None
    last_reason: str | None
    next_eligible_at: float | None
    sha256: str | None
    path: str | None
    bytes: int | None
    final_url: str | None
    http_status: int | None
    decision: str | None
    resumed_from: int | None
    elapsed_s: float | None
    etag: str | None
    last_modified: str | None
    result: Any
    created_at: float | None
    updated_at: float | None
    finished_at: float | None
    reopened_at: float | None
    run_id: str | None

    @property
    def complete(self) -> bool:
        return self.state in COMPLETE


_JOB_COLS = ", ".join(f.name for f in fields(Job))


@dataclass
class LedgerStats:
    """Time spent inside ledger calls (wall and this thread's CPU), for cost-per-artifact reports."""

    calls: int = 0
    transactions: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    snapshot_skips: int = 0
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
        self.group_commit = True
        self._qlock = threading.Lock()
        self._queue: list[_Ticket] = []
        self._publish_lock = threading.Lock()
        # Committed write transactions so far, and how many the published snapshot holds.
        self._generation = 0
        self._published_generation = -1
        self.snapshot_error: str | None = None  # why the last publication failed (None: it did not)
        self._publisher: threading.Thread | None = None
        self._publisher_stop = threading.Event()

    # ---------------------------------------------------------------- opening and closing
    # Storage specifics of the DuckDB file (lock, snapshot, damaged files) live in `storage`; this
    # section only decides when to use them.

    @classmethod
    def try_open_writer(cls, settings: Settings, *, owner: str | None = None) -> Ledger | None:
        """Open for writing if nobody holds the writer lock right now, else None (sensors skip)."""
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
                raise LedgerCorrupt(path, problem)  # before DuckDB writes anything into it
            fresh = storage.snapshot_is_current(settings)  # judged before DuckDB touches the file
            path.parent.mkdir(parents=True, exist_ok=True)
            con = duckdb.connect(str(path))
            applied = schema.migrate(con)
            ledger = cls(con, settings, path=path, lock=lock, writable=True, owner=owner)
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
                con = duckdb.connect(str(settings.ledger_path), read_only=True)
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
            con = duckdb.connect(str(snap), read_only=True)
        except duckdb.Error as exc:
            raise storage.storage_error(exc, snap, snapshot=True) from None
        return cls(con, settings, path=snap, lock=None, writable=False, owner="reader")

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
            self._con.close()
        finally:
            if self._lock is not None:
                self._lock.release()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- snapshot

    def publish_snapshot(self, *, force: bool = False) -> bool:
        """CHECKPOINT, copy the file beside the snapshot, fsync, rename over it (atomic for readers).

        Returns True when the snapshot is current: published now, or nothing was written since the
        last publish. Without `force`, at most one publication per `DTKG_LEDGER_SNAPSHOT_INTERVAL_S`
        (a publication copies the whole file: 0.05 s at 100k works, 0.4 s at 1M). A publication that
        fails (a full disk) leaves nothing behind, keeps the previous snapshot and returns False.
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
            # The copy must not see a checkpoint half done: copy while no write can start.
            try:
                tmp = storage.copy_out(self.path, snap)
            except OSError as exc:
                return self._publish_failed(exc)
        # The copy is complete and consistent: make it durable and visible without blocking writers.
        try:
            storage.install(tmp, snap, fsync=self.settings.io.fsync)
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
        with self._timed():
            if not self.group_commit:
                with self._wlock:
                    self._run_alone(ticket)
            else:
                with self._qlock:
                    self._queue.append(ticket)
                with self._wlock:
                    if not ticket.done:
                        with self._qlock:
                            batch, self._queue = self._queue, []
                        self._run_batch(batch)
        if ticket.error is not None:
            raise ticket.error
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

    def plan(self, works: Iterable[WorkRecord], *, now: float | None = None) -> tuple[int, int]:
        """Upsert works and one job per candidate URL (rank order), in bulk. Returns (new works, new jobs)."""
        now = time.time() if now is None else now
        by_id: dict[str, WorkRecord] = {}
        for w in works:
            by_id[w.work_id] = w  # last record for an id wins
        if not by_id:
            return 0, 0
        recs = list(by_id.values())
        jobs: dict[str, tuple[str, str, str, int, str]] = {}
        for w in recs:
            seen: set[str] = set()
            for rank, cand in enumerate(w.candidates):
                canon = canonical_url(cand.url)
                if canon in seen:
                    continue
                seen.add(canon)
                jid = job_id_for(w.work_id, cand.url)
                jobs[jid] = (w.work_id, cand.url, host_of(cand.url), rank, cand.source)
        def _body(cur: duckdb.DuckDBPyConnection) -> Any:
            before = _count(cur, "works"), _count(cur, "artifact_jobs")
            cur.execute(
                """
                INSERT INTO works
                SELECT unnest($1), unnest($2), unnest($3), unnest($4), unnest($5)::JSON, unnest($6),
                       unnest($7)::JSON, $8, $8
                ON CONFLICT (work_id) DO UPDATE SET doi = excluded.doi, title = excluded.title,
                    publication_year = excluded.publication_year, candidates = excluded.candidates,
                    origin = excluded.origin, raw = excluded.raw, last_seen = excluded.last_seen
                """,
                [
                    [w.work_id for w in recs],
                    [w.doi for w in recs],
                    [w.title for w in recs],
                    [w.publication_year for w in recs],
                    [json.dumps([{"url": c.url, "source": c.source} for c in w.candidates]) for w in recs],
                    [w.origin for w in recs],
                    [json.dumps(w.raw, default=str) for w in recs],
                    now,
                ],
            )
            if jobs:
                ids = list(jobs)
                vals = list(jobs.values())
                cur.execute(
                    """
                    INSERT INTO artifact_jobs (job_id, idempotency_key, work_id, artifact, url, host,
                        candidate_rank, candidate_source, state, created_at, updated_at)
                    SELECT unnest($1), unnest($1), unnest($2), 'pdf', unnest($3), unnest($4), unnest($5),
                           unnest($6), 'PLANNED', $7, $7
                    ON CONFLICT DO NOTHING
                    """,
                    [ids, [v[0] for v in vals], [v[1] for v in vals], [v[2] for v in vals],
                     [v[3] for v in vals], [v[4] for v in vals], now],
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
        if not work_ids:
            return set()
        rows = self.query(
            "SELECT DISTINCT work_id FROM artifact_jobs WHERE work_id IN (SELECT unnest($1)) "
            "AND state IN ('INDEXED', 'DEDUPED')",
            [list(work_ids)],
        )
        return {r[0] for r in rows}

    # ---------------------------------------------------------------- leases and state

    def acquire(self, job_id: str, owner: str, *, ttl_s: float | None = None, run_id: str | None = None,
                now: float | None = None) -> int | None:
        """Lease a job; returns the new fencing token, or None if it is not leasable now."""
        lease = self.lease(job_id, owner, ttl_s=ttl_s, run_id=run_id, now=now)
        return None if lease is None else lease.token

    def lease(self, job_id: str, owner: str, *, ttl_s: float | None = None, run_id: str | None = None,
              now: float | None = None) -> Lease | None:
        """Lease a job like `acquire`, returning the holder's handle for its fenced writes (`Lease`)."""
        now = time.time() if now is None else now
        ttl = self.settings.ledger.lease_ttl_s if ttl_s is None else ttl_s
        max_attempts = self.settings.ledger.max_attempts
        def _body(cur: duckdb.DuckDBPyConnection) -> Any:
            job = _job_lite(cur, job_id)
            if job is None:
                raise KeyError(f"no job {job_id}")
            state = State(job.state)
            if state == State.PLANNED:
                pass
            elif state == State.FAILED:
                eligible = job.next_eligible_at is None or job.next_eligible_at <= now
                if job.failure_class != "transient" or not eligible or job.attempts >= max_attempts:
                    return None
            elif state in IN_FLIGHT:
                if job.lease_expires_at is not None and job.lease_expires_at > now:
                    return None  # someone holds a live lease
                if job.attempts >= max_attempts:
                    why = f"lease expired on attempt {job.attempts} (state {job.state})"
                    self._set_failed(cur, job, Reason.RETRIES_EXHAUSTED.value, why, now, permanent=True)
                    return None
            else:
                return None
            check_transition(job_id, job.state, State.LEASED)
            # No RETURNING (it costs DuckDB about as much as the update): under the write lock the
            # row read above is the row updated, so the new token and attempts are known.
            cur.execute(
                """UPDATE artifact_jobs SET state = 'LEASED', lease_owner = ?, lease_expires_at = ?,
                       fencing_token = fencing_token + 1, attempts = attempts + 1, updated_at = ?,
                       run_id = coalesce(?, run_id)
                   WHERE job_id = ?""",
                [owner, now + ttl, now, run_id, job_id],
            )
            return Lease(self, job_id, owner, job.fencing_token + 1, work_id=job.work_id,
                         run_id=run_id or job.run_id, attempts=job.attempts + 1, reopened_at=job.reopened_at)
        lease: Lease | None = self._tx(_body)
        return lease

    def _fenced(self, cur: duckdb.DuckDBPyConnection, job_id: str, owner: str, token: int) -> Job:
        job = _job_lite(cur, job_id)
        if job is None:
            raise KeyError(f"no job {job_id}")
        if job.fencing_token != token or job.lease_owner != owner:
            raise LeaseLost(
                job_id,
                f"fencing token {token} of {owner} is stale (job holds token {job.fencing_token}, "
                f"owner {job.lease_owner}, state {job.state})",
            )
        return job

    def check_fence(self, job_id: str, owner: str, token: int) -> None:
        with self._timed(), self._wlock:
            self._fenced(self._cur(), job_id, owner, token)

    def renew(self, job_id: str, owner: str, token: int, *, ttl_s: float | None = None,
              now: float | None = None) -> None:
        now = time.time() if now is None else now
        ttl = self.settings.ledger.lease_ttl_s if ttl_s is None else ttl_s
        def _body(cur: duckdb.DuckDBPyConnection) -> Any:
            self._fenced(cur, job_id, owner, token)
            cur.execute("UPDATE artifact_jobs SET lease_expires_at = ? WHERE job_id = ?", [now + ttl, job_id])
        self._tx(_body)

    def release(self, job_id: str, owner: str, token: int, *, now: float | None = None) -> None:
        """Give an in-flight job back (PLANNED); the token is bumped so the old holder is fenced."""
        now = time.time() if now is None else now
        def _body(cur: duckdb.DuckDBPyConnection) -> Any:
            job = self._fenced(cur, job_id, owner, token)
            if State(job.state) in IN_FLIGHT:
                self._set_state(cur, job, State.PLANNED, now, {"lease_owner": None, "lease_expires_at": None},
                                bump=True)
        self._tx(_body)

    def transition(self, job_id: str, to: State | str, *, owner: str, token: int,
                   fields: dict[str, Any] | None = None, now: float | None = None) -> None:
        """A fenced state write: the table must allow it and the token must be current."""
        now = time.time() if now is None else now
        def _body(cur: duckdb.DuckDBPyConnection) -> Any:
            job = self._fenced(cur, job_id, owner, token)
            self._set_state(cur, job, State(to), now, fields or {})
        self._tx(_body)

    def _guarded_update(self, cur: duckdb.DuckDBPyConnection, lease: Lease, to: State,
                        values: dict[str, Any], *, bump: bool = False) -> None:
        """Update a leased job's row to `to` only if it still holds the lease's token and owner and the
        state the lease last committed (the caller checked the path from there against the table)."""
        cols = {"state": to.value, **values}
        sets = _assignments(cols) + (", fencing_token = fencing_token + 1" if bump else "")
        row = first_row(
            cur, f"UPDATE artifact_jobs SET {sets} WHERE job_id = ? AND fencing_token = ? AND lease_owner = ? "
            "AND state = ?", [*cols.values(), lease.job_id, lease.token, lease.owner, lease.state.value],
        )
        if row is not None and int(row[0]) == 1:
            return
        job = _job_lite(cur, lease.job_id)
        if job is None:
            raise KeyError(f"no job {lease.job_id}")
        if job.fencing_token != lease.token or job.lease_owner != lease.owner:
            raise _stale(lease.job_id, lease.owner, lease.token, job.fencing_token, job.lease_owner, job.state)
        raise IllegalTransition(lease.job_id, job.state, to)

    def _record_op_error(self, op_key: str, exc: BaseException) -> None:
        error = json.dumps({"error": f"{type(exc).__name__}: {exc}"})

        def record_error(cur: duckdb.DuckDBPyConnection) -> None:
            cur.execute("UPDATE artifact_ops SET result_code = 'ERROR', result_json = ? WHERE op_key = ?",
                        [error, op_key])

        with contextlib.suppress(Exception):
            self._tx(record_error)

    def _set_state(self, cur: duckdb.DuckDBPyConnection, job: Job, to: State, now: float,
                   values: dict[str, Any], *, bump: bool = False) -> None:
        check_transition(job.job_id, job.state, to)
        cols = {"state": to.value, "updated_at": now, **values}
        sets = ", ".join(f"{k} = ?" for k in cols)
        if bump:
            sets += ", fencing_token = fencing_token + 1"
        cur.execute(f"UPDATE artifact_jobs SET {sets} WHERE job_id = ?", [*cols.values(), job.job_id])
        job.state = to.value

    def _failure(self, attempts: int, reason: str, detail: str | None, now: float, *,
                 permanent: bool = False, retry_after: float | None = None) -> tuple[str, dict[str, Any]]:
        """The class (transient/permanent) and the job columns of a failure on attempt `attempts`."""
        cfg = self.settings.ledger
        transient = reason_is_transient(reason) and not permanent
        if transient and attempts >= cfg.max_attempts:
            detail = f"{reason}: {detail or ''}".strip().rstrip(":")
            reason, transient = Reason.RETRIES_EXHAUSTED.value, False
        next_at = None
        if transient:
            backoff = min(cfg.retry_backoff_s * 2 ** max(0, attempts - 1), cfg.retry_backoff_max_s)
            next_at = now + max(backoff, retry_after or 0.0)
        klass = "transient" if transient else "permanent"
        return klass, {"failure_class": klass, "last_reason": reason, "last_error": detail,
                       "next_eligible_at": next_at, "lease_owner": None, "lease_expires_at": None,
                       "finished_at": None if transient else now}

    def _set_failed(self, cur: duckdb.DuckDBPyConnection, job: Job, reason: str, detail: str | None,
                    now: float, *, permanent: bool = False, retry_after: float | None = None) -> str:
        klass, values = self._failure(job.attempts, reason, detail, now, permanent=permanent, retry_after=retry_after)
        self._set_state(cur, job, State.FAILED, now, values, bump=True)
        return klass

    def fail(self, job_id: str, *, owner: str, token: int, reason: str, detail: str | None = None,
             result: FetchResult | None = None, retry_after: float | None = None, now: float | None = None) -> str:
        """FAILED with class transient (backoff, retried later) or permanent. Returns the class."""
        now = time.time() if now is None else now
        def _body(cur: duckdb.DuckDBPyConnection) -> Any:
            job = self._fenced(cur, job_id, owner, token)
            if result is not None:
                cur.execute(
                    "UPDATE artifact_jobs SET http_status = ?, final_url = ?, elapsed_s = ?, result = ? "
                    "WHERE job_id = ?",
                    [result.http_status, result.final_url, result.elapsed_s, json.dumps(result.to_json()), job_id],
                )
                self._insert_attempts(cur, job_id, job.run_id, result.http_attempts)
            return self._set_failed(cur, job, reason, detail, now, retry_after=retry_after)
        return self._tx(_body)

    def complete(self, job_id: str, *, owner: str, token: int, result: FetchResult,
                 now: float | None = None) -> State:
        """Record a stored (FINALIZED → INDEXED) or deduped (→ DEDUPED) artifact, its blob and attempts,
        and mark the work's other untried candidates SKIPPED_DUPLICATE — all in one transaction."""
        now = time.time() if now is None else now
        final, values = _completion(result, now, self.settings.store_dir)
        def _body(cur: duckdb.DuckDBPyConnection) -> Any:
            job = self._fenced(cur, job_id, owner, token)
            _check_chain(job_id, job.state, _completion_path(final))
            cur.execute(f"UPDATE artifact_jobs SET {_assignments(values)}, fencing_token = fencing_token + 1 "
                        "WHERE job_id = ?", [*values.values(), job_id])
            self._record_completion(cur, job_id, job.work_id, job.run_id, result, now)
            return final

        final_state: State = self._tx(_body)
        return final_state

    def _record_completion(self, cur: duckdb.DuckDBPyConnection, job_id: str, work_id: str, run_id: str | None,
                           result: FetchResult, now: float) -> None:
        """The rows a finished artifact adds besides its job row: blob reference, version, attempts,
        and the work's untried candidates marked SKIPPED_DUPLICATE."""
        assert result.sha256 is not None
        blob_path = store_relative(result.blob_path or result.path, self.settings.store_dir)
        # Look up, then a plain INSERT or UPDATE: INSERT … ON CONFLICT costs DuckDB twice as much.
        if first_row(cur, "SELECT 1 FROM blobs WHERE sha256 = ?", [result.sha256]) is None:
            cur.execute("INSERT INTO blobs VALUES (?, ?, ?, 1, ?, ?)",
                        [result.sha256, blob_path, result.bytes, now, now])
        else:
            cur.execute("UPDATE blobs SET ref_count = ref_count + 1, verified_at = ? WHERE sha256 = ?",
                        [now, result.sha256])
        cur.execute(
            "INSERT INTO work_versions VALUES (?, ?, ?, ?, ?, ?, ?)",
            [work_id, result.final_url or result.url, result.sha256, result.etag, result.last_modified,
             result.bytes, now],
        )
        self._insert_attempts(cur, job_id, run_id, result.http_attempts)
        cur.execute(
            """UPDATE artifact_jobs SET state = 'SKIPPED_DUPLICATE', updated_at = ?, next_eligible_at = NULL
               WHERE work_id = ? AND job_id <> ?
                 AND (state = 'PLANNED' OR (state = 'FAILED' AND failure_class = 'transient'))""",
            [now, work_id, job_id],
        )

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
            rows = cur.execute(
                f"SELECT {_JOB_COLS} FROM artifact_jobs WHERE state IN ('LEASED','HEAD_DONE','RESUME_OK',"
                f"'STREAMING','FINALIZED') AND ({where})",
                params,
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

    def run_effect(self, job_id: str, op_type: str, key: str, *, owner: str, token: int,
                   fn: Callable[[], dict[str, Any]], now: float | None = None) -> dict[str, Any]:
        """Claim the op row (fenced), run `fn` unless a finished row exists (replay), record the result.

        An unfinished row means an earlier holder died mid-effect (its lease is gone, or we could not
        hold the fence): the effect is re-executed, which is safe because effects on disk are idempotent.
        """
        op_key = op_key_for(job_id, op_type, key)
        now = time.time() if now is None else now

        def claim(cur: duckdb.DuckDBPyConnection) -> dict[str, Any] | None:
            job = self._fenced(cur, job_id, owner, token)
            row = first_row(cur, "SELECT finished_at, result_json::VARCHAR FROM artifact_ops WHERE op_key = ?",
                            [op_key])
            # Replay a finished effect, unless the job was reopened since (file lost: do it again).
            if row is not None and row[0] is not None and (job.reopened_at is None or row[0] > job.reopened_at):
                return dict(json.loads(row[1]))
            _claim_op(cur, op_key, job_id, op_type, key, owner, token, now, exists=row is not None)
            return None

        replay: dict[str, Any] | None = self._tx(claim)
        if replay is not None:
            return replay
        try:
            result = fn()
        except BaseException as exc:
            self._record_op_error(op_key, exc)
            raise
        crashpoints.crash_point(f"effect_done:{op_type}")
        text = json.dumps(result, default=str)

        def record(cur: duckdb.DuckDBPyConnection) -> None:
            self._fenced(cur, job_id, owner, token)
            cur.execute(
                "UPDATE artifact_ops SET finished_at = ?, result_code = 'OK', result_json = ? WHERE op_key = ?",
                [time.time(), text, op_key],
            )

        self._tx(record)
        return dict(json.loads(text))

    def abandon_ops(self, *, now: float | None = None) -> int:
        """Ops started but not finished whose job is no longer leased by the op's owner/token."""
        now = time.time() if now is None else now
        def _body(cur: duckdb.DuckDBPyConnection) -> Any:
            rows = cur.execute(
                """UPDATE artifact_ops SET result_code = 'ABANDONED'
                   WHERE finished_at IS NULL AND coalesce(result_code, '') <> 'ABANDONED' AND op_key IN (
                     SELECT o.op_key FROM artifact_ops o JOIN artifact_jobs j USING (job_id)
                     WHERE o.finished_at IS NULL AND (j.fencing_token <> o.fencing_token
                        OR j.lease_owner IS DISTINCT FROM o.owner OR j.lease_expires_at IS NULL
                        OR j.lease_expires_at <= ?))
                   RETURNING op_key""",
                [now],
            ).fetchall()
            return len(rows)

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
_LITE_SQL = f"SELECT {', '.join(_LITE)} FROM artifact_jobs WHERE job_id = ?"
_NOT_LITE: dict[str, Any] = {f.name: None for f in fields(Job) if f.name not in _LITE}


def _job_lite(cur: duckdb.DuckDBPyConnection, job_id: str) -> Job | None:
    """The job's lease/state columns only (others None): for fenced writes and lease decisions."""
    row = first_row(cur, _LITE_SQL, [job_id])
    if row is None:
        return None
    values: dict[str, Any] = dict(zip(_LITE, row, strict=True))
    job = Job(**values, **_NOT_LITE)
    job.fencing_token = int(job.fencing_token)
    job.attempts = int(job.attempts)
    return job


def _assignments(values: dict[str, Any]) -> str:
    return ", ".join(f"{k} = ?" for k in values)


def _check_chain(job_id: str, start: str, path: Sequence[State]) -> None:
    """Each step of `start → path[0] → path[1] …` must be in the transition table."""
    at = start
    for to in path:
        check_transition(job_id, at, to)
        at = to


def _completion_path(final: State) -> tuple[State, ...]:
    return (State.FINALIZED, State.INDEXED) if final == State.INDEXED else (State.DEDUPED,)


def _completion(result: FetchResult, now: float, store_root: Path) -> tuple[State, dict[str, Any]]:
    """The final state of a successful result and every job column it sets (lease released); the
    path is stored relative to the store root."""
    if not result.ok or not result.sha256:
        raise ValueError(f"complete() needs a successful result with a sha256, got {result.status}")
    final = State.INDEXED if result.status == "stored" else State.DEDUPED
    return final, {
        "state": final.value, "updated_at": now,
        "sha256": result.sha256, "path": store_relative(result.path, store_root), "bytes": result.bytes,
        "final_url": result.final_url,
        "http_status": result.http_status, "decision": result.decision, "resumed_from": result.resumed_from,
        "elapsed_s": result.elapsed_s, "etag": result.etag, "last_modified": result.last_modified,
        "result": json.dumps(result.to_json()), "failure_class": None, "last_reason": "ok",
        "last_error": None, "next_eligible_at": None,
        "lease_owner": None, "lease_expires_at": None, "finished_at": now,
    }


class Lease:
    """One holder's lease on one job (owner + fencing token): its fenced writes, in fewer transactions.

    The same writes as `Ledger.transition/run_effect/complete/fail`, with the same checks, but a
    write that need not be durable on its own is queued and committed in the transaction of the
    next write that must be:

    - stage transitions (HEAD_DONE, RESUME_OK): each is checked against the transition table when
      queued, and the job row moves once, to the last stage, when a stage is committed (STREAMING,
      right before the first body byte) or with the next effect claim, completion or failure. The
      update is guarded by the state the ledger holds and by the fencing token, so it is enforced
      against the row exactly like a read-check-write. A crash before then leaves the job LEASED,
      from which recovery (expiry, release) is as legal as from any in-flight state.
    - the record of a finished effect (finished_at, result): committed with the next effect's claim
      or with the completion. A crash before then leaves the op unfinished, as a crash between an
      effect and its own record transaction always did: the next holder finds it and runs the effect
      again (effects are idempotent on disk). A lost fence refuses the whole transaction, record
      included, as the separately fenced record was refused.

    Every transaction checks the token (in the guarded update or the op claim), so a holder whose
    lease was taken over commits nothing. A `Lease` belongs to one worker thread.
    """

    def __init__(self, ledger: Ledger, job_id: str, owner: str, token: int, *, work_id: str,
                 run_id: str | None, attempts: int, reopened_at: float | None,
                 state: State = State.LEASED) -> None:
        self.ledger, self.job_id, self.owner, self.token = ledger, job_id, owner, token
        self.work_id, self.run_id, self.attempts, self.reopened_at = work_id, run_id, attempts, reopened_at
        self.state = state  # as committed in the ledger
        self.target = state  # after the queued transitions
        self._fields: dict[str, Any] = {}
        self._records: list[tuple[str, float, str]] = []  # (op_key, finished_at, result_json)
        self.last_reason: str | None = None  # the reason `fail` recorded (retries_exhausted may replace it)

    @property
    def first_attempt(self) -> bool:
        """No holder before this one (never leased, never reopened): no op of this job can exist."""
        return self.attempts <= 1 and self.reopened_at is None

    # ---------------------------------------------------------------- queued writes

    def stage(self, to: State | str, fields: dict[str, Any] | None = None, *, commit: bool = False,
              ttl_s: float | None = None, now: float | None = None) -> None:
        """Move to an in-flight stage (checked now); `commit=True` commits it and every queued write,
        and renews the lease."""
        to = State(to)
        check_transition(self.job_id, self.target, to)
        self.target = to
        self._fields.update(fields or {})
        if commit:
            self.renew(ttl_s=ttl_s, now=now)

    def _apply_queued(self, cur: duckdb.DuckDBPyConnection, now: float, extra: dict[str, Any] | None = None,
                      *, always: bool = False) -> None:
        """Inside a transaction: the queued op records, then one guarded update of the job row to the
        queued stage (with `extra` columns). Mutates nothing on `self`: `_applied` does, after the commit
        (a failed group-commit batch re-runs this body)."""
        self._write_records(cur)
        values = {**self._fields, **(extra or {})}
        if self.target != self.state or values or always:
            self.ledger._guarded_update(cur, self, self.target, {"updated_at": now, **values})

    def _write_records(self, cur: duckdb.DuckDBPyConnection) -> None:
        for op_key, finished_at, text in self._records:
            cur.execute("UPDATE artifact_ops SET finished_at = ?, result_code = 'OK', result_json = ? "
                        "WHERE op_key = ?", [finished_at, text, op_key])

    def _applied(self) -> None:
        self.state = self.target
        self._fields.clear()
        self._records.clear()

    def renew(self, *, ttl_s: float | None = None, now: float | None = None) -> None:
        """Extend the lease (committing queued writes with it); raises LeaseLost if it was taken over."""
        now = time.time() if now is None else now
        ttl = self.ledger.settings.ledger.lease_ttl_s if ttl_s is None else ttl_s
        self.ledger._tx(lambda cur: self._apply_queued(cur, now, {"lease_expires_at": now + ttl}))
        self._applied()

    def flush(self, *, now: float | None = None) -> None:
        """Commit the queued writes now (fenced even when nothing is queued)."""
        now = time.time() if now is None else now
        self.ledger._tx(lambda cur: self._apply_queued(cur, now, always=True))
        self._applied()

    # ---------------------------------------------------------------- effects

    def run_effect(self, op_type: str, key: str, fn: Callable[[], dict[str, Any]],
                   *, now: float | None = None) -> dict[str, Any]:
        """`Ledger.run_effect` for this lease: the claim commits the queued writes; the record is queued."""
        op_key = op_key_for(self.job_id, op_type, key)
        now = time.time() if now is None else now

        def claim(cur: duckdb.DuckDBPyConnection) -> dict[str, Any] | None:
            self._apply_queued(cur, now)
            # The fence and the op row in one statement.
            row = first_row(
                cur,
                "SELECT j.fencing_token, j.lease_owner, j.state, o.finished_at, o.result_json::VARCHAR "
                "FROM artifact_jobs j LEFT JOIN artifact_ops o ON o.op_key = ? WHERE j.job_id = ?",
                [op_key, self.job_id],
            )
            if row is None:
                raise KeyError(f"no job {self.job_id}")
            if int(row[0]) != self.token or row[1] != self.owner:
                raise _stale(self.job_id, self.owner, self.token, int(row[0]), row[1], row[2])
            finished_at, text = row[3], row[4]
            # Replay a finished effect, unless the job was reopened since (file lost: do it again).
            # The reopen time read at acquire still holds: a requeue bumps the token.
            if finished_at is not None and (self.reopened_at is None or finished_at > self.reopened_at):
                return dict(json.loads(text))
            _claim_op(cur, op_key, self.job_id, op_type, key, self.owner, self.token, now, exists=text is not None)
            return None

        replay: dict[str, Any] | None = self.ledger._tx(claim)
        self._applied()
        if replay is not None:
            return replay
        try:
            result = fn()
        except BaseException as exc:
            self.ledger._record_op_error(op_key, exc)
            raise
        crashpoints.crash_point(f"effect_done:{op_type}")
        text = json.dumps(result, default=str)
        self._records.append((op_key, time.time(), text))
        return dict(json.loads(text))

    # ---------------------------------------------------------------- endings

    def complete(self, result: FetchResult, *, now: float | None = None) -> State:
        """`Ledger.complete` for this lease, with the queued writes, in one transaction."""
        now = time.time() if now is None else now
        final, values = _completion(result, now, self.ledger.settings.store_dir)
        _check_chain(self.job_id, self.target, _completion_path(final))

        def body(cur: duckdb.DuckDBPyConnection) -> None:
            self._write_records(cur)
            self.ledger._guarded_update(cur, self, final, values, bump=True)
            self.ledger._record_completion(cur, self.job_id, self.work_id, self.run_id, result, now)

        self.ledger._tx(body)
        self._applied()
        self.state = self.target = final
        return final

    def fail(self, *, reason: str, detail: str | None = None, result: FetchResult | None = None,
             retry_after: float | None = None, now: float | None = None) -> str:
        """`Ledger.fail` for this lease (the queued stage columns are kept). Returns the class."""
        now = time.time() if now is None else now
        check_transition(self.job_id, self.target, State.FAILED)
        klass, values = self.ledger._failure(self.attempts, reason, detail, now, retry_after=retry_after)
        if result is not None:
            values = {"http_status": result.http_status, "final_url": result.final_url,
                      "elapsed_s": result.elapsed_s, "result": json.dumps(result.to_json()), **values}

        def body(cur: duckdb.DuckDBPyConnection) -> None:
            self._write_records(cur)
            self.ledger._guarded_update(cur, self, State.FAILED, {**self._fields, "updated_at": now, **values},
                                        bump=True)
            if result is not None:
                self.ledger._insert_attempts(cur, self.job_id, self.run_id, result.http_attempts)

        self.ledger._tx(body)
        self._applied()
        self.state = self.target = State.FAILED
        self.last_reason = values["last_reason"]
        return klass

    def release(self, *, now: float | None = None) -> None:
        """Give the job back (PLANNED, token bumped), committing the queued op records first."""
        now = time.time() if now is None else now
        check_transition(self.job_id, self.target, State.PLANNED)

        def body(cur: duckdb.DuckDBPyConnection) -> None:
            self._write_records(cur)
            self.ledger._guarded_update(cur, self, State.PLANNED, {"updated_at": now, "lease_owner": None,
                                                                   "lease_expires_at": None}, bump=True)

        self.ledger._tx(body)
        self._applied()
        self.state = self.target = State.PLANNED


def _stale(job_id: str, owner: str, token: int, held_token: int, held_owner: str | None, state: str) -> LeaseLost:
    return LeaseLost(
        job_id,
        f"fencing token {token} of {owner} is stale (job holds token {held_token}, owner {held_owner}, state {state})",
    )


def _claim_op(cur: duckdb.DuckDBPyConnection, op_key: str, job_id: str, op_type: str, key: str, owner: str,
              token: int, now: float, *, exists: bool) -> None:
    """Claim an op row: a new row, or a re-run of an unfinished (or reopened) one."""
    if not exists:
        cur.execute(
            "INSERT INTO artifact_ops (op_key, job_id, op_type, effect_key, started_at, owner, fencing_token, "
            "result_code, result_json) VALUES (?, ?, ?, ?, ?, ?, ?, 'STARTED', '{}')",
            [op_key, job_id, op_type, key, now, owner, token],
        )
    else:
        cur.execute(
            "UPDATE artifact_ops SET started_at = ?, finished_at = NULL, owner = ?, fencing_token = ?, "
            "runs = runs + 1, result_code = 'RERUN' WHERE op_key = ?",
            [now, owner, token, op_key],
        )


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


def _stderr(message: str, stream: TextIO | None = None) -> None:
    print(message, file=stream or sys.stderr, flush=True)
