"""Shared fixtures: local origin, nginx, isolated settings, the sample corpus, PDF bytes."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dtkg_assets.core.settings import Settings
from dtkg_assets.demo.sample import SampleCorpus, build_sample_corpus
from dtkg_assets_tests.support.demo_home import DemoHome, make_demo_home
from dtkg_assets_tests.support.nginx import NginxServer
from dtkg_assets_tests.support.origin import OriginServer
from dtkg_assets_tests.support.pgcluster import PgCluster

# The smallest end PDF validation accepts: a cross-reference trailer, startxref and %%EOF.
PDF_TAIL = b"\ntrailer\n<< /Size 1 >>\nstartxref\n9\n%%EOF\n"


def pdf_bytes(size: int, seed: int = 0) -> bytes:
    """A valid-looking PDF of exactly `size` bytes (>= 64): `%PDF-1.7` header, incompressible
    filler, trailer + `%%EOF`. Fast enough for multi-MiB engine tests."""
    head, tail = b"%PDF-1.7\n", PDF_TAIL
    if size < len(head) + len(tail) + 16:
        raise ValueError(f"pdf_bytes needs at least {len(head) + len(tail) + 16} bytes, got {size}")
    filler = random.Random(seed).randbytes(size - len(head) - len(tail))
    # Keep the filler free of the markers validation looks for, so only head/tail carry them.
    filler = filler.replace(b"%", b"#").replace(b"<", b"(")
    return head + filler + tail


def loopback_env(home: Path, **extra: str) -> dict[str, str]:
    """Environment for a `dtkg` child process: a private home, loopback allowed, no rate limits,
    robots or metadata cache, fast backoff, no quota floor. The caller's own DTKG_* are dropped."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DTKG_") and k != "DAGSTER_HOME"}
    env.update(
        DTKG_HOME=str(home),
        DTKG_QUOTA_FREE_BYTES_MIN="0",
        DTKG_ALLOW_HOSTS="127.0.0.1,localhost",
        DTKG_RATE_LIMITS="*=0",
        DTKG_HTTP_ROBOTS_ENABLED="0",
        DTKG_HTTP_CACHE_ENABLED="0",
        DTKG_HTTP_BACKOFF_INITIAL_S="0.01",
        DTKG_HTTP_BACKOFF_MAX_S="0.1",
        # No test resolves a name beyond loopback: the DOI (doi.org) is tried only where a test points
        # DTKG_LANDING_DOI_RESOLVER at its own origin.
        DTKG_LANDING_DOI="0",
    )
    env.update(extra)
    return env


@pytest.fixture(name="pdf_bytes")
def pdf_bytes_fixture() -> Callable[[int, int], bytes]:
    return pdf_bytes


@pytest.fixture
def origin() -> Iterator[OriginServer]:
    server = OriginServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nginx_root(tmp_path: Path) -> Path:
    root = tmp_path / "nginx-root"
    root.mkdir()
    return root


@pytest.fixture
def nginx(nginx_root: Path) -> Iterator[NginxServer]:
    server = NginxServer(nginx_root).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Isolated home, no quota floor, loopback allowed, no rate limits/robots/cache, fast backoff."""
    return (
        Settings()
        .with_home(tmp_path / "home")
        .replace(
            quota={"free_bytes_min": 0},
            io={"fsync": True},
            http={
                "allow_hosts": ("127.0.0.1", "localhost", "::1"),
                "rate_limits": {"*": 0.0},
                "robots_enabled": False,
                "backoff_initial_s": 0.01,
                "backoff_max_s": 0.05,
                "retry_after_cap_s": 2.0,
                "cache_enabled": False,
            },
            landing={"doi": False},  # no doi.org from tests; landing tests point the resolver at their origin
        )
    )


@pytest.fixture(scope="session")
def sample_corpus(tmp_path_factory: pytest.TempPathFactory) -> SampleCorpus:
    return build_sample_corpus(tmp_path_factory.mktemp("sample-corpus"))


@pytest.fixture(scope="session")
def demo_template(tmp_path_factory: pytest.TempPathFactory) -> DemoHome:
    """One `dtkg demo` run in a fresh home per session (per worker when tests run in parallel).
    Never modified: tests that change a demo home work on `copy_home(demo_template, ...)`."""
    return make_demo_home(tmp_path_factory.mktemp("demo-template") / "home")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One throwaway PostgreSQL cluster on loopback for the whole session (see dtkg_assets_tests.support.pgcluster)."""
    cluster = PgCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: PgCluster, request: pytest.FixtureRequest) -> str:
    """A fresh, empty database on the session cluster for this test; its postgresql:// URL."""
    import re

    name = "t_" + re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:40] + f"_{os.getpid()}"
    return pg_cluster.create_database(name)
