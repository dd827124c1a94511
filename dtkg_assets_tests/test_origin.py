"""The test origin itself: every fault mode, checked with raw httpx and sockets."""

from __future__ import annotations

import gzip
import os
import socket
import time

import httpx
import pytest

from dtkg_assets.origin import FaultMode, OriginServer

BODY = b"%PDF-1.7\n" + os.urandom(200_000) + b"\n%%EOF\n"
SIZE = len(BODY)
IDENTITY = {"Accept-Encoding": "identity"}


@pytest.fixture
def srv():
    with OriginServer() as server:
        yield server


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
