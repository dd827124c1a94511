"""One way to read works from any configured source: a JSONL file, an id list, or an OpenAlex query.

Used by `dtkg works import/query` and by the `openalex_works` asset, so both record the same
works, the same input problems and the same query provenance.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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



@dataclass
class SourceBatch:
    """Everything one read of a source produced, ready to record in the ledger."""

    works: list[WorkRecord] = field(default_factory=list)
    problems: list[InputProblem] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)
    stopped_early: str | None = None  # why reading stopped before the end (what was read is kept)


def read_source(source: WorksSource, settings: Settings) -> SourceBatch:
    """Read a whole source before touching the ledger, so network time never holds the writer.

    A source that fails midway (OpenAlex unavailable) keeps what arrived; bad configuration raises
    `SourceError` before anything is read.
    """
    batch = SourceBatch()
    report = SourceReport()
    try:
        for item in iter_works(source, settings, report):
            if isinstance(item, InputProblem):
                batch.problems.append(item)
            else:
                batch.works.append(item)
    except DtkgError as exc:
        batch.stopped_early = str(exc)
    batch.provenance = report.provenance
    return batch


def record_source(ledger: Ledger, batch: SourceBatch, *, run_id: str, kind: str) -> dict[str, Any]:
    """Plan the works, keep the input problems, and record the read (query, cursors, fetch times) as
    a run so an analyst can reproduce it. Returns the summary numbers."""
    ledger.start_run(run_id, kind=kind, owner=ledger.owner)
    new_works, new_jobs = ledger.plan(batch.works)
    ledger.add_input_problems(batch.problems)
    summary: dict[str, Any] = {
        "works": len(batch.works),
        "new_works": new_works,
        "new_jobs": new_jobs,
        "problems": len(batch.problems),
        "provenance": batch.provenance,
    }
    if batch.stopped_early:
        summary["stopped_early"] = batch.stopped_early
    ledger.finish_run(run_id, summary)
    return summary
