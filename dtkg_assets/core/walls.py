"""Bot walls and refusals, told apart (pure core, no network of its own).

A bot challenge (Cloudflare "Just a moment…", "Checking your browser", captcha interstitials,
``cf-mitigated: challenge``) is reason ``bot_challenge``; a plain 403 is ``forbidden``; 429 is
``rate_limited``. Nothing here tries to get past a wall: a challenge ends the candidate, and a host
that keeps challenging is deferred like an open circuit breaker (`ChallengeTracker`), so it is not
hammered.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from dtkg_assets.core.errors import DtkgError, Reason, reason_for_status
from dtkg_assets.core.retrying import parse_retry_after

# How much of a refusal's body is read to look for challenge markers.
SNIFF_BYTES = 64 * 1024

# Markers that only bot walls carry (lower case). Checked on any page, also a 200.
STRONG_MARKERS: tuple[bytes, ...] = (
    b"<title>just a moment",
    b"checking your browser",
    b"cf-chl-",
    b"cf_chl_opt",
    b"/cdn-cgi/challenge-platform/",
    b"challenge-form",
    b"px-captcha",
    b"_incapsula_resource",
    b"ddos-guard",
    b"verify you are human",
    b"verify you are a human",
    b"are you a robot",
    b"enable javascript and cookies to continue",
)
# Weaker markers: a captcha widget on a refusal (403/429/503) is a wall; on a normal page it may be a
# comment form, so these count only on refusals.
WEAK_MARKERS: tuple[bytes, ...] = (b"captcha", b"g-recaptcha", b"h-captcha", b"hcaptcha", b"turnstile")

_REFUSALS = frozenset({401, 403, 429, 503})


def challenge_marker(body: bytes, *, refusal: bool = False, headers: Mapping[str, str] | None = None) -> str | None:
    """The marker that makes this response a bot challenge, or None."""
    if headers is not None and "challenge" in (headers.get("cf-mitigated") or "").lower():
        return "cf-mitigated: challenge"
    lowered = body[:SNIFF_BYTES].lower()
    for marker in STRONG_MARKERS:
        if marker in lowered:
            return marker.decode()
    if refusal:
        for marker in WEAK_MARKERS:
            if marker in lowered:
                return marker.decode()
    return None


def refusal_error(
    status: int, headers: Mapping[str, str], body: bytes, url: str, what: str = "GET"
) -> DtkgError | None:
    """A 401/403/429/503 told apart: bot challenge, forbidden, rate limited (None for other statuses
    that are not challenges; the caller maps those as usual)."""
    marker = challenge_marker(body, refusal=status in _REFUSALS, headers=headers)
    retry_after = parse_retry_after(headers.get("retry-after"))
    if marker is not None:
        return DtkgError(
            Reason.BOT_CHALLENGE, f"{what} {url} answered HTTP {status} with a bot challenge ({marker})",
            status=status, retry_after=retry_after,
        )
    if status in (401, 403, 429):
        return DtkgError(reason_for_status(status) if status != 401 else Reason.FORBIDDEN,
                         f"{what} {url} answered HTTP {status}", status=status, retry_after=retry_after)
    return None


def sniff_body(response: httpx.Response, limit: int = SNIFF_BYTES) -> bytes:
    """Up to `limit` decoded body bytes of a streamed response (errors reading it give b"")."""
    out = bytearray()
    try:
        for chunk in response.iter_bytes():
            out += chunk
            if len(out) >= limit:
                break
    except (httpx.HTTPError, DtkgError):
        pass
    return bytes(out[:limit])


def response_refusal(response: httpx.Response, what: str = "GET") -> DtkgError | None:
    """`refusal_error` for a streamed httpx response: reads at most `SNIFF_BYTES` of its body.
    Records a challenge against the host when the client has a `ChallengeTracker`."""
    status = response.status_code
    if status not in _REFUSALS and "cf-mitigated" not in response.headers:
        return None
    body = sniff_body(response)
    err = refusal_error(status, response.headers, body, str(response.url), what)
    if err is not None and err.reason is Reason.BOT_CHALLENGE:
        record_challenge(response.request.extensions.get("dtkg_walls"), response.url.host)
    return err


@dataclass
class _HostWalls:
    count: int = 0
    deferred_until: float = 0.0


class ChallengeTracker:
    """Per-host count of bot challenges: after `max_challenges`, the host is deferred for `defer_s`
    (every request to it fails fast with ``bot_challenge``, like an open breaker)."""

    def __init__(self, max_challenges: int, defer_s: float) -> None:
        self.max_challenges = max_challenges
        self.defer_s = defer_s
        self._lock = threading.Lock()
        self._hosts: dict[str, _HostWalls] = {}

    def record(self, host: str) -> None:
        if self.max_challenges <= 0:
            return
        with self._lock:
            st = self._hosts.setdefault(host.lower(), _HostWalls())
            st.count += 1
            if st.count >= self.max_challenges:
                st.deferred_until = time.monotonic() + self.defer_s

    def check(self, host: str) -> None:
        """Raise ``bot_challenge`` (transient, with retry_after) while `host` is deferred."""
        if self.max_challenges <= 0:
            return
        with self._lock:
            st = self._hosts.get(host.lower())
            if st is None or st.deferred_until <= 0:
                return
            remaining = st.deferred_until - time.monotonic()
            if remaining <= 0:
                st.count, st.deferred_until = 0, 0.0
                return
            count = st.count
        raise DtkgError(
            Reason.BOT_CHALLENGE,
            f"{host} is deferred after {count} bot challenges; not asking again for {remaining:.0f} s",
            retry_after=remaining,
        )

    def challenges(self, host: str) -> int:
        with self._lock:
            st = self._hosts.get(host.lower())
            return st.count if st else 0


def record_challenge(tracker: object, host: str) -> None:
    if isinstance(tracker, ChallengeTracker):
        tracker.record(host)
