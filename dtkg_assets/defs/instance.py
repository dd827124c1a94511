"""Which dagster.yaml a `dtkg` command's Dagster instance uses.

- Embedded default: the project's `dagster.yaml` (SQLite storage under $DTKG_HOME/dagster, the
  `ledger` pool limited to one run), plus an `instance_class` block naming `DtkgDagsterInstance`
  (`defs.event_storage`: Dagster's SQLite storage in the instance's directory, with an event log
  keeping its engines and WAL open, about 3x cheaper per event; and dynamic partition keys listed
  once per process, then only what was added: `defs.dynamic_partitions`). Written into the home's copy only:
  the project's file also serves a `dagster dev` without DAGSTER_HOME, left as Dagster makes it.
  `DTKG_RUN_POOLED_EVENTS=0` leaves it out (Dagster's own SQLite event storage, same files).
- `DAGSTER_PG_URL` set: `dagster.postgres.yaml` (dagster-postgres storage with the event log of
  `defs.pg_event_storage`, queued runs, a process per run), so many `dtkg` processes and
  `dagster dev`/daemon on many hosts share one instance; its `instance_class` is `DtkgDagsterInstance`
  too, for the listing of dynamic partition keys.
- The `ledger` pool limit (`concurrency.pools.default_limit`) is forced to 1 whenever the ledger is
  the DuckDB file, whatever the file says: DuckDB allows one read-write process.
"""

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from dtkg_assets.core.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
REPO_DAGSTER_YAML = REPO_ROOT / "dagster.yaml"
REPO_DAGSTER_PG_YAML = REPO_ROOT / "dagster.postgres.yaml"
FALLBACK_DAGSTER_YAML = "telemetry:\n  enabled: false\n"
DAGSTER_PG_URL = "DAGSTER_PG_URL"

# Used when the package runs without its repository files (an installed wheel).
FALLBACK_PG_CONFIG: dict[str, Any] = {
    "telemetry": {"enabled": False},
    "instance_class": {"module": "dtkg_assets.defs.event_storage", "class": "DtkgDagsterInstance"},
    "storage": {"custom": {"module": "dtkg_assets.defs.pg_event_storage", "class": "DtkgPostgresStorage",
                           "config": {"postgres_url": {"env": DAGSTER_PG_URL}}}},
    "run_coordinator": {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator",
                        "config": {"dequeue_use_threads": True, "dequeue_num_workers": 4}},
    "run_launcher": {"module": "dagster._core.launcher", "class": "DefaultRunLauncher"},
    "concurrency": {"runs": {"max_concurrent_runs": 8}, "pools": {"granularity": "run", "default_limit": 8}},
}


def dagster_pg_url(url: str) -> str:
    """The URL with the driver dagster-postgres needs. SQLAlchemy 2.1 maps a bare ``postgresql://`` to
    psycopg 3, whose server-side parameters break dagster-postgres (``NOTIFY run_events, $1``): name
    psycopg2 explicitly."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix):]
    return url


def normalize_environment() -> None:
    """Make DAGSTER_PG_URL (read by dagster.yaml's ``env:``) name the psycopg2 driver, for this
    process and the run processes it starts."""
    url = os.environ.get(DAGSTER_PG_URL, "").strip()
    if url:
        os.environ[DAGSTER_PG_URL] = dagster_pg_url(url)


def uses_postgres(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return bool(env.get(DAGSTER_PG_URL, "").strip())


def instance_yaml(settings: Settings, environ: Mapping[str, str] | None = None) -> str:
    """The text of the dagster.yaml for this environment (see the module doc)."""
    if not uses_postgres(environ):
        text = REPO_DAGSTER_YAML.read_text() if REPO_DAGSTER_YAML.is_file() else FALLBACK_DAGSTER_YAML
        return text.rstrip("\n") + "\n" + POOLED_EVENT_STORAGE_YAML if settings.run.pooled_events else text
    if REPO_DAGSTER_PG_YAML.is_file():
        text = REPO_DAGSTER_PG_YAML.read_text()
        config: dict[str, Any] = yaml.safe_load(text) or {}
    else:
        text, config = "", dict(FALLBACK_PG_CONFIG)
    if settings.ledger_is_postgres and text:
        return text  # the file as written (comments kept for whoever opens it)
    if not settings.ledger_is_postgres:
        pools = config.setdefault("concurrency", {}).setdefault("pools", {})
        pools["granularity"] = "run"
        pools["default_limit"] = 1
    header = "# Written by dtkg from dagster.postgres.yaml (ledger pool limited to 1: DuckDB ledger).\n"
    return header + yaml.safe_dump(config, sort_keys=False)


# The `instance_class` block of a home's dagster.yaml on SQLite storage: `DtkgDagsterInstance`, whose
# default storage is Dagster's SQLite layout under the directory the instance is loaded from, with
# `PooledSqliteEventLogStorage` for the events.
POOLED_EVENT_STORAGE_YAML = (
    "\n# Written by dtkg: Dagster's SQLite storage with an event log that keeps its engines and WAL open "
    "(dtkg_assets/defs/event_storage.py).\n"
    + yaml.safe_dump({"instance_class": {"module": "dtkg_assets.defs.event_storage", "class": "DtkgDagsterInstance"}},
                     sort_keys=False)
)


def pool_limit(config_text: str) -> int | None:
    """`concurrency.pools.default_limit` of a dagster.yaml text (None when unset)."""
    config = yaml.safe_load(config_text) or {}
    value = config.get("concurrency", {}).get("pools", {}).get("default_limit")
    return None if value is None else int(value)
