"""Resources per deployment and the works source config: fast checks, no runs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import dagster as dg
import pytest

from dtkg_assets.core.sources import WorksSource
from dtkg_assets.defs.assets import WorksSourceConfig
from dtkg_assets.defs.resources import SettingsResource, resources_for


def test_works_source_config_has_the_core_fields() -> None:
    """One definition: the Dagster config carries every field of the core's WorksSource (per_page too)."""
    fields = set(WorksSourceConfig.model_fields)
    assert fields == {f.name for f in dataclasses.fields(WorksSource)}
    assert "per_page" in fields
    config = WorksSourceConfig(filter="open_access.is_oa:true", per_page=50)
    assert config.to_source() == WorksSource(filter="open_access.is_oa:true", per_page=50)  # type: ignore[attr-defined]


def test_production_resources_take_paths_and_secrets_from_env_vars(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = resources_for("production")["settings"]
    assert isinstance(settings, SettingsResource)
    monkeypatch.setenv("DTKG_HOME", str(tmp_path / "prod"))
    monkeypatch.setenv("DTKG_MAILTO", "ops@example.org")
    monkeypatch.setenv("OPENALEX_API_KEY", "k-123")
    with dg.build_resources({"settings": settings}) as built:
        loaded = built.settings.load()
    assert loaded.home == tmp_path / "prod"
    assert loaded.http.mailto == "ops@example.org"
    assert loaded.openalex.api_key == "k-123"


def test_local_resources_root_at_the_given_home(tmp_path: Path) -> None:
    settings = resources_for("local", home=str(tmp_path))["settings"]
    assert isinstance(settings, SettingsResource)
    assert settings.load().home == tmp_path
    with pytest.raises(ValueError, match="DAGSTER_DEPLOYMENT"):
        resources_for("staging")
