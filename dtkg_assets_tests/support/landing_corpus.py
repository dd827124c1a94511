"""A corpus of realistic landing pages for the landing-page tests, served by the test origin.

Each page is modelled on how the platform marks its PDF (DSpace 6 and 7, EPrints, OJS, Pure, a
Highwire-style journal, bepress Digital Commons, a generic "Download PDF" page, relative links with
``<base>``, a DOI through the resolver), plus the ways it goes wrong: bot challenges (403 and 503, on
their own host), a plain 403, a 429, a page without a PDF link, a link to another HTML page, a loop,
a chain longer than the hop limit, oversized pages, non-PDF bytes behind a PDF link (also as an
octet-stream attachment). Every PDF is a real one-page paper that names its work's title, so the
right-paper check can read it; one work's page links another paper's PDF (the planted mismatch).
Pages are written for these tests (no third-party markup is copied).
"""

from __future__ import annotations

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


def _pdf_string(text: str) -> bytes:
    return b"(" + text.encode("latin-1").replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)") + b")"


def paper(title: str, n: int) -> bytes:
    """A real one-page PDF (Helvetica text, an xref table, /Info title) whose first line and metadata
    are `title`: a few KiB, written directly because a PDF library takes ~0.1 s a page."""
    lines = [title, ""] + [f"Paragraph {n}.{i}: we describe the method and report the results." for i in range(30)]
    text = b"BT /F1 11 Tf 72 740 Td 14 TL " + b" ".join(_pdf_string(line) + b" Tj T*" for line in lines) + b" ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 4 0 R >> >> "
        b"/Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Length %d >>\nstream\n" % len(text) + text + b"\nendstream",
        b"<< /Title " + _pdf_string(title) + b" /Producer (dtkg landing corpus) >>",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for i, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info 6 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


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
    pdf_path: str | None = None  # the link it fetches as an artifact (the PDF, or what failed to be one)
    resolver_path: str | None = None  # a resolver's path (the DOI's, a handle's: one redirect before the page)
    wrong_paper: bool = False  # the planted mismatch: its page links another paper's PDF

    @property
    def paths(self) -> list[str]:
        """Every origin path this work asks for; no two works share one."""
        return [p for p in (self.resolver_path, *self.html_paths, self.pdf_path) if p]


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


def build(origin: OriginServer, challenge_host: str) -> list[LandingWork]:
    """Register every page on `origin` and return the works. Challenge pages are addressed through
    `challenge_host` (another loopback name) so their host can be deferred without touching the rest;
    the DOI's resolver sends its work there too, so yield by host shows the host that served the page."""
    base = origin.base_url
    port = base.rsplit(":", 1)[1]
    walls = f"http://{challenge_host}:{port}"
    works: list[LandingWork] = []
    n = 0

    def pdf(path: str, title: str, ctype: str = "application/pdf", headers: dict[str, str] | None = None) -> bytes:
        nonlocal n
        n += 1
        body = paper(title, n)
        origin.add(path, body, FaultMode(content_type=ctype, headers=headers or {}))
        return body

    def html(path: str, body: bytes, **mode: Any) -> str:
        origin.add(path, body, FaultMode(content_type=mode.pop("content_type", HTML), **mode))
        return base + path

    def add(work: LandingWork) -> None:
        work.record["display_name"] = work.record["title"] = TITLES.get(work.work_id, work.record["title"])
        works.append(work)

    # -- pages that link a real PDF ------------------------------------------------------------
    # DSpace 6 (JSPUI/XMLUI): only the bitstream anchor (no meta), with a relative href.
    body = pdf("/bitstream/handle/1234/56/thesis.pdf", TITLES["W101"])
    url = html("/handle/1234/56", page("A DSpace thesis", body=(
        '<div class="file-list"><div class="file-wrapper"><a href="/bitstream/handle/1234/56/thesis.pdf'
        '?sequence=1&amp;isAllowed=y">thesis.pdf</a> (1.2 MB)</div></div>'
        '<a href="/handle/1234/56?show=full">Show full item record</a>')))
    add(LandingWork("W101", record("W101", landing=url), "stored", body, "dspace_bitstream", 1, ["/handle/1234/56"],
                    "/bitstream/handle/1234/56/thesis.pdf"))

    # EPrints: eprints.document_url meta and the ep_document_link anchor.
    body = pdf("/1234/1/eprint.pdf", TITLES["W102"])
    url = html("/eprint/1234/", page("An EPrints record", head=(
        f'<meta name="eprints.eprintid" content="1234" />\n<meta name="eprints.document_url" '
        f'content="{base}/1234/1/eprint.pdf" />\n<meta name="eprints.type" content="article" />'), body=(
        '<a class="ep_document_link" href="/1234/1/eprint.pdf"><span>Download (1MB)</span></a>')))
    add(LandingWork("W102", record("W102", landing=url), "stored", body, "eprints.document_url", 1,
                    ["/eprint/1234/"], "/1234/1/eprint.pdf"))

    # OJS: the article page links the galley viewer (HTML), which links the download (2 hops);
    # the download is application/octet-stream with a Content-Disposition attachment.
    body = pdf("/ojs/index.php/jrnl/article/download/12/34/56", TITLES["W103"], "application/octet-stream",
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
    body = pdf("/ws/portalfiles/portal/998877/final_version.pdf", TITLES["W104"])
    url = html("/en/publications/a-pure-record", page("A Pure research output", body=(
        '<ul class="documents"><li><a class="link document-link" '
        f'href="{base}/ws/portalfiles/portal/998877/final_version.pdf">'
        '<span>Final published version</span></a>, 420 KB</li></ul>')))
    add(LandingWork("W104", record("W104", landing=url), "stored", body, "pdf_filename", 1,
                    ["/en/publications/a-pure-record"], "/ws/portalfiles/portal/998877/final_version.pdf"))

    # Highwire-style journal: citation_pdf_url (absolute), PDF served with a charset parameter.
    body = pdf("/content/12/3/45.full.pdf", TITLES["W105"], "application/pdf; charset=binary")
    url = html("/content/12/3/45", page("A journal article", head=(
        '<meta name="citation_title" content="A journal article" />\n'
        f'<meta name="citation_pdf_url" content="{base}/content/12/3/45.full.pdf" />\n'
        '<meta name="citation_doi" content="10.5555/hw.45" />'), body=(
        '<a href="/content/12/3/45.full.pdf+html">Full Text (PDF)</a>')))
    add(LandingWork("W105", record("W105", landing=url), "stored", body, "citation_pdf_url", 1,
                    ["/content/12/3/45"], "/content/12/3/45.full.pdf"))

    # bepress Digital Commons: bepress_citation_pdf_url; served as application/x-pdf.
    body = pdf("/cgi/viewcontent.cgi", TITLES["W106"], "application/x-pdf")
    url = html("/etd/1001/", page("A Digital Commons thesis", head=(
        f'<meta name="bepress_citation_pdf_url" content="{base}/cgi/viewcontent.cgi?article=1001&amp;context=etd">'),
        body='<a id="pdf" href="/cgi/viewcontent.cgi?article=1001&amp;context=etd">Download</a>'))
    add(LandingWork("W106", record("W106", landing=url), "stored", body, "bepress_citation_pdf_url", 1,
                    ["/etd/1001/"], "/cgi/viewcontent.cgi"))

    # A generic page: a relative "Download PDF" anchor to a script, octet-stream with an attachment.
    body = pdf("/generic/getfile", TITLES["W107"], "application/octet-stream",
               {"Content-Disposition": "attachment; filename=article.pdf"})
    url = html("/generic/article/7", page("A generic article page", body=(
        '<p><a href="../getfile?id=7" class="btn">Download PDF</a> <a href="/generic/cite?id=7">Cite</a></p>')))
    add(LandingWork("W107", record("W107", landing=url), "stored", body, "pdf_anchor", 1,
                    ["/generic/article/7"], "/generic/getfile"))

    # Relative links resolved against <base href>.
    body = pdf("/static/files/v2/paper.pdf", TITLES["W108"])
    url = html("/records/88", page("A page with a base", head='<base href="/static/files/v2/">',
                                   body='<a href="paper.pdf">paper.pdf</a>'))
    add(LandingWork("W108", record("W108", landing=url), "stored", body, "pdf_filename", 1, ["/records/88"],
                    "/static/files/v2/paper.pdf"))

    # <link rel="alternate" type="application/pdf">.
    body = pdf("/alt/99.pdf", TITLES["W109"])
    url = html("/alt/99", page("Alternate link",
                               head='<link rel="alternate" type="application/pdf" href="/alt/99.pdf">'))
    add(LandingWork("W109", record("W109", landing=url), "stored", body, "link_alternate_pdf", 1, ["/alt/99"],
                    "/alt/99.pdf"))

    # Dublin Core identifier ending in .pdf.
    body = pdf("/dc/files/42.pdf", TITLES["W110"])
    url = html("/dc/42", page("Dublin Core record", head=(
        f'<meta name="DC.identifier" content="{base}/dc/files/42.pdf">'
        '<meta name="DC.identifier" content="https://hdl.handle.net/1/42">')))
    add(LandingWork("W110", record("W110", landing=url), "stored", body, "dc.identifier", 1, ["/dc/42"],
                    "/dc/files/42.pdf"))

    # Only a DOI: the configured resolver (the origin, as 127.0.0.1) redirects to the publisher's landing
    # page on another host (`challenge_host`), whose citation_pdf_url points back to 127.0.0.1.
    body = pdf("/doi-landing/77.pdf", TITLES["W111"])
    html("/doi-landing/77", page("A DOI landing",
                                 head=f'<meta name="citation_pdf_url" content="{base}/doi-landing/77.pdf">'))
    origin.add("/doi/10.5555/landing.77", b"", FaultMode(redirect_to=walls + "/doi-landing/77"))
    add(LandingWork("W111", record("W111", doi="10.5555/landing.77"), "stored", body, "citation_pdf_url", 1,
                    ["/doi-landing/77"], "/doi-landing/77.pdf", resolver_path="/doi/10.5555/landing.77"))

    # A "pdf_url" that is really a landing page: the engine's GET of it is the one and only hop request.
    body = pdf("/direct-landing/5.pdf", TITLES["W112"])
    url = html("/direct-landing/5", page("A landing page as pdf_url",
                                          head='<meta name="citation_pdf_url" content="/direct-landing/5.pdf">'))
    add(LandingWork("W112", record("W112", pdf_url=url), "stored", body, "citation_pdf_url", 1,
                    ["/direct-landing/5"], "/direct-landing/5.pdf"))

    # An oversized page whose PDF link is in its head: the first 2 MiB are enough.
    body = pdf("/big/ok.pdf", TITLES["W113"])
    url = html("/big/ok", page("A big page", head='<meta name="citation_pdf_url" content="/big/ok.pdf">',
                               body="<p>" + "filler text " * 250_000 + "</p>"))
    add(LandingWork("W113", record("W113", landing=url), "stored", body, "citation_pdf_url", 1, ["/big/ok"],
                    "/big/ok.pdf"))

    # A direct PDF (octet-stream, attachment): no landing page, nothing extra.
    body = pdf("/direct/plain", TITLES["W114"], "application/octet-stream",
               {"Content-Disposition": 'attachment; filename="p.pdf"'})
    add(LandingWork("W114", record("W114", pdf_url=base + "/direct/plain"), "stored", body, "direct", 0, [],
                    "/direct/plain"))

    # The planted mismatch: a journal page whose citation_pdf_url gives another paper's PDF. It is a
    # real PDF and is stored; the right-paper check flags it (and deletes nothing).
    body = pdf("/content/99/1/2.full.pdf", "Transformer benchmarks for ontology alignment")
    url = html("/content/99/1/2", page("A journal article",
                                       head=f'<meta name="citation_pdf_url" content="{base}/content/99/1/2.full.pdf">'))
    add(LandingWork("W115", record("W115", landing=url), "stored", body, "citation_pdf_url", 1,
                    ["/content/99/1/2"], "/content/99/1/2.full.pdf", wrong_paper=True))

    # DSpace 7: the item page's file section links /bitstreams/<uuid>/download (octet-stream, attachment).
    body = pdf("/bitstreams/0b6c1f2e-8d3a-4f55-9a0e-3c7d2b1a9e41/download", TITLES["W116"],
               "application/octet-stream", {"Content-Disposition": 'attachment; filename="article.pdf"'})
    url = html("/items/5e1f0c2a-1b2c-4d3e-8f9a-0b1c2d3e4f5a", page("A DSpace 7 item", body=(
        '<ds-file-download-link><a href="/bitstreams/0b6c1f2e-8d3a-4f55-9a0e-3c7d2b1a9e41/download" '
        'class="dont-break-out">article.pdf</a></ds-file-download-link> (812.4 KB)')))
    add(LandingWork("W116", record("W116", landing=url), "stored", body, "dspace_bitstream", 1,
                    ["/items/5e1f0c2a-1b2c-4d3e-8f9a-0b1c2d3e4f5a"],
                    "/bitstreams/0b6c1f2e-8d3a-4f55-9a0e-3c7d2b1a9e41/download"))

    # An oa_url that is a doi.org link (OpenAlex's oa_url when it knows only a landing page): the DOI,
    # through the configured resolver, never doi.org itself.
    body = pdf("/oa-landing/117.pdf", TITLES["W117"])
    html("/oa-landing/117", page("An OA landing page",
                                 head='<meta name="citation_pdf_url" content="/oa-landing/117.pdf">'))
    origin.add("/doi/10.5555/oa.117", b"", FaultMode(redirect_to=base + "/oa-landing/117"))
    add(LandingWork("W117", record("W117", oa_url="https://doi.org/10.5555/oa.117"), "stored", body,
                    "citation_pdf_url", 1, ["/oa-landing/117"], "/oa-landing/117.pdf",
                    resolver_path="/doi/10.5555/oa.117"))

    # A handle-style landing_page_url that redirects to the repository on another host (`challenge_host`):
    # the work counts under the repository's host.
    body = pdf("/repo/items/118.pdf", TITLES["W118"])
    html("/repo/items/118", page("A repository item",
                                 head=f'<meta name="citation_pdf_url" content="{base}/repo/items/118.pdf">'))
    url = base + "/hdl/1234/118"
    origin.add("/hdl/1234/118", b"", FaultMode(redirect_to=walls + "/repo/items/118"))
    add(LandingWork("W118", record("W118", landing=url), "stored", body, "citation_pdf_url", 1,
                    ["/repo/items/118"], "/repo/items/118.pdf", resolver_path="/hdl/1234/118"))

    # -- pages that end in a distinct failure ---------------------------------------------------
    html("/wall/403", CHALLENGE_403, body_status=403, headers={"cf-mitigated": "challenge", "Server": "cloudflare"})
    add(LandingWork("W201", record("W201", landing=walls + "/wall/403"), "bot_challenge", html_paths=["/wall/403"]))
    html("/wall/503", CHALLENGE_503, body_status=503)
    add(LandingWork("W202", record("W202", landing=walls + "/wall/503"), "bot_challenge", html_paths=["/wall/503"]))
    url = html("/refused/403", page("Forbidden", body="<p>You do not have access.</p>"), body_status=403)
    add(LandingWork("W203", record("W203", landing=url), "forbidden", html_paths=["/refused/403"]))
    url = html("/slow-down/429", page("Too many requests"), body_status=429)
    add(LandingWork("W204", record("W204", landing=url), "rate_limited", html_paths=["/slow-down/429"]))
    url = html("/nolink/1", page("A page without a PDF link", body='<a href="/nolink/about">About this item</a>'))
    add(LandingWork("W205", record("W205", landing=url), "no_pdf_link", html_paths=["/nolink/1"]))
    # A PDF-looking link that is another HTML page without a link.
    html("/chain/b", page("Another HTML page", body="<p>Please log in to read.</p>"))
    url = html("/chain/a", page("Links another page", head='<meta name="citation_pdf_url" content="/chain/b">'))
    add(LandingWork("W206", record("W206", landing=url), "no_pdf_link", html_paths=["/chain/a", "/chain/b"]))
    # A loop: a -> b -> a.
    html("/loop/b", page("Loop b", body='<a href="/loop/a">Download PDF</a>'))
    url = html("/loop/a", page("Loop a", body='<a href="/loop/b">Download PDF</a>'))
    add(LandingWork("W207", record("W207", landing=url), "no_pdf_link", html_paths=["/loop/a", "/loop/b"]))
    # An oversized page whose only link comes after the cap.
    url = html("/big/late", page("A big page",
                                 body="<p>" + "filler text " * 250_000 + '</p><a href="/late.pdf">PDF</a>'))
    pdf("/late.pdf", "A PDF past the size cap")
    add(LandingWork("W208", record("W208", landing=url), "page_too_large", html_paths=["/big/late"]))
    # The link gives bytes that are no PDF (served as application/pdf): never stored.
    origin.add("/fake/paper.pdf", b"\x00\x01garbage that is not a PDF " * 200, FaultMode())
    url = html("/fake", page("Fake PDF", head='<meta name="citation_pdf_url" content="/fake/paper.pdf">'))
    add(LandingWork("W209", record("W209", landing=url), "not_pdf", html_paths=["/fake"], pdf_path="/fake/paper.pdf"))
    # A third challenge on the walled host: deferred without a request.
    html("/wall/again", CHALLENGE_403, body_status=403)
    add(LandingWork("W210", record("W210", landing=walls + "/wall/again"), "bot_challenge", html_paths=["/wall/again"]))
    # Three HTML pages before the PDF: past the two-hop limit, the third page is never asked for.
    pdf("/hops/paper.pdf", "A PDF three pages away")
    html("/hops/3", page("Third page", head='<meta name="citation_pdf_url" content="/hops/paper.pdf">'))
    html("/hops/2", page("Second page", body='<a href="/hops/3">Download PDF</a>'))
    url = html("/hops/1", page("First page", body='<a href="/hops/2">Download PDF</a>'))
    # (The second page's link is asked for: it might have been the PDF. It answers HTML, not read for links.)
    add(LandingWork("W211", record("W211", landing=url), "no_pdf_link", html_paths=["/hops/1", "/hops/2"],
                    pdf_path="/hops/3"))
    # An octet-stream attachment named .pdf whose bytes are no PDF: rejected by validation, never stored.
    origin.add("/attach/42", b"PK\x03\x04 a zip archive, not a PDF " * 100,
               FaultMode(content_type="application/octet-stream",
                         headers={"Content-Disposition": 'attachment; filename="paper.pdf"'}))
    url = html("/attach", page("Attachment", body='<a href="/attach/42">Download PDF</a>'))
    add(LandingWork("W212", record("W212", landing=url), "not_pdf", html_paths=["/attach"], pdf_path="/attach/42"))
    return works


# The title each work's record carries; its PDF names it (but for W115, the planted mismatch).
TITLES: dict[str, str] = {
    "W101": "Sediment transport in braided river channels",
    "W102": "Open peer review in a repository of preprints",
    "W103": "Soil carbon under rotational grazing",
    "W104": "Measuring research data reuse at a university",
    "W105": "Ion channel gating in cardiac myocytes",
    "W106": "Oral histories of a mining town",
    "W107": "Heat pumps in cold climate housing",
    "W108": "Relative links and the persistence of web archives",
    "W109": "Alternate formats of scholarly articles",
    "W110": "Dublin Core metadata quality in aggregators",
    "W111": "Persistent identifiers and the landing page",
    "W112": "When a PDF link is a landing page",
    "W113": "Oversized landing pages and where links hide",
    "W114": "Direct downloads from institutional repositories",
    "W115": "Frog populations in alpine lakes",
    "W116": "Bitstreams in the seventh DSpace",
    "W117": "Gold open access without a PDF link",
    "W118": "Handles that lead to another host",
}
