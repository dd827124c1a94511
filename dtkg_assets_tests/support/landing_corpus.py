"""A corpus of realistic landing pages for the landing-page tests, served by the test origin.

Each page is modelled on how the platform marks its PDF (DSpace, EPrints, OJS, Pure, a Highwire-style
journal, bepress Digital Commons, a generic "Download PDF" page, relative links with ``<base>``), plus
the ways it goes wrong: bot challenges (403 and 503, on their own host), a plain 403, a 429, a page
without a PDF link, a link to another HTML page, a loop, an oversized page, non-PDF bytes behind a PDF
link. Pages are written for these tests (no third-party markup is copied).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dtkg_assets_tests.support.origin import FaultMode, OriginServer

HTML = "text/html; charset=utf-8"


def page(title: str, head: str = "", body: str = "") -> bytes:
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>\n{head}\n</head>\n'
        f"<body><header><nav><a href=\"/\">Home</a> <a href=\"/about\">About</a></nav></header>\n"
        f"<main><h1>{title}</h1>\n<p>Abstract. We study the thing and report results.</p>\n{body}\n</main>\n"
        "<footer><a href=\"/privacy\">Privacy</a></footer></body></html>\n"
    ).encode()


CHALLENGE_403 = (
    b'<!DOCTYPE html><html lang="en-US"><head><title>Just a moment...</title>'
    b'<meta http-equiv="refresh" content="390"></head><body><div class="main-wrapper" role="main">'
    b'<h1>example.org</h1><h2 id="challenge-running">Checking if the site connection is secure</h2>'
    b'<form id="challenge-form" action="/?__cf_chl_f_tk=abc" method="POST"></form>'
    b"<script>window._cf_chl_opt={cvId: '3'};</script></div></body></html>"
)
CHALLENGE_503 = (
    b"<!DOCTYPE html><html><head><title>Attention Required</title></head><body>"
    b"<h1>Checking your browser before accessing the site.</h1>"
    b'<div class="g-recaptcha" data-sitekey="x"></div><p>This process is automatic.</p></body></html>'
)


@dataclass
class LandingWork:
    """One work of the corpus: its OpenAlex-shaped record and what must become of it."""

    work_id: str
    record: dict[str, Any]
    expect: str  # "stored" or a failure reason
    pdf: bytes | None = None  # the real PDF its page links (for stored works)
    via: str | None = None
    hops: int = 0
    html_paths: list[str] = field(default_factory=list)  # HTML pages it reads (each GET exactly once)
    pdf_path: str | None = None
    title: str = ""


def record(work_id: str, *, pdf_url: str | None = None, landing: str | None = None, doi: str | None = None,
           oa_url: str | None = None, title: str = "") -> dict[str, Any]:
    location = {"is_oa": True, "pdf_url": pdf_url, "landing_page_url": landing,
                "source": {"display_name": "Test repository"}}
    return {
        "id": f"https://openalex.org/{work_id}",
        "doi": f"https://doi.org/{doi}" if doi else None,
        "display_name": title or f"Landing work {work_id}",
        "title": title or f"Landing work {work_id}",
        "publication_year": 2024,
        "open_access": {"is_oa": True, "oa_url": oa_url},
        "best_oa_location": location,
        "primary_location": location,
        "locations": [location],
        "has_content": {"pdf": False},
    }


def build(origin: OriginServer, make_pdf: Callable[[int, int], bytes], challenge_host: str) -> list[LandingWork]:
    """Register every page on `origin` and return the works. Challenge pages are addressed through
    `challenge_host` (another loopback name) so their host can be deferred without touching the rest."""
    base = origin.base_url
    port = base.rsplit(":", 1)[1]
    walls = f"http://{challenge_host}:{port}"
    works: list[LandingWork] = []
    n = 0

    def pdf(path: str, ctype: str = "application/pdf", headers: dict[str, str] | None = None) -> bytes:
        nonlocal n
        n += 1
        body = make_pdf(20_000 + n * 997, 1000 + n)
        origin.add(path, body, FaultMode(content_type=ctype, headers=headers or {}))
        return body

    def html(path: str, body: bytes, **mode: Any) -> str:
        origin.add(path, body, FaultMode(content_type=mode.pop("content_type", HTML), **mode))
        return base + path

    def add(work: LandingWork) -> None:
        works.append(work)

    # -- pages that link a real PDF ------------------------------------------------------------
    # DSpace: only the bitstream anchor (no meta), with a relative href.
    body = pdf("/bitstream/handle/1234/56/thesis.pdf")
    url = html("/handle/1234/56", page("A DSpace thesis", body=(
        '<div class="file-list"><div class="file-wrapper"><a href="/bitstream/handle/1234/56/thesis.pdf'
        '?sequence=1&amp;isAllowed=y">thesis.pdf</a> (1.2 MB)</div></div>'
        '<a href="/handle/1234/56?show=full">Show full item record</a>')))
    add(LandingWork("W101", record("W101", landing=url), "stored", body, "dspace_bitstream", 1, ["/handle/1234/56"],
                    "/bitstream/handle/1234/56/thesis.pdf"))

    # EPrints: eprints.document_url meta and the ep_document_link anchor.
    body = pdf("/1234/1/eprint.pdf")
    url = html("/eprint/1234/", page("An EPrints record", head=(
        f'<meta name="eprints.eprintid" content="1234" />\n<meta name="eprints.document_url" '
        f'content="{base}/1234/1/eprint.pdf" />\n<meta name="eprints.type" content="article" />'), body=(
        '<a class="ep_document_link" href="/1234/1/eprint.pdf"><span>Download (1MB)</span></a>')))
    add(LandingWork("W102", record("W102", landing=url), "stored", body, "eprints.document_url", 1,
                    ["/eprint/1234/"], "/1234/1/eprint.pdf"))

    # OJS: the article page links the galley viewer (HTML), which links the download (2 hops);
    # the download is application/octet-stream with a Content-Disposition attachment.
    body = pdf("/ojs/index.php/jrnl/article/download/12/34/56", "application/octet-stream",
               {"Content-Disposition": 'attachment; filename="12-34-1-PB.pdf"'})
    html("/ojs/index.php/jrnl/article/view/12/34", page("OJS PDF viewer", body=(
        '<header class="header_view"><a href="/ojs/index.php/jrnl/article/view/12" class="return">Back</a>'
        '<a href="/ojs/index.php/jrnl/article/download/12/34/56" class="download" download>'
        '<span class="label">Download</span></a></header>'
        '<iframe src="/ojs/plugins/generic/pdfJsViewer/pdf.js/web/viewer.html?file=x"></iframe>')))
    url = html("/ojs/index.php/jrnl/article/view/12", page("An OJS article", body=(
        '<ul class="value galleys_links"><li><a class="obj_galley_link pdf" '
        'href="/ojs/index.php/jrnl/article/view/12/34">PDF</a></li></ul>')))
    add(LandingWork("W103", record("W103", landing=url), "stored", body, "ojs_download", 2,
                    ["/ojs/index.php/jrnl/article/view/12", "/ojs/index.php/jrnl/article/view/12/34"],
                    "/ojs/index.php/jrnl/article/download/12/34/56"))

    # Pure portal: an anchor to the file under /files/, its name ending .pdf.
    body = pdf("/ws/portalfiles/portal/998877/final_version.pdf")
    url = html("/en/publications/a-pure-record", page("A Pure research output", body=(
        '<ul class="documents"><li><a class="link document-link" '
        f'href="{base}/ws/portalfiles/portal/998877/final_version.pdf">'
        '<span>Final published version</span></a>, 420 KB</li></ul>')))
    add(LandingWork("W104", record("W104", landing=url), "stored", body, "pdf_filename", 1,
                    ["/en/publications/a-pure-record"], "/ws/portalfiles/portal/998877/final_version.pdf"))

    # Highwire-style journal: citation_pdf_url (absolute), PDF served with a charset parameter.
    body = pdf("/content/12/3/45.full.pdf", "application/pdf; charset=binary")
    url = html("/content/12/3/45", page("A journal article", head=(
        '<meta name="citation_title" content="A journal article" />\n'
        f'<meta name="citation_pdf_url" content="{base}/content/12/3/45.full.pdf" />\n'
        '<meta name="citation_doi" content="10.5555/hw.45" />'), body=(
        '<a href="/content/12/3/45.full.pdf+html">Full Text (PDF)</a>')))
    add(LandingWork("W105", record("W105", landing=url), "stored", body, "citation_pdf_url", 1,
                    ["/content/12/3/45"], "/content/12/3/45.full.pdf"))

    # bepress Digital Commons: bepress_citation_pdf_url; served as application/x-pdf.
    body = pdf("/cgi/viewcontent.cgi", "application/x-pdf")
    url = html("/etd/1001/", page("A Digital Commons thesis", head=(
        f'<meta name="bepress_citation_pdf_url" content="{base}/cgi/viewcontent.cgi?article=1001&amp;context=etd">'),
        body='<a id="pdf" href="/cgi/viewcontent.cgi?article=1001&amp;context=etd">Download</a>'))
    add(LandingWork("W106", record("W106", landing=url), "stored", body, "bepress_citation_pdf_url", 1,
                    ["/etd/1001/"], "/cgi/viewcontent.cgi"))

    # A generic page: a relative "Download PDF" anchor to a script, octet-stream with an attachment.
    body = pdf("/generic/getfile", "application/octet-stream",
               {"Content-Disposition": "attachment; filename=article.pdf"})
    url = html("/generic/article/7", page("A generic article page", body=(
        '<p><a href="../getfile?id=7" class="btn">Download PDF</a> <a href="/generic/cite?id=7">Cite</a></p>')))
    add(LandingWork("W107", record("W107", landing=url), "stored", body, "pdf_anchor", 1,
                    ["/generic/article/7"], "/generic/getfile"))

    # Relative links resolved against <base href>.
    body = pdf("/static/files/v2/paper.pdf")
    url = html("/records/88", page("A page with a base", head='<base href="/static/files/v2/">',
                                   body='<a href="paper.pdf">paper.pdf</a>'))
    add(LandingWork("W108", record("W108", landing=url), "stored", body, "pdf_filename", 1, ["/records/88"],
                    "/static/files/v2/paper.pdf"))

    # <link rel="alternate" type="application/pdf">.
    body = pdf("/alt/99.pdf")
    url = html("/alt/99", page("Alternate link",
                               head='<link rel="alternate" type="application/pdf" href="/alt/99.pdf">'))
    add(LandingWork("W109", record("W109", landing=url), "stored", body, "link_alternate_pdf", 1, ["/alt/99"],
                    "/alt/99.pdf"))

    # Dublin Core identifier ending in .pdf.
    body = pdf("/dc/files/42.pdf")
    url = html("/dc/42", page("Dublin Core record", head=(
        f'<meta name="DC.identifier" content="{base}/dc/files/42.pdf">'
        '<meta name="DC.identifier" content="https://hdl.handle.net/1/42">')))
    add(LandingWork("W110", record("W110", landing=url), "stored", body, "dc.identifier", 1, ["/dc/42"],
                    "/dc/files/42.pdf"))

    # Only a DOI: resolved through the configured resolver (the origin) to a landing page.
    body = pdf("/doi-landing/77.pdf")
    html("/doi-landing/77", page("A DOI landing",
                                 head=f'<meta name="citation_pdf_url" content="{base}/doi-landing/77.pdf">'))
    origin.add("/doi/10.5555/landing.77", b"", FaultMode(redirect_to=base + "/doi-landing/77"))
    add(LandingWork("W111", record("W111", doi="10.5555/landing.77"), "stored", body, "citation_pdf_url", 1,
                    ["/doi-landing/77"], "/doi-landing/77.pdf"))

    # A "pdf_url" that is really a landing page: the engine's GET of it is the one and only hop request.
    body = pdf("/direct-landing/5.pdf")
    url = html("/direct-landing/5", page("A landing page as pdf_url",
                                          head='<meta name="citation_pdf_url" content="/direct-landing/5.pdf">'))
    add(LandingWork("W112", record("W112", pdf_url=url), "stored", body, "citation_pdf_url", 1,
                    ["/direct-landing/5"], "/direct-landing/5.pdf"))

    # An oversized page whose PDF link is in its head: the first 2 MiB are enough.
    body = pdf("/big/ok.pdf")
    url = html("/big/ok", page("A big page", head='<meta name="citation_pdf_url" content="/big/ok.pdf">',
                               body="<p>" + "filler text " * 250_000 + "</p>"))
    add(LandingWork("W113", record("W113", landing=url), "stored", body, "citation_pdf_url", 1, ["/big/ok"],
                    "/big/ok.pdf"))

    # A direct PDF (octet-stream, attachment): no landing page, nothing extra.
    body = pdf("/direct/plain", "application/octet-stream", {"Content-Disposition": 'attachment; filename="p.pdf"'})
    add(LandingWork("W114", record("W114", pdf_url=base + "/direct/plain"), "stored", body, "direct", 0, [],
                    "/direct/plain"))

    # -- pages that end in a distinct failure ---------------------------------------------------
    html("/wall/403", CHALLENGE_403, body_status=403, headers={"cf-mitigated": "challenge", "Server": "cloudflare"})
    add(LandingWork("W201", record("W201", landing=walls + "/wall/403"), "bot_challenge"))
    html("/wall/503", CHALLENGE_503, body_status=503)
    add(LandingWork("W202", record("W202", landing=walls + "/wall/503"), "bot_challenge"))
    url = html("/refused/403", page("Forbidden", body="<p>You do not have access.</p>"), body_status=403)
    add(LandingWork("W203", record("W203", landing=url), "forbidden"))
    url = html("/slow-down/429", page("Too many requests"), body_status=429)
    add(LandingWork("W204", record("W204", landing=url), "rate_limited"))
    url = html("/nolink/1", page("A page without a PDF link", body='<a href="/nolink/about">About this item</a>'))
    add(LandingWork("W205", record("W205", landing=url), "no_pdf_link"))
    # A PDF-looking link that is another HTML page without a link.
    html("/chain/b", page("Another HTML page", body="<p>Please log in to read.</p>"))
    url = html("/chain/a", page("Links another page", head='<meta name="citation_pdf_url" content="/chain/b">'))
    add(LandingWork("W206", record("W206", landing=url), "no_pdf_link"))
    # A loop: a -> b -> a.
    html("/loop/b", page("Loop b", body='<a href="/loop/a">Download PDF</a>'))
    url = html("/loop/a", page("Loop a", body='<a href="/loop/b">Download PDF</a>'))
    add(LandingWork("W207", record("W207", landing=url), "no_pdf_link"))
    # An oversized page whose only link comes after the cap.
    url = html("/big/late", page("A big page",
                                 body="<p>" + "filler text " * 250_000 + '</p><a href="/late.pdf">PDF</a>'))
    pdf("/late.pdf")
    add(LandingWork("W208", record("W208", landing=url), "page_too_large"))
    # The link gives bytes that are no PDF (served as application/pdf): never stored.
    origin.add("/fake/paper.pdf", b"\x00\x01garbage that is not a PDF " * 200, FaultMode())
    url = html("/fake", page("Fake PDF", head='<meta name="citation_pdf_url" content="/fake/paper.pdf">'))
    add(LandingWork("W209", record("W209", landing=url), "not_pdf"))
    # A third challenge on the walled host: deferred without a request.
    html("/wall/again", CHALLENGE_403, body_status=403)
    add(LandingWork("W210", record("W210", landing=walls + "/wall/again"), "bot_challenge"))
    return works
