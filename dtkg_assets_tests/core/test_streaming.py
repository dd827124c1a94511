"""The streaming engine against the local origin: bytes on disk, sha256 and bytes served."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dtkg_assets.core.errors import DtkgError, Reason
from dtkg_assets.core.http import make_client
from dtkg_assets.core.settings import MiB, Settings
from dtkg_assets.core.store import Store
from dtkg_assets.core.streaming import (
    Engine,
    PartState,
    ServerValidators,
    decide_resume,
    parse_content_range,
)
from dtkg_assets.core.types import NullHooks
from dtkg_assets_tests.conftest import PDF_TAIL
from dtkg_assets_tests.support.origin import FaultMode, OriginServer

SIZE = 6 * MiB + 12345
# One resume may re-read this much (the prefix check of a resume without validators).
OVERLAP = 64 * 1024


def make_pdf(size: int, seed: int = 0) -> bytes:
    head, tail = b"%PDF-1.7\n", PDF_TAIL
    rnd = hashlib.sha256(str(seed).encode()).digest() * ((size // 32) + 1)
    body = bytearray(os.urandom(16)) + rnd[: size - len(head) - len(tail) - 16]
    return head + bytes(body) + tail


BODY = make_pdf(SIZE, 1)
SHA = hashlib.sha256(BODY).hexdigest()


@pytest.fixture
def srv() -> Iterator[OriginServer]:
    with OriginServer() as server:
        yield server


@pytest.fixture
def cfg(tmp_path: Path) -> Settings:
    return Settings().with_home(tmp_path / "home").replace(
        quota={"free_bytes_min": 0},
        http={
            "allow_hosts": ("127.0.0.1",),
            "rate_limits": {"*": 0.0},
            "robots_enabled": False,
            "cache_enabled": False,
            "backoff_initial_s": 0.01,
            "backoff_max_s": 0.05,
            "read_timeout_s": 60.0,
        },
    )


def fetch(settings: Settings, url: str, work_id: str | None = "W1", **kw: Any):
    with make_client(settings) as client:
        return Engine(client, settings, Store(settings)).fetch(url, work_id=work_id, **kw)


def assert_stored(settings: Settings, result, body: bytes = BODY, work_id: str = "W1") -> None:
    sha = hashlib.sha256(body).hexdigest()
    assert result.ok, (result.reason, result.detail)
    assert result.sha256 == sha
    store = Store(settings)
    blob = store.blob_path(sha)
    assert blob.read_bytes() == body
    work = store.work_path(work_id)
    assert os.path.samefile(work, blob)
    assert result.path == str(work) and result.bytes == len(body)
    # Nothing left in staging once finalized.
    assert list(settings.staging_dir.iterdir()) == []


def stored_pdfs(settings: Settings) -> list[Path]:
    return sorted(p for p in settings.store_dir.rglob("*.pdf"))


# ---- pure decisions -------------------------------------------------------------------------


def test_validators_never_offer_a_weak_etag() -> None:
    v = ServerValidators(etag='W/"abc"', last_modified="Mon, 01 Jan 2024 00:00:00 GMT")
    assert v.strong_etag is None and v.if_range_value() == "Mon, 01 Jan 2024 00:00:00 GMT"
    assert ServerValidators(etag='W/"abc"').if_range_value() is None
    assert ServerValidators(etag='"x"', last_modified="d").if_range_value() == '"x"'


@pytest.mark.parametrize(
    ("validators", "state", "size", "allow", "mode", "reason"),
    [
        (ServerValidators(etag='"a"'), None, 0, False, "fresh", "no_part"),
        (ServerValidators(etag='"a"'), None, 10, False, "discard_part", "sidecar_missing"),
        (ServerValidators(etag='"a"', content_length=100), PartState("u", '"a"', None, 100, 10), 10, False,
         "resume", "validators_match"),
        (ServerValidators(etag='"b"', content_length=100), PartState("u", '"a"', None, 100, 10), 10, False,
         "discard_part", "etag_changed"),
        (ServerValidators(last_modified="d2"), PartState("u", None, "d1", None, 10), 10, False,
         "discard_part", "last_modified_changed"),
        (ServerValidators(etag='"a"', content_length=5), PartState("u", '"a"', None, None, 10), 10, False,
         "discard_part", "part_larger_than_object"),
        (ServerValidators(etag='W/"a"'), PartState("u", 'W/"a"', None, None, 10, "p", 10), 10, False,
         "discard_part", "weak_etag_only"),
        (ServerValidators(), PartState("u", None, None, None, 10, "p", 10), 10, False,
         "discard_part", "no_validators_disallowed"),
        (ServerValidators(), PartState("u", None, None, None, 10, "p", 10), 10, True,
         "resume", "no_validators_prefix_ok"),
        (None, PartState("u", '"a"', None, None, 10), 10, False, "resume", "head_unavailable_if_range"),
        (ServerValidators(etag='"a"'), PartState("u", '"a"', None, None, 20), 10, False,
         "discard_part", "part_shorter_than_sidecar"),
    ],
)
def test_decide_resume_reasons(validators, state, size, allow, mode, reason, cfg: Settings) -> None:
    settings = cfg.replace(resume={"allow_without_validators": allow})
    d = decide_resume(validators, state, size, settings, url="u")
    assert (d.mode, d.reason) == (mode, reason)
    if mode == "resume":
        assert d.offset == min(size, state.bytes_on_disk)
        assert d.if_range is None or not d.if_range.startswith("W/")


def test_parse_content_range() -> None:
    cr = parse_content_range("bytes 10-99/100")
    assert cr is not None and (cr.start, cr.end, cr.total) == (10, 99, 100)
    assert parse_content_range("bytes 10-99/*") is not None
    assert parse_content_range("bytes 100-10/100") is None
    assert parse_content_range("items 0-1/2") is None


# ---- against the origin ---------------------------------------------------------------------


def test_fresh_download(srv: OriginServer, cfg: Settings) -> None:
    url = srv.add("/a.pdf", BODY)
    r = fetch(cfg, url)
    assert_stored(cfg, r)
    assert (r.status, r.decision, r.decision_reason, r.resumed_from, r.attempts) == ("stored", "fresh", "no_part", 0, 1)
    st = srv.stats("/a.pdf")
    # One request: the GET's own headers are the precheck.
    assert st.body_bytes == SIZE and st.requests == 1 and st.get_requests == 1
    assert st.accept_encodings == ["identity"]
    assert r.body_bytes_received == SIZE and r.http_status == 200
    assert [a.method for a in r.http_attempts] == ["GET"]
    assert r.etag is not None and r.content_type == "application/pdf"


def test_head_precheck_setting_sends_head_first(srv: OriginServer, cfg: Settings) -> None:
    url = srv.add("/a.pdf", BODY)
    r = fetch(cfg.replace(http={"head_precheck": True}), url)
    assert_stored(cfg, r)
    st = srv.stats("/a.pdf")
    assert (st.head_requests, st.get_requests) == (1, 1)
    assert [a.method for a in r.http_attempts] == ["HEAD", "GET"]


def test_quota_guard_decides_on_the_get_headers(srv: OriginServer, cfg: Settings) -> None:
    """No HEAD: the GET's Content-Length is checked against free space before any body byte is kept."""
    url = srv.add("/a.pdf", BODY)
    settings = cfg.replace(quota={"free_bytes_min": 0, "margin_factor": 1.0})
    with make_client(settings) as client:
        store = Store(settings)
        store.quota._free_bytes = lambda: SIZE - 1  # type: ignore[method-assign]
        r = Engine(client, settings, store).fetch(url, work_id="W1")
    assert (r.status, r.reason) == ("failed", "quota_exceeded")
    st = srv.stats("/a.pdf")
    assert st.requests == 1 and st.body_bytes < SIZE
    assert stored_pdfs(settings) == [] and list(settings.staging_dir.iterdir()) == []
    assert store.quota.reserved == 0


@pytest.mark.parametrize("cut", [1, MiB + 7, 3 * MiB, SIZE - 10])
def test_resume_after_truncation(srv: OriginServer, cfg: Settings, cut: int) -> None:
    url = srv.add("/a.pdf", BODY, FaultMode(truncate_after=cut))
    r = fetch(cfg, url)
    assert_stored(cfg, r)
    st = srv.stats("/a.pdf")
    assert st.body_bytes <= SIZE + OVERLAP
    assert st.ranges == [None, f"bytes={cut}-"]
    assert st.if_ranges[1] is not None and not st.if_ranges[1].startswith("W/")
    assert (r.decision, r.decision_reason, r.resumed_from, r.attempts) == ("resume", "validators_match", cut, 2)


def test_resume_after_several_truncations(srv: OriginServer, cfg: Settings) -> None:
    url = srv.add("/a.pdf", BODY, FaultMode(truncate_after=MiB, truncate_times=3))
    r = fetch(cfg, url)
    assert_stored(cfg, r)
    st = srv.stats("/a.pdf")
    assert st.body_bytes <= SIZE + OVERLAP
    assert st.ranges == [None, f"bytes={MiB}-", f"bytes={2 * MiB}-", f"bytes={3 * MiB}-"]


def test_resume_after_reset(srv: OriginServer, cfg: Settings) -> None:
    url = srv.add("/a.pdf", BODY, FaultMode(reset_after=2 * MiB))
    r = fetch(cfg, url)
    assert_stored(cfg, r)
    st = srv.stats("/a.pdf")
    # A reset discards what sat in socket buffers, so the resume point is at most the reset point.
    assert st.get_requests == 2 and st.ranges[1] is not None
    assert 0 < r.resumed_from <= 2 * MiB
    assert st.body_bytes <= SIZE + 2 * MiB


def test_200_to_ranged_request_restarts(srv: OriginServer, cfg: Settings) -> None:
    url = srv.add("/a.pdf", BODY, FaultMode(ranges=False, truncate_after=MiB))
    r = fetch(cfg, url)
    assert_stored(cfg, r)
    st = srv.stats("/a.pdf")
    assert st.statuses == [200, 200] and st.ranges[1] == f"bytes={MiB}-"
    assert (r.decision, r.decision_reason, r.resumed_from) == ("discard_part", "range_ignored", 0)
    assert st.body_bytes == MiB + SIZE


def test_validator_changed_between_attempts_restarts(srv: OriginServer, cfg: Settings) -> None:
    url = srv.add("/a.pdf", BODY, FaultMode(truncate_after=2 * MiB, change_after_gets=1))
    r = fetch(cfg, url)
    new = srv.object_bytes("/a.pdf")
    assert new != BODY
    assert_stored(cfg, r, new)
    st = srv.stats("/a.pdf")
    assert st.if_ranges[1] is not None and st.statuses[-1] == 200
    assert (r.decision, r.decision_reason) == ("discard_part", "validator_changed")


def test_weak_etag_is_never_sent_and_restarts_by_default(srv: OriginServer, cfg: Settings) -> None:
    url = srv.add("/a.pdf", BODY, FaultMode(validators="weak", truncate_after=MiB))
    r = fetch(cfg, url)
    assert_stored(cfg, r)
    st = srv.stats("/a.pdf")
    assert st.if_ranges == [None, None] and st.ranges == [None, None]
    assert r.decision_reason == "weak_etag_only" and r.etag is not None and r.etag.startswith("W/")
    assert st.body_bytes == MiB + SIZE


def test_weak_etag_with_prefix_check_resumes(srv: OriginServer, cfg: Settings) -> None:
    settings = cfg.replace(resume={"allow_without_validators": True})
    url = srv.add("/a.pdf", BODY, FaultMode(validators="weak", truncate_after=2 * MiB))
    r = fetch(settings, url)
    assert_stored(settings, r)
    st = srv.stats("/a.pdf")
    assert all(v is None for v in st.if_ranges)
    assert st.ranges == [None, "bytes=0-65535", f"bytes={2 * MiB}-"]
    assert r.decision_reason == "weak_etag_prefix_ok"
    assert st.body_bytes <= SIZE + OVERLAP


@pytest.mark.parametrize("allow", [False, True])
def test_no_validators(srv: OriginServer, cfg: Settings, allow: bool) -> None:
    settings = cfg.replace(resume={"allow_without_validators": allow})
    url = srv.add("/a.pdf", BODY, FaultMode(validators="none", truncate_after=3 * MiB))
    r = fetch(settings, url)
    assert_stored(settings, r)
    st = srv.stats("/a.pdf")
    assert all(v is None for v in st.if_ranges)
    if allow:
        assert r.decision_reason == "no_validators_prefix_ok" and r.resumed_from == 3 * MiB
        assert st.body_bytes <= SIZE + OVERLAP
    else:
        assert r.decision_reason == "no_validators_disallowed" and r.resumed_from == 0
        assert st.body_bytes == 3 * MiB + SIZE


def test_no_validators_prefix_mismatch_restarts(srv: OriginServer, cfg: Settings) -> None:
    settings = cfg.replace(resume={"allow_without_validators": True})
    url = srv.add("/a.pdf", BODY, FaultMode(validators="none", truncate_after=3 * MiB))
    other = make_pdf(SIZE, 2)

    class ChangeOnFirstStream(NullHooks):
        def progress(self, bytes_on_disk: int) -> None:
            if bytes_on_disk >= 2 * MiB and srv.object_bytes("/a.pdf") == BODY:
                srv.mutate("/a.pdf", other)

    r = fetch(settings, url, hooks=ChangeOnFirstStream())
    assert_stored(settings, r, other)
    assert r.decision_reason == "prefix_mismatch"


class _FailFenceOnce(NullHooks):
    """Leaves a complete part behind (as a worker that lost its lease right before finalize)."""

    def __init__(self) -> None:
        self.calls = 0

    def check_fence(self) -> None:
        self.calls += 1
        if self.calls == 1:
            raise DtkgError(Reason.LEASE_LOST, "test")


def test_a_part_that_is_also_a_blob_is_never_written_into(srv: OriginServer, cfg: Settings) -> None:
    """A part that is a second name of a finalized blob (killed between finalize's link and the part's
    unlink, with a sidecar that does not name the blob, e.g. an earlier checkpoint's) is dropped, not
    resumed: resuming cuts the part back to the sidecar's bytes, and with it the blob under its hash."""
    url = srv.add("/a.pdf", BODY)
    first = fetch(cfg, url)
    assert_stored(cfg, first)
    store = Store(cfg)
    part, sidecar = store.part_paths("W1", url)
    os.link(store.blob_path(SHA), part)
    PartState(url=url, etag=first.etag, last_modified=first.last_modified, expected_size=len(BODY),
              bytes_on_disk=len(BODY) // 2).write(sidecar)
    store.work_path("W1").unlink()
    other = make_pdf(SIZE + 100, 2)
    srv.mutate("/a.pdf", other)
    again = fetch(cfg, url)
    assert hashlib.sha256(store.blob_path(SHA).read_bytes()).hexdigest() == SHA  # the old blob is intact
    assert_stored(cfg, again, other)
    assert again.decision_reason == "part_is_a_stored_blob"


def test_416_with_equal_total_completes_without_body(srv: OriginServer, cfg: Settings) -> None:
    url = srv.add("/a.pdf", BODY)
    first = fetch(cfg, url, hooks=_FailFenceOnce())
    assert first.reason == "lease_lost" and stored_pdfs(cfg) == []
    srv.reset_stats()
    r = fetch(cfg, url)
    assert_stored(cfg, r)
    st = srv.stats("/a.pdf")
    assert st.ranges == [f"bytes={SIZE}-"] and st.statuses == [416]  # no HEAD: If-Range decides
    assert st.body_bytes == 0 and r.body_bytes_received == 0


def test_416_with_equal_total_but_invalid_part_restarts(srv: OriginServer, cfg: Settings) -> None:
    cut = 2 * MiB
    url = srv.add("/a.pdf", BODY, FaultMode(truncate_after=cut))
    srv.set_mode("/a.pdf", FaultMode(truncate_after=cut, force_416=True, total_416=cut))
    r = fetch(cfg, url)
    assert_stored(cfg, r)
    st = srv.stats("/a.pdf")
    assert st.statuses == [200, 416, 200]
    assert r.decision_reason == "range_not_satisfiable_invalid_part"


def test_416_with_unequal_total_restarts(srv: OriginServer, cfg: Settings) -> None:
    url = srv.add("/a.pdf", BODY, FaultMode(truncate_after=MiB, force_416=True, total_416=SIZE + 5))
    r = fetch(cfg, url)
    assert_stored(cfg, r)
    st = srv.stats("/a.pdf")
    assert st.statuses == [200, 416, 200] and st.ranges == [None, f"bytes={MiB}-", None]
    assert r.decision_reason == "range_not_satisfiable"
    assert st.body_bytes == MiB + SIZE


def test_wrong_content_range_start_restarts(srv: OriginServer, cfg: Settings) -> None:
    url = srv.add("/a.pdf", BODY, FaultMode(truncate_after=MiB, content_range_shift=100))
    r = fetch(cfg, url)
    assert_stored(cfg, r)
    st = srv.stats("/a.pdf")
    assert st.ranges == [None, f"bytes={MiB}-", None]
    assert r.decision_reason == "content_range_mismatch"


def test_missing_content_length(srv: OriginServer, cfg: Settings) -> None:
    url = srv.add("/a.pdf", BODY, FaultMode(omit_content_length=True))
    r = fetch(cfg, url)
    assert_stored(cfg, r)
    assert srv.stats("/a.pdf").body_bytes == SIZE


def test_gzip_offered_but_identity_requested(srv: OriginServer, cfg: Settings) -> None:
    url = srv.add("/a.pdf", BODY, FaultMode(gzip=True))
    r = fetch(cfg, url)
    assert_stored(cfg, r)
    st = srv.stats("/a.pdf")
    assert st.accept_encodings[-1] == "identity" and st.body_bytes == SIZE


def test_redirect_chain_keeps_range(srv: OriginServer, cfg: Settings) -> None:
    url = srv.add("/a.pdf", BODY, FaultMode(redirects=2, truncate_after=3 * MiB))
    r = fetch(cfg, url)
    assert_stored(cfg, r)
    st = srv.stats("/a.pdf")
    resumed = [rng for rng, status in zip(st.ranges, st.statuses, strict=False) if rng]
    assert resumed and all(rng == f"bytes={3 * MiB}-" for rng in resumed)
    assert st.statuses[-1] == 206 and st.body_bytes <= SIZE + OVERLAP
    assert r.resumed_from == 3 * MiB and r.final_url is not None and "hop" not in url


def test_head_405_is_not_an_error(srv: OriginServer, cfg: Settings) -> None:
    url = srv.add("/a.pdf", BODY, FaultMode(head_status=405, truncate_after=MiB))
    r = fetch(cfg.replace(http={"head_precheck": True}), url)
    assert_stored(cfg, r)
    st = srv.stats("/a.pdf")
    assert st.statuses[0] == 405 and st.if_ranges[-1] is not None
    assert r.decision_reason == "validators_match"


def test_html_saved_as_pdf_is_rejected(srv: OriginServer, cfg: Settings) -> None:
    url = srv.add("/a.pdf", BODY, FaultMode(html_body=True))
    r = fetch(cfg, url)
    assert (r.status, r.reason) == ("failed", "html_page")
    assert stored_pdfs(cfg) == [] and list(cfg.staging_dir.iterdir()) == []


def test_quota_refusal_before_any_byte(srv: OriginServer, cfg: Settings) -> None:
    settings = cfg.replace(quota={"free_bytes_min": 10**18})
    url = srv.add("/a.pdf", BODY)
    r = fetch(settings, url)
    assert (r.status, r.reason) == ("failed", "quota_exceeded")
    st = srv.stats("/a.pdf")
    assert st.requests == 0 and st.body_bytes == 0  # the free-space floor is checked before the GET
    assert list(settings.staging_dir.iterdir()) == [] and stored_pdfs(settings) == []


def test_quota_counts_reservations_in_flight(cfg: Settings) -> None:
    store = Store(cfg.replace(quota={"free_bytes_min": 0, "margin_factor": 1.0}))
    store.quota._free_bytes = lambda: 100  # type: ignore[method-assign]
    with store.quota.reserve(60):
        with pytest.raises(DtkgError) as exc, store.quota.reserve(60):
            pass
        assert exc.value.reason is Reason.QUOTA_EXCEEDED
    with store.quota.reserve(60):
        assert store.quota.reserved == 60


@pytest.mark.parametrize("announced", [True, False])
def test_max_bytes_abort(srv: OriginServer, cfg: Settings, announced: bool) -> None:
    settings = cfg.replace(quota={"max_bytes": 2 * MiB})
    url = srv.add("/a.pdf", BODY, FaultMode(omit_content_length=not announced))
    r = fetch(settings, url)
    assert (r.status, r.reason) == ("failed", "too_large")
    st = srv.stats("/a.pdf")
    if announced:
        # Refused on the GET's Content-Length: not one body byte read.
        assert st.requests == 1 and r.body_bytes_received == 0
    else:
        assert r.body_bytes_received <= 2 * MiB + 1024 * 1024
    assert list(settings.staging_dir.iterdir()) == [] and stored_pdfs(settings) == []


def test_preallocation_plus_resume_hashes_only_written_bytes(srv: OriginServer, cfg: Settings) -> None:
    settings = cfg.replace(io={"preallocate": True, "preallocate_min_size_bytes": MiB})
    url = srv.add("/a.pdf", BODY)

    class StopAt(NullHooks):
        def progress(self, bytes_on_disk: int) -> None:
            if bytes_on_disk >= 3 * MiB:
                raise DtkgError(Reason.LEASE_LOST, "stop here")

    first = fetch(settings, url, hooks=StopAt())
    assert first.reason == "lease_lost"
    store = Store(settings)
    part, sidecar = store.part_paths("W1", url)
    state = PartState.read(sidecar)
    assert state is not None and state.bytes_on_disk >= 3 * MiB
    assert part.stat().st_size == state.bytes_on_disk
    assert part.read_bytes() == BODY[: state.bytes_on_disk]
    # What a crash leaves: preallocated zeros past the durable bytes.
    with open(part, "r+b") as f:
        f.truncate(SIZE)
    r = fetch(settings, url)
    assert_stored(settings, r)
    assert r.resumed_from == state.bytes_on_disk and r.decision == "resume"


def test_identical_bytes_for_two_works_stored_once(srv: OriginServer, cfg: Settings) -> None:
    u1, u2 = srv.add("/one.pdf", BODY), srv.add("/two.pdf", BODY)
    r1, r2 = fetch(cfg, u1, "W1"), fetch(cfg, u2, "W2")
    assert (r1.status, r2.status) == ("stored", "deduped")
    assert_stored(cfg, r1, work_id="W1")
    assert_stored(cfg, r2, work_id="W2")
    store = Store(cfg)
    blobs = [p for p in stored_pdfs(cfg) if p.parent.name != "works"]
    assert blobs == [store.blob_path(SHA)]
    w1, w2 = store.work_path("W1").stat(), store.work_path("W2").stat()
    assert w1.st_ino == w2.st_ino == blobs[0].stat().st_ino and w1.st_nlink == 3


def test_second_fetch_serves_zero_body_bytes(srv: OriginServer, cfg: Settings) -> None:
    url = srv.add("/a.pdf", BODY)
    assert fetch(cfg, url).ok
    srv.reset_stats()
    r = fetch(cfg, url)
    assert (r.status, r.decision, r.sha256) == ("stored", "already_complete", SHA)
    st = srv.stats("/a.pdf")
    assert st.requests == 0 and st.body_bytes == 0
    r2 = fetch(cfg, url, known_sha256=SHA)
    assert r2.decision == "already_complete" and srv.stats("/a.pdf").requests == 0


@pytest.mark.parametrize("statuses", [[429], [503, 503]])
def test_429_and_503_with_retry_after_are_retried(srv: OriginServer, cfg: Settings, statuses: list[int]) -> None:
    url = srv.add("/a.pdf", BODY, FaultMode(status_sequence=statuses, retry_after="1"))
    r = fetch(cfg, url)
    assert_stored(cfg, r)
    st = srv.stats("/a.pdf")
    assert st.statuses == [*statuses, 200]  # no HEAD: the GETs themselves are retried
    assert r.attempts == len(statuses) + 1 and st.body_bytes == SIZE


def test_404_is_permanent_and_not_retried(srv: OriginServer, cfg: Settings) -> None:
    url = srv.add("/a.pdf", BODY, FaultMode(status=404))
    r = fetch(cfg, url)
    assert (r.status, r.reason, r.http_status) == ("failed", "http_404", 404)
    assert srv.stats("/a.pdf").requests == 1


def test_unsupported_scheme_is_refused(cfg: Settings) -> None:
    r = fetch(cfg, "ftp://127.0.0.1/a.pdf")
    assert (r.status, r.reason) == ("failed", "unsupported_scheme")


def test_many_threads_share_one_engine(srv: OriginServer, cfg: Settings) -> None:
    from concurrent.futures import ThreadPoolExecutor

    bodies = {f"/p{i}.pdf": make_pdf(MiB + i * 1000, i + 10) for i in range(8)}
    urls = {path: srv.add(path, body, FaultMode(truncate_after=300_000)) for path, body in bodies.items()}
    with make_client(cfg) as client, ThreadPoolExecutor(4) as pool:
        engine = Engine(client, cfg, Store(cfg))
        results = list(pool.map(lambda p: engine.fetch(urls[p], work_id=p[1:-4]), bodies))
    for (path, body), r in zip(bodies.items(), results, strict=True):
        assert_stored(cfg, r, body, work_id=path[1:-4])


def test_plain_httpx_client_works_too(srv: OriginServer, cfg: Settings) -> None:
    url = srv.add("/a.pdf", BODY)
    with httpx.Client(follow_redirects=True) as client:
        r = Engine(client, cfg).fetch(url, work_id="W1")
    assert_stored(cfg, r)
