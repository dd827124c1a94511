"""A local HTTP/1.1 origin with per-path fault modes: the demo's origin, also used by tests and benchmarks.

Real sockets on 127.0.0.1, one thread per connection, keep-alive. Each path serves one object
(bytes in memory or a file streamed from disk) under a `FaultMode` that reproduces a server
behaviour seen in the wild: ranges ignored, weak or missing validators, objects that change,
truncated bodies, resets, 5xx/429 with Retry-After, stalls, HTML served as PDF, gzip, 416,
redirect chains, HEAD rejected. Every request and every body byte written is counted per path so
tests can assert what was actually served.

Only the standard library is used, so the demo can run it without test dependencies. The test
suite reaches it through `dtkg_assets_tests.support.origin`, which also has its command line.
"""

from __future__ import annotations

import contextlib
import gzip as gzip_lib
import hashlib
import http.server
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qs, quote, unquote, urlsplit

_CHUNK = 256 * 1024
_HTML_PAGE = (
    b'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>Just a moment...</title>'
    b"</head>\n<body><h1>Checking your browser before accessing the article</h1>\n"
    b"<p>Please enable JavaScript and cookies to continue.</p>\n"
    + b"<!-- "
    + b"padding " * 256
    + b"-->\n"
    + b"</body></html>\n"
)


@dataclass
class FaultMode:
    """How one path misbehaves. Modes compose (e.g. ``truncate_after`` with ranges on)."""

    ranges: bool = True  # honour Range (206) or ignore it (200 full body)
    # strong: ETag + Last-Modified; weak: W/ ETag only; last_modified: only Last-Modified; none.
    validators: Literal["strong", "weak", "last_modified", "none"] = "strong"
    change_after_gets: int | None = None  # after N GET responses the object changes once
    truncate_after: int | None = None  # send at most N body bytes of a GET, then close (FIN)
    truncate_times: int = 1
    reset_after: int | None = None  # send N body bytes, then reset (RST)
    reset_times: int = 1
    status_sequence: list[int] = field(default_factory=list)  # first GETs answer these statuses
    retry_after: str | None = None  # Retry-After on the status_sequence / status answers
    stall_s: float = 0.0  # sleep before the body, or mid-body when stall_after_bytes is set
    stall_after_bytes: int | None = None
    stall_times: int | None = None  # how many GETs stall (None: every GET)
    rate_bytes_per_s: int | None = None  # send GET bodies at about this rate (a slow server)
    slow_headers_s: float = 0.0  # send the header block of a GET one byte per this many seconds
    html_body: bool = False  # serve an HTML page instead of the object, keeping content_type
    gzip: bool = False  # gzip the full body (200, Range ignored) when the client accepts gzip
    force_416: bool = False  # every ranged GET answers 416
    total_416: int | None = None  # total announced in that 416 (default: real size)
    content_range_shift: int = 0  # announce a Content-Range shifted by this many bytes
    omit_content_length: bool = False  # chunked transfer-encoding, no Content-Length
    head_status: int | None = None  # HEAD answers this status (e.g. 405)
    redirects: int = 0  # N hops of 302 (?hop=k) before serving the object
    redirect_to: str | None = None  # 302 to this absolute Location
    status: int | None = None  # always answer this status (e.g. 404, 410)
    latency_s: float = 0.0  # added before every response
    content_type: str = "application/pdf"
    # Extra response headers on the object (Content-Disposition, cf-mitigated …).
    headers: dict[str, str] = field(default_factory=dict)
    # Serve the object as the body of this status (a 403/503 challenge page, say) instead of 200.
    body_status: int | None = None


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
        )


@dataclass(frozen=True)
class _Object:
    """Immutable version of a served object; a mutation makes a new one."""

    base: bytes | Path
    base_size: int
    tag: str  # hex core of the ETag
    last_modified: int  # epoch seconds
    flips: tuple[int, ...] = ()  # offsets whose byte is xor-ed with 0x01 (mutations of files)
    suffix: bytes = b""  # appended by mutations

    @property
    def size(self) -> int:
        return self.base_size + len(self.suffix)

    def read(self, start: int, end: int) -> Iterator[bytes]:
        """Bytes [start, end) in chunks, streamed from disk for file objects."""
        base_end = min(end, self.base_size)
        if start < base_end:
            if isinstance(self.base, bytes):
                view = memoryview(self.base)
                for pos in range(start, base_end, _CHUNK):
                    yield self._patched(pos, bytes(view[pos : min(pos + _CHUNK, base_end)]))
            else:
                with open(self.base, "rb") as fh:
                    fh.seek(start)
                    pos = start
                    while pos < base_end:
                        data = fh.read(min(_CHUNK, base_end - pos))
                        if not data:
                            raise OSError(f"{self.base} shrank while being served")
                        yield self._patched(pos, data)
                        pos += len(data)
        s_start = max(start, self.base_size) - self.base_size
        s_end = end - self.base_size
        if s_end > s_start:
            yield self.suffix[s_start:s_end]

    def _patched(self, pos: int, data: bytes) -> bytes:
        hits = [f - pos for f in self.flips if pos <= f < pos + len(data)]
        if not hits:
            return data
        buf = bytearray(data)
        for i in hits:
            buf[i] ^= 0x01
        return bytes(buf)

    def full(self) -> bytes:
        return b"".join(self.read(0, self.size))

    def mutated(self, body: bytes | None, version: int) -> _Object:
        # Last-Modified must move even within the same second, or date-based If-Range would match.
        lm = max(self.last_modified + 1, int(time.time()))
        if body is not None:
            return _Object(body, len(body), _sha_tag(body), lm)
        # Flip a byte in the middle and append a trailer that keeps the file a well-formed PDF tail.
        flip = self.base_size // 2 + version
        flips = self.flips + ((flip,) if flip < self.base_size else ())
        suffix = self.suffix + f"\n% revision {version}\n%%EOF\n".encode()
        tag = hashlib.sha256(f"{self.tag}:{flips}:{suffix!r}".encode()).hexdigest()[:20]
        return replace(self, flips=flips, suffix=suffix, tag=tag, last_modified=lm)


def _sha_tag(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()[:20]


@dataclass
class _Entry:
    obj: _Object
    mode: FaultMode
    version: int = 0
    gets_served: int = 0  # GETs that reached the object (for change_after_gets)
    changed: bool = False
    truncations: int = 0
    resets: int = 0
    stalls: int = 0
    seq_used: int = 0
    html_obj: _Object | None = None
    gzip_cache: tuple[str, bytes] | None = None


@dataclass
class _Plan:
    """Per-response fault decisions, taken under the lock."""

    truncate_at: int | None = None
    reset_at: int | None = None
    stall_before: float = 0.0
    stall_at: int | None = None


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
        self._root: Path | None = None
        self.base_url = ""

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> OriginServer:
        if self._server is not None:
            return self
        server_cls = _HTTPServer6 if ":" in self.host else _HTTPServer
        server = server_cls((self.host, self.port), _Handler)
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
            self._entries[key] = _Entry(obj, mode or FaultMode())
        return self.url(key)

    def set_mode(self, path: str, mode: FaultMode) -> None:
        """Replace the fault mode of a path; its fault counters start over."""
        key = _norm(path)
        with self._lock:
            entry = self._entries[key]
            self._entries[key] = _Entry(entry.obj, mode, version=entry.version)

    def mutate(self, path: str, body: bytes | None = None) -> None:
        """Change the object now: new bytes (given, or a flipped byte plus an appended trailer),
        new ETag and a Last-Modified at least one second later."""
        key = _norm(path)
        with self._lock:
            self._mutate_locked(self._entries[key], body)

    def _mutate_locked(self, entry: _Entry, body: bytes | None) -> None:
        entry.version += 1
        entry.obj = entry.obj.mutated(body, entry.version)
        entry.html_obj = None
        entry.gzip_cache = None

    def object_bytes(self, path: str) -> bytes:
        """The bytes a full GET of `path` would serve now (before any HTML substitution)."""
        with self._lock:
            obj = self._entries[_norm(path)].obj
        return obj.full()

    def add_robots(self, text: str | None = None, status: int = 200) -> None:
        body = (text if text is not None else "User-agent: *\nAllow: /\n").encode()
        mode = FaultMode(content_type="text/plain", status=None if status == 200 else status)
        self.add("/robots.txt", body, mode)

    def serve_dir(self, root: Path) -> None:
        """Serve files under `root` at their relative paths (looked up on first request)."""
        self._root = Path(root).resolve()

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
            entry = self._entries.get(key)
        if entry is None and self._root is not None:
            candidate = (self._root / key.lstrip("/")).resolve()
            if candidate.is_relative_to(self._root) and candidate.is_file():
                self.add_file(key, candidate)
                with self._lock:
                    entry = self._entries.get(key)
        return entry


def _throttled(chunks: Iterator[bytes], rate: int, stopping: threading.Event) -> Iterator[bytes]:
    """`chunks` re-cut into twentieths of a second's worth, paced to about `rate` bytes/s."""
    step = max(1, rate // 20)
    for chunk in chunks:
        for i in range(0, len(chunk), step):
            piece = chunk[i : i + step]
            yield piece
            if stopping.wait(len(piece) / rate):
                return


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

    def flush_headers(self) -> None:
        """Like the stdlib's, but a `slow_headers_s` mode trickles the header block byte by byte."""
        delay = getattr(self, "_header_delay", 0.0)
        buffered: list[bytes] = getattr(self, "_headers_buffer", [])
        if delay <= 0 or not buffered:
            super().flush_headers()
            return
        data = b"".join(buffered)
        buffered.clear()
        stopping = self.server.origin._stopping
        for i in range(len(data)):
            self.wfile.write(data[i : i + 1])
            if stopping.wait(delay):
                self.close_connection = True
                return

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
            if head:
                st.head_requests += 1
            else:
                st.get_requests += 1
                st.ranges.append(self.headers.get("Range"))
                st.if_ranges.append(self.headers.get("If-Range"))
        self._st = st
        self._header_delay = 0.0
        entry = origin._lookup(key)
        if entry is None:
            self._simple(404, head)
            return
        mode = entry.mode
        if mode.latency_s > 0:
            origin._stopping.wait(mode.latency_s)
        retry = {"Retry-After": mode.retry_after} if mode.retry_after else {}
        if mode.status is not None:
            self._simple(mode.status, head, retry)
            return
        if head and mode.head_status is not None:
            self._simple(mode.head_status, head, {"Allow": "GET"} if mode.head_status == 405 else None)
            return
        if mode.redirect_to:
            self._simple(302, head, {"Location": mode.redirect_to})
            return
        if mode.redirects > 0:
            try:
                hop = int(parse_qs(split.query).get("hop", ["0"])[0])
            except ValueError:
                hop = 0
            if hop < mode.redirects:
                self._simple(302, head, {"Location": f"{origin.url(key)}?hop={hop + 1}"})
                return
        plan = _Plan()
        with origin._lock:
            if not head and entry.seq_used < len(mode.status_sequence):
                code = mode.status_sequence[entry.seq_used]
                entry.seq_used += 1
            else:
                code = 0
            if not head and code == 0:
                if (
                    mode.change_after_gets is not None
                    and not entry.changed
                    and entry.gets_served >= mode.change_after_gets
                ):
                    entry.changed = True
                    origin._mutate_locked(entry, None)
                entry.gets_served += 1
            obj = entry.obj
            if mode.html_body:
                if entry.html_obj is None:
                    entry.html_obj = _Object(_HTML_PAGE, len(_HTML_PAGE), _sha_tag(_HTML_PAGE), obj.last_modified)
                obj = entry.html_obj
        if code:
            self._simple(code, head, retry)
            return
        self._send_object(method, entry, mode, obj, plan)

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
        if mode.ranges and mode.body_status is None:
            headers["Accept-Ranges"] = "bytes"
        accepts_gzip = "gzip" in (self.headers.get("Accept-Encoding") or "").lower()
        range_header = self.headers.get("Range")
        status = 200
        start, end = 0, size
        gz: bytes | None = None
        if not head and mode.gzip and accepts_gzip:
            # Like nginx: the compressed full body, Range ignored, the ETag turned weak.
            with origin._lock:
                cached = entry.gzip_cache
            if cached is None or cached[0] != obj.tag:
                cached = (obj.tag, gzip_lib.compress(obj.full(), compresslevel=6, mtime=0))
                with origin._lock:
                    entry.gzip_cache = cached
            gz = cached[1]
            headers.update(self._validator_headers(mode, obj, weak=True))
            headers["Content-Encoding"] = "gzip"
            headers["Vary"] = "Accept-Encoding"
            end = len(gz)
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
                if mode.force_416:
                    total = mode.total_416 if mode.total_416 is not None else size
                    self._simple(416, head, {"Content-Range": f"bytes */{total}"})
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
                    shift = mode.content_range_shift
                    headers["Content-Range"] = f"bytes {start + shift}-{end - 1 + shift}/{size}"
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
                if mode.stall_s > 0 and (mode.stall_times is None or entry.stalls < mode.stall_times):
                    entry.stalls += 1
                    if mode.stall_after_bytes is None:
                        plan.stall_before = mode.stall_s
                    else:
                        plan.stall_at = mode.stall_after_bytes
        chunked = mode.omit_content_length and not head
        self._header_delay = 0.0 if head else mode.slow_headers_s
        if mode.body_status is not None:
            status = mode.body_status
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
        if plan.stall_before:
            origin._stopping.wait(plan.stall_before)
        chunks: Iterator[bytes] = iter((gz,)) if gz is not None else obj.read(start, end)
        if mode.rate_bytes_per_s:
            chunks = _throttled(chunks, mode.rate_bytes_per_s, origin._stopping)
        self._write_body(chunks, length, plan, chunked, mode.stall_s)

    def _write_body(self, chunks: Iterator[bytes], length: int, plan: _Plan, chunked: bool, stall_s: float) -> None:
        origin = self.server.origin
        cuts = [x for x in (plan.truncate_at, plan.reset_at) if x is not None and x < length]
        limit = min(cuts) if cuts else None
        reset = limit is not None and limit == plan.reset_at
        sent = 0
        try:
            for chunk in chunks:
                pieces = [chunk]
                if plan.stall_at is not None and sent <= plan.stall_at < sent + len(chunk):
                    at = plan.stall_at - sent
                    plan.stall_at = None
                    if at:
                        sent += self._write(chunk[:at], chunked, limit, sent)
                    if limit is not None and sent >= limit:
                        break
                    origin._stopping.wait(stall_s)
                    pieces = [chunk[at:]]
                for piece in pieces:
                    sent += self._write(piece, chunked, limit, sent)
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
