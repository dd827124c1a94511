"""Running the Dagster definitions from the command line (`dtkg demo`, `dtkg backfill`).

Runs execute in this process on a persistent instance under $DTKG_HOME/dagster, so `dagster dev`
with the same DAGSTER_HOME shows them afterwards. Partitions are batched per run (range tags);
keys the ledger marks complete are skipped by the asset itself.
"""

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from dtkg_assets.core.ledger import Ledger, LedgerUnavailable
from dtkg_assets.core.ledger.queries import works_needing_work
from dtkg_assets.core.sources import WorksSource
from dtkg_assets.defs.assets import artifact_pdfs, openalex_works
from dtkg_assets.defs.batching import partition_batches
from dtkg_assets.defs.instance import instance_yaml, normalize_environment
from dtkg_assets.defs.jobs import artifact_checks_job, reconcile_job
from dtkg_assets.defs.partitions import ARTIFACT_PARTITIONS_NAME
from dtkg_assets.defs.resources import default_resources
from dtkg_assets.settings import Settings


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
    return dg.DagsterInstance.get()


def ingest(instance: dg.DagsterInstance, settings: Settings, source: WorksSource) -> dict[str, Any]:
    """Materialize `openalex_works` from `source`; returns the asset's metadata values."""
    source.check()
    config = {k: v for k, v in vars(source).items() if v not in (None, False)}
    result = dg.materialize(
        [openalex_works],
        instance=instance,
        resources=default_resources(str(settings.home)),
        run_config={"ops": {"openalex_works": {"config": config}}, **quiet_loggers()},
    )
    events = result.asset_materializations_for_node("openalex_works")
    return {k: v.value for k, v in events[-1].metadata.items()} if events else {}


@dataclass
class BatchResult:
    start: str
    end: str
    run_id: str
    success: bool
    materialized: int


@dataclass
class BackfillReport:
    pending: int = 0
    batches: list[BatchResult] = field(default_factory=list)

    @property
    def failed_runs(self) -> int:
        return sum(1 for b in self.batches if not b.success)


def pending_keys(settings: Settings) -> list[str]:
    try:
        with Ledger.open_reader(settings) as led:
            return works_needing_work(led)
    except LedgerUnavailable:
        return []


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
) -> BackfillReport:
    """Materialize pending partitions of `artifact_pdfs` in batch runs (range tags, in-process)."""
    pending = list(keys) if keys is not None else pending_keys(settings)
    if limit is not None:
        pending = pending[:limit]
    report = BackfillReport(pending=len(pending))
    if not pending:
        return report
    # Works imported outside Dagster (e.g. `dtkg works import`) get their partitions here.
    instance.add_dynamic_partitions(ARTIFACT_PARTITIONS_NAME, pending)
    ordered = instance.get_dynamic_partitions(ARTIFACT_PARTITIONS_NAME)
    resources = default_resources(str(settings.home))
    run_config = {"ops": {"artifact_pdfs": {"config": {"workers": workers or settings.run.workers}}}, **quiet_loggers()}
    pending_set = set(pending)
    windows = list(partition_batches(ordered, pending_set, run_batch_size(len(pending), settings.run.batch_size)))
    runner = _PipelinedRuns(instance, resources, run_config)
    try:
        for start, end, result in runner.run(windows):
            batch = BatchResult(
                start=start,
                end=end,
                run_id=result.run_id,
                success=result.success,
                materialized=len(result.asset_materializations_for_node("artifact_pdfs")),
            )
            report.batches.append(batch)
            if on_batch is not None:
                index = ordered.index(end)
                on_batch(batch, sum(1 for k in ordered[ordered.index(start) : index + 1] if k in pending_set))
    finally:
        runner.close()
    return report


class _PipelinedRuns:
    """Batch runs of `artifact_pdfs` executed in this process one after another, each created while
    the previous one runs.

    Creating a ranged run writes one "planned" event per partition (Dagster needs them to show a
    partition failed when its run fails), ~5-10 ms each on SQLite storage, before the step can start.
    `dg.materialize` creates and executes in one call, so that time never overlapped a download.
    Here run k+1 is created (its planned events written) on a helper thread while run k downloads;
    a run created but never executed (the backfill stopped) is reported canceled, never left pending.
    Execution is what `JobDefinition.execute_in_process` does, with the run created beforehand.
    """

    def __init__(self, instance: dg.DagsterInstance, resources: Mapping[str, Any],
                 run_config: Mapping[str, Any]) -> None:
        from dagster._core.definitions.job_base import InMemoryJob
        from dagster._core.execution.api import create_execution_plan
        from dagster._core.execution.build_resources import wrap_resources_for_execution

        self.instance = instance
        self.run_config = run_config
        job_def = dg.Definitions(
            jobs=[dg.define_asset_job(name="__ASSET_JOB", selection=[artifact_pdfs])],
            assets=[artifact_pdfs],
            resources=resources,
        ).resolve_job_def("__ASSET_JOB")
        self.job_def = job_def.as_ephemeral_job(
            resource_defs=wrap_resources_for_execution({}), input_values={}, op_selection=None, asset_selection=None
        )
        self.job = InMemoryJob(self.job_def)
        self.plan = create_execution_plan(
            self.job, run_config=run_config, instance_ref=instance.get_ref() if instance.is_persistent else None
        )
        self._creator = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dtkg-run-create")
        self._pending: list[Future[Any]] = []

    def _create(self, start: str, end: str) -> Any:
        tags = {"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end}
        return self.instance.create_run_for_job(
            job_def=self.job_def, run_config=self.run_config, tags={**self.job_def.run_tags, **tags},
            execution_plan=self.plan,
        )

    def run(self, windows: Sequence[tuple[str, str]]) -> Iterator[tuple[str, str, Any]]:
        from dagster._core.execution.api import ExecuteRunWithPlanIterable, job_execution_iterator
        from dagster._core.execution.context_creation_job import (
            PlanOrchestrationContextManager,
            orchestration_context_event_generator,
        )
        from dagster._core.execution.execute_in_process_result import ExecuteInProcessResult

        if not windows:
            return
        self._pending.append(self._creator.submit(self._create, *windows[0]))
        for i, (start, end) in enumerate(windows):
            dagster_run = self._pending.pop(0).result()
            if i + 1 < len(windows):
                self._pending.append(self._creator.submit(self._create, *windows[i + 1]))
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
                dagster_run = future.result()
                self.instance.report_run_canceled(dagster_run, message="not started: the backfill stopped")
        self._pending.clear()
        self._creator.shutdown(wait=True)


def run_reconcile(instance: dg.DagsterInstance, settings: Settings) -> dict[str, int]:
    result = reconcile_job.execute_in_process(
        instance=instance, resources=default_resources(str(settings.home)), run_config=quiet_loggers()
    )
    counts: dict[str, int] = result.output_for_node("reconcile_ledger")
    return counts


def run_checks(instance: dg.DagsterInstance, settings: Settings) -> dict[str, bool]:
    """Run the asset checks on every finished artifact; returns check name -> passed."""
    from dtkg_assets.definitions import build_definitions

    job = build_definitions(str(settings.home)).resolve_job_def(artifact_checks_job.name)
    result = job.execute_in_process(instance=instance, run_config=quiet_loggers(), raise_on_error=False)
    return {e.asset_check_key.name: e.passed for e in result.get_asset_check_evaluations()}
