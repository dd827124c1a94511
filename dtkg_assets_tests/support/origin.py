"""The local origin for tests and benchmarks, and its command line.

The server itself is the demo's (`dtkg_assets.demo.origin`: `OriginServer` with per-path
`FaultMode`s and counters); tests and benchmarks import it from here.

Command line: ``python -m dtkg_assets_tests.support.origin --root DIR --port N`` serves a directory;
``--sample DIR`` serves the sample corpus with its faults and writes ``DIR/works.jsonl``.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from dtkg_assets.demo.origin import FaultMode, OriginServer

__all__ = ["FaultMode", "OriginServer", "main"]


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
