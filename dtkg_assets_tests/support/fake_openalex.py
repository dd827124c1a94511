"""A small real HTTP fake of OpenAlex's ``/works`` endpoint on 127.0.0.1.

Serves real-shaped work records (modelled on the public, CC0 record W2741809807) with cursor paging
(``cursor=*`` then ``meta.next_cursor``), answers one page request with 429 + Retry-After when asked,
serves ``/works/W…`` and ``/works/doi:…`` lookups, and checks the ``api_key`` (401 missing, 403 wrong)
while recording every request's parameters, including ``mailto``.
"""

from __future__ import annotations

import base64
import copy
import http.server
import json
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

# Shape of https://api.openalex.org/works/W2741809807 (trimmed to the fields the product reads plus a few).
W2741809807: dict[str, Any] = {
    "id": "https://openalex.org/W2741809807",
    "doi": "https://doi.org/10.7717/peerj.4375",
    "title": "The state of OA: a large-scale analysis of the prevalence and impact of Open Access articles",
    "display_name": "The state of OA: a large-scale analysis of the prevalence and impact of Open Access articles",
    "publication_year": 2018,
    "publication_date": "2018-02-13",
    "type": "article",
    "ids": {"openalex": "https://openalex.org/W2741809807", "doi": "https://doi.org/10.7717/peerj.4375"},
    "language": "en",
    "primary_location": {
        "is_oa": True,
        "landing_page_url": "https://doi.org/10.7717/peerj.4375",
        "pdf_url": "https://peerj.com/articles/4375.pdf",
        "source": {"id": "https://openalex.org/S1983995261", "display_name": "PeerJ", "type": "journal"},
        "license": "cc-by",
        "version": "publishedVersion",
    },
    "open_access": {
        "is_oa": True,
        "oa_status": "gold",
        "oa_url": "https://peerj.com/articles/4375.pdf",
        "any_repository_has_fulltext": True,
    },
    "best_oa_location": {
        "is_oa": True,
        "landing_page_url": "https://doi.org/10.7717/peerj.4375",
        "pdf_url": "https://peerj.com/articles/4375.pdf",
        "source": {"id": "https://openalex.org/S1983995261", "display_name": "PeerJ", "type": "journal"},
        "license": "cc-by",
        "version": "publishedVersion",
    },
    "locations": [
        {
            "is_oa": True,
            "landing_page_url": "https://doi.org/10.7717/peerj.4375",
            "pdf_url": "https://peerj.com/articles/4375.pdf",
            "source": {"id": "https://openalex.org/S1983995261", "display_name": "PeerJ", "type": "journal"},
            "license": "cc-by",
            "version": "publishedVersion",
        },
        {
            "is_oa": True,
            "landing_page_url": "https://europepmc.org/articles/pmc5815332",
            "pdf_url": "https://europepmc.org/articles/pmc5815332?pdf=render",
            "source": {"id": "https://openalex.org/S4306400806", "display_name": "Europe PMC", "type": "repository"},
            "license": "cc-by",
            "version": "publishedVersion",
        },
        {
            "is_oa": False,
            "landing_page_url": "https://www.example-aggregator.org/record/4375",
            "pdf_url": "https://www.example-aggregator.org/record/4375.pdf",
            "source": None,
            "license": None,
            "version": None,
        },
    ],
    "authorships": [
        {
            "author_position": "first",
            "author": {"id": "https://openalex.org/A5048491430", "display_name": "Heather Piwowar"},
        },
        {
            "author_position": "middle",
            "author": {"id": "https://openalex.org/A5023888391", "display_name": "Jason Priem"},
        },
    ],
    "topics": [{"id": "https://openalex.org/T10102", "display_name": "scientometrics and bibliometrics research"}],
    "has_content": {"pdf": True, "grobid_xml": True},
    "cited_by_count": 1000,
    "updated_date": "2026-01-01T00:00:00.000000",
}


def make_work(n: int, pdf_base: str = "https://example.org/pdf") -> dict[str, Any]:
    """A real-shaped record with its own id, DOI and PDF URLs (``{pdf_base}/<id>.pdf``)."""
    work = copy.deepcopy(W2741809807)
    wid = f"W{9000000000 + n}"
    doi = f"10.5555/dtkg.{n}"
    pdf = f"{pdf_base}/{wid}.pdf"
    work["id"] = f"https://openalex.org/{wid}"
    work["doi"] = f"https://doi.org/{doi}"
    work["ids"] = {"openalex": work["id"], "doi": work["doi"]}
    work["title"] = work["display_name"] = f"Synthetic work {n}"
    work["publication_year"] = 2015 + n % 10
    for loc in (work["primary_location"], work["best_oa_location"], work["locations"][0]):
        loc["pdf_url"] = pdf
        loc["landing_page_url"] = work["doi"]
    work["locations"][1]["pdf_url"] = f"{pdf_base}/mirror/{wid}.pdf"
    work["open_access"]["oa_url"] = pdf
    return work


@dataclass
class FakeRequest:
    path: str
    params: dict[str, str]
    status: int


@dataclass
class FakeOpenAlex:
    works: list[dict[str, Any]]
    api_key: str = "test-key"
    # Answer the page with this index (0-based) with 429 once, with this Retry-After.
    throttle_page: int | None = 1
    retry_after: str = "1"
    requests: list[FakeRequest] = field(default_factory=list)
    _throttled: bool = False
    _server: http.server.ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeOpenAlex:
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (stdlib name)
                status, body, headers = fake._answer(self.path)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeOpenAlex:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def page_requests(self) -> list[FakeRequest]:
        return [r for r in self.requests if r.path == "/works"]

    def _answer(self, raw_path: str) -> tuple[int, Any, dict[str, str]]:
        split = urlsplit(raw_path)
        path = unquote(split.path)
        params = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        status, body, headers = self._route(path, params)
        with self._lock:
            self.requests.append(FakeRequest(path, params, status))
        return status, body, headers

    def _route(self, path: str, params: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
        key = params.get("api_key")
        if not key:
            return 401, {"error": "API key required"}, {}
        if key != self.api_key:
            return 403, {"error": "Invalid API key"}, {}
        if path == "/works":
            return self._page(params)
        if path.startswith("/works/"):
            return self._lookup(path[len("/works/") :])
        return 404, {"error": "not found"}, {}

    def _page(self, params: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
        try:
            per_page = int(params.get("per_page", "25"))
        except ValueError:
            return 400, {"error": "per_page must be an integer"}, {}
        if not 1 <= per_page <= 100:
            return 400, {"error": "per_page must be between 1 and 100"}, {}
        cursor = params.get("cursor")
        if cursor is None:
            return 400, {"error": "this fake only pages with cursors"}, {}
        offset = 0 if cursor == "*" else int(base64.urlsafe_b64decode(cursor.encode()).decode())
        page_index = offset // per_page
        with self._lock:
            if page_index == self.throttle_page and not self._throttled:
                self._throttled = True
                return 429, {"error": "rate limited"}, {"Retry-After": self.retry_after}
        selected = self._filtered(params.get("filter"))
        results = selected[offset : offset + per_page]
        end = offset + len(results)
        next_cursor = base64.urlsafe_b64encode(str(end).encode()).decode() if results and end < len(selected) else None
        meta = {"count": len(selected), "db_response_time_ms": 3, "page": None, "per_page": per_page,
                "next_cursor": next_cursor}
        return 200, {"meta": meta, "results": results, "group_by": []}, {}

    def _filtered(self, filter_text: str | None) -> list[dict[str, Any]]:
        works = self.works
        for part in (filter_text or "").split(","):
            name, _, value = part.partition(":")
            if name == "publication_year":
                works = [w for w in works if str(w.get("publication_year")) == value]
            elif name == "open_access.is_oa":
                works = [w for w in works if str(w["open_access"]["is_oa"]).lower() == value]
        return works

    def _lookup(self, key: str) -> tuple[int, Any, dict[str, str]]:
        if key.lower().startswith("doi:") or key.lower().startswith("https://doi.org/"):
            doi = key.split(":", 1)[1] if key.lower().startswith("doi:") else key[len("https://doi.org/") :]
            for work in self.works:
                if (work.get("doi") or "").lower() == f"https://doi.org/{doi.lower()}":
                    return 200, work, {}
            return 404, {"error": "not found"}, {}
        for work in self.works:
            if work["id"].rsplit("/", 1)[-1].upper() == key.upper():
                return 200, work, {}
        return 404, {"error": "not found"}, {}
