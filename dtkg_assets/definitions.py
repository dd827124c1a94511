"""The single Dagster entry point: `workspace.yaml` and `dagster dev` load `defs` from here."""

import dagster as dg

from dtkg_assets.core.settings import Settings
from dtkg_assets.defs.assets import configured_artifact_pdfs, openalex_works
from dtkg_assets.defs.checks import artifact_checks
from dtkg_assets.defs.jobs import MAINTENANCE_JOBS, artifact_checks_job, artifact_pdfs_job, openalex_works_job
from dtkg_assets.defs.resources import resources_for
from dtkg_assets.defs.schedules import SCHEDULES
from dtkg_assets.defs.sensors import configured_sensors


def build_definitions(home: str | None = None, deployment: str | None = None) -> dg.Definitions:
    """Definitions with the deployment's resources (`resources.resources_for`); a `home` (tests, `dtkg`
    launching runs in its own process) roots the local set there. The few settings that shape the
    definitions themselves (batch size, automation opt-in, reconcile interval) are read here, once,
    when they are built."""
    run = Settings.from_env().run
    return dg.Definitions(
        assets=[openalex_works, configured_artifact_pdfs(run)],
        asset_checks=[artifact_checks],
        jobs=[artifact_pdfs_job, artifact_checks_job, openalex_works_job, *MAINTENANCE_JOBS],
        sensors=configured_sensors(run),
        schedules=list(SCHEDULES),
        resources=resources_for(deployment, home),
        # Batches of partitions run threads inside one step: no per-step subprocess cost.
        executor=dg.in_process_executor,
    )


defs = build_definitions()
