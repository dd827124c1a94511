"""The one write path for leased jobs: `Lease` (one holder's queued, fenced writes) and `GroupCommit`
(the writes of every worker thread committed together, in batches, through a `LedgerWriteBackend`).

See core/ledger/interface.py for what a backend guarantees and docs/ledger-concurrency.md for why
this keeps the exactly-once and fencing guarantees with two batched round trips per artifact.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dtkg_assets.core import crashpoints
from dtkg_assets.core.errors import TRANSIENT_REASONS, DtkgError, Reason
from dtkg_assets.core.ledger.interface import (
    EffectRecord,
    Job,
    LeaseGrant,
    LeaseRequest,
    LeaseWrite,
    LedgerWriteBackend,
    op_key_for,
)
from dtkg_assets.core.ledger.states import IllegalTransition, State, check_transition
from dtkg_assets.core.settings import LedgerSettings
from dtkg_assets.core.types import FetchResult


class LeaseLost(DtkgError):
    """This worker's lease was taken over (stale fencing token) or released: it must not commit."""

    def __init__(self, job_id: str, detail: str) -> None:
        super().__init__(Reason.LEASE_LOST, f"job {job_id}: {detail}")
        self.job_id = job_id


def stale(job_id: str, owner: str, token: int, held_token: int, held_owner: str | None, state: str) -> LeaseLost:
    return LeaseLost(
        job_id,
        f"fencing token {token} of {owner} is stale (job holds token {held_token}, owner {held_owner}, state {state})",
    )


def apply_guarded_writes(
    writes: Sequence[LeaseWrite],
    update_many: Callable[[list[LeaseWrite], tuple[str, ...], bool], set[str]],
    held_jobs: Callable[[list[str]], dict[str, Job]],
) -> tuple[list[Exception | None], list[LeaseWrite]]:
    """The set-based commit both backends share: writes with the same columns go in one guarded
    UPDATE (`update_many` returns the job ids it changed); a refused write gets its own error from the
    job as it is held (`held_jobs`), and changes nothing. Returns the errors and the accepted writes."""
    errors: list[Exception | None] = [None] * len(writes)
    accepted: list[int] = []
    pending = list(range(len(writes)))
    while pending:
        # One statement never carries two writes for one job (a stale and a current holder).
        seen: set[str] = set()
        this: list[int] = []
        later: list[int] = []
        for i in pending:
            (later if writes[i].job_id in seen else this).append(i)
            seen.add(writes[i].job_id)
        groups: dict[tuple[tuple[str, ...], bool], list[int]] = {}
        for i in this:
            groups.setdefault((tuple(sorted(writes[i].values)), writes[i].bump), []).append(i)
        for (cols, bump), idxs in groups.items():
            done = update_many([writes[i] for i in idxs], cols, bump)
            accepted.extend(i for i in idxs if writes[i].job_id in done)
        pending = later
    refused = sorted(set(range(len(writes))) - set(accepted))
    if refused:
        held = held_jobs([writes[i].job_id for i in refused])
        for i in refused:
            w, job = writes[i], held.get(writes[i].job_id)
            if job is None:
                errors[i] = KeyError(f"no job {w.job_id}")
            elif job.fencing_token != w.token or job.lease_owner != w.owner:
                errors[i] = stale(w.job_id, w.owner, w.token, job.fencing_token, job.lease_owner, job.state)
            else:
                errors[i] = IllegalTransition(w.job_id, job.state, w.to_state)
    return errors, [writes[i] for i in sorted(accepted)]


def reason_is_transient(reason: str) -> bool:
    return reason in {r.value for r in TRANSIENT_REASONS}


def failure_values(cfg: LedgerSettings, attempts: int, reason: str, detail: str | None, now: float, *,
                   permanent: bool = False, retry_after: float | None = None) -> tuple[str, dict[str, Any]]:
    """The class (transient/permanent) and the job columns of a failure on attempt `attempts`."""
    transient = reason_is_transient(reason) and not permanent
    if transient and attempts >= cfg.max_attempts:
        detail = f"{reason}: {detail or ''}".strip().rstrip(":")
        reason, transient = Reason.RETRIES_EXHAUSTED.value, False
    next_at = None
    if transient:
        backoff = min(cfg.retry_backoff_s * 2 ** max(0, attempts - 1), cfg.retry_backoff_max_s)
        # The server's Retry-After (or an open breaker's cooldown) wins over a shorter backoff,
        # capped like the backoff so a bogus header cannot park a job for years.
        asked = min(max(retry_after or 0.0, 0.0), cfg.retry_backoff_max_s)
        next_at = now + max(backoff, asked)
    klass = "transient" if transient else "permanent"
    return klass, {"failure_class": klass, "last_reason": reason, "last_error": detail,
                   "next_eligible_at": next_at, "lease_owner": None, "lease_expires_at": None,
                   "finished_at": None if transient else now}


def completion_values(result: FetchResult, now: float) -> tuple[State, dict[str, Any]]:
    """The final state of a successful result and every job column it sets (lease released)."""
    if not result.ok or not result.sha256:
        raise ValueError(f"complete() needs a successful result with a sha256, got {result.status}")
    final = State.INDEXED if result.status == "stored" else State.DEDUPED
    return final, {
        **served_host_column(result),
        "updated_at": now, "sha256": result.sha256, "path": result.path, "bytes": result.bytes,
        "final_url": result.final_url, "http_status": result.http_status, "decision": result.decision,
        "resumed_from": result.resumed_from, "elapsed_s": result.elapsed_s, "etag": result.etag,
        "last_modified": result.last_modified, "result": json.dumps(result.to_json()),
        "failure_class": None, "last_reason": "ok", "last_error": None, "next_eligible_at": None,
        "lease_owner": None, "lease_expires_at": None, "finished_at": now,
    }


def served_host_column(result: FetchResult) -> dict[str, Any]:
    """The job's `host` column when a redirect (the DOI resolver's, a handle's) sent it to another
    host: yield and failures by host name the host that served the page (nothing to write otherwise)."""
    return {"host": result.served_host} if result.served_host else {}


def completion_path(final: State) -> tuple[State, ...]:
    return (State.FINALIZED, State.INDEXED) if final == State.INDEXED else (State.DEDUPED,)


@dataclass
class CommitStats:
    """Batches the group commit sent to the backend, and the items in them."""

    acquire_batches: int = 0
    acquires: int = 0
    commit_batches: int = 0
    writes: int = 0
    wall_s: float = 0.0  # inside backend calls (one thread at a time)
    cpu_s: float = 0.0


class _Pending:
    __slots__ = ("done", "error", "item", "value")

    def __init__(self, item: Any) -> None:
        self.item = item
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class GroupCommit:
    """Group commit with a leader loop: a thread that needs a write durable queues it; if no thread is
    committing, it becomes the leader and sends everything queued to the backend (one `acquire` call
    for all lease requests, one `commit` call for all writes), again and again until the queue is
    empty, waking each caller through its own event. Each caller returns only after the transaction
    holding its item committed; a refused item raises in its own caller only.

    Followers wait on events, not on a lock handed from thread to thread: with 16 threads a lock
    handoff chain costs a GIL switch per thread, which made batches small and the ledger the pace.

    `gather(items, linger_s)`: a leader whose queue holds fewer than `items` waits up to `linger_s` for
    more before it sends them. A round costs the backend about the same whatever it holds (DuckDB:
    ~30 ms of CPU for a lease batch and a commit batch), so when callers arrive one by one, as they do
    once downloads no longer wait for the ledger (the orchestrator's download slots), rounds of two
    or three items made the ledger the largest CPU cost."""

    def __init__(self, backend: LedgerWriteBackend) -> None:
        self.backend = backend
        self.stats = CommitStats()
        self._qlock = threading.Lock()
        self._gathered = threading.Condition(self._qlock)  # a leader lingering for a fuller round
        self._gather_items = 0
        self._linger_s = 0.0
        self._leading = False
        self._leader_answered = False  # the leader's own request has been answered (it still leads)
        self._acquires: list[_Pending] = []
        self._writes: list[_Pending] = []

    def gather(self, items: int, linger_s: float) -> None:
        """From now on a leader whose queue holds fewer than `items` waits up to `linger_s` for more
        (0 items: rounds go as they come). The caller lowers `items` as its callers finish, so that no
        leader waits for items that cannot come."""
        with self._qlock:
            self._gather_items, self._linger_s = items, linger_s
            self._gathered.notify_all()

    def _queued(self) -> int:
        return len(self._acquires) + len(self._writes)

    def _round_ready(self) -> bool:
        """The queue holds a full round: `gather` items, less the leader's own once answered (its
        caller still counts it as unfinished, but it makes no request while it leads; waiting for it
        made the last round of every batch wait out the whole linger)."""
        return self._queued() >= self._gather_items - self._leader_answered

    def acquire(self, request: LeaseRequest) -> LeaseGrant | None:
        grant: LeaseGrant | None = self._submit("acquire", request)
        return grant

    def commit(self, write: LeaseWrite) -> None:
        self._submit("commit", write)

    def _submit(self, kind: str, item: Any) -> Any:
        pending = _Pending(item)
        with self._qlock:
            # The queue is chosen under the lock: the leader swaps in fresh lists, and an item put in
            # a list it has already taken would miss its batch (the leader's answers fall one short).
            (self._acquires if kind == "acquire" else self._writes).append(pending)
            lead = not self._leading
            self._leading = True
            if not lead and self._round_ready():
                self._gathered.notify()  # a lingering leader has its round
        if lead:
            self._lead()
        pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.value

    def _lead(self) -> None:
        acquires: list[_Pending] = []
        writes: list[_Pending] = []
        try:
            while True:
                with self._qlock:
                    # The leader's request was queued before it led, so it was in the first round.
                    self._leader_answered = bool(acquires or writes)
                    if self._queued() and not self._round_ready():
                        self._gathered.wait_for(self._round_ready, self._linger_s)
                    acquires, self._acquires = self._acquires, []
                    writes, self._writes = self._writes, []
                    if not acquires and not writes:
                        self._leading = self._leader_answered = False
                        return
                self._run(acquires, writes)
                for p in (*writes, *acquires):
                    p.done.set()
        except BaseException as exc:
            # Never leave a caller waiting: everything taken or queued hears the error.
            with self._qlock:
                queued = [*self._writes, *self._acquires]
                self._writes, self._acquires = [], []
                self._leading = self._leader_answered = False
            for p in (*writes, *acquires, *queued):
                if not p.done.is_set():
                    p.error = p.error or exc
                    p.done.set()
            raise

    def _run(self, acquires: list[_Pending], writes: list[_Pending]) -> None:
        w0, c0 = time.perf_counter(), time.thread_time()
        try:
            # Writes first: a release in this batch may free a job another thread asks for.
            if writes:
                self._call(writes, lambda items, now: self.backend.commit(items, now=now), errors=True)
                self.stats.commit_batches += 1
                self.stats.writes += len(writes)
            if acquires:
                self._call(acquires, lambda items, now: self.backend.acquire(items, now=now), errors=False)
                self.stats.acquire_batches += 1
                self.stats.acquires += len(acquires)
        finally:
            self.stats.wall_s += time.perf_counter() - w0
            self.stats.cpu_s += time.thread_time() - c0

    @staticmethod
    def _call(batch: list[_Pending], fn: Callable[[list[Any], float], list[Any]], *, errors: bool) -> None:
        try:
            answers = fn([p.item for p in batch], time.time())
        except BaseException as exc:  # the transaction failed as a whole: every caller hears it
            for p in batch:
                p.error = exc
            return
        for p, answer in zip(batch, answers, strict=True):
            if errors:
                p.error = answer
            else:
                p.value = answer


class Lease:
    """One holder's lease on one job: its fenced writes, queued until one must be durable.

    - `stage` (HEAD_DONE, RESUME_OK, STREAMING): checked against the transition table when queued;
      the job row moves with the next committed write (renewal, completion, failure, release). A crash
      before then leaves the job LEASED, from which recovery (expiry, release) is as legal as from any
      in-flight state.
    - `record_effect`: every effect the engine runs is idempotent on disk and found again after a
      crash (the content-addressed blob rename, the per-work link, the sidecar naming the finalized
      sha256): the effect runs, its record is committed with the completion. A crash in between leaves
      files that the next attempt (or the reconciler) finds; nothing is claimed per effect.
    - `complete`, `fail`, `release` end the lease (the fencing token moves); `renew` extends it.

    Every committed write is fenced (token, owner and the state this lease last committed), so a holder
    whose lease was taken over commits nothing. A `Lease` belongs to one worker thread.
    """

    def __init__(self, commits: GroupCommit, grant: LeaseGrant, *, ttl_s: float) -> None:
        self.commits = commits
        self.grant = grant
        self.job_id, self.owner, self.token = grant.job_id, grant.owner, grant.token
        self.work_id, self.run_id, self.attempts = grant.work_id, grant.run_id, grant.attempts
        self.reopened_at = grant.reopened_at
        self.ttl_s = ttl_s
        self.expires_at = time.time() + ttl_s  # by this holder's clock (the ledger's is a little later)
        self.state = State.LEASED  # as committed in the ledger
        self.target = State.LEASED  # after the queued transitions
        self._fields: dict[str, Any] = {}
        self._effects: list[EffectRecord] = []
        self.last_reason: str | None = None  # the reason `fail` recorded (retries_exhausted may replace it)

    @property
    def first_attempt(self) -> bool:
        """No holder before this one (never leased, never reopened): no op of this job can exist."""
        return self.attempts <= 1 and self.reopened_at is None

    @property
    def settings(self) -> LedgerSettings:
        return self.commits.backend.settings.ledger

    # ---------------------------------------------------------------- queued writes

    def stage(self, to: State | str, fields: dict[str, Any] | None = None) -> None:
        """Move to an in-flight stage (checked now, committed with the next write)."""
        to = State(to)
        check_transition(self.job_id, self.target, to)
        self.target = to
        self._fields.update(fields or {})

    def _write(self, to: State, values: dict[str, Any], *, bump: bool = False, result: FetchResult | None = None,
               completion: bool = False) -> LeaseWrite:
        return LeaseWrite(
            job_id=self.job_id, work_id=self.work_id, owner=self.owner, token=self.token, run_id=self.run_id,
            from_state=self.state, to_state=to, values=values, bump=bump, effects=list(self._effects),
            attempts=list(result.http_attempts) if result is not None else [],
            completion=result if completion else None,
            other_jobs=list(self.grant.other_jobs) if completion else [],
        )

    def _commit(self, write: LeaseWrite) -> None:
        self.commits.commit(write)
        self.state = self.target = write.to_state
        self._fields.clear()
        self._effects.clear()

    def renew(self, *, ttl_s: float | None = None, now: float | None = None) -> None:
        """Extend the lease (committing queued writes with it); raises LeaseLost if it was taken over."""
        now = time.time() if now is None else now
        ttl = self.ttl_s if ttl_s is None else ttl_s
        self._commit(self._write(self.target, {**self._fields, "updated_at": now, "lease_expires_at": now + ttl}))
        self.expires_at = now + ttl

    flush = renew

    def ensure_live(self, margin_s: float) -> None:
        """Before an effect another holder could race: while the lease has `margin_s` left by this
        holder's clock nobody else can be granted it (acquire refuses live leases), so no ledger round
        trip is needed; closer to expiry, renew (fenced: raises LeaseLost if it was taken over)."""
        if time.time() + margin_s >= self.expires_at:
            self.renew()

    # ---------------------------------------------------------------- effects

    def record_effect(self, op_type: str, key: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run an effect that is idempotent on disk; its record goes with the next committed write."""
        started = time.time()
        result = fn()
        crashpoints.crash_point(f"effect_done:{op_type}")
        record = EffectRecord(op_key_for(self.job_id, op_type, key), op_type, key, started, time.time(),
                              dict(json.loads(json.dumps(result, default=str))))
        self._effects.append(record)
        return record.result

    # ---------------------------------------------------------------- endings

    def complete(self, result: FetchResult, *, now: float | None = None) -> State:
        """Finished: the job row, blob reference, work version, HTTP attempts, effect records and the
        work's other candidates (SKIPPED_DUPLICATE), committed together (batched with other works)."""
        now = time.time() if now is None else now
        final, values = completion_values(result, now)
        at = self.target
        for step in completion_path(final):
            check_transition(self.job_id, at, step)
            at = step
        self._commit(self._write(final, values, bump=True, result=result, completion=True))
        return final

    def fail(self, *, reason: str, detail: str | None = None, result: FetchResult | None = None,
             retry_after: float | None = None, now: float | None = None) -> str:
        """FAILED with class transient (backoff, retried later) or permanent. Returns the class."""
        now = time.time() if now is None else now
        check_transition(self.job_id, self.target, State.FAILED)
        klass, values = failure_values(self.settings, self.attempts, reason, detail, now, retry_after=retry_after)
        if result is not None:
            values = {"http_status": result.http_status, "final_url": result.final_url,
                      "elapsed_s": result.elapsed_s, "result": json.dumps(result.to_json()),
                      **served_host_column(result), **values}
        self._commit(self._write(State.FAILED, {**self._fields, "updated_at": now, **values}, bump=True,
                                 result=result))
        self.last_reason = values["last_reason"]
        return klass

    def release(self, *, now: float | None = None) -> None:
        """Give the job back (PLANNED, token bumped), committing the queued effect records."""
        now = time.time() if now is None else now
        check_transition(self.job_id, self.target, State.PLANNED)
        self._commit(self._write(State.PLANNED, {"updated_at": now, "lease_owner": None, "lease_expires_at": None},
                                 bump=True))
