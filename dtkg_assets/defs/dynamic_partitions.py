"""The keys of a dynamic partitions definition, listed once per process and then only what changed.

Dagster lists every key of a `DynamicPartitionsDefinition` whenever it resolves a partition range:
twice when a ranged run is created (its planned events) and once more for each `partition_keys` in
the run, besides our own calls. Each listing reads the whole `dynamic_partitions` table: 2.2 s for a
million keys on SQLite, four times per batch run. `DynamicPartitionKeys` keeps the keys in memory
and, per call, reads only the rows from the last key it holds on (by primary key), then adds the
new keys. Every caller gets the same immutable sequence until keys are added (a new one then): no
caller can change what the others see, and no call copies a million keys (10 ms each, some 15 calls per run;
Dagster's own caches of this listing hand out one object too). Keys are only ever added by dtkg; a
key deleted by this process drops the list, and every `RECOUNT_S` the keys are counted (a scan of
the index: 0.25 s at a million), so a key another process deleted is listed at most that long. A
count that does not add up reads the whole list.

The keys are held packed (`PackedKeys`): a million work ids as a tuple of `str` took 72 MB of every
process that runs or creates a ranged run; packed they take 15 MB. Dagster's ranged runs only look
up the range's two ends (`index`) and slice between them; its id of the definition (a hash of every
key's JSON) is computed by `DtkgDagsterInstance` from the packed keys.
"""

import contextlib
import hashlib
import json
import operator
import threading
import time
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from itertools import accumulate, repeat
from typing import Any, overload

import sqlalchemy as sa
from dagster._core.storage.event_log.schema import DynamicPartitionsTable
from sqlalchemy.engine import Connection

TABLE = DynamicPartitionsTable
RECOUNT_S = 30.0


# Dagster refuses it in a static partition key (INVALID_PARTITION_SUBSTRINGS) but does not check dynamic
# keys: a listing with such a key stays a tuple (`_extended`, `DynamicPartitionKeys._read_all`).
_SEP = b"\n"
_ITER_CHUNK = 65_536


class PackedKeys(Sequence[str]):
    """An immutable sequence of partition keys in one `bytes` (UTF-8, `\\n` before, between and after
    them) and an array of the separators' offsets. A lookup (`index`, `in`) is one search of the
    bytes for the key between separators (a few ms at a million keys, faster than comparing a
    tuple's million strings); a slice decodes only its keys; iteration decodes 65,536 at a time."""

    __slots__ = ("_blob", "_seps")

    def __init__(self, blob: bytes = _SEP, seps: "array[int] | None" = None) -> None:
        self._blob = blob
        # _seps[i]: the offset of the separator before key i (4 bytes each while the keys take < 4 GiB)
        self._seps = array("I", [0]) if seps is None else seps

    @classmethod
    def of(cls, batches: Iterable[Iterable[str]]) -> "PackedKeys":
        """The keys of every batch, in order, packed once."""
        blob, seps = bytearray(_SEP), array("I", [0])
        for keys in batches:
            seps = _append(blob, seps, keys)
        return cls(bytes(blob), seps)

    def extended(self, keys: Iterable[str]) -> "PackedKeys":
        """A new sequence with `keys` after these (this one is unchanged: callers may hold it)."""
        blob = bytearray(self._blob)
        seps = _append(blob, array(self._seps.typecode, self._seps), keys)
        return PackedKeys(bytes(blob), seps)

    def __len__(self) -> int:
        return len(self._seps) - 1

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> list[str]: ...
    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step != 1:
                return [self[j] for j in range(start, stop, step)]
            return self._decode(start, stop) if start < stop else []
        n = len(self)
        if not -n <= i < n:
            raise IndexError("partition key index out of range")
        i %= n
        return self._blob[self._seps[i] + 1 : self._seps[i + 1]].decode()

    def _decode(self, start: int, stop: int) -> list[str]:
        return self._blob[self._seps[start] + 1 : self._seps[stop]].decode().split("\n")

    def _chunks(self) -> Iterator[list[str]]:
        """The keys, decoded `_ITER_CHUNK` at a time."""
        for start in range(0, len(self), _ITER_CHUNK):
            yield self._decode(start, min(start + _ITER_CHUNK, len(self)))

    def __iter__(self) -> Iterator[str]:
        for chunk in self._chunks():
            yield from chunk

    def __reversed__(self) -> Iterator[str]:
        for stop in range(len(self), 0, -_ITER_CHUNK):
            yield from reversed(self._decode(max(0, stop - _ITER_CHUNK), stop))

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._find(key, 0) >= 0

    def index(self, key: Any, start: int = 0, stop: int | None = None) -> int:
        n = len(self)
        start = max(0, start + n if start < 0 else start)
        stop = n if stop is None else max(0, stop + n if stop < 0 else min(stop, n))
        i = self._find(key, start) if isinstance(key, str) and start < n else -1
        if i < 0 or i >= stop:
            raise ValueError(f"{key!r} is not a partition key")
        return i

    def _find(self, key: str, start: int) -> int:
        if "\n" in key:
            return -1  # no key held has one; the search would match across keys
        at = self._blob.find(_SEP + key.encode() + _SEP, self._seps[start])
        return -1 if at < 0 else bisect_left(self._seps, at)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PackedKeys):
            return self._blob == other._blob
        if isinstance(other, (list, tuple)):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        head = ", ".join(map(repr, self[:3]))
        return f"PackedKeys([{head}{', ...' if len(self) > 3 else ''}], {len(self)} keys)"

    def definition_id(self) -> str:
        """Dagster's id of a dynamic partitions definition (the SHA-1 of `json.dumps` of its keys),
        without a JSON text of every key at once."""
        digest = hashlib.sha1(b"[")
        for n, chunk in enumerate(self._chunks()):
            digest.update(((", " if n else "") + json.dumps(chunk)[1:-1]).encode())
        digest.update(b"]")
        return digest.hexdigest()


def _append(blob: bytearray, seps: "array[int]", keys: Iterable[str]) -> "array[int]":
    """Add `keys` to a packing under way; returns the offsets (a wider array once they need it)."""
    keys = list(keys)
    if not keys:
        return seps
    text = "\n".join(keys)
    if text.isascii():  # work ids: one encode for the batch, and each key's length is its bytes'
        data, lengths = text.encode("ascii"), map(len, keys)
    else:
        encoded = [k.encode() for k in keys]
        data, lengths = _SEP.join(encoded), map(len, encoded)
    if data.count(_SEP) != len(keys) - 1:
        raise ValueError("a partition key contains a line break")
    end = len(blob) - 1  # the separator after the last key held
    blob += data
    blob += _SEP
    if len(blob) >= 2**32 and seps.typecode == "I":
        seps = array("Q", seps)
    # Each key moves the next separator by its length + 1 (in C: a million keys in a few ms).
    ends = accumulate(map(operator.add, lengths, repeat(1)), initial=end)
    next(ends)
    seps.extend(ends)
    return seps


def _extended(keys: Sequence[str], new: list[str]) -> Sequence[str]:
    """`keys`, then `new`: packed while every key can be. A key with a line break (Dagster checks
    static keys for one, not dynamic ones; dtkg never adds one) leaves the listing a tuple."""
    if isinstance(keys, PackedKeys):
        with contextlib.suppress(ValueError):
            return keys.extended(new)
    return (*keys, *new)


@dataclass
class _Listing:
    keys: Sequence[str] = field(default_factory=PackedKeys)
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
        listing = _Listing()

        def batches() -> Iterator[list[str]]:
            for rows in _raw_row_batches(
                conn,
                sa.select(TABLE.c.id, TABLE.c.partition).where(TABLE.c.partitions_def_name == name)
                .order_by(TABLE.c.id),
            ):
                listing.last_id = rows[-1][0]
                yield [row[1] for row in rows]

        try:
            listing.keys = PackedKeys.of(batches())
        except ValueError:  # a key with a line break (see `_extended`): read them again, unpacked
            listing.keys = tuple(key for batch in batches() for key in batch)
        return listing

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
            listing.keys = _extended(listing.keys, [key for _, key in newer[1:]])  # callers keep theirs
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
