"""Retry policy shared by every HTTP caller: tenacity, exponential backoff with jitter, Retry-After.

Only failures that a prompt retry can fix are retried in place (network errors, truncated bodies,
429 and 5xx). Others that are transient in the long run (open breaker, full disk, lost lease) are
returned to the ledger, which schedules them with its own backoff.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import tenacity

from dtkg_assets.core import deadline
from dtkg_assets.core.errors import RETRY_IN_PLACE, DtkgError
from dtkg_assets.core.settings import HttpSettings


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date (RFC 9110)."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = datetime.fromtimestamp(time.time() if now is None else now, tz=UTC)
    return max(0.0, (when - current).total_seconds())


def _retry_in_place(exc: BaseException) -> bool:
    # An attempt that spent its whole deadline is not tried again at once (see deadline.DeadlineSpent).
    return isinstance(exc, DtkgError) and exc.reason in RETRY_IN_PLACE and not isinstance(exc, deadline.DeadlineSpent)


def _retry_in_place_within(cap_s: float) -> Callable[[BaseException], bool]:
    """`_retry_in_place`, except a server asking for a longer pause than `cap_s`: that wait is the
    ledger's to schedule (it honours Retry-After), not a worker thread's to sleep."""

    def decide(exc: BaseException) -> bool:
        if not _retry_in_place(exc):
            return False
        asked = exc.retry_after if isinstance(exc, DtkgError) else None
        return asked is None or asked <= cap_s

    return decide


class _WaitRetryAfterOrBackoff(tenacity.wait.wait_base):
    """Honour the server's Retry-After (capped); otherwise exponential backoff with full jitter."""

    def __init__(self, settings: HttpSettings) -> None:
        self.cap = settings.retry_after_cap_s
        self.backoff = tenacity.wait_random_exponential(
            multiplier=settings.backoff_initial_s, max=settings.backoff_max_s
        )

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, DtkgError) and exc.retry_after is not None:
            return min(max(exc.retry_after, 0.0), self.cap)
        return float(self.backoff(retry_state))


def retrying(
    settings: HttpSettings,
    *,
    max_attempts: int | None = None,
    sleep: Callable[[float], Any] = deadline.sleep,
    before_sleep: Callable[[tenacity.RetryCallState], Any] | None = None,
    defer_long_waits: bool = False,
) -> tenacity.Retrying:
    """A tenacity controller: ``for attempt in retrying(s): with attempt: ...``; re-raises the last error.

    `defer_long_waits` (artifact downloads, which the ledger retries later): a Retry-After longer than
    `retry_after_cap_s` ends the retries at once instead of sleeping the cap again and again."""
    retry_if = _retry_in_place_within(settings.retry_after_cap_s) if defer_long_waits else _retry_in_place
    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(max_attempts or settings.max_attempts),
        wait=_WaitRetryAfterOrBackoff(settings),
        retry=tenacity.retry_if_exception(retry_if),
        reraise=True,
        sleep=sleep,
        before_sleep=before_sleep,
    )
