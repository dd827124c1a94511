"""`dtkg reconcile`, `dtkg ledger health|validate|repair|export`, `dtkg works import|download`,
and the ledger side of `dtkg fetch`.

Commands that write take the single-writer lock (waiting with a message, then a clear error);
commands that only read use the published snapshot, so they work while a run is writing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

from dtkg_assets.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, UsageError, load_settings, run, stopped_exit_code
from dtkg_assets.core import deadline
from dtkg_assets.core.errors import Reason
from dtkg_assets.core.ledger import Ledger, LedgerCorrupt, LedgerError, default_owner
from dtkg_assets.core.ledger.storage import is_disk_full, storage_error
from dtkg_assets.core.types import Candidate, FetchResult, InputProblem, WorkRecord
from dtkg_assets.settings import Settings

# DuckDB errors that mean the file or the disk, not the query: worded by `storage_error`.
_STORAGE_ERRORS = (duckdb.IOException, duckdb.FatalException, duckdb.InternalException, duckdb.SerializationException)


@contextmanager
def storage_words(settings: Settings, what: str, *, path: Path | None = None, snapshot: bool = False) -> Iterator[None]:
    """A damaged ledger, a full disk or an unwritable home become one message naming the file and
    what to do (exit 2), never a traceback."""
    path = path or (settings.snapshot_path if snapshot else settings.ledger_path)
    try:
        yield
    except LedgerError as exc:
        raise UsageError(f"dtkg {what}: {exc}") from None
    except duckdb.Error as exc:
        if not (isinstance(exc, _STORAGE_ERRORS) or is_disk_full(exc)):
            raise
        raise UsageError(f"dtkg {what}: {storage_error(exc, path, snapshot=snapshot)}") from None
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        where = Path(exc.filename) if isinstance(exc.filename, str) else path
        raise UsageError(f"dtkg {what}: {storage_error(exc, where)}") from None


@contextmanager
def writer(settings: Settings, what: str) -> Iterator[Ledger]:
    owner = f"dtkg {what} ({default_owner()})"
    with storage_words(settings, what), Ledger.open_writer(settings, owner=owner) as ledger:
        yield ledger


@contextmanager
def reader(settings: Settings, what: str) -> Iterator[Ledger]:
    """The published snapshot, read-only. A live file that is visibly damaged (its header) is said
    first: what the snapshot shows may be all that is left until `dtkg ledger repair`."""
    from dtkg_assets.core.ledger.storage import header_problem

    live = settings.ledger_path
    if not settings.ledger_is_postgres and live.exists() and (problem := header_problem(live)) is not None:
        raise UsageError(f"dtkg {what}: {LedgerCorrupt(live, problem)}")
    with storage_words(settings, what, snapshot=True), Ledger.open_reader(settings) as ledger:
        yield ledger


def preflight(settings: Settings, what: str) -> None:
    """Before launching Dagster runs: a damaged ledger, an unwritable or full home is said here in
    words (exit 2), not from inside a run."""
    from dtkg_assets.core.ledger.recovery import live_problem

    problem = live_problem(settings)
    if problem:
        raise UsageError(f"dtkg {what}: {problem}")
    probe = settings.home / f".dtkg-write-probe.{os.getpid()}"
    try:
        settings.home.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"x")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise UsageError(f"dtkg {what}: {storage_error(exc, settings.ledger_path)}") from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


def _print(data: Any, as_json: bool, human: str) -> None:
    print(json.dumps(data, sort_keys=True, default=str) if as_json else human)


# ---- reconcile ------------------------------------------------------------------------------


def add_reconcile(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "reconcile",
        help="heal the ledger and store after crashes (expired leases, abandoned ops, lost files, orphans)",
        description="Idempotent: a second run reports zeros. Waits for the ledger if a run is writing.",
    )
    p.add_argument("--json", action="store_true", help="print counts as one JSON object")
    p.set_defaults(func=cmd_reconcile)


def cmd_reconcile(args: argparse.Namespace) -> int:
    from dtkg_assets.core.reconciler import reconcile
    from dtkg_assets.core.store import Store

    settings = load_settings()
    with writer(settings, "reconcile") as ledger:
        counts = reconcile(ledger, Store(settings), settings)
    _print(counts, args.json, "\n".join(f"{k:>18}: {v}" for k, v in counts.items()))
    return EXIT_OK


# ---- ledger ---------------------------------------------------------------------------------


def add_ledger(subparsers: Any) -> None:
    p = subparsers.add_parser("ledger", help="ledger health, validation, repair and export")
    sub = p.add_subparsers(dest="ledger_command", metavar="ACTION", required=True)
    h = sub.add_parser("health", help="status healthy|degraded|unhealthy, version, row counts, problems")
    h.add_argument("--json", action="store_true")
    h.set_defaults(func=cmd_ledger_health)
    v = sub.add_parser("validate", help="list problems (exit 1 if any)")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_ledger_validate)
    r = sub.add_parser("repair", help="recreate missing tables, columns, indexes and views; never drops data")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_ledger_repair)
    e = sub.add_parser("export", help="write manifest.jsonl and metrics.json, or a DuckDB file (--duckdb)")
    e.add_argument("--out", help="output directory for manifest.jsonl and metrics.json")
    e.add_argument("--duckdb", metavar="FILE",
                   help="write the ledger's tables and views to this DuckDB file (from PostgreSQL when "
                        "DTKG_LEDGER_URL is set, else a copy of the published snapshot)")
    e.add_argument("--json", action="store_true", help="print metrics.json (or the --duckdb summary) to stdout too")
    e.set_defaults(func=cmd_ledger_export)


def ledger_health(settings: Settings) -> dict[str, Any]:
    """The snapshot's health plus what is wrong with the live file, in words; never writes.
    status: healthy | degraded | unhealthy (the snapshot's) | damaged (the live file) | unavailable."""
    from dtkg_assets.core.ledger.recovery import live_problem

    problem = live_problem(settings)
    try:
        with storage_words(settings, "ledger health", snapshot=True), Ledger.open_reader(settings) as ledger:
            report = ledger.health()
    except UsageError as exc:
        report = {"status": "unavailable", "version": None, "path": str(settings.snapshot_path),
                  "row_counts": {}, "problems": [str(exc).removeprefix("dtkg ledger health: ")]}
    if problem:
        report["status"] = "damaged"
        report["problems"] = [problem, *report["problems"]]
    return report


def cmd_ledger_health(args: argparse.Namespace) -> int:
    report = ledger_health(load_settings())
    human = [f"status: {report['status']}  version: {report['version']}  ({report['path']})"]
    if report.get("snapshot_age_s") is not None:
        human.append(f"data as of the snapshot published {report['snapshot_age_s']:.1f} s ago")
    human += [f"  {k}: {v}" for k, v in report["row_counts"].items()]
    human += [f"  problem: {p}" for p in report["problems"]]
    _print(report, args.json, "\n".join(human))
    if report["status"] in ("damaged", "unavailable"):
        return EXIT_USAGE
    return EXIT_OK if report["status"] == "healthy" else EXIT_FAILED


def cmd_ledger_validate(args: argparse.Namespace) -> int:
    from dtkg_assets.core.ledger.recovery import live_problem

    settings = load_settings()
    problem = live_problem(settings)
    if problem:
        raise UsageError(f"dtkg ledger validate: {problem}")
    with reader(settings, "ledger validate") as ledger:
        problems = ledger.validate()
    _print({"problems": problems}, args.json, "\n".join(problems) if problems else "ledger is valid")
    return EXIT_FAILED if problems else EXIT_OK


def cmd_ledger_repair(args: argparse.Namespace) -> int:
    from dtkg_assets.core.ledger.recovery import repair

    settings = load_settings()
    with storage_words(settings, "ledger repair"):
        report = repair(settings)
    _print(report.to_json(), args.json, report.describe())
    return EXIT_FAILED if report.problems else EXIT_OK


def cmd_ledger_export(args: argparse.Namespace) -> int:
    from dtkg_assets.core.export import export

    if not args.out and not args.duckdb:
        raise UsageError("dtkg ledger export: give --out DIR (manifest and metrics) and/or --duckdb FILE")
    settings = load_settings()
    if args.duckdb:
        from dtkg_assets.core.ledger.pg_export import ExportError, export_duckdb

        try:
            summary = export_duckdb(settings, Path(args.duckdb))
        except ExportError as exc:
            print(f"dtkg ledger export: {exc}", file=sys.stderr)
            return EXIT_FAILED
        rows = summary["rows"]
        _print(summary, args.json and not args.out,
               f"wrote {summary['path']} from {summary['source']} in {summary['seconds']:.1f} s: "
               f"{rows.get('works', 0)} works, {rows.get('artifact_jobs', 0)} jobs, {rows.get('blobs', 0)} blobs")
        if not args.out:
            return EXIT_OK
    if settings.ledger_is_postgres:
        metrics = _export_postgres(settings, Path(args.out))
        if metrics is None:
            return EXIT_FAILED
    else:
        with reader(settings, "ledger export") as ledger:
            metrics = export(ledger, Path(args.out))
    human = (f"wrote {args.out}/manifest.jsonl ({metrics['manifest_lines']} works) and {args.out}/metrics.json: "
             f"{metrics['stored']} stored, {metrics['deduped']} deduped, {metrics['failed']} failed, "
             f"{metrics['pending']} pending")
    _print(metrics, args.json, human)
    return EXIT_OK


def _export_postgres(settings: Settings, out: Path) -> dict[str, Any] | None:
    """manifest.jsonl and metrics.json from the PostgreSQL ledger: its tables are exported to a
    temporary DuckDB file first (one consistent moment), so the manifest and metrics are computed by
    the same DuckDB SQL as for the embedded ledger."""
    import dataclasses
    import tempfile

    from dtkg_assets.core.export import export
    from dtkg_assets.core.ledger.pg_export import ExportError, export_duckdb

    with tempfile.TemporaryDirectory(prefix="dtkg-export-") as tmp:
        try:
            export_duckdb(settings, Path(tmp) / "ledger.snapshot.duckdb")
        except ExportError as exc:
            print(f"dtkg ledger export: {exc}", file=sys.stderr)
            return None
        local = dataclasses.replace(settings.with_home(tmp), ledger=dataclasses.replace(settings.ledger, url=""))
        with reader(local, "ledger export") as ledger:
            return export(ledger, out)


# ---- works ----------------------------------------------------------------------------------


def add_works(subparsers: Any) -> None:
    p = subparsers.add_parser("works", help="load works into the ledger and download them")
    sub = p.add_subparsers(dest="works_command", metavar="ACTION", required=True)
    i = sub.add_parser("import", help="import a JSONL file of OpenAlex works (or an id list) into the ledger")
    i.add_argument("file", help=".jsonl of OpenAlex work records, or a text file of OpenAlex ids / DOIs")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_works_import)
    q = sub.add_parser("query", help="import works from an OpenAlex query (cursor paging)")
    q.add_argument("--filter", help="raw OpenAlex filter string, e.g. 'publication_year:2024,has_content.pdf:true'")
    q.add_argument("--topic", dest="topic_id", help="OpenAlex topic id, e.g. T10555")
    q.add_argument("--from-year", dest="year_from", type=int)
    q.add_argument("--to-year", dest="year_to", type=int)
    q.add_argument("--oa-only", action="store_true", help="open-access works only")
    q.add_argument("--max", dest="max_results", type=int, help="at most this many records")
    q.add_argument("--per-page", type=int, help="records per page (1-100)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_works_query)
    r = sub.add_parser(
        "retry",
        help="reopen failed works (any failure class) by reason or host, for the next backfill",
        description="Reopen failed works through the ledger's explicit requeue edge: their candidates become "
        "plannable again. The reconcile sensor or `dtkg backfill` downloads them.",
    )
    r.add_argument("--reason", action="append", default=[], help="failure reason, e.g. http_404 (repeatable)")
    r.add_argument("--host", action="append", default=[], help="host of the failed URL, e.g. example.org (repeatable)")
    r.add_argument("--all", action="store_true", help="every failed work")
    r.add_argument("--dry-run", action="store_true", help="only list what would be reopened")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_works_retry)
    d = sub.add_parser("download", help="download every work that needs it (optionally importing FILE first)")
    d.add_argument("file", nargs="?", help="works file to import first")
    d.add_argument("--workers", type=int, default=8)
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_works_download)


def file_source(file: str) -> Any:
    """A JSONL file of work records, or else a list of DOIs / OpenAlex ids."""
    from dtkg_assets.core.sources import WorksSource

    is_jsonl = Path(file).suffix in (".jsonl", ".json", ".ndjson")
    return WorksSource(jsonl_path=file) if is_jsonl else WorksSource(ids_path=file)


def load_source(
    settings: Settings, source: Any, command: str, work_ids: list[str] | None = None
) -> tuple[dict[str, Any], list[InputProblem]]:
    """Read a works source (before taking the writer lock), then record it in the ledger; the works'
    ids are appended to `work_ids` when given."""
    from dtkg_assets.core.sources import SourceError, read_source, record_source

    try:
        batch = read_source(source, settings)
    except (SourceError, ValueError) as exc:
        raise UsageError(f"{command}: {exc}") from None
    if batch.stopped_early:
        print(f"{command}: stopped early, {batch.stopped_early} (the works read so far are kept)", file=sys.stderr)
    with writer(settings, command.removeprefix("dtkg ")) as ledger:
        summary = record_source(ledger, batch, run_id=f"works-{uuid.uuid4().hex[:12]}", kind=f"works:{source.kind}")
    if work_ids is not None:
        work_ids.extend(work.work_id for work in batch.works)
    return summary, batch.problems


def announce_import(settings: Settings, command: str, what: str, summary: dict[str, Any], ids: list[str]) -> None:
    """Make the import visible in Dagster: partitions for the works and one `openalex_works` event."""
    from dtkg_assets.defs.launch import record_import

    try:
        record_import(settings, command, what, summary, ids)
    except Exception as exc:  # the ledger has the works; the work_partitions_sensor registers them later
        print(f"{command}: the works are in the ledger, but Dagster was not told ({type(exc).__name__}: {exc}); "
              "dagster dev's work_partitions_sensor will add their partitions", file=sys.stderr)


def _report_import(summary: dict[str, Any], problems: list[InputProblem], as_json: bool) -> None:
    for p in problems:
        print(f"{p.origin}:{p.line if p.line is not None else '-'}: {p.reason}: {p.detail}", file=sys.stderr)
    _print(summary, as_json, f"{summary['works']} works ({summary['new_works']} new, {summary['new_jobs']} new "
                             f"candidate jobs), {summary['problems']} input problems")


def cmd_works_query(args: argparse.Namespace) -> int:
    from dtkg_assets.core.sources import WorksSource

    source = WorksSource(filter=args.filter, topic_id=args.topic_id, year_from=args.year_from,
                         year_to=args.year_to, oa_only=args.oa_only, max_results=args.max_results,
                         per_page=args.per_page)
    if not source.is_query:
        raise UsageError("dtkg works query: give --filter, --topic, --from-year/--to-year or --oa-only")
    settings = load_settings()
    ids: list[str] = []
    summary, problems = load_source(settings, source, "dtkg works query", ids)
    announce_import(settings, "dtkg works query", source.filter or source.topic_id or "query", summary, ids)
    _report_import(summary, problems, args.json)
    return EXIT_OK


def cmd_works_import(args: argparse.Namespace) -> int:
    from dtkg_assets.core.works import why_nothing_usable

    settings = load_settings()
    ids: list[str] = []
    summary, problems = load_source(settings, file_source(args.file), "dtkg works import", ids)
    announce_import(settings, "dtkg works import", str(args.file), summary, ids)
    _report_import({"file": args.file, **summary}, problems, args.json)
    if summary["works"] == 0:
        print(f"dtkg works import: no usable work in {args.file}: {why_nothing_usable(args.file)}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def cmd_works_retry(args: argparse.Namespace) -> int:
    from dtkg_assets.core.ledger.queries import failed_jobs

    if not (args.reason or args.host or args.all):
        raise UsageError("dtkg works retry: say which failed works: --reason R, --host H (repeatable) or --all")
    settings = load_settings()
    reasons = set(args.reason)
    hosts = {h.lower() for h in args.host}
    with writer(settings, "works retry") as ledger:
        rows = failed_jobs(ledger)
        # A work is reopened when its reported failure (the last candidate's reason) or any failed URL matches.
        chosen: dict[str, list[str]] = {}
        for work_id, _job, reason, host, work_reason in rows:
            if args.all or work_reason in reasons or reason in reasons or (host or "").lower() in hosts:
                chosen.setdefault(work_id, [])
        for work_id, job_id, *_ in rows:
            if work_id in chosen:
                chosen[work_id].append(job_id)
        reopened = 0
        if not args.dry_run:
            for job_ids in chosen.values():
                done = [ledger.requeue(j, reason="retry_requested", detail="dtkg works retry") for j in job_ids]
                reopened += any(done)
            ledger.publish_snapshot(force=True)
    data = {"matched": len(chosen), "reopened": reopened, "dry_run": bool(args.dry_run), "works": sorted(chosen)[:1000]}
    verb = "would reopen" if args.dry_run else "reopened"
    human = f"{verb} {len(chosen) if args.dry_run else reopened} failed works"
    if not args.dry_run and reopened:
        human += "; the reconcile sensor (dagster dev) or `dtkg backfill` downloads them"
    _print(data, args.json, human)
    return EXIT_OK


def cmd_works_download(args: argparse.Namespace) -> int:
    from dtkg_assets.core.http import make_client
    from dtkg_assets.core.ledger.queries import works_needing_work
    from dtkg_assets.core.orchestrator import Orchestrator
    from dtkg_assets.core.store import Store
    from dtkg_assets.core.streaming import Engine

    if args.workers < 1:
        raise UsageError("dtkg works download: --workers must be at least 1")
    settings = load_settings()
    if args.file:
        load_source(settings, file_source(args.file), "dtkg works download")
    with writer(settings, "works download") as ledger:
        ids = works_needing_work(ledger)  # what is eligible now; backoffs that have not passed wait
        with make_client(settings) as client:
            engine = Engine(client, settings, Store(settings))
            orch = Orchestrator(ledger, engine, settings, owner=ledger.owner, run_id=f"cli-{uuid.uuid4().hex[:12]}")
            outcomes = orch.process(ids, workers=args.workers)
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    summary: dict[str, Any] = {"works": len(outcomes), **counts, "run_id": orch.run_id}
    if deadline.stop_requested():
        summary["stopped_by"] = deadline.stop_reason()
        summary["interrupted"] = [o.work_id for o in outcomes if o.reason == Reason.INTERRUPTED.value]
    _print(summary, args.json, " ".join(f"{k}={v}" for k, v in summary.items() if k != "interrupted"))
    if deadline.stop_requested():
        _report_stop(outcomes)
        return stopped_exit_code()
    return EXIT_FAILED if counts.get("failed") else EXIT_OK


def _report_stop(outcomes: list[Any]) -> None:
    """After SIGINT/SIGTERM: what this run stored, what it interrupted mid-download, what it never began."""
    stored = [o for o in outcomes if o.status in ("downloaded", "deduped")]
    stopped = [o for o in outcomes if o.reason == Reason.INTERRUPTED.value and o.result is not None]
    waiting = [o for o in outcomes if o.reason == Reason.INTERRUPTED.value and o.result is None]
    lines = [f"dtkg works download: stopped by {deadline.stop_reason()}: {len(stored)} works stored, "
             f"{len(stopped)} interrupted mid-download (parts kept), {len(waiting)} not started"]
    lines += [f"  stored {o.work_id}: {o.bytes} bytes" for o in stored]
    lines += [f"  interrupted {o.work_id}: {o.result.body_bytes_received} bytes received this run, kept for resume"
              for o in stopped]
    lines.append("Run the same command again to resume.")
    print("\n".join(lines), file=sys.stderr)


# ---- fetch ----------------------------------------------------------------------------------


def fetch_with_ledger(settings: Settings, url: str, work_id: str) -> FetchResult:
    """`dtkg fetch URL`: a one-candidate work through the orchestrator, so the ledger records it.
    A work the ledger already has complete is answered from the ledger with no network."""
    from dtkg_assets.core.credentials import redact_url
    from dtkg_assets.core.http import make_client
    from dtkg_assets.core.orchestrator import Orchestrator
    from dtkg_assets.core.store import Store
    from dtkg_assets.core.streaming import Engine

    shown = redact_url(url)
    candidate = Candidate(shown, "cli", real_url=url if shown != url else None)
    url = shown  # from here on, and in everything recorded, the redacted URL
    with writer(settings, "fetch") as ledger, make_client(settings) as client:
        engine = Engine(client, settings, Store(settings))
        orch = Orchestrator(ledger, engine, settings, owner=ledger.owner, run_id=f"fetch-{uuid.uuid4().hex[:12]}")
        orch.plan([WorkRecord(work_id, [candidate], origin="cli:fetch")])
        outcome = orch.process([work_id], workers=1)[0]
    if outcome.result is not None:
        return outcome.result
    if outcome.status == "skipped_complete":
        return FetchResult(status="stored", reason="ok", decision="already_complete", url=url, work_id=work_id,
                           sha256=outcome.sha256, path=outcome.path, bytes=outcome.bytes,
                           decision_reason="ledger_complete")
    return FetchResult(status="failed", reason=outcome.reason, decision=None, url=url, work_id=work_id,
                       detail=outcome.detail)


__all__ = ["add_ledger", "add_reconcile", "add_works", "fetch_with_ledger", "load_source"]


def main(argv: list[str] | None = None) -> int:
    """`python -m dtkg_assets.cli_ledger …`: these subcommands on their own (same as via `dtkg`)."""
    parser = argparse.ArgumentParser(prog="dtkg")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (add_reconcile, add_ledger, add_works):
        add(subparsers)
    return run(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
