"""Dagster's PostgreSQL storage, with a run's planned materializations and a check run's evaluations
each written as one transaction.

dagster-postgres (1.13) stores a batch of events in one statement only when it holds materializations
or observations. The planned materializations a ranged run writes when it is created (one per
partition) go one at a time, two commits each, and a batch of check evaluations is refused
(`BATCH_WRITABLE_EVENTS`): each evaluation costs two commits too, the event row (with a NOTIFY kept
for old readers) and its check execution row. Creating a 200-partition run took 0.5 s, and a check
run over a batch spent more time committing than checking; before each evaluation Dagster also asks,
on a connection of its own, whether the check table exists.

`DtkgPostgresEventLogStorage` writes such a batch (one run's, one kind) as Dagster's batch path
writes materializations: one multi-row insert of the events, then, in the same transaction, their
tags and the asset's row, or Dagster's own update of each check execution row. Anything else goes to
dagster-postgres unchanged. Same tables and statements: the webserver, the daemon and
other workers read them as before.

Configured by `dagster.postgres.yaml` (`storage: custom:` naming `DtkgPostgresStorage`, Dagster's
PostgreSQL storage with this event log); run processes get it through the instance reference.
"""

from collections.abc import Mapping, Sequence
from typing import Any, cast

from dagster._core.events import DagsterEventType
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log import SqlEventLogStorageTable
from dagster._serdes import ConfigurableClassData
from dagster_postgres import DagsterPostgresStorage, PostgresEventLogStorage
from dagster_postgres.run_storage import PostgresRunStorage
from dagster_postgres.schedule_storage import PostgresScheduleStorage
from dagster_postgres.utils import get_token_provider_from_config, pg_url_from_config

from dtkg_assets.defs.event_storage import BatchedCheckEvaluations

# Batches written here in one transaction: a run's planned materializations (written when a ranged run
# is created) and a check run's evaluations. Dagster writes either one event at a time.
BATCHED_HERE = {DagsterEventType.ASSET_MATERIALIZATION_PLANNED, DagsterEventType.ASSET_CHECK_EVALUATION}


class DtkgPostgresEventLogStorage(BatchedCheckEvaluations, PostgresEventLogStorage):
    """`PostgresEventLogStorage` writing a run's batch of planned materializations or of check
    evaluations in one transaction."""

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        run_ids = {event.run_id for event in events}
        kinds = {event.dagster_event_type for event in events}
        if len(run_ids) != 1 or "" in run_ids or len(kinds) != 1 or not kinds <= BATCHED_HERE:
            super().store_event_batch(events)
            return
        insert = self.prepare_insert_event_batch(events).returning(SqlEventLogStorageTable.c.id)
        with self.index_transaction() as conn, self.lending(conn):
            # Rows come back in the order of the VALUES list (Dagster's own batch path relies on it).
            event_ids = [cast("int", row[0]) for row in conn.execute(insert).fetchall()]
            if kinds == {DagsterEventType.ASSET_CHECK_EVALUATION}:
                for event, event_id in zip(events, event_ids, strict=True):
                    self.store_asset_check_event(event, event_id)
                return
            self._store_asset_event_tags(conn, list(events), event_ids)
            # The asset's row follows its latest event, as in Dagster's batch of materializations.
            latest = {event.dagster_event.asset_key: (event, event_id)
                      for event, event_id in zip(events, event_ids, strict=True)
                      if event.dagster_event is not None and event.dagster_event.asset_key is not None}
            for event, event_id in latest.values():
                self._store_asset_event(conn, event, event_id)


class DtkgPostgresStorage(DagsterPostgresStorage):
    """`DagsterPostgresStorage` (runs, events, schedules in one PostgreSQL database) whose event log is
    `DtkgPostgresEventLogStorage` (run processes rebuild this storage from the instance reference)."""

    def __init__(self, postgres_url: str, should_autocreate_tables: bool = True,
                 inst_data: ConfigurableClassData | None = None, token_provider: Any = None) -> None:
        self.postgres_url = postgres_url
        self.should_autocreate_tables = should_autocreate_tables
        self._inst_data = inst_data
        self._run_storage = PostgresRunStorage(postgres_url, should_autocreate_tables, token_provider=token_provider)
        self._event_log_storage = DtkgPostgresEventLogStorage(
            postgres_url, should_autocreate_tables, token_provider=token_provider)
        self._schedule_storage = PostgresScheduleStorage(
            postgres_url, should_autocreate_tables, token_provider=token_provider)
        super(DagsterPostgresStorage, self).__init__()  # DagsterStorage's: the parent's builds its own event log

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> "DtkgPostgresStorage":
        return cls(
            inst_data=inst_data,
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),
        )
