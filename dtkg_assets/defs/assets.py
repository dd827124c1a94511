"""Assets: `openalex_works` ingests works and registers partitions; `artifact_pdfs` downloads them.

Both only call the core (sources, ledger, orchestrator); the download logic lives there.
"""

import contextlib
import dataclasses
import sys
import threading
import typing
from collections.abc import Iterator, Mapping
from typing import Any, Optional

import dagster as dg
import pydantic

from dtkg_assets.core.advice import advice
from dtkg_assets.core.orchestrator import WorkOutcome, make_orchestrator
from dtkg_assets.core.settings import RunSettings
from dtkg_assets.core.sources import WorksSource, import_works
from dtkg_assets.core.verify import prepare_request
from dtkg_assets.defs.event_writer import BackgroundEvents, step_event_logger
from dtkg_assets.defs.partitions import LEDGER_POOL, add_work_partitions, artifact_partitions
from dtkg_assets.defs.resources import HttpClientResource, LedgerResource, SettingsResource, StoreResource


def backfill_policy(run: RunSettings) -> dg.BackfillPolicy:
    """Batch runs of `run.batch_size` partitions (DTKG_RUN_BATCH_SIZE): a run per partition costs seconds."""
    return dg.BackfillPolicy.multi_run(max_partitions_per_run=run.batch_size)


def automation_condition(run: RunSettings) -> dg.AutomationCondition | None:
    """Opt-in (DTKG_RUN_AUTO_DOWNLOAD=1): newly registered works are downloaded by Dagster's declarative
    automation (the default automation sensor); off, downloading new works is the user's backfill.
    `on_missing` alone would also request partitions a backfill or run already targets: never race them."""
    if not run.auto_download:
        return None
    return (dg.AutomationCondition.on_missing() & ~dg.AutomationCondition.in_progress()).with_label(
        "new works, not targeted by a run or backfill"
    )


def configured_artifact_pdfs(run: RunSettings) -> dg.AssetsDefinition:
    """`artifact_pdfs` with the deployment's batch size and automation opt-in: both are part of the
    definition, so `definitions.build_definitions` applies them from the settings it reads once."""
    return artifact_pdfs.with_attributes(
        backfill_policy=backfill_policy(run), automation_condition=automation_condition(run)
    )


def config_of(fields_of: type, base: type[dg.Config]) -> type[dg.Config]:
    """A Dagster config class with the fields of a core dataclass, so the two cannot drift: the core
    type is the one definition, the Launchpad shows its fields. `X | None` becomes `Optional[X]`
    (Dagster config fields need `Optional[...]`)."""
    hints = typing.get_type_hints(fields_of)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(fields_of):
        annotation = hints[f.name]
        args = typing.get_args(annotation)
        if type(None) in args and len(args) == 2:
            annotation = Optional[next(a for a in args if a is not type(None))]  # noqa: UP045
        fields[f.name] = (annotation, f.default)
    model: type[dg.Config] = pydantic.create_model(
        base.__name__.removesuffix("Base"), __base__=base, __module__=__name__, **fields
    )
    return model


class WorksSourceConfigBase(dg.Config):
    """Where works come from: exactly one of a JSONL file, an id/DOI list, or an OpenAlex query
    (the fields are `core.sources.WorksSource`'s)."""

    def to_source(self) -> WorksSource:
        return WorksSource(**self.model_dump())


WorksSourceConfig = config_of(WorksSource, WorksSourceConfigBase)


@dg.asset(pool=LEDGER_POOL, description="Works from the configured source, recorded in the ledger.")
def openalex_works(
    context: dg.AssetExecutionContext,
    config: WorksSourceConfig,  # type: ignore[valid-type]  # a class built from WorksSource above
    ledger: LedgerResource,
) -> dg.MaterializeResult:
    owner = f"run:{context.run.run_id}"
    with import_works(config.to_source(),  # type: ignore[attr-defined]
                      ledger.settings.load(), lambda: ledger.writer(owner=owner),
                      run_id=context.run.run_id) as batch:
        add_work_partitions(context.instance, batch.work_ids())
    summary = batch.summary
    for problem in batch.problems[:50]:
        context.log.warning(f"{problem.origin}:{problem.line or '-'} {problem.reason}: {problem.detail}")
    if batch.stopped_early:
        context.log.warning(f"the source stopped early ({batch.stopped_early}); the works read so far are kept")
    return dg.MaterializeResult(
        metadata={
            "works": summary["works"],
            "new_works": summary["new_works"],
            "new_jobs": summary["new_jobs"],
            "input_problems": summary["problems"],
            "provenance": dg.MetadataValue.json(batch.provenance or {}),
        }
    )


class ArtifactPdfsConfig(dg.Config):
    """Download threads inside the step (default: DTKG_RUN_WORKERS, else 8)."""

    workers: int = 0


def outcome_metadata(outcome: WorkOutcome) -> dict[str, Any]:
    result = outcome.result
    meta: dict[str, Any] = {
        "status": outcome.status,
        "sha256": outcome.sha256 or "",
        "bytes": outcome.bytes or 0,
        "path": dg.MetadataValue.path(outcome.path) if outcome.path else "",
    }
    if result is not None:
        meta.update(
            {
                "source_url": dg.MetadataValue.url(result.url),
                "mib_s": round(result.mib_s, 3),
                "decision": result.decision or "",
                "resumed_bytes": result.resumed_from,
                "attempts": result.attempts,
                "http_status": result.http_status or 0,
            }
        )
    return meta


# Runs started by automation (sensors, schedules, declarative automation) carry one of these tags;
# anything else (the UI, a backfill, `dtkg backfill`) is a user's request.
AUTOMATION_TAGS = ("dagster/sensor_name", "dagster/schedule_name", "dagster/from_automation_condition",
                   "dagster/auto_materialize")
# Run tags the step sets when it ends normally: the Runs page tells data failures from crashes.
OUTCOME_TAG = "dtkg/outcome"  # "stored" (every work finished) or "data_failures"; absent after a crash
STORED_TAG = "dtkg/works_stored"
FAILED_TAG = "dtkg/works_failed"
# A work another worker holds on a shared ledger: not this run's outcome (a failure here would fail
# the run, and Dagster would mark the partition failed while its holder is still working on it).
LEASED_ELSEWHERE = "leased_elsewhere"


def is_automation(tags: Mapping[str, str]) -> bool:
    return any(tag in tags for tag in AUTOMATION_TAGS)


def failure_observation(asset_key: dg.AssetKey, outcome: WorkOutcome) -> dg.AssetObservation:
    """The one failure event per failed key: reason code, detail and what to do, on the partition's page."""
    what_to_do = advice(outcome.reason)
    detail = outcome.detail or (outcome.result.detail if outcome.result is not None else None) or ""
    meta: dict[str, Any] = {"reason": outcome.reason, "detail": detail[:2000], "what_to_do": what_to_do}
    if outcome.result is not None and outcome.result.url:
        meta["url"] = dg.MetadataValue.url(outcome.result.url)
    return dg.AssetObservation(
        asset_key=asset_key,
        partition=outcome.work_id,
        description=f"failed: {outcome.reason}. {what_to_do}",
        metadata=meta,
        tags={"dtkg/reason": outcome.reason[:63]},
    )


class WorksFailed(dg.Failure):
    """Some works failed for data reasons (each has its reason on its partition): the step fails so
    Dagster marks exactly those partitions failed, and shows the reasons without a stack trace."""


_UNSET = object()
_saved_limit: list[object] = []


def hide_stack_of_the_next_failure() -> None:
    """Dagster records a step failure's stack with `traceback.TracebackException`, which honours
    `sys.tracebacklimit`: a data outcome has no stack worth showing, so the limit is 0 while the
    step's `WorksFailed` is recorded. `restore_stacks()` puts the limit back (every step of ours
    starts with it; `dtkg` calls it after each run it launches; a run worker ends with its step)."""
    if not _saved_limit:
        _saved_limit.append(getattr(sys, "tracebacklimit", _UNSET))
    sys.tracebacklimit = 0


def restore_stacks() -> None:
    if not _saved_limit:
        return
    previous = _saved_limit.pop()
    if previous is _UNSET:
        with contextlib.suppress(AttributeError):
            del sys.tracebacklimit
    else:
        sys.tracebacklimit = previous  # type: ignore[assignment]


@dg.asset(
    partitions_def=artifact_partitions,
    # The defaults here; the configured ones come from `configured_artifact_pdfs`.
    backfill_policy=backfill_policy(RunSettings()),
    output_required=False,
    pool=LEDGER_POOL,
    description="One verified, deduplicated PDF per work in the content-addressed store. "
    "Materializing a partition is a request: a complete work's file is verified (and redone if missing or "
    "corrupt); a failed work is tried again whatever its failure class.",
)
def artifact_pdfs(
    context: dg.AssetExecutionContext,
    config: ArtifactPdfsConfig,
    settings: SettingsResource,
    ledger: LedgerResource,
    store: StoreResource,
    http: HttpClientResource,
) -> Iterator[dg.Output[None]]:
    # A generator that yields no output: each finished key is reported by its own materialization,
    # each failed key by one observation with its reason, and the step fails at the end if any key
    # failed, so Dagster shows per-partition truth (OSS Dagster marks a partition failed only when
    # the run that planned it fails).
    restore_stacks()
    keys = list(context.partition_keys)
    loaded = settings.load()
    workers = config.workers or loaded.run.workers
    automated = is_automation(context.run.tags)
    failed: dict[str, str] = {}
    internal: list[str] = []
    lock = threading.Lock()

    def on_done(outcome: WorkOutcome) -> None:
        # Called from worker threads as each work finishes: one event per finished or failed key.
        if outcome.ok:
            events.log(
                dg.AssetMaterialization(
                    asset_key=context.asset_key, partition=outcome.work_id, metadata=outcome_metadata(outcome)
                )
            )
            return
        if outcome.reason == LEASED_ELSEWHERE:
            return  # another worker holds it (shared ledger): its run reports it, this one neither fails nor stores it
        events.log(failure_observation(context.asset_key, outcome))
        with lock:
            failed[outcome.work_id] = outcome.reason or "unknown"
            if outcome.reason == "internal_error":
                internal.append(f"{outcome.work_id}: {outcome.detail}")

    owner = f"run:{context.run.run_id}"
    # Events go through one background writer: workers never wait on Dagster's event storage.
    with BackgroundEvents(step_event_logger(context)) as events, ledger.writer(owner=owner) as led:
        store_ = store.store()
        prepared = prepare_request(led, store_, keys, depth=loaded.run.verify_depth, retry_failed=not automated)
        orchestrator = make_orchestrator(led, http.client, loaded, owner=owner, run_id=context.run.run_id,
                                         store=store_)
        outcomes = orchestrator.process(keys, workers=workers, on_done=on_done)
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    stored = sum(1 for o in outcomes if o.ok)
    context.instance.add_run_tags(
        context.run.run_id,
        {OUTCOME_TAG: "data_failures" if failed else "stored", STORED_TAG: str(stored), FAILED_TAG: str(len(failed))},
    )
    context.log.info(
        f"artifact_pdfs: {len(keys)} works: {stored} stored ({counts}); verified on disk {len(prepared.verified)}, "
        f"redone after a file check {len(prepared.redo)}, failed works retried {len(prepared.retried)}"
    )
    if internal:
        # A bug or an unexpected system error is not a data outcome: fail loudly with the details.
        raise RuntimeError(f"{len(internal)} works hit an internal error: " + "; ".join(internal[:10]))
    if failed:
        by_reason: dict[str, list[str]] = {}
        for key, reason in sorted(failed.items()):
            by_reason.setdefault(reason, []).append(key)
        summary = "; ".join(f"{reason}: {', '.join(ks[:20])}" for reason, ks in sorted(by_reason.items()))
        hide_stack_of_the_next_failure()
        raise WorksFailed(
            description=f"{len(failed)} of {len(keys)} works failed, {stored} stored ({summary}). "
            "Each failed partition shows its reason and what to do.",
            metadata={"failed": dg.MetadataValue.json(failed), "counts": dg.MetadataValue.json(counts)},
            allow_retries=False,
        )
    yield from ()
