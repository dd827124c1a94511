"""Running the Dagster definitions from the command line (`dtkg demo`, `dtkg backfill`).

Runs execute in this process on a persistent instance under $DTKG_HOME/dagster, so `dagster dev`
with the same DAGSTER_HOME shows them afterwards. Partitions are batched per run (range tags);
keys the ledger marks complete are skipped by the asset itself.
"""

import os
from collections.abc import Callable, Sequence
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
    for start, end in partition_batches(ordered, pending_set, run_batch_size(len(pending), settings.run.batch_size)):
        result = dg.materialize(
            [artifact_pdfs],
            instance=instance,
            resources=resources,
            run_config=run_config,
            tags={"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end},
            raise_on_error=False,
        )
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
    return report


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
