"""Is a candidate URL fetchable at all (scheme, host, port)? Asked before the network or the disk.
And its host, the key for limits, breakers and stats.

httpx is imported only where a URL needs parsing: the ledger plans works with these functions, and
commands that only read it (`dtkg status`) should not pay for loading the HTTP stack.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from dtkg_assets.core.errors import DtkgError, Reason

if TYPE_CHECKING:
    import httpx

# The common shape of a candidate URL: http(s), a host name (letters, digits, '-', '.', with at least
# one letter or '-') or an IPv4 address as `ipaddress` accepts it (httpx checks an all-digit host as
# one), an optional port, then printable ASCII. httpx and urllib accept every URL of this shape whose
# port is below 65536, so `check_url` passes it without parsing (a million works import much faster).
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_PLAIN_URL = re.compile(
    rf"(?i:https?)://(?:(?=[0-9.]*[A-Za-z-])[A-Za-z0-9.-]+|{_OCTET}(?:\.{_OCTET}){{3}})"
    r"(?::([0-9]{1,5}))?(?:[/?#][!-~]*)?",
    re.ASCII,
)
_MAX_URL_LENGTH = 65536  # httpx's limit


def check_url(url: str) -> None:
    """Refuse what cannot be fetched before touching the network or the disk."""
    plain = _PLAIN_URL.fullmatch(url)
    if plain is not None and len(url) <= _MAX_URL_LENGTH and int(plain.group(1) or 0) <= 65535:
        return
    check_url_fully(url)


def check_url_fully(url: str) -> None:
    """`check_url` without its shortcut for plain URLs: parsed by httpx and urllib."""
    import httpx

    try:
        parsed = httpx.URL(url)
        # httpx accepts ports past 65535 that the standard library (and the socket) refuse.
        urlsplit(url).port  # noqa: B018 - evaluated for its ValueError
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise DtkgError(Reason.BAD_INPUT, f"malformed URL {url!r}: {exc}") from exc
    if parsed.scheme not in ("http", "https"):
        raise DtkgError(
            Reason.UNSUPPORTED_SCHEME,
            f"URL {url!r} has scheme {parsed.scheme or '(none)'!r}; only http:// and https:// are fetched",
        )
    if not parsed.host:
        raise DtkgError(Reason.BAD_INPUT, f"URL {url!r} has no host")


# http(s)://host, then an optional numeric port, then the path, query, fragment or the end: the host
# is read off without urllib (the import plans a million URLs).
_PLAIN_HOST = re.compile(r"(?i:https?)://([A-Za-z0-9.-]+)(?::[0-9]*)?(?:[/?#]|$)", re.ASCII)


def host_of(url: str | httpx.URL) -> str:
    """Lower-case host name of a URL ("" when it has none); the key for limits, breakers and stats."""
    if not isinstance(url, str):
        return url.host.lower()
    plain = _PLAIN_HOST.match(url)
    if plain is not None:
        return plain.group(1).lower()
    return (urlsplit(url).hostname or "").lower()
