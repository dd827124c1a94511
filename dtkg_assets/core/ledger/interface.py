"""The ledger's write interface: what a backend (DuckDB file, PostgreSQL) implements.

The orchestrator never writes job rows itself. It leases jobs and hands each holder a `Lease`
(core/ledger/lease.py), which queues that holder's stage changes and effect records and submits them
with the next write that must be durable (a completion, a failure, a release, a lease renewal). A
`GroupCommit` collects the writes of every worker thread and passes them to the backend in batches:
one `acquire` call for all pending lease requests, one `commit` call for all pending writes, each ONE
transaction. Per artifact that is two batched round trips (lease, completion), whatever the number
of threads; a backend turns a batch into a few set-based statements, not one statement per work.

Guarantees a backend must keep (docs/ledger-concurrency.md says why they are enough):
1. `acquire` grants a job to at most one holder at a time: a grant bumps the job's fencing token and
   counts an attempt; a live lease, a permanent failure, a backoff not yet passed, or a job at the
   attempt limit is refused (None). A job in flight whose lease expired may be taken over.
2. `commit` applies each `LeaseWrite` only if the job still holds the write's token and owner and is
   in the write's `from_state` (a guarded update, checked against the row, not a cached copy).
   A refused write changes nothing (its effect records, blob reference, attempts and skipped
   candidates included) and gets a `LeaseLost` (stale token or owner) or `IllegalTransition` (token
   current, state moved) in its slot of the answer; the other writes of the batch still commit.
3. `commit` returns only after the transaction is durable: an acknowledged completion is never lost.
4. A write with `bump=True` (completion, failure, release) moves the fencing token, so the same
   holder cannot commit twice and a stale holder cannot commit at all: two workers never commit
   the same work.
5. Effects are not claimed one by one: every effect the engine runs is idempotent on disk and found
   again after a crash (a content-addressed blob renamed over identical bytes, a per-work link whose
   EEXIST counts as done, the `.part` sidecar naming the sha256 it was finalized as). A finished
   effect is recorded (`LeaseWrite.effects`, an upsert of its op row) with the holder's next write.

Transition rules are checked by the caller (`Lease`, against states.TRANSITIONS) before a write is
submitted; the backend enforces them against the row through `from_state`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from dtkg_assets.core.ledger.lease import Lease

from dtkg_assets.core.ledger.states import COMPLETE, State
from dtkg_assets.core.settings import Settings
from dtkg_assets.core.types import FetchResult, HttpAttempt, WorkRecord

# Deterministic keys: every backend derives the same job ids and op keys from the same input.


# A str as json.dumps(..., ensure_ascii=False) writes it (the C function json.dumps itself uses).
_json_str: Callable[[str], str] = json.encoder.encode_basestring


def stable_hash(obj: Any) -> str:
    """SHA-256 of canonical JSON (sorted keys, no spaces): deterministic across processes."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


# http(s)://host[:port] and printable ASCII after it: canonicalized without urllib (same result).
_PLAIN_URL = re.compile(r"((?i:https?))://([A-Za-z0-9.-]+)(?::([0-9]{1,5}))?([/?#][!-~]*)?", re.ASCII)


def canonical_url(url: str) -> str:
    """Scheme and host lower-cased, default port and fragment dropped (path and query kept as is)."""
    url = url.strip()
    plain = _PLAIN_URL.fullmatch(url)
    if plain is not None and int(plain.group(3) or 0) <= 65535:
        scheme, host, port = plain.group(1).lower(), plain.group(2).lower(), int(plain.group(3) or 0)
        if port and not ((scheme == "http" and port == 80) or (scheme == "https" and port == 443)):
            host = f"{host}:{port}"
        path, _, query = (plain.group(4) or "").partition("#")[0].partition("?")
        return f"{scheme}://{host}{path or '/'}?{query}" if query else f"{scheme}://{host}{path or '/'}"
    return canonical_url_general(url)


def canonical_url_general(url: str) -> str:
    """`canonical_url` through urllib, for every URL (the shortcut's reference)."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    port = parts.port
    if port and not ((scheme == "http" and port == 80) or (scheme == "https" and port == 443)):
        host = f"{host}:{port}"
    if parts.username:
        host = f"{parts.username}@{host}"
    return urlunsplit((scheme, host, parts.path or "/", parts.query, ""))


def job_id_for(work_id: str, url: str, artifact: str = "pdf", *, canonical: str | None = None) -> str:
    """`canonical` is `canonical_url(url)` when the caller has it already.

    The same text `stable_hash` hashes (sorted keys, no spaces, strings as json.dumps writes them
    with ensure_ascii=False), written out directly: an import hashes a million of these, and the
    general encoder took about 9 us each."""
    text = (f'{{"artifact":{_json_str(artifact)},"url":{_json_str(canonical or canonical_url(url))},'
            f'"work_id":{_json_str(work_id)}}}')
    return hashlib.sha256(text.encode()).hexdigest()


def op_key_for(job_id: str, op_type: str, effect_key: str) -> str:
    return stable_hash({"job_id": job_id, "op_type": op_type, "key": effect_key})



@dataclass
class Job:
    """One row of artifact_jobs: a (work, candidate URL) pair and its state."""

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


@dataclass(frozen=True)
class LeaseRequest:
    """Ask for a lease on one job."""

    job_id: str
    owner: str
    run_id: str | None
    ttl_s: float
    # The work's other job ids when the caller knows them (the backend then need not look them up).
    other_jobs: tuple[str, ...] | None = None
    # The job's work when the caller knows it: the DuckDB ledger then finds the row by work id.
    work_id: str | None = None


@dataclass(frozen=True)
class LeaseGrant:
    """A granted lease: the holder's fencing token and what it needs to know about the job."""

    job_id: str
    work_id: str
    owner: str
    token: int
    attempts: int  # including this one
    reopened_at: float | None  # last explicit requeue (effects finished before it run again)
    run_id: str | None
    other_jobs: tuple[str, ...] = ()  # the work's other candidates, SKIPPED_DUPLICATE on completion


@dataclass(frozen=True)
class EffectRecord:
    """A finished on-disk effect, recorded with the holder's next write (op key is deterministic)."""

    op_key: str
    op_type: str
    key: str
    started_at: float
    finished_at: float
    result: dict[str, Any]

    @property
    def result_json(self) -> str:
        return json.dumps(self.result, default=str)


@dataclass
class LeaseWrite:
    """One holder's fenced write: move the job `from_state` -> `to_state` and set `values`.

    `values` are artifact_jobs columns (never state or fencing_token). With `completion`, the
    backend also records the blob reference (+1) and the work version, and marks the jobs of
    `other_jobs` that are PLANNED or transiently FAILED SKIPPED_DUPLICATE. `attempts` are the HTTP
    attempts to record (with `run_id`). `effects` are finished effect records to write with it.
    """

    job_id: str
    work_id: str
    owner: str
    token: int
    run_id: str | None
    from_state: State
    to_state: State
    values: dict[str, Any] = field(default_factory=dict)
    bump: bool = False
    effects: list[EffectRecord] = field(default_factory=list)
    attempts: list[HttpAttempt] = field(default_factory=list)
    completion: FetchResult | None = None
    other_jobs: list[str] = field(default_factory=list)


class LedgerWriteBackend(Protocol):
    """What `GroupCommit` and `Lease` need from a ledger backend. Every method is one transaction."""

    settings: Settings

    def acquire(self, requests: Sequence[LeaseRequest], *, now: float) -> list[LeaseGrant | None]:
        """Lease each job if it is leasable now (guarantee 1); answers in request order."""
        ...

    def commit(self, writes: Sequence[LeaseWrite], *, now: float) -> list[Exception | None]:
        """Apply the writes in one durable transaction (guarantees 2-4); per write None or the
        `LeaseLost` / `IllegalTransition` that refused it, in write order."""
        ...



class LedgerBackend(LedgerWriteBackend, Protocol):
    """Everything the orchestrator asks of a ledger: the write path above plus its few reads and the
    run records. (Ingest, reconciliation, repair and analyst views are backend-specific beyond this.)"""

    def plan(self, works: Sequence[WorkRecord], *, now: float | None = None) -> tuple[int, int]:
        """Upsert works and one PLANNED job per distinct candidate URL; (new works, new jobs)."""
        ...

    def jobs_for_works(self, work_ids: Sequence[str]) -> dict[str, list[Job]]:
        """Each work's jobs in candidate order, for a whole batch in one query."""
        ...

    def job(self, job_id: str) -> Job | None: ...

    def lease(self, job_id: str, owner: str, *, ttl_s: float | None = None, run_id: str | None = None,
              now: float | None = None, other_jobs: Sequence[str] | None = None,
              work_id: str | None = None) -> Lease | None:
        """A `Lease` through this backend's `GroupCommit` (batched with other threads' requests).
        `other_jobs` and `work_id`: the work's other job ids and the job's work, when known."""
        ...

    def start_run(self, run_id: str, *, kind: str, owner: str, now: float | None = None) -> None: ...

    def finish_run(self, run_id: str, counts: dict[str, Any], *, now: float | None = None) -> None: ...

    def publish_snapshot(self, *, force: bool = False) -> bool:
        """Make the committed state visible to readers (a no-op where readers see commits directly)."""
        ...
