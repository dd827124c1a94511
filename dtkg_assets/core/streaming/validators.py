"""What the server says about an object (validators, size, type) and the HEAD that asks for it.

A HEAD is optional (see `Engine._wants_head`): a GET's headers give the same `ServerValidators`
before its first body byte.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from dtkg_assets.core.http_errors import error_for_status, recorded_attempt
from dtkg_assets.core.streaming.ranges import artifact_headers
from dtkg_assets.core.types import HttpAttempt


@dataclass(frozen=True)
class ServerValidators:
    """What the server says about the object (from HEAD, or from a GET's headers)."""

    status: int | None = None
    etag: str | None = None
    last_modified: str | None = None
    content_length: int | None = None  # size of the whole object when known
    accept_ranges: str | None = None
    content_type: str | None = None
    final_url: str | None = None

    @property
    def strong_etag(self) -> str | None:
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return None

    def if_range_value(self) -> str | None:
        """Strong ETag, else Last-Modified, else None. Never a weak ETag."""
        return self.strong_etag or self.last_modified or None

    @classmethod
    def from_response(cls, response: httpx.Response, total: int | None = None) -> ServerValidators:
        if total is None:
            total = int_or_none(response.headers.get("content-length"))
        return cls(
            status=response.status_code,
            etag=response.headers.get("etag"),
            last_modified=response.headers.get("last-modified"),
            content_length=total,
            accept_ranges=response.headers.get("accept-ranges"),
            content_type=response.headers.get("content-type"),
            final_url=str(response.url),
        )


def int_or_none(value: str | None) -> int | None:
    """A header's non-negative integer (Content-Length), or None when absent or malformed."""
    if value is None:
        return None
    try:
        number = int(value.strip())
    except ValueError:
        return None
    return number if number >= 0 else None


def head_precheck(
    client: httpx.Client, url: str, attempts: list[HttpAttempt] | None = None
) -> ServerValidators | None:
    """HEAD the URL. None when the server does not do HEAD (405/501) or gives no usable answer.

    404/410 raise a permanent DtkgError; 429/5xx a transient one carrying Retry-After.
    """
    with recorded_attempt(attempts, "HEAD", url) as record:
        response = client.head(url, headers=artifact_headers())
        status = record.status = response.status_code
        if 200 <= status < 300:
            return ServerValidators.from_response(response)
        if status in (404, 410, 429) or (status >= 500 and status != 501):
            raise error_for_status(response, "HEAD")
    # 405/501 and other refusals of HEAD (some CDNs answer 403/400): the GET decides.
    return None
