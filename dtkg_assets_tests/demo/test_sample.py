"""The bundled sample corpus: deterministic PDFs, OpenAlex-shaped works, origin wiring."""

from __future__ import annotations

import hashlib
import json

import httpx

from dtkg_assets.core.works import candidate_kind, parse_work, read_jsonl
from dtkg_assets.demo.sample import (
    N_FILES,
    build_sample_corpus,
    configure_origin,
    sample_works,
    write_sample_jsonl,
)
from dtkg_assets_tests.support.origin import OriginServer


def test_pdfs_are_valid_and_span_small_to_mb(sample_corpus) -> None:
    assert len(sample_corpus.files) == N_FILES
    sizes = []
    for name, (path, sha, size) in sample_corpus.files.items():
        data = path.read_bytes()
        assert data.startswith(b"%PDF-") and data.endswith(b"%%EOF\n"), name
        assert len(data) == size and hashlib.sha256(data).hexdigest() == sha
        sizes.append(size)
    assert min(sizes) < 4_000 and max(sizes) > 3_000_000
    assert sum(1 for s in sizes if s > 1_000_000) >= 3 and sum(1 for s in sizes if s < 20_000) >= 10
    assert len({sha for _, sha, _ in sample_corpus.files.values()}) == N_FILES  # all distinct


def test_generation_is_deterministic_and_cached(sample_corpus, tmp_path) -> None:
    again = build_sample_corpus(tmp_path / "again")
    assert {n: (s, z) for n, (_, s, z) in again.files.items()} == {
        n: (s, z) for n, (_, s, z) in sample_corpus.files.items()
    }
    manifest = tmp_path / "again" / "manifest.json"
    mtime = manifest.stat().st_mtime_ns
    first = next(iter(again.files.values()))[0]
    pdf_mtime = first.stat().st_mtime_ns
    cached = build_sample_corpus(tmp_path / "again")  # reused, not regenerated
    assert manifest.stat().st_mtime_ns == mtime and first.stat().st_mtime_ns == pdf_mtime
    assert cached.expected == again.expected
    # A damaged file (wrong size) makes the cache invalid and the corpus is rebuilt.
    first.write_bytes(b"%PDF-broken")
    rebuilt = build_sample_corpus(tmp_path / "again")
    assert hashlib.sha256(first.read_bytes()).hexdigest() == rebuilt.files[first.name][1]
    assert rebuilt.files[first.name][1] == sample_corpus.files[first.name][1]


def test_expected_outcomes_cover_the_special_cases(sample_corpus) -> None:
    exp = sample_corpus.expected
    assert list(exp) == sample_corpus.work_ids and len(exp) == 40
    assert all(w.startswith("W9") and len(w) == 11 for w in exp)
    by_reason: dict[str, list[str]] = {}
    for e in exp.values():
        by_reason.setdefault(e.reason, []).append(e.work_id)
    assert len(by_reason["no_pdf_link"]) == 2  # HTML without a PDF link (text/html, and served as a PDF)
    assert sum(1 for s in sample_corpus.specs if s.kind.startswith("landing_")) == 3  # PDFs behind landing pages
    assert len(by_reason["no_candidates"]) == 1 and len(by_reason["unsupported_scheme"]) == 1
    assert sum(1 for e in exp.values() if e.status == "deduped") == 1
    deduped = next(e for e in exp.values() if e.status == "deduped")
    twin = exp[deduped.same_bytes_as]
    assert twin.status == "stored" and twin.sha256 == deduped.sha256 and twin.same_bytes_as == deduped.work_id
    assert sum(1 for s in sample_corpus.specs if s.kind == "second_candidate") == 3
    assert all(e.sha256 for e in exp.values() if e.ok)
    assert len(sample_corpus.ok_ids) == 36
    assert len(sample_corpus.fetchable_ids) == 38


def test_works_are_openalex_shaped_and_parse(sample_corpus, tmp_path) -> None:
    works = sample_works(sample_corpus, "http://127.0.0.1:8123/")
    assert len(works) == 40
    path = write_sample_jsonl(works, tmp_path / "works.jsonl")
    lines = path.read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == [w["id"] for w in works]
    w = works[0]
    for key in (
        "id",
        "doi",
        "title",
        "display_name",
        "publication_year",
        "type",
        "open_access",
        "best_oa_location",
        "primary_location",
        "locations",
        "has_content",
        "authorships",
        "cited_by_count",
    ):
        assert key in w
    assert w["id"].startswith("https://openalex.org/W9")
    assert w["best_oa_location"]["pdf_url"].startswith("http://127.0.0.1:8123/pdfs/")
    assert w["best_oa_location"]["source"]["display_name"]
    parsed = list(read_jsonl(path))
    records = {r.work_id: r for r in parsed if hasattr(r, "candidates")}
    problems = [p for p in parsed if not hasattr(p, "candidates")]
    assert {p.reason for p in problems} == {"no_candidates", "unsupported_scheme"}
    for spec in sample_corpus.specs:
        if spec.kind == "second_candidate":
            direct = [c for c in records[spec.work_id].candidates if c.source.endswith(".pdf_url")]
            assert [c.url.split("8123")[1] for c in direct] == list(spec.paths)
    for work in works:
        rec, _ = parse_work(work, "test")
        exp = sample_corpus.expected[work["id"].rsplit("/", 1)[1]]
        assert (rec is None) == exp.input_problem


def test_origin_serves_every_case(sample_corpus) -> None:
    with OriginServer() as origin:
        configure_origin(origin, sample_corpus, faults=False)
        works = sample_works(sample_corpus, origin.base_url)
        landing = {s.work_id for s in sample_corpus.specs if s.kind.startswith("landing_")}
        results: dict[str, tuple[int, str, bytes]] = {}
        with httpx.Client(timeout=30, follow_redirects=True, headers={"Accept-Encoding": "identity"}) as c:
            for work in works:
                rec, _ = parse_work(work, "test")
                if rec is None:
                    continue
                for cand in rec.candidates:
                    if candidate_kind(cand.source, cand.url) in ("doi", "content"):
                        continue  # resolved through settings, not fetched as stored
                    r = c.get(cand.url)
                    results[rec.work_id] = (r.status_code, r.headers["content-type"], r.content)
                    if r.status_code == 200:
                        break
        for wid, exp in sample_corpus.expected.items():
            if exp.input_problem:
                assert wid not in results
            elif exp.ok and wid in landing:
                status, ctype, body = results[wid]  # the landing page; the engine follows its link
                assert status == 200 and ctype.startswith("text/html")
            elif exp.ok:
                status, _, body = results[wid]
                assert status == 200 and hashlib.sha256(body).hexdigest() == exp.sha256
            else:
                status, ctype, body = results[wid]
                assert status == 200 and body.lstrip().lower().startswith(b"<!doctype html")
        second = [s for s in sample_corpus.specs if s.kind == "second_candidate"]
        assert all(origin.stats(s.paths[0]).statuses == [404] for s in second)
        assert httpx.get(origin.url("/robots.txt")).status_code == 200


def test_origin_faults_are_configured(sample_corpus) -> None:
    with OriginServer() as origin:
        configure_origin(origin, sample_corpus)
        works = {w["id"].rsplit("/", 1)[1]: w for w in sample_works(sample_corpus, origin.base_url)}
        faulty = [s for s in sample_corpus.specs if s.fault is not None and s.kind == "normal"]
        assert len(faulty) >= 5
        busy = next(s for s in faulty if s.fault.status_sequence)
        url = works[busy.work_id]["best_oa_location"]["pdf_url"]
        r = httpx.get(url)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert httpx.get(url).status_code == 200
