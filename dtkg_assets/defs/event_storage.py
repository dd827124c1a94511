"""Dagster's SQLite event log storage without the per-event engine and WAL checkpoint.

`SqliteEventLogStorage` (Dagster 1.13) builds a SQLAlchemy engine with `NullPool` for every
transaction and disposes it afterwards: each event opens the run shard's file, commits, closes it,
then does the same on the index shard (materializations, check evaluations, run status events).
In WAL mode the close of the last connection to a file checkpoints the WAL into the database file
(another fsync) and deletes it, so the next commit creates it again; and a new engine compiles
every statement again (SQLAlchemy's compiled cache is per engine). Profiled on this machine, that
cost more than the writes themselves.

This subclass keeps, per shard it touched recently (the index shard and the last few run shards),
the engine and one idle SQLite connection that runs no statement after opening the file: while it
is open, closing a transaction's connection is not the last close, so the WAL stays. Transactions
still get a new connection each and close it, as Dagster's do: a connection never outlives a
transaction, so no reader can be left on an old snapshot (a kept connection was: since Python 3.11
neither commit nor rollback resets a statement a read left unfinished, and the webserver then missed
a later import's materialization). Same files, schema and statements: the webserver, the daemon and
other run workers read and write them as before, under SQLite's file locking. Two things depended on
the checkpoint at close, and are kept:

- The webserver streams a run's events by watching `<run_id>.db` for modification (watchdog); a
  commit now writes the WAL file only, so after a transaction that wrote to a run shard the database
  file's mtime is touched, which the watcher sees as a modification.
- A process forked with open connections must not use or close them: another pid's connections are
  dropped without closing.

Configured by `dtkg` in the `dagster.yaml` it writes into $DTKG_HOME/dagster (see `defs.instance`):
`instance_class: DtkgDagsterInstance` (below), whose default storage is `PooledDagsterSqliteStorage`.
"""

import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from typing import Any

import yaml
from dagster import DagsterInstance, Field, IntSource, StringSource
from dagster._core.definitions.partitions.context import partition_loading_context
from dagster._core.definitions.partitions.utils import generate_partition_key_based_definition_id
from dagster._core.errors import DagsterInvariantViolationError
from dagster._core.events import ASSET_EVENTS, DagsterEventType
from dagster._core.events.log import EventLogEntry
from dagster._core.instance.ref import InstanceRef
from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage
from dagster._core.storage.event_log.sqlite.sqlite_event_log import INDEX_SHARD_NAME, SqliteEventLogStorage
from dagster._core.storage.runs import SqliteRunStorage
from dagster._core.storage.schedules import SqliteScheduleStorage
from dagster._core.storage.sqlalchemy_compat import db_result
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from dagster._core.storage.sqlite_storage import (
    DagsterSqliteStorage,
    _event_logs_directory,
    _runs_directory,
    _schedule_directory,
)
from dagster._serdes import ConfigurableClassData
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

from dtkg_assets.defs.dynamic_partitions import DynamicPartitionKeys, PackedKeys

# Run shards kept open besides the index shard: a run worker writes one run shard; the webserver and
# the daemon read several in turn.
DEFAULT_OPEN_RUN_SHARDS = 4
# Events per batch write (DAGSTER_EVENT_BATCH_SIZE unset): one batch run's partitions.
DEFAULT_EVENT_BATCH_SIZE = "100"


class BatchedCheckEvaluations(SqlEventLogStorage):
    """For an SQL event log storage that writes a run's batch of check evaluations itself: marks it
    for `defs.event_writer` (which sends check evaluations as one batch only to such a storage), and
    lends the batch's transaction to Dagster's own per-event writers (`store_asset_check_event` opens
    `index_connection`), so that they join it instead of committing on their own."""

    batches_check_evaluations = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._lent = threading.local()  # the connection lent on the thread writing a batch
        self._tables_seen: set[str] = set()
        super().__init__(*args, **kwargs)

    def has_table(self, table_name: str) -> bool:
        """Dagster asks before storing each check evaluation (`supports_asset_checks`), with a catalog
        query on a connection (and, on SQLite, an engine) of its own: 1.3 ms of each evaluation's 3.4 ms
        in a check run here. A table, once there, stays (migrations only add)."""
        if table_name in self._tables_seen:
            return True
        found = bool(super().has_table(table_name))  # type: ignore[safe-super]  # the mixed-in storage has it
        if found:
            self._tables_seen.add(table_name)
        return found

    @contextmanager
    def lending(self, conn: Connection) -> Iterator[Connection]:
        """While the block runs, `index_connection` on this thread yields `conn`."""
        self._lent.conn = conn
        try:
            yield conn
        finally:
            self._lent.conn = None

    def index_connection(self) -> AbstractContextManager[Connection]:
        conn = getattr(self._lent, "conn", None)
        if conn is not None:
            return nullcontext(conn)
        return super().index_connection()  # type: ignore[safe-super]  # the storage this is mixed into has it


class PooledSqliteEventLogStorage(BatchedCheckEvaluations, SqliteEventLogStorage):
    """`SqliteEventLogStorage` keeping each recent shard's engine and WAL open (see the module doc)."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None,
                 open_run_shards: int = DEFAULT_OPEN_RUN_SHARDS) -> None:
        # Set before the base class's __init__, which may already connect (first use of a home).
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._anchors: dict[str, sqlite3.Connection] = {}
        self._forked_leftovers: list[sqlite3.Connection] = []
        self._engines_pid = os.getpid()
        self._open_run_shards = max(1, int(open_run_shards))
        self._engines_lock = threading.Lock()
        super().__init__(base_dir, inst_data)

    @classmethod
    def config_type(cls) -> Any:
        return {"base_dir": StringSource,
                "open_run_shards": Field(IntSource, is_required=False, default_value=DEFAULT_OPEN_RUN_SHARDS)}

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> "PooledSqliteEventLogStorage":
        return cls(inst_data=inst_data, **config_value)

    def _engine(self, shard: str) -> Engine:
        with self._engines_lock:
            if self._engines_pid != os.getpid():  # forked: the parent's connections are not ours
                self._forked_leftovers.extend(self._anchors.values())  # never closed here
                self._anchors.clear()
                self._engines.clear()
                self._engines_pid = os.getpid()
            kept = self._engines.get(shard)
            if kept is not None:
                self._engines.move_to_end(shard)
                return kept
            engine = create_engine(self.conn_string_for_shard(shard), poolclass=NullPool,
                                   connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS})
            self._engines[shard] = engine
            run_shards = [name for name in self._engines if name != INDEX_SHARD_NAME]
            for name in run_shards[:max(0, len(run_shards) - self._open_run_shards)]:
                self._engines.pop(name).dispose()
                anchor = self._anchors.pop(name, None)
                if anchor is not None:
                    anchor.close()
            return engine

    def _anchor(self, shard: str) -> None:
        """Open the shard's idle connection (after the file exists): it reads the schema once, which
        maps the WAL index, and then holds no lock and no snapshot until it is closed."""
        with self._engines_lock:
            if shard in self._anchors or shard not in self._engines:
                return
            try:
                anchor = sqlite3.connect(self.path_for_shard(shard), timeout=SQLITE_BUSY_TIMEOUT_SECONDS,
                                         check_same_thread=False)
                anchor.execute("SELECT count(*) FROM sqlite_master").fetchall()
            except sqlite3.Error:
                return  # only a cost: Dagster's own behaviour for this shard
            self._anchors[shard] = anchor

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        with self._db_lock:
            engine = self._engine(shard)
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            if shard not in self._anchors:
                self._anchor(shard)
            with engine.connect() as conn:
                raw = conn.connection.driver_connection
                changes_before = getattr(raw, "total_changes", None)
                with conn.begin():
                    yield conn
                wrote = changes_before is None or getattr(raw, "total_changes", None) != changes_before
            if wrote and shard != INDEX_SHARD_NAME:
                self._touch(shard)

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        """Dagster's SQLite storage writes a batch one event at a time: two transactions per asset
        event (run shard, then index shard), three per check evaluation (run shard, the index shard's
        copy, its check execution row). The asset events of one run (what Dagster batches: a run's
        planned materializations, a step's materializations and observations) and one run's check
        evaluations (logged as a batch by `artifact_checks`) are written here by the same statements
        in one transaction per shard. Anything else, as Dagster does."""
        run_ids = {event.run_id for event in events}
        kinds = {event.dagster_event_type for event in events}  # None for a non-Dagster event
        checks = kinds == {DagsterEventType.ASSET_CHECK_EVALUATION}
        if len(run_ids) != 1 or not (checks or kinds <= ASSET_EVENTS):
            super().store_event_batch(events)
            return
        statements = [self.prepare_insert_event(event) for event in events]
        with self.run_connection(run_ids.pop()) as conn:
            for statement in statements:
                conn.execute(statement)
        event_ids: list[int] = []
        with self.index_transaction() as conn:
            for statement in statements:
                with db_result(conn, statement) as result:
                    event_id = result.inserted_primary_key[0]
                if event_id is None:
                    raise DagsterInvariantViolationError("Cannot store asset event tags for null event id.")
                event_ids.append(event_id)
            if checks:
                # Dagster's own update of each check execution row, on this transaction's connection.
                with self.lending(conn):
                    for event, event_id in zip(events, event_ids, strict=True):
                        self.store_asset_check_event(event, event_id)
                return
            self._store_asset_event_tags(conn, list(events), event_ids)
            for event, event_id in zip(events, event_ids, strict=True):
                self._store_asset_event(conn, event, event_id)

    def _touch(self, shard: str) -> None:
        """Let watchers of the run shard's file (the webserver's run log stream) see the write."""
        with suppress(OSError):
            os.utime(self.path_for_shard(shard))

    def _dispose_engines(self) -> None:
        with self._engines_lock:
            engines, anchors = list(self._engines.values()), list(self._anchors.values())
            self._engines.clear()
            self._anchors.clear()
            ours = self._engines_pid == os.getpid()
        for engine in engines:
            engine.dispose(close=ours)
        if ours:
            for anchor in anchors:
                anchor.close()

    def wipe(self) -> None:
        with self._db_lock:
            self._dispose_engines()  # the run shards' files are deleted
        super().wipe()

    def dispose(self) -> None:
        self._dispose_engines()
        super().dispose()


class PooledDagsterSqliteStorage(DagsterSqliteStorage):
    """Dagster's default SQLite storage (runs, events, schedules under one DAGSTER_HOME) with
    `PooledSqliteEventLogStorage` for the events (the default storage of `DtkgDagsterInstance`)."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None) -> None:
        self.base_dir = base_dir
        self._run_storage = SqliteRunStorage.from_local(_runs_directory(base_dir))
        self._event_log_storage = PooledSqliteEventLogStorage(_event_logs_directory(base_dir))
        self._schedule_storage = SqliteScheduleStorage.from_local(_schedule_directory(base_dir))
        self._inst_data = inst_data
        super(DagsterSqliteStorage, self).__init__()  # DagsterStorage's, not the parent's own storages

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> "PooledDagsterSqliteStorage":
        return cls.from_local(inst_data=inst_data, **config_value)


class DtkgDagsterInstance(DagsterInstance):
    """`DagsterInstance` whose default storage (no `storage` block in dagster.yaml) is
    `PooledDagsterSqliteStorage` under the instance's own directory. Named by `instance_class` in
    the dagster.yaml dtkg writes into a home: Dagster passes the directory it loads the instance
    from (DAGSTER_HOME, or `DagsterInstance.from_config(path)`) to `config_defaults`, so a moved or
    copied home, or one opened by path without DAGSTER_HOME, stores where it is. (A `storage` block
    can only name a fixed path or an environment variable: a copied demo home's `dagster dev` then
    served the template's event log, and opening a home by path failed without DAGSTER_HOME.)
    With any SQL event storage (SQLite or dagster-postgres: `dagster.postgres.yaml` names this class
    too) it lists dynamic partition keys through `DynamicPartitionKeys`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        events = self._event_storage
        self._dynamic_partition_keys = (
            DynamicPartitionKeys(events.index_connection) if isinstance(events, SqlEventLogStorage) else None)

    def _get_event_batch_size(self) -> int:
        """Dagster writes its event batches (a run's planned materializations, a step's drained
        events: `defs.event_writer`) only when DAGSTER_EVENT_BATCH_SIZE is set; on this instance they
        are written in batches of up to 100 unless it says otherwise (0: one at a time)."""
        return int(os.environ.get("DAGSTER_EVENT_BATCH_SIZE", DEFAULT_EVENT_BATCH_SIZE))

    def delete_dynamic_partition(self, partitions_def_name: str, partition_key: str) -> None:
        super().delete_dynamic_partition(partitions_def_name, partition_key)
        if self._dynamic_partition_keys is not None:
            self._dynamic_partition_keys.forget(partitions_def_name)

    def get_dynamic_partitions(self, partitions_def_name: str) -> Sequence[str]:
        """Every key, as Dagster's storage lists them, without reading the whole table each time
        (`defs.dynamic_partitions`: Dagster lists them several times per ranged run)."""
        if self._dynamic_partition_keys is None:
            return super().get_dynamic_partitions(partitions_def_name)
        return self._dynamic_partition_keys.get(partitions_def_name)

    def get_dynamic_partitions_definition_id(self, partitions_def_name: str) -> str:
        """Dagster's id of the definition (the SHA-1 of its keys' JSON, which names the partition
        status it caches), also for packed keys, which `json.dumps` does not take."""
        with partition_loading_context() as calling_context:
            store = calling_context.dynamic_partitions_store or self
            keys = store.get_dynamic_partitions(partitions_def_name)
            if isinstance(keys, PackedKeys):
                return keys.definition_id()
            return generate_partition_key_based_definition_id(keys)

    @classmethod
    def config_schema(cls) -> dict[str, Any]:
        return {}

    @staticmethod
    def config_defaults(base_dir: str) -> Mapping[str, ConfigurableClassData | None]:
        defaults = dict(InstanceRef.config_defaults(base_dir))
        defaults["storage"] = ConfigurableClassData(
            __name__, PooledDagsterSqliteStorage.__name__, yaml.dump({"base_dir": base_dir}, default_flow_style=False))
        return defaults
