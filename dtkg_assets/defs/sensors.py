"""Sensors: register new works as partitions, reconcile and redo, release leases of failed runs.

Sensors only read the ledger snapshot and request runs; every ledger write happens inside a run in
the ledger pool, so a sensor tick can never break a download run.
"""

import time

import dagster as dg

from dtkg_assets.core.ledger import LedgerUnavailable
from dtkg_assets.core.ledger.queries import works_needing_work, works_seen_since
from dtkg_assets.defs.batching import partition_batches
from dtkg_assets.defs.jobs import artifact_pdfs_job, reconcile_job, release_leases_job
from dtkg_assets.defs.partitions import ARTIFACT_PARTITIONS_NAME, artifact_partitions
from dtkg_assets.defs.resources import LedgerResource

PARTITION_BATCH = 10_000
RECONCILE_INTERVAL_S = 300
RECONCILE_IDLE_EVERY_S = 3600
MAINTENANCE_JOB_NAMES = {reconcile_job.name, release_leases_job.name}
ACTIVE_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


@dg.sensor(minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def work_partitions_sensor(
    context: dg.SensorEvaluationContext, ledger: LedgerResource
) -> dg.SensorResult | dg.SkipReason:
    """Works in the ledger without a partition get one (cursor: first-seen time, batched)."""
    after = float(context.cursor or 0)
    try:
        with ledger.reader() as led:
            seen = works_seen_since(led, after, PARTITION_BATCH)
    except LedgerUnavailable as exc:
        return dg.SkipReason(str(exc))
    if not seen:
        return dg.SkipReason("no new works in the ledger")
    existing = set(context.instance.get_dynamic_partitions(ARTIFACT_PARTITIONS_NAME))
    new = [work_id for work_id, _ in seen if work_id not in existing]
    cursor = str(seen[-1][1])
    if not new:
        return dg.SensorResult(cursor=cursor)
    return dg.SensorResult(
        dynamic_partitions_requests=[artifact_partitions.build_add_request(new)],
        cursor=cursor,
    )


@dg.sensor(
    minimum_interval_seconds=RECONCILE_INTERVAL_S,
    jobs=[reconcile_job, artifact_pdfs_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def reconcile_sensor(
    context: dg.SensorEvaluationContext, ledger: LedgerResource
) -> list[dg.RunRequest] | dg.SkipReason | dg.SensorResult:
    """Request a reconcile run, then batch runs for the partitions that need redoing.

    Reconciles when the snapshot shows work to redo, and at least hourly otherwise (files can go
    missing without the ledger knowing); the cursor keeps the time of the last reconcile request.
    """
    active = context.instance.get_run_records(dg.RunsFilter(statuses=ACTIVE_STATUSES), limit=1)
    if active:
        return dg.SkipReason("runs are queued or in progress; reconciling after they finish")
    try:
        with ledger.reader() as led:
            pending = works_needing_work(led)
    except LedgerUnavailable:
        pending = []
    now = time.time()
    last = float(context.cursor or 0)
    if not pending and now - last < RECONCILE_IDLE_EVERY_S:
        return dg.SkipReason("nothing to redo; next idle reconcile within the hour")
    requests = [dg.RunRequest(job_name=reconcile_job.name, run_key=f"reconcile:{int(now)}")]
    keys = context.instance.get_dynamic_partitions(ARTIFACT_PARTITIONS_NAME)
    for start, end in partition_batches(keys, set(pending), ledger.settings.load().run.batch_size):
        requests.append(
            dg.RunRequest(
                job_name=artifact_pdfs_job.name,
                tags={
                    "dagster/asset_partition_range_start": start,
                    "dagster/asset_partition_range_end": end,
                    "dtkg/requested_by": "reconcile_sensor",
                },
            )
        )
    return dg.SensorResult(run_requests=requests, cursor=str(now))


def _release_request(run: dg.DagsterRun) -> dg.RunRequest | dg.SkipReason:
    if run.job_name in MAINTENANCE_JOB_NAMES:
        return dg.SkipReason(f"{run.job_name} holds no leases")
    return dg.RunRequest(
        run_key=f"release:{run.run_id}",
        run_config={"ops": {"release_run_leases": {"config": {"run_id": run.run_id}}}},
    )


@dg.run_failure_sensor(request_job=release_leases_job, default_status=dg.DefaultSensorStatus.RUNNING)
def release_leases_on_failure(context: dg.RunFailureSensorContext) -> dg.RunRequest | dg.SkipReason:
    return _release_request(context.dagster_run)


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.CANCELED,
    request_job=release_leases_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def release_leases_on_cancel(context: dg.RunStatusSensorContext) -> dg.RunRequest | dg.SkipReason:
    return _release_request(context.dagster_run)


SENSORS = (work_partitions_sensor, reconcile_sensor, release_leases_on_failure, release_leases_on_cancel)
