"""A throwaway PostgreSQL cluster on loopback, for tests, CI and benchmarks (never for production).

`PgCluster().start()` runs `initdb` into a private temporary directory, starts `postgres` on
127.0.0.1 with a free port of its own (no other cluster, no system service is touched) and
`stop()` shuts it down and deletes the directory. `initdb` and `pg_ctl` refuse to run as root, so
as root they run as the `postgres` user (`runuser -u postgres -- …`) and the data directory is
handed to that user; as any other user they run as that user. Durability is switched off (fsync,
synchronous commit, full-page writes) unless ``durable=True``: a crash loses the cluster anyway.

Binaries come from Debian's `postgresql` package (`make system-deps` installs it).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from dtkg_assets_tests.support.net import free_port

_INSTALL_HINT = "install PostgreSQL: `make system-deps` (or `apt-get install postgresql`)"
SUPERUSER = "postgres"


def pg_bindir() -> Path:
    """Directory with initdb/pg_ctl (the newest Debian PostgreSQL), or a RuntimeError naming the fix."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    raise RuntimeError(f"PostgreSQL server binaries (initdb, pg_ctl) not found; {_INSTALL_HINT}")


class PgCluster:
    """A private PostgreSQL cluster: ``url(db)`` gives a ``postgresql://`` URL for a database on it."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, max_connections: int = 200,
                 durable: bool = False) -> None:
        self.durable = durable  # True: fsync and synchronous commit on (benchmarks of real write costs)
        self.host = host
        self.port = port
        self.max_connections = max_connections
        self.dir: Path | None = None
        self._as_postgres = os.geteuid() == 0
        self.bindir = pg_bindir()

    # ---- commands ---------------------------------------------------------------------------
    def _run(self, *argv: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / argv[0]), *argv[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", SUPERUSER, "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd="/")
        if proc.returncode != 0:
            log = self._log_tail()
            raise RuntimeError(
                f"{' '.join(argv[:2])} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}"
                + (f"\nserver log:\n{log}" if log else "")
            )
        return proc

    def _log_tail(self) -> str:
        if self.dir is None:
            return ""
        try:
            return "\n".join((self.dir / "server.log").read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return ""

    @property
    def data_dir(self) -> Path:
        assert self.dir is not None, "cluster not started"
        return self.dir / "data"

    # ---- lifecycle --------------------------------------------------------------------------
    def start(self) -> PgCluster:
        # Not under pytest's tmp_path: its parents are private to root, and the server runs as postgres.
        self.dir = Path(tempfile.mkdtemp(prefix="dtkg-pg-"))
        if self._as_postgres:
            shutil.chown(self.dir, SUPERUSER, SUPERUSER)
        try:
            self._run("initdb", "-D", str(self.data_dir), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8",
                      "--locale=C", "--no-sync", timeout=120)
            if not self.port:
                self.port = free_port(self.host)
            options = " ".join([
                f"-p {self.port}", f"-c listen_addresses={self.host}", f"-k {self.dir}",
                f"-c max_connections={self.max_connections}", "-c shared_buffers=128MB",
                *([] if self.durable else ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]),
            ])
            self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.dir / "server.log"), "-o", options,
                      "-w", "-t", "60", "start", timeout=90)
        except BaseException:
            self._remove()
            raise
        return self

    def stop(self) -> None:
        if self.dir is None:
            return
        try:
            if (self.data_dir / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop", timeout=60)
        finally:
            self._remove()

    def _remove(self) -> None:
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> PgCluster:
        return self.start() if self.dir is None else self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ---- databases --------------------------------------------------------------------------
    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{dbname}"

    def create_database(self, dbname: str) -> str:
        """CREATE DATABASE (dropping an older one of that name); returns its URL."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as con:
            con.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))
            con.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        return self.url(dbname)

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        import psycopg

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with psycopg.connect(self.url(), connect_timeout=5):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
