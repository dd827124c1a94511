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
        report.provenance = {"kind": "jsonl", "path": str(Path(source.jsonl_path).absolute())}
        yield from read_jsonl(source.jsonl_path)
        return
    if source.ids_path:
        report.provenance = {"kind": "ids", "path": str(Path(source.ids_path).absolute())}
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
) -> ImportReport:
    """Read `source` into the ledger in batches of `batch_size` works, holding at most one batch.

    A JSONL file is read while the writer (`writer()`) is held: it is local and reading it is the
    import. Network sources (OpenAlex queries, id lists) are first spooled to a temporary file, so
    network time never holds the writer. The read is recorded as a run (query, cursors, fetch times)
    so an analyst can reproduce it. A source that fails midway (OpenAlex unavailable) keeps what
    arrived; bad configuration raises `SourceError` before anything is read. Close the report (or use
    it as a context manager) when done. `on_batch` gets the work ids of each batch once it is
    committed (in input order), on the thread that writes the batches."""
    source.check()
    # The ids file lives as long as the report (closed by `ImportReport.close`).
    report = ImportReport(_ids=tempfile.TemporaryFile(prefix="dtkg-import-ids-"))  # noqa: SIM115
    read = SourceReport()
    try:
        if source.kind == "jsonl":
            with writer() as ledger:
                _record(ledger, iter_works(source, settings, read), report, run_id, source.kind, batch_size, read,
                        on_batch)
        else:
            with _spooled(iter_works(source, settings, read), report) as items, writer() as ledger:
                _record(ledger, items, report, run_id, source.kind, batch_size, read, on_batch)
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


def _record(
    ledger: Ledger,
    items: Iterator[WorkRecord | InputProblem],
    report: ImportReport,
    run_id: str,
    kind: str,
    batch_size: int,
    read: SourceReport,
    on_batch: Callable[[list[str]], None] | None = None,
) -> None:
    ledger.start_run(run_id, kind=f"works:{kind}", owner=ledger.owner)
    works: list[WorkRecord] = []
    problems: list[InputProblem] = []
    counts = {"works": 0, "new_works": 0, "new_jobs": 0, "problems": 0}
    ids = report._ids
    assert ids is not None

    def write(batch: tuple[list[WorkRecord], list[InputProblem]]) -> None:
        batch_works, batch_problems = batch
        if batch_works:
            new_works, new_jobs = ledger.plan(batch_works)
            counts["new_works"] += new_works
            counts["new_jobs"] += new_jobs
            ids.write("".join(f"{w.work_id}\n" for w in batch_works).encode())
            if on_batch is not None:
                on_batch([w.work_id for w in batch_works])
        if batch_problems:
            ledger.add_input_problems(batch_problems)

    # Batches are written on a helper thread while the next one is read: DuckDB releases the GIL
    # while it inserts and commits, so the two overlap on a second core. One batch waits at most.
    writer = BackgroundWorker(write, name="dtkg-import-writer", depth=1)

    def flush() -> None:
        nonlocal works, problems
        if writer.error is not None:
            raise writer.error  # the ledger failed: stop reading (close raises it again, as the same error)
        if works or problems:
            writer.put((works, problems))
            works, problems = [], []

    with ledger.bulk_load():
        try:
            try:
                for item in items:
                    if isinstance(item, InputProblem):
                        counts["problems"] += 1
                        problems.append(item)
                        if len(report.problems) < KEPT_PROBLEMS:
                            report.problems.append(item)
                    else:
                        counts["works"] += 1
                        works.append(item)
                    if len(works) >= batch_size or len(problems) >= batch_size:
                        flush()
            except DtkgError as exc:
                report.stopped_early = str(exc)
            flush()
        finally:
            writer.close()  # every batch handed over is written (or its error raised) before the run ends
    report.provenance = read.provenance
    summary: dict[str, Any] = {**counts, "provenance": read.provenance}
    if report.stopped_early:
        summary["stopped_early"] = report.stopped_early
    ledger.finish_run(run_id, summary)
    report.summary = summary
