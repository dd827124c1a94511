"""Works input on real-shaped OpenAlex records: candidate order and dedupe, problems with line numbers."""

from __future__ import annotations

import copy
import json

from dtkg_assets.core.types import Candidate, InputProblem, WorkRecord
from dtkg_assets.core.works import (
    candidate_kind,
    candidate_urls,
    normalize_doi,
    parse_work,
    read_id_list,
    read_jsonl,
    work_id_of,
)
from dtkg_assets_tests.support.fake_openalex import W2741809807, make_work


def test_candidates_of_the_public_record_in_spec_order_without_duplicates():
    # best_oa, locations[0] and primary and oa_url are the same PeerJ URL: kept once, under its first source.
    # Then the landing pages (the DOI link among them stands for the DOI) and the content API.
    assert candidate_urls(W2741809807) == [
        Candidate("https://peerj.com/articles/4375.pdf", "best_oa_location.pdf_url"),
        Candidate("https://europepmc.org/articles/pmc5815332?pdf=render", "locations[1].pdf_url"),
        Candidate("https://doi.org/10.7717/peerj.4375", "best_oa_location.landing_page_url"),
        Candidate("https://europepmc.org/articles/pmc5815332", "locations[1].landing_page_url"),
        Candidate("https://content.openalex.org/works/W2741809807.pdf", "openalex_content"),
    ]
    kinds = [candidate_kind(c.source, c.url) for c in candidate_urls(W2741809807)]
    assert kinds == ["pdf", "pdf", "doi", "landing", "content"]


def test_candidate_order_follows_every_source():
    record = copy.deepcopy(W2741809807)
    record["best_oa_location"]["pdf_url"] = "https://a.example/best.pdf"
    record["locations"][0]["pdf_url"] = "https://a.example/loc0.pdf"
    record["locations"][1]["pdf_url"] = "https://a.example/best.pdf"  # duplicate of best
    record["primary_location"]["pdf_url"] = "https://a.example/primary.pdf"
    record["open_access"]["oa_url"] = "https://a.example/landing"
    record["best_oa_location"]["landing_page_url"] = "https://a.example/best.html"
    record["locations"][1]["landing_page_url"] = "https://b.example/record/1"
    del record["has_content"]
    assert [(c.url, c.source) for c in candidate_urls(record)] == [
        ("https://a.example/best.pdf", "best_oa_location.pdf_url"),
        ("https://a.example/loc0.pdf", "locations[0].pdf_url"),
        ("https://a.example/primary.pdf", "primary_location.pdf_url"),
        ("https://a.example/landing", "open_access.oa_url"),
        ("https://a.example/best.html", "best_oa_location.landing_page_url"),
        ("https://doi.org/10.7717/peerj.4375", "locations[0].landing_page_url"),
        ("https://b.example/record/1", "locations[1].landing_page_url"),
    ]
    # The closed location (is_oa false) is never a candidate.
    assert all("example-aggregator" not in c.url for c in candidate_urls(record))


def test_parse_work_fields_and_short_id():
    work, problems = parse_work(W2741809807, "test")
    assert problems == []
    assert isinstance(work, WorkRecord)
    assert work.work_id == "W2741809807"
    assert work.doi == "10.7717/peerj.4375"
    assert work.publication_year == 2018
    assert work.title and work.title.startswith("The state of OA")
    assert work.origin == "test" and work.raw is W2741809807


def test_parse_work_problems():
    record = copy.deepcopy(W2741809807)
    del record["id"]
    assert parse_work(record, "t", line=3)[1] == [InputProblem("t", 3, None, "bad_input", "missing id")]
    record["id"] = "https://openalex.org/A123"
    assert parse_work(record, "t")[1][0].reason == "bad_input"
    assert parse_work(["not", "an", "object"], "t")[1][0].reason == "bad_input"

    no_pdf = copy.deepcopy(W2741809807)
    for loc in [no_pdf["best_oa_location"], no_pdf["primary_location"], *no_pdf["locations"]]:
        loc["pdf_url"] = None
    no_pdf["open_access"]["oa_url"] = None
    work, _ = parse_work(no_pdf, "t")
    assert work is not None and {c.source for c in work.candidates} >= {"best_oa_location.landing_page_url"}
    for loc in [no_pdf["best_oa_location"], no_pdf["primary_location"], *no_pdf["locations"]]:
        loc["landing_page_url"] = None
    no_pdf["doi"] = None
    no_pdf["has_content"]["pdf"] = False
    work, problems = parse_work(no_pdf, "t")
    assert work is None and [(p.work_id, p.reason) for p in problems] == [("W2741809807", "no_candidates")]

    ftp = copy.deepcopy(no_pdf)
    ftp["open_access"]["oa_url"] = "ftp://ftp.example.org/paper.pdf"
    work, problems = parse_work(ftp, "t")
    assert work is None
    assert [p.reason for p in problems] == ["unsupported_scheme", "no_candidates"]

    mixed = copy.deepcopy(W2741809807)
    mixed["best_oa_location"]["pdf_url"] = "file:///etc/passwd"
    work, problems = parse_work(mixed, "t")
    assert work is not None and all(c.url.startswith("https://") for c in work.candidates)
    assert [p.reason for p in problems] == ["unsupported_scheme"]


def test_ids_and_dois_in_common_forms():
    assert work_id_of("https://openalex.org/W2741809807") == "W2741809807"
    assert work_id_of("w2741809807") == "W2741809807"
    assert work_id_of("https://api.openalex.org/works/W1") == "W1"
    assert work_id_of("A5048491430") is None and work_id_of(None) is None
    for form in ["10.7717/PeerJ.4375", "doi:10.7717/peerj.4375", "https://doi.org/10.7717/peerj.4375",
                 "http://dx.doi.org/10.7717/peerj.4375"]:
        assert normalize_doi(form) == "10.7717/peerj.4375"
    assert normalize_doi("11.1/x") is None


def test_jsonl_reports_bad_lines_with_numbers_and_loads_the_rest(tmp_path):
    path = tmp_path / "works.jsonl"
    no_id = make_work(3)
    del no_id["id"]
    lines = [
        json.dumps(make_work(1)),  # 1
        '{"id": "https://openalex.org/W1", "title": ',  # 2: truncated JSON
        "",  # 3: blank, skipped
        json.dumps(make_work(2)),  # 4
        json.dumps(no_id),  # 5
        "not json at all",  # 6
        json.dumps(make_work(4)),  # 7
    ]
    path.write_text("\n".join(lines) + "\n")
    items = list(read_jsonl(path))
    works = [i for i in items if isinstance(i, WorkRecord)]
    problems = [i for i in items if isinstance(i, InputProblem)]
    assert [w.work_id for w in works] == ["W9000000001", "W9000000002", "W9000000004"]
    assert [w.origin for w in works] == [f"jsonl:{path}:1", f"jsonl:{path}:4", f"jsonl:{path}:7"]
    assert [(p.line, p.reason) for p in problems] == [(2, "bad_input"), (5, "bad_input"), (6, "bad_input")]
    assert all(p.origin == str(path) for p in problems)
    assert "malformed JSON" in problems[0].detail


def test_id_list_accepts_common_forms(tmp_path):
    path = tmp_path / "ids.txt"
    path.write_text(
        "# works to fetch\n"
        "W2741809807\n"
        "https://openalex.org/W123  # trailing comment\n"
        "\n"
        "10.7717/peerj.4375\n"
        "doi:10.1000/XYZ\n"
        "https://doi.org/10.1000/abc(1)\n"
        "garbage line\n"
        "w2741809807\n"
    )
    items = read_id_list(path)
    assert [i for i in items if isinstance(i, str)] == [
        "W2741809807", "W123", "doi:10.7717/peerj.4375", "doi:10.1000/xyz", "doi:10.1000/abc(1)"
    ]
    problems = [i for i in items if isinstance(i, InputProblem)]
    assert [(p.line, p.reason) for p in problems] == [(8, "bad_input")]
