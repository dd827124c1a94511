"""Scale-out on PostgreSQL (issue 12): Dagster storage, the shared store, fleet-wide politeness.

Everything here runs on a real PostgreSQL cluster (the session `pg_cluster`), real `dtkg` processes
and the loopback test origin.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import yaml

from dtkg_assets.defs.instance import instance_yaml, pool_limit
from dtkg_assets.origin import OriginServer
from dtkg_assets.settings import Settings
from dtkg_assets_tests.conftest import loopback_env, pdf_bytes

DTKG = str(Path(sys.executable).parent / "dtkg")


def write_works(path: Path, works: dict[str, list[str]]) -> Path:
    with path.open("w") as f:
        for wid, urls in works.items():
            f.write(json.dumps({
                "id": f"https://openalex.org/{wid}", "doi": None, "title": f"Work {wid}", "publication_year": 2024,
                "best_oa_location": {"pdf_url": urls[0], "is_oa": True},
                "locations": [{"pdf_url": u, "is_oa": True} for u in urls],
            }) + "\n")
    return path


def dtkg(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DTKG, *args], env=env, capture_output=True, text=True, timeout=timeout)


# ---- Dagster on PostgreSQL ------------------------------------------------------------------


def test_instance_config_follows_the_backends(tmp_path: Path) -> None:
    duck = Settings().with_home(tmp_path)
    pg_ledger = Settings(ledger=Settings().ledger.__class__(url="postgresql://u@127.0.0.1:5/l")).with_home(tmp_path)
    # Embedded default: the project's dagster.yaml, SQLite storage, one run in the ledger pool.
    default = instance_yaml(duck, {})
    assert "storage" not in yaml.safe_load(default) and pool_limit(default) == 1
    # DAGSTER_PG_URL: PostgreSQL storage and a process per run; the ledger pool is 1 only for DuckDB.
    env = {"DAGSTER_PG_URL": "postgresql://u@127.0.0.1:5/d"}
    on_duck, on_pg = instance_yaml(duck, env), instance_yaml(pg_ledger, env)
    for text in (on_duck, on_pg):
        assert "DAGSTER_PG_URL" in text and "DefaultRunLauncher" in text
    assert pool_limit(on_duck) == 1
    assert (pool_limit(on_pg) or 0) > 1


def test_dtkg_backfill_records_its_runs_in_dagster_postgres_storage(
    tmp_path: Path, origin: OriginServer, pg_cluster, pg_url: str
) -> None:
    urls = {f"W{i}": [origin.add(f"/W{i}.pdf", pdf_bytes(8_000 + i, seed=i))] for i in range(1, 4)}
    works = write_works(tmp_path / "works.jsonl", urls)
    home = tmp_path / "home"
    env = loopback_env(home, DAGSTER_PG_URL=pg_url)
    assert dtkg(env, "works", "import", str(works)).returncode == 0
    proc = dtkg(env, "backfill", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["materialized"] == 3
    # The runs and their per-partition materializations live in PostgreSQL, not in SQLite files.
    assert not list((home / "dagster").rglob("*.db"))
    with psycopg.connect(pg_url) as con:
        statuses = [r[0] for r in con.execute("SELECT status FROM runs").fetchall()]
        partitions = {r[0] for r in con.execute(
            "SELECT partition FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION' "
            "AND asset_key LIKE '%artifact_pdfs%'").fetchall()}
    assert statuses and set(statuses) == {"SUCCESS"}
    assert partitions == {"W1", "W2", "W3"}


# ---- shared store ---------------------------------------------------------------------------


def test_shared_store_keeps_one_blob_per_content_and_stages_per_worker(tmp_path: Path) -> None:
    """DTKG_STORE_DIR: two workers (own homes) finalize the same bytes into one shared blob; each
    stages its parts in its own directory on the store's filesystem (finalize stays a rename)."""
    import hashlib

    from dtkg_assets.core.store import Store

    shared = tmp_path / "shared-store"
    settings = [Settings.from_env({"DTKG_HOME": str(tmp_path / f"home-{w}"), "DTKG_STORE_DIR": str(shared)})
                for w in ("a", "b")]
    stores = [Store(s) for s in settings]
    assert stores[0].root == stores[1].root == shared
    assert stores[0].staging_dir != stores[1].staging_dir
    assert all(s.staging_dir.parent.parent == shared for s in stores)
    body = pdf_bytes(5_000, seed=7)
    sha = hashlib.sha256(body).hexdigest()
    created = []
    for store, work in zip(stores, ("W1", "W2"), strict=True):
        part, _ = store.part_paths(work, "http://127.0.0.1/x.pdf")
        part.write_bytes(body)
        created.append(store.finalize(part, sha).created)
        store.link_work(work, sha)
    assert created == [True, False]
    assert [p.name for p in shared.rglob("*.pdf") if p.parent.name != "works"] == [f"{sha}.pdf"]
    assert sorted(p.name for p in (shared / "works").iterdir()) == ["W1.pdf", "W2.pdf"]
    # The homes hold no store of their own.
    assert not (tmp_path / "home-a" / "store").exists() and not (tmp_path / "home-b" / "store").exists()


# ---- fleet-wide politeness ------------------------------------------------------------------


def _gaps(times: list[float]) -> list[float]:
    ordered = sorted(times)
    return [b - a for a, b in zip(ordered, ordered[1:], strict=False)]


def test_two_processes_share_one_host_rate_limit_and_one_robots_fetch(
    tmp_path: Path, origin: OriginServer, pg_url: str
) -> None:
    """Two `dtkg works download` processes (own homes, own ledgers) on one host: together they keep the
    host's spacing (server-side arrival times) and fetch robots.txt once between them."""
    origin.add_robots("User-agent: *\nAllow: /\n")
    interval = 0.25
    procs = []
    for w in ("1", "2"):
        urls = {f"W{w}0{i}": [origin.add(f"/{w}{i}.pdf", pdf_bytes(6_000 + i, seed=i))] for i in range(6)}
        works = write_works(tmp_path / f"works-{w}.jsonl", urls)
        env = loopback_env(tmp_path / f"home-{w}", DTKG_RATE_LIMITS=f"127.0.0.1={1 / interval}",
                           DTKG_HTTP_ROBOTS_ENABLED="1", DTKG_HTTP_SHARED_STATE_URL=pg_url)
        assert dtkg(env, "works", "import", str(works)).returncode == 0
        procs.append(subprocess.Popen([DTKG, "works", "download", "--workers", "4", "--json"], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert json.loads(out)["works"] == 6 and "failed" not in json.loads(out), out
    times = [t for w in ("1", "2") for i in range(6) for t in origin.stats(f"/{w}{i}.pdf").request_times]
    times += origin.stats("/robots.txt").request_times
    assert len(times) == 13
    # Both processes' requests to the host, together, are spaced by the limit (a little scheduling slack).
    assert min(_gaps(times)) >= interval * 0.9, sorted(_gaps(times))[:3]
    assert origin.stats("/robots.txt").get_requests == 1


def test_breakers_hold_across_processes_and_admit_one_probe(pg_url: str) -> None:
    """Two independent fleet handles (as two processes have): failures seen by one open the breaker
    for the other; after the cooldown exactly one of them is let through as the probe."""
    from dtkg_assets.core.errors import DtkgError, Reason
    from dtkg_assets.core.fleet import FleetBreakers, FleetState

    a_state, b_state = FleetState(pg_url), FleetState(pg_url)
    try:
        a, b = FleetBreakers(a_state, 2, 0.5), FleetBreakers(b_state, 2, 0.5)
        assert a.before_request("h.example") is False
        a.record("h.example", success=False, probe=False)
        assert b.state("h.example") == "closed"
        b.record("h.example", success=False, probe=False)  # the second consecutive failure, fleet-wide
        with pytest.raises(DtkgError) as info:
            a.before_request("h.example")
        assert info.value.reason == Reason.BREAKER_OPEN
        import time

        time.sleep(0.6)
        probes = []
        for br in (a, b, a):
            try:
                probes.append(br.before_request("h.example"))
            except DtkgError:
                probes.append(None)
        assert probes == [True, None, None]  # one probe for the whole fleet
        a.record("h.example", success=True, probe=True)
        assert b.before_request("h.example") is False and b.state("h.example") == "closed"
    finally:
        a_state.close()
        b_state.close()


def test_unreachable_shared_state_is_a_reasoned_transient_failure() -> None:
    from dtkg_assets.core.errors import DtkgError, Reason
    from dtkg_assets.core.fleet import FleetState

    with pytest.raises(DtkgError) as info:
        FleetState("postgresql://nobody:secret@127.0.0.1:1/none?connect_timeout=1")
    assert info.value.reason == Reason.COORDINATION_UNAVAILABLE and info.value.transient
    assert "secret" not in str(info.value)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
