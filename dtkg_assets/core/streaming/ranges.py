"""Range requests for artifacts: the headers a GET (or HEAD) sends and how a 206 or 416 answer is read."""

from __future__ import annotations

import re
from dataclasses import dataclass

# Artifacts ask for a PDF first; whatever comes back is judged by its bytes (validation), not its type.
ARTIFACT_ACCEPT = "application/pdf,*/*;q=0.8"

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
_UNSATISFIED_RANGE = re.compile(r"^\s*bytes\s+\*/(\d+)\s*$", re.IGNORECASE)


def artifact_headers(offset: int = 0, if_range: str | None = None, *, upto: int | None = None) -> dict[str, str]:
    """Request headers for an artifact: `identity` encoding, so the bytes hashed are the bytes served (a
    gzipped 200 would answer a ranged request otherwise); a Range from `offset` (to `upto`, inclusive)
    and the `If-Range` validator of a resume."""
    headers = {"Accept-Encoding": "identity", "Accept": ARTIFACT_ACCEPT}
    if upto is not None:
        headers["Range"] = f"bytes={offset}-{upto}"
    elif offset > 0:
        headers["Range"] = f"bytes={offset}-"
        if if_range:
            headers["If-Range"] = if_range
    return headers


@dataclass(frozen=True)
class ContentRange:
    start: int
    end: int
    total: int | None


def parse_content_range(value: str | None) -> ContentRange | None:
    if not value:
        return None
    m = _CONTENT_RANGE.match(value)
    if not m:
        return None
    start, end = int(m.group(1)), int(m.group(2))
    total = None if m.group(3) == "*" else int(m.group(3))
    if end < start:
        return None
    return ContentRange(start, end, total)


def unsatisfied_range_total(value: str | None) -> int | None:
    """The object's size from a 416's `Content-Range: bytes */N`, or None."""
    m = _UNSATISFIED_RANGE.match(value or "")
    return int(m.group(1)) if m else None
