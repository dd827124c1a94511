"""The demo's local HTTP/1.1 origin, with the fault modes its sample corpus uses.

Real sockets on 127.0.0.1, one thread per connection, keep-alive. Each path serves one object
(bytes in memory or a file streamed from disk) under a `FaultMode` that reproduces a server
behaviour seen in the wild: ranges ignored, weak or missing validators, truncated bodies, resets,
5xx with Retry-After, redirect chains, HEAD rejected, any content type and extra headers. Every
request and every body byte written is counted per path.

Only the standard library is used, so the demo runs it without test dependencies. The test
suite's origin (`dtkg_assets_tests.support.origin`) subclasses this server and its handler
through the small hook methods marked below, and adds the modes only tests use (stalls, gzip,
416, objects that change, HTML bodies …) and a command line.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qs, quote, unquote, urlsplit

_CHUNK = 256 * 1024


@dataclass
class FaultMode:
    """How one path misbehaves. Modes compose (e.g. ``truncate_after`` with ranges on)."""

    ranges: bool = True  # honour Range (206) or ignore it (200 full body)
    # strong: ETag + Last-Modified; weak: W/ ETag only; last_modified: only Last-Modified; none.
    validators: Literal["strong", "weak", "last_modified", "none"] = "strong"
    truncate_after: int | None = None  # send at most N body bytes of a GET, then close (FIN)
    truncate_times: int = 1
    reset_after: int | None = None  # send N body bytes, then reset (RST)
    reset_times: int = 1
    status_sequence: list[int] = field(default_factory=list)  # first GETs answer these statuses
    retry_after: str | None = None  # Retry-After on the status_sequence answers
    head_status: int | None = None  # HEAD answers this status (e.g. 405)
    redirects: int = 0  # N hops of 302 (?hop=k) before serving the object
    redirect_to: str | None = None  # 302 to this absolute Location
    content_type: str = "application/pdf"
    # Extra response headers on the object or its redirect (Content-Disposition, cf-mitigated, credits …).
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class PathStats:
    """What one path was asked and what it answered. ``body_bytes`` counts object body bytes
    written to sockets by GETs (not the tiny bodies of error statuses or redirects)."""

    requests: int = 0
    head_requests: int = 0
    get_requests: int = 0
    body_bytes: int = 0
    ranges: list[str | None] = field(default_factory=list)  # Range header of each GET
    if_ranges: list[str | None] = field(default_factory=list)  # If-Range header of each GET
    statuses: list[int] = field(default_factory=list)  # status of every response, in order
    request_times: list[float] = field(default_factory=list)  # time.monotonic() at arrival
    user_agents: list[str | None] = field(default_factory=list)
    accept_encodings: list[str | None] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)  # Authorization header of each request
    accepts: list[str | None] = field(default_factory=list)  # Accept header of every request
    queries: list[str] = field(default_factory=list)  # query string of every request ("" without one)

    def copy(self) -> PathStats:
        return PathStats(
            self.requests,
            self.head_requests,
            self.get_requests,
            self.body_bytes,
            list(self.ranges),
            list(self.if_ranges),
            list(self.statuses),
            list(self.request_times),
            list(self.user_agents),
            list(self.accept_encodings),
            list(self.authorizations),
            list(self.accepts),
            list(self.queries),
        )


@dataclass(frozen=True)
class _Object:
    """One version of a served object (the test origin's changed objects subclass it)."""

    base: bytes | Path
    base_size: int
    tag: str  # hex core of the ETag
    last_modified: int  # epoch seconds

    @property
    def size(self) -> int:
        return self.base_size

    def read(self, start: int, end: int) -> Iterator[bytes]:
        """Bytes [start, end) in chunks, streamed from disk for file objects."""
        base_end = min(end, self.base_size)
        if start < base_end:
            if isinstance(self.base, bytes):
                view = memoryview(self.base)
                for pos in range(start, base_end, _CHUNK):
                    yield bytes(view[pos : min(pos + _CHUNK, base_end)])
            else:
                with open(self.base, "rb") as fh:
                    fh.seek(start)
                    pos = start
                    while pos < base_end:
                        data = fh.read(min(_CHUNK, base_end - pos))
                        if not data:
                            raise OSError(f"{self.base} shrank while being served")
                        yield data
                        pos += len(data)

    def full(self) -> bytes:
        return b"".join(self.read(0, self.size))


def _sha_tag(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()[:20]


@dataclass
class _Entry:
    obj: _Object
    mode: FaultMode
    truncations: int = 0
    resets: int = 0
    seq_used: int = 0


@dataclass
class _Plan:
    """Per-response fault decisions, taken under the lock."""

    truncate_at: int | None = None
    reset_at: int | None = None

    def limit(self, length: int) -> int | None:
        """Where the body is cut (truncation or reset), if it is cut at all."""
        cuts = [x for x in (self.truncate_at, self.reset_at) if x is not None and x < length]
        return min(cuts) if cuts else None


class OriginServer:
    """Threaded HTTP/1.1 origin on 127.0.0.1 with per-path fault modes and counters."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._stats: dict[str, PathStats] = {}
        self._stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.base_url = ""

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> OriginServer:
        if self._server is not None:
            return self
        server_cls = _HTTPServer6 if ":" in self.host else _HTTPServer
        server = server_cls((self.host, self.port), self._handler())
        server.origin = self
        self._server = server
        self.port = server.server_address[1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.base_url = f"http://{host}:{self.port}"
        self._stopping.clear()
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"origin-{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()  # wakes stalled handlers
        server.shutdown()
        server.server_close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:  # idle keep-alive connections would otherwise keep threads alive
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> OriginServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- objects ---------------------------------------------------------------------------
    def url(self, path: str) -> str:
        return self.base_url + quote(_norm(path), safe="/?=&%~")

    def add(self, path: str, body: bytes, mode: FaultMode | None = None) -> str:
        obj = _Object(bytes(body), len(body), _sha_tag(body), int(time.time()) - 3600)
        return self._put(path, obj, mode)

    def add_file(self, path: str, file: Path, mode: FaultMode | None = None) -> str:
        """Serve `file` streamed from disk (never read into memory; fine for GiB files)."""
        file = Path(file)
        st = file.stat()
        # Cheap validator like nginx's (mtime + size) instead of hashing a possibly huge file.
        tag = hashlib.sha256(f"{file.resolve()}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}".encode()).hexdigest()[:20]
        obj = _Object(file, st.st_size, tag, int(st.st_mtime))
        return self._put(path, obj, mode)

    def _put(self, path: str, obj: _Object, mode: FaultMode | None) -> str:
        key = _norm(path)
        with self._lock:
            self._entries[key] = self._entry(obj, mode)
        return self.url(key)

    def add_robots(self, text: str | None = None) -> None:
        body = (text if text is not None else "User-agent: *\nAllow: /\n").encode()
        self.add("/robots.txt", body, FaultMode(content_type="text/plain"))

    # -- counters --------------------------------------------------------------------------
    def stats(self, path: str) -> PathStats:
        with self._lock:
            stats = self._stats.get(_norm(path))
            return stats.copy() if stats is not None else PathStats()

    def total_body_bytes(self) -> int:
        with self._lock:
            return sum(s.body_bytes for s in self._stats.values())

    def total_requests(self) -> int:
        with self._lock:
            return sum(s.requests for s in self._stats.values())

    def reset_stats(self) -> None:
        with self._lock:
            self._stats.clear()

    # -- used by the handler ---------------------------------------------------------------
    def _lookup(self, key: str) -> _Entry | None:
        with self._lock:
            return self._entries.get(key)

    # -- hooks for the test origin ---------------------------------------------------------
    def _handler(self) -> type[_Handler]:
        return _Handler

    def _entry(self, obj: _Object, mode: FaultMode | None) -> _Entry:
        return _Entry(obj, mode or FaultMode())


def _norm(path: str) -> str:
    path = unquote(urlsplit(path).path)
    return path if path.startswith("/") else "/" + path


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    origin: OriginServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that resets a kept-alive connection (it stopped reading an HTML page, or gave up
        # on a slow body) is normal traffic, not a server error: no traceback on the demo's console.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None | Literal["unsatisfiable"]:
    """One `bytes=` range -> (start, end_exclusive); None when absent or not understood (-> 200)."""
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first == "":
            suffix = int(last)
            if suffix <= 0:
                return "unsatisfiable"
            return (max(0, size - suffix), size)
        start = int(first)
        end = int(last) + 1 if last else size
    except ValueError:
        return None
    if start < 0 or end <= start:
        return None if start < size else "unsatisfiable"
    if start >= size:
        return "unsatisfiable"
    return (start, min(end, size))


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "dtkg-origin/1.0"
    timeout = 120  # idle keep-alive connections end eventually
    server: _HTTPServer
    _st: PathStats

    def setup(self) -> None:
        super().setup()
        origin = self.server.origin
        with origin._lock:
            origin._conns.add(self.connection)

    def finish(self) -> None:
        origin = self.server.origin
        with origin._lock:
            origin._conns.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_HEAD(self) -> None:
        self._serve("HEAD")

    # -- helpers ---------------------------------------------------------------------------
    def _status(self, code: int) -> None:
        with self.server.origin._lock:
            self._st.statuses.append(code)
        self.send_response(code)

    def _simple(self, code: int, head: bool, extra: dict[str, str] | None = None) -> None:
        try:
            phrase = http.HTTPStatus(code).phrase
        except ValueError:
            phrase = ""
        # 204 and 304 never carry a body (RFC 9110 §15.3.5, §15.4.5).
        data = b"" if code in (204, 304) else f"{code} {phrase}\n".encode()
        self._status(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def _serve(self, method: str) -> None:
        origin = self.server.origin
        arrived = time.monotonic()
        split = urlsplit(self.path)
        key = _norm(split.path)
        head = method == "HEAD"
        with origin._lock:
            st = origin._stats.setdefault(key, PathStats())
            st.requests += 1
            st.request_times.append(arrived)
            st.user_agents.append(self.headers.get("User-Agent"))
            st.accept_encodings.append(self.headers.get("Accept-Encoding"))
            st.authorizations.append(self.headers.get("Authorization"))
            st.accepts.append(self.headers.get("Accept"))
            st.queries.append(split.query)
            if head:
                st.head_requests += 1
            else:
                st.get_requests += 1
                st.ranges.append(self.headers.get("Range"))
                st.if_ranges.append(self.headers.get("If-Range"))
        self._st = st
        entry = origin._lookup(key)
        if entry is None:
            self._simple(404, head)
            return
        mode = entry.mode
        if self._answered_early(mode, head):
            return
        if head and mode.head_status is not None:
            self._simple(mode.head_status, head, {"Allow": "GET"} if mode.head_status == 405 else None)
            return
        if mode.redirect_to:
            # The mode's extra headers go on the redirect too (an API's credit headers ride on its 302).
            self._simple(302, head, {**mode.headers, "Location": mode.redirect_to})
            return
        if mode.redirects > 0:
            try:
                hop = int(parse_qs(split.query).get("hop", ["0"])[0])
            except ValueError:
                hop = 0
            if hop < mode.redirects:
                self._simple(302, head, {"Location": f"{origin.url(key)}?hop={hop + 1}"})
                return
        plan = self._new_plan()
        with origin._lock:
            if not head and entry.seq_used < len(mode.status_sequence):
                code = mode.status_sequence[entry.seq_used]
                entry.seq_used += 1
            else:
                code = 0
            obj = self._object_locked(entry, mode, not head and code == 0)
        if code:
            self._simple(code, head, self._retry_headers(mode))
            return
        self._send_object(method, entry, mode, obj, plan)

    # -- hooks for the test origin (each is a no-op for the demo's modes) ------------------
    def _answered_early(self, mode: FaultMode, head: bool) -> bool:
        """Answer before the object's own modes; True when the response has been sent."""
        return False

    def _new_plan(self) -> _Plan:
        return _Plan()

    def _object_locked(self, entry: _Entry, mode: FaultMode, counted_get: bool) -> _Object:
        """The object this response serves, chosen under the lock; `counted_get` is a GET that
        reaches the object (not a HEAD, not a status_sequence answer)."""
        return entry.obj

    def _advertises_ranges(self, mode: FaultMode) -> bool:
        return mode.ranges

    def _encoded_body(self, entry: _Entry, mode: FaultMode, obj: _Object, headers: dict[str, str]) -> bytes | None:
        """A whole encoded body that replaces the object (its headers added to `headers`), or None."""
        return None

    def _answered_range(self, mode: FaultMode, size: int) -> bool:
        """Answer a ranged GET before its Range is read; True when the response has been sent."""
        return False

    def _content_range(self, mode: FaultMode, start: int, end: int, size: int) -> str:
        return f"bytes {start}-{end - 1}/{size}"

    def _plan_locked(self, entry: _Entry, mode: FaultMode, plan: _Plan) -> None:
        """More per-response faults, decided under the lock after truncation and reset."""

    def _chunked(self, mode: FaultMode) -> bool:
        return False

    def _before_headers(self, mode: FaultMode, head: bool) -> None:
        """Called just before the status line of an object response."""

    def _final_status(self, mode: FaultMode, status: int) -> int:
        return status

    def _paced(self, chunks: Iterator[bytes], mode: FaultMode, plan: _Plan, limit: int | None) -> Iterator[bytes]:
        """The body's chunks as they are written; `limit` is where the body will be cut."""
        return chunks

    def _retry_headers(self, mode: FaultMode) -> dict[str, str]:
        return {"Retry-After": mode.retry_after} if mode.retry_after else {}

    def _validator_headers(self, mode: FaultMode, obj: _Object, weak: bool = False) -> dict[str, str]:
        headers: dict[str, str] = {}
        if mode.validators in ("strong", "weak"):
            tag = f'"{obj.tag}"'
            headers["ETag"] = "W/" + tag if weak or mode.validators == "weak" else tag
        if mode.validators in ("strong", "last_modified"):
            headers["Last-Modified"] = formatdate(obj.last_modified, usegmt=True)
        return headers

    def _if_range_matches(self, mode: FaultMode, obj: _Object, value: str) -> bool:
        """RFC 9110 §13.1.5: strong comparison only; a date matches only an exactly equal
        Last-Modified that the server actually sends."""
        value = value.strip()
        if value.startswith("W/"):
            return False
        if value.startswith('"'):
            return mode.validators == "strong" and value == f'"{obj.tag}"'
        if mode.validators not in ("strong", "last_modified"):
            return False
        try:
            return int(parsedate_to_datetime(value).timestamp()) == obj.last_modified
        except (TypeError, ValueError, IndexError):
            return False

    def _not_modified(self, current: dict[str, str]) -> bool:
        """RFC 9110 §13.1.2/§13.1.3: If-None-Match (weak comparison) wins over If-Modified-Since."""
        inm = self.headers.get("If-None-Match")
        if inm is not None:
            etag = current.get("ETag")
            if etag is None:
                return False
            opaque = etag.removeprefix("W/")
            return any(t.strip() == "*" or t.strip().removeprefix("W/") == opaque for t in inm.split(","))
        ims = self.headers.get("If-Modified-Since")
        if ims is not None and "Last-Modified" in current:
            try:
                return parsedate_to_datetime(current["Last-Modified"]) <= parsedate_to_datetime(ims)
            except (TypeError, ValueError, IndexError):
                return False
        return False

    def _send_object(self, method: str, entry: _Entry, mode: FaultMode, obj: _Object, plan: _Plan) -> None:
        origin = self.server.origin
        head = method == "HEAD"
        size = obj.size
        headers: dict[str, str] = {"Content-Type": mode.content_type, **mode.headers}
        if self._advertises_ranges(mode):
            headers["Accept-Ranges"] = "bytes"
        range_header = self.headers.get("Range")
        status = 200
        start, end = 0, size
        encoded = None if head else self._encoded_body(entry, mode, obj, headers)
        if encoded is not None:
            end = len(encoded)
        else:
            headers.update(self._validator_headers(mode, obj))
            if self._not_modified(headers):
                # Validators only: no body, and no Content-Length that would differ from a 200's.
                self._status(304)
                for k in ("ETag", "Last-Modified"):
                    if k in headers:
                        self.send_header(k, headers[k])
                self.end_headers()
                return
            if not head and range_header and mode.ranges:
                if self._answered_range(mode, size):
                    return
                parsed = _parse_range(range_header, size)
                if_range = self.headers.get("If-Range")
                if parsed is not None and if_range is not None and not self._if_range_matches(mode, obj, if_range):
                    parsed = None  # validator mismatch: the full, current representation
                if parsed == "unsatisfiable":
                    self._simple(416, head, {"Content-Range": f"bytes */{size}"})
                    return
                if parsed is not None:
                    start, end = parsed
                    status = 206
                    headers["Content-Range"] = self._content_range(mode, start, end, size)
        length = end - start
        if not head:
            with origin._lock:
                if (
                    mode.truncate_after is not None
                    and mode.truncate_after < length
                    and entry.truncations < mode.truncate_times
                ):
                    entry.truncations += 1
                    plan.truncate_at = mode.truncate_after
                if mode.reset_after is not None and mode.reset_after < length and entry.resets < mode.reset_times:
                    entry.resets += 1
                    plan.reset_at = mode.reset_after
                self._plan_locked(entry, mode, plan)
        chunked = self._chunked(mode) and not head
        self._before_headers(mode, head)
        status = self._final_status(mode, status)
        self._status(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(length))
        self.end_headers()
        if head:
            return
        self.wfile.flush()
        limit = plan.limit(length)
        chunks: Iterator[bytes] = iter((encoded,)) if encoded is not None else obj.read(start, end)
        self._write_body(self._paced(chunks, mode, plan, limit), limit, plan, chunked)

    def _write_body(self, chunks: Iterator[bytes], limit: int | None, plan: _Plan, chunked: bool) -> None:
        reset = limit is not None and limit == plan.reset_at
        sent = 0
        try:
            for chunk in chunks:
                sent += self._write(chunk, chunked, limit, sent)
                if limit is not None and sent >= limit:
                    break
            if limit is not None:
                self.close_connection = True
                if reset:
                    # SO_LINGER 0 turns the close into an RST instead of a FIN.
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                return
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        except OSError:  # the client went away
            self.close_connection = True

    def _write(self, data: bytes, chunked: bool, limit: int | None, sent: int) -> int:
        """Send one piece of body; returns the body bytes sent. The counter moves before the
        send, so a client that has received bytes always finds them counted; a failed send
        takes back what did not leave."""
        if limit is not None:
            data = data[: max(0, limit - sent)]
        if not data:
            return 0
        prefix = b"%x\r\n" % len(data) if chunked else b""
        payload = prefix + data + b"\r\n" if chunked else data
        origin = self.server.origin
        with origin._lock:
            self._st.body_bytes += len(data)
        view = memoryview(payload)
        done = 0
        try:
            while done < len(view):
                done += self.connection.send(view[done:])
        except OSError:
            delivered = min(len(data), max(0, done - len(prefix)))
            with origin._lock:
                self._st.body_bytes -= len(data) - delivered
            raise
        return len(data)
