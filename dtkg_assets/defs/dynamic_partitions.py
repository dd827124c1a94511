"""The keys of a dynamic partitions definition, listed once per process and then only what changed.

Dagster lists every key of a `DynamicPartitionsDefinition` whenever it resolves a partition range:
twice when a ranged run is created (its planned events) and once more for each `partition_keys` in
the run, besides our own calls. Each listing reads the whole `dynamic_partitions` table: 2.2 s for a
million keys on SQLite, four times per batch run. `DynamicPartitionKeys` keeps the keys in memory
and, per call, reads only the rows from the last key it holds on (by primary key), then adds the
new keys. Every caller gets the same tuple until keys are added (a new tuple then): no caller can
change what the others see, and no call copies a million keys (10 ms each, some 15 calls per run;
Dagster's own caches of this listing hand out one object too). Keys are only ever added by dtkg; a
key deleted by this process drops the list, and every `RECOUNT_S` the keys are counted (a scan of
the index: 0.25 s at a million), so a key another process deleted is listed at most that long. A
count that does not add up reads the whole list.
"""

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from dagster._core.storage.event_log.schema import DynamicPartitionsTable
from sqlalchemy.engine import Connection

TABLE = DynamicPartitionsTable
RECOUNT_S = 30.0


@dataclass
class _Listing:
    keys: tuple[str, ...] = ()
    last_id: int | None = None  # storage id of keys[-1]
    counted_at: float = field(default_factory=time.monotonic)


class DynamicPartitionKeys:
    """Per-process copy of each dynamic partitions definition's keys, in Dagster's order (storage
    id), brought up to date on every call; returned as a tuple that callers share."""

    def __init__(self, connect: Callable[[], AbstractContextManager[Connection]]) -> None:
        self._connect = connect  # the event log's index connection (one transaction)
        self._listings: dict[str, _Listing] = {}
        self._lock = threading.Lock()

    def get(self, partitions_def_name: str) -> Sequence[str]:
        with self._lock:
            listing = self._listings.get(partitions_def_name)
            with self._connect() as conn:
                if listing is None or not self._caught_up(conn, partitions_def_name, listing):
                    listing = self._listings[partitions_def_name] = self._read_all(conn, partitions_def_name)
            return listing.keys

    def forget(self, partitions_def_name: str) -> None:
        """Keys were deleted: read them all at the next call."""
        with self._lock:
            self._listings.pop(partitions_def_name, None)

    @staticmethod
    def _read_all(conn: Connection, name: str) -> _Listing:
        keys: list[str] = []
        last_id = None
        for rows in _raw_row_batches(
            conn,
            sa.select(TABLE.c.id, TABLE.c.partition).where(TABLE.c.partitions_def_name == name).order_by(TABLE.c.id),
        ):
            keys += (row[1] for row in rows)
            last_id = rows[-1][0]
        return _Listing(keys=tuple(keys), last_id=last_id)

    @staticmethod
    def _caught_up(conn: Connection, name: str, listing: _Listing) -> bool:
        """Append the keys added since `listing` was read; False when the table changed otherwise."""
        if listing.last_id is None:
            return False
        # By primary key only (other definitions' rows are filtered here): with the definition's
        # name in the statement, SQLite scans the (name, key) index instead, 90 ms at a million.
        newer = [
            (row[0], row[2])
            for row in conn.execute(
                sa.select(TABLE.c.id, TABLE.c.partitions_def_name, TABLE.c.partition)
                .where(TABLE.c.id >= listing.last_id)
                .order_by(TABLE.c.id)
            )
            if row[1] == name
        ]
        # The last key held must still be there under its id: SQLite gives a deleted last row's id
        # to the next insert, so an id alone would not show that it changed.
        if not newer or newer[0] != (listing.last_id, listing.keys[-1]):
            return False
        if time.monotonic() - listing.counted_at >= RECOUNT_S:
            count = conn.execute(
                sa.select(sa.func.count()).select_from(TABLE).where(TABLE.c.partitions_def_name == name)
            ).scalar_one()
            if count != len(listing.keys) + len(newer) - 1:
                return False  # keys were deleted before the last one held
            listing.counted_at = time.monotonic()
        if len(newer) > 1:
            listing.keys += tuple(key for _, key in newer[1:])  # a new tuple: callers keep theirs
        listing.last_id = newer[-1][0]
        return True


def _raw_row_batches(conn: Connection, statement: sa.Select[Any], size: int = 20_000) -> Iterator[list[Any]]:
    """The rows of `statement` in lists of up to `size`, fetched by the driver's own cursor in `conn`'s
    transaction: a million rows through SQLAlchemy's result objects took 2.4 s on SQLite, about twice
    the driver's time. In batches, because a million row tuples fetched at once stayed in the
    process's memory after the keys were taken from them (about 100 MB of peak RSS: the allocator
    could not give back pages that the keys' strings shared with them)."""
    compiled = statement.compile(dialect=conn.dialect)
    params = compiled.construct_params()
    args: Any = tuple(params[k] for k in compiled.positiontup or ()) if compiled.positional else params
    cursor = conn.connection.cursor()
    try:
        cursor.execute(str(compiled), args)
        while rows := cursor.fetchmany(size):
            yield list(rows)
    finally:
        cursor.close()
