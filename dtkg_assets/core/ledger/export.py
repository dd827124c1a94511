"""Export the ledger for analysts: `manifest.jsonl` (one line per work) and `metrics.json` (summary).

Every number in metrics.json is computed from the same ledger handle as the manifest, so the two
agree with each other and with the ledger (readers export from the published snapshot).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from dtkg_assets.core.ledger import SCHEMA_VERSION, Ledger
from dtkg_assets.core.ledger.queries import jobs_by_state
from dtkg_assets.core.store import resolve_store_path

_STATUS = """CASE WHEN a.state = 'INDEXED' THEN 'stored' WHEN a.state = 'DEDUPED' THEN 'deduped'
                  WHEN a.state = 'FAILED' AND a.failure_class = 'permanent' THEN 'failed'
                  WHEN a.state = 'NO_JOB' THEN 'failed' ELSE 'pending' END"""

MANIFEST_SQL = f"""
SELECT a.work_id, a.doi, a.title, a.publication_year, a.state, {_STATUS} AS status,
       CASE WHEN a.state = 'NO_JOB' THEN 'no_candidates' ELSE a.reason END AS reason, a.last_error AS detail,
       a.failure_class, a.url, a.final_url, a.host, a.candidate_rank, a.candidates, a.sha256, a.path, a.bytes,
       a.elapsed_s, a.mib_s, a.resumed_from, a.attempts, a.http_status, a.decision,
       json_extract_string(j.result, '$.decision_reason') AS decision_reason,
       TRY_CAST(json_extract(j.result, '$.fsync_s') AS DOUBLE) AS fsync_s,
       a.etag, a.last_modified, a.run_id, epoch(a.finished_at) AS finished_at
FROM v_artifacts a LEFT JOIN artifact_jobs j ON j.job_id = a.job_id
ORDER BY a.work_id
"""


def _rows(ledger: Ledger, sql: str) -> list[dict[str, Any]]:
    return ledger.query_dicts(sql)


def metrics(ledger: Ledger) -> dict[str, Any]:
    one = lambda sql: ledger.query(sql)[0][0]  # noqa: E731 - tiny local helper
    by_status = {r["status"]: r["n"] for r in _rows(
        ledger, f"SELECT {_STATUS} AS status, count(*) AS n FROM v_artifacts a GROUP BY ALL")}
    runs = _rows(ledger, "SELECT run_id, kind, owner, epoch(started_at) AS started_at, "
                         "epoch(finished_at) AS finished_at, elapsed_s, artifacts, deduped, failed, bytes, mib_s "
                         "FROM v_runs")
    return {
        "generated_at": time.time(),
        "schema_version": SCHEMA_VERSION,
        "ledger": str(ledger.path),
        "snapshot_age_s": ledger.snapshot_age_s,
        "works": one("SELECT count(*) FROM works"),
        "stored": by_status.get("stored", 0),
        "deduped": by_status.get("deduped", 0),
        "failed": by_status.get("failed", 0),
        "pending": by_status.get("pending", 0),
        "jobs_by_state": jobs_by_state(ledger),
        "bytes_stored": one("SELECT coalesce(sum(bytes), 0) FROM v_artifacts WHERE state = 'INDEXED'"),
        "bytes_linked": one("SELECT coalesce(sum(bytes), 0) FROM v_artifacts WHERE complete"),
        "blobs": one("SELECT count(*) FROM blobs"),
        "blob_bytes": one("SELECT coalesce(sum(size), 0) FROM blobs"),
        "http_requests": one("SELECT count(*) FROM http_attempts"),
        "http_bytes": one("SELECT coalesce(sum(bytes), 0) FROM http_attempts"),
        "input_problems": one("SELECT count(*) FROM input_problems"),
        "failures_by_reason": dict(ledger.query(
            "SELECT reason, count(*) FROM v_artifacts WHERE NOT complete AND reason IS NOT NULL "
            "AND state = 'FAILED' GROUP BY reason ORDER BY reason")),
        "hosts": _rows(ledger, "SELECT host, requests, bytes, errors, error_rate, p50_s, p95_s, p99_s FROM v_hosts"),
        "runs": runs,
    }


def export(ledger: Ledger, out_dir: Path | str) -> dict[str, Any]:
    """Write manifest.jsonl and metrics.json into `out_dir` (atomically each). Returns the metrics."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = _rows(ledger, MANIFEST_SQL)
    root = ledger.settings.store_dir
    for r in rows:  # the ledger keeps paths relative to the store; the manifest names the files
        if r.get("path"):
            r["path"] = str(resolve_store_path(r["path"], root))
    _atomic_write(out / "manifest.jsonl", "".join(json.dumps(r, default=str, sort_keys=True) + "\n" for r in rows))
    summary = metrics(ledger)
    summary["manifest_lines"] = len(rows)
    _atomic_write(out / "metrics.json", json.dumps(summary, default=str, indent=2, sort_keys=True) + "\n")
    return summary


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves nothing half-written behind
        raise
