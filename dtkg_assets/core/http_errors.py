"""How an HTTP exchange fails, written once: a transport error or a final status -> a `DtkgError` whose
reason an analyst groups by and whose class (transient or permanent, `DtkgError.transient`) the
retry policy and the ledger act on; and the `HttpAttempt` record every exchange leaves for the ledger.

The engine (HEAD, GET, prefix check), landing pages and the OpenAlex content API use `recorded_attempt`;
metadata GETs (`http.get_with_retries`) use `error_for_status`. Bot walls and other refusals are told
apart before the status is mapped (`walls`), by the callers that read a body.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from dtkg_assets.core.credentials import redact_url
from dtkg_assets.core.errors import DtkgError, Reason, reason_for_status
from dtkg_assets.core.retrying import parse_retry_after
from dtkg_assets.core.types import HttpAttempt


def error_from_httpx(exc: httpx.HTTPError) -> DtkgError:
    """Translate a transport-level httpx error into a reasoned failure."""
    if isinstance(exc, httpx.TimeoutException):
        return DtkgError(Reason.TIMEOUT, str(exc) or type(exc).__name__)
    if isinstance(exc, httpx.ConnectError):
        return DtkgError(Reason.CONNECT_ERROR, str(exc))
    if isinstance(exc, httpx.RemoteProtocolError):
        # httpx raises this for a body shorter than Content-Length and for peers that hang up.
        return DtkgError(Reason.TRUNCATED, str(exc))
    if isinstance(exc, httpx.ReadError | httpx.WriteError | httpx.NetworkError):
        return DtkgError(Reason.CONNECTION_RESET, str(exc))
    if isinstance(exc, httpx.UnsupportedProtocol):
        return DtkgError(Reason.UNSUPPORTED_SCHEME, str(exc))
    if isinstance(exc, httpx.TooManyRedirects):
        return DtkgError(Reason.TOO_MANY_REDIRECTS, str(exc))
    return DtkgError(Reason.CONNECTION_RESET, f"{type(exc).__name__}: {exc}")


def request_error(exc: BaseException) -> DtkgError:
    """Any failure of ``client.send``/``client.get`` as a reasoned `DtkgError`."""
    if isinstance(exc, DtkgError):
        return exc
    if isinstance(exc, httpx.HTTPError):
        return error_from_httpx(exc)
    return DtkgError(Reason.CONNECTION_RESET, f"{type(exc).__name__}: {exc}")


def error_for_status(response: httpx.Response, what: str = "GET") -> DtkgError:
    """A final status that is not a success: 404/410/403/4xx permanent, 429/5xx transient and carrying
    the server's Retry-After. A 3xx here means the client stopped following redirects."""
    status = response.status_code
    detail = f"{what} {response.url} answered HTTP {status}"
    if 300 <= status < 400:
        return DtkgError(Reason.TOO_MANY_REDIRECTS, detail, status=status)
    return DtkgError(
        reason_for_status(status), detail, status=status,
        retry_after=parse_retry_after(response.headers.get("retry-after")),
    )


@contextmanager
def recorded_attempt(
    attempts: list[HttpAttempt] | None, method: str, url: str, *, host: str | None = None
) -> Iterator[HttpAttempt]:
    """Record one exchange: the `HttpAttempt` is appended when it starts (so a crash mid-body still
    shows it), timed until the block ends, and given the reason of the failure that ends it; an httpx
    error leaves the block as the `DtkgError` it maps to. The block sets `status` and `bytes`."""
    record = HttpAttempt(method=method, url=redact_url(url), host=httpx.URL(url).host if host is None else host,
                         status=None, bytes=0, elapsed_s=0.0, started_at=time.time())
    if attempts is not None:
        attempts.append(record)
    t0 = time.perf_counter()
    try:
        yield record
    except httpx.HTTPError as exc:
        err = error_from_httpx(exc)
        record.error = err.reason.value
        raise err from exc
    except DtkgError as exc:
        record.error = exc.reason.value
        raise
    finally:
        record.elapsed_s = time.perf_counter() - t0
