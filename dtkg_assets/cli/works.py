"""`dtkg works import|query|retry|download`: load works into the ledger and download them."""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dtkg_assets.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    load_settings,
    print_result,
    start_helper_process,
    stopped_exit_code,
)
from dtkg_assets.cli.ledger_access import writer
from dtkg_assets.core import deadline
from dtkg_assets.core.errors import Reason
from dtkg_assets.core.settings import Settings

if TYPE_CHECKING:
    from dtkg_assets.core.sources import ImportReport


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


def load_source(settings: Settings, source: Any, command: str,
                on_batch: Callable[[list[str]], None] | None = None) -> ImportReport:
    """Import a works source into the ledger, a batch at a time (network sources are read before the
    writer lock is taken). Close the report when done with its work ids."""
    from dtkg_assets.core.sources import SourceError, import_works

    try:
        report = import_works(source, settings, lambda: writer(settings, command.removeprefix("dtkg ")),
                              run_id=f"works-{uuid.uuid4().hex[:12]}", on_batch=on_batch,
                              start_process=start_helper_process)
    except (SourceError, ValueError) as exc:
        raise UsageError(f"{command}: {exc}") from None
    if report.stopped_early:
        print(f"{command}: stopped early, {report.stopped_early} (the works read so far are kept)", file=sys.stderr)
    return report


def import_and_announce(settings: Settings, source: Any, command: str, what: str) -> ImportReport:
    """`load_source`, and make the import visible in Dagster: partitions for the works and one
    `openalex_works` event. A helper process registers each batch's partitions as soon as the ledger
    has committed it, on the other core while the import goes on (registering a million keys takes
    about 10 s of Python that would otherwise follow the import); it touches Dagster only when
    there are works."""
    announcer = _Announcer(settings, command, what)
    try:
        report = load_source(settings, source, command, on_batch=announcer.send)
    except BaseException:
        announcer.finish(None)
        raise
    error = announcer.finish(report.summary if report.works else None)
    if error is not None:  # the ledger has the works; the work_partitions_sensor registers them later
        print(f"{command}: the works are in the ledger, but Dagster was not told ({error}); "
              "dagster dev's work_partitions_sensor will add their partitions", file=sys.stderr)
    return report


class _Announcer:
    """The parent's end of `_announce_in_child`: batches of work ids go out on a helper thread (the
    pipe never holds up the import while the child starts), then the summary (or None: nothing to
    record), then `finish` returns the child's error in words, or None."""

    def __init__(self, settings: Settings, command: str, what: str) -> None:
        import multiprocessing

        from dtkg_assets.core.background import BackgroundWorker

        # spawn, not fork: this process has DuckDB's threads running by the time batches arrive.
        ctx = multiprocessing.get_context("spawn")
        self._conn, child_end = ctx.Pipe()
        self._proc = ctx.Process(target=_announce_in_child, args=(child_end, settings, command, what),
                                 name="dtkg-announce", daemon=True)
        start_helper_process(self._proc)
        child_end.close()
        self._out = BackgroundWorker(self._conn.send, name="dtkg-announce-send")
        self.send = self._out.put

    def finish(self, summary: dict[str, Any] | None) -> str | None:
        self._out.put(summary)
        try:
            self._out.close()
            error: str | None = self._conn.recv()
        except (OSError, EOFError) as exc:
            error = f"its helper process stopped ({type(exc).__name__})"
        finally:
            self._conn.close()
            self._proc.join()
        return error


def _announce_in_child(conn: Any, settings: Settings, command: str, what: str) -> None:
    """In the helper process: register the partitions of each batch of work ids, then, given the
    summary, record the import (`record_import`); None instead of a summary ends without touching
    Dagster. Answers None or the first error in words (and reads on to the end after one)."""
    error: str | None = None
    instance: Any = None
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone (killed): the work_partitions_sensor registers the rest
        if isinstance(message, list) and error is None:
            try:
                from dtkg_assets.cli.launch import dagster_instance
                from dtkg_assets.defs.partitions import add_work_partitions

                instance = instance or dagster_instance(settings)
                add_work_partitions(instance, message)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
        elif isinstance(message, dict) or message is None:
            if isinstance(message, dict) and error is None:
                try:
                    from dtkg_assets.cli.launch import dagster_instance, record_import

                    record_import(instance or dagster_instance(settings), command, what, message)
                except Exception as exc:
                    error = f"{type(exc).__name__}: {exc}"
            conn.send(error)
            conn.close()
            return


def _report_import(summary: dict[str, Any], report: ImportReport, as_json: bool) -> None:
    for p in report.problems:
        print(f"{p.origin}:{p.line if p.line is not None else '-'}: {p.reason}: {p.detail}", file=sys.stderr)
    if summary["problems"] > len(report.problems):
        print(f"... and {summary['problems'] - len(report.problems)} more input problems "
              "(all of them are in the ledger's input_problems table)", file=sys.stderr)
    print_result(summary, as_json, f"{summary['works']} works ({summary['new_works']} new, {summary['new_jobs']} new "
                             f"candidate jobs), {summary['problems']} input problems")


def cmd_works_query(args: argparse.Namespace) -> int:
    from dtkg_assets.core.sources import WorksSource

    source = WorksSource(filter=args.filter, topic_id=args.topic_id, year_from=args.year_from,
                         year_to=args.year_to, oa_only=args.oa_only, max_results=args.max_results,
                         per_page=args.per_page)
    if not source.is_query:
        raise UsageError("dtkg works query: give --filter, --topic, --from-year/--to-year or --oa-only")
    settings = load_settings()
    what = source.filter or source.topic_id or "query"
    report = import_and_announce(settings, source, "dtkg works query", what)
    report.close()  # Dagster has the work ids already
    _report_import(report.summary, report, args.json)
    # A query that stopped early (OpenAlex unreachable, refused, out of credit) did not do its work.
    return EXIT_FAILED if report.stopped_early else EXIT_OK


def cmd_works_import(args: argparse.Namespace) -> int:
    from dtkg_assets.core.works import why_nothing_usable

    settings = load_settings()
    report = import_and_announce(settings, file_source(args.file), "dtkg works import", str(args.file))
    report.close()  # Dagster has the work ids already
    _report_import({"file": args.file, **report.summary}, report, args.json)
    if report.works == 0:
        print(f"dtkg works import: no usable work in {args.file}: {why_nothing_usable(args.file)}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_FAILED if report.stopped_early else EXIT_OK


def cmd_works_retry(args: argparse.Namespace) -> int:
    from dtkg_assets.core.ledger.queries import failed_jobs

    if not (args.reason or args.host or args.all):
        raise UsageError("dtkg works retry: say which failed works: --reason R, --host H (repeatable) or --all")
    settings = load_settings()
    reasons = set(args.reason)
    hosts = {h.lower() for h in args.host}
    with writer(settings, "works retry") as ledger:
        rows = failed_jobs(ledger)
        # A work is reopened when its reported failure (queries.WORK_REASON_SQL) or any failed URL matches.
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
    print_result(data, args.json, human)
    return EXIT_OK


def cmd_works_download(args: argparse.Namespace) -> int:
    from dtkg_assets.core.http import make_client
    from dtkg_assets.core.ledger.queries import works_needing_work
    from dtkg_assets.core.orchestrator import make_orchestrator

    if args.workers < 1:
        raise UsageError("dtkg works download: --workers must be at least 1")
    settings = load_settings()
    if args.file:
        load_source(settings, file_source(args.file), "dtkg works download").close()
    with writer(settings, "works download") as ledger:
        ids = works_needing_work(ledger)  # what is eligible now; backoffs that have not passed wait
        with make_client(settings) as client:
            orch = make_orchestrator(ledger, client, settings, owner=ledger.owner,
                                     run_id=f"cli-{uuid.uuid4().hex[:12]}")
            outcomes = orch.process(ids, workers=args.workers)
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    summary: dict[str, Any] = {"works": len(outcomes), **counts, "run_id": orch.run_id}
    if deadline.stop_requested():
        summary["stopped_by"] = deadline.stop_reason()
        summary["interrupted"] = [o.work_id for o in outcomes if o.reason == Reason.INTERRUPTED.value]
    print_result(summary, args.json, " ".join(f"{k}={v}" for k, v in summary.items() if k != "interrupted"))
    if deadline.stop_requested():
        _report_stop(outcomes)
        return stopped_exit_code()
    # Failed work: permanent failures, and transient ones this run met (timeout, 5xx, disk full …) that
    # the ledger retries later. Not failures: works another process holds, or in a backoff not yet over.
    retried_later = [o for o in outcomes if o.status == "deferred" and o.result is not None
                     and o.reason not in (Reason.LEASE_LOST.value, Reason.INTERRUPTED.value)]
    if retried_later:
        by_reason: dict[str, int] = {}
        for o in retried_later:
            by_reason[o.reason] = by_reason.get(o.reason, 0) + 1
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(by_reason.items(), key=lambda kv: -kv[1]))
        print(f"dtkg works download: {len(retried_later)} works failed this run and are retried later ({reasons}); "
              "`dtkg status` shows when", file=sys.stderr)
    return EXIT_FAILED if counts.get("failed") or retried_later else EXIT_OK


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
