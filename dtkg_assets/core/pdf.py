"""PDF validation before anything enters the store.

Cheap structural checks only (header, trailer, size, HTML/challenge pages): they catch the usual
failures of scholarly hosts (login pages, bot challenges, error pages served as application/pdf,
truncated files) without parsing the document.
"""

from __future__ import annotations

import os
from pathlib import Path

from dtkg_assets.core.errors import DtkgError, Reason
from dtkg_assets.settings import ValidationSettings

PDF_MAGIC = b"%PDF-"
PDF_EOF = b"%%EOF"

# Lower-cased markers of HTML documents and bot challenges (Cloudflare, generic captchas).
HTML_MARKERS: tuple[bytes, ...] = (
    b"<!doctype html",
    b"<html",
    b"<head",
    b"<body",
    b"just a moment",
    b"cf-chl",
    b"captcha",
    b"access denied",
)


def classify_pdf(head: bytes, tail: bytes, size: int, settings: ValidationSettings) -> DtkgError | None:
    """Return the reason these bytes are not an acceptable PDF, or None when they look like one.

    `head` is the start of the file (at least `head_sniff_bytes` when the file is that long) and
    `tail` its end (`tail_sniff_bytes`).
    """
    sniff = head[: settings.head_sniff_bytes]
    has_magic = PDF_MAGIC in sniff
    if not has_magic:
        lowered = sniff.lower()
        for marker in HTML_MARKERS:
            if marker in lowered:
                return DtkgError(Reason.HTML_PAGE, f"HTML page instead of a PDF (found {marker.decode()!r})")
    if size < settings.min_bytes:
        return DtkgError(Reason.TOO_SMALL, f"{size} bytes is below the minimum of {settings.min_bytes}")
    if not has_magic:
        return DtkgError(Reason.NOT_PDF, f"no %PDF- header in the first {settings.head_sniff_bytes} bytes")
    if PDF_EOF not in tail[-settings.tail_sniff_bytes :]:
        return DtkgError(Reason.NOT_PDF, f"no %%EOF trailer in the last {settings.tail_sniff_bytes} bytes")
    return None


def read_head_tail(path: Path, settings: ValidationSettings) -> tuple[bytes, bytes, int]:
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        head = os.pread(f.fileno(), settings.head_sniff_bytes, 0)
        tail_len = min(size, settings.tail_sniff_bytes)
        tail = os.pread(f.fileno(), tail_len, size - tail_len) if tail_len else b""
    return head, tail, size


def validate_pdf(path: Path | str, settings: ValidationSettings) -> None:
    """Raise DtkgError(HTML_PAGE / TOO_SMALL / NOT_PDF) unless the file looks like a complete PDF."""
    head, tail, size = read_head_tail(Path(path), settings)
    problem = classify_pdf(head, tail, size, settings)
    if problem is not None:
        raise problem


def is_valid_pdf(path: Path | str, settings: ValidationSettings) -> bool:
    try:
        validate_pdf(path, settings)
    except (DtkgError, OSError):
        return False
    return True
