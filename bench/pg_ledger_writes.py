"""How many ledger write transactions per second PostgreSQL sustains here (sizing for docs/scale-out.md).

A durable throwaway cluster (fsync and synchronous commit ON, loopback) with the ledger's PostgreSQL
schema and `--jobs` planned jobs. Each client connection loops over the write pattern of one artifact:

1. claim up to `--claim` planned jobs (``SELECT … FOR UPDATE SKIP LOCKED`` + lease update), one
   transaction per claim batch;
2. per artifact: claim its effect op (insert, fenced by the token), one transaction;
3. per artifact: complete it (job row, blob upsert, http attempt, version), one transaction.

Prints transactions/s and artifacts/s for 1, 4 and 16 connections, and the per-hour figures.

    .venv/bin/python bench/pg_ledger_writes.py [--seconds 5] [--jobs 60000] [--claim 16]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402

from dtkg_assets.core.ledger import pg_schema  # noqa: E402
from dtkg_assets_tests.support.pgcluster import PgCluster  # noqa: E402

S = pg_schema.SCHEMA


def setup(url: str, jobs: int) -> None:
    with psycopg.connect(url, autocommit=True) as con:
        pg_schema.migrate(con)
        con.execute(
            f"""INSERT INTO {S}.artifact_jobs (job_id, idempotency_key, work_id, url, host, state, created_at)
                SELECT md5(i::text), md5(i::text), 'W' || i, 'http://h' || (i %% 50) || '/x.pdf',
                       'h' || (i %% 50), 'PLANNED', 0 FROM generate_series(1, %s) i""", [jobs])
        con.execute(f"ANALYZE {S}.artifact_jobs")


def worker(url: str, claim: int, stop: float, counts: list[int], idx: int) -> None:
    owner = f"bench-{idx}"
    tx = done = 0
    with psycopg.connect(url) as con:
        while time.monotonic() < stop:
            with con.transaction():
                rows = con.execute(
                    f"""UPDATE {S}.artifact_jobs j SET state = 'LEASED', lease_owner = %s,
                           lease_expires_at = extract(epoch FROM now()) + 120, fencing_token = fencing_token + 1,
                           attempts = attempts + 1
                        WHERE job_id IN (SELECT job_id FROM {S}.artifact_jobs WHERE state = 'PLANNED'
                                         LIMIT %s FOR UPDATE SKIP LOCKED)
                        RETURNING job_id, fencing_token""", [owner, claim]).fetchall()
            tx += 1
            if not rows:
                break
            for job_id, token in rows:
                with con.transaction():
                    op = hashlib.sha256(f"{job_id}:STREAM".encode()).hexdigest()
                    con.execute(
                        f"""INSERT INTO {S}.artifact_ops (op_key, job_id, op_type, effect_key, started_at, owner,
                               fencing_token, result_code, result_json)
                            SELECT %s, %s, 'STREAM', 'k', 0, %s, %s, 'STARTED', '{{}}'
                            WHERE EXISTS (SELECT 1 FROM {S}.artifact_jobs WHERE job_id = %s AND fencing_token = %s
                                          AND lease_owner = %s)""", [op, job_id, owner, token, job_id, token, owner])
                tx += 1
                sha = hashlib.sha256(job_id.encode()).hexdigest()
                with con.transaction():
                    con.execute(
                        f"""UPDATE {S}.artifact_jobs SET state = 'INDEXED', sha256 = %s, path = %s, bytes = 1000,
                               lease_owner = NULL, lease_expires_at = NULL, fencing_token = fencing_token + 1
                            WHERE job_id = %s AND fencing_token = %s AND lease_owner = %s""",
                        [sha, f"{sha[:2]}/{sha}.pdf", job_id, token, owner])
                    con.execute(f"UPDATE {S}.artifact_ops SET finished_at = 1, result_code = 'OK' WHERE op_key = %s",
                                [op])
                    con.execute(f"""INSERT INTO {S}.blobs VALUES (%s, %s, 1000, 1, 0, 0)
                                    ON CONFLICT (sha256) DO UPDATE SET ref_count = {S}.blobs.ref_count + 1""",
                                [sha, f"{sha[:2]}/{sha}.pdf"])
                    con.execute(f"""INSERT INTO {S}.http_attempts (job_id, method, url, host, status, bytes)
                                    VALUES (%s, 'GET', 'http://h/x.pdf', 'h', 200, 1000)""", [job_id])
                    con.execute(f"INSERT INTO {S}.work_versions (work_id, sha256) VALUES (%s, %s)", [job_id, sha])
                tx += 1
                done += 1
    counts[idx * 2] = tx
    counts[idx * 2 + 1] = done


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--jobs", type=int, default=60_000)
    ap.add_argument("--claim", type=int, default=16)
    args = ap.parse_args()
    with PgCluster(durable=True) as cluster:
        for conns in (1, 4, 16):
            url = cluster.create_database(f"bench_{conns}")
            setup(url, args.jobs)
            counts = [0] * (2 * conns)
            stop = time.monotonic() + args.seconds
            t0 = time.monotonic()
            threads = [threading.Thread(target=worker, args=(url, args.claim, stop, counts, i)) for i in range(conns)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.monotonic() - t0
            tx, done = sum(counts[0::2]), sum(counts[1::2])
            print(f"connections={conns:2d} transactions/s={tx / wall:8.0f} artifacts/s={done / wall:7.0f} "
                  f"artifacts/hour={done / wall * 3600:12,.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
