"""Schedules: a daily works refresh and a weekly revalidation of finished artifacts.

The refresh reads its source from the environment so operators configure it where they configure
secrets: DTKG_REFRESH_FILTER (an OpenAlex filter string) or DTKG_REFRESH_JSONL (a file), and
DTKG_REFRESH_MAX (records per refresh). With neither set, the tick is skipped with that hint.
"""

import os

import dagster as dg

from dtkg_assets.defs.jobs import openalex_works_job, revalidate_job


def refresh_run_config(environ: dict[str, str] | None = None) -> dict | None:
    env = dict(os.environ) if environ is None else environ
    config: dict[str, object] = {}
    if env.get("DTKG_REFRESH_JSONL"):
        config["jsonl_path"] = env["DTKG_REFRESH_JSONL"]
    elif env.get("DTKG_REFRESH_FILTER"):
        config["filter"] = env["DTKG_REFRESH_FILTER"]
    else:
        return None
    if env.get("DTKG_REFRESH_MAX"):
        config["max_results"] = int(env["DTKG_REFRESH_MAX"])
    return {"ops": {"openalex_works": {"config": config}}}


@dg.schedule(cron_schedule="0 3 * * *", job=openalex_works_job, default_status=dg.DefaultScheduleStatus.RUNNING)
def works_refresh_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
    run_config = refresh_run_config()
    if run_config is None:
        return dg.SkipReason("set DTKG_REFRESH_FILTER (OpenAlex filter) or DTKG_REFRESH_JSONL to refresh works daily")
    return dg.RunRequest(run_key=context.scheduled_execution_time.isoformat(), run_config=run_config)


@dg.schedule(cron_schedule="0 4 * * 0", job=revalidate_job, default_status=dg.DefaultScheduleStatus.RUNNING)
def revalidation_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    return dg.RunRequest(run_key=context.scheduled_execution_time.isoformat())


SCHEDULES = (works_refresh_schedule, revalidation_schedule)
