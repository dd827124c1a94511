"""DuckDB ledger: schema and migrations, state machine, leases and fencing, exactly-once ops,
single-writer concurrency with a published read snapshot, analyst views."""

from dtkg_assets.core.ledger.db import (
    Job,
    LeaseLost,
    Ledger,
    LedgerStats,
    canonical_url,
    default_owner,
    job_id_for,
    op_key_for,
    reason_is_transient,
    stable_hash,
)
from dtkg_assets.core.ledger.interface import LeaseGrant, LeaseRequest, LeaseWrite, LedgerBackend, LedgerWriteBackend
from dtkg_assets.core.ledger.lease import GroupCommit, Lease
from dtkg_assets.core.ledger.schema import LATEST as SCHEMA_VERSION
from dtkg_assets.core.ledger.states import COMPLETE, IN_FLIGHT, TRANSITIONS, IllegalTransition, State
from dtkg_assets.core.ledger.storage import (
    HolderInfo,
    LedgerBusy,
    LedgerCorrupt,
    LedgerDiskFull,
    LedgerError,
    LedgerUnavailable,
    LedgerUnwritable,
    lock_path,
)

__all__ = [
    "COMPLETE",
    "IN_FLIGHT",
    "SCHEMA_VERSION",
    "TRANSITIONS",
    "HolderInfo",
    "IllegalTransition",
    "GroupCommit",
    "Job",
    "Lease",
    "LeaseGrant",
    "LeaseRequest",
    "LeaseWrite",
    "LedgerBackend",
    "LedgerWriteBackend",
    "LeaseLost",
    "Ledger",
    "LedgerBusy",
    "LedgerCorrupt",
    "LedgerDiskFull",
    "LedgerError",
    "LedgerStats",
    "LedgerUnavailable",
    "LedgerUnwritable",
    "State",
    "canonical_url",
    "default_owner",
    "job_id_for",
    "lock_path",
    "op_key_for",
    "reason_is_transient",
    "stable_hash",
]
