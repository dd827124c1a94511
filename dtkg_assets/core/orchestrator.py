"""Pure-core orchestrator: drives works through the streaming engine with the ledger.

Per work: candidates in rank order; per candidate: lease → engine.fetch (HEAD → resume decision →
stream → finalize → link, reported through `LedgerHooks`) → FINALIZED → INDEXED, or DEDUPED.
A permanent failure moves on to the next candidate; a transient one is recorded (FAILED transient
with backoff) and the next candidate is tried too. Works the ledger marks complete are skipped
without any network. `on_done` is called from worker threads as each work finishes.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import httpx

from dtkg_assets.core import deadline
from dtkg_assets.core.crashpoints import crash_point
from dtkg_assets.core.errors import WEAK_REASONS, Reason
from dtkg_assets.core.landing import make_resolver
from dtkg_assets.core.ledger import IN_FLIGHT, Job, LeaseLost, Ledger, State
from dtkg_assets.core.ledger.db import Lease
from dtkg_assets.core.settings import Settings
from dtkg_assets.core.store import Store, resolve_store_path
from dtkg_assets.core.streaming import Engine
from dtkg_assets.core.types import EffectType, FetchHooks, FetchResult, Stage, WorkRecord

OutcomeStatus = Literal["downloaded", "deduped", "skipped_complete", "failed", "deferred"]



class EngineLike(Protocol):
    store: Store

    def fetch(
        self, url: str, *, work_id: str | None = ..., hooks: FetchHooks | None = ...,
        known_sha256: str | None = ..., refresh: bool = ...,
    ) -> FetchResult: ...


@dataclass
class PlanSummary:
    works: int = 0
    new_works: int = 0
    new_jobs: int = 0
    without_candidates: list[str] = field(default_factory=list)


@dataclass
class WorkOutcome:
    work_id: str
    status: OutcomeStatus
    reason: str
    result: FetchResult | None = None
    sha256: str | None = None
    path: str | None = None
    bytes: int = 0
    job_id: str | None = None
    detail: str | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("downloaded", "deduped", "skipped_complete")


class LedgerHooks:
    """FetchHooks backed by a ledger `Lease`: stages are queued fenced state writes, progress renews the
    lease, effects (all idempotent on disk) run and are recorded with the completion, and each HTTP
    exchange holds one of the run's download slots (`network`).

    Per artifact that is two ledger round trips, each batched with the other worker threads': the
    lease, and the completion (job row, effect records, blob, attempts, skipped candidates). A stream
    longer than a third of the lease TTL also commits a renewal (with the queued stages).
    """

    def __init__(self, lease: Lease, ttl_s: float, slots: threading.BoundedSemaphore) -> None:
        self.lease = lease
        self.renew_every_s = max(1.0, ttl_s / 3)
        self._last_renew = time.monotonic()
        self._slots = slots

    @contextlib.contextmanager
    def network(self) -> Iterator[None]:
        """One of the run's `workers` download slots, for one HTTP exchange: validating, finalizing,
        linking, the ledger and the waits between retries happen outside it, so the slots stay on
        the network (the finalize and link of each artifact had held one for ~8 ms of its ~228)."""
        with self._slots:
            # The lease may have waited for this slot while other downloads ran: renew it if little
            # of it is left (no round trip otherwise) before anything goes out on the network.
            self.lease.ensure_live(self.renew_every_s)
            yield

    def stage(self, stage: Stage, info: dict[str, Any]) -> None:
        target = State(stage)
        if target == self.lease.target:
            return  # the engine re-enters STREAMING on each retry attempt: one state write is enough
        fields: dict[str, Any] = {}
        if stage == "HEAD_DONE" and info.get("validators"):
            v = info["validators"]
            fields = {"etag": v.get("etag"), "last_modified": v.get("last_modified"), "http_status": v.get("status")}
        elif stage == "RESUME_OK":
            fields = {"decision": info.get("decision"), "resumed_from": info.get("offset")}
        self.lease.stage(target, fields)

    def progress(self, bytes_on_disk: int) -> None:
        if time.monotonic() - self._last_renew >= self.renew_every_s:
            self.lease.renew()
            self._last_renew = time.monotonic()

    def check_fence(self) -> None:
        # Right before finalize: a holder whose lease may have run out (a stalled stream) must not put
        # files in place for a job another worker may now hold. Within the lease, nobody else can
        # hold it, so this costs no ledger round trip (see `Lease.ensure_live`).
        self.lease.ensure_live(self.renew_every_s)

    def effect(self, effect_type: EffectType, key: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        return self.lease.record_effect(effect_type, key, fn)


class Orchestrator:
    def __init__(
        self, ledger: Ledger, engine: EngineLike, settings: Settings, owner: str, run_id: str | None = None
    ) -> None:
        self.ledger = ledger
        self.engine = engine
        self.store = engine.store
        self.settings = settings
        self.owner = owner
        self.run_id = run_id
        self._refresh = False
        self._jobs: dict[str, list[Job]] = {}
        # Candidates by kind: PDF URLs (their HTML answers read as landing pages), landing pages, the
        # DOI, the OpenAlex content API (core.landing).
        self.resolver = make_resolver(engine, settings, ledger)
        # At most `workers` HTTP exchanges at once (sized by each `process` call; `LedgerHooks.network`);
        # the threads beyond them wait on the ledger or work on disk meanwhile.
        self._download_slots = threading.BoundedSemaphore(max(1, settings.run.workers))

    # ---------------------------------------------------------------- planning

    def plan(self, works: Iterable[WorkRecord]) -> PlanSummary:
        records = list(works)
        new_works, new_jobs = self.ledger.plan(records)
        return PlanSummary(
            works=len({w.work_id for w in records}),
            new_works=new_works,
            new_jobs=new_jobs,
            without_candidates=[w.work_id for w in records if not w.candidates],
        )

    # ---------------------------------------------------------------- processing

    def process(
        self,
        work_ids: Sequence[str],
        *,
        workers: int = 8,
        on_done: Callable[[WorkOutcome], None] | None = None,
        refresh: bool = False,
    ) -> list[WorkOutcome]:
        """Process works concurrently, at most `workers` downloads at once; returns outcomes in input
        order and publishes the snapshot.

        `refresh` re-downloads even where the work's file exists (a revalidated, changed object).
        Workers watch SIGINT/SIGTERM themselves (`deadline.stop_requested`): inside this call a signal
        handler only asks them to stop, so the run is recorded and the outcomes returned."""
        with deadline.stoppable():
            return self._process(work_ids, workers=workers, on_done=on_done, refresh=refresh)

    def _process(
        self,
        work_ids: Sequence[str],
        *,
        workers: int,
        on_done: Callable[[WorkOutcome], None] | None,
        refresh: bool,
    ) -> list[WorkOutcome]:
        self._refresh = refresh
        run_id = self.run_id or f"run-{uuid.uuid4().hex[:12]}"
        self.run_id = run_id
        t0 = time.time()
        self.ledger.start_run(run_id, kind="process", owner=self.owner, now=t0)
        ids = list(dict.fromkeys(work_ids))
        # Every work's jobs in one query: nothing below reads the ledger per work on the happy path.
        self._jobs = self.ledger.jobs_for_works(ids)
        complete = {w for w, jobs in self._jobs.items() if any(j.complete for j in jobs)}
        outcomes: dict[str, WorkOutcome] = {}
        lock = threading.Lock()

        def finish(outcome: WorkOutcome) -> WorkOutcome:
            with lock:
                outcomes[outcome.work_id] = outcome
            if on_done is not None:
                on_done(outcome)
            return outcome

        for wid in ids:
            if wid in complete:
                finish(self._skipped(wid))
        todo = [wid for wid in ids if wid not in complete]
        if self.settings.ledger_is_postgres:
            # Other workers may be given the same works (one PostgreSQL ledger): walk them in an order
            # of our own so that concurrent workers rarely reach for the same work at the same time.
            random.Random(f"{self.owner}:{run_id}").shuffle(todo)
        if todo:
            workers = max(1, workers)
            self._download_slots = threading.BoundedSemaphore(workers)
            threads = min(len(todo), workers + bookkeeping_threads(workers))
            # Ledger rounds gather up to `round_items` requests, fewer as the works run out (a round
            # never waits for a request that no unfinished work can make).
            commits, round_items, unfinished = self.ledger.commits, commit_round_items(workers), len(todo)
            commits.gather(min(round_items, unfinished), COMMIT_LINGER_S)

            def run_one(work_id: str) -> WorkOutcome:
                nonlocal unfinished
                try:
                    return finish(self.process_one(work_id))
                finally:
                    with lock:
                        unfinished -= 1
                        if unfinished < round_items:
                            commits.gather(unfinished, COMMIT_LINGER_S)

            with contextlib.ExitStack() as stack:
                stack.callback(commits.gather, 0, 0.0)
                pool = stack.enter_context(ThreadPoolExecutor(max_workers=threads, thread_name_prefix="dtkg-work"))
                try:
                    for _ in pool.map(run_one, todo):
                        pass
                except Exception:
                    # A bug on a worker's path (e.g. in `on_done`), not an interrupt: the works not
                    # started stay as they are (no lease taken) and the error propagates, so the run
                    # fails with its stack trace instead of reporting its works interrupted.
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
                except BaseException:  # noqa: BLE001 - an interrupt raised in this waiting thread
                    # Dagster turns SIGINT/SIGTERM into an exception here (the workers would run on
                    # while the pool waits for them): stop them instead, and return what happened
                    # to each work, interrupted ones included, like a stop request does.
                    deadline.request_stop(deadline.INTERRUPT)
            for wid in todo:  # the interrupted map cancels works it had not started
                if wid not in outcomes:
                    finish(WorkOutcome(wid, "deferred", Reason.INTERRUPTED.value, detail="not started"))
        counts: dict[str, Any] = {}
        for o in outcomes.values():
            counts[o.status] = counts.get(o.status, 0) + 1
        counts["bytes"] = sum(o.bytes for o in outcomes.values() if o.status == "downloaded")
        counts["works"] = len(ids)
        self.ledger.finish_run(run_id, counts)
        self.ledger.publish_snapshot()  # throttled; close publishes the rest
        return [outcomes[w] for w in ids]

    def _skipped(self, work_id: str) -> WorkOutcome:
        done = [j for j in self._work_jobs(work_id) if j.complete]
        j = done[0] if done else None
        return WorkOutcome(
            work_id, "skipped_complete", "ok", None, j.sha256 if j else None,
            str(resolve_store_path(j.path, self.store.root)) if j and j.path else None,
            int(j.bytes or 0) if j else 0, j.job_id if j else None,
        )

    def _work_jobs(self, work_id: str) -> list[Job]:
        jobs = self._jobs.get(work_id)
        return self.ledger.jobs_for_work(work_id) if jobs is None else jobs

    def process_one(self, work_id: str) -> WorkOutcome:
        if deadline.stop_requested():
            # SIGINT/SIGTERM: works not started yet stay as they are (no lease taken).
            return WorkOutcome(work_id, "deferred", Reason.INTERRUPTED.value, detail="not started")
        jobs = self._work_jobs(work_id)
        if not jobs:
            return WorkOutcome(work_id, "failed", Reason.NO_CANDIDATES.value, detail="the work has no candidate URL")
        if any(j.complete for j in jobs):
            return self._skipped(work_id)
        failures: list[WorkOutcome] = []
        deferred: WorkOutcome | None = None
        for job in jobs:
            if job.state == State.SKIPPED_DUPLICATE:
                continue
            lease = self.ledger.lease(job.job_id, self.owner, run_id=self.run_id,
                                      other_jobs=[j.job_id for j in jobs], work_id=work_id)
            if lease is None:
                now_job = self.ledger.job(job.job_id) or job
                if State(now_job.state) in IN_FLIGHT:
                    # Another worker holds this work: leave it to them rather than race on other candidates.
                    return WorkOutcome(work_id, "deferred", "leased_elsewhere", job_id=job.job_id,
                                       detail=f"leased by {now_job.lease_owner}")
                if now_job.state == State.FAILED and now_job.failure_class == "transient":
                    deferred = deferred or WorkOutcome(
                        work_id, "deferred", now_job.last_reason or "backoff", job_id=job.job_id,
                        detail=f"retry after {format_when(now_job.next_eligible_at)}")
                elif now_job.state == State.FAILED:
                    failures.append(WorkOutcome(work_id, "failed", now_job.last_reason or "failed",
                                                job_id=job.job_id, detail=now_job.last_error))
                elif now_job.complete:
                    return self._skipped(work_id)
                continue
            outcome = self._run_job(job, lease)
            if outcome.ok or outcome.reason == Reason.LEASE_LOST.value:
                return outcome
            if outcome.status == "deferred":
                deferred = deferred or outcome
            else:
                failures.append(outcome)
        if deferred is not None:
            return deferred
        if failures:
            strong = [f for f in failures if f.reason not in WEAK_REASONS]
            return (strong or failures)[-1]
        return WorkOutcome(work_id, "failed", Reason.NO_CANDIDATES.value, detail="no candidate could be tried")

    def _run_job(self, job: Job, lease: Lease) -> WorkOutcome:
        hooks = LedgerHooks(lease, self.settings.ledger.lease_ttl_s, self._download_slots)
        try:
            result = self.resolver.fetch(
                job.url, source=job.candidate_source, work_id=job.work_id, hooks=hooks,
                known_sha256=job.sha256, refresh=self._refresh,
            )
        except LeaseLost as exc:
            return WorkOutcome(job.work_id, "deferred", Reason.LEASE_LOST.value, job_id=job.job_id, detail=str(exc))
        except Exception as exc:  # a bug or an unexpected OS error: give the job back, keep the batch going
            with contextlib.suppress(LeaseLost):
                lease.release()
            return WorkOutcome(job.work_id, "failed", "internal_error", job_id=job.job_id,
                               detail=f"{type(exc).__name__}: {exc}")
        try:
            if result.ok:
                final = lease.complete(result)
                crash_point("after_commit")
                status: OutcomeStatus = "downloaded" if final == State.INDEXED else "deduped"
                return WorkOutcome(job.work_id, status, "ok", result, result.sha256, result.path, result.bytes,
                                   job.job_id)
            if result.reason == Reason.LEASE_LOST.value:
                return WorkOutcome(job.work_id, "deferred", result.reason, result, job_id=job.job_id,
                                   detail=result.detail)
            if result.reason == Reason.INTERRUPTED.value:
                # Stopped, not failed: no attempt is held against the job; its part stays for resume.
                lease.release()
                return WorkOutcome(job.work_id, "deferred", result.reason, result, result.sha256, None,
                                   result.bytes, job.job_id, detail=result.detail)
            klass = lease.fail(reason=result.reason, detail=result.detail, result=result,
                               retry_after=result.retry_after)
        except LeaseLost as exc:
            return WorkOutcome(job.work_id, "deferred", Reason.LEASE_LOST.value, result, job_id=job.job_id,
                               detail=str(exc))
        reason = lease.last_reason or result.reason
        status = "deferred" if klass == "transient" else "failed"
        return WorkOutcome(job.work_id, status, reason, result, job_id=job.job_id, detail=result.detail)


# How long a ledger round waits for `commit_round_items` requests. A round costs the ledger about the
# same whatever it holds (DuckDB: 1-3 ms of CPU per statement however many rows, ~9 statements), so
# fuller rounds are the cheapest bookkeeping there is; the wait is spent outside the download slots,
# by the threads of `bookkeeping_threads`, so downloads keep going meanwhile.
COMMIT_LINGER_S = 0.4


def bookkeeping_threads(workers: int) -> int:
    """Threads beyond the `workers` downloads: each work's two ledger round trips (its lease before
    the download, its completion after) wait for a group commit, which gathers requests for up to
    `COMMIT_LINGER_S`; meanwhile these threads take the freed download slots, so `workers` downloads
    stay in flight instead of `workers` minus those waiting on the ledger. Three per download: a
    round rarely waits out its linger (it goes once it holds `commit_round_items`), so a work spends
    about one linger in rounds around a download that takes a slot for about 0.2 s at 200 ms per
    response; five per download measured the same wall, and a worker of a fleet then took leases on
    more works than it could soon download, leaving none to the others. One worker stays one thread:
    its works go one by one, in order."""
    return 3 * workers if workers > 1 else 0


def commit_round_items(workers: int) -> int:
    """Requests a ledger round gathers before it goes: as many as there are bookkeeping threads.
    Measured (`dtkg works download`, 2,000 PDFs, 16 workers, 200 ms per response): our CPU per artifact
    9.6 ms with rounds of ~10 requests gathered for 80 ms (12 extra threads), 7.2 ms with 24/120 ms,
    5.7 ms with 48/200 ms, 3.9-4.6 ms with 48/400 ms (5.0-5.2 with 48/200 on the same code; rounds of
    about 23 works, 46 requests), the same wall; with 4 workers the larger rounds were faster too."""
    return bookkeeping_threads(workers)


def make_orchestrator(
    ledger: Ledger, client: httpx.Client, settings: Settings, *, owner: str, run_id: str | None = None,
    store: Store | None = None,
) -> Orchestrator:
    """The one wiring of a download run: the streaming engine over the run's HTTP client and the
    store (the settings' own unless given), driven by the orchestrator with the ledger."""
    return Orchestrator(ledger, Engine(client, settings, store or Store(settings)), settings, owner=owner,
                        run_id=run_id)


def format_when(epoch: float | None, now: float | None = None) -> str:
    """An epoch time for people: ``2026-12-02 08:40:12 UTC (in 35 s)``."""
    if epoch is None:
        return "now"
    now = time.time() if now is None else now
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))
    delta = epoch - now
    if delta <= 0:
        return f"{stamp} (now)"
    if delta < 120:
        return f"{stamp} (in {delta:.0f} s)"
    if delta < 7200:
        return f"{stamp} (in {delta / 60:.0f} min)"
    return f"{stamp} (in {delta / 3600:.1f} h)"
