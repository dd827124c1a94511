"""The bundled sample corpus: generated PDFs, OpenAlex-shaped work records and their faults.

`build_sample_corpus` writes ~36 valid PDFs (2 KB to ~3.5 MB) with fpdf2, byte-for-byte the same
on every run (fixed seed and creation date), and caches them behind a manifest. `sample_works`
turns them into OpenAlex-shaped records whose PDF URLs point at a local origin, and
`configure_origin` registers every path and fault on an `OriginServer`. `SampleCorpus.expected`
says what should happen to each work, so tests and the demo can check results.

The works cover the special cases of the product: a first candidate that 404s, HTML instead of a
PDF (as text/html and as application/pdf), two works with identical bytes, a work with no URL and
one with an ftp:// URL, plus a few recoverable server faults (truncation, reset, 503, weak ETag,
HEAD 405, redirects, ranges ignored).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from dtkg_assets.demo.origin import FaultMode, OriginServer

# Bump when generation changes, so cached corpora are rebuilt.
SAMPLE_VERSION = 1
N_FILES = 36
MIN_SIZE = 2_000
MAX_SIZE = 3_500_000
SEED = 20240101
_CREATED = datetime(2024, 1, 1, tzinfo=UTC)
_ID_BASE = 9_000_000_000

ExpectedStatus = Literal["stored", "deduped", "failed"]

# The HTML landing page served as text/html for one work.
LANDING_HTML = (
    b'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>Article landing page</title></head>\n'
    b"<body><h1>Sample article</h1><p>Download the PDF from the publisher's site.</p>\n"
    + b"<p>"
    + b"Abstract text. " * 200
    + b"</p>\n</body></html>\n"
)


@dataclass(frozen=True)
class ExpectedOutcome:
    """What should become of one sample work.

    ``status`` is the fetch status ("stored", "deduped", "failed"); ``reason`` is "ok" or a
    `Reason` value. ``input_problem`` marks works rejected when the input is read (no fetch).
    For the pair of works sharing bytes, whichever finishes second is "deduped": ``same_bytes_as``
    names the other work, and the order given assumes they are fetched in work-id order.
    """

    work_id: str
    status: ExpectedStatus
    reason: str
    sha256: str | None = None
    file: str | None = None
    input_problem: bool = False
    same_bytes_as: str | None = None
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("stored", "deduped")


@dataclass(frozen=True)
class _WorkSpec:
    work_id: str
    kind: str  # normal | second_candidate | html_text | html_pdf | shared | no_url | ftp
    file: str | None
    fault: FaultMode | None = None
    note: str = ""
    paths: tuple[str, ...] = ()  # origin paths of its candidates, in candidate order


@dataclass
class SampleCorpus:
    dir: Path
    files: dict[str, tuple[Path, str, int]]  # name -> (path, sha256, size)
    expected: dict[str, ExpectedOutcome] = field(default_factory=dict)  # work id -> outcome
    specs: list[_WorkSpec] = field(default_factory=list, repr=False)

    @property
    def work_ids(self) -> list[str]:
        return [spec.work_id for spec in self.specs]

    @property
    def fetchable_ids(self) -> list[str]:
        """Works that reach the downloader (everything but input problems)."""
        return [w for w, e in self.expected.items() if not e.input_problem]

    @property
    def ok_ids(self) -> list[str]:
        return [w for w, e in self.expected.items() if e.ok]

    @property
    def total_bytes(self) -> int:
        return sum(size for _, _, size in self.files.values())


# -- PDFs ----------------------------------------------------------------------------------


def _target_sizes() -> list[int]:
    """Geometric spread from MIN_SIZE to MAX_SIZE: many small files, a few MB-sized ones."""
    ratio = (MAX_SIZE / MIN_SIZE) ** (1 / (N_FILES - 1))
    return [int(MIN_SIZE * ratio**i) for i in range(N_FILES)]


def file_name(index: int) -> str:
    return f"paper-{index:02d}.pdf"


_WORDS = [
    "graph",
    "knowledge",
    "retrieval",
    "embedding",
    "transformer",
    "corpus",
    "citation",
    "ontology",
    "entity",
    "relation",
    "inference",
    "benchmark",
    "dataset",
    "protocol",
    "survey",
    "method",
    "result",
    "evidence",
    "model",
    "analysis",
    "sample",
]


def _make_pdf(index: int, target: int) -> bytes:
    from fpdf import FPDF  # imported lazily: generation is the only user

    rnd = random.Random(SEED * 1000 + index)
    pdf = FPDF()
    pdf.set_creation_date(_CREATED)
    pdf.set_title(f"Sample paper {index}")
    pdf.set_author("dtkg-assets sample corpus")
    pdf.add_page()
    pdf.set_font("helvetica", "B", 16)
    pdf.cell(0, 10, f"Sample paper {index:02d}", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("helvetica", size=10)
    words = max(40, min(target // 12, 1500))
    pdf.multi_cell(0, 5, " ".join(rnd.choice(_WORDS) for _ in range(words)))
    # Incompressible noise images make the big files big without slow text layout.
    remaining = target - 2_500 - words * 3
    if remaining > 4_000:
        from PIL import Image

        width = 512
        height = max(1, remaining // (width * 3))
        image = Image.frombytes("RGB", (width, height), rnd.randbytes(width * height * 3))
        pdf.add_page()
        pdf.image(image, x=10, y=10, w=190)
    return bytes(pdf.output())


def _manifest_key() -> dict[str, Any]:
    return {"version": SAMPLE_VERSION, "n": N_FILES, "min": MIN_SIZE, "max": MAX_SIZE, "seed": SEED}


def build_sample_corpus(dest: Path) -> SampleCorpus:
    """Generate (or reuse, when the manifest and files match) the sample PDFs under `dest`."""
    dest = Path(dest)
    pdf_dir = dest / "pdfs"
    manifest_path = dest / "manifest.json"
    files = _load_cached(manifest_path, pdf_dir)
    if files is None:
        pdf_dir.mkdir(parents=True, exist_ok=True)
        files = {}
        for index, target in enumerate(_target_sizes()):
            data = _make_pdf(index, target)
            name = file_name(index)
            path = pdf_dir / name
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
            files[name] = (path, hashlib.sha256(data).hexdigest(), len(data))
        manifest = {**_manifest_key(), "files": {n: {"sha256": s, "size": z} for n, (_, s, z) in files.items()}}
        tmp_manifest = manifest_path.with_suffix(".tmp")
        tmp_manifest.write_text(json.dumps(manifest, indent=1, sort_keys=True))
        tmp_manifest.replace(manifest_path)
    corpus = SampleCorpus(dir=dest, files=files)
    corpus.specs = _work_plan(files)
    corpus.expected = _expected(corpus)
    return corpus


def _load_cached(manifest_path: Path, pdf_dir: Path) -> dict[str, tuple[Path, str, int]] | None:
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return None
    if any(manifest.get(k) != v for k, v in _manifest_key().items()):
        return None
    files: dict[str, tuple[Path, str, int]] = {}
    for name, info in manifest.get("files", {}).items():
        path = pdf_dir / name
        try:
            if path.stat().st_size != info["size"]:
                return None
        except OSError:
            return None
        files[name] = (path, info["sha256"], info["size"])
    return files if len(files) == N_FILES else None


# -- works ---------------------------------------------------------------------------------

# File indices with a special role (the rest are plain works, some with recoverable faults).
_SECOND_CANDIDATE = (5, 12, 19)
# Works whose only URL is a landing page that links the PDF (issue 11): how, and the pages it takes.
_LANDING: dict[int, str] = {3: "landing_meta", 10: "landing_anchor", 17: "landing_ojs"}
_HTML_PDF = 26
_SHARED = 31
_FAULTS: dict[int, tuple[str, FaultMode]] = {
    8: ("truncated once mid-body: resume", FaultMode(truncate_after=3_000)),
    15: ("503 with Retry-After: 1, then ok", FaultMode(status_sequence=[503], retry_after="1")),
    22: ("weak ETag only: no If-Range", FaultMode(validators="weak")),
    24: ("ranges ignored", FaultMode(ranges=False)),
    27: ("HEAD rejected with 405", FaultMode(head_status=405)),
    29: ("two redirect hops", FaultMode(redirects=2)),
    33: ("connection reset mid-body: resume", FaultMode(reset_after=1_000_000)),
}


def _wid(n: int) -> str:
    return f"W{_ID_BASE + n}"


def _work_plan(files: dict[str, tuple[Path, str, int]]) -> list[_WorkSpec]:
    specs: list[_WorkSpec] = []

    def add(
        kind: str, file: str | None, fault: FaultMode | None = None, note: str = "", paths: tuple[str, ...] = ()
    ) -> None:
        work_id = _wid(len(specs) + 1)
        if kind == "html_text":
            paths = (f"/landing/{work_id}.html",)
        specs.append(_WorkSpec(work_id, kind, file, fault, note, paths))

    special = {*_SECOND_CANDIDATE, _HTML_PDF, _SHARED, *_LANDING}
    for index in range(N_FILES):
        if index in special:
            continue
        note, fault = _FAULTS.get(index, ("", None))
        add("normal", file_name(index), fault, note, (f"/pdfs/{file_name(index)}",))
    for index in _SECOND_CANDIDATE:
        name = file_name(index)
        add("second_candidate", name, None, "first candidate 404s, second works", (f"/missing/{name}", f"/pdfs/{name}"))
    for index, kind in _LANDING.items():
        name = file_name(index)
        note = {
            "landing_meta": "only URL is a landing page with citation_pdf_url",
            "landing_anchor": "only URL is a landing page with a relative 'Download PDF' link under <base>",
            "landing_ojs": "OJS-style: article page -> galley viewer -> download (two HTML hops)",
        }[kind]
        add(kind, name, None, note, (f"/repo/{kind}/{name}",))
    add("html_text", None, note="only URL is an HTML landing page (text/html) without a PDF link")
    name = file_name(_HTML_PDF)
    add("html_pdf", name, None, "HTML page served as application/pdf", (f"/html/{name}",))
    name = file_name(_SHARED)
    add("shared", name, None, "same bytes as the next work, different URL", (f"/pdfs/{name}",))
    add("shared", name, None, "same bytes as the previous work, different URL", (f"/mirror/{name}",))
    add("no_url", None, note="no PDF URL anywhere")
    add("ftp", None, note="only URL has the ftp:// scheme")
    return specs


def _expected(corpus: SampleCorpus) -> dict[str, ExpectedOutcome]:
    out: dict[str, ExpectedOutcome] = {}
    shared = [s.work_id for s in corpus.specs if s.kind == "shared"]
    for spec in corpus.specs:
        sha = corpus.files[spec.file][1] if spec.file else None
        if spec.kind in ("normal", "second_candidate") or spec.kind.startswith("landing_"):
            out[spec.work_id] = ExpectedOutcome(spec.work_id, "stored", "ok", sha, spec.file, note=spec.note)
        elif spec.kind == "shared":
            first = spec.work_id == shared[0]
            out[spec.work_id] = ExpectedOutcome(
                spec.work_id,
                "stored" if first else "deduped",
                "ok",
                sha,
                spec.file,
                same_bytes_as=shared[1] if first else shared[0],
                note=spec.note,
            )
        elif spec.kind in ("html_text", "html_pdf"):
            # The HTML is read as a landing page; it links no PDF (the last candidate, its landing page
            # or its DOI, says so).
            out[spec.work_id] = ExpectedOutcome(spec.work_id, "failed", "no_pdf_link", note=spec.note)
        elif spec.kind == "no_url":
            out[spec.work_id] = ExpectedOutcome(
                spec.work_id, "failed", "no_candidates", input_problem=True, note=spec.note
            )
        else:
            out[spec.work_id] = ExpectedOutcome(
                spec.work_id, "failed", "unsupported_scheme", input_problem=True, note=spec.note
            )
    return out


def _location(pdf_url: str | None, landing: str, source: str, is_oa: bool = True) -> dict[str, Any]:
    return {
        "is_oa": is_oa,
        "landing_page_url": landing,
        "pdf_url": pdf_url,
        "source": {
            "id": "https://openalex.org/S9000000001",
            "display_name": source,
            "issn_l": None,
            "is_oa": True,
            "type": "repository",
        },
        "license": "cc-by",
        "version": "publishedVersion",
    }


def sample_works(corpus: SampleCorpus, base_url: str) -> list[dict[str, Any]]:
    """OpenAlex-shaped work records (modelled on W2741809807) pointing at `base_url`."""
    base_url = base_url.rstrip("/")
    works: list[dict[str, Any]] = []
    for n, spec in enumerate(corpus.specs, start=1):
        short = spec.work_id
        landing = f"{base_url}/landing/{short}.html"
        urls = [base_url + p for p in spec.paths]
        if spec.kind == "ftp":
            urls = [f"ftp://127.0.0.1/pub/{short}.pdf"]
        pdf_url: str | None = urls[-1] if urls and spec.kind != "html_text" else None
        best_url: str | None = urls[0] if urls and spec.kind != "html_text" else None
        if spec.kind == "html_text":
            best_url = pdf_url = urls[0]
        if spec.kind.startswith("landing_"):
            pdf_url, best_url = None, landing  # OpenAlex's oa_url is the landing page when no PDF URL is known
        if spec.kind == "second_candidate":
            locations = [
                _location(urls[0], landing, "Sample Preprint Server"),
                _location(urls[1], landing, "Sample Institutional Repository"),
            ]
            primary = _location(None, landing, "Sample Journal", is_oa=False)
            best = locations[0]
        elif spec.kind == "no_url":
            primary = _location(None, landing, "Sample Journal", is_oa=False)
            locations = [primary]
            best = None
        else:
            primary = _location(pdf_url, landing, "Sample Journal")
            locations = [primary]
            best = primary
        is_oa = best is not None
        if spec.kind in ("no_url", "ftp"):
            for location in locations:
                location["landing_page_url"] = None  # nothing to fetch at all: an input problem
        # The title is what the PDF says (the right-paper check reads it); works without a file say their kind.
        title = (f"Sample paper {_file_index(spec.file):02d}" if spec.file
                 else f"Sample paper {n:02d}: {spec.kind.replace('_', ' ')}")
        doi = f"https://doi.org/10.5555/dtkg.sample.{n:04d}" if spec.kind not in ("no_url", "ftp") else None
        works.append(
            {
                "id": f"https://openalex.org/{short}",
                "doi": doi,
                "title": title,
                "display_name": title,
                "publication_year": 2015 + n % 10,
                "publication_date": f"{2015 + n % 10}-0{1 + n % 9}-15",
                "ids": {
                    "openalex": f"https://openalex.org/{short}",
                    "doi": doi,
                },
                "language": "en",
                "type": "article",
                "open_access": {
                    "is_oa": is_oa,
                    "oa_status": "green" if is_oa else "closed",
                    "oa_url": best_url,
                    "any_repository_has_fulltext": is_oa,
                },
                "best_oa_location": best,
                "primary_location": primary,
                "locations": locations,
                "locations_count": len(locations),
                "has_content": {"pdf": is_oa and doi is not None, "grobid_xml": False},
                "authorships": [
                    {
                        "author_position": "first",
                        "author": {"id": f"https://openalex.org/A{_ID_BASE + n}", "display_name": f"Author {n}"},
                        "institutions": [],
                        "is_corresponding": True,
                    }
                ],
                "cited_by_count": (n * 37) % 500,
                "is_retracted": False,
                "is_paratext": False,
                "updated_date": "2024-01-01T00:00:00.000000",
                "created_date": "2024-01-01",
            }
        )
    return works


def configure_origin(origin: OriginServer, corpus: SampleCorpus, *, faults: bool = True) -> None:
    """Register every sample path on `origin`. With ``faults=False`` the recoverable faults of plain
    works are left out (for throughput measurements); the special cases stay."""
    for spec in corpus.specs:
        paths = spec.paths
        if spec.kind == "second_candidate":
            assert spec.file
            origin.add_file(paths[1], corpus.files[spec.file][0])  # paths[0] stays unknown: 404
        elif spec.kind == "html_text":
            origin.add(paths[0], LANDING_HTML, FaultMode(content_type="text/html; charset=utf-8"))
        elif spec.kind == "html_pdf":
            # An article page served as application/pdf (not a bot wall, which would be retried later).
            origin.add(paths[0], LANDING_HTML, FaultMode(content_type="application/pdf"))
        elif spec.kind.startswith("landing_"):
            assert spec.file
            _add_landing(origin, spec, corpus.files[spec.file][0])
        elif spec.file is not None:
            mode = spec.fault if (faults or spec.kind != "normal") else None
            for path in paths:
                origin.add_file(path, corpus.files[spec.file][0], _fresh(mode))
        # Landing pages of the other works: plain HTML, never a PDF candidate.
        landing = f"/landing/{spec.work_id}.html"
        if spec.kind != "html_text" and not spec.kind.startswith("landing_"):
            origin.add(landing, LANDING_HTML, FaultMode(content_type="text/html; charset=utf-8"))
    # The works' DOIs through the origin as resolver (DTKG_LANDING_DOI_RESOLVER=<origin>/doi/): each
    # redirects to its landing page, as doi.org does.
    for n, spec in enumerate(corpus.specs, start=1):
        if spec.kind not in ("no_url", "ftp"):
            origin.add(f"/doi/10.5555/dtkg.sample.{n:04d}", b"",
                       FaultMode(redirect_to=f"{origin.base_url}/landing/{spec.work_id}.html"))
    origin.add_robots()


def _file_index(name: str) -> int:
    return int(name.removeprefix("paper-").removesuffix(".pdf"))


_HTML_TYPE = "text/html; charset=utf-8"


def _landing_page(title: str, head: str = "", body: str = "") -> bytes:
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>{head}</head>\n'
        f"<body><h1>{title}</h1><p>Abstract of the sample article.</p>{body}</body></html>\n"
    ).encode()


def _add_landing(origin: OriginServer, spec: _WorkSpec, pdf: Path) -> None:
    """The landing page of a landing work (at /landing/<id>.html) and the pages behind it."""
    landing = f"/landing/{spec.work_id}.html"
    pdf_path = spec.paths[0]
    if spec.kind == "landing_meta":
        page = _landing_page("Sample article", head=f'<meta name="citation_pdf_url" content="{pdf_path}">')
        origin.add_file(pdf_path, pdf)
    elif spec.kind == "landing_anchor":
        directory, _, name = pdf_path.rpartition("/")
        page = _landing_page("Sample article", head=f'<base href="{directory}/">',
                             body=f'<p><a href="{name}">Download PDF</a></p>')
        origin.add_file(pdf_path, pdf, FaultMode(content_type="application/octet-stream",
                                                 headers={"Content-Disposition": f'attachment; filename="{name}"'}))
    else:  # landing_ojs: the galley link opens a viewer page whose download link is the PDF
        viewer = f"/ojs/article/view/{spec.work_id}/1"
        origin.add(viewer, _landing_page("PDF viewer", body=f'<a class="download" href="{pdf_path}">Download</a>'),
                   FaultMode(content_type=_HTML_TYPE))
        page = _landing_page("Sample article", body=f'<a class="obj_galley_link pdf" href="{viewer}">PDF</a>')
        origin.add_file(pdf_path, pdf)
    origin.add(landing, page, FaultMode(content_type=_HTML_TYPE))


def _fresh(mode: FaultMode | None) -> FaultMode | None:
    # FaultMode holds a list: give every origin its own copy.
    if mode is None:
        return None
    return FaultMode(**{**mode.__dict__, "status_sequence": list(mode.status_sequence)})


def write_sample_jsonl(works: Iterable[dict[str, Any]], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for work in works:
            fh.write(json.dumps(work, sort_keys=True) + "\n")
    tmp.replace(path)
    return path
