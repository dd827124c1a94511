"""How commands open the ledger: writers take the single-writer lock (waiting with a message,
then a clear error); readers use the published snapshot, so they work while a run is writing. A
damaged ledger, a full disk or an unwritable home is one message naming the file (exit 2).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

from dtkg_assets.cli.common import UsageError
from dtkg_assets.core.ledger import Ledger, LedgerCorrupt, LedgerError, default_owner
from dtkg_assets.core.ledger.storage import is_disk_full, storage_error
from dtkg_assets.core.settings import Settings

# DuckDB errors that mean the file or the disk, not the query: worded by `storage_error`.
_STORAGE_ERRORS = (duckdb.IOException, duckdb.FatalException, duckdb.InternalException, duckdb.SerializationException)


@contextmanager
def storage_words(settings: Settings, what: str, *, path: Path | None = None, snapshot: bool = False) -> Iterator[None]:
    """A damaged ledger, a full disk or an unwritable home become one message naming the file and
    what to do (exit 2), never a traceback."""
    path = path or (settings.snapshot_path if snapshot else settings.ledger_path)
    try:
        yield
    except LedgerError as exc:
        raise UsageError(f"dtkg {what}: {exc}") from None
    except duckdb.Error as exc:
        if not (isinstance(exc, _STORAGE_ERRORS) or is_disk_full(exc)):
            raise
        raise UsageError(f"dtkg {what}: {storage_error(exc, path, snapshot=snapshot)}") from None
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        where = Path(exc.filename) if isinstance(exc.filename, str) else path
        raise UsageError(f"dtkg {what}: {storage_error(exc, where)}") from None


@contextmanager
def writer(settings: Settings, what: str) -> Iterator[Ledger]:
    owner = f"dtkg {what} ({default_owner()})"
    with storage_words(settings, what), Ledger.open_writer(settings, owner=owner) as ledger:
        yield ledger


@contextmanager
def reader(settings: Settings, what: str) -> Iterator[Ledger]:
    """The published snapshot, read-only. A live file that is visibly damaged (its header) is said
    first: what the snapshot shows may be all that is left until `dtkg ledger repair`."""
    from dtkg_assets.core.ledger.storage import header_problem

    live = settings.ledger_path
    if not settings.ledger_is_postgres and live.exists() and (problem := header_problem(live)) is not None:
        raise UsageError(f"dtkg {what}: {LedgerCorrupt(live, problem)}")
    with storage_words(settings, what, snapshot=True), Ledger.open_reader(settings) as ledger:
        yield ledger


def preflight(settings: Settings, what: str) -> None:
    """Before launching Dagster runs: a damaged ledger, an unwritable or full home is said here in
    words (exit 2), not from inside a run."""
    from dtkg_assets.core.ledger.recovery import live_problem

    problem = live_problem(settings)
    if problem:
        raise UsageError(f"dtkg {what}: {problem}")
    probe = settings.home / f".dtkg-write-probe.{os.getpid()}"
    try:
        settings.home.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"x")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise UsageError(f"dtkg {what}: {storage_error(exc, settings.ledger_path)}") from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


def ledger_summary(settings: Settings) -> dict[str, Any]:
    from dtkg_assets.core.ledger.queries import summary

    with reader(settings, "summary") as led:
        return summary(led)


def summary_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """The ledger summary (`queries.summary`) as (what, value) rows, in the words every command prints."""
    from dtkg_assets.core.ledger.queries import OUTCOMES

    outcomes = summary["by_outcome"]
    rows = [("works in ledger", str(summary["works"]))]
    rows += [(name, str(outcomes.get(name, 0))) for name in OUTCOMES if name in ("stored", "deduplicated")
             or outcomes.get(name)]
    rows += [(f"failed: {reason}", str(n)) for reason, n in summary["failed_by_reason"].items()]
    rows += [(f"input problem: {reason}", str(n)) for reason, n in summary["input_problems"].items()]
    rows += [("distinct PDFs in store", str(summary["blobs"])), ("bytes in store", f"{summary['blob_bytes']:,}")]
    return rows
