"""`dtkg demo`: the main job end to end on the bundled sample corpus; `dtkg demo --serve` serves its origin.

Dagster is imported inside the handlers so `dtkg fetch` and friends start fast.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from rich.table import Table

from dtkg_assets.cli.backfill import backfill_with_progress
from dtkg_assets.cli.common import EXIT_FAILED, EXIT_OK, UsageError, console, load_settings
from dtkg_assets.cli.ledger_access import ledger_summary, preflight, reader, summary_rows
from dtkg_assets.core.settings import Settings

DEMO_PORT = 8787


def add_demo(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the main job end to end on the bundled sample corpus",
        description=(
            "Start a local origin serving the sample PDFs, import the sample works, materialize every "
            "partition of artifact_pdfs through Dagster in batch runs, reconcile, and print a summary. "
            "Running it again downloads nothing."
        ),
    )
    p.add_argument("--port", type=int, default=DEMO_PORT, help=f"origin port (default {DEMO_PORT}; 0 = any)")
    p.add_argument("--workers", type=int, default=None, help="download threads per run (default DTKG_RUN_WORKERS)")
    p.add_argument(
        "--json", action="store_true", help="print one JSON object with the summary on stdout (progress on stderr)"
    )
    p.add_argument(
        "--serve",
        action="store_true",
        help="only serve the demo's origin again (same port as the demo used) until Ctrl-C, e.g. while you "
        "materialize demo partitions from `dagster dev`",
    )
    p.set_defaults(func=cmd_demo)


# What the demo needs on its home, written to DTKG_HOME/settings.env so every later process on the
# home (`dagster dev`, its daemon's runs, `dtkg backfill`) sees it: the origin is on loopback.
DEMO_SETTINGS = {"DTKG_ALLOW_HOSTS": "127.0.0.1,localhost", "DTKG_RATE_LIMITS": "127.0.0.1=0,localhost=0"}
ORIGIN_FILE = "origin.json"


def cmd_demo(args: argparse.Namespace) -> int:
    from dtkg_assets.core.settings import write_settings_file

    if not 0 <= args.port <= 65535:
        raise UsageError(f"dtkg demo: --port {args.port} is not a TCP port (0-65535; 0 picks a free one)")
    # The sample corpus fails some works on purpose; the summary below reports them, so the runs'
    # own error logs would only alarm. DTKG_LOG_LEVEL=WARNING shows them.
    os.environ.setdefault("DTKG_LOG_LEVEL", "CRITICAL")
    settings = load_settings()
    if args.serve:
        return _serve_origin(settings, args.port)
    try:
        written = write_settings_file(settings.home, {k: os.environ.get(k, v) for k, v in DEMO_SETTINGS.items()})
    except OSError as exc:
        raise UsageError(f"dtkg demo: cannot write settings under {settings.home}: {exc}") from None
    settings = load_settings()
    if args.json:
        console.stderr = True  # stdout carries only the JSON object
    preflight(settings, "demo")

    from dtkg_assets.cli.launch import dagster_instance, ingest, pending_keys, run_checks, run_reconcile
    from dtkg_assets.core.sources import WorksSource
    from dtkg_assets.demo.sample import build_sample_corpus, configure_origin, sample_works, write_sample_jsonl

    sample_dir = settings.home / "sample"
    console.print(f"[bold]dtkg demo[/] — state in {settings.home}")
    corpus = build_sample_corpus(sample_dir / "pdfs")
    origin = _start_origin(args.port)
    (sample_dir / ORIGIN_FILE).write_text(json.dumps({"port": origin.port, "base_url": origin.base_url}))
    # The sample works' DOIs resolve through the origin, never through doi.org.
    os.environ.setdefault("DTKG_LANDING_DOI_RESOLVER", f"{origin.base_url}/doi/")
    settings = load_settings()
    try:
        configure_origin(origin, corpus)
        jsonl = write_sample_jsonl(sample_works(corpus, origin.base_url), sample_dir / "works.jsonl")
        console.print(f"origin {origin.base_url} serving {len(corpus.files)} PDFs; works in {jsonl}")
        instance = dagster_instance(settings)
        meta = ingest(instance, settings, WorksSource(jsonl_path=str(jsonl)), command="demo")
        console.print(
            f"imported {meta.get('works', 0)} works ({meta.get('new_works', 0)} new), "
            f"{meta.get('input_problems', 0)} input problems recorded"
        )
        started = time.perf_counter()
        report = backfill_with_progress(instance, settings, args.workers, pending_keys(settings), "demo")
        wall = time.perf_counter() - started
        counts = run_reconcile(instance, settings, command="demo")
        healed = {k: v for k, v in counts.items() if v}
        console.print("reconcile: " + (", ".join(f"{k}={v}" for k, v in healed.items()) or "nothing to heal"))
        checks = run_checks(instance, settings, report, command="demo")
        console.print(f"asset checks: {checks.describe()}")
    finally:
        origin.stop()
    downloaded_bytes = origin.total_body_bytes()
    summary = ledger_summary(settings)
    _print_summary(summary, report.pending, wall, downloaded_bytes)
    mismatches = _compare_expected(settings, corpus)
    for line in mismatches:
        console.print(f"[red]unexpected:[/] {line}")
    if args.json:
        print(json.dumps(_demo_json(summary, report.pending, wall, downloaded_bytes, origin.base_url, mismatches)))
    console.print(
        f"\nInspect it in the UI: DAGSTER_HOME={settings.dagster_home} .venv/bin/dagster dev -w workspace.yaml"
        f"\n(settings the demo needs are in {written}; `dtkg demo --serve` serves the demo's origin again)"
    )
    return EXIT_OK if not mismatches else EXIT_FAILED


def _serve_origin(settings: Settings, port_arg: int) -> int:
    """Serve the demo's sample corpus again on the port the demo's works point at, until Ctrl-C."""
    from dtkg_assets.demo.origin import OriginServer
    from dtkg_assets.demo.sample import build_sample_corpus, configure_origin

    sample_dir = settings.home / "sample"
    port = port_arg
    try:
        port = int(json.loads((sample_dir / ORIGIN_FILE).read_text())["port"])
    except (OSError, ValueError, KeyError, TypeError):
        if not (sample_dir / "works.jsonl").exists():
            raise UsageError(f"dtkg demo --serve: no demo under {settings.home}; run `dtkg demo` first") from None
    corpus = build_sample_corpus(sample_dir / "pdfs")
    try:
        origin = OriginServer(port=port).start()
    except OSError as exc:
        raise UsageError(f"dtkg demo --serve: port {port} is busy ({exc}); is the origin already served?") from None
    configure_origin(origin, corpus)
    console.print(f"serving the demo origin {origin.base_url} ({len(corpus.files)} PDFs); Ctrl-C stops it")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        origin.stop()
    return EXIT_OK


def _start_origin(port: int) -> Any:
    from dtkg_assets.demo.origin import OriginServer

    try:
        return OriginServer(port=port).start()
    except OSError:
        console.print(f"port {port} is busy; using a free port (the works will point there)")
        return OriginServer(port=0).start()


def _print_summary(summary: dict[str, Any], attempted: int, wall: float, body_bytes: int) -> None:
    table = Table(title="dtkg demo summary", show_header=True)
    table.add_column("what")
    table.add_column("value", justify="right")
    for what, value in summary_rows(summary):
        table.add_row(what, value)
    table.add_row("works attempted this run", str(attempted))
    table.add_row("body bytes fetched this run", f"{body_bytes:,}")
    rate = body_bytes / (1024 * 1024) / wall if wall > 0 and body_bytes else 0.0
    table.add_row("MiB/s this run", f"{rate:.2f}")
    console.print(table)


def _demo_json(
    summary: dict[str, Any], attempted: int, wall: float, body_bytes: int, base_url: str, mismatches: list[str]
) -> dict[str, Any]:
    """The numbers of the summary table, for scripts and tests."""
    outcomes = summary["by_outcome"]
    return {
        **summary,
        "attempted": attempted,
        # "downloaded" is the demo's name for the works stored (kept: scripts and tests read it).
        "downloaded": outcomes.get("stored", 0),
        "deduplicated": outcomes.get("deduplicated", 0),
        "body_bytes_this_run": body_bytes,
        "wall_s": round(wall, 3),
        "mib_s": round(body_bytes / (1024 * 1024) / wall, 3) if wall > 0 else 0.0,
        "origin": base_url,
        "mismatches": mismatches,
    }


def _compare_expected(settings: Settings, corpus: Any) -> list[str]:
    """The sample corpus knows what should happen to each work; say where the ledger differs."""
    from dtkg_assets.core.ledger.queries import input_problem_reasons, work_results

    with reader(settings, "demo") as led:
        state = work_results(led)
        problems = input_problem_reasons(led)
    out = []
    for work_id, expected in corpus.expected.items():
        if expected.input_problem:
            if work_id not in problems and not any(p == expected.reason for p in problems.values()):
                out.append(f"{work_id}: expected input problem {expected.reason}")
            continue
        ok, reason = state.get(work_id, (False, "not planned"))
        if expected.ok and not ok:
            out.append(f"{work_id}: expected a stored PDF, ledger says {reason}")
        if not expected.ok and (ok or reason != expected.reason):
            out.append(f"{work_id}: expected failure {expected.reason}, ledger says {'ok' if ok else reason}")
    return out
