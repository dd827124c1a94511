"""Credentials in URLs: stored redacted, used only for the request.

Two kinds: userinfo (``https://user:secret@host/x.pdf``) and the values of well-known secret query
parameters (``?token=…``, ``api_key=…``, ``X-Amz-Signature=…``; `SECRET_PARAMS`). Everything that is
kept or shown (ledger rows, the raw work record, the snapshot, exports, sidecars, HTTP attempt
records, messages) carries the redacted URL, ``https://user:***@host/x.pdf?id=7&token=***`` (or
``https://***@host/…`` when the user part alone is the credential, as with tokens), so job ids and
analyst views never depend on a secret. The real URL is remembered in ``$DTKG_HOME/credentials.json``
(mode 0600, outside the ledger, so never in a snapshot or export) when works are planned, and the
HTTP transport (`http.PoliteTransport`) puts the credentials back right before the request is sent:
userinfo as an ``Authorization: Basic`` header, secret parameters in the query of that one request.
A redacted URL whose credentials are not known is sent without any (the masked parameters as ``***``).
Two URLs that differ only in a secret share one redacted form, hence one job: the last one planned
is the one used.
"""

from __future__ import annotations

import json
import os
import re
import threading
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from dtkg_assets.core.types import WorkRecord

MASK = "***"
VAULT_FILE = "credentials.json"


# Query parameters whose value is a credential by convention (compared lower-cased): bearer and API
# tokens, passwords, and the signatures of pre-signed URLs (S3, GCS, Azure SAS, CloudFront).
SECRET_PARAMS = frozenset({
    "token", "access_token", "auth_token", "id_token", "refresh_token", "session_token", "jwt",
    "api_key", "apikey", "api-key", "client_secret", "secret", "password", "passwd", "pwd",
    "signature", "sig", "x-amz-signature", "x-amz-security-token", "x-amz-credential",
    "x-goog-signature", "x-goog-credential",
})
# A quick test before parsing: most URLs have no secret parameter at all.
_SECRET_PARAM = re.compile(
    r"[?&](?:" + "|".join(re.escape(p) for p in sorted(SECRET_PARAMS, key=len, reverse=True)) + r")=[^&#]",
    re.IGNORECASE,
)


def redact_url(url: str) -> str:
    """`url` with its password (or a lone user part) and the values of its secret query parameters
    replaced by ``***``; the same string when it carries neither."""
    at = "@" in url
    if not at and "?" not in url:
        return url  # no userinfo, no query (and nothing for `_redact_unparsable` to hide)
    if not at and not _SECRET_PARAM.search(url):
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return _redact_unparsable(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, sep, _password = userinfo.partition(":")
        masked = f"{user}:{MASK}" if sep and user else MASK
        netloc = f"{masked}@{hostport}"
    query = _redact_query(parts.query)
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _redact_query(query: str) -> str:
    """The query with each secret parameter's value masked; the rest kept byte for byte."""
    if not query:
        return query
    pieces = query.split("&")
    for i, piece in enumerate(pieces):
        name, sep, value = piece.partition("=")
        if sep and value and value != MASK and unquote(name).lower() in SECRET_PARAMS:
            pieces[i] = f"{name}={MASK}"
    return "&".join(pieces)


def has_masked_query(url: str) -> bool:
    """True when a secret query parameter of `url` carries the mask (its value is in the vault)."""
    if MASK not in url or "?" not in url:
        return False
    query = url.split("?", 1)[1].split("#", 1)[0]
    return any(
        value == MASK and unquote(name).lower() in SECRET_PARAMS
        for name, _, value in (piece.partition("=") for piece in query.split("&"))
    )


def _redact_unparsable(url: str) -> str:
    # A malformed URL is reported back as input: still never with its secret in it.
    base, qsep, query = url.partition("?")
    if qsep:
        query, fsep, fragment = query.partition("#")
        return _redact_unparsable(base) + qsep + _redact_query(query) + fsep + fragment
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    return f"{scheme}://{MASK}@{rest.split('@', 1)[1]}"


def has_credentials(url: str) -> bool:
    return redact_url(url) != url


def has_masked_userinfo(url: str) -> bool:
    """True for a URL whose userinfo was masked by `redact_url`."""
    try:
        netloc = urlsplit(url).netloc
    except ValueError:
        return False
    userinfo = netloc.rpartition("@")[0]
    return userinfo == MASK or userinfo.endswith(":" + MASK)


def is_redacted(url: str) -> bool:
    """True for a URL whose userinfo or secret query parameters were masked by `redact_url`."""
    return has_masked_userinfo(url) or has_masked_query(url)


def basic_credentials(url: str) -> tuple[str, str] | None:
    """(user, password), percent-decoded, of a URL's userinfo; None without one."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return None
    return unquote(parts.username or ""), unquote(parts.password or "")


def redact_strings(value: Any) -> Any:
    """A JSON-like value with every URL string redacted (for raw records kept in the ledger); the
    value itself, not a copy, when nothing needed redacting (the usual case)."""
    if isinstance(value, str):
        return redact_url(value) if ("@" in value or "?" in value) and "://" in value else value
    if isinstance(value, dict):
        changed: dict[Any, Any] | None = None
        for k, v in value.items():
            r = redact_strings(v)
            if r is not v:
                changed = changed if changed is not None else dict(value)
                changed[k] = r
        return value if changed is None else changed
    if isinstance(value, list):
        redacted = [redact_strings(v) for v in value]
        return value if all(a is b for a, b in zip(redacted, value, strict=True)) else redacted
    return value


def remember_candidates(home: Path, works: Iterable[WorkRecord]) -> None:
    """Planning (either ledger backend): keep the real URL of every candidate that had credentials."""
    CredentialVault(home).remember([c.real_url for w in works for c in w.candidates if c.real_url is not None])


class CredentialVault:
    """``$DTKG_HOME/credentials.json``: redacted URL -> real URL, readable by its owner only."""

    def __init__(self, home: Path) -> None:
        self.path = Path(home) / VAULT_FILE
        self._lock = threading.Lock()
        self._cache: dict[str, str] | None = None

    def _load(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def remember(self, real_urls: list[str]) -> None:
        """Keep the real URL of each redacted one (atomic rewrite, mode 0600)."""
        new = {redact_url(u): u for u in real_urls if has_credentials(u)}
        if not new:
            return
        with self._lock:
            known = self._load()
            if all(known.get(k) == v for k, v in new.items()):
                return
            known.update(new)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{VAULT_FILE}.{uuid.uuid4().hex[:8]}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, json.dumps(known, sort_keys=True).encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            self._cache = known

    def real_url(self, redacted: str) -> str | None:
        """The real URL behind `redacted`, or None when unknown (the file is re-read on a miss)."""
        with self._lock:
            if self._cache is None or redacted not in self._cache:
                self._cache = self._load()
            return self._cache.get(redacted)
