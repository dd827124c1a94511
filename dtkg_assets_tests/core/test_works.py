"""Works input on real-shaped OpenAlex records: candidate order and dedupe, problems with line numbers."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dagster as dg
import pytest

from dtkg_assets.core.errors import DtkgError
from dtkg_assets.core.ledger import Ledger
from dtkg_assets.core.ledger.interface import canonical_url, canonical_url_general
from dtkg_assets.core.settings import LandingSettings, Settings
from dtkg_assets.core.sources import WorksSource, import_works
from dtkg_assets.core.types import Candidate, InputProblem, WorkRecord
from dtkg_assets.core.urls import check_url, check_url_fully, host_of
from dtkg_assets.core.works import (
    candidate_enabled,
    candidate_kind,
    candidate_urls,
    normalize_doi,
    parse_work,
    read_id_list,
    read_jsonl,
    work_id_of,
)
from dtkg_assets.defs.partitions import ARTIFACT_PARTITIONS_NAME, add_work_partitions
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
    # An oa_url (or any candidate) that is a doi.org link is the DOI: through the configured resolver,
    # and not planned when the DOI is turned off.
    assert candidate_kind("open_access.oa_url", "https://doi.org/10.7717/peerj.4375") == "doi"
    assert not candidate_enabled("open_access.oa_url", LandingSettings(doi=False), url="https://doi.org/10.5555/x")


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


# ---- the import path at scale: shortcuts that must agree with the general code ---------------

TRICKY_URLS = [
    "http://example.org/a.pdf", "HTTP://Example.ORG:80/A?b=1#frag", "https://x.org:443", "https://x.org:0443/p",
    "http://x.org:8080?q", "http://x.org:08080/", "http://x.org:0/", "http://x.org:65535/", "http://x.org:65536/",
    "http://x.org:99999/", "http://127.0.0.1:9/p/W1.pdf", "http://1.2.3/", "http://1a2.3.4/x", "http://-/",
    "http://a..b/", "http://host./x", "http://x.org/a b", "http://x.org/a\tb", " http://x.org/p ", "http://x.org/?",
    "http://x.org/#", "http://x.org?#", "http://x.org//double", "http://x.org/p?a?b#c#d", "http://x.org/[x]",
    "http://x.org/%zz", "http://x.org\\evil/", "http://user:pw@x.org/", "http://[::1]:8080/", "ftp://x.org/",
    "http://", "http:///p", "https://例え.jp/", "http://x.org:/", "http://x.org:8a/", "mailto:a@b",
    "http://x_y.org/", "http://x.org/" + "a" * 70_000, "http://x.org/é", "http://10.0.0.255/", "http://256.1.1.1/",
    "http://01.2.3.4/", "http://1.2.3.4.5/", "http://0.0.0.0:80/", "http://1.2.3.4a/", "http://[1.2.3.4]/",
    "http://u:1@h.org/", "http://h.org:12@evil.org/", "http://H.Org:/x", "https://h.org#x", "http://h.org?x",
]


def _outcome(fn: Any, url: str) -> tuple[Any, ...]:
    try:
        return ("ok", fn(url))
    except DtkgError as exc:
        return ("refused", exc.reason)
    except ValueError as exc:
        return ("error", type(exc).__name__)


def test_url_shortcuts_decide_like_full_parsing() -> None:
    # The import checks and canonicalizes a million URLs: plain ones skip httpx/urllib, same answers.
    for url in TRICKY_URLS:
        assert _outcome(check_url, url) == _outcome(check_url_fully, url), url
        assert _outcome(canonical_url, url) == _outcome(canonical_url_general, url), url
        assert _outcome(host_of, url) == _outcome(lambda u: (urlsplit(u).hostname or "").lower(), url), url


def test_import_in_small_batches_records_what_one_batch_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dtkg_assets.core.sources as sources
    from dtkg_assets.cli.common import start_helper_process

    lines = [json.dumps(make_work(n)) for n in range(1, 15)]
    lines[5:5] = ["{not json", json.dumps({"id": "W99"})]  # a malformed line, a work without a URL
    lines.append(json.dumps({**make_work(3), "display_name": "again"}))  # the same work twice: the last record wins
    source_file = tmp_path / "works.jsonl"
    source_file.write_text("\n".join(lines) + "\n")
    tables = {"works": "SELECT work_id, doi, title, publication_year, candidates, origin, raw FROM works "
                       "ORDER BY work_id",
              "jobs": "SELECT job_id, work_id, url, host, candidate_rank, candidate_source, state FROM artifact_jobs "
                      "ORDER BY job_id",
              "problems": "SELECT origin, line, work_id, reason, detail FROM input_problems ORDER BY line"}
    seen = []
    # Large files are read and planned in a helper process (here: any file): the same rows.
    monkeypatch.setattr(sources, "PLAN_ELSEWHERE_BYTES", 0)
    for batch_size, start_process in ((3, None), (1000, None), (3, start_helper_process)):
        settings = Settings().with_home(tmp_path / f"home-{batch_size}-{start_process is None}")
        with import_works(WorksSource(jsonl_path=str(source_file)), settings,
                          lambda s=settings: Ledger.open_writer(s, owner="test"), run_id="r1",
                          batch_size=batch_size, start_process=start_process) as report:
            ids = list(report.work_ids())
        with Ledger.open_writer(settings, owner="test") as led:
            rows = {name: led.query(sql) for name, sql in tables.items()}
        summary = {k: v for k, v in report.summary.items() if k != "provenance"}
        seen.append((summary, ids, rows, [(p.line, p.reason) for p in report.problems], report.provenance))
    assert seen[0] == seen[1] == seen[2]
    summary, ids, rows, problems, _ = seen[0]
    assert summary == {"works": 15, "new_works": 14, "new_jobs": len(rows["jobs"]), "problems": 2}
    assert ids == [f"W{9_000_000_000 + n}" for n in [*range(1, 15), 3]]
    assert ("W9000000003", "again") in [(w[0], w[2]) for w in rows["works"]]
    assert problems == [p[1:4:2] for p in rows["problems"]] == [(6, "bad_input"), (7, "no_candidates")]


def test_import_read_in_a_helper_process_is_idempotent_and_raises_its_errors(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import multiprocessing

    import dtkg_assets.core.sources as sources
    from dtkg_assets.cli.common import start_helper_process

    source_file = tmp_path / "works.jsonl"
    source_file.write_text("".join(json.dumps(make_work(n)) + "\n" for n in range(1, 11)))
    monkeypatch.setattr(sources, "PLAN_ELSEWHERE_BYTES", 0)
    settings = Settings().with_home(tmp_path / "home")

    def run() -> dict[str, Any]:
        with import_works(WorksSource(jsonl_path=str(source_file)), settings,
                          lambda: Ledger.open_writer(settings, owner="test"), run_id="r1", batch_size=3,
                          start_process=start_helper_process) as report:
            return report.summary

    assert run()["new_works"] == 10
    again = run()
    assert (again["works"], again["new_works"], again["new_jobs"]) == (10, 0, 0)
    # An error reading the file is raised here as itself; a ledger error ends the reading process.
    with pytest.raises(FileNotFoundError) as info, \
            sources._planned_elsewhere(str(tmp_path / "gone.jsonl"), settings, 3, start_helper_process) as batches:
        list(batches)
    assert info.value.filename == str(tmp_path / "gone.jsonl")

    def full(self: Ledger, planned: Any, **kw: Any) -> tuple[int, int]:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Ledger, "write_planned", full)
    with pytest.raises(OSError, match="No space left"):
        run()
    assert multiprocessing.active_children() == []


def test_partitions_are_added_in_chunks_once_each_in_first_seen_order() -> None:
    with dg.instance_for_test() as instance:
        add_work_partitions(instance, ["W5", "W1", "W5", "W2", "W3", "W1", "W4"], chunk=2)
        add_work_partitions(instance, ["W6", "W2"], chunk=2)
        assert list(instance.get_dynamic_partitions(ARTIFACT_PARTITIONS_NAME)) == ["W5", "W1", "W2", "W3", "W4", "W6"]


def test_import_stops_reading_at_a_ledger_error_and_raises_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Batches are written on a helper thread: a failed write must still stop the import, not let it
    # read the rest of the file first.
    import dtkg_assets.core.sources as sources

    source_file = tmp_path / "works.jsonl"
    source_file.write_text("".join(json.dumps(make_work(n)) + "\n" for n in range(1, 61)))
    read: list[object] = []

    def counting(path: str) -> Iterator[WorkRecord | InputProblem]:
        for item in read_jsonl(path):
            read.append(item)
            yield item

    real_plan = Ledger.plan

    def plan(self: Ledger, works: Sequence[WorkRecord], **kw: Any) -> tuple[int, int]:
        if any(w.work_id == "W9000000004" for w in works):
            raise OSError(28, "No space left on device")
        return real_plan(self, works, **kw)

    monkeypatch.setattr(sources, "read_jsonl", counting)
    monkeypatch.setattr(Ledger, "plan", plan)
    settings = Settings().with_home(tmp_path / "home")
    with pytest.raises(OSError, match="No space left"):
        import_works(WorksSource(jsonl_path=str(source_file)), settings,
                     lambda: Ledger.open_writer(settings, owner="test"), run_id="r1", batch_size=3)
    assert len(read) <= 4 * 3 + 1  # the failed batch, one queued, one being read
    monkeypatch.undo()
    with Ledger.open_writer(settings, owner="test") as led:
        kept = led.query("SELECT work_id FROM works ORDER BY work_id")
    assert kept == [(f"W{9_000_000_000 + n}",) for n in (1, 2, 3)]  # the batch before the failed one


def test_bulk_load_raises_the_checkpoint_threshold_only_while_it_lasts(tmp_path: Path) -> None:
    threshold = "SELECT current_setting('checkpoint_threshold')"
    with Ledger.open_writer(Settings().with_home(tmp_path), owner="test") as led:
        before = led.query(threshold)
        with led.bulk_load():
            assert led.query(threshold) == [("256.0 MiB",)]
        assert led.query(threshold) == before != [("256.0 MiB",)]


def test_job_ids_and_candidate_json_written_directly_match_the_general_encoder() -> None:
    from dtkg_assets.core.ledger.interface import job_id_for, stable_hash
    from dtkg_assets.core.ledger.planning import candidates_json

    odd = ["W1", 'a"b\\c', "é/ü?q=ß", "tab\there\x01", "\u2028line", "😀", "</script>", ""]
    for work_id in odd:
        for url in [*TRICKY_URLS[:10], *(f"http://x.example/{s}" for s in odd)]:
            canon = canonical_url(url) if _outcome(canonical_url, url)[0] == "ok" else url
            expected = stable_hash({"work_id": work_id, "artifact": "pdf", "url": canon})
            assert job_id_for(work_id, url, canonical=canon) == expected
    cands = [Candidate(f"http://x.example/{s}", s or "doi") for s in odd]
    work = WorkRecord("W1", cands)
    assert candidates_json(work) == json.dumps([{"url": c.url, "source": c.source} for c in cands])


def test_raw_records_are_stored_as_json_dumps_writes_them() -> None:
    from dtkg_assets.core.ledger.planning import RAW_ENCODER

    for record in (W2741809807, {"id": "W1", "odd": ['a"b', "é", "😀", 1.5, None, True], "when": Path("/x")}):
        assert RAW_ENCODER.encode(record) == json.dumps(record, default=str)
