"""Works input: OpenAlex work records to `WorkRecord`s with ordered candidate URLs (SPEC §2).

Bad input never stops a load: every problem becomes an `InputProblem` (origin, line, reason) that the
ledger keeps for analysts, and the rest proceeds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Literal

from dtkg_assets.core.credentials import redact_strings, redact_url
from dtkg_assets.core.errors import DtkgError, Reason
from dtkg_assets.core.settings import LandingSettings
from dtkg_assets.core.store import check_work_id
from dtkg_assets.core.types import Candidate, InputProblem, WorkRecord
from dtkg_assets.core.urls import check_url

_WORK_ID = re.compile(r"^(?:https?://(?:api\.)?openalex\.org/(?:works/)?)?(W\d+)$", re.IGNORECASE)
_DOI = re.compile(r"^(?:doi:\s*|https?://(?:dx\.)?doi\.org/)?(10\.\d{4,9}/\S+)$", re.IGNORECASE)
_DOI_URL = re.compile(r"^https?://(?:dx\.)?doi\.org/(10\.\d{4,9}/\S+)$", re.IGNORECASE)
_TRAILING_COMMENT = re.compile(r"\s#")
# A line (one work record) longer than this is reported and skipped without being held in memory.
# OpenAlex records are kilobytes; the largest (thousands of authors) stay below a few MiB.
MAX_LINE_BYTES = 16 * 1024 * 1024


def work_id_of(value: Any) -> str | None:
    """``W123`` from ``"https://openalex.org/W123"``, ``"W123"`` or ``"w123"``; None when invalid."""
    if not isinstance(value, str):
        return None
    match = _WORK_ID.match(value.strip())
    return match.group(1).upper() if match else None


def normalize_doi(value: Any) -> str | None:
    """``10.…`` (lower-case, as DOIs are case-insensitive) from any common DOI form; None when invalid."""
    if not isinstance(value, str):
        return None
    match = _DOI.match(value.strip())
    return match.group(1).lower() if match else None


def _get(record: dict[str, Any], *path: str) -> Any:
    value: Any = record
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _raw_candidates(record: dict[str, Any]) -> list[tuple[str, str]]:
    """(url, source field) in SPEC §2 order, before dedupe and scheme filtering."""
    found: list[tuple[str, str]] = []
    best = _get(record, "best_oa_location", "pdf_url")
    if best:
        found.append((best, "best_oa_location.pdf_url"))
    locations = record.get("locations")
    if isinstance(locations, list):
        for i, location in enumerate(locations):
            if isinstance(location, dict) and location.get("is_oa") is True and location.get("pdf_url"):
                found.append((location["pdf_url"], f"locations[{i}].pdf_url"))
    primary = _get(record, "primary_location", "pdf_url")
    if primary:
        found.append((primary, "primary_location.pdf_url"))
    oa_url = _get(record, "open_access", "oa_url")
    if oa_url:
        found.append((oa_url, "open_access.oa_url"))
    # Landing pages (issue 11): resolved to their PDF link after every direct URL was tried.
    best_landing = _get(record, "best_oa_location", "landing_page_url")
    if best_landing:
        found.append((best_landing, "best_oa_location.landing_page_url"))
    if isinstance(locations, list):
        for i, location in enumerate(locations):
            if isinstance(location, dict) and location.get("is_oa") is True and location.get("landing_page_url"):
                found.append((location["landing_page_url"], f"locations[{i}].landing_page_url"))
    doi = normalize_doi(record.get("doi"))
    if doi:
        found.append((DOI_RESOLVER + doi, "doi"))
    work_id = work_id_of(record.get("id"))
    if work_id and _get(record, "has_content", "pdf") is True:
        found.append((f"{OPENALEX_CONTENT}/works/{work_id}.pdf", "openalex_content"))
    return [(url.strip(), source) for url, source in found if isinstance(url, str) and url.strip()]


# Stored candidate URLs of the DOI and the content API use the public bases; the fetch substitutes the
# configured ones (settings.landing.doi_resolver / content_base_url), so a test can point them elsewhere.
DOI_RESOLVER = "https://doi.org/"
OPENALEX_CONTENT = "https://content.openalex.org"

CandidateKind = Literal["pdf", "landing", "doi", "content"]


def candidate_kind(source: str | None, url: str | None = None) -> CandidateKind:
    """How a candidate is fetched: a PDF URL, a landing page, the DOI (a landing page through the
    configured resolver; also any candidate URL that is a doi.org link, such as the `oa_url` OpenAlex
    gives when it knows only a landing page, which would otherwise be fetched from doi.org itself
    whatever the DOI settings say) or the OpenAlex content API."""
    if source == "doi":
        return "doi"
    if source == "openalex_content":
        return "content"
    if url is not None and _DOI_URL.match(url.strip()):
        return "doi"
    if source and source.endswith(".landing_page_url"):
        return "landing"
    # PDF URLs and open_access.oa_url: fetched as artifacts; one that answers HTML is read as a landing page.
    return "pdf"


def doi_url(url: str, resolver: str) -> str:
    """A doi.org URL through the configured resolver (unchanged when it is not a DOI URL)."""
    match = _DOI_URL.match(url.strip())
    return resolver + match.group(1) if match else url


def candidate_enabled(source: str | None, landing: LandingSettings, api_key: str = "", url: str | None = None) -> bool:
    """Whether the settings let this kind of candidate be planned (landing pages, DOI, content API)."""
    kind = candidate_kind(source, url)
    if kind == "landing":
        return landing.enabled
    if kind == "doi":
        return landing.enabled and landing.doi
    if kind == "content":
        return landing.content_api and bool(api_key)
    return True


def _split_candidates(record: dict[str, Any]) -> tuple[list[Candidate], list[tuple[Candidate, DtkgError]]]:
    """(usable candidates, dropped candidates with why), each deduplicated by URL. A URL is usable
    when `check_url` (the check the engine makes before fetching) accepts it."""
    usable: list[Candidate] = []
    dropped: list[tuple[Candidate, DtkgError]] = []
    seen: set[str] = set()
    for url, source in _raw_candidates(record):
        if url in seen:
            continue
        seen.add(url)
        shown = redact_url(url)  # what is kept and reported; `url` itself only goes to the vault
        candidate = Candidate(url=shown, source=source, real_url=url if shown != url else None)
        try:
            check_url(url)
        except DtkgError as exc:
            dropped.append((candidate, DtkgError(exc.reason, exc.detail.replace(url, shown))))
            continue
        usable.append(candidate)
    return usable, dropped


def candidate_urls(record: dict[str, Any]) -> list[Candidate]:
    """Candidate PDF URLs in SPEC §2 order without duplicates; URLs that cannot be fetched (other
    schemes, malformed) are left out (`parse_work` reports them)."""
    return _split_candidates(record)[0]


def parse_work(
    record: Any, origin: str, *, line: int | None = None, problem_origin: str | None = None
) -> tuple[WorkRecord | None, list[InputProblem]]:
    """One OpenAlex work record -> a `WorkRecord` (None when unusable) and the problems found.

    ``origin`` is stored on the record ("jsonl:<path>:<line>", "openalex:<query>", …);
    ``problem_origin`` (default ``origin``) and ``line`` locate problems for analysts.
    """
    where = problem_origin or origin
    if not isinstance(record, dict):
        return None, [InputProblem(where, line, None, Reason.BAD_INPUT.value, "record is not a JSON object")]
    work_id = work_id_of(record.get("id"))
    if work_id is None:
        detail = "missing id" if record.get("id") in (None, "") else f"invalid OpenAlex id {_clip(record.get('id'))}"
        return None, [InputProblem(where, line, None, Reason.BAD_INPUT.value, detail)]
    try:
        check_work_id(work_id)  # ids become file names: refuse at import what the store would refuse later
    except DtkgError:
        detail = f"OpenAlex id of {len(work_id)} characters ({_clip(work_id)}) is too long to be a file name"
        return None, [InputProblem(where, line, None, Reason.BAD_INPUT.value, detail)]
    problems: list[InputProblem] = []
    usable, dropped = _split_candidates(record)
    for candidate, exc in dropped:
        problems.append(
            InputProblem(where, line, work_id, exc.reason.value, f"{candidate.source}: {exc.detail}")
        )
    if not usable:
        problems.append(InputProblem(where, line, work_id, Reason.NO_CANDIDATES.value, "no usable PDF URL"))
        return None, problems
    year = record.get("publication_year")
    title = record.get("display_name") or record.get("title")
    work = WorkRecord(
        work_id=work_id,
        candidates=usable,
        doi=normalize_doi(record.get("doi")),
        title=title if isinstance(title, str) else None,
        publication_year=year if isinstance(year, int) else None,
        origin=origin,
        raw=redact_strings(record),
    )
    return work, problems


def _clip(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def bounded_lines(handle: IO[bytes], limit: int = MAX_LINE_BYTES) -> Iterator[tuple[int, str | None, int]]:
    """(line number, text, size in bytes) of each line; text is None for a line over `limit` bytes,
    which is skipped a MiB at a time so a huge line never sits in memory. Bytes that are not UTF-8
    are replaced (the line is then reported as malformed, not the file refused)."""
    number = 0
    while True:
        raw = handle.readline(limit + 1)
        if not raw:
            return
        number += 1
        size = len(raw)
        if size > limit and not raw.endswith(b"\n"):
            while True:
                rest = handle.readline(1024 * 1024)
                size += len(rest)
                if not rest or rest.endswith(b"\n"):
                    break
            yield number, None, size
            continue
        yield number, raw.decode("utf-8", errors="replace"), size


def _too_long(path: Path, number: int, size: int) -> InputProblem:
    detail = f"line of {size} bytes is longer than {MAX_LINE_BYTES} bytes; skipped"
    return InputProblem(str(path), number, None, Reason.BAD_INPUT.value, detail)


def read_jsonl(path: str | Path) -> Iterator[WorkRecord | InputProblem]:
    """Works from a JSONL file of OpenAlex records; each bad line yields an `InputProblem` and reading goes on."""
    path = Path(path)
    with path.open("rb") as handle:
        for number, text, size in bounded_lines(handle):
            if text is None:
                yield _too_long(path, number, size)
                continue
            stripped = text.strip()
            if not stripped:
                continue
            try:
                record = json.loads(stripped)
            except json.JSONDecodeError as exc:
                yield InputProblem(str(path), number, None, Reason.BAD_INPUT.value, f"malformed JSON: {exc.msg}")
                continue
            work, problems = parse_work(record, f"jsonl:{path}:{number}", line=number, problem_origin=str(path))
            yield from problems
            if work is not None:
                yield work


def parse_identifier(text: str) -> str | None:
    """An id-list entry as an OpenAlex lookup key: ``W123`` or ``doi:10.…``; None when unrecognised."""
    work_id = work_id_of(text)
    if work_id is not None:
        return work_id
    doi = normalize_doi(text)
    return f"doi:{doi}" if doi is not None else None


def read_id_list(path: str | Path) -> list[str | InputProblem]:
    """Identifiers from a text file, one per line: DOIs (``10.…``, ``doi:10.…``, ``https://doi.org/10.…``)
    or OpenAlex ids (``W123`` or its URL). Blank lines and ``#`` comments are skipped, duplicates
    dropped; bad lines become `InputProblem`s in place. Ids come back as ``W123`` / ``doi:10.…``,
    ready for `OpenAlexClient.get_work`.
    """
    path = Path(path)
    result: list[str | InputProblem] = []
    seen: set[str] = set()
    with path.open("rb") as handle:
        for number, text, size in bounded_lines(handle):
            if text is None:
                result.append(_too_long(path, number, size))
                continue
            # "#" starts a comment at the line start or after whitespace ("W123  # note").
            entry = "" if text.lstrip().startswith("#") else _TRAILING_COMMENT.split(text, 1)[0].strip()
            if not entry:
                continue
            key = parse_identifier(entry)
            if key is None:
                detail = f"not a DOI or OpenAlex id: {_clip(entry)}"
                result.append(InputProblem(str(path), number, None, Reason.BAD_INPUT.value, detail))
            elif key not in seen:
                seen.add(key)
                result.append(key)
    return result


def why_nothing_usable(path: str | Path) -> str:
    """The likely reason a works file yielded no work, from its first bytes, with what to do."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            head = handle.read(4096)
    except OSError as exc:
        return f"it cannot be read ({exc.strerror})"
    if not head.strip():
        return "the file is empty; give a .jsonl of OpenAlex work records or a list of OpenAlex ids / DOIs"
    # UTF-16 text of ASCII JSON: a byte-order mark, or NULs in every other byte between text bytes.
    even, odd = head[0::2], head[1::2]
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or (
        (odd.count(0) > 0.9 * len(odd) and _texty(even)) or (even.count(0) > 0.9 * len(even) and _texty(odd))
    ):
        return "the file looks UTF-16 encoded; convert it to UTF-8 (iconv -f UTF-16 -t UTF-8)"
    if head.startswith(b"\x1f\x8b"):
        return "the file is gzip-compressed; decompress it first (gunzip)"
    if b"\x00" in head or not _texty(head.decode("utf-8", errors="ignore").encode("ascii", errors="replace")):
        return "the file looks binary, not text; give a .jsonl of OpenAlex work records or a list of ids / DOIs"
    return "no line held a usable work (see the input problems above)"


def _texty(data: bytes) -> bool:
    """Mostly printable ASCII (with tabs and line breaks)."""
    return sum(32 <= b < 127 or b in (9, 10, 13) for b in data) > 0.9 * max(1, len(data))
