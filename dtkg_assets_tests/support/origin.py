"""The local origin for tests and benchmarks: the demo's server plus the test-only fault modes.

`dtkg_assets.demo.origin` is the server (one request path) with the modes the demo's sample corpus
uses. Here `OriginServer` and its handler fill in that server's hook methods for the modes only
tests and benchmarks use: a fixed status, latency, stalls, slow headers, a byte rate, HTML served
instead of the object, gzip, 416, a shifted Content-Range, chunked bodies, a body under another
status, objects that change (`mutate`, ``change_after_gets``), and a directory served as is.
`FaultMode` here extends the demo's; the demo's modes (the sample corpus) are served here too.

Command line: ``python -m dtkg_assets_tests.support.origin --root DIR --port N`` serves a directory;
``--sample DIR`` serves the sample corpus with its faults and writes ``DIR/works.jsonl``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip as gzip_lib
import hashlib
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dtkg_assets.demo import origin as demo
from dtkg_assets.demo.origin import PathStats

__all__ = ["FaultMode", "OriginServer", "PathStats", "main"]

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
class FaultMode(demo.FaultMode):
    """The demo's fault modes plus the ones only tests use."""

    change_after_gets: int | None = None  # after N GET responses the object changes once
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
    status: int | None = None  # always answer this status (e.g. 404, 410); Retry-After as retry_after
    latency_s: float = 0.0  # added before every response
    # Serve the object as the body of this status (a 403/503 challenge page, say) instead of 200.
    body_status: int | None = None


def _test_mode(mode: demo.FaultMode | None) -> FaultMode:
    """A demo mode (the sample corpus's) as a test mode with the test-only modes off."""
    if isinstance(mode, FaultMode):
        return mode
    if mode is None:
        return FaultMode()
    return FaultMode(**{f.name: getattr(mode, f.name) for f in dataclasses.fields(mode)})


@dataclass(frozen=True)
class _Changed(demo._Object):
    """An object after `mutate` without new bytes: flipped bytes and an appended trailer."""

    flips: tuple[int, ...] = ()  # offsets whose byte is xor-ed with 0x01 (mutations of files)
    suffix: bytes = b""  # appended by mutations

    @property
    def size(self) -> int:
        return self.base_size + len(self.suffix)

    def read(self, start: int, end: int) -> Iterator[bytes]:
        pos = start
        for data in super().read(start, end):
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


def _mutated(obj: demo._Object, body: bytes | None, version: int) -> demo._Object:
    # Last-Modified must move even within the same second, or date-based If-Range would match.
    lm = max(obj.last_modified + 1, int(time.time()))
    if body is not None:
        return demo._Object(body, len(body), demo._sha_tag(body), lm)
    # Flip a byte in the middle and append a trailer that keeps the file a well-formed PDF tail.
    old_flips = obj.flips if isinstance(obj, _Changed) else ()
    old_suffix = obj.suffix if isinstance(obj, _Changed) else b""
    flip = obj.base_size // 2 + version
    flips = old_flips + ((flip,) if flip < obj.base_size else ())
    suffix = old_suffix + f"\n% revision {version}\n%%EOF\n".encode()
    tag = hashlib.sha256(f"{obj.tag}:{flips}:{suffix!r}".encode()).hexdigest()[:20]
    return _Changed(obj.base, obj.base_size, tag, lm, flips, suffix)


@dataclass
class _Entry(demo._Entry):
    mode: FaultMode
    version: int = 0
    gets_served: int = 0  # GETs that reached the object (for change_after_gets)
    changed: bool = False
    stalls: int = 0
    html_obj: demo._Object | None = None
    gzip_cache: tuple[str, bytes] | None = None


@dataclass
class _Plan(demo._Plan):
    stall_before: float = 0.0
    stall_at: int | None = None


class OriginServer(demo.OriginServer):
    """The demo's origin with the test-only fault modes, `mutate`, and a directory to serve."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self._root: Path | None = None
        self._in_flight = 0
        self.peak_in_flight = 0  # most requests being answered at once (set to 0 to start over)

    def _answering(self, delta: int) -> None:
        with self._lock:
            self._in_flight += delta
            self.peak_in_flight = max(self.peak_in_flight, self._in_flight)

    def set_mode(self, path: str, mode: FaultMode) -> None:
        """Replace the fault mode of a path; its fault counters start over."""
        key = demo._norm(path)
        with self._lock:
            entry = self._entries[key]
            assert isinstance(entry, _Entry)
            self._entries[key] = _Entry(entry.obj, _test_mode(mode), version=entry.version)

    def mutate(self, path: str, body: bytes | None = None) -> None:
        """Change the object now: new bytes (given, or a flipped byte plus an appended trailer),
        new ETag and a Last-Modified at least one second later."""
        key = demo._norm(path)
        with self._lock:
            self._mutate_locked(self._entries[key], body)

    def _mutate_locked(self, entry: demo._Entry, body: bytes | None) -> None:
        assert isinstance(entry, _Entry)
        entry.version += 1
        entry.obj = _mutated(entry.obj, body, entry.version)
        entry.html_obj = None
        entry.gzip_cache = None

    def object_bytes(self, path: str) -> bytes:
        """The bytes a full GET of `path` would serve now (before any HTML substitution)."""
        with self._lock:
            obj = self._entries[demo._norm(path)].obj
        return obj.full()

    def add_robots(self, text: str | None = None, status: int = 200) -> None:
        body = (text if text is not None else "User-agent: *\nAllow: /\n").encode()
        mode = FaultMode(content_type="text/plain", status=None if status == 200 else status)
        self.add("/robots.txt", body, mode)

    def serve_dir(self, root: Path) -> None:
        """Serve files under `root` at their relative paths (looked up on first request)."""
        self._root = Path(root).resolve()

    def _lookup(self, key: str) -> demo._Entry | None:
        entry = super()._lookup(key)
        if entry is None and self._root is not None:
            candidate = (self._root / key.lstrip("/")).resolve()
            if candidate.is_relative_to(self._root) and candidate.is_file():
                self.add_file(key, candidate)
                entry = super()._lookup(key)
        return entry

    def _handler(self) -> type[demo._Handler]:
        return _Handler

    def _entry(self, obj: demo._Object, mode: demo.FaultMode | None) -> demo._Entry:
        return _Entry(obj, _test_mode(mode))


def _throttled(chunks: Iterator[bytes], rate: int, stopping: threading.Event) -> Iterator[bytes]:
    """`chunks` re-cut into twentieths of a second's worth, paced to about `rate` bytes/s."""
    step = max(1, rate // 20)
    for chunk in chunks:
        for i in range(0, len(chunk), step):
            piece = chunk[i : i + step]
            yield piece
            if stopping.wait(len(piece) / rate):
                return


def _stalled_at(
    chunks: Iterator[bytes], at_byte: int, stall_s: float, limit: int | None, stopping: threading.Event
) -> Iterator[bytes]:
    """`chunks` with one pause of `stall_s` once `at_byte` body bytes are out (none when the body
    is cut at `limit` before that point)."""
    pos = 0
    pending = True
    for chunk in chunks:
        if pending and pos <= at_byte < pos + len(chunk):
            pending = False
            at = at_byte - pos
            if at:
                yield chunk[:at]
            if limit is not None and pos + at >= limit:
                return
            stopping.wait(stall_s)
            chunk = chunk[at:]
            pos += at
        yield chunk
        pos += len(chunk)


class _Handler(demo._Handler):
    def _serve(self, method: str) -> None:
        self._header_delay = 0.0
        origin = self.server.origin
        origin._answering(1)
        try:
            super()._serve(method)
        finally:
            origin._answering(-1)

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

    def _answered_early(self, mode: demo.FaultMode, head: bool) -> bool:
        assert isinstance(mode, FaultMode)
        if mode.latency_s > 0:
            self.server.origin._stopping.wait(mode.latency_s)
        if mode.status is not None:
            self._simple(mode.status, head, self._retry_headers(mode))
            return True
        return False

    def _new_plan(self) -> demo._Plan:
        return _Plan()

    def _object_locked(self, entry: demo._Entry, mode: demo.FaultMode, counted_get: bool) -> demo._Object:
        assert isinstance(entry, _Entry) and isinstance(mode, FaultMode)
        if counted_get:
            if mode.change_after_gets is not None and not entry.changed and entry.gets_served >= mode.change_after_gets:
                entry.changed = True
                origin = self.server.origin
                assert isinstance(origin, OriginServer)
                origin._mutate_locked(entry, None)
            entry.gets_served += 1
        obj = entry.obj
        if mode.html_body:
            if entry.html_obj is None:
                entry.html_obj = demo._Object(_HTML_PAGE, len(_HTML_PAGE), demo._sha_tag(_HTML_PAGE), obj.last_modified)
            obj = entry.html_obj
        return obj

    def _advertises_ranges(self, mode: demo.FaultMode) -> bool:
        assert isinstance(mode, FaultMode)
        return mode.ranges and mode.body_status is None

    def _encoded_body(
        self, entry: demo._Entry, mode: demo.FaultMode, obj: demo._Object, headers: dict[str, str]
    ) -> bytes | None:
        assert isinstance(entry, _Entry) and isinstance(mode, FaultMode)
        accepts_gzip = "gzip" in (self.headers.get("Accept-Encoding") or "").lower()
        if not (mode.gzip and accepts_gzip):
            return None
        # Like nginx: the compressed full body, Range ignored, the ETag turned weak.
        origin = self.server.origin
        with origin._lock:
            cached = entry.gzip_cache
        if cached is None or cached[0] != obj.tag:
            cached = (obj.tag, gzip_lib.compress(obj.full(), compresslevel=6, mtime=0))
            with origin._lock:
                entry.gzip_cache = cached
        headers.update(self._validator_headers(mode, obj, weak=True))
        headers["Content-Encoding"] = "gzip"
        headers["Vary"] = "Accept-Encoding"
        return cached[1]

    def _answered_range(self, mode: demo.FaultMode, size: int) -> bool:
        assert isinstance(mode, FaultMode)
        if not mode.force_416:
            return False
        total = mode.total_416 if mode.total_416 is not None else size
        self._simple(416, False, {"Content-Range": f"bytes */{total}"})
        return True

    def _content_range(self, mode: demo.FaultMode, start: int, end: int, size: int) -> str:
        assert isinstance(mode, FaultMode)
        shift = mode.content_range_shift
        return f"bytes {start + shift}-{end - 1 + shift}/{size}"

    def _plan_locked(self, entry: demo._Entry, mode: demo.FaultMode, plan: demo._Plan) -> None:
        assert isinstance(entry, _Entry) and isinstance(mode, FaultMode) and isinstance(plan, _Plan)
        if mode.stall_s > 0 and (mode.stall_times is None or entry.stalls < mode.stall_times):
            entry.stalls += 1
            if mode.stall_after_bytes is None:
                plan.stall_before = mode.stall_s
            else:
                plan.stall_at = mode.stall_after_bytes

    def _chunked(self, mode: demo.FaultMode) -> bool:
        assert isinstance(mode, FaultMode)
        return mode.omit_content_length

    def _before_headers(self, mode: demo.FaultMode, head: bool) -> None:
        assert isinstance(mode, FaultMode)
        self._header_delay = 0.0 if head else mode.slow_headers_s

    def _final_status(self, mode: demo.FaultMode, status: int) -> int:
        assert isinstance(mode, FaultMode)
        return mode.body_status if mode.body_status is not None else status

    def _paced(
        self, chunks: Iterator[bytes], mode: demo.FaultMode, plan: demo._Plan, limit: int | None
    ) -> Iterator[bytes]:
        assert isinstance(mode, FaultMode) and isinstance(plan, _Plan)
        stopping = self.server.origin._stopping
        if plan.stall_before:
            stopping.wait(plan.stall_before)
        if mode.rate_bytes_per_s:
            chunks = _throttled(chunks, mode.rate_bytes_per_s, stopping)
        if plan.stall_at is not None:
            chunks = _stalled_at(chunks, plan.stall_at, mode.stall_s, limit, stopping)
        return chunks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Serve a directory (or the sample corpus with its faults) over HTTP/1.1 on loopback."
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--root", type=Path, help="directory to serve at /<relative path>")
    what.add_argument(
        "--sample", type=Path, metavar="DIR", help="build the sample corpus in DIR, serve it, write DIR/works.jsonl"
    )
    parser.add_argument("--no-faults", action="store_true", help="with --sample: leave out the recoverable faults")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    if args.root is not None and not args.root.is_dir():
        parser.error(f"--root {args.root} is not a directory")
    origin = OriginServer(args.host, args.port)
    if args.root is not None:
        origin.serve_dir(args.root)
    origin.start()
    works_path: Path | None = None
    if args.sample is not None:
        from dtkg_assets.demo.sample import build_sample_corpus, configure_origin, sample_works, write_sample_jsonl

        corpus = build_sample_corpus(args.sample)
        configure_origin(origin, corpus, faults=not args.no_faults)
        works_path = write_sample_jsonl(sample_works(corpus, origin.base_url), args.sample / "works.jsonl")
    # First line: the URL (scripts read it); then, with --sample, the works file.
    print(origin.base_url, flush=True)
    if works_path is not None:
        print(works_path, flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    try:
        done.wait()
    finally:
        origin.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
