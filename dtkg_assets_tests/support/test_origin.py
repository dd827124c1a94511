"""The test origin itself: every fault mode, checked with raw httpx and sockets."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from dtkg_assets_tests.support.nginx import NginxServer
from dtkg_assets_tests.support.origin import FaultMode, OriginServer

BODY = b"%PDF-1.7\n" + os.urandom(200_000) + b"\n%%EOF\n"
SIZE = len(BODY)
IDENTITY = {"Accept-Encoding": "identity"}


@pytest.fixture
def srv(origin: OriginServer) -> OriginServer:
    return origin


def get(url: str, **headers: str) -> httpx.Response:
    with httpx.Client(timeout=30) as c:
        return c.get(url, headers={**IDENTITY, **headers})


def test_full_get_head_and_counters(srv: OriginServer) -> None:
    url = srv.add("/a.pdf", BODY)
    with httpx.Client(timeout=30) as c:
        h = c.head(url)
        r = c.get(url, headers=IDENTITY)
    assert r.status_code == 200 and r.content == BODY
    assert h.status_code == 200 and h.content == b""
    for name in ("content-length", "etag", "last-modified", "accept-ranges", "content-type"):
        assert h.headers[name] == r.headers[name]
    assert h.headers["content-length"] == str(SIZE)
    assert not r.headers["etag"].startswith("W/")
    st = srv.stats("/a.pdf")
    assert (st.requests, st.head_requests, st.get_requests) == (2, 1, 1)
    assert st.body_bytes == SIZE == srv.total_body_bytes()
    assert st.statuses == [200, 200]
    assert st.accept_encodings[1] == "identity"


def test_unknown_path_404(srv: OriginServer) -> None:
    r = get(srv.url("/missing.pdf"))
    assert r.status_code == 404
    assert srv.stats("/missing.pdf").statuses == [404]
    assert srv.total_body_bytes() == 0


def test_range_206_and_suffix_and_416(srv: OriginServer) -> None:
    url = srv.add("/a.pdf", BODY)
    r = get(url, Range="bytes=1000-")
    assert r.status_code == 206 and r.content == BODY[1000:]
    assert r.headers["content-range"] == f"bytes 1000-{SIZE - 1}/{SIZE}"
    r = get(url, Range="bytes=10-19")
    assert r.status_code == 206 and r.content == BODY[10:20]
    r = get(url, Range="bytes=-7")
    assert r.status_code == 206 and r.content == BODY[-7:]
    r = get(url, Range=f"bytes={SIZE}-")
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{SIZE}"
    st = srv.stats("/a.pdf")
    assert st.statuses == [206, 206, 206, 416]
    assert st.body_bytes == (SIZE - 1000) + 10 + 7
    assert st.ranges == ["bytes=1000-", "bytes=10-19", "bytes=-7", f"bytes={SIZE}-"]


def test_ranges_off_serves_full_200(srv: OriginServer) -> None:
    url = srv.add("/a.pdf", BODY, FaultMode(ranges=False))
    r = get(url, Range="bytes=1000-")
    assert r.status_code == 200 and r.content == BODY
    assert "accept-ranges" not in r.headers


def test_if_range_strong_etag_and_date(srv: OriginServer) -> None:
    url = srv.add("/a.pdf", BODY)
    h = httpx.head(url)
    etag, lm = h.headers["etag"], h.headers["last-modified"]
    assert get(url, Range="bytes=5-", **{"If-Range": etag}).status_code == 206
    assert get(url, Range="bytes=5-", **{"If-Range": lm}).status_code == 206
    # A weak form of the same tag never matches (strong comparison): full 200.
    r = get(url, Range="bytes=5-", **{"If-Range": "W/" + etag})
    assert r.status_code == 200 and r.content == BODY
    assert get(url, Range="bytes=5-", **{"If-Range": '"other"'}).status_code == 200
    assert get(url, Range="bytes=5-", **{"If-Range": "Thu, 01 Jan 2015 00:00:00 GMT"}).status_code == 200
    assert srv.stats("/a.pdf").if_ranges[2] == "W/" + etag


def test_weak_validators_never_satisfy_if_range(srv: OriginServer) -> None:
    url = srv.add("/w.pdf", BODY, FaultMode(validators="weak"))
    h = httpx.head(url)
    assert h.headers["etag"].startswith('W/"') and "last-modified" not in h.headers
    r = get(url, Range="bytes=5-", **{"If-Range": h.headers["etag"]})
    assert r.status_code == 200 and r.content == BODY
    r = get(url, Range="bytes=5-", **{"If-Range": h.headers["etag"][2:]})
    assert r.status_code == 200
    assert get(url, Range="bytes=5-").status_code == 206


@pytest.mark.parametrize(
    ("validators", "etag", "lm"),
    [("strong", True, True), ("weak", True, False), ("last_modified", False, True), ("none", False, False)],
)
def test_validator_modes(srv: OriginServer, validators, etag, lm) -> None:
    url = srv.add("/v.pdf", BODY, FaultMode(validators=validators))
    h = httpx.head(url)
    assert ("etag" in h.headers) is etag
    assert ("last-modified" in h.headers) is lm
    if lm:
        r = get(url, Range="bytes=5-", **{"If-Range": h.headers["last-modified"]})
        assert r.status_code == 206


def test_mutate_changes_bytes_and_validators_within_the_same_second(srv: OriginServer) -> None:
    url = srv.add("/m.pdf", BODY)
    h1 = httpx.head(url)
    srv.mutate("/m.pdf")
    h2 = httpx.head(url)
    new = get(url).content
    assert new != BODY and new.startswith(b"%PDF-") and new.endswith(b"%%EOF\n") and len(new) > SIZE
    assert h1.headers["etag"] != h2.headers["etag"]
    assert h1.headers["last-modified"] != h2.headers["last-modified"]
    r = get(url, Range="bytes=5-", **{"If-Range": h1.headers["etag"]})
    assert r.status_code == 200 and r.content == new
    r = get(url, Range="bytes=5-", **{"If-Range": h1.headers["last-modified"]})
    assert r.status_code == 200
    assert srv.object_bytes("/m.pdf") == new
    srv.mutate("/m.pdf", b"%PDF-1.4 other\n%%EOF\n")
    assert get(url).content == b"%PDF-1.4 other\n%%EOF\n"


def test_change_after_gets(srv: OriginServer) -> None:
    url = srv.add("/c.pdf", BODY, FaultMode(change_after_gets=1))
    r1 = get(url)
    r2 = get(url, Range="bytes=100-", **{"If-Range": r1.headers["etag"]})
    assert r1.content == BODY
    assert r2.status_code == 200 and r2.content != BODY
    assert r2.headers["etag"] != r1.headers["etag"]
    r3 = get(url, Range="bytes=100-", **{"If-Range": r2.headers["etag"]})
    assert r3.status_code == 206 and r3.content == r2.content[100:]


def test_truncate_after_then_resume(srv: OriginServer) -> None:
    url = srv.add("/t.pdf", BODY, FaultMode(truncate_after=50_000, truncate_times=2))
    got = bytearray()
    failures = 0
    with httpx.Client(timeout=30) as c:
        while len(got) < SIZE:
            headers = dict(IDENTITY)
            if got:
                headers["Range"] = f"bytes={len(got)}-"
            try:
                with c.stream("GET", url, headers=headers) as r:
                    assert r.headers["content-length"] == str(SIZE - len(got))
                    for chunk in r.iter_raw():
                        got += chunk
            except httpx.RemoteProtocolError:
                failures += 1
    assert bytes(got) == BODY
    assert failures == 2
    st = srv.stats("/t.pdf")
    assert st.get_requests == 3 and st.body_bytes == SIZE
    assert st.ranges == [None, "bytes=50000-", "bytes=100000-"]


def test_truncate_on_ranged_request(srv: OriginServer) -> None:
    url = srv.add("/t.pdf", BODY, FaultMode(truncate_after=10))
    with pytest.raises(httpx.RemoteProtocolError):
        get(url, Range="bytes=100-")
    assert srv.stats("/t.pdf").body_bytes == 10
    assert get(url, Range="bytes=100-").content == BODY[100:]


def _raw_get(url: str, path: str, extra: str = "") -> tuple[bytes, BaseException | None]:
    host, port = url.split("//")[1].split("/")[0].split(":")
    data = bytearray()
    err: BaseException | None = None
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept-Encoding: identity\r\n{extra}\r\n".encode())
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError as exc:
            err = exc
    return bytes(data), err


def test_reset_after_sends_rst(srv: OriginServer) -> None:
    url = srv.add("/r.pdf", BODY, FaultMode(reset_after=1000, reset_times=1))
    data, err = _raw_get(srv.base_url + "/", "/r.pdf")
    assert isinstance(err, ConnectionResetError)
    assert srv.stats("/r.pdf").body_bytes == 1000
    head, _, body = data.partition(b"\r\n\r\n")
    assert len(body) <= 1000 and BODY.startswith(body)
    with pytest.raises(httpx.TransportError):  # the second reset_times=2 case is covered below
        srv.set_mode("/r.pdf", FaultMode(reset_after=10, reset_times=2))
        get(url)
    with pytest.raises(httpx.TransportError):
        get(url)
    assert get(url).content == BODY


def test_status_sequence_with_retry_after(srv: OriginServer) -> None:
    url = srv.add("/s.pdf", BODY, FaultMode(status_sequence=[503, 429, 500], retry_after="2"))
    with httpx.Client(timeout=30) as c:
        assert c.head(url).status_code == 200  # HEAD is not part of the sequence
        rs = [c.get(url, headers=IDENTITY) for _ in range(4)]
    assert [r.status_code for r in rs] == [503, 429, 500, 200]
    assert all(r.headers["retry-after"] == "2" for r in rs[:3])
    assert rs[3].content == BODY
    st = srv.stats("/s.pdf")
    assert st.statuses == [200, 503, 429, 500, 200]
    assert st.body_bytes == SIZE  # error bodies are not object bytes


def test_fixed_status_and_head_405(srv: OriginServer) -> None:
    gone = srv.add("/gone.pdf", BODY, FaultMode(status=410))
    assert get(gone).status_code == 410
    assert httpx.head(gone).status_code == 410
    url = srv.add("/h.pdf", BODY, FaultMode(head_status=405))
    h = httpx.head(url)
    assert h.status_code == 405 and h.headers["allow"] == "GET"
    assert get(url).content == BODY


def test_stall_before_body_and_mid_body(srv: OriginServer) -> None:
    # The stall outlasts the read timeout by far; stopping the origin ends it.
    url = srv.add("/st.pdf", BODY, FaultMode(stall_s=120.0, stall_after_bytes=1000, stall_times=1))
    with httpx.Client(timeout=httpx.Timeout(30, read=3.0)) as c:
        got = bytearray()
        with pytest.raises(httpx.ReadTimeout), c.stream("GET", url, headers=IDENTITY) as r:
            for chunk in r.iter_raw():
                got += chunk
        assert bytes(got) == BODY[: len(got)] and len(got) == 1000
        r = c.get(url, headers={**IDENTITY, "Range": "bytes=1000-"})  # stall_times=1: no stall now
        assert r.content == BODY[1000:]
    srv.set_mode("/st.pdf", FaultMode(stall_s=0.3))
    t0 = time.monotonic()
    assert get(url).content == BODY
    assert time.monotonic() - t0 >= 0.3


def test_html_body_served_as_pdf(srv: OriginServer) -> None:
    url = srv.add("/html.pdf", BODY, FaultMode(html_body=True))
    r = get(url)
    assert r.headers["content-type"] == "application/pdf"
    assert r.content.startswith(b"<!DOCTYPE html>")
    assert httpx.head(url).headers["content-length"] == str(len(r.content))


def test_gzip_only_when_asked(srv: OriginServer) -> None:
    body = b"%PDF-1.7\n" + b"compressible " * 20_000 + b"\n%%EOF\n"
    url = srv.add("/g.pdf", body, FaultMode(gzip=True))
    with httpx.Client(timeout=30) as c:
        r = c.get(url, headers={"Accept-Encoding": "gzip", "Range": "bytes=100-"})
        assert r.status_code == 200 and r.headers["content-encoding"] == "gzip"
        assert r.headers["etag"].startswith("W/")
        assert r.content == body  # httpx decodes
        raw = c.get(url, headers={"Accept-Encoding": "identity", "Range": "bytes=100-"})
    assert raw.status_code == 206 and raw.content == body[100:]
    assert "content-encoding" not in raw.headers
    st = srv.stats("/g.pdf")
    assert st.body_bytes == len(gzip.compress(body, mtime=0)) + len(body) - 100


def test_force_416_with_announced_total(srv: OriginServer) -> None:
    url = srv.add("/416.pdf", BODY, FaultMode(force_416=True))
    r = get(url, Range="bytes=100-")
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{SIZE}"
    assert get(url).status_code == 200
    srv.set_mode("/416.pdf", FaultMode(force_416=True, total_416=SIZE + 5))
    assert get(url, Range="bytes=100-").headers["content-range"] == f"bytes */{SIZE + 5}"


def test_content_range_shift_lies(srv: OriginServer) -> None:
    url = srv.add("/lie.pdf", BODY, FaultMode(content_range_shift=-10))
    r = get(url, Range="bytes=100-")
    assert r.status_code == 206 and r.content == BODY[100:]
    assert r.headers["content-range"] == f"bytes 90-{SIZE - 11}/{SIZE}"


def test_chunked_without_content_length(srv: OriginServer) -> None:
    url = srv.add("/chunk.pdf", BODY, FaultMode(omit_content_length=True))
    r = get(url)
    assert r.content == BODY and "content-length" not in r.headers
    assert r.headers["transfer-encoding"] == "chunked"
    assert get(url, Range="bytes=7-").content == BODY[7:]
    srv.set_mode("/chunk.pdf", FaultMode(omit_content_length=True, truncate_after=3000))
    with pytest.raises(httpx.RemoteProtocolError):
        get(url)


def test_redirect_chain_keeps_range_and_redirect_to(srv: OriginServer) -> None:
    url = srv.add("/red.pdf", BODY, FaultMode(redirects=3))
    with httpx.Client(timeout=30, follow_redirects=True) as c:
        r = c.get(url, headers={**IDENTITY, "Range": "bytes=10-"})
    assert r.status_code == 206 and r.content == BODY[10:]
    assert len(r.history) == 3 and str(r.url).endswith("?hop=3")
    st = srv.stats("/red.pdf")
    assert st.statuses == [302, 302, 302, 206]
    assert st.ranges == ["bytes=10-"] * 4
    bad = srv.add("/evil.pdf", BODY, FaultMode(redirect_to="file:///etc/passwd"))
    r = get(bad)
    assert r.status_code == 302 and r.headers["location"] == "file:///etc/passwd"


def test_latency_user_agent_and_robots(srv: OriginServer) -> None:
    url = srv.add("/slow.pdf", BODY, FaultMode(latency_s=0.2))
    t0 = time.monotonic()
    get(url, **{"User-Agent": "dtkg-test/1"})
    assert time.monotonic() - t0 >= 0.2
    assert srv.stats("/slow.pdf").user_agents == ["dtkg-test/1"]
    srv.add_robots("User-agent: *\nDisallow: /private/\n")
    r = get(srv.url("/robots.txt"))
    assert r.text == "User-agent: *\nDisallow: /private/\n" and r.headers["content-type"] == "text/plain"
    srv.add_robots(status=500)
    assert get(srv.url("/robots.txt")).status_code == 500


def test_add_file_streams_and_mutates(srv: OriginServer, tmp_path) -> None:
    f = tmp_path / "big.pdf"
    f.write_bytes(BODY * 10)
    url = srv.add_file("/big.pdf", f)
    assert get(url).content == BODY * 10
    assert get(url, Range=f"bytes={SIZE * 3}-{SIZE * 4 - 1}").content == BODY
    srv.mutate("/big.pdf")
    new = get(url).content
    assert new != BODY * 10 and new.endswith(b"%%EOF\n") and new == srv.object_bytes("/big.pdf")
    assert f.read_bytes() == BODY * 10  # the file on disk is untouched


def test_keep_alive_and_reset_stats(srv: OriginServer) -> None:
    url = srv.add("/k.pdf", BODY)
    with httpx.Client(timeout=30) as c:
        for _ in range(5):
            assert c.get(url, headers=IDENTITY).content == BODY
    assert srv.stats("/k.pdf").get_requests == 5
    srv.reset_stats()
    assert srv.stats("/k.pdf").requests == 0 and srv.total_body_bytes() == 0


def test_serve_dir(tmp_path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.pdf").write_bytes(BODY)
    with OriginServer() as s:
        s.serve_dir(tmp_path)
        assert get(s.url("/sub/x.pdf")).content == BODY
        assert get(s.url("/sub/../../etc/passwd")).status_code == 404
        assert get(s.url("/nope.pdf")).status_code == 404


def test_concurrent_clients_counted(srv: OriginServer) -> None:
    import concurrent.futures as cf

    urls = [srv.add(f"/p{i}.pdf", BODY) for i in range(8)]
    with httpx.Client(timeout=30) as c, cf.ThreadPoolExecutor(8) as pool:
        bodies = list(pool.map(lambda u: c.get(u, headers=IDENTITY).content, urls * 3))
    assert all(b == BODY for b in bodies)
    assert srv.total_body_bytes() == SIZE * 24


def _start_cli(*args: str) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen([sys.executable, "-m", "dtkg_assets_tests.support.origin", *args], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    lines = [proc.stdout.readline().strip()]
    return proc, lines


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_cli_serves_a_directory(tmp_path) -> None:
    (tmp_path / "x.pdf").write_bytes(BODY)
    proc, lines = _start_cli("--root", str(tmp_path), "--port", "0")
    try:
        assert lines[0].startswith("http://127.0.0.1:")
        r = get(lines[0] + "/x.pdf", Range="bytes=100-")
        assert r.status_code == 206 and r.content == BODY[100:]
    finally:
        _stop(proc)


def test_cli_serves_the_sample(tmp_path, sample_corpus) -> None:
    proc, lines = _start_cli("--sample", str(sample_corpus.dir), "--no-faults")
    try:
        assert proc.stdout is not None
        works = Path(proc.stdout.readline().strip())
        first = json.loads(works.read_text().splitlines()[0])
        url = first["best_oa_location"]["pdf_url"]
        assert url.startswith(lines[0])
        exp = sample_corpus.expected[first["id"].rsplit("/", 1)[1]]
        assert hashlib.sha256(get(url).content).hexdigest() == exp.sha256
    finally:
        _stop(proc)


class TestNginxHelper:
    """The nginx helper really runs nginx, with RFC behaviour the origin mirrors."""

    def test_ranges_if_range_and_416(self, nginx, nginx_root) -> None:
        (nginx_root / "a.pdf").write_bytes(BODY)
        url = nginx.url("a.pdf")
        r = get(url, Range="bytes=100-")
        assert r.status_code == 206 and r.content == BODY[100:]
        etag = r.headers["etag"]
        assert get(url, Range="bytes=100-", **{"If-Range": etag}).status_code == 206
        assert get(url, Range="bytes=100-", **{"If-Range": "W/" + etag}).status_code == 200
        r = get(url, Range=f"bytes={SIZE}-")
        assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{SIZE}"
        assert nginx.logged("GET /a.pdf", 4) == 4

    def test_gzip_flag(self, nginx_root) -> None:
        body = b"%PDF-1.7\n" + b"compressible " * 10_000 + b"\n%%EOF\n"
        (nginx_root / "g.pdf").write_bytes(body)
        with NginxServer(nginx_root, gzip=True) as n:
            with httpx.Client(timeout=30) as c:
                r = c.get(n.url("g.pdf"), headers={"Range": "bytes=10-"})  # httpx offers gzip by default
                assert r.status_code == 200 and r.headers["content-encoding"] == "gzip" and r.content == body
                r = c.get(n.url("g.pdf"), headers={"Range": "bytes=10-", "Accept-Encoding": "identity"})
                assert r.status_code == 206 and r.content == body[10:]
            port = n.port
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/g.pdf")

    def test_missing_binary_names_the_fix(self, nginx_root, monkeypatch) -> None:
        import dtkg_assets_tests.support.nginx as mod

        monkeypatch.setattr(mod, "NGINX_BIN", "/nonexistent/nginx")
        monkeypatch.setattr(mod.shutil, "which", lambda _: None)
        with pytest.raises(RuntimeError, match="make system-deps"):
            NginxServer(nginx_root).start()


def test_pdf_bytes_helper(pdf_bytes) -> None:
    data = pdf_bytes(8 * 1024 * 1024, 3)
    assert len(data) == 8 * 1024 * 1024
    assert data.startswith(b"%PDF-1.7\n") and data.endswith(b"\n%%EOF\n")
    assert data.count(b"%") == 3  # markers only in head and tail
    assert data == pdf_bytes(8 * 1024 * 1024, 3) and data != pdf_bytes(8 * 1024 * 1024, 4)
    assert len(gzip.compress(data[:1_000_000], 1)) > 990_000  # incompressible


def test_settings_fixture(settings, tmp_path) -> None:
    assert settings.home == tmp_path / "home"
    assert settings.quota.free_bytes_min == 0 and not settings.http.robots_enabled
    assert "127.0.0.1" in settings.http.allow_hosts and dict(settings.http.rate_limits) == {"*": 0.0}


def test_conditional_get_304(srv: OriginServer) -> None:
    url = srv.add("/cond.pdf", BODY)
    h = httpx.head(url)
    with httpx.Client(timeout=30) as c:
        r = c.get(url, headers={**IDENTITY, "If-None-Match": h.headers["etag"]})
        assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == h.headers["etag"]
        r = c.get(url, headers={**IDENTITY, "If-Modified-Since": h.headers["last-modified"]})
        assert r.status_code == 304
        srv.mutate("/cond.pdf")
        r = c.get(url, headers={**IDENTITY, "If-None-Match": h.headers["etag"]})
        assert r.status_code == 200 and r.content == srv.object_bytes("/cond.pdf")
        r = c.get(url, headers={**IDENTITY, "If-Modified-Since": h.headers["last-modified"]})
        assert r.status_code == 200
    st = srv.stats("/cond.pdf")
    assert st.statuses == [200, 304, 304, 200, 200] and st.body_bytes == 2 * len(srv.object_bytes("/cond.pdf"))
