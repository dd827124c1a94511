"""The right paper: does a stored PDF mention its work's DOI or title? (pure core, read-only)

Reads the document's metadata and the text of its first pages with pypdf, normalizes both sides
(case, accents, punctuation, hyphenated line breaks) and looks for the DOI, then the title: exact
after normalization, else most of the title's words. A mismatch is flagged ``wrong_paper`` for
analysts; nothing is ever deleted or changed. A PDF without extractable text (a scan) cannot be
judged and is reported as such, not flagged.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Verdict = Literal["doi", "title", "title_fuzzy", "wrong_paper", "no_text", "no_reference", "unreadable"]

FIRST_PAGES = 2
# Share of the title's significant words that must appear in the text for a fuzzy match.
TITLE_WORD_SHARE = 0.8
_NON_ALNUM = re.compile(r"[^0-9a-z]+")
_HYPHEN_BREAK = re.compile(r"(\w)-\s*\n\s*(\w)")
_STOP = frozenset({
    "a", "an", "and", "are", "as", "at", "by", "for", "from", "in", "into", "is", "of", "on", "or", "the", "to",
    "with", "via", "its", "their", "this", "that",
})


@dataclass(frozen=True)
class PaperCheck:
    verdict: Verdict
    detail: str
    score: float = 0.0

    @property
    def flagged(self) -> bool:
        return self.verdict == "wrong_paper"


def normalize(text: str) -> str:
    """Lower case, accents stripped, hyphenated line breaks joined, punctuation to single spaces."""
    text = _HYPHEN_BREAK.sub(r"\1\2", text)
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).lower()
    return _NON_ALNUM.sub(" ", text).strip()


def _words(text: str) -> list[str]:
    return [w for w in text.split() if (len(w) > 2 or w.isdigit()) and w not in _STOP]


def pdf_text(path: Path | str, pages: int = FIRST_PAGES) -> str:
    """Metadata (title, subject, keywords) and the text of the first `pages` pages; "" when none."""
    from pypdf import PdfReader  # imported here: only the check needs it

    logging.getLogger("pypdf").setLevel(logging.ERROR)
    reader = PdfReader(str(path), strict=False)
    parts: list[str] = []
    meta = reader.metadata
    if meta is not None:
        for key in ("/Title", "/Subject", "/Keywords"):
            value = meta.get(key)
            if value:
                parts.append(str(value))
    for page in reader.pages[:pages]:
        try:
            parts.append(page.extract_text() or "")
        except Exception:  # a damaged content stream: use what the other pages give
            continue
    return "\n".join(parts)


def match_text(text: str, *, doi: str | None, title: str | None) -> PaperCheck:
    """Judge extracted text against the work's DOI and title."""
    if not doi and not title:
        return PaperCheck("no_reference", "the work has neither DOI nor title to look for")
    norm = normalize(text)
    if not norm:
        return PaperCheck("no_text", "no extractable text (a scan?): not judged")
    if doi:
        # DOIs survive normalization as their alphanumeric runs ("10.1234/ab-c" -> "10 1234 ab c").
        ndoi = normalize(doi)
        if ndoi and (doi.lower() in text.lower() or f" {ndoi} " in f" {norm} "):
            return PaperCheck("doi", f"mentions the DOI {doi}", 1.0)
    if title:
        ntitle = normalize(title)
        if ntitle and f" {ntitle} " in f" {norm} ":
            return PaperCheck("title", "mentions the title", 1.0)
        words = _words(ntitle)
        if words:
            have = set(norm.split())
            share = sum(1 for w in words if w in have) / len(words)
            if share >= TITLE_WORD_SHARE:
                return PaperCheck("title_fuzzy", f"{share:.0%} of the title's words appear", share)
            return PaperCheck("wrong_paper", f"neither the DOI nor the title appear ({share:.0%} of the title's "
                              "words in the first pages)", share)
    return PaperCheck("wrong_paper", f"the DOI {doi} does not appear in the first pages or metadata")


def check_pdf(path: Path | str, *, doi: str | None, title: str | None) -> PaperCheck:
    """`match_text` on a stored PDF; a PDF pypdf cannot read is "unreadable", never flagged."""
    if not doi and not title:
        return PaperCheck("no_reference", "the work has neither DOI nor title to look for")
    try:
        text = pdf_text(path)
    except Exception as exc:  # pypdf raises many types on damaged files
        return PaperCheck("unreadable", f"{type(exc).__name__}: {exc}"[:200])
    return match_text(text, doi=doi, title=title)


@dataclass
class RightPaperReport:
    checked: int = 0
    verdicts: dict[str, str] | None = None  # work id -> verdict
    wrong_paper: list[str] | None = None  # work ids flagged, with `details`
    details: dict[str, str] | None = None


def check_artifacts(rows: list[tuple[str, str, str | None, str | None]], home: Path | None = None) -> RightPaperReport:
    """`check_pdf` over (work_id, path, doi, title) rows; relative paths are under `home`."""
    report = RightPaperReport(verdicts={}, wrong_paper=[], details={})
    assert report.verdicts is not None and report.wrong_paper is not None and report.details is not None
    for work_id, path, doi, title in rows:
        file = Path(path)
        if not file.is_absolute() and home is not None:
            file = home / file
        if not file.is_file():
            continue  # the file check reports missing files
        report.checked += 1
        verdict = check_pdf(file, doi=doi, title=title)
        report.verdicts[work_id] = verdict.verdict
        if verdict.flagged:
            report.wrong_paper.append(work_id)
            report.details[work_id] = verdict.detail
    return report
