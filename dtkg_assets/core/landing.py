"""Landing pages to PDFs (pure core): find the PDF link of an HTML page and fetch it through the engine.

Most losses on the real web are HTML: a landing page where a PDF was hoped for. This module reads
such a page (``Accept: text/html``, at most ``landing.max_html_bytes``) and finds its PDF link by
the conventions repositories and publishers use, best first:

1. ``citation_pdf_url`` (Highwire / Google Scholar tags: DSpace, OJS, EPrints, Pure, Zenodo, journals)
2. ``bepress_citation_pdf_url`` (Digital Commons)
3. ``eprints.document_url`` (EPrints)
4. ``<link rel="alternate" type="application/pdf">``
5. ``dc.identifier`` / ``dcterms.identifier`` meta ending in ``.pdf``
6. DSpace ``/bitstream/`` anchors, OJS ``/article/download/`` anchors, OJS galley links (``obj_galley_link
   pdf``, an HTML viewer page that links the download), anchors whose text or file name says PDF.

Relative links resolve against ``<base href>`` or the page's final URL. A found link is fetched by the
streaming engine (resume, validation, dedupe, the ledger's exactly-once effects); when it answers HTML
again, that HTML (which the engine keeps when small) is the next hop: at most ``landing.max_hops``
HTML pages per candidate, never the same page twice, and each hop costs exactly one request.

Every request goes through the run's polite client (robots, address guard, rate limits, breakers,
retries). Bot challenges, 403, 429 and pages without a link end with distinct reasons
(`walls`); nothing is circumvented.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx
from selectolax.lexbor import LexborHTMLParser

from dtkg_assets.core.errors import DtkgError, Reason
from dtkg_assets.core.http_errors import error_for_status, recorded_attempt
from dtkg_assets.core.ledger.queries import redirects_from_host_since
from dtkg_assets.core.ledger.states import TRANSITIONS, State
from dtkg_assets.core.retrying import retrying
from dtkg_assets.core.settings import Settings
from dtkg_assets.core.types import EffectType, FetchHooks, FetchResult, HttpAttempt, NullHooks, Stage
from dtkg_assets.core.walls import challenge_marker, record_challenge, refusal_error
from dtkg_assets.core.works import candidate_kind, doi_url

HTML_ACCEPT = "text/html,application/xhtml+xml;q=0.9,*/*;q=0.5"
# Links tried per HTML page when the best one fails without answering HTML (404, not a PDF …).
MAX_LINKS_PER_PAGE = 3

# (via, rank): lower rank is better.
_META_CONVENTIONS: tuple[tuple[str, str], ...] = (
    ("citation_pdf_url", "citation_pdf_url"),
    ("bepress_citation_pdf_url", "bepress_citation_pdf_url"),
    ("eprints.document_url", "eprints.document_url"),
)
_DC_IDENTIFIERS = ("dc.identifier", "dcterms.identifier", "dc.identifier.uri", "citation_fulltext_url")
_PDF_WORD = re.compile(r"\bpdf\b", re.IGNORECASE)
_DOWNLOAD_WORD = re.compile(r"\b(download|full[\s-]?text)\b", re.IGNORECASE)


@dataclass(frozen=True)
class PdfLink:
    url: str
    via: str  # the convention that found it
    rank: int


def _clean(url: str | None) -> str | None:
    if not url:
        return None
    url = url.strip()
    if not url or url.startswith("#"):
        return None
    return url


def _absolute(base: str, href: str) -> str | None:
    try:
        joined = urljoin(base, href)
        parts = urlsplit(joined)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", parts.query, ""))


def _path_is_pdf(url: str) -> bool:
    return urlsplit(url).path.lower().endswith(".pdf")


def find_pdf_links(html: bytes | str, page_url: str) -> list[PdfLink]:
    """Every PDF link of an HTML page, best convention first, absolute, without duplicates."""
    tree = LexborHTMLParser(html if isinstance(html, str) else html.decode("utf-8", errors="replace"))
    base = page_url
    base_node = tree.css_first("base[href]")
    if base_node is not None:
        href = _clean(base_node.attributes.get("href"))
        if href:
            base = urljoin(page_url, href)
    found: list[PdfLink] = []

    def add(href: str | None, via: str, rank: int) -> None:
        href = _clean(href)
        if href is None:
            return
        url = _absolute(base, href)
        if url is not None:
            found.append(PdfLink(url, via, rank))

    metas: list[tuple[str, str]] = []
    for node in tree.css("meta"):
        attrs = node.attributes
        name = (attrs.get("name") or attrs.get("property") or "").strip().lower()
        content = attrs.get("content")
        if name and content:
            metas.append((name, content))
    for rank, (meta_name, via) in enumerate(_META_CONVENTIONS):
        for name, content in metas:
            if name == meta_name:
                add(content, via, rank)
    for node in tree.css("link[href]"):
        attrs = node.attributes
        rel = (attrs.get("rel") or "").lower().split()
        kind = (attrs.get("type") or "").lower()
        if "alternate" in rel and "pdf" in kind:
            add(attrs.get("href"), "link_alternate_pdf", 10)
    for name, content in metas:
        if name in _DC_IDENTIFIERS and _path_is_pdf(content.strip()):
            add(content, "dc.identifier", 20)
    for node in tree.css("a[href], area[href]"):
        attrs = node.attributes
        href = _clean(attrs.get("href"))
        if href is None or href.lower().startswith(("javascript:", "mailto:", "tel:", "data:")):
            continue
        classes = (attrs.get("class") or "").lower().split()
        text = " ".join((node.text(deep=True, separator=" ") or "").split())
        label = " ".join(filter(None, (text, attrs.get("title"), attrs.get("aria-label"))))
        lowered = href.lower()
        path = urlsplit(lowered).path
        if "/bitstream/" in path or "/bitstreams/" in path:
            # DSpace: the item's files; prefer ones that are PDFs.
            add(href, "dspace_bitstream", 30 if path.endswith(".pdf") or _PDF_WORD.search(label) else 36)
        elif "/article/download/" in path or "/preprint/download/" in path:
            add(href, "ojs_download", 31)
        elif "obj_galley_link" in classes and ("pdf" in classes or _PDF_WORD.search(label)):
            add(href, "ojs_galley", 33)  # the galley viewer: an HTML page that links the download
        elif "/viewcontent.cgi" in path:
            add(href, "bepress_viewcontent", 32)
        elif path.endswith(".pdf"):
            add(href, "pdf_filename", 40)
        elif _PDF_WORD.search(label) or "pdf" in classes or (attrs.get("type") or "").lower() == "application/pdf":
            add(href, "pdf_anchor", 42 if _DOWNLOAD_WORD.search(label) else 44)
    best: dict[str, PdfLink] = {}
    for link in sorted(found, key=lambda x: x.rank):
        key = canonical(link.url)
        if key not in best:
            best[key] = link
    return sorted(best.values(), key=lambda x: x.rank)


def canonical(url: str) -> str:
    """A URL's identity for loop detection: scheme and host lower-cased, no fragment, no trailing slash."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    path = parts.path.rstrip("/") or "/"
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), path, parts.query, ""))


# ---- fetching one HTML page ------------------------------------------------------------------


@dataclass
class Page:
    url: str
    final_url: str
    status: int
    content_type: str
    body: bytes
    truncated: bool  # the page was larger than the cap; only the first bytes were read

    @property
    def is_pdf(self) -> bool:
        return "pdf" in self.content_type.lower() or self.body[:1024].lstrip().startswith(b"%PDF-")


def fetch_page(client: httpx.Client, url: str, settings: Settings, attempts: list[HttpAttempt],
               landed: list[str] | None = None, hooks: FetchHooks | None = None) -> Page:
    """GET one HTML page (retrying network errors, 5xx and 429 as the engine does); raise a reasoned
    `DtkgError` for refusals (bot challenge, forbidden, rate limited) and other failures. The URL
    that answered (after redirects) is appended to `landed`, refusals included. Each attempt runs in
    `hooks.network()`, as the engine's do."""
    cap = settings.landing.max_html_bytes
    hooks = hooks or NullHooks()
    for attempt in retrying(settings.http):
        with attempt, hooks.network(), recorded_attempt(attempts, "GET", url) as record, \
                client.stream("GET", url, headers={"Accept": HTML_ACCEPT}) as response:
            record.status = response.status_code
            if landed is not None:
                landed.append(str(response.url))
            body = bytearray()
            truncated = False
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > cap:
                    truncated = True
                    break
            record.bytes = len(body)
            page = Page(url, str(response.url), response.status_code,
                        response.headers.get("content-type", ""), bytes(body[:cap]), truncated)
            _raise_for_page(page, response)
            return page
    raise AssertionError("unreachable: retrying re-raises the last error")


def _raise_for_page(page: Page, response: httpx.Response) -> None:
    status = page.status
    if 200 <= status < 300:
        return
    refusal = refusal_error(status, response.headers, page.body, page.final_url)
    if refusal is not None:
        if refusal.reason is Reason.BOT_CHALLENGE:
            record_challenge(response.request.extensions.get("dtkg_walls"), response.url.host)
        raise refusal
    raise error_for_status(response)


# ---- hooks for the second and later engine fetches of one job -----------------------------------


class _ContinuingHooks:
    """The job's hooks for a further engine fetch in the same lease: stage writes that the state
    machine would refuse (HEAD_DONE after STREAMING) are skipped; effects and progress go through."""

    def __init__(self, inner: FetchHooks) -> None:
        self.inner = inner

    def stage(self, stage: Stage, info: dict[str, Any]) -> None:
        lease = getattr(self.inner, "lease", None)
        current = getattr(lease, "target", None)
        if current is not None and (State(current), State(stage)) not in TRANSITIONS:
            return
        self.inner.stage(stage, info)

    def progress(self, bytes_on_disk: int) -> None:
        self.inner.progress(bytes_on_disk)

    def check_fence(self) -> None:
        self.inner.check_fence()

    def network(self) -> AbstractContextManager[None]:
        return self.inner.network()

    def effect(self, effect_type: EffectType, key: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        return self.inner.effect(effect_type, key, fn)


# ---- the resolver ------------------------------------------------------------------------------


class Resolver:
    """Fetches one candidate by its kind: PDF URLs through the engine (their HTML answers resolved),
    landing pages and the DOI as HTML first, the OpenAlex content API through `ContentApi`.

    Thread-safe like the engine it wraps; one per run."""

    def __init__(self, engine: Any, settings: Settings, content: Any | None = None) -> None:
        self.engine = engine
        self.client: httpx.Client | None = getattr(engine, "client", None)
        self.settings = settings
        self.content = content

    def fetch(
        self,
        url: str,
        *,
        source: str | None = None,
        work_id: str | None = None,
        hooks: FetchHooks | None = None,
        known_sha256: str | None = None,
        refresh: bool = False,
    ) -> FetchResult:
        hooks = hooks or NullHooks()
        kind = candidate_kind(source, url)
        landing = self.settings.landing
        if kind == "content":
            if self.content is None:
                return _failed(url, work_id, DtkgError(Reason.NO_CANDIDATES, "the OpenAlex content API is off"))
            result: FetchResult = self.content.fetch(url, work_id=work_id, hooks=hooks,
                                                     known_sha256=known_sha256, refresh=refresh)
            return result
        if kind == "pdf" or not landing.enabled:
            result = self.engine.fetch(url, work_id=work_id, hooks=hooks, known_sha256=known_sha256, refresh=refresh)
            if result.ok or result.html is None or not landing.enabled:
                if result.ok and result.via is None:
                    result.via = "direct" if result.decision != "already_complete" else result.via
                result.html = None
                return result
            return self._resolve(url, result.final_url or url, result.html, False, work_id, hooks, known_sha256,
                                 refresh, list(result.http_attempts), result)
        # A landing page or the DOI: read it as HTML.
        if kind == "doi":
            url = doi_url(url, landing.doi_resolver)
        attempts: list[HttpAttempt] = []
        landed: list[str] = []
        t0 = time.perf_counter()
        try:
            if work_id is not None and not refresh:
                probe = _already_complete(self.engine, work_id, known_sha256)  # from disk, no network
                if probe is not None:
                    return probe
            if self.client is None:
                raise DtkgError(Reason.OFFLINE, "no HTTP client to read landing pages with")
            page = fetch_page(self.client, url, self.settings, attempts, landed, hooks)
        except DtkgError as exc:
            result = _failed(url, work_id, exc)
            result.http_attempts = attempts
            result.elapsed_s = time.perf_counter() - t0
            return _served_by(result, kind, url, landed)
        if page.is_pdf:
            # The "landing page" is the PDF itself: fetch it as an artifact (one more request, rare).
            result = self.engine.fetch(page.final_url, work_id=work_id, hooks=hooks, known_sha256=known_sha256,
                                       refresh=refresh)
            result.http_attempts = attempts + result.http_attempts
            if result.ok:
                result.via = "direct"
            result.html = None
            return _served_by(result, kind, url, landed)
        return _served_by(self._resolve(url, page.final_url, page.body, page.truncated, work_id, hooks,
                                        known_sha256, refresh, attempts, None), kind, url, landed)

    def _resolve(
        self, url: str, page_url: str, html: bytes, truncated: bool, work_id: str | None, hooks: FetchHooks,
        known_sha256: str | None, refresh: bool, attempts: list[HttpAttempt], first: FetchResult | None,
    ) -> FetchResult:
        """Follow PDF links from `html` (hop 1, at `page_url`) through the engine, at most max_hops HTML pages."""
        max_hops = max(1, self.settings.landing.max_hops)
        visited = {canonical(url), canonical(page_url)}
        hops = 1
        landing_url = page_url
        continuing: FetchHooks = _ContinuingHooks(hooks) if first is not None else hooks
        last: FetchResult | None = None
        while True:
            links = [link for link in find_pdf_links(html, page_url) if canonical(link.url) not in visited]
            if not links:
                return self._no_link(url, work_id, page_url, html, truncated, hops, attempts, visited, last)
            next_html: tuple[str, bytes] | None = None
            for link in links[:MAX_LINKS_PER_PAGE]:
                visited.add(canonical(link.url))
                result = self.engine.fetch(link.url, work_id=work_id, hooks=continuing,
                                           known_sha256=known_sha256, refresh=refresh)
                continuing = _ContinuingHooks(hooks)
                attempts = attempts + result.http_attempts
                result.http_attempts = attempts
                result.hops, result.landing_url = hops, page_url
                if result.ok:
                    result.via = link.via
                    result.html = None
                    return result
                last = result
                if result.html is not None:
                    next_html = (result.final_url or link.url, result.html)
                    result.html = None
                    break
                if result.reason not in _TRY_NEXT_LINK:
                    result.detail = f"{link.via} link {link.url} on {page_url}: {result.detail or result.reason}"
                    return result
            if next_html is None:
                assert last is not None
                last.detail = f"no PDF link of {page_url} gave a PDF: {last.detail or last.reason}"
                return last
            if hops >= max_hops:
                return _failed(url, work_id, DtkgError(
                    Reason.NO_PDF_LINK,
                    f"{max_hops} HTML pages read ({landing_url} … {next_html[0]}) without reaching a PDF",
                ), attempts=attempts, hops=hops, landing_url=landing_url)
            page_url, html = next_html
            truncated = False
            visited.add(canonical(page_url))
            hops += 1
            landing_url = page_url

    def _no_link(self, url: str, work_id: str | None, page_url: str, html: bytes, truncated: bool, hops: int,
                 attempts: list[HttpAttempt], visited: set[str], last: FetchResult | None) -> FetchResult:
        marker = challenge_marker(html)
        if marker is not None:
            if self.client is not None:
                record_challenge(getattr(_policy(self.client), "walls", None), httpx.URL(page_url).host)
            err = DtkgError(Reason.BOT_CHALLENGE, f"{page_url} is a bot challenge ({marker}); not circumvented")
        elif truncated:
            err = DtkgError(Reason.PAGE_TOO_LARGE, f"{page_url} is larger than "
                            f"{self.settings.landing.max_html_bytes} bytes and links no PDF in what was read")
        else:
            all_links = find_pdf_links(html, page_url)
            why = "its PDF links lead back to pages already read" if all_links else "it links no PDF"
            err = DtkgError(Reason.NO_PDF_LINK, f"landing page {page_url}: {why}")
        return _failed(url, work_id, err, attempts=attempts, hops=hops, landing_url=page_url)


# Failures of a found link after which the page's next link is worth a try.
_TRY_NEXT_LINK = frozenset({
    Reason.HTTP_404.value, Reason.HTTP_410.value, Reason.HTTP_4XX.value, Reason.NOT_PDF.value,
    Reason.TOO_SMALL.value, Reason.FORBIDDEN.value, Reason.ROBOTS_DISALLOWED.value, Reason.HTML_PAGE.value,
})


def _served_by(result: FetchResult, kind: str, url: str, landed: list[str]) -> FetchResult:
    """A DOI's or landing page's result names the host that served the page when a redirect led
    elsewhere (the publisher a DOI resolves to, the repository behind a handle.net link): the host
    yield by host counts it under; the job's URL keeps the one it was given. A page served where it
    was asked for (or a resolver that answers itself: an unknown DOI) leaves the job's host as planned."""
    if kind not in ("doi", "landing") or not landed:
        return result
    host = (urlsplit(landed[-1]).hostname or "").lower()
    # A DOI's planned host is the public resolver's, whichever resolver a setting names: any redirect
    # counts. A landing page's planned host is its own: only another host counts.
    moved = canonical(landed[-1]) != canonical(url) if kind == "doi" else host != (urlsplit(url).hostname or "").lower()
    if host and moved:
        result.served_host = host
    return result


def _policy(client: httpx.Client) -> Any:
    from dtkg_assets.core.http import polite_transport

    transport = polite_transport(client)
    return transport.policy if transport is not None else None


def _already_complete(engine: Any, work_id: str, known_sha256: str | None) -> FetchResult | None:
    """The engine's no-network answer for a work whose file is already there, else None."""
    probe = getattr(engine, "_already_complete", None)
    if probe is None:
        return None
    result = FetchResult(status="failed", reason="", decision=None, url="", work_id=work_id)
    try:
        return result if probe(work_id, known_sha256, result) else None
    except (DtkgError, OSError, ValueError):
        return None


def _failed(url: str, work_id: str | None, exc: DtkgError, *, attempts: list[HttpAttempt] | None = None,
            hops: int = 0, landing_url: str | None = None) -> FetchResult:
    result = FetchResult(status="failed", reason=exc.reason.value, decision=None, url=url, work_id=work_id,
                         detail=exc.detail or None, http_status=exc.status, hops=hops, landing_url=landing_url)
    result.http_attempts = list(attempts or [])
    return result


def make_resolver(engine: Any, settings: Settings, ledger: Any | None = None) -> Resolver:
    """The run's resolver; the content API (when on) starts its daily budget from the ledger's record
    of today's content API downloads."""
    content = None
    if settings.landing.content_api and settings.openalex.api_key:
        from dtkg_assets.core.content_api import ContentApi, utc_day_start

        api = ContentApi(engine, settings)
        if ledger is not None:
            try:
                api.spent = redirects_from_host_since(ledger, api.host, utc_day_start(time.time()))
            except Exception:  # a reader without the table: start from zero
                api.spent = 0
        content = api
    return Resolver(engine, settings, content)
