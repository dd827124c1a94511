"""Resources: settings, ledger, store and the HTTP client, configured in one place.

Paths and secrets are fields of `SettingsResource`: the production resource set fills them from
`dg.EnvVar` (DTKG_HOME, DTKG_MAILTO, OPENALEX_API_KEY), so the Launchpad shows which variable each
comes from and a missing one fails the run before any work; the local set (tests, `dagster dev`,
`dtkg`) leaves them to the environment, with `home` as an override (tests point it at a temporary
directory). Every other setting comes from DTKG_* variables and $DTKG_HOME/settings.env through
`Settings.from_env`, read when a run or tick loads it. `DAGSTER_DEPLOYMENT` picks the set, as in
Dagster's `project_fully_featured` example. No `from __future__ import annotations` here: Dagster
reads these annotations at load time.
"""

import atexit
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Optional

import dagster as dg
import httpx
from pydantic import PrivateAttr

from dtkg_assets.core.fleet import shared_state_url
from dtkg_assets.core.http import make_client
from dtkg_assets.core.ledger import Ledger
from dtkg_assets.core.settings import Settings
from dtkg_assets.core.store import Store

DEPLOYMENTS = ("local", "production")


class SettingsResource(dg.ConfigurableResource):
    """The one typed settings object. Set fields override the environment: `home` (DTKG_HOME),
    `mailto` (DTKG_MAILTO, the contact in the User-Agent), `openalex_api_key` (OPENALEX_API_KEY)."""

    home: Optional[str] = None  # noqa: UP045 - Dagster config fields need Optional[...]
    mailto: Optional[str] = None  # noqa: UP045
    openalex_api_key: Optional[str] = None  # noqa: UP045

    def load(self) -> Settings:
        env = dict(os.environ)
        if self.mailto:
            env["DTKG_MAILTO"] = self.mailto
        if self.openalex_api_key:
            env["OPENALEX_API_KEY"] = self.openalex_api_key
        settings = Settings.from_env(env)
        return settings.with_home(self.home) if self.home else settings


class LedgerResource(dg.ConfigurableResource):
    """Single-writer ledger access: runs take the writer lock; sensors and checks read the snapshot."""

    settings: SettingsResource

    @contextmanager
    def writer(self, owner: str) -> Iterator[Ledger]:
        with Ledger.open_writer(self.settings.load(), owner=owner) as ledger:
            yield ledger

    @contextmanager
    def reader(self) -> Iterator[Ledger]:
        with Ledger.open_reader(self.settings.load()) as ledger:
            yield ledger


class StoreResource(dg.ConfigurableResource):
    """The content-addressed PDF store under $DTKG_HOME/store."""

    settings: SettingsResource

    def store(self) -> Store:
        return Store(self.settings.load())


class _ProcessClient:
    """The HTTP client the runs of one process share, while their settings stay the same.

    `dtkg backfill` executes its batch runs one after another in one process. A client per run would
    fetch each host's robots.txt again (one round trip that every worker waits for), forget the
    breakers and the rate-limit spacing at each run boundary, and reopen every connection. Fleet state
    (a PostgreSQL URL) already shares those across processes, so such settings keep a client per run.
    A run worker of `dagster dev` runs one run per process: nothing changes there.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._settings: Settings | None = None
        self._client: httpx.Client | None = None
        atexit.register(self.close)

    def get(self, settings: Settings) -> httpx.Client | None:
        """The shared client for `settings`, or None when these settings keep a client per run."""
        if shared_state_url(settings) is not None:
            return None
        with self._lock:
            if self._client is None or self._settings != settings:
                self._close_locked()
                self._client, self._settings = make_client(settings), settings
            return self._client

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = self._settings = None


_process_client = _ProcessClient()


class HttpClientResource(dg.ConfigurableResource):
    """The pooled, polite `httpx.Client` of a run, shared by the step's worker threads (and by the
    runs of one process with the same settings: `_ProcessClient`)."""

    settings: SettingsResource
    _client: Optional[httpx.Client] = PrivateAttr(default=None)  # noqa: UP045
    _owned: bool = PrivateAttr(default=False)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        settings = self.settings.load()
        shared = _process_client.get(settings)
        self._client, self._owned = (shared, False) if shared is not None else (make_client(settings), True)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._client is not None and self._owned:
            self._client.close()
        self._client = None

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            # Outside a run (e.g. a direct call in a script): create lazily, closed with the resource.
            self._client, self._owned = make_client(self.settings.load()), True
        return self._client


def _resources(settings: SettingsResource) -> dict[str, dg.ConfigurableResource]:
    return {
        "settings": settings,
        "ledger": LedgerResource(settings=settings),
        "store": StoreResource(settings=settings),
        "http": HttpClientResource(settings=settings),
    }


def default_resources(home: str | None = None) -> dict[str, dg.ConfigurableResource]:
    """The local set: everything from the environment, `home` overriding DTKG_HOME."""
    return _resources(SettingsResource(home=home))


def production_resources() -> dict[str, dg.ConfigurableResource]:
    """The production set: the home, the contact and the OpenAlex key must be set, as environment
    variables Dagster resolves when a run or tick starts (and shows by name in the Launchpad)."""
    return _resources(
        SettingsResource(
            home=dg.EnvVar("DTKG_HOME"),
            mailto=dg.EnvVar("DTKG_MAILTO"),
            openalex_api_key=dg.EnvVar("OPENALEX_API_KEY"),
        )
    )


def resources_for(deployment: str | None = None, home: str | None = None) -> dict[str, dg.ConfigurableResource]:
    """The resource set of a deployment (default: $DAGSTER_DEPLOYMENT, else "local")."""
    name = deployment or os.environ.get("DAGSTER_DEPLOYMENT", "local")
    if name not in DEPLOYMENTS:
        raise ValueError(f"DAGSTER_DEPLOYMENT={name!r}: expected one of {', '.join(DEPLOYMENTS)}")
    return production_resources() if name == "production" and home is None else default_resources(home)
