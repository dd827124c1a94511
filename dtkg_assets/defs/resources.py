"""Resources: settings, ledger, store and the per-run HTTP client, configured in one place.

Paths and secrets come from the environment (DTKG_HOME, DTKG_MAILTO, OPENALEX_API_KEY, …) through
`Settings.from_env`; `home` may override DTKG_HOME (tests point it at a temporary directory).
No `from __future__ import annotations` here: Dagster reads these annotations at load time.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Optional

import dagster as dg
import httpx
from pydantic import PrivateAttr

from dtkg_assets.core.http import make_client
from dtkg_assets.core.ledger import Ledger
from dtkg_assets.core.settings import Settings
from dtkg_assets.core.store import Store


class SettingsResource(dg.ConfigurableResource):
    """The one typed settings object; `home` overrides DTKG_HOME when set."""

    home: Optional[str] = None  # noqa: UP045 - Dagster config fields need Optional[...]

    def load(self) -> Settings:
        settings = Settings.from_env()
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


class HttpClientResource(dg.ConfigurableResource):
    """One pooled, polite `httpx.Client` per run, shared by the step's worker threads."""

    settings: SettingsResource
    _client: Optional[httpx.Client] = PrivateAttr(default=None)  # noqa: UP045

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._client = make_client(self.settings.load())

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            # Outside a run (e.g. a direct call in a script): create lazily, closed with the resource.
            self._client = make_client(self.settings.load())
        return self._client


def default_resources(home: str | None = None) -> dict[str, dg.ConfigurableResource]:
    settings = SettingsResource(home=home)
    return {
        "settings": settings,
        "ledger": LedgerResource(settings=settings),
        "store": StoreResource(settings=settings),
        "http": HttpClientResource(settings=settings),
    }
