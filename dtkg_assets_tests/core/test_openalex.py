"""OpenAlex client against a real local fake of /works: paging with a 429, keys, lookups, provenance, cache."""

from __future__ import annotations

import time

import pytest

from dtkg_assets.core.errors import DtkgError, Reason
from dtkg_assets.core.openalex import OpenAlexClient, build_filter, validate_per_page
from dtkg_assets.core.types import InputProblem, WorkRecord
from dtkg_assets_tests.support.fake_openalex import W2741809807, FakeOpenAlex, make_work


@pytest.fixture
def fake():
    server = FakeOpenAlex(works=[W2741809807] + [make_work(n) for n in range(1, 24)]).start()
    try:
        yield server
    finally:
        server.stop()


def oa_settings(settings, fake, *, api_key="test-key", cache=False, **http):
    return settings.replace(
        http={"mailto": "tests@example.org", "cache_enabled": cache, **http},
        openalex={"base_url": fake.base_url, "api_key": api_key},
    )


def test_paging_with_a_429_in_the_middle_yields_every_work_once(settings, fake):
    with OpenAlexClient(oa_settings(settings, fake)) as client:
        start = time.monotonic()
        items = list(client.query_works("open_access.is_oa:true", per_page=5))
        elapsed = time.monotonic() - start
        provenance = client.provenance
    works = [i for i in items if isinstance(i, WorkRecord)]
    assert not [i for i in items if isinstance(i, InputProblem)]
    expected = ["W2741809807"] + [f"W{9000000000 + n}" for n in range(1, 24)]
    assert [w.work_id for w in works] == expected  # all 24, in order, none twice
    pages = fake.page_requests()
    assert [r.status for r in pages] == [200, 429, 200, 200, 200, 200]
    assert pages[1].params["cursor"] == pages[2].params["cursor"]  # the throttled page was asked again
    assert elapsed >= 1.0  # Retry-After: 1 was honoured
    assert all(r.params["api_key"] == "test-key" and r.params["mailto"] == "tests@example.org" for r in pages)
    assert all(r.params["per_page"] == "5" and r.params["filter"] == "open_access.is_oa:true" for r in pages)
    # Provenance: exact query without the key, every cursor and its fetch time.
    assert provenance is not None
    assert provenance.url == f"{fake.base_url}/works"
    assert "api_key" not in provenance.params and "test-key" not in str(provenance.to_json())
    assert provenance.params["mailto"] == "tests@example.org"
    assert [p.cursor for p in provenance.pages] == [r.params["cursor"] for r in pages if r.status == 200]
    assert provenance.pages[0].cursor == "*" and provenance.pages[-1].next_cursor is None
    assert provenance.total_count == 24 and provenance.finished_at is not None
    assert works[0].origin == "openalex:filter=open_access.is_oa:true"


def test_max_results_stops_paging(settings, fake):
    fake.throttle_page = None
    with OpenAlexClient(oa_settings(settings, fake)) as client:
        works = list(client.query_works(max_results=7, per_page=5))
    assert len(works) == 7
    assert len(fake.page_requests()) == 2


def test_per_page_is_validated(settings, fake):
    with OpenAlexClient(oa_settings(settings, fake)) as client:
        for bad in (0, 101, 200, -1):
            with pytest.raises(ValueError, match="per_page"):
                list(client.query_works(per_page=bad))
    assert validate_per_page(100) == 100
    assert fake.requests == []


def test_filter_building():
    assert build_filter("type:article", topic_id="https://openalex.org/T10102", year_from=2019, year_to=2021,
                        oa_only=True) == (
        "type:article,topics.id:T10102,from_publication_date:2019-01-01,to_publication_date:2021-12-31,"
        "open_access.is_oa:true"
    )
    assert build_filter() is None
    with pytest.raises(ValueError):
        build_filter(year_from=2022, year_to=2020)


@pytest.mark.parametrize(("key", "status"), [("", 401), ("wrong", 403)])
def test_missing_or_wrong_key_fails_clearly(settings, fake, key, status):
    with OpenAlexClient(oa_settings(settings, fake, api_key=key)) as client, pytest.raises(DtkgError) as info:
        list(client.query_works())
    assert info.value.reason is (Reason.FORBIDDEN if status == 403 else Reason.HTTP_4XX) and info.value.status == status
    assert "OPENALEX_API_KEY" in info.value.detail
    assert len(fake.requests) == 1  # permanent: not retried


def test_get_work_by_id_and_doi_forms(settings, fake):
    with OpenAlexClient(oa_settings(settings, fake)) as client:
        for ident in ["W2741809807", "https://openalex.org/W2741809807", "10.7717/peerj.4375",
                      "doi:10.7717/PEERJ.4375", "https://doi.org/10.7717/peerj.4375"]:
            work = client.get_work(ident)
            assert isinstance(work, WorkRecord) and work.work_id == "W2741809807", ident
        missing = client.get_work("W1")
        assert isinstance(missing, InputProblem) and "not found" in missing.detail
        garbage = client.get_work("hello")
        assert isinstance(garbage, InputProblem) and garbage.reason == "bad_input"
    paths = [r.path for r in fake.requests]
    assert paths[:5] == ["/works/W2741809807", "/works/W2741809807"] + ["/works/doi:10.7717/peerj.4375"] * 3
    assert len(fake.requests) == 6  # "hello" never reached the API


def test_resolve_id_list(tmp_path, settings, fake):
    from dtkg_assets.core.works import read_id_list

    path = tmp_path / "ids.txt"
    path.write_text("W9000000003\n10.5555/dtkg.5\nnonsense\nW42\n")
    with OpenAlexClient(oa_settings(settings, fake)) as client:
        items = list(client.resolve_ids(read_id_list(path), origin=f"ids:{path}"))
    assert [(type(i).__name__, getattr(i, "work_id", None)) for i in items] == [
        ("WorkRecord", "W9000000003"), ("WorkRecord", "W9000000005"), ("InputProblem", None), ("InputProblem", None)
    ]
    assert items[0].origin == f"ids:{path}:W9000000003"
    assert items[2].line == 3


def test_repeated_query_is_served_from_the_metadata_cache(settings, fake):
    fake.throttle_page = None
    settings = oa_settings(settings, fake, cache=True)
    with OpenAlexClient(settings) as client:
        first = [w.work_id for w in client.query_works(per_page=10) if isinstance(w, WorkRecord)]
    served = len(fake.requests)
    with OpenAlexClient(settings) as client:
        second = [w.work_id for w in client.query_works(per_page=10) if isinstance(w, WorkRecord)]
        assert client.provenance is not None and all(p.from_cache for p in client.provenance.pages)
    assert first == second and len(first) == 24
    assert served == 3 and len(fake.requests) == served  # zero origin requests the second time
