"""The PostgreSQL ledger (`DTKG_LEDGER_URL=postgresql://…`): many writer processes on many hosts.

It implements the ledger write interface (`interface.LedgerWriteBackend`: `acquire`, `commit`) and the
rest of what the orchestrator, reconciler, sensors and commands ask of a `Ledger`, over the tables of
`pg_schema` (schema ``dtkg``, the same tables and columns as the DuckDB ledger). Differences from the
DuckDB file, and why they keep the same guarantees:

- **No single-writer lock.** Any number of processes open it read-write. Opening never voids other
  processes' leases (they may be alive): a lease ends by its holder, by expiry, or by an explicit
  release of a failed run's leases.
- **Claims** lock the requested job rows with ``SELECT … FOR UPDATE SKIP LOCKED``, so one busy row
  never holds up a batch of claims; the few rows skipped (another claim or commit of a few ms holds
  them) are then locked with a short wait (``lock_timeout`` 2 s) so the answer reflects that
  transaction's outcome, not the state it was about to change. The checks (state, live lease,
  backoff, attempts) are made on the locked rows, so two workers never hold one job: the grant bumps
  the fencing token in the same transaction.
- **Fenced writes** are one guarded ``UPDATE … FROM unnest(…)`` per kind of write, matching job id,
  token, owner and `from_state` against the row; refused writes change nothing.
- **Durability**: a call returns after COMMIT (synchronous commit, the server default).
- A transaction that loses a deadlock or a serialization check is retried whole (its body only
  touches the database).
- **Readers** see committed rows directly; there is no snapshot to publish (`publish_snapshot` is a
  no-op) and analysts get a DuckDB file from `dtkg ledger export --duckdb`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import fields, replace
from typing import Any, TypeVar

from dtkg_assets.core.errors import Reason
from dtkg_assets.core.ledger import pg_schema, views
from dtkg_assets.core.ledger.interface import (
    Job,
    LeaseGrant,
    LeaseRequest,
    LeaseWrite,
)
from dtkg_assets.core.ledger.lease import GroupCommit, Lease, apply_guarded_writes, failure_values
from dtkg_assets.core.ledger.planning import plan_columns
from dtkg_assets.core.ledger.schema import TABLES
from dtkg_assets.core.ledger.states import COMPLETE, COMPLETE_SQL, IN_FLIGHT, IN_FLIGHT_SQL, State, check_transition
from dtkg_assets.core.ledger.storage import LedgerBusy, LedgerUnavailable
from dtkg_assets.core.settings import Settings
from dtkg_assets.core.store import store_relative
from dtkg_assets.core.types import HttpAttempt, InputProblem, WorkRecord

T = TypeVar("T")
S = pg_schema.SCHEMA
_JOB_FIELDS = [f.name for f in fields(Job)]
# JSON columns come back as text, as DuckDB returns them.
_JOB_SELECT = "SELECT " + ", ".join(f"{c}::text" if c == "result" else c for c in _JOB_FIELDS) + \
    f" FROM {S}.artifact_jobs"
_LITE = ("job_id", "work_id", "state", "lease_owner", "lease_expires_at", "fencing_token", "attempts",
         "failure_class", "next_eligible_at", "reopened_at", "run_id", "sha256")
_LITE_SELECT = f"SELECT {', '.join(_LITE)} FROM {S}.artifact_jobs"
_PG_ARRAY = {"VARCHAR": "text", "DOUBLE": "float8", "BIGINT": "int8", "INTEGER": "int4", "JSON": "text",
             "BOOLEAN": "bool"}
_JOB_TYPES = {col: typ.split()[0] for col, typ in TABLES["artifact_jobs"]}


class LedgerUnreachable(LedgerUnavailable, LedgerBusy):
    """The PostgreSQL ledger cannot be reached (commands report it in words, like a busy ledger)."""


def _lite(row: Sequence[Any]) -> Job:
    values: dict[str, Any] = dict(zip(_LITE, row, strict=True))
    rest: dict[str, Any] = {f: None for f in _JOB_FIELDS if f not in values}
    job = Job(**values, **rest)
    job.fencing_token, job.attempts = int(job.fencing_token), int(job.attempts)
    return job


def _redact(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", url)


def translate(sql: str) -> str:
    """DuckDB-flavoured ad-hoc SQL (``?`` or ``$n`` parameters, ``::DOUBLE``) for PostgreSQL, with the
    ledger's tables found through the search path."""
    sql = re.sub(r"::DOUBLE\b", "::float8", sql)
    # A list parameter unnested for `IN (SELECT unnest($1))`: the ledger's keys are text.
    sql = re.sub(r"unnest\((\$\d+|\?)\)", r"unnest(\1::text[])", sql)
    sql = re.sub(r"\$(\d+)", lambda m: f"%(p{m.group(1)})s", sql)
    return sql.replace("?", "%s")


def _params(sql: str, params: Sequence[Any] | None) -> Any:
    if params is None:
        return None
    if "%(p" in sql:
        return {f"p{i}": v for i, v in enumerate(params, start=1)}
    return list(params)


class _Cursor:
    """`Ledger.cursor()` for ad-hoc statements (autocommit), DuckDB-flavoured SQL translated."""

    def __init__(self, ledger: PgLedger) -> None:
        self._ledger = ledger
        self._rows: list[tuple[Any, ...]] = []
        self.description: Any = None

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> _Cursor:
        pg_sql = translate(sql)
        with self._ledger._connection() as con:
            cur = con.execute(pg_sql, _params(pg_sql, params))
            self.description = cur.description
            self._rows = cur.fetchall() if cur.description else []
        return self

    def fetchall(self) -> list[tuple[Any, ...]]:
        return list(self._rows)

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._rows[0] if self._rows else None


class PgLedger:
    """A handle on the PostgreSQL ledger; thread-safe (a connection pool), any number per fleet."""

    backend = "postgresql"

    def __init__(self, settings: Settings, *, owner: str, writable: bool) -> None:
        from psycopg_pool import ConnectionPool

        self.settings = settings
        self.owner = owner
        self.writable = writable
        self.path = _redact(settings.ledger.url)
        self.recovered: dict[str, int] = {}
        self.snapshot_error: str | None = None
        self._closed = False
        from dtkg_assets.core.ledger.db import LedgerStats

        self.stats = LedgerStats()
        self._stats_lock = threading.Lock()
        self._pool = ConnectionPool(
            settings.ledger.url, min_size=1, max_size=max(4, settings.run.workers + 4),
            kwargs={"autocommit": True}, configure=_configure, open=True, timeout=60, name="dtkg-ledger",
        )
        self.commits = GroupCommit(self)

    # ---------------------------------------------------------------- opening and closing

    @classmethod
    def _check(cls, settings: Settings, *, migrate: bool) -> None:
        import psycopg

        try:
            with psycopg.connect(settings.ledger.url, connect_timeout=10, autocommit=True) as con:
                if migrate:
                    pg_schema.migrate(con)
                elif pg_schema.current_version(con) == 0:
                    raise LedgerUnavailable(
                        f"the PostgreSQL ledger {_redact(settings.ledger.url)} has no dtkg schema yet: "
                        "import works first (e.g. `dtkg works import FILE`)")
        except psycopg.OperationalError as exc:
            first = (str(exc).strip().splitlines() or [""])[0]
            raise LedgerUnreachable(
                f"cannot reach the PostgreSQL ledger {_redact(settings.ledger.url)} (DTKG_LEDGER_URL): {first}"
            ) from None

    @classmethod
    def open_writer(cls, settings: Settings, *, owner: str | None = None) -> PgLedger:
        from dtkg_assets.core.ledger.db import default_owner

        cls._check(settings, migrate=True)
        return cls(settings, owner=owner or default_owner(), writable=True)

    @classmethod
    def open_reader(cls, settings: Settings) -> PgLedger:
        cls._check(settings, migrate=False)
        return cls(settings, owner="reader", writable=False)

    @property
    def snapshot_age_s(self) -> float | None:
        return None  # readers see committed rows directly

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._pool.close()

    def __enter__(self) -> PgLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def publish_snapshot(self, *, force: bool = False) -> bool:
        return True  # nothing to publish: commits are visible to every reader

    @contextlib.contextmanager
    def bulk_load(self) -> Iterator[None]:
        """Nothing to tune: PostgreSQL's checkpoints do not grow with each commit (see `Ledger.bulk_load`)."""
        yield

    @contextlib.contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        """A critical section for the whole fleet: one process at a time, on any host, runs the block
        for `name` (a transaction-scoped advisory lock, held on a pooled connection until it ends)."""
        with self._connection() as con, con.transaction():
            pg_schema.advisory_xact_lock(con, f"fleet:{name}")
            yield

    # ---------------------------------------------------------------- plumbing

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Any]:
        w0, c0 = time.perf_counter(), time.thread_time()
        try:
            with self._pool.connection() as con:
                yield con
        finally:
            with self._stats_lock:
                self.stats.calls += 1
                self.stats.wall_s += time.perf_counter() - w0
                self.stats.cpu_s += time.thread_time() - c0

    def _tx(self, fn: Callable[[Any], T]) -> T:
        """`fn(connection)` in one committed transaction; retried whole after a deadlock or a
        serialization failure (bodies only touch the database)."""
        from psycopg import errors

        if not self.writable:
            raise PermissionError("this ledger handle is read-only (open it with Ledger.open_writer)")
        for attempt in range(6):
            try:
                with self._connection() as con, con.transaction():
                    value = fn(con)
                with self._stats_lock:
                    self.stats.transactions += 1
                return value
            except (errors.DeadlockDetected, errors.SerializationFailure):
                if attempt == 5:
                    raise
                time.sleep(0.005 * 2 ** attempt)
        raise AssertionError("unreachable")

    def query(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        return self.cursor().execute(sql, params).fetchall()

    def query_keys(self, sql: str, keys: Iterable[str], params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """`Ledger.query_keys`: PostgreSQL takes the whole list in one query."""
        return self.query(sql, [sorted(set(keys)), *params])

    def query_dicts(self, sql: str, params: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        cur = self.cursor().execute(sql, params)
        names = [d[0] for d in cur.description or []]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def cursor(self) -> _Cursor:
        return _Cursor(self)

    # ---------------------------------------------------------------- schema maintenance

    def validate(self) -> list[str]:
        return self.health()["problems"]

    def health(self) -> dict[str, Any]:
        with self._connection() as con:
            version = pg_schema.current_version(con)
            structural: list[str] = []
            if version != pg_schema.LATEST:
                structural.append(f"schema version is {version}, expected {pg_schema.LATEST}")
            counts: dict[str, int] = {}
            for table, cols in TABLES.items():
                have = set(pg_schema.columns(con, table))
                if not have:
                    structural.append(f"missing table {table}")
                    continue
                structural.extend(f"missing column {table}.{c}" for c, _ in cols if c not in have)
                counts[table] = int(con.execute(f"SELECT count(*) FROM {S}.{table}").fetchone()[0])
            for view in pg_schema.VIEWS:
                if con.execute("SELECT to_regclass(%s)", [f"{S}.{view}"]).fetchone()[0] is None:
                    structural.append(f"missing view {view}")
            problems = structural or _data_problems(con)
        status = "unhealthy" if structural else ("degraded" if problems else "healthy")
        return {"status": status, "version": version, "expected_version": pg_schema.LATEST, "row_counts": counts,
                "problems": problems, "path": self.path, "snapshot_age_s": None, "backend": "postgresql"}

    def repair(self) -> list[str]:
        """Restore missing tables, columns, indexes and views (never drops or rewrites rows)."""
        before = set(self.health()["problems"])
        with self._connection() as con:
            applied = pg_schema.migrate(con)
            with con.transaction():
                pg_schema.restore(con)
        after = set(self.health()["problems"])
        return [f"applied migration {v}" for v in applied] + [f"restored: {p}" for p in sorted(before - after)]

    # ---------------------------------------------------------------- works and jobs

    def plan(self, works: Iterable[WorkRecord], *, now: float | None = None) -> tuple[int, int]:
        """Upsert works and one PLANNED job per distinct candidate URL, in bulk; (new works, new jobs)."""
        now = time.time() if now is None else now
        planned = plan_columns(works, self.settings)
        if planned is None:
            return 0, 0
        cols, jobs = planned.works, planned.jobs
        raw = [text.replace("\\u0000", "") for text in cols["raw"]]  # PostgreSQL JSON cannot hold NUL characters

        def body(con: Any) -> tuple[int, int]:
            rows = con.execute(
                f"""INSERT INTO {S}.works AS w (work_id, doi, title, publication_year, candidates, origin, raw,
                        first_seen, last_seen)
                    SELECT v.id, v.doi, v.title, v.y, v.c::jsonb, v.o, v.r::jsonb, %s, %s
                    FROM unnest(%s::text[], %s::text[], %s::text[], %s::int4[], %s::text[], %s::text[], %s::text[])
                         AS v(id, doi, title, y, c, o, r)
                    ON CONFLICT (work_id) DO UPDATE SET doi = excluded.doi, title = excluded.title,
                        publication_year = excluded.publication_year, candidates = excluded.candidates,
                        origin = excluded.origin, raw = excluded.raw, last_seen = excluded.last_seen
                    RETURNING (xmax = 0)""",
                [now, now, cols["work_id"], cols["doi"], cols["title"], cols["publication_year"], cols["candidates"],
                 cols["origin"], raw],
            ).fetchall()
            new_works = sum(1 for r in rows if r[0])
            new_jobs = 0
            if jobs["job_id"]:
                new_jobs = len(con.execute(
                    f"""INSERT INTO {S}.artifact_jobs (job_id, idempotency_key, work_id, artifact, url, host,
                            candidate_rank, candidate_source, state, created_at, updated_at)
                        SELECT v.id, v.id, v.w, 'pdf', v.u, v.h, v.r, v.s, 'PLANNED', %s, %s
                        FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::int4[], %s::text[])
                             AS v(id, w, u, h, r, s)
                        ON CONFLICT DO NOTHING RETURNING job_id""",
                    [now, now, jobs["job_id"], jobs["work_id"], jobs["url"], jobs["host"], jobs["candidate_rank"],
                     jobs["candidate_source"]],
                ).fetchall())
            return new_works, new_jobs

        return self._tx(body)

    def add_input_problems(self, problems: Sequence[InputProblem], *, now: float | None = None) -> int:
        if not problems:
            return 0
        now = time.time() if now is None else now

        def body(con: Any) -> None:
            con.execute(
                f"""INSERT INTO {S}.input_problems
                    SELECT n.o, n.l, n.w, n.r, n.d, %s
                    FROM unnest(%s::text[], %s::int4[], %s::text[], %s::text[], %s::text[]) AS n(o, l, w, r, d)
                    WHERE NOT EXISTS (SELECT 1 FROM {S}.input_problems p
                        WHERE p.origin IS NOT DISTINCT FROM n.o AND p.line IS NOT DISTINCT FROM n.l
                          AND p.work_id IS NOT DISTINCT FROM n.w AND p.reason = n.r
                          AND p.detail IS NOT DISTINCT FROM n.d)""",
                [now, [p.origin for p in problems], [p.line for p in problems], [p.work_id for p in problems],
                 [p.reason for p in problems], [p.detail for p in problems]],
            )

        self._tx(body)
        return len(problems)

    def job(self, job_id: str) -> Job | None:
        with self._connection() as con:
            row = con.execute(f"{_JOB_SELECT} WHERE job_id = %s", [job_id]).fetchone()
        return Job(*row) if row else None

    def jobs_for_work(self, work_id: str) -> list[Job]:
        return self.jobs_for_works([work_id])[work_id]

    def jobs_for_works(self, work_ids: Sequence[str]) -> dict[str, list[Job]]:
        out: dict[str, list[Job]] = {w: [] for w in work_ids}
        if not work_ids:
            return out
        with self._connection() as con:
            rows = con.execute(f"{_JOB_SELECT} WHERE work_id = ANY(%s) ORDER BY work_id, candidate_rank, job_id",
                               [list(work_ids)]).fetchall()
        for r in rows:
            out[r[2]].append(Job(*r))
        return out

    def complete_work_ids(self, work_ids: Sequence[str]) -> set[str]:
        if not work_ids:
            return set()
        with self._connection() as con:
            rows = con.execute(f"SELECT DISTINCT work_id FROM {S}.artifact_jobs WHERE work_id = ANY(%s) "
                               f"AND state IN {COMPLETE_SQL}", [list(work_ids)]).fetchall()
        return {r[0] for r in rows}

    # ---------------------------------------------------------------- the lease write path (interface.py)

    def lease(self, job_id: str, owner: str, *, ttl_s: float | None = None, run_id: str | None = None,
              now: float | None = None, other_jobs: Sequence[str] | None = None,
              work_id: str | None = None) -> Lease | None:
        ttl = self.settings.ledger.lease_ttl_s if ttl_s is None else ttl_s
        request = LeaseRequest(job_id, owner, run_id, ttl, None if other_jobs is None else tuple(other_jobs),
                               work_id)
        grant = self.commits.acquire(request) if now is None else self.acquire([request], now=now)[0]
        return None if grant is None else Lease(self.commits, grant, ttl_s=ttl)

    def acquire(self, requests: Sequence[LeaseRequest], *, now: float) -> list[LeaseGrant | None]:
        """Claim: lock the requested rows (skipping rows another transaction holds), check each on the
        locked row, grant with one update (token and attempts bumped)."""
        max_attempts = self.settings.ledger.max_attempts

        from psycopg.errors import LockNotAvailable

        def body(con: Any) -> list[LeaseGrant | None]:
            ids = sorted(set(r.job_id for r in requests))
            rows = con.execute(f"{_LITE_SELECT} WHERE job_id = ANY(%s) ORDER BY job_id FOR UPDATE SKIP LOCKED",
                               [ids]).fetchall()
            jobs = {str(r[0]): _lite(r) for r in rows}
            skipped = [i for i in ids if i not in jobs]
            if skipped:
                # Rows another transaction holds right now (a claim or a commit of a few ms): wait
                # briefly for its outcome instead of answering from a state it is about to change.
                con.execute("SET LOCAL lock_timeout = '2s'")
                # A savepoint: a timeout leaves the rest of the claim intact (those rows answer None).
                with contextlib.suppress(LockNotAvailable), con.transaction():
                    rows = con.execute(f"{_LITE_SELECT} WHERE job_id = ANY(%s) ORDER BY job_id FOR UPDATE",
                                       [skipped]).fetchall()
                    jobs.update((str(r[0]), _lite(r)) for r in rows)
            siblings: dict[str, list[str]] = {}
            if jobs:
                for wid, jid in con.execute(f"SELECT work_id, job_id FROM {S}.artifact_jobs WHERE work_id = ANY(%s)",
                                            [sorted({j.work_id for j in jobs.values()})]).fetchall():
                    siblings.setdefault(str(wid), []).append(str(jid))
            grants: list[LeaseGrant | None] = []
            granted: list[LeaseRequest] = []
            exhausted: list[Job] = []
            for req in requests:
                job = jobs.get(req.job_id)
                if job is None or any(g.job_id == req.job_id for g in granted):
                    grants.append(None)  # unknown, locked by another claim right now, or asked twice
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
                        if job not in exhausted:
                            exhausted.append(job)
                        grants.append(None)
                        continue
                elif state != State.PLANNED:
                    grants.append(None)
                    continue
                check_transition(req.job_id, job.state, State.LEASED)
                granted.append(req)
                others = tuple(j for j in siblings.get(job.work_id, []) if j != req.job_id)
                grants.append(LeaseGrant(req.job_id, job.work_id, req.owner, job.fencing_token + 1, job.attempts + 1,
                                         job.reopened_at, req.run_id or job.run_id, others))
            for job in exhausted:
                why = f"lease expired on attempt {job.attempts} (state {job.state})"
                self._set_failed(con, job, Reason.RETRIES_EXHAUSTED.value, why, now, permanent=True)
            if granted:
                con.execute(
                    f"""UPDATE {S}.artifact_jobs AS j SET state = 'LEASED', lease_owner = v.owner,
                           lease_expires_at = v.expires, fencing_token = j.fencing_token + 1,
                           attempts = j.attempts + 1, updated_at = %s, run_id = coalesce(v.run_id, j.run_id)
                        FROM unnest(%s::text[], %s::text[], %s::float8[], %s::text[])
                             AS v(job_id, owner, expires, run_id)
                        WHERE j.job_id = v.job_id""",
                    [now, [r.job_id for r in granted], [r.owner for r in granted], [now + r.ttl_s for r in granted],
                     [r.run_id for r in granted]],
                )
            return grants

        return self._tx(body)

    def commit(self, writes: Sequence[LeaseWrite], *, now: float) -> list[Exception | None]:
        """Apply many holders' fenced writes in one transaction; refused ones change nothing."""
        root = self.settings.store_dir
        writes = [replace(w, values={**w.values, "path": store_relative(w.values["path"], root)})
                  if w.completion is not None and w.values.get("path") else w for w in writes]

        def body(con: Any) -> list[Exception | None]:
            def held_jobs(job_ids: list[str]) -> dict[str, Job]:
                rows = con.execute(f"{_LITE_SELECT} WHERE job_id = ANY(%s)", [job_ids]).fetchall()
                return {str(r[0]): _lite(r) for r in rows}

            errors, ok = apply_guarded_writes(
                writes, lambda group, cols, bump: _guarded_update_many(con, group, cols, bump), held_jobs)
            if ok:
                _record_effects(con, ok)
                _record_attempts(con, [(w.job_id, w.run_id, a) for w in ok for a in w.attempts])
                _record_completions(con, [w for w in ok if w.completion is not None], now, root)
            return errors

        return self._tx(body)

    # ---------------------------------------------------------------- maintenance state writes

    def _set_state(self, con: Any, job: Job, to: State, now: float, values: dict[str, Any], *,
                   bump: bool = False) -> None:
        check_transition(job.job_id, job.state, to)
        cols = {"state": to.value, "updated_at": now, **values}
        sets = ", ".join(f"{k} = %s" for k in cols)
        if bump:
            sets += ", fencing_token = fencing_token + 1"
        con.execute(f"UPDATE {S}.artifact_jobs SET {sets} WHERE job_id = %s", [*cols.values(), job.job_id])
        job.state = to.value

    def _set_failed(self, con: Any, job: Job, reason: str, detail: str | None, now: float, *,
                    permanent: bool = False) -> str:
        klass, values = failure_values(self.settings.ledger, job.attempts, reason, detail, now, permanent=permanent)
        self._set_state(con, job, State.FAILED, now, values, bump=True)
        return klass

    def requeue(self, job_id: str, *, reason: str, detail: str = "", now: float | None = None) -> bool:
        now = time.time() if now is None else now

        def body(con: Any) -> bool:
            row = con.execute(f"{_LITE_SELECT} WHERE job_id = %s FOR UPDATE", [job_id]).fetchone()
            job = _lite(row) if row else None
            if job is None or State(job.state) in IN_FLIGHT - {State.FINALIZED} or job.state == State.PLANNED:
                return False
            if job.state in COMPLETE and job.sha256:
                con.execute(f"UPDATE {S}.blobs SET ref_count = greatest(ref_count - 1, 0) WHERE sha256 = %s",
                            [job.sha256])
            self._set_state(con, job, State.PLANNED, now,
                            {"last_reason": reason, "last_error": detail or None, "failure_class": None,
                             "next_eligible_at": None, "lease_owner": None, "lease_expires_at": None,
                             "finished_at": None, "attempts": 0, "reopened_at": now}, bump=True)
            con.execute(f"UPDATE {S}.artifact_jobs SET state = 'PLANNED', updated_at = %s WHERE work_id = %s "
                        "AND state = 'SKIPPED_DUPLICATE'", [now, job.work_id])
            return True

        return bool(self._tx(body))

    def expire_leases(self, *, now: float | None = None, include_live: bool = False) -> int:
        """In-flight jobs whose lease expired → PLANNED (or FAILED past the attempt limit), token bumped.
        `include_live` is refused here: other processes' live leases are theirs."""
        now = time.time() if now is None else now
        if include_live:
            raise ValueError("the PostgreSQL ledger has many writers: live leases are never voided on open")
        return self._expire_in_flight("lease_expires_at IS NULL OR lease_expires_at <= %s", [now], now,
                                      "lease expired")

    def release_leases(self, *, owner: str | None = None, run_id: str | None = None,
                       now: float | None = None) -> int:
        if owner is None and run_id is None:
            raise ValueError("release_leases needs an owner or a run_id")
        now = time.time() if now is None else now
        return self._expire_in_flight("lease_owner = %s OR run_id = %s", [owner, run_id], now, "lease released")

    def _expire_in_flight(self, where: str, params: list[Any], now: float, why: str) -> int:
        def body(con: Any) -> int:
            rows = con.execute(
                f"{_LITE_SELECT} WHERE state IN {IN_FLIGHT_SQL} AND ({where}) ORDER BY job_id "
                "FOR UPDATE SKIP LOCKED", params).fetchall()
            for r in rows:
                job = _lite(r)
                if job.attempts >= self.settings.ledger.max_attempts:
                    self._set_failed(con, job, Reason.RETRIES_EXHAUSTED.value, f"{why} in {job.state}", now,
                                     permanent=True)
                else:
                    self._set_state(con, job, State.PLANNED, now,
                                    {"lease_owner": None, "lease_expires_at": None,
                                     "last_reason": Reason.LEASE_LOST.value,
                                     "last_error": f"{why} in {job.state} (owner {job.lease_owner})"}, bump=True)
            return len(rows)

        return int(self._tx(body))

    def abandon_ops(self, *, now: float | None = None) -> int:
        now = time.time() if now is None else now

        def body(con: Any) -> int:
            rows = con.execute(
                f"""UPDATE {S}.artifact_ops o SET result_code = 'ABANDONED'
                    FROM {S}.artifact_jobs j
                    WHERE j.job_id = o.job_id AND o.finished_at IS NULL
                      AND coalesce(o.result_code, '') <> 'ABANDONED'
                      AND (j.fencing_token <> o.fencing_token OR j.lease_owner IS DISTINCT FROM o.owner
                           OR j.lease_expires_at IS NULL OR j.lease_expires_at <= %s)
                    RETURNING o.op_key""", [now]).fetchall()
            return len(rows)

        return int(self._tx(body))

    # ---------------------------------------------------------------- attempts, runs, blobs

    def record_attempts(self, job_id: str, run_id: str | None, attempts: Sequence[HttpAttempt]) -> None:
        if attempts:
            self._tx(lambda con: _record_attempts(con, [(job_id, run_id, a) for a in attempts]))

    def start_run(self, run_id: str, *, kind: str, owner: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self._tx(lambda con: con.execute(
            f"INSERT INTO {S}.runs VALUES (%s, %s, %s, %s, %s, %s, NULL, '{{}}') ON CONFLICT (run_id) DO NOTHING",
            [run_id, kind, owner, socket.gethostname(), os.getpid(), now]))

    def finish_run(self, run_id: str, counts: dict[str, Any], *, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self._tx(lambda con: con.execute(f"UPDATE {S}.runs SET finished_at = %s, counts = %s::jsonb WHERE run_id = %s",
                                         [now, json.dumps(counts), run_id]))

    def mark_revalidated(self, job_ids: Sequence[str], *, now: float | None = None) -> None:
        if not job_ids:
            return
        now = time.time() if now is None else now
        self._tx(lambda con: con.execute(
            f"UPDATE {S}.blobs SET verified_at = %s WHERE sha256 IN "
            f"(SELECT sha256 FROM {S}.artifact_jobs WHERE job_id = ANY(%s))", [now, list(job_ids)]))

    def upsert_blob(self, sha256: str, path: str, size: int, *, ref_count: int = 0,
                    now: float | None = None) -> bool:
        now = time.time() if now is None else now

        def body(con: Any) -> bool:
            row = con.execute(
                f"INSERT INTO {S}.blobs VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING sha256",
                [sha256, store_relative(path, self.settings.store_dir), size, ref_count, now, now]).fetchone()
            return row is not None

        return bool(self._tx(body))


# ---- helpers ---------------------------------------------------------------------------------


def _configure(con: Any) -> None:
    """Pool connections: JSON columns are returned as text (as DuckDB does); ledger tables first on
    the search path (ad-hoc queries name them bare)."""
    from psycopg.types.string import TextLoader

    con.adapters.register_loader("jsonb", TextLoader)
    con.adapters.register_loader("json", TextLoader)
    con.execute(f"SET search_path TO {S}, public")


def _data_problems(con: Any) -> list[str]:
    checks = views.data_checks(f"{S}.")
    problems = []
    for sql, label in checks:
        n = int(con.execute(sql).fetchone()[0])
        if n:
            problems.append(f"{n} {label}")
    return problems


def _guarded_update_many(con: Any, writes: Sequence[LeaseWrite], cols: tuple[str, ...], bump: bool) -> set[str]:
    params: list[Any] = [[w.job_id for w in writes], [w.token for w in writes], [w.owner for w in writes],
                         [w.from_state.value for w in writes], [w.to_state.value for w in writes]]
    arrays = ["%s::text[]", "%s::int8[]", "%s::text[]", "%s::text[]", "%s::text[]"]
    names = ["job_id", "token", "owner", "from_state", "to_state"]
    sets = ["state = v.to_state"]
    for n, col in enumerate(cols):
        kind = _JOB_TYPES[col]
        params.append([w.values[col] for w in writes])
        arrays.append(f"%s::{_PG_ARRAY.get(kind, 'text')}[]")
        names.append(f"c{n}")
        sets.append(f"{col} = v.c{n}" + ("::jsonb" if kind == "JSON" else ""))
    if bump:
        sets.append("fencing_token = j.fencing_token + 1")
    rows = con.execute(
        f"UPDATE {S}.artifact_jobs AS j SET {', '.join(sets)} "
        f"FROM unnest({', '.join(arrays)}) AS v({', '.join(names)}) "
        "WHERE j.job_id = v.job_id AND j.fencing_token = v.token AND j.lease_owner = v.owner "
        "AND j.state = v.from_state RETURNING j.job_id",
        params,
    ).fetchall()
    return {str(r[0]) for r in rows}


def _record_effects(con: Any, writes: Sequence[LeaseWrite]) -> None:
    recs = [(w, e) for w in writes for e in w.effects]
    if not recs:
        return
    con.execute(
        f"""INSERT INTO {S}.artifact_ops AS o (op_key, job_id, op_type, effect_key, started_at, finished_at, owner,
               fencing_token, runs, result_code, result_json)
            SELECT v.k, v.j, v.t, v.e, v.s, v.f, v.o, v.tok, 1, 'OK', v.r::jsonb
            FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::float8[], %s::float8[], %s::text[],
                        %s::int8[], %s::text[]) AS v(k, j, t, e, s, f, o, tok, r)
            ON CONFLICT (op_key) DO UPDATE SET started_at = excluded.started_at, finished_at = excluded.finished_at,
                owner = excluded.owner, fencing_token = excluded.fencing_token, runs = o.runs + 1,
                result_code = 'OK', result_json = excluded.result_json""",
        [[e.op_key for _, e in recs], [w.job_id for w, _ in recs], [e.op_type for _, e in recs],
         [e.key for _, e in recs], [e.started_at for _, e in recs], [e.finished_at for _, e in recs],
         [w.owner for w, _ in recs], [w.token for w, _ in recs], [e.result_json for _, e in recs]],
    )


def _record_attempts(con: Any, rows: Sequence[tuple[str, str | None, HttpAttempt]]) -> None:
    if not rows:
        return
    con.execute(
        f"""INSERT INTO {S}.http_attempts (job_id, run_id, method, url, host, status, bytes, elapsed_s, error,
               started_at)
            SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::int4[], %s::int8[],
                                 %s::float8[], %s::text[], %s::float8[])""",
        [[j for j, _, _ in rows], [r for _, r, _ in rows], [a.method for _, _, a in rows], [a.url for _, _, a in rows],
         [a.host for _, _, a in rows], [a.status for _, _, a in rows], [a.bytes for _, _, a in rows],
         [a.elapsed_s for _, _, a in rows], [a.error for _, _, a in rows], [a.started_at for _, _, a in rows]],
    )


def _record_completions(con: Any, writes: Sequence[LeaseWrite], now: float, root: Any) -> None:
    if not writes:
        return
    blobs: dict[str, list[Any]] = {}
    for w in writes:
        r = w.completion
        assert r is not None and r.sha256 is not None
        entry = blobs.setdefault(r.sha256, [store_relative(r.blob_path or r.path, root), r.bytes, 0])
        entry[2] += 1
    shas = sorted(blobs)
    con.execute(
        f"""INSERT INTO {S}.blobs AS b SELECT v.s, v.p, v.n, v.c, %s, %s
            FROM unnest(%s::text[], %s::text[], %s::int8[], %s::int4[]) AS v(s, p, n, c)
            ON CONFLICT (sha256) DO UPDATE SET ref_count = b.ref_count + excluded.ref_count,
                verified_at = excluded.verified_at""",
        [now, now, shas, [blobs[s][0] for s in shas], [blobs[s][1] for s in shas], [blobs[s][2] for s in shas]],
    )
    results = [w.completion for w in writes if w.completion is not None]
    con.execute(
        f"""INSERT INTO {S}.work_versions SELECT v.w, v.u, v.s, v.e, v.m, v.b, %s
            FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::int8[])
                 AS v(w, u, s, e, m, b)""",
        [now, [w.work_id for w in writes], [r.final_url or r.url for r in results], [r.sha256 for r in results],
         [r.etag for r in results], [r.last_modified for r in results], [r.bytes for r in results]],
    )
    others = sorted({j for w in writes for j in w.other_jobs})
    if others:
        con.execute(
            f"""UPDATE {S}.artifact_jobs SET state = 'SKIPPED_DUPLICATE', updated_at = %s, next_eligible_at = NULL
                WHERE job_id = ANY(%s) AND (state = 'PLANNED' OR (state = 'FAILED' AND failure_class = 'transient'))""",
            [now, others],
        )
