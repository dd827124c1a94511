"""Jobs: the asset jobs plus the ledger maintenance ops that automation requests.

Every op that writes the ledger runs in the ledger pool, so automation never contends with a
download run for DuckDB's single writer.
"""

import dagster as dg

from dtkg_assets.core.reconciler import reconcile
from dtkg_assets.core.revalidate import revalidate
from dtkg_assets.core.store import Store
from dtkg_assets.defs.assets import artifact_pdfs, openalex_works
from dtkg_assets.defs.partitions import LEDGER_POOL
from dtkg_assets.defs.resources import HttpClientResource, LedgerResource

# Its partitions come from the asset (dynamic, one per work). The checks are not part of download
# runs: they cost the downloads nothing and run in their own check run (below).
artifact_pdfs_job = dg.define_asset_job(
    "artifact_pdfs_job",
    selection=dg.AssetSelection.assets(artifact_pdfs).without_checks(),
    description="Download the selected works' PDFs (a partition range per run).",
)
# Per-partition checks over a partition range: requested by artifact_checks_sensor after each
# download run and run by `dtkg backfill`; the UI can run it for any partitions.
artifact_checks_job = dg.define_asset_job(
    "artifact_checks_job",
    selection=dg.AssetSelection.checks_for_assets(artifact_pdfs),
    description="Check finished works' files (present, sha256, PDF) per partition.",
)
openalex_works_job = dg.define_asset_job(
    "openalex_works_job",
    selection=dg.AssetSelection.assets(openalex_works),
    description="Import works from a source into the ledger and register their partitions.",
)


@dg.op(pool=LEDGER_POOL, description="Heal the ledger and store after crashes (leases, ops, files, parts).")
def reconcile_ledger(context: dg.OpExecutionContext, ledger: LedgerResource) -> dict:
    with ledger.writer(owner=f"run:{context.run.run_id}") as led:
        counts = reconcile(led, Store(led.settings), led.settings)
    context.log.info(f"reconcile: {counts}")
    context.add_output_metadata({k: int(v) for k, v in counts.items()})
    return counts


@dg.job(description="Run the reconciler inside the ledger pool.")
def reconcile_job() -> None:
    reconcile_ledger()


class ReleaseLeasesConfig(dg.Config):
    run_id: str


@dg.op(pool=LEDGER_POOL, description="Release the leases a failed or canceled run still holds.")
def release_run_leases(context: dg.OpExecutionContext, config: ReleaseLeasesConfig, ledger: LedgerResource) -> int:
    with ledger.writer(owner=f"run:{context.run.run_id}") as led:
        released = led.release_leases(run_id=config.run_id)
    context.log.info(f"released {released} leases held by run {config.run_id}")
    return released


@dg.job(description="Release leases of a failed or canceled run at once instead of waiting for expiry.")
def release_leases_job() -> None:
    release_run_leases()


@dg.op(pool=LEDGER_POOL, description="Revalidate finished artifacts with conditional requests.")
def revalidate_artifacts(context: dg.OpExecutionContext, ledger: LedgerResource, http: HttpClientResource) -> dict:
    owner = f"run:{context.run.run_id}"
    with ledger.writer(owner=owner) as led:
        counts = revalidate(led, http.client, led.settings, owner=owner, run_id=context.run.run_id)
    context.log.info(f"revalidate: {counts}")
    context.add_output_metadata({k: int(v) for k, v in counts.items()})
    return counts


@dg.job(description="Revalidate finished artifacts (304 changes nothing; a changed object becomes a new version).")
def revalidate_job() -> None:
    revalidate_artifacts()


MAINTENANCE_JOBS = (reconcile_job, release_leases_job, revalidate_job)
