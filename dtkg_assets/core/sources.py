"""One way to read works from any configured source: a JSONL file, an id list, or an OpenAlex query.

Used by `dtkg works import/query` and by the `openalex_works` asset, so both record the same
works, the same input problems and the same query provenance.
"""

from __future__ import annotations

import pickle
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from dtkg_assets.core.background import BackgroundWorker
from dtkg_assets.core.errors import DtkgError
from dtkg_assets.core.ledger import Ledger
from dtkg_assets.core.ledger.planning import PlannedWorks, plan_columns
from dtkg_assets.core.openalex import OpenAlexClient
from dtkg_assets.core.settings import Settings
from dtkg_assets.core.types import InputProblem, WorkRecord
from dtkg_assets.core.works import read_id_list, read_jsonl


class SourceError(ValueError):
    """The source itself is unusable (no such file, nothing configured); names the input and the fix."""


@dataclass
class WorksSource:
    """Exactly one of `jsonl_path`, `ids_path` or an OpenAlex query (filter/topic/years/oa_only)."""

    jsonl_path: str | None = None
    ids_path: str | None = None
    filter: str | None = None
    topic_id: str | None = None
    year_from: int | None = None
    year_to: int | None = None
    oa_only: bool = False
    max_results: int | None = None
    per_page: int | None = None

    @property
    def kind(self) -> str:
        if self.jsonl_path:
            return "jsonl"
        if self.ids_path:
            return "ids"
        return "openalex"

    def check(self) -> None:
        chosen = [bool(self.jsonl_path), bool(self.ids_path), self.is_query]
        if sum(chosen) != 1:
            raise SourceError(
                "choose exactly one works source: a JSONL file (jsonl_path), an id/DOI list (ids_path), "
                "or an OpenAlex query (filter, topic_id, year_from/year_to, oa_only)"
            )
        for path in (self.jsonl_path, self.ids_path):
            if path and not Path(path).is_file():
                raise SourceError(f"works file {path!r} does not exist or is not a file; pass an existing path")

    @property
    def is_query(self) -> bool:
        return bool(self.filter or self.topic_id or self.year_from or self.year_to or self.oa_only)


def _file_provenance(kind: str, path: str) -> dict[str, Any]:
    return {"kind": kind, "path": str(Path(path).absolute())}


@dataclass
class SourceReport:
    """What reading a source yielded, besides the works themselves."""

    provenance: dict[str, Any] = field(default_factory=dict)


def iter_works(
    source: WorksSource, settings: Settings, report: SourceReport | None = None
) -> Iterator[WorkRecord | InputProblem]:
    """Works and input problems from `source`, in input order; bad lines never stop the rest."""
    source.check()
    report = report if report is not None else SourceReport()
    if source.jsonl_path:
        report.provenance = _file_provenance("jsonl", source.jsonl_path)
        yield from read_jsonl(source.jsonl_path)
        return
    if source.ids_path:
        report.provenance = _file_provenance("ids", source.ids_path)
        with OpenAlexClient(settings) as client:
            for item in read_id_list(source.ids_path):
                if isinstance(item, InputProblem):
                    yield item
                    continue
                yield client.get_work(item)
        return
    with OpenAlexClient(settings) as client:
        yield from client.query_works(
            source.filter,
            topic_id=source.topic_id,
            year_from=source.year_from,
            year_to=source.year_to,
            oa_only=source.oa_only,
            max_results=source.max_results,
            per_page=source.per_page,
        )
        if client.provenance is not None:
            report.provenance = {"kind": "openalex", **client.provenance.to_json()}



# Works are planned this many at a time, one ledger transaction each: memory stays flat in the size
# of the input (a million works in one file) and no statement grows with it. A re-import is
# idempotent (works upsert, jobs insert once), so an import stopped between batches is completed by
# running it again.
IMPORT_BATCH = 20_000
# Input problems kept in memory for reporting (the ledger gets every one of them).
KEPT_PROBLEMS = 1_000
# A JSONL file this large is read and planned in a helper process, beside the ledger writes; below
# it, starting the process (about 0.5 s) would cost more than it saves.
PLAN_ELSEWHERE_BYTES = 24 * 2**20


@dataclass
class ImportReport:
    """What importing a source did: the summary numbers, the first input problems, and the imported
    work ids (spooled to a temporary file, one per line, in input order) for Dagster's partitions."""

    summary: dict[str, Any] = field(default_factory=dict)
    problems: list[InputProblem] = field(default_factory=list)  # the first KEPT_PROBLEMS
    provenance: dict[str, Any] = field(default_factory=dict)
    stopped_early: str | None = None  # why reading stopped before the end (what was read is kept)
    _ids: IO[bytes] | None = field(default=None, repr=False)

    @property
    def works(self) -> int:
        return int(self.summary.get("works", 0))

    def work_ids(self) -> Iterator[str]:
        """The imported work ids in input order (an id imported twice comes twice)."""
        if self._ids is None:
            return
        self._ids.seek(0)
        for line in self._ids:
            yield line.rstrip(b"\n").decode()

    def close(self) -> None:
        if self._ids is not None:
            self._ids.close()
            self._ids = None

    def __enter__(self) -> ImportReport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def import_works(
    source: WorksSource,
    settings: Settings,
    writer: Callable[[], AbstractContextManager[Ledger]],
    *,
    run_id: str,
    batch_size: int = IMPORT_BATCH,
    on_batch: Callable[[list[str]], None] | None = None,
    start_process: Callable[[Any], None] | None = None,
) -> ImportReport:
    """Read `source` into the ledger in batches of `batch_size` works, holding at most one batch.

    A JSONL file is read while the writer (`writer()`) is held: it is local and reading it is the
    import. Network sources (OpenAlex queries, id lists) are first spooled to a temporary file, so
    network time never holds the writer. The read is recorded as a run (query, cursors, fetch times)
    so an analyst can reproduce it. A source that fails midway (OpenAlex unavailable) keeps what
    arrived; bad configuration raises `SourceError` before anything is read. Close the report (or use
    it as a context manager) when done. `on_batch` gets the work ids of each batch once it is
    committed (in input order), on the thread that writes the batches. Given `start_process` (how
    to start a helper process: the CLI's `start_helper_process`), a large JSONL file going to the
    DuckDB ledger is read and planned in a helper process (`_planned_elsewhere`)."""
    source.check()
    # The ids file lives as long as the report (closed by `ImportReport.close`).
    report = ImportReport(_ids=tempfile.TemporaryFile(prefix="dtkg-import-ids-"))  # noqa: SIM115
    read = SourceReport()
    try:
        if source.kind == "jsonl":
            path = str(source.jsonl_path)
            with writer() as ledger:
                if start_process is not None and _plan_elsewhere(path, settings):
                    read.provenance = _file_provenance("jsonl", path)
                    with _planned_elsewhere(path, settings, batch_size, start_process) as batches:
                        _record(ledger, batches, report, run_id, source.kind, read, on_batch)
                else:
                    _record(ledger, _batches(iter_works(source, settings, read), batch_size), report, run_id,
                            source.kind, read, on_batch)
        else:
            with _spooled(iter_works(source, settings, read), report) as items, writer() as ledger:
                _record(ledger, _batches(items, batch_size), report, run_id, source.kind, read, on_batch)
    except BaseException:
        report.close()
        raise
    return report


@contextmanager
def _spooled(items: Iterator[WorkRecord | InputProblem], report: ImportReport) -> Iterator[Iterator[Any]]:
    """Everything `items` yields, read to the end (or until the source fails) into a temporary file
    (mode 0600, unlinked: candidates may carry credentials), then yielded again from there."""
    with tempfile.TemporaryFile(prefix="dtkg-import-") as spool:
        pickler = pickle.Pickler(spool, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            for item in items:
                pickler.dump(item)
                pickler.clear_memo()
        except DtkgError as exc:
            report.stopped_early = str(exc)
        spool.seek(0)

        def replay() -> Iterator[Any]:
            unpickler = pickle.Unpickler(spool)
            while True:
                try:
                    yield unpickler.load()
                except EOFError:
                    return

        yield replay()


@dataclass
class _Batch:
    """One batch for the ledger: its works (or their columns, planned in the reading process), the
    work ids in input order (repeats kept) and its input problems; the last batch says whether
    reading stopped early."""

    work_ids: list[str]
    problems: list[InputProblem]
    works: list[WorkRecord] = field(default_factory=list)
    planned: PlannedWorks | None = None
    stopped_early: str | None = None


def _batches(items: Iterator[WorkRecord | InputProblem], batch_size: int) -> Iterator[_Batch]:
    """`items` in batches of at most `batch_size` works or problems; a source failing midway
    (`DtkgError`) ends the batches, the last one saying why."""
    works: list[WorkRecord] = []
    problems: list[InputProblem] = []
    stopped_early: str | None = None
    try:
        for item in items:
            if isinstance(item, InputProblem):
                problems.append(item)
            else:
                works.append(item)
            if len(works) >= batch_size or len(problems) >= batch_size:
                yield _Batch([w.work_id for w in works], problems, works)
                works, problems = [], []
    except DtkgError as exc:
        stopped_early = str(exc)
    yield _Batch([w.work_id for w in works], problems, works, stopped_early=stopped_early)


def _record(
    ledger: Ledger,
    batches: Iterator[_Batch],
    report: ImportReport,
    run_id: str,
    kind: str,
    read: SourceReport,
    on_batch: Callable[[list[str]], None] | None = None,
) -> None:
    ledger.start_run(run_id, kind=f"works:{kind}", owner=ledger.owner)
    counts = {"works": 0, "new_works": 0, "new_jobs": 0, "problems": 0}
    ids = report._ids
    assert ids is not None

    def write(batch: _Batch) -> None:
        if batch.work_ids:
            if batch.planned is not None:
                new_works, new_jobs = ledger.write_planned(batch.planned)
            else:
                new_works, new_jobs = ledger.plan(batch.works)
            counts["new_works"] += new_works
            counts["new_jobs"] += new_jobs
            ids.write("".join(f"{w}\n" for w in batch.work_ids).encode())
            if on_batch is not None:
                on_batch(batch.work_ids)
        if batch.problems:
            ledger.add_input_problems(batch.problems)

    # Batches are written on a helper thread while the next one is read: DuckDB releases the GIL
    # while it inserts and commits, so the two overlap on a second core. One batch waits at most.
    writer = BackgroundWorker(write, name="dtkg-import-writer", depth=1)
    with ledger.bulk_load():
        try:
            for batch in batches:
                if writer.error is not None:
                    raise writer.error  # the ledger failed: stop reading (close raises it again, as the same error)
                counts["works"] += len(batch.work_ids)
                counts["problems"] += len(batch.problems)
                report.problems.extend(batch.problems[:KEPT_PROBLEMS - len(report.problems)])
                report.stopped_early = batch.stopped_early or report.stopped_early
                if batch.work_ids or batch.problems:
                    writer.put(batch)
        finally:
            writer.close()  # every batch handed over is written (or its error raised) before the run ends
    report.provenance = read.provenance
    summary: dict[str, Any] = {**counts, "provenance": read.provenance}
    if report.stopped_early:
        summary["stopped_early"] = report.stopped_early
    ledger.finish_run(run_id, summary)
    report.summary = summary


def _plan_elsewhere(path: str, settings: Settings) -> bool:
    # PostgreSQL plans with its own statements (core.ledger.pg), from the works themselves.
    return not settings.ledger_is_postgres and Path(path).stat().st_size >= PLAN_ELSEWHERE_BYTES


@contextmanager
def _planned_elsewhere(path: str, settings: Settings, batch_size: int,
                       start_process: Callable[[Any], None]) -> Iterator[Iterator[_Batch]]:
    """The batches of the JSONL file `path`, read and planned (`plan_columns`) in a helper process.

    Reading, parsing and planning a million works is about 35 s of Python; in this process it shares
    one GIL with the ledger writes, in a helper it runs on the other core while DuckDB writes the
    batches before. Columns of plain values cross the pipe (a fraction of the cost of the records).
    An error in the helper is raised here as the same exception; leaving the block early (a ledger
    error, Ctrl-C) ends the helper."""
    import multiprocessing

    # spawn, not fork: this process has DuckDB's threads running.
    ctx = multiprocessing.get_context("spawn")
    conn, child_end = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_plan_in_child, args=(child_end, path, settings, batch_size),
                       name="dtkg-import-read", daemon=True)
    start_process(proc)
    child_end.close()

    def received() -> Iterator[_Batch]:
        while True:
            try:
                message = conn.recv()
            except EOFError:
                proc.join()
                raise RuntimeError(f"the process reading {path} ended unexpectedly (exit code {proc.exitcode}); "
                                   "run the import again: what was imported is kept") from None
            if message is None:
                return
            if isinstance(message, BaseException):
                raise message
            yield message

    try:
        yield received()
    finally:
        conn.close()
        if proc.is_alive():
            proc.kill()  # the import stopped before the end: nothing more to read
        proc.join()


def _plan_in_child(conn: Any, path: str, settings: Settings, batch_size: int) -> None:
    """In the helper process: each batch of `path`, planned, then None; or the first error instead
    (as itself when it pickles, else in words). A parent gone ends it quietly."""
    import gc

    # What the helper makes (parsed records, column lists) is short-lived and acyclic: the cyclic
    # collector's frequent passes over it were a tenth of the helper's time.
    gc.freeze()
    gc.set_threshold(100_000, 50, 1000)
    last: BaseException | None = None
    try:
        for batch in _batches(read_jsonl(path), batch_size):
            batch.planned = plan_columns(batch.works, settings)
            batch.works = []
            conn.send(batch)
    except Exception as exc:
        last = exc
    for message in (last, RuntimeError(f"{type(last).__name__}: {last}")):
        try:
            conn.send(message)
            return
        except OSError:
            return  # the parent is gone (it stopped the import)
        except Exception:
            continue  # the error does not pickle: say it in words
