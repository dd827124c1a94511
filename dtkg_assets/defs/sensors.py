"""Sensors: register new works as partitions, reconcile and redo what broke, check what download
runs finished, release leases of runs that died.

Sensors only read the ledger snapshot and request runs; every ledger write happens inside a run in
the ledger pool, so a sensor tick can never break a download run. Automation never races the user:
no sensor requests a run over partitions that a queued or running run, or a requested backfill,
targets; never-attempted works are the user's to download (a backfill, or opt-in declarative
automation); permanent failures are retried only when a user asks. Every tick says what it did.
"""

import os
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import dagster as dg
from dagster._core.execution.backfill import BulkActionsFilter, BulkActionStatus

from dtkg_assets.core.ledger import LedgerUnavailable
from dtkg_assets.core.ledger.queries import automation_view, finished_files, works_seen_since
from dtkg_assets.core.settings import RunSettings, Settings
from dtkg_assets.core.store import Store
from dtkg_assets.core.verify import file_problem
from dtkg_assets.defs.assets import OUTCOME_TAG
from dtkg_assets.defs.batching import partition_batches
from dtkg_assets.defs.jobs import artifact_checks_job, artifact_pdfs_job, reconcile_job, release_leases_job
from dtkg_assets.defs.partitions import ARTIFACT_PARTITIONS_NAME, artifact_partitions
from dtkg_assets.defs.resources import LedgerResource

PARTITION_BATCH = 10_000
RECONCILE_IDLE_EVERY_S = 3600
CHECKS_INTERVAL_S = 15
MAINTENANCE_JOB_NAMES = {reconcile_job.name, release_leases_job.name, artifact_checks_job.name}
ARTIFACT_KEY = dg.AssetKey("artifact_pdfs")
RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
PARTITION = "dagster/partition"
# Runs `dtkg backfill` launched run their checks themselves.
CHECKS_INLINE_TAG = "dtkg/checks"
ACTIVE_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


@dg.sensor(minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def work_partitions_sensor(context: dg.SensorEvaluationContext, ledger: LedgerResource) -> dg.SensorResult:
    """Works in the ledger without a partition get one (cursor: first-seen time, batched)."""
    after = float(context.cursor or 0)
    try:
        with ledger.reader() as led:
            seen = works_seen_since(led, after, PARTITION_BATCH)
    except LedgerUnavailable as exc:
        return dg.SensorResult(skip_reason=f"ledger not readable yet: {exc}")
    if not seen:
        return dg.SensorResult(skip_reason="no works imported since the last tick")
    # Asked of the storage for these works only (a million partition keys are not listed for it).
    existing = context.instance.get_existing_dynamic_partitions(ARTIFACT_PARTITIONS_NAME, [w for w, _ in seen])
    new = [work_id for work_id, _ in seen if work_id not in existing]
    cursor = str(seen[-1][1])
    if not new:
        return dg.SensorResult(
            skip_reason=f"{_plural(len(seen), 'work')} imported since the last tick already have partitions",
            cursor=cursor,
        )
    return dg.SensorResult(
        dynamic_partitions_requests=[artifact_partitions.build_add_request(new)],
        cursor=cursor,
        skip_reason=f"added {_plural(len(new), 'partition')} for newly imported works (downloading them is "
        "your choice: launch a backfill)",
    )


def _range_keys(ordered: Sequence[str], start: str, end: str) -> Sequence[str]:
    try:
        return ordered[ordered.index(start) : ordered.index(end) + 1]
    except ValueError:
        return []


def targeted_partitions(instance: dg.DagsterInstance, ordered: Sequence[str]) -> set[str]:
    """Partitions of artifact_pdfs that a queued or running run, or a requested backfill, targets."""
    busy: set[str] = set()
    for record in instance.get_run_records(dg.RunsFilter(statuses=ACTIVE_STATUSES)):
        tags = record.dagster_run.tags
        if record.dagster_run.job_name in MAINTENANCE_JOB_NAMES:
            continue
        if PARTITION in tags:
            busy.add(tags[PARTITION])
        elif RANGE_START in tags and RANGE_END in tags:
            busy.update(_range_keys(ordered, tags[RANGE_START], tags[RANGE_END]))
    backfills = instance.get_backfills(
        filters=BulkActionsFilter(statuses=[BulkActionStatus.REQUESTED, BulkActionStatus.CANCELING])
    )
    for backfill in backfills:
        data = backfill.asset_backfill_data
        if data is not None:
            subset = data.target_subset.partitions_subsets_by_asset_key.get(ARTIFACT_KEY)
            if subset is not None:
                busy.update(subset.get_partition_keys())
        elif backfill.partition_names:
            busy.update(backfill.partition_names)
    return busy


def _missing_files(settings: Settings, rows: Iterable[tuple[str, str, int]]) -> list[str]:
    """Finished works whose file is gone or has the wrong size (a stat each; hashing is the
    reconcile run's job)."""
    store = Store(settings)
    return [work_id for work_id, sha, size in rows if file_problem(store.work_path(work_id), sha, size, "size")]


def redo_what_broke(context: dg.SensorEvaluationContext, ledger: LedgerResource) -> dg.SensorResult:
    settings = ledger.settings.load()
    try:
        with ledger.reader() as led:
            classes = automation_view(led)
            finished = finished_files(led)
    except LedgerUnavailable as exc:
        return dg.SensorResult(skip_reason=f"ledger not readable yet: {exc}")
    missing = _missing_files(settings, finished)
    redo = {work_id for work_id, klass in classes.items() if klass == "redo"} | set(missing)
    ordered = context.instance.get_dynamic_partitions(ARTIFACT_PARTITIONS_NAME)
    busy = targeted_partitions(context.instance, ordered)
    # Windows may cover complete works (re-verified), never anything else automation must not touch
    # (new, held or failed works, partitions without a work in the snapshot, targeted partitions).
    barrier = {key for key in ordered if classes.get(key) not in ("complete", "redo")} | busy
    requests: list[dg.RunRequest] = []
    now = time.time()
    last = float(context.cursor or 0)
    reconcile_due = now - last >= RECONCILE_IDLE_EVERY_S
    if reconcile_due:
        requests.append(dg.RunRequest(job_name=reconcile_job.name, run_key=f"reconcile:{int(now)}"))
    windows = list(partition_batches(ordered, redo - busy, settings.run.batch_size, barrier))
    for start, end in windows:
        requests.append(
            dg.RunRequest(
                job_name=artifact_pdfs_job.name,
                tags={RANGE_START: start, RANGE_END: end, "dtkg/requested_by": "reconcile_sensor"},
            )
        )
    held = len(redo & busy)
    words = [
        f"{_plural(len(missing), 'finished work')} with a missing or wrong-size file",
        f"{_plural(len(redo) - len(missing), 'work')} to redo (expired lease, transient failure past backoff, "
        "reopened)",
        f"{_plural(len(windows), 'download run')} requested",
    ]
    if held:
        words.append(f"{held} left to the run or backfill that already targets them")
    if reconcile_due:
        words.append("hourly reconcile run requested")
    new = sum(1 for k in classes.values() if k == "new")
    if new:
        words.append(f"{_plural(new, 'never-attempted work')} left for you to backfill")
    message = "; ".join(words)
    cursor = str(now) if reconcile_due else context.cursor
    if not requests:
        return dg.SensorResult(skip_reason=f"nothing to redo: {message}", cursor=cursor)
    context.log.info(message)
    return dg.SensorResult(run_requests=requests, cursor=cursor)


def reconcile_sensor_every(interval_s: int) -> dg.SensorDefinition:
    """The reconcile sensor, ticking at most every `interval_s` seconds: DTKG_RUN_RECONCILE_INTERVAL_S is
    part of the definition, so `definitions.build_definitions` applies it (`configured_sensors`)."""
    return dg.sensor(
        name="reconcile_sensor",
        minimum_interval_seconds=interval_s,
        jobs=[reconcile_job, artifact_pdfs_job],
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Redo what broke: expired leases, transient failures past their backoff, missing or wrong-size "
        "files (every tick), corruption and orphans (an hourly reconcile run). Never downloads works nobody asked "
        "for, never retries permanent failures, never touches partitions a run or backfill targets.",
    )(redo_what_broke)


# At the default interval; `configured_sensors` swaps in the configured one.
reconcile_sensor = reconcile_sensor_every(RunSettings().reconcile_interval_s)


def _is_download_run(run: dg.DagsterRun) -> bool:
    """A run that materializes artifact_pdfs partitions (its job, or a backfill's asset run)."""
    if run.job_name in MAINTENANCE_JOB_NAMES:
        return False
    if run.job_name == artifact_pdfs_job.name:
        return True
    selection = run.asset_selection
    return selection is not None and ARTIFACT_KEY in selection


@dg.sensor(
    minimum_interval_seconds=int(os.environ.get("DTKG_CHECKS_INTERVAL_S", CHECKS_INTERVAL_S)),
    jobs=[artifact_checks_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="After each download run ends, request a check run over its partitions (per-partition "
    "asset checks, off the download path).",
)
def artifact_checks_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    after = float(context.cursor) if context.cursor else time.time() - 3600
    records = context.instance.get_run_records(
        dg.RunsFilter(
            statuses=[dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE],
            updated_after=datetime.fromtimestamp(after, tz=UTC),
        ),
        limit=500,
        order_by="update_timestamp",
        ascending=True,
    )
    ended = [r for r in records if r.update_timestamp.timestamp() > after]
    if not ended:
        return dg.SensorResult(skip_reason="no download run ended since the last tick", cursor=str(after))
    requests = []
    for record in sorted(ended, key=lambda r: r.update_timestamp):
        run = record.dagster_run
        tags = run.tags
        if not _is_download_run(run) or tags.get(CHECKS_INLINE_TAG) == "inline":
            continue
        if PARTITION in tags:
            part_tags = {PARTITION: tags[PARTITION]}
        elif RANGE_START in tags and RANGE_END in tags:
            part_tags = {RANGE_START: tags[RANGE_START], RANGE_END: tags[RANGE_END]}
        else:
            continue
        requests.append(
            dg.RunRequest(
                job_name=artifact_checks_job.name,
                run_key=f"checks:{run.run_id}",
                tags={**part_tags, "dtkg/checked_run": run.run_id},
            )
        )
    cursor = str(max(r.update_timestamp.timestamp() for r in ended))
    if not requests:
        return dg.SensorResult(
            skip_reason=f"{_plural(len(ended), 'run')} ended, none of them a download run to check", cursor=cursor
        )
    context.log.info(f"check runs requested for {_plural(len(requests), 'download run')}")
    return dg.SensorResult(run_requests=requests, cursor=cursor)


def _release_request(run: dg.DagsterRun) -> dg.RunRequest | dg.SkipReason:
    if run.job_name in MAINTENANCE_JOB_NAMES or not _is_download_run(run):
        return dg.SkipReason(f"run {run.run_id[:8]} ({run.job_name}) holds no leases")
    if OUTCOME_TAG in run.tags:
        return dg.SkipReason(
            f"run {run.run_id[:8]} ended normally ({run.tags.get(OUTCOME_TAG)}): it left no leases behind"
        )
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


SENSORS = (
    work_partitions_sensor,
    reconcile_sensor,
    artifact_checks_sensor,
    release_leases_on_failure,
    release_leases_on_cancel,
)


def configured_sensors(run: RunSettings) -> list[dg.SensorDefinition]:
    """SENSORS, with the reconcile sensor at the configured interval."""
    return [reconcile_sensor_every(run.reconcile_interval_s) if s is reconcile_sensor else s for s in SENSORS]
