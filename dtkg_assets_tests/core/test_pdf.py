"""PDF validation: header, trailer, minimum size, HTML and challenge pages."""

from __future__ import annotations

from pathlib import Path

import pytest

from dtkg_assets.core.errors import DtkgError, Reason
from dtkg_assets.core.pdf import has_structure, is_valid_pdf, validate_pdf
from dtkg_assets.core.settings import ValidationSettings

V = ValidationSettings()
FILL = b"#" * 4000
END = b"\ntrailer\n<< /Size 3 /Root 1 0 R >>\nstartxref\n4100\n%%EOF\n"
# PDF 1.5+ without a classic trailer: the xref stream object is the last object before startxref.
XREF_STREAM_END = (b"\n7 0 obj\n<< /Type /XRef /Size 8 /W [1 2 1] >>\nstream\nxx\nendstream\nendobj\n"
                   b"startxref\n4100\n%%EOF")
LOGIN = (b"%PDF-1.4\n<!DOCTYPE html><html><head><title>Sign in</title></head><body><form>" + FILL
         + b"</form></body></html>\n%%EOF\n")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"%PDF-1.7\n" + FILL + END, None),
        (b"%PDF-1.7\n" + FILL + XREF_STREAM_END, None),
        (b"\xef\xbb\xbf  %PDF-1.4\n" + FILL + END.replace(b"\n", b"\r\n"), None),  # junk before the header
        (b"%PDF-1.7\n" + FILL + END + b" " * 1000, None),  # trailing whitespace after %%EOF
        (b"%PDF-1.7\n" + FILL, Reason.NOT_PDF),  # truncated: no trailer
        (FILL + END, Reason.NOT_PDF),  # no header
        (b"%PDF-1.7\n%%EOF\n", Reason.TOO_SMALL),
        (b"%PDF-1.7\n" + FILL + b"\n%%EOF\n", Reason.NOT_PDF),  # %%EOF alone is not the end of a PDF
        (b"%PDF-1.7\n" + FILL + b"\nstartxref\n4100\n%%EOF\n", Reason.NOT_PDF),  # no xref section or object
        (LOGIN, Reason.HTML_PAGE),  # a login page wearing a %PDF- header and a %%EOF
        (LOGIN.replace(b"\n%%EOF", END), Reason.HTML_PAGE),  # even with a plausible end
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


def test_html_markers_in_a_large_pdf_are_content_not_a_page(tmp_path: Path) -> None:
    """Past html_check_max_bytes a %PDF- file that mentions <html> early (a paper about HTML) is kept."""
    path = tmp_path / "f.pdf"
    path.write_bytes(b"%PDF-1.7\n% <html> in a comment\n" + b"#" * (V.html_check_max_bytes + 1) + END)
    validate_pdf(path, V)


def test_trailer_must_be_near_the_end(tmp_path: Path) -> None:
    path = tmp_path / "f.pdf"
    path.write_bytes(b"%PDF-1.7\n" + END + b"#" * (V.tail_sniff_bytes + 100))
    with pytest.raises(DtkgError) as exc:
        validate_pdf(path, V)
    assert exc.value.reason is Reason.NOT_PDF
    assert not is_valid_pdf(tmp_path / "missing.pdf", V)
    # A few KB of trailing bytes after %%EOF, as some hosts serve, is still a PDF.
    path.write_bytes(b"%PDF-1.7\n" + b"#" * 5000 + END + b"\0" * 4000)
    assert is_valid_pdf(path, V)


@pytest.mark.parametrize(
    ("tail", "found"),
    [
        (b"\ntrailer\n", True),
        (b"trailer", True),  # at both edges of the window
        (b"xtrailer <<", False),  # inside a longer word
        (b"trailers", False),
        (b"1 0 obj\n<< >>\nendobj", True),
        (b"_endobj\n", False),
        (b"endobj_ x", False),
        (b"<< /Type /XRef /W [1 2 1] >>", True),
        (b"a/XRef ", True),  # a name starts at its slash: no word boundary before it
        (b"/XRefStm 12", False),
        (b"xtrailer trailerx /XRefs endobj1 trailer!", True),  # the last occurrence is whole
        (b"endobjendobj", False),
        (b"", False),
    ],
)
def test_structure_markers_count_as_whole_words_only(tail: bytes, found: bool) -> None:
    assert has_structure(tail) is found
