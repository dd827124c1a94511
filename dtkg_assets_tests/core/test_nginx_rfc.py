"""The engine against a real nginx: If-Range, 416 and gzip as a production server does them."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from dtkg_assets.core.errors import DtkgError, Reason
from dtkg_assets.core.http import make_client
from dtkg_assets.core.settings import MiB, Settings
from dtkg_assets.core.store import Store
from dtkg_assets.core.streaming import Engine, PartState
from dtkg_assets.core.types import FetchResult, NullHooks
from dtkg_assets_tests.support.nginx import NginxServer

SIZE = 5 * MiB + 321


class StopAt(NullHooks):
    """Abandons the download once `limit` bytes are on disk (leaves a resumable part)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def progress(self, bytes_on_disk: int) -> None:
        if bytes_on_disk >= self.limit:
            raise DtkgError(Reason.LEASE_LOST, "stop here")


class FailFenceOnce(NullHooks):
    """Leaves a complete part behind: fencing fails right before finalize."""

    def check_fence(self) -> None:
        raise DtkgError(Reason.LEASE_LOST, "stop before finalize")


class Recorder:
    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.statuses: list[int] = []

    def on_request(self, request: httpx.Request) -> None:
        self.requests.append(request)

    def on_response(self, response: httpx.Response) -> None:
        self.statuses.append(response.status_code)

    def gets(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == "GET"]


@pytest.fixture
def body(nginx_root: Path, pdf_bytes: Callable[[int, int], bytes]) -> bytes:
    data = pdf_bytes(SIZE, 7)
    (nginx_root / "paper.pdf").write_bytes(data)
    return data


@pytest.fixture
def fetcher(settings: Settings) -> Iterator[tuple[Recorder, Callable[..., FetchResult]]]:
    rec = Recorder()
    client = make_client(settings)
    client.event_hooks = {"request": [rec.on_request], "response": [rec.on_response]}
    engine = Engine(client, settings, Store(settings))

    def run(url: str, **kw: object) -> FetchResult:
        return engine.fetch(url, work_id="W1", **kw)  # type: ignore[arg-type]

    try:
        yield rec, run
    finally:
        client.close()


def assert_file(settings: Settings, result: FetchResult, body: bytes) -> None:
    assert result.ok, (result.reason, result.detail)
    assert result.sha256 == hashlib.sha256(body).hexdigest()
    assert Path(str(result.path)).read_bytes() == body
    assert Store(settings).blob_path(str(result.sha256)).stat().st_ino == Path(str(result.path)).stat().st_ino


class TestNginxRFCBehaviour:
    def test_if_range_with_strong_etag_resumes_with_206(self, nginx: NginxServer, body: bytes, fetcher, settings):
        rec, run = fetcher
        url = nginx.url("paper.pdf")
        first = run(url, hooks=StopAt(2 * MiB))
        assert first.reason == "lease_lost"
        r = run(url)
        assert_file(settings, r, body)
        last = rec.gets()[-1]
        etag = r.etag
        assert etag is not None and not etag.startswith("W/")
        assert last.headers["If-Range"] == etag
        assert last.headers["Range"] == f"bytes={r.resumed_from}-" and r.resumed_from >= 2 * MiB
        assert rec.statuses[-1] == 206
        assert r.body_bytes_received == SIZE - r.resumed_from

    def test_weak_etag_is_never_sent(self, nginx: NginxServer, body: bytes, fetcher, settings):
        rec, run = fetcher
        url = nginx.url("paper.pdf")
        with httpx.Client() as c:
            head = c.head(url)
            strong = head.headers["etag"]
            # Why it matters: nginx compares If-Range strongly, a weak ETag gets the whole body.
            raw = c.get(url, headers={"Range": "bytes=100-", "If-Range": "W/" + strong, "Accept-Encoding": "identity"})
            assert raw.status_code == 200 and len(raw.content) == SIZE
        # A part whose sidecar only knows a weak ETag (as a gzip-ing server would have sent).
        store = Store(settings)
        part, sidecar = store.part_paths("W1", url)
        part.write_bytes(body[: 3 * MiB])
        PartState(url, etag="W/" + strong, expected_size=SIZE, bytes_on_disk=3 * MiB).write(sidecar)
        r = run(url)
        assert_file(settings, r, body)
        assert all(not req.headers.get("If-Range", "").startswith("W/") for req in rec.requests)
        assert r.decision == "discard_part" and r.resumed_from == 0

    def test_416_for_a_complete_part(self, nginx: NginxServer, body: bytes, fetcher, settings):
        rec, run = fetcher
        url = nginx.url("paper.pdf")
        assert run(url, hooks=FailFenceOnce()).reason == "lease_lost"
        before = len(rec.statuses)
        r = run(url)
        assert_file(settings, r, body)
        assert rec.statuses[before:] == [416]  # one ranged GET past the end, If-Range from the sidecar
        assert rec.gets()[-1].headers["Range"] == f"bytes={SIZE}-"
        assert r.body_bytes_received == 0 and r.resumed_from == SIZE

    def test_nginx_gzips_unless_identity_is_asked(self, nginx_root: Path, body: bytes, settings):
        with NginxServer(nginx_root, gzip=True) as gz:
            url = gz.url("paper.pdf")
            with httpx.Client() as c:
                default = c.get(url, headers={"Range": "bytes=100-"})
            # httpx's default Accept-Encoding: a gzipped 200, not the 206 we asked for.
            assert default.status_code == 200 and default.headers["content-encoding"] == "gzip"
            rec = Recorder()
            with make_client(settings) as client:
                client.event_hooks = {"request": [rec.on_request], "response": [rec.on_response]}
                r = Engine(client, settings, Store(settings)).fetch(url, work_id="W1")
        assert_file(settings, r, body)
        assert all(req.headers["Accept-Encoding"] == "identity" for req in rec.requests)
        assert r.body_bytes_received == SIZE
