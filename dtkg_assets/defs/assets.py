"""Assets: `openalex_works` ingests works and registers partitions; `artifact_pdfs` downloads them.

Both only call the core (sources, ledger, orchestrator); the download logic lives there.
"""

import threading
from collections.abc import Iterator
from typing import Any, Optional

import dagster as dg

from dtkg_assets.core.orchestrator import Orchestrator, WorkOutcome
from dtkg_assets.core.sources import WorksSource, read_source, record_source
from dtkg_assets.core.streaming import Engine
from dtkg_assets.defs.event_writer import BackgroundEvents
from dtkg_assets.defs.partitions import ARTIFACT_PARTITIONS_NAME, LEDGER_POOL, artifact_partitions
from dtkg_assets.defs.resources import HttpClientResource, LedgerResource, SettingsResource, StoreResource
from dtkg_assets.settings import Settings

# Read once at load time: a backfill policy is part of the definition.
BATCH_SIZE = Settings.from_env().run.batch_size


class WorksSourceConfig(dg.Config):
    """Where works come from: exactly one of a JSONL file, an id/DOI list, or an OpenAlex query."""

    jsonl_path: Optional[str] = None  # noqa: UP045 - Dagster config fields need Optional[...]
    ids_path: Optional[str] = None  # noqa: UP045
    filter: Optional[str] = None  # noqa: UP045
    topic_id: Optional[str] = None  # noqa: UP045
    year_from: Optional[int] = None  # noqa: UP045
    year_to: Optional[int] = None  # noqa: UP045
    oa_only: bool = False
    max_results: Optional[int] = None  # noqa: UP045

    def to_source(self) -> WorksSource:
        return WorksSource(**self.model_dump())


@dg.asset(pool=LEDGER_POOL, description="Works from the configured source, recorded in the ledger.")
def openalex_works(
    context: dg.AssetExecutionContext, config: WorksSourceConfig, ledger: LedgerResource
) -> dg.MaterializeResult:
    batch = read_source(config.to_source(), ledger.settings.load())
    with ledger.writer(owner=f"run:{context.run.run_id}") as led:
        summary = record_source(led, batch, run_id=context.run.run_id, kind=f"works:{config.to_source().kind}")
    context.instance.add_dynamic_partitions(ARTIFACT_PARTITIONS_NAME, [work.work_id for work in batch.works])
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


@dg.asset(
    partitions_def=artifact_partitions,
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=BATCH_SIZE),
    output_required=False,
    pool=LEDGER_POOL,
    deps=[openalex_works],
    description="One verified, deduplicated PDF per work in the content-addressed store.",
)
def artifact_pdfs(
    context: dg.AssetExecutionContext,
    config: ArtifactPdfsConfig,
    settings: SettingsResource,
    ledger: LedgerResource,
    store: StoreResource,
    http: HttpClientResource,
) -> Iterator[dg.Output[None]]:
    # A generator that yields no output: each finished key is reported by its own materialization
    # and the step fails at the end if any key failed, so Dagster shows per-partition truth.
    keys = list(context.partition_keys)
    loaded = settings.load()
    workers = config.workers or loaded.run.workers
    already = context.instance.get_materialized_partitions(context.asset_key)
    failed: dict[str, str] = {}
    lock = threading.Lock()

    def on_done(outcome: WorkOutcome) -> None:
        # Called from worker threads as each work finishes: one materialization per finished key.
        if outcome.status in ("downloaded", "deduped") or (
            outcome.status == "skipped_complete" and outcome.work_id not in already
        ):
            events.log(
                dg.AssetMaterialization(
                    asset_key=context.asset_key, partition=outcome.work_id, metadata=outcome_metadata(outcome)
                )
            )
        elif outcome.status in ("failed", "deferred"):
            with lock:
                failed[outcome.work_id] = outcome.reason or "unknown"

    owner = f"run:{context.run.run_id}"
    # Events go through one background writer: workers never wait on Dagster's event storage.
    with BackgroundEvents(context.log_event) as events, ledger.writer(owner=owner) as led:
        engine = Engine(http.client, loaded, store.store())
        orchestrator = Orchestrator(led, engine, loaded, owner=owner, run_id=context.run.run_id)
        outcomes = orchestrator.process(keys, workers=workers, on_done=on_done)
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    context.log.info(f"artifact_pdfs: {len(keys)} keys, {counts}")
    if failed:
        by_reason: dict[str, list[str]] = {}
        for key, reason in sorted(failed.items()):
            by_reason.setdefault(reason, []).append(key)
        summary = "; ".join(f"{reason}: {', '.join(ks[:20])}" for reason, ks in sorted(by_reason.items()))
        raise dg.Failure(
            description=f"{len(failed)} of {len(keys)} works failed ({summary})",
            metadata={"failed": dg.MetadataValue.json(failed), "counts": dg.MetadataValue.json(counts)},
        )
    yield from ()
