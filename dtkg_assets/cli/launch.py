"""Running the Dagster definitions from the command line (`dtkg demo`, `dtkg backfill`).

Runs execute in this process on a persistent instance under $DTKG_HOME/dagster, so `dagster dev`
with the same DAGSTER_HOME shows them afterwards. Partitions are batched per run (range tags);
keys the ledger marks complete are skipped by the asset itself.
"""

import bisect
import contextlib
import functools
import itertools
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from dtkg_assets.core import deadline
from dtkg_assets.core.ledger import Ledger, LedgerUnavailable
from dtkg_assets.core.ledger.interface import Job
from dtkg_assets.core.ledger.queries import works_needing_work
from dtkg_assets.core.ledger.states import IN_FLIGHT, State
from dtkg_assets.core.settings import Settings
from dtkg_assets.core.sources import WorksSource
from dtkg_assets.defs.assets import openalex_works, restore_stacks
from dtkg_assets.defs.batching import partition_batches
from dtkg_assets.defs.instance import instance_yaml, normalize_environment, uses_postgres
from dtkg_assets.defs.jobs import artifact_checks_job, artifact_pdfs_job, openalex_works_job, reconcile_job
from dtkg_assets.defs.partitions import ARTIFACT_PARTITIONS_NAME, add_work_partitions
from dtkg_assets.defs.sensors import CHECKS_INLINE_TAG, RANGE_END, RANGE_START


def quiet_loggers() -> dict[str, Any]:
    """Run config for runs launched from the command line: console logs at DTKG_LOG_LEVEL (default
    WARNING; the UI keeps everything), since per-step DEBUG events would drown the progress display.
    Read at call time so a command can set its own default first."""
    level = os.environ.get("DTKG_LOG_LEVEL", "WARNING").upper()
    return {"loggers": {"console": {"config": {"log_level": level}}}}


def dagster_instance(settings: Settings) -> dg.DagsterInstance:
    """The persistent instance under $DTKG_HOME/dagster, with the project's dagster.yaml (or, when
    DAGSTER_PG_URL is set, dagster.postgres.yaml: see `defs.instance`)."""
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    text = instance_yaml(settings)
    normalize_environment()
    if not target.exists() or target.read_text() != text:
        target.write_text(text)
    os.environ["DAGSTER_HOME"] = str(home)
    instance = dg.DagsterInstance.get()
    if uses_postgres():
        # dagster-postgres opens (and PostgreSQL forks a backend for) a new connection per storage
        # call unless told it runs in a long-lived process, as the webserver tells it: this process
        # writes thousands of events (one worker spent a quarter of its wall time connecting).
        # Statements keep PostgreSQL's own timeout (0: the webserver's 15 s is for page loads).
        instance.optimize_for_webserver(statement_timeout=0, pool_recycle=3600, max_overflow=20)
    return instance


def _definitions(settings: Settings) -> dg.Definitions:
    return _definitions_for(str(settings.home))


@functools.lru_cache(maxsize=4)
def _definitions_for(home: str) -> dg.Definitions:
    from dtkg_assets.definitions import build_definitions

    return build_definitions(home)


def cli_tags(command: str, **extra: str) -> dict[str, str]:
    """Tags of runs the command line launches: which command, and that a user asked for it."""
    return {"dtkg/requested_by": "cli", "dtkg/command": command, **extra}


def ingest(
    instance: dg.DagsterInstance, settings: Settings, source: WorksSource, *, command: str = "demo"
) -> dict[str, Any]:
    """Materialize `openalex_works` from `source` (job openalex_works_job); returns its metadata values."""
    source.check()
    config = {k: v for k, v in vars(source).items() if v not in (None, False)}
    job = _definitions(settings).resolve_job_def(openalex_works_job.name)
    result = job.execute_in_process(
        instance=instance,
        run_config={"ops": {"openalex_works": {"config": config}}, **quiet_loggers()},
        tags=cli_tags(command),
    )
    events = result.asset_materializations_for_node("openalex_works")
    return {k: v.value for k, v in events[-1].metadata.items()} if events else {}


def record_import(instance: dg.DagsterInstance, command: str, what: str, summary: dict[str, Any]) -> None:
    """Works imported outside a run (`dtkg works import|query`, which register their partitions batch
    by batch) get one `openalex_works` materialization that says what was imported, so every import
    shows in Dagster."""
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            asset_key=openalex_works.key,
            description=f"{command} {what}",
            metadata={
                "works": int(summary.get("works", 0)),
                "new_works": int(summary.get("new_works", 0)),
                "new_jobs": int(summary.get("new_jobs", 0)),
                "input_problems": int(summary.get("problems", 0)),
                "source": what,
                "command": command,
            },
        )
    )


@dataclass
class BatchResult:
    start: str
    end: str
    run_id: str
    success: bool
    materialized: int
    # The ranges to check it in: its own, or for a backfill's last batch two halves, so that two
    # processes check it at once after the last download (`dtkg backfill`'s check worker and itself).
    check_ranges: tuple[tuple[str, str], ...] = ()


@dataclass
class BackfillReport:
    pending: int = 0
    batches: list[BatchResult] = field(default_factory=list)
    # Batches left to other workers on a shared ledger (every work finished or held by them).
    left_to_others: int = 0
    # The partition ranges the checks cover: the batches' ranges, joined where no other pending
    # work lies between them (one range unless other workers took batches in between).
    check_ranges: list[tuple[str, str]] = field(default_factory=list)

    @property
    def failed_runs(self) -> int:
        return sum(1 for b in self.batches if not b.success)


@dataclass
class CheckReport:
    """What check runs found: per check, whether every evaluation passed; how many works were
    evaluated; per question (file, pdf, paper), how many works failed it; check runs that failed."""

    passed: dict[str, bool] = field(default_factory=dict)
    evaluated: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    failed_runs: int = 0

    @property
    def ok(self) -> bool:
        return self.failed_runs == 0 and all(self.passed.values())

    def add(self, result: Any) -> None:
        if not result.success:
            self.failed_runs += 1
        for evaluation in result.get_asset_check_evaluations():
            name = evaluation.asset_check_key.name
            self.passed[name] = self.passed.get(name, True) and evaluation.passed
            self.evaluated += 1
            failed = evaluation.metadata.get("failed")
            for question in str(getattr(failed, "value", failed) or "").split(","):
                if question:
                    self.failures[question] = self.failures.get(question, 0) + 1

    def merge(self, other: "CheckReport") -> None:
        for name, ok in other.passed.items():
            self.passed[name] = self.passed.get(name, True) and ok
        self.evaluated += other.evaluated
        for question, n in other.failures.items():
            self.failures[question] = self.failures.get(question, 0) + n
        self.failed_runs += other.failed_runs

    def describe(self) -> str:
        """One line per check: "artifact_pdf_verified: passed (12 works)" or FAILED with the counts."""
        if not self.passed:
            return "no finished work to check" + (f"; {self.failed_runs} check runs failed" if self.failed_runs else "")
        problems = ", ".join(f"{q} {n}" for q, n in sorted(self.failures.items()) if n)
        runs = f"; {self.failed_runs} check runs failed" if self.failed_runs else ""
        return "; ".join(
            f"{name}: {'passed' if ok else 'FAILED'} ({self.evaluated} works"
            + (f"; failed: {problems}" if problems and not ok else "") + ")"
            for name, ok in sorted(self.passed.items())
        ) + runs

    def as_json(self) -> dict[str, Any]:
        return {name: ok and self.failed_runs == 0 for name, ok in self.passed.items()}


def pending_keys(settings: Settings, limit: int | None = None) -> list[str]:
    try:
        with Ledger.open_reader(settings) as led:
            return works_needing_work(led) if limit is None else works_needing_work(led, limit=limit)
    except LedgerUnavailable:
        return []


def read_partition_keys_behind(instance: dg.DagsterInstance) -> None:
    """List the partition keys on a helper thread while this one reads the ledger. The instance keeps
    the listing for the process (`defs.dynamic_partitions`): a later call waits for this one and then
    reads only the keys added since. At a million works the listing takes 0.65 s, and every process
    that runs or creates a ranged run needs it (Dagster resolves a range by listing every key)."""

    def read() -> None:
        with contextlib.suppress(Exception):  # the caller's own listing reports what went wrong
            instance.get_dynamic_partitions(ARTIFACT_PARTITIONS_NAME)

    threading.Thread(target=read, name="dtkg-partition-keys", daemon=True).start()


def run_batch_size(pending: int, cap: int) -> int:
    """Keys per run: as few runs as the cap allows, split evenly (2,001 keys at cap 1,000 make three
    runs of 667, not 1,000 + 1,000 + 1). Each run costs a fixed ~0.2-1 s (run storage, step start,
    ledger open and snapshot, the tail where a few slow downloads keep the other workers idle), while
    the per-key events cost the same whatever the split."""
    if pending <= 0:
        return max(1, cap)
    runs = -(-pending // max(1, cap))
    return -(-pending // runs)


def backfill(
    instance: dg.DagsterInstance,
    settings: Settings,
    *,
    limit: int | None = None,
    workers: int | None = None,
    keys: Sequence[str] | None = None,
    on_batch: Callable[[BatchResult, int], None] | None = None,
    command: str = "backfill",
) -> BackfillReport:
    """Materialize pending partitions of `artifact_pdfs` in batch runs (range tags, in-process)."""
    pending = list(keys) if keys is not None else pending_keys(settings)
    if limit is not None:
        pending = pending[:limit]
    report = BackfillReport(pending=len(pending))
    if not pending:
        return report
    # Works imported outside Dagster (e.g. `dtkg works import`) get their partitions here.
    add_work_partitions(instance, pending)
    ordered = instance.get_dynamic_partitions(ARTIFACT_PARTITIONS_NAME)
    run_config = {"ops": {"artifact_pdfs": {"config": {"workers": workers or settings.run.workers}}}, **quiet_loggers()}
    pending_set = set(pending)
    windows = list(partition_batches(ordered, pending_set, run_batch_size(len(pending), settings.run.batch_size)))
    job = _definitions(settings).resolve_job_def(artifact_pdfs_job.name)
    tags = cli_tags(command, **{CHECKS_INLINE_TAG: "inline"})
    with contextlib.ExitStack() as stack:
        batches: Iterable[tuple[str, str]] = windows
        fleet: _FleetBatches | None = None
        if settings.ledger_is_postgres:
            # Other `dtkg backfill` processes may share this ledger: each batch is chosen by what the
            # fleet has left of it when its run is created, and looked at again before it runs.
            me = f"{socket.gethostname()}:{os.getpid()}"
            tags[WORKER_TAG] = me
            reader = stack.enter_context(Ledger.open_reader(settings))
            batches = fleet = _FleetBatches(reader, ordered, pending_set, fleet_order(windows),
                                            others=functools.partial(other_workers_ranges, instance, me))
        # A fleet chooses each batch and creates its run one worker at a time, so that workers
        # starting together see each other's runs instead of taking the same batch.
        choosing = functools.partial(reader.exclusive, "batch-choice") if fleet is not None else None
        runner = _PipelinedRuns(instance, job, run_config, tags, choosing=choosing)
        stack.callback(runner.close)
        # Batches start and end at pending keys: their positions are all this needs.
        positions = key_positions(ordered, pending_set)
        for start, end, result in runner.run(batches, fleet.worth_running if fleet is not None else None):
            restore_stacks()
            last = fleet is None and (start, end) == windows[-1]
            batch = BatchResult(
                start=start,
                end=end,
                run_id=result.run_id,
                success=result.success,
                materialized=materialized_in_run(instance, result.run_id),
                check_ranges=halved(ordered, positions, start, end) if last else ((start, end),),
            )
            report.batches.append(batch)
            if on_batch is not None:
                on_batch(batch, sum(1 for k in ordered[positions[start] : positions[end] + 1] if k in pending_set))
            if deadline.stop_requested():
                break  # SIGINT/SIGTERM: the batch stopped its downloads; start no other
        report.left_to_others = runner.not_run + (fleet.left_to_others if fleet is not None else 0)
    report.check_ranges = joined_ranges([(b.start, b.end) for b in report.batches], ordered, pending_set,
                                        positions=positions)
    return report


def key_positions(ordered: Sequence[str], keys: Collection[str]) -> dict[str, int]:
    """The position in `ordered` of each of `keys` it holds, found in one pass without a dict of every
    key (at a million partitions such a dict took 0.25-0.5 s to build, for the 2,000 keys a backfill
    selects; this pass takes 20-40 ms)."""
    wanted = keys if isinstance(keys, set | frozenset) else set(keys)
    return {ordered[i]: i for i in itertools.compress(range(len(ordered)), map(wanted.__contains__, ordered))}


def halved(
    ordered: Sequence[str], positions: Mapping[str, int], start: str, end: str
) -> tuple[tuple[str, str], ...]:
    """`start`..`end` as two ranges holding half of its pending keys each (`positions`: the position
    in `ordered` of every pending key), or as itself when it holds fewer than two."""
    a, b = positions[start], positions[end]
    inside = sorted(i for i in positions.values() if a <= i <= b)
    if len(inside) < 2:
        return ((start, end),)
    second = inside[len(inside) // 2]
    return ((start, ordered[second - 1]), (ordered[second], end))


def joined_ranges(
    ranges: Sequence[tuple[str, str]], ordered: Sequence[str], pending: set[str],
    *, positions: Mapping[str, int] | None = None,
) -> list[tuple[str, str]]:
    """`ranges` (disjoint partition ranges) in partition order, joined where no key of `pending` lies
    between two of them: the keys between are not this backfill's, so a check run may span them.
    `positions`, when given, holds the position in `ordered` of every range end and pending key."""
    index = positions if positions is not None else key_positions(ordered, {k for r in ranges for k in r} | pending)
    spans = sorted((index[a], index[b]) for a, b in ranges)
    pending_at = sorted(index[k] for k in pending if k in index)
    joined: list[list[int]] = []
    for a, b in spans:
        if joined:
            gap_from, gap_to = joined[-1][1] + 1, a  # keys strictly between the two ranges
            lo = bisect.bisect_left(pending_at, gap_from)
            if lo >= len(pending_at) or pending_at[lo] >= gap_to:
                joined[-1][1] = max(joined[-1][1], b)
                continue
        joined.append([a, b])
    return [(ordered[a], ordered[b]) for a, b in joined]


class _PipelinedRuns:
    """Batch runs of `artifact_pdfs` executed in this process one after another, each created while
    the previous one runs.

    Creating a ranged run writes one "planned" event per partition (Dagster needs them to show a
    partition failed when its run fails), ~5-10 ms each on SQLite storage, before the step can start.
    `dg.materialize` creates and executes in one call, so that time never overlapped a download.
    Here run k+1 is created (its planned events written) on a helper thread while run k downloads;
    the windows are taken from `windows` one at a time, on that thread, just before their run is
    created (a fleet's batches are chosen then, inside `choosing`, so that the choice and the run
    that shows it to other workers are one step for the fleet). A created run that `worth_running`
    then declines, or that never executes (the backfill stopped), is reported canceled, never left
    pending; a canceled run marks no partition failed. Execution is what
    `JobDefinition.execute_in_process` does, with the run created beforehand.
    """

    def __init__(self, instance: dg.DagsterInstance, job_def: dg.JobDefinition,
                 run_config: Mapping[str, Any], tags: Mapping[str, str],
                 choosing: Callable[[], AbstractContextManager[None]] | None = None) -> None:
        from dagster._core.definitions.job_base import InMemoryJob
        from dagster._core.execution.api import create_execution_plan
        from dagster._core.execution.build_resources import wrap_resources_for_execution

        self.instance = instance
        self.run_config = run_config
        self.tags = dict(tags)
        self.job_def = job_def.as_ephemeral_job(
            resource_defs=wrap_resources_for_execution({}), input_values={}, op_selection=None, asset_selection=None
        )
        self.job = InMemoryJob(self.job_def)
        self.plan = create_execution_plan(
            self.job, run_config=run_config, instance_ref=instance.get_ref() if instance.is_persistent else None
        )
        self._choosing = choosing or contextlib.nullcontext
        self._creator = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dtkg-run-create")
        self._pending: list[Future[Any]] = []
        self.not_run = 0  # created runs `worth_running` declined

    def _create_next(self, windows: Iterator[tuple[str, str]]) -> tuple[str, str, Any] | None:
        with self._choosing():
            window = next(windows, None)
            if window is None:
                return None
            start, end = window
            tags = {RANGE_START: start, RANGE_END: end, **self.tags}
            dagster_run = self.instance.create_run_for_job(
                job_def=self.job_def, run_config=self.run_config, tags={**self.job_def.run_tags, **tags},
                execution_plan=self.plan,
            )
        return start, end, dagster_run

    def run(
        self, windows: Iterable[tuple[str, str]], worth_running: Callable[[str, str], bool] | None = None
    ) -> Iterator[tuple[str, str, Any]]:
        from dagster._core.execution.api import ExecuteRunWithPlanIterable, job_execution_iterator
        from dagster._core.execution.context_creation_job import (
            PlanOrchestrationContextManager,
            orchestration_context_event_generator,
        )
        from dagster._core.execution.execute_in_process_result import ExecuteInProcessResult

        source = iter(windows)
        self._pending.append(self._creator.submit(self._create_next, source))
        while self._pending:
            created = self._pending.pop(0).result()
            if created is None:
                return
            self._pending.append(self._creator.submit(self._create_next, source))
            start, end, dagster_run = created
            if worth_running is not None and not worth_running(start, end):
                self.not_run += 1
                self.instance.report_run_canceled(
                    dagster_run, message="not started: other workers finished or hold every work of this batch")
                continue
            output_capture: dict[Any, Any] = {}
            events = list(ExecuteRunWithPlanIterable(
                execution_plan=self.plan,
                iterator=job_execution_iterator,
                execution_context_manager=PlanOrchestrationContextManager(
                    context_event_generator=orchestration_context_event_generator,
                    job=self.job,
                    execution_plan=self.plan,
                    dagster_run=dagster_run,
                    instance=self.instance,
                    run_config=self.run_config,
                    executor_defs=None,
                    output_capture=output_capture,
                    raise_on_error=False,
                ),
            ))
            finished = self.instance.get_run_by_id(dagster_run.run_id) or dagster_run
            yield start, end, ExecuteInProcessResult(
                job_def=self.job_def, event_list=events, dagster_run=finished, output_capture=output_capture
            )

    def close(self) -> None:
        """Cancel runs created for batches that will not execute (the backfill stopped early)."""
        for future in self._pending:
            with contextlib.suppress(Exception):
                created = future.result()
                if created is not None:
                    self.instance.report_run_canceled(created[2], message="not started: the backfill stopped")
        self._pending.clear()
        self._creator.shutdown(wait=True)


def fleet_order(windows: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Several `dtkg backfill` processes on one PostgreSQL ledger share the pending works: each takes
    the batches in an order of its own (shuffled by host and pid), so they rarely reach for the same
    batch at once."""
    shuffled = list(windows)
    random.Random(f"{socket.gethostname()}:{os.getpid()}").shuffle(shuffled)
    return shuffled


WORKER_TAG = "dtkg/worker"  # host:pid of the `dtkg backfill` that created a batch run (shared ledger)
_LIVE_RUN = [dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTING,
             dg.DagsterRunStatus.STARTED]


def other_workers_ranges(instance: dg.DagsterInstance, me: str) -> list[tuple[str, str]]:
    """Partition ranges of the batch runs other `dtkg backfill` processes created on this (shared)
    Dagster instance and have not finished: created ahead of their turn, they hold no lease yet."""
    runs = instance.get_runs(filters=dg.RunsFilter(job_name=artifact_pdfs_job.name, statuses=_LIVE_RUN))
    return [(r.tags[RANGE_START], r.tags[RANGE_END]) for r in runs
            if r.tags.get(WORKER_TAG, me) != me and RANGE_START in r.tags and RANGE_END in r.tags]


class _FleetBatches:
    """The batches of one `dtkg backfill` on a ledger other backfills share, chosen one at a time.

    Each worker walks the batches in an order of its own (`fleet_order`). Just before a batch's run is
    created, its pending works are read from the ledger: works another worker finished (or failed)
    since this backfill started, or holds a live lease on, are theirs. A batch with nothing left is
    passed over without a run; a batch nobody has started (no such work, and no unfinished run of
    another worker covering it: `others`, from a shared Dagster instance) is taken, narrowed to its
    open works; a batch another worker is working through is put back, and taken (narrowed) only when
    no untouched batch is left, so that idle workers then help with what remains instead of waiting.
    Runs are created one batch ahead (`_PipelinedRuns`), so `worth_running` looks once more before a
    run starts. A batch costs one ledger query of at most a batch's works each time it is looked at.
    """

    LOOK_AHEAD = 32  # batches looked at per choice, at most

    def __init__(self, ledger: Ledger, ordered: Sequence[str], pending: set[str],
                 windows: Sequence[tuple[str, str]],
                 others: Callable[[], list[tuple[str, str]]] | None = None) -> None:
        self.ledger = ledger
        self.ordered = ordered
        # Positions of the keys a batch can start or end at (one pass; not a dict of every key, which
        # at a million partitions held a million decoded keys); other workers' range ends are looked up.
        self.index = key_positions(ordered, pending | {key for window in windows for key in window})
        self.pending = pending
        self.remaining = list(windows)
        self.others = others
        self.started = time.time()
        self.left_to_others = 0  # batches passed over: nothing left of them for this worker

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return self

    def __next__(self) -> tuple[str, str]:
        busy: list[tuple[int, int, list[str]]] = []  # (open works, position, open keys) of started batches
        claimed = [(first, last) for a, b in (self.others() if self.others else [])
                   if (first := self._position(a)) is not None and (last := self._position(b)) is not None]
        position = 0
        while position < len(self.remaining) and position < self.LOOK_AHEAD:
            start, end = self.remaining[position]
            open_keys, touched = self._look(start, end)
            if not touched:
                first, last = self.index[start], self.index[end]
                touched = any(a <= last and first <= b for a, b in claimed)
            if not open_keys:
                self.remaining.pop(position)
                self.left_to_others += 1
                continue
            if not touched:
                self.remaining.pop(position)
                return open_keys[0], open_keys[-1]
            busy.append((len(open_keys), position, open_keys))
            position += 1
        if not busy:
            raise StopIteration
        _, position, open_keys = max(busy, key=lambda b: (b[0], -b[1]))
        self.remaining.pop(position)
        return open_keys[0], open_keys[-1]

    def _position(self, key: str) -> int | None:
        if key not in self.index:
            try:
                self.index[key] = self.ordered.index(key)
            except ValueError:
                return None
        return self.index[key]

    def worth_running(self, start: str, end: str) -> bool:
        """False when every work of the batch is finished or held by another worker by now."""
        return bool(self._look(start, end)[0])

    def _look(self, start: str, end: str) -> tuple[list[str], bool]:
        """The batch's pending works still open (in partition order) and whether any of its pending
        works was finished, failed or leased by another worker since this backfill started."""
        keys = [k for k in self.ordered[self.index[start] : self.index[end] + 1] if k in self.pending]
        jobs = self.ledger.jobs_for_works(keys)
        now = time.time()
        open_keys = [k for k in keys if self._is_open(jobs.get(k, []), now)]
        return open_keys, len(open_keys) < len(keys)

    def _is_open(self, jobs: Sequence[Job], now: float) -> bool:
        if not jobs:
            return True  # the run reports it (no candidates)
        if any(j.complete for j in jobs):
            return False
        if any(j.state in IN_FLIGHT and (j.lease_expires_at or 0) > now for j in jobs):
            return False  # another worker holds it (this worker holds nothing outside its running batch)
        # Failed by the fleet since this backfill started (no candidate planned or in flight): theirs.
        settled = all(j.state != State.PLANNED and j.state not in IN_FLIGHT for j in jobs)
        return not (settled and max((j.updated_at or 0) for j in jobs) >= self.started)


def materialized_in_run(instance: dg.DagsterInstance, run_id: str) -> int:
    """Partitions a run materialized, read from the instance (a failed step's result object does not
    carry the events its body logged)."""
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    return len(records)


def run_reconcile(instance: dg.DagsterInstance, settings: Settings, *, command: str = "reconcile") -> dict[str, int]:
    job = _definitions(settings).resolve_job_def(reconcile_job.name)
    result = job.execute_in_process(instance=instance, run_config=quiet_loggers(), tags=cli_tags(command))
    counts: dict[str, int] = result.output_for_node("reconcile_ledger")
    return counts


def run_checks(
    instance: dg.DagsterInstance, settings: Settings, report: BackfillReport | None = None, *,
    command: str = "backfill", ranges: Sequence[tuple[str, str]] | None = None,
) -> CheckReport:
    """Per-partition checks over `ranges`, else over the partitions the backfill's runs covered (all
    partitions without a report). On a shared ledger a backfill's batches may lie between other
    workers' batches: one check run per stretch of its own (`BackfillReport.check_ranges`), so no
    worker checks the whole fleet's works again."""
    checked = CheckReport()
    if ranges is None:
        ordered = instance.get_dynamic_partitions(ARTIFACT_PARTITIONS_NAME)
        if not ordered:
            return checked
        if report is not None and report.batches:
            ranges = report.check_ranges or joined_ranges([(b.start, b.end) for b in report.batches], ordered, set())
        else:
            ranges = [(ordered[0], ordered[-1])]
    job = checks_job(settings)
    for start, end in ranges:
        checked.add(run_check_range(instance, job, start, end, command))
    return checked


def checks_job(settings: Settings) -> dg.JobDefinition:
    return _definitions(settings).resolve_job_def(artifact_checks_job.name)


def run_check_range(
    instance: dg.DagsterInstance, job: dg.JobDefinition, start: str, end: str, command: str
) -> dg.ExecuteInProcessResult:
    """One check run over the partitions `start`..`end` (here, or in `dtkg backfill`'s check worker)."""
    return job.execute_in_process(
        instance=instance,
        run_config=quiet_loggers(),
        tags={RANGE_START: start, RANGE_END: end, **cli_tags(command)},
        raise_on_error=False,
    )
