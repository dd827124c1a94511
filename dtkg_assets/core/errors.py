"""Failure reasons: every failure carries one stable code that analysts can group by."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    # Transient: worth retrying later (with backoff).
    TIMEOUT = "timeout"
    CONNECT_ERROR = "connect_error"
    CONNECTION_RESET = "connection_reset"
    TRUNCATED = "truncated"
    HTTP_5XX = "http_5xx"
    RATE_LIMITED = "rate_limited"  # HTTP 429: the host asks us to slow down
    HTTP_429 = "rate_limited"  # alias of RATE_LIMITED
    BREAKER_OPEN = "breaker_open"
    ROBOTS_UNAVAILABLE = "robots_unavailable"
    QUOTA_EXCEEDED = "quota_exceeded"
    DISK_FULL = "disk_full"
    LEASE_LOST = "lease_lost"
    # The fleet's shared politeness state (PostgreSQL: rate limits, breakers, robots) is unreachable.
    COORDINATION_UNAVAILABLE = "coordination_unavailable"
    # SIGINT/SIGTERM stopped the attempt: the part is kept and the job given back, not failed.
    INTERRUPTED = "interrupted"
    BOT_CHALLENGE = "bot_challenge"  # a bot wall (Cloudflare "Just a moment…", captcha): never circumvented
    CREDITS_EXHAUSTED = "credits_exhausted"  # OpenAlex content API: the key's daily credit is spent
    BUDGET_SPENT = "budget_spent"  # our own daily budget for the OpenAlex content API is spent
    # Permanent: retrying will not help.
    HTTP_404 = "http_404"
    HTTP_410 = "http_410"
    HTTP_4XX = "http_4xx"
    FORBIDDEN = "forbidden"  # HTTP 403 without a bot challenge
    NO_PDF_LINK = "no_pdf_link"  # a landing page (within two HTML hops) links no PDF
    PAGE_TOO_LARGE = "page_too_large"  # a landing page past the HTML size cap, no PDF link in what was read
    NOT_PDF = "not_pdf"
    HTML_PAGE = "html_page"
    TOO_SMALL = "too_small"
    TOO_LARGE = "too_large"
    BAD_RANGE = "bad_range"
    ROBOTS_DISALLOWED = "robots_disallowed"
    PRIVATE_ADDRESS = "private_address"
    UNSUPPORTED_SCHEME = "unsupported_scheme"
    TOO_MANY_REDIRECTS = "too_many_redirects"
    OFFLINE = "offline"
    NO_CANDIDATES = "no_candidates"
    BAD_INPUT = "bad_input"
    HASH_MISMATCH = "hash_mismatch"
    # A transient failure that kept happening past settings.ledger.max_attempts.
    RETRIES_EXHAUSTED = "retries_exhausted"


# Failures a prompt retry of the same request can fix: retried in place (core.retrying).
RETRY_IN_PLACE: frozenset[Reason] = frozenset(
    {
        Reason.TIMEOUT,
        Reason.CONNECT_ERROR,
        Reason.CONNECTION_RESET,
        Reason.TRUNCATED,
        Reason.HTTP_5XX,
        Reason.HTTP_429,
    }
)

# Failures worth trying again later: the ledger schedules them with backoff and a retry limit.
TRANSIENT_REASONS: frozenset[Reason] = RETRY_IN_PLACE | {
    Reason.BREAKER_OPEN,
    Reason.ROBOTS_UNAVAILABLE,
    Reason.QUOTA_EXCEEDED,
    Reason.DISK_FULL,
    Reason.LEASE_LOST,
    Reason.HASH_MISMATCH,
    Reason.COORDINATION_UNAVAILABLE,
    Reason.INTERRUPTED,
    Reason.BOT_CHALLENGE,
    Reason.CREDITS_EXHAUSTED,
    Reason.BUDGET_SPENT,
}


# Reasons that say least about why a work has no PDF: the network or our own machinery failed, not
# the work's URLs. A work that failed is reported with its last candidate's reason that is not one of
# these (the orchestrator's outcome and the ledger's summaries alike), else its last candidate's.
WEAK_REASONS: frozenset[str] = frozenset({
    Reason.CONNECT_ERROR.value, Reason.TIMEOUT.value, Reason.BREAKER_OPEN.value, Reason.OFFLINE.value,
    Reason.NO_CANDIDATES.value, "internal_error",
})


def is_transient(reason: Reason | str) -> bool:
    return Reason(reason) in TRANSIENT_REASONS


class DtkgError(Exception):
    """An expected failure with a reason code. `retry_after` (seconds) is a server's hint."""

    def __init__(
        self,
        reason: Reason,
        detail: str = "",
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail
        self.status = status
        self.retry_after = retry_after

    @property
    def transient(self) -> bool:
        return is_transient(self.reason)


def reason_for_status(status: int) -> Reason:
    """Map a final HTTP status that is not a success to a failure reason."""
    if status == 404:
        return Reason.HTTP_404
    if status == 410:
        return Reason.HTTP_410
    if status == 403:
        return Reason.FORBIDDEN
    if status == 429:
        return Reason.RATE_LIMITED
    if status >= 500:
        return Reason.HTTP_5XX
    return Reason.HTTP_4XX
