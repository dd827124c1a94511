"""`PooledSqliteEventLogStorage`: Dagster's SQLite event storage with kept-open connections stays
readable by Dagster's own storage on the same files (another process: the webserver, the daemon),
wakes the webserver's watcher of a run's file, and keeps a bounded number of shards open."""

import threading
import time
from pathlib import Path

import dagster as dg
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log import SqliteEventLogStorage

from dtkg_assets.core.settings import Settings
from dtkg_assets.defs.event_storage import (
    DtkgDagsterInstance,
    PooledDagsterSqliteStorage,
    PooledSqliteEventLogStorage,
)
from dtkg_assets.defs.instance import instance_yaml


def _entry(run_id: str, message: str) -> EventLogEntry:
    return EventLogEntry(error_info=None, level="INFO", user_message=message, run_id=run_id,
                         timestamp=time.time())


def test_pooled_writes_reach_dagsters_reader_and_its_run_watcher(tmp_path: Path) -> None:
    base = str(tmp_path / "history" / "runs")
    writer = PooledSqliteEventLogStorage(base, open_run_shards=2)
    reader = SqliteEventLogStorage(base)
    try:
        seen: list[str] = []
        woke = threading.Event()

        def on_event(entry: EventLogEntry, _cursor: str) -> None:
            seen.append(entry.user_message)
            if len(seen) == 3:
                woke.set()

        writer.store_event(_entry("run-a", "first"))  # the shard exists before it is watched
        reader.watch("run-a", None, on_event)
        for message in ("second", "third"):
            writer.store_event(_entry("run-a", message))
        assert woke.wait(10), seen
        assert seen == ["first", "second", "third"]
        reader.end_watch("run-a", on_event)
        # A reader opening the file afterwards sees every committed event.
        assert [r.event_log_entry.user_message for r in reader.get_records_for_run("run-a").records] == \
            ["first", "second", "third"]
        # One engine per shard, reused; only the last `open_run_shards` run shards stay open.
        for run_id in ("run-b", "run-c", "run-d"):
            writer.store_event(_entry(run_id, "x"))
        assert sorted(writer._engines) == ["index", "run-c", "run-d"]
        assert len(writer.get_records_for_run("run-a").records) == 3  # reopened on demand
    finally:
        writer.dispose()
        reader.dispose()


def test_instance_configured_with_the_pooled_storage(tmp_path: Path) -> None:
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text(instance_yaml(Settings().with_home(tmp_path), {}))

    @dg.asset
    def one() -> int:
        return 1

    with dg.DagsterInstance.from_config(str(home)) as instance:
        # Opened by path (no DAGSTER_HOME): the storage is in that directory.
        assert isinstance(instance, DtkgDagsterInstance) and instance.root_directory == str(home)
        assert isinstance(instance.get_ref().storage, PooledDagsterSqliteStorage)
        assert isinstance(instance.event_log_storage, PooledSqliteEventLogStorage)
        assert dg.materialize([one], instance=instance).success
        assert instance.get_latest_materialization_event(dg.AssetKey("one")) is not None
    assert (home / "history" / "runs" / "index.db").is_file()
