"""PDF validation: header, trailer, minimum size, HTML and challenge pages."""

from __future__ import annotations

from pathlib import Path

import pytest

from dtkg_assets.core.errors import DtkgError, Reason
from dtkg_assets.core.pdf import is_valid_pdf, validate_pdf
from dtkg_assets.settings import ValidationSettings

V = ValidationSettings()
FILL = b"#" * 4000


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"%PDF-1.7\n" + FILL + b"\n%%EOF\n", None),
        (b"\xef\xbb\xbf  %PDF-1.4\n" + FILL + b"\n%%EOF\r\n", None),  # junk before the header is tolerated
        (b"%PDF-1.7\n" + FILL + b"\n%%EOF\n" + b" " * 1000, None),  # trailing whitespace after %%EOF
        (b"%PDF-1.7\n" + FILL, Reason.NOT_PDF),  # truncated: no trailer
        (FILL + b"\n%%EOF\n", Reason.NOT_PDF),  # no header
        (b"%PDF-1.7\n%%EOF\n", Reason.TOO_SMALL),
        (b"<!DOCTYPE html><html><body>" + FILL + b"</body></html>", Reason.HTML_PAGE),
        (b"<html><head><title>Just a moment...</title></head>" + FILL, Reason.HTML_PAGE),
        (b"\n\n  <HTML>" + FILL, Reason.HTML_PAGE),
        (b"Please solve this CAPTCHA to continue" + FILL, Reason.HTML_PAGE),
        (b"<!doctype html>tiny", Reason.HTML_PAGE),  # HTML wins over too small: the better reason
    ],
)
def test_validate_pdf(tmp_path: Path, data: bytes, reason: Reason | None) -> None:
    path = tmp_path / "f.pdf"
    path.write_bytes(data)
    if reason is None:
        validate_pdf(path, V)
        assert is_valid_pdf(path, V)
    else:
        with pytest.raises(DtkgError) as exc:
            validate_pdf(path, V)
        assert exc.value.reason is reason
        assert not is_valid_pdf(path, V)


def test_trailer_must_be_near_the_end(tmp_path: Path) -> None:
    path = tmp_path / "f.pdf"
    path.write_bytes(b"%PDF-1.7\n%%EOF\n" + b"#" * (V.tail_sniff_bytes + 100))
    with pytest.raises(DtkgError) as exc:
        validate_pdf(path, V)
    assert exc.value.reason is Reason.NOT_PDF
    assert not is_valid_pdf(tmp_path / "missing.pdf", V)
    # A few KB of trailing bytes after %%EOF, as some hosts serve, is still a PDF.
    path.write_bytes(b"%PDF-1.7\n" + b"#" * 5000 + b"\n%%EOF\n" + b"\0" * 4000)
    assert is_valid_pdf(path, V)
