"""`dtkg status`: which features are on, read off the settings."""

from __future__ import annotations

import pytest

from dtkg_assets.cli.status import politeness_features
from dtkg_assets.core.settings import Settings


def test_politeness_features_say_what_is_on() -> None:
    features = politeness_features(Settings())
    assert features["robots"] and features["breakers"] and features["metadata_cache"]
    assert features["rate_limits"]["arxiv.org"] == pytest.approx(1 / 3)
    assert features["offline"] is False
    off = politeness_features(Settings().replace(http={"offline": True, "robots_enabled": False,
                                                       "cache_enabled": False, "breaker_fail_max": 0}))
    assert off["offline"] is True and off["robots"] is False and off["metadata_cache"] is False
    assert off["breakers"] is False
