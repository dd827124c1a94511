"""The OpenAlex content API as a budgeted last candidate (pure core).

``content.openalex.org/works/{id}.pdf?api_key=…`` answers with a redirect to a signed URL of the
cached PDF; the signed URL is fetched by the streaming engine like any artifact (validation, dedupe,
exactly-once effects). Each download costs credits (about $10 per 1,000), so:

- a daily budget (``landing.content_daily_budget`` downloads per UTC day, counted from the ledger's
  request records at start and in memory after) ends with ``budget_spent`` once used up;
- the credit headers of each answer are read; a 429, or a credit header at zero, means the key's
  daily credit is spent: ``credits_exhausted`` (distinct from a host's ``rate_limited``), and the API
  is not asked again until the next UTC midnight (or the server's Retry-After).

The API key travels only in the request to the API: it is never stored in the ledger (requests are
recorded without it) and never sent to the signed URL's host.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx

from dtkg_assets.core.errors import DtkgError, Reason, reason_for_status
from dtkg_assets.core.http_errors import recorded_attempt
from dtkg_assets.core.retrying import parse_retry_after
from dtkg_assets.core.settings import Settings
from dtkg_assets.core.types import FetchHooks, FetchResult, HttpAttempt, NullHooks
from dtkg_assets.core.works import OPENALEX_CONTENT

VIA = "openalex_content"
# Credit headers seen on OpenAlex answers (any that is present is read).
CREDIT_HEADERS = ("x-ratelimit-credits-remaining", "x-credits-remaining", "x-ratelimit-remaining")


def next_utc_midnight(now: float) -> float:
    day = datetime.fromtimestamp(now, UTC).date() + timedelta(days=1)
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


def utc_day_start(now: float) -> float:
    day = datetime.fromtimestamp(now, UTC).date()
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


class ContentApi:
    """One per run; thread-safe. `spent_today` seeds the budget (downloads already made today)."""

    def __init__(self, engine: Any, settings: Settings, *, spent_today: int = 0,
                 clock: Any = time.time) -> None:
        self.engine = engine
        self.settings = settings
        self.client: httpx.Client | None = getattr(engine, "client", None)
        self._clock = clock
        self._lock = threading.Lock()
        self._day = utc_day_start(clock())
        self.spent = spent_today
        self.exhausted_until = 0.0
        self.credits_remaining: int | None = None

    @property
    def base_url(self) -> str:
        return self.settings.landing.content_base_url.rstrip("/")

    @property
    def host(self) -> str:
        return (urlsplit(self.base_url).hostname or "").lower()

    def api_url(self, url: str) -> str:
        """The stored candidate URL (public base) with the configured base."""
        return self.base_url + url[len(OPENALEX_CONTENT):] if url.startswith(OPENALEX_CONTENT) else url

    def _reserve(self) -> None:
        """Take one download from today's budget, or raise why not."""
        now = self._clock()
        with self._lock:
            if now >= self._day + 86400:
                self._day, self.spent = utc_day_start(now), 0
            if self.exhausted_until > now:
                until = datetime.fromtimestamp(self.exhausted_until, UTC)
                raise DtkgError(Reason.CREDITS_EXHAUSTED, "the OpenAlex API key's daily credit is spent; "
                                f"next try after {until:%Y-%m-%d %H:%M} UTC", retry_after=self.exhausted_until - now)
            budget = self.settings.landing.content_daily_budget
            if self.spent >= budget:
                raise DtkgError(Reason.BUDGET_SPENT, f"content API budget of {budget} downloads today is spent "
                                "(DTKG_LANDING_CONTENT_DAILY_BUDGET)", retry_after=next_utc_midnight(now) - now)
            self.spent += 1

    def _refund(self) -> None:
        with self._lock:
            self.spent = max(0, self.spent - 1)

    def _exhausted(self, retry_after: float | None) -> None:
        now = self._clock()
        with self._lock:
            until = now + retry_after if retry_after else next_utc_midnight(now)
            self.exhausted_until = max(self.exhausted_until, until)

    def _read_credits(self, headers: httpx.Headers) -> None:
        for name in CREDIT_HEADERS:
            value = headers.get(name)
            if value is None:
                continue
            try:
                remaining = int(float(value))
            except ValueError:
                continue
            with self._lock:
                self.credits_remaining = remaining
            if remaining <= 0:
                self._exhausted(parse_retry_after(headers.get("x-ratelimit-reset") or headers.get("retry-after")))
            return

    def fetch(self, url: str, *, work_id: str | None = None, hooks: FetchHooks | None = None,
              known_sha256: str | None = None, refresh: bool = False) -> FetchResult:
        result = FetchResult(status="failed", reason="", decision=None, url=url, work_id=work_id)
        attempts: list[HttpAttempt] = []
        try:
            with (hooks or NullHooks()).network():
                signed = self._signed_url(url, attempts)
        except DtkgError as exc:
            result.reason, result.detail, result.http_status = exc.reason.value, exc.detail or None, exc.status
            result.http_attempts = attempts
            return result
        fetched: FetchResult = self.engine.fetch(signed, work_id=work_id, hooks=hooks, known_sha256=known_sha256,
                                                 refresh=refresh)
        fetched.http_attempts = attempts + fetched.http_attempts
        fetched.html = None
        if fetched.ok:
            fetched.via = VIA
        return fetched

    def _signed_url(self, url: str, attempts: list[HttpAttempt]) -> str:
        key = self.settings.openalex.api_key
        if not key:
            raise DtkgError(Reason.CREDITS_EXHAUSTED, "no OPENALEX_API_KEY: the content API needs one")
        if self.client is None:
            raise DtkgError(Reason.OFFLINE, "no HTTP client for the OpenAlex content API")
        self._reserve()
        api = self.api_url(url)
        with recorded_attempt(attempts, "GET", api, host=self.host) as record:
            try:
                response = self.client.get(api, params={"api_key": key}, follow_redirects=False)
            except (httpx.HTTPError, DtkgError):
                self._refund()
                raise
        record.status = response.status_code
        self._read_credits(response.headers)
        status = response.status_code
        location = response.headers.get("location")
        if status in (301, 302, 303, 307, 308) and location:
            signed = str(response.url.join(location))
            if "api_key=" in signed:
                self._refund()
                raise DtkgError(Reason.BAD_INPUT, "the content API redirected with the API key in the URL; "
                                "not followed")
            return signed
        self._refund()
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            self._exhausted(retry_after)
            record.error = Reason.CREDITS_EXHAUSTED.value
            raise DtkgError(Reason.CREDITS_EXHAUSTED, f"the OpenAlex content API answered 429 for {api}: "
                            "the key's daily credit is spent", status=429, retry_after=retry_after)
        reason = Reason.NOT_PDF if 200 <= status < 300 else reason_for_status(status)
        record.error = reason.value
        raise DtkgError(reason, f"the OpenAlex content API answered HTTP {status} for {api} without a redirect",
                        status=status)
