"""The throwaway PostgreSQL cluster the scale-out tests run on (real server, loopback, temp dir)."""

from __future__ import annotations

import os
import pwd

import psycopg

from dtkg_assets_tests.support.pgcluster import SUPERUSER, PgCluster


def test_session_cluster_serves_isolated_databases_on_loopback(pg_cluster: PgCluster, pg_url: str) -> None:
    assert pg_url.startswith(f"postgresql://{SUPERUSER}@127.0.0.1:{pg_cluster.port}/")
    other = pg_cluster.create_database("isolation_probe")
    with psycopg.connect(pg_url, autocommit=True) as a, psycopg.connect(other, autocommit=True) as b:
        a.execute("CREATE TABLE only_here (x int)")
        assert a.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
        assert b.execute("SELECT to_regclass('only_here')").fetchone() == (None,)
    assert pg_cluster.dir is not None and pg_cluster.dir.name.startswith("dtkg-pg-")  # a temp folder
    if os.geteuid() == 0:
        # initdb/pg_ctl refuse root: the data directory belongs to the postgres user.
        assert pwd.getpwuid(pg_cluster.data_dir.stat().st_uid).pw_name == SUPERUSER


def test_stop_removes_the_cluster_and_frees_the_port() -> None:
    cluster = PgCluster().start()
    where, url = cluster.dir, cluster.url()
    with psycopg.connect(url) as con:
        assert con.execute("SELECT 1").fetchone() == (1,)
    cluster.stop()
    assert where is not None and not where.exists()
    try:
        psycopg.connect(url, connect_timeout=2).close()
    except psycopg.OperationalError:
        pass
    else:
        raise AssertionError("server still answers after stop()")
