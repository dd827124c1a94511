"""`dtkg demo`, `dtkg backfill` and `dtkg status`: the Dagster-backed and reporting commands.

Dagster is imported inside the handlers so `dtkg fetch` and friends start fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dtkg_assets.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, UsageError, load_settings, stopped_exit_code
from dtkg_assets.cli_ledger import preflight
from dtkg_assets.core import deadline
from dtkg_assets.settings import Settings

DEMO_PORT = 8787
console = Console(stderr=False)


# ---- demo -----------------------------------------------------------------------------------


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
    from dtkg_assets.settings import write_settings_file

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

    from dtkg_assets.core.sources import WorksSource
    from dtkg_assets.defs.launch import dagster_instance, ingest, pending_keys, run_checks, run_reconcile
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
        report = _backfill_with_progress(instance, settings, args.workers, pending_keys(settings), "demo")
        wall = time.perf_counter() - started
        counts = run_reconcile(instance, settings, command="demo")
        healed = {k: v for k, v in counts.items() if v}
        console.print("reconcile: " + (", ".join(f"{k}={v}" for k, v in healed.items()) or "nothing to heal"))
        checks = run_checks(instance, settings, report, command="demo")
        console.print("asset checks: " + ", ".join(f"{k} {'passed' if v else 'FAILED'}" for k, v in checks.items()))
    finally:
        origin.stop()
    downloaded_bytes = origin.total_body_bytes()
    summary = _summary(settings)
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


def _backfill_with_progress(
    instance: Any, settings: Settings, workers: int | None, keys: list[str], command: str = "backfill"
) -> Any:
    """Batch runs over `keys` with a progress bar that advances as each run finishes."""
    from dtkg_assets.defs.launch import backfill

    if not keys:
        console.print("nothing to download: every work is finished or failed permanently")
    with Progress(
        TextColumn("[bold]artifact_pdfs"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[note]}"),
        console=console,
        disable=not keys,
    ) as progress:
        task = progress.add_task("works", total=len(keys), note="")

        def on_batch(batch: Any, size: int) -> None:
            state = "ok" if batch.success else "some failed"
            progress.update(task, advance=size, note=f"run {batch.run_id[:8]} {state}")

        return backfill(instance, settings, workers=workers, keys=keys, on_batch=on_batch, command=command)


def _summary(settings: Settings) -> dict[str, Any]:
    from dtkg_assets.cli_ledger import reader
    from dtkg_assets.core.ledger.queries import summary

    with reader(settings, "summary") as led:
        return summary(led)


def _print_summary(summary: dict[str, Any], attempted: int, wall: float, body_bytes: int) -> None:
    outcomes = summary["by_outcome"]
    table = Table(title="dtkg demo summary", show_header=True)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("works in ledger", str(summary["works"]))
    table.add_row("works attempted this run", str(attempted))
    table.add_row("downloaded (stored)", str(outcomes.get("downloaded", 0)))
    table.add_row("deduplicated", str(outcomes.get("deduplicated", 0)))
    for reason, n in summary["failed_by_reason"].items():
        table.add_row(f"failed: {reason}", str(n))
    for reason, n in summary["input_problems"].items():
        table.add_row(f"input problem: {reason}", str(n))
    for name in ("retrying", "pending"):
        if outcomes.get(name):
            table.add_row(name, str(outcomes[name]))
    table.add_row("distinct PDFs in store", str(summary["blobs"]))
    table.add_row("bytes in store", f"{summary['blob_bytes']:,}")
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
        "downloaded": outcomes.get("downloaded", 0),
        "deduplicated": outcomes.get("deduplicated", 0),
        "body_bytes_this_run": body_bytes,
        "wall_s": round(wall, 3),
        "mib_s": round(body_bytes / (1024 * 1024) / wall, 3) if wall > 0 else 0.0,
        "origin": base_url,
        "mismatches": mismatches,
    }


def _compare_expected(settings: Settings, corpus: Any) -> list[str]:
    """The sample corpus knows what should happen to each work; say where the ledger differs."""
    from dtkg_assets.cli_ledger import reader

    with reader(settings, "demo") as led:
        rows = led.query(
            "SELECT work_id, bool_or(state IN ('INDEXED', 'DEDUPED')), "
            # (array_agg … ORDER BY)[1] is arg_max in SQL both ledger backends (DuckDB, PostgreSQL) speak.
            "(array_agg(last_reason ORDER BY candidate_rank DESC))[1] FROM artifact_jobs GROUP BY work_id"
        )
        problems = {str(r[0]): str(r[1]) for r in led.query("SELECT work_id, reason FROM input_problems")}
    state = {str(r[0]): (bool(r[1]), r[2]) for r in rows}
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


# ---- backfill -------------------------------------------------------------------------------


def add_backfill(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "backfill",
        help="materialize pending artifact_pdfs partitions through Dagster in batch runs",
        description="Download every work the ledger says needs work, in batch runs on $DTKG_HOME/dagster.",
    )
    p.add_argument("--limit", type=int, default=None, help="at most this many works")
    p.add_argument("--workers", type=int, default=None, help="download threads per run")
    p.add_argument("--json", action="store_true", help="print one JSON object at the end")
    p.set_defaults(func=cmd_backfill)


def cmd_backfill(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise UsageError("dtkg backfill: --limit must be a positive number of works")
    if args.workers is not None and args.workers < 1:
        raise UsageError("dtkg backfill: --workers must be at least 1")
    settings = load_settings()
    if args.json:
        console.stderr = True  # stdout carries only the JSON object
    preflight(settings, "backfill")
    from dtkg_assets.defs.launch import dagster_instance, pending_keys, run_checks

    instance = dagster_instance(settings)
    keys = pending_keys(settings)
    if args.limit is not None:
        keys = keys[: args.limit]
    started = time.perf_counter()
    report = _backfill_with_progress(instance, settings, args.workers, keys)
    wall = time.perf_counter() - started
    if deadline.stop_requested():
        done = sum(b.materialized for b in report.batches)
        console.print(f"dtkg backfill: stopped by {deadline.stop_reason()} after {len(report.batches)} runs: "
                      f"{done} of {report.pending} works materialized; parts are kept, run it again to continue")
        return stopped_exit_code()
    # A batch with a failed work skips its checks in Dagster: check everything once here.
    checks = run_checks(instance, settings, report) if report.pending else {}
    data = {
        "pending": report.pending,
        "runs": len(report.batches),
        "failed_runs": report.failed_runs,
        "materialized": sum(b.materialized for b in report.batches),
        "wall_s": round(wall, 3),
        "checks": checks,
        "summary": _summary(settings) if report.pending else None,
    }
    if args.json:
        print(json.dumps(data, sort_keys=True))
    else:
        console.print(
            f"{data['materialized']} of {data['pending']} works materialized in {data['runs']} runs "
            f"({data['failed_runs']} runs with failed works) in {wall:.1f} s"
        )
        for name, passed in checks.items():
            console.print(f"asset check {name}: {'passed' if passed else 'FAILED'}")
    return EXIT_OK if report.failed_runs == 0 and all(checks.values()) else EXIT_FAILED


# ---- status ---------------------------------------------------------------------------------


def add_status(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "status",
        help="features that are on, ledger health, works by outcome",
        description="Which features are on (resume, dedupe, cache, robots, offline, rate limits), ledger health.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_status)


def status_report(settings: Settings) -> dict[str, Any]:
    from dtkg_assets.core.http import client_features
    from dtkg_assets.core.ledger import Ledger, LedgerBusy, LedgerUnavailable

    features: dict[str, Any] = {
        "resume": {
            "prefix_check_bytes": settings.resume.prefix_check_bytes,
            "allow_without_validators": settings.resume.allow_without_validators,
        },
        "dedupe": ("hardlink" if settings.store.dedupe_hardlink else "copy")
        if settings.store.dedupe_enabled
        else False,
        "fsync": settings.io.fsync,
        "preallocate": settings.io.preallocate_min_size_bytes if settings.io.preallocate else False,
        "quota": {
            "free_bytes_min": settings.quota.free_bytes_min,
            "margin_factor": settings.quota.margin_factor,
            "max_bytes": settings.quota.max_bytes,
        },
        **client_features(settings),
        "landing_pages": {
            "max_hops": settings.landing.max_hops, "max_html_bytes": settings.landing.max_html_bytes,
            "doi": settings.landing.doi_resolver if settings.landing.doi else False,
            "challenge_defer": {"after": settings.landing.challenge_max, "for_s": settings.landing.challenge_defer_s},
        } if settings.landing.enabled else False,
        "openalex_content_api": {"daily_budget": settings.landing.content_daily_budget,
                                 "base_url": settings.landing.content_base_url}
        if settings.landing.content_api and settings.openalex.api_key else False,
    }
    report: dict[str, Any] = {"home": str(settings.home), "features": features}
    from dtkg_assets.core.ledger.recovery import live_problem

    damaged = live_problem(settings)
    try:
        led = Ledger.open_reader(settings)
    except (LedgerUnavailable, LedgerBusy) as exc:
        report["ledger"] = {"status": "unavailable", "detail": str(exc)}
    else:
        import duckdb

        from dtkg_assets.core.ledger.queries import works_by_outcome
        from dtkg_assets.core.ledger.storage import storage_error

        try:
            with led:
                report["ledger"] = led.health()
                # Works by outcome (what the UI's partitions show); jobs (one per candidate URL) by state are detail.
                report["works"] = works_by_outcome(led)
                report["states"] = {
                    str(k): int(v)
                    for k, v in led.query("SELECT state, count(*) FROM artifact_jobs GROUP BY state ORDER BY state")
                }
                report["yield"] = _yield(led)
        except duckdb.Error as exc:  # a snapshot damaged past its header
            detail = storage_error(exc, settings.snapshot_path, snapshot=True)
            report["ledger"] = {"status": "damaged", "detail": str(detail)}
    if damaged:
        report["ledger"]["status"] = "damaged"
        report["ledger"]["detail"] = damaged
    return report


def _yield(led: Any) -> dict[str, Any]:
    """Success rates by host, candidate source and how the PDF was found; failures by reason (issue 11)."""
    from dtkg_assets.core.ledger.queries import yield_tables

    try:
        return yield_tables(led)
    except Exception as exc:  # a snapshot from before the yield views: say so, do not fail status
        return {"unavailable": f"{type(exc).__name__}: {exc}"}


def _print_yield(data: dict[str, Any]) -> None:
    if "unavailable" in data:
        console.print(f"[bold]yield[/] unavailable ({data['unavailable']})")
        return
    for name, key, title in (("by_source", "source", "yield by source field"), ("by_host", "host", "yield by host")):
        rows = data.get(name) or []
        if not rows:
            continue
        table = Table(title=title)
        for col in (key, "tried", "stored", "failed", "success_rate"):
            table.add_column(col)
        for row in rows[:20]:
            table.add_row(str(row[key]), str(row["tried"]), str(row["stored"]), str(row["failed"]),
                          f"{float(row['success_rate'] or 0):.1%}")
        console.print(table)
    if data.get("by_via"):
        table = Table(title="stored PDFs by how they were found")
        for col in ("via", "stored", "share"):
            table.add_column(col)
        for row in data["by_via"]:
            table.add_row(str(row["via"]), str(row["stored"]), f"{float(row['share'] or 0):.1%}")
        console.print(table)
    if data.get("failures"):
        table = Table(title="failed candidates by reason")
        for col in ("reason", "class", "source", "jobs", "works"):
            table.add_column(col)
        for row in data["failures"][:30]:
            table.add_row(str(row["reason"]), str(row["failure_class"]), str(row["source"]), str(row["jobs"]),
                          str(row["works"]))
        console.print(table)


def cmd_status(args: argparse.Namespace) -> int:
    report = status_report(load_settings())
    code = EXIT_USAGE if report["ledger"].get("status") == "damaged" else EXIT_OK  # repair first
    if args.json:
        print(json.dumps(report, sort_keys=True, default=str))
        return code
    console.print(f"[bold]DTKG_HOME[/] {report['home']}")
    table = Table(title="features")
    table.add_column("feature")
    table.add_column("setting")
    for name, value in report["features"].items():
        table.add_row(name, json.dumps(value, default=str) if not isinstance(value, str) else value)
    console.print(table)
    ledger = report["ledger"]
    console.print(f"[bold]ledger[/] {ledger.get('status')} {json.dumps(ledger, default=str)}")
    works = report.get("works", {})
    if works:
        console.print(f"[bold]works[/] {sum(works.values())} (one partition each)")
        for outcome, n in works.items():
            console.print(f"  {outcome:<18} {n}")
    states = report.get("states", {})
    if states:
        console.print(f"[bold]candidate jobs[/] {sum(states.values())} (one per work and URL), by state")
        for state, n in states.items():
            console.print(f"  {state:<18} {n}")
    if "yield" in report:
        _print_yield(report["yield"])
    if ledger.get("detail"):
        print(ledger["detail"], file=sys.stderr)
    return code
