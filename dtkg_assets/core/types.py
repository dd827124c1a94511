"""Data shared between the engine, the ledger and the orchestrator.

The engine (`core.streaming`) reports through `FetchHooks`; the orchestrator implements them with
the ledger (state transitions, lease renewal, fencing, exactly-once effects). `NullHooks` lets the
engine run on its own.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Protocol, TypeVar

T = TypeVar("T")

Decision = Literal["fresh", "resume", "discard_part", "already_complete"]
FetchStatus = Literal["stored", "deduped", "failed"]
Stage = Literal["HEAD_DONE", "RESUME_OK", "STREAMING"]
EffectType = Literal["FINALIZE", "DEDUPE", "LINK"]


@dataclass
class HttpAttempt:
    """One HTTP exchange (HEAD or GET) as the ledger's `http_attempts` stores it."""

    method: str
    url: str
    host: str
    status: int | None
    bytes: int
    elapsed_s: float
    error: str | None = None
    started_at: float = 0.0


@dataclass
class FetchResult:
    """What happened to one candidate URL. `reason` is "ok" on success, else a `Reason` value."""

    status: FetchStatus
    reason: str
    decision: Decision | None
    url: str
    work_id: str | None = None
    final_url: str | None = None
    sha256: str | None = None
    path: str | None = None  # the per-work name
    blob_path: str | None = None  # store/<sha[:w]>/<sha>.pdf
    bytes: int = 0
    resumed_from: int = 0
    attempts: int = 0
    elapsed_s: float = 0.0  # the fetch's own time: waits for a download slot are not in it
    mib_s: float = 0.0
    fsync_s: float = 0.0
    slot_wait_s: float = 0.0  # time spent waiting for a download slot (`FetchHooks.network`)
    http_status: int | None = None
    decision_reason: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    content_type: str | None = None
    body_bytes_received: int = 0  # bytes read from the network this time
    detail: str | None = None
    retry_after: float | None = None  # the server's (or breaker's) Retry-After of the failure, seconds
    http_attempts: list[HttpAttempt] = field(default_factory=list)
    # How the PDF was found: "direct" (the candidate URL itself), a landing-page convention
    # ("citation_pdf_url", "dspace_bitstream", …) or "openalex_content"; hops = HTML pages read.
    via: str | None = None
    hops: int = 0
    landing_url: str | None = None  # the HTML page the PDF link was found on
    # The host that served a DOI's or landing page's page when a redirect led elsewhere (where the
    # resolver sent it): the job's host for yield by host (the job's URL still names the one given).
    served_host: str | None = None
    html: builtins.bytes | None = None  # an HTML body the engine received instead of a PDF (kept small), not stored

    @property
    def ok(self) -> bool:
        return self.status in ("stored", "deduped")

    def to_json(self) -> dict[str, Any]:
        # Shallow: every field but the attempts and a kept HTML body is a plain value (asdict deep-copies).
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("http_attempts", "html")}


class FetchHooks(Protocol):
    """Callbacks the engine makes while fetching; any may raise `DtkgError` to abort."""

    def stage(self, stage: Stage, info: dict[str, Any]) -> None:
        """Entered a stage (HEAD_DONE with validators, RESUME_OK with the decision, STREAMING)."""

    def progress(self, bytes_on_disk: int) -> None:
        """Called about once per MiB while streaming: renew the lease here."""

    def check_fence(self) -> None:
        """Called right before finalize: raise if this worker no longer owns the job."""

    def network(self) -> AbstractContextManager[None]:
        """Entered around each HTTP exchange (a request with its body, one retry attempt): a download
        slot of the run, so that waits between retries and the work on disk hold none."""
        ...

    def effect(self, effect_type: EffectType, key: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run an on-disk effect exactly once; `key` is deterministic for the effect (e.g. the sha)."""
        ...


class NullHooks:
    """Engine on its own: no ledger, effects simply run (they are idempotent on disk)."""

    def stage(self, stage: Stage, info: dict[str, Any]) -> None:
        return None

    def progress(self, bytes_on_disk: int) -> None:
        return None

    def check_fence(self) -> None:
        return None

    def network(self) -> AbstractContextManager[None]:
        return nullcontext()

    def effect(self, effect_type: EffectType, key: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        return fn()


@dataclass(frozen=True)
class Candidate:
    """A URL that may yield the work's PDF, with the record field it came from."""

    url: str  # redacted when it carried credentials (core.credentials)
    source: str  # best_oa_location.pdf_url | locations[i].pdf_url | primary_location.pdf_url | open_access.oa_url
    # The URL as given, only when it carries credentials: planning keeps it in the credential vault.
    real_url: str | None = field(default=None, compare=False, repr=False)


@dataclass
class WorkRecord:
    """One work from any input (OpenAlex query, JSONL file, id list). `work_id` is the short id."""

    work_id: str
    candidates: list[Candidate]
    doi: str | None = None
    title: str | None = None
    publication_year: int | None = None
    origin: str = ""  # where it came from: "jsonl:<path>:<line>", "openalex:<query>", "ids:<path>"
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InputProblem:
    """Bad input, kept for analysts; the rest of the input proceeds."""

    origin: str  # file path or query
    line: int | None
    work_id: str | None
    reason: str  # a `Reason` value, usually bad_input / no_candidates / unsupported_scheme
    detail: str
