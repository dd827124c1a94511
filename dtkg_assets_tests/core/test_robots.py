"""robots.txt per RFC 9309 against a real local origin: disallow, 4xx allow, 5xx disallow, one fetch per host."""

from __future__ import annotations

import threading

import pytest

from dtkg_assets.core.errors import DtkgError, Reason
from dtkg_assets.core.http import make_client
from dtkg_assets.core.settings import Settings

ROBOTS = """\
# Generic crawlers
User-agent: *
Disallow: /private
Allow: /private/open$
Disallow: /*.tmp$

User-agent: other-bot
Disallow: /
"""


def robots_settings(settings: Settings, **http) -> Settings:
    return settings.replace(http={"robots_enabled": True, **http})


def test_disallowed_paths_are_never_requested(settings, origin):
    origin.add_robots(ROBOTS)
    urls = {p: origin.add(p, b"x" * 10) for p in ["/public", "/private/paper", "/private/open", "/private/open2",
                                                   "/a.tmp", "/a.tmp.pdf"]}
    outcomes: dict[str, str] = {}
    with make_client(robots_settings(settings)) as client:
        for path, url in urls.items():
            try:
                outcomes[path] = str(client.get(url).status_code)
            except DtkgError as exc:
                outcomes[path] = exc.reason.value
    assert outcomes == {
        "/public": "200",
        "/private/paper": "robots_disallowed",
        "/private/open": "200",  # the longer Allow wins
        "/private/open2": "robots_disallowed",  # "$" anchors the Allow
        "/a.tmp": "robots_disallowed",
        "/a.tmp.pdf": "200",
    }
    for path, outcome in outcomes.items():
        assert origin.stats(path).requests == (1 if outcome == "200" else 0)
    assert origin.stats("/robots.txt").requests == 1
    assert origin.stats("/robots.txt").user_agents[0].startswith("dtkg-assets/")


def test_robots_fetched_once_per_host_across_threads(settings, origin):
    origin.add_robots(ROBOTS)
    url = origin.add("/public", b"p" * 10)
    errors: list[BaseException] = []
    with make_client(robots_settings(settings)) as client:

        def worker() -> None:
            try:
                for _ in range(3):
                    client.get(url)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        # A second host name for the same server is a separate robots scope.
        client.get(url.replace("127.0.0.1", "localhost"))
    assert not errors
    assert origin.stats("/public").requests == 25
    assert origin.stats("/robots.txt").requests == 2


def test_robots_ttl_refetches(settings, origin):
    origin.add_robots("User-agent: *\nDisallow:\n")
    url = origin.add("/doc", b"d" * 10)
    with make_client(robots_settings(settings, robots_ttl_s=0.0)) as client:
        client.get(url)
        client.get(url)
    assert origin.stats("/robots.txt").requests == 2


@pytest.mark.parametrize("status", [404, 403, 410])
def test_robots_4xx_allows_everything(settings, origin, status):
    origin.add_robots("User-agent: *\nDisallow: /\n", status=status)
    url = origin.add("/paper", b"x" * 10)
    with make_client(robots_settings(settings)) as client:
        assert client.get(url).status_code == 200
    assert origin.stats("/paper").requests == 1


@pytest.mark.parametrize("status", [500, 503, 429])
def test_robots_5xx_disallows_everything(settings, origin, status):
    origin.add_robots("User-agent: *\nDisallow:\n", status=status)
    url = origin.add("/paper", b"x" * 10)
    with make_client(robots_settings(settings)) as client:
        for _ in range(2):
            with pytest.raises(DtkgError) as info:
                client.get(url)
            # Transient: the work is retried later, when robots.txt may be back.
            assert info.value.reason is Reason.ROBOTS_UNAVAILABLE and info.value.transient
    assert origin.stats("/paper").requests == 0
    assert origin.stats("/robots.txt").requests == 1  # the verdict is cached for a while


def test_robots_unreachable_disallows(settings):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with make_client(robots_settings(settings)) as client, pytest.raises(DtkgError) as info:
        client.get(f"http://127.0.0.1:{port}/paper.pdf")
    assert info.value.reason is Reason.ROBOTS_UNAVAILABLE


def test_robots_can_be_turned_off(settings, origin):
    origin.add_robots("User-agent: *\nDisallow: /\n")
    url = origin.add("/paper", b"x" * 10)
    with make_client(robots_settings(settings, robots_enabled=False)) as client:
        assert client.get(url).status_code == 200
    assert origin.stats("/robots.txt").requests == 0


def test_product_token_group_applies(settings, origin):
    origin.add_robots("User-agent: *\nDisallow:\n\nUser-agent: dtkg-assets\nDisallow: /no-dtkg\n")
    ok = origin.add("/fine", b"x" * 10)
    blocked = origin.add("/no-dtkg/paper", b"x" * 10)
    with make_client(robots_settings(settings)) as client:
        assert client.get(ok).status_code == 200
        with pytest.raises(DtkgError) as info:
            client.get(blocked)
    assert info.value.reason is Reason.ROBOTS_DISALLOWED
    assert origin.stats("/no-dtkg/paper").requests == 0
