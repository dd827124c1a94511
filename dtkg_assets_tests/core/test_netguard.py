"""Private-address guard: unit rules, and refusals on real redirect hops (no traffic leaves the machine)."""

from __future__ import annotations

import ipaddress

import httpx
import pytest

from dtkg_assets.core.errors import DtkgError, Reason
from dtkg_assets.core.http import make_client
from dtkg_assets.core.http_errors import request_error
from dtkg_assets.core.netguard import AllowList, check_host, is_private_address
from dtkg_assets.core.settings import Settings
from dtkg_assets_tests.support.origin import FaultMode


def settings_allowing(settings: Settings, *allow: str) -> Settings:
    return settings.replace(http={"allow_hosts": allow})


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "224.0.0.1", "0.0.0.0",
     "240.0.0.1", "100.64.0.1", "::1", "fe80::1", "fc00::1", "ff02::1", "::", "::ffff:127.0.0.1"],
)
def test_non_public_addresses_are_private(address):
    assert is_private_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700::1111"])
def test_public_addresses_pass(address):
    assert not is_private_address(ipaddress.ip_address(address))


def test_check_host_uses_every_resolved_address():
    def resolver(host: str, port: int) -> list[str]:
        return {"mixed.example": ["93.184.216.34", "10.0.0.5"], "public.example": ["93.184.216.34"]}[host]

    assert check_host("public.example", 443, AllowList(), resolver) == ["93.184.216.34"]
    with pytest.raises(DtkgError) as info:
        check_host("mixed.example", 443, AllowList(), resolver)
    assert info.value.reason is Reason.PRIVATE_ADDRESS and "10.0.0.5" in info.value.detail
    assert check_host("mixed.example", 443, AllowList.parse(["10.0.0.0/8"]), resolver)
    assert check_host("mixed.example", 443, AllowList.parse(["Mixed.Example"]), resolver) == []


def test_allow_list_parses_names_and_cidrs():
    allow = AllowList.parse(["localhost", " 127.0.0.0/8 ", "::1", ""])
    assert allow.allows_name("LOCALHOST") and not allow.allows_name("127.0.0.1")
    assert allow.allows_address(ipaddress.ip_address("127.0.0.2"))
    assert allow.allows_address(ipaddress.ip_address("::1"))
    assert not allow.allows_address(ipaddress.ip_address("10.0.0.1"))


def test_loopback_refused_unless_allow_listed(settings, origin):
    url = origin.add("/secret", b"s" * 10)
    with make_client(settings_allowing(settings)) as client, pytest.raises(DtkgError) as info:
        client.get(url)
    assert info.value.reason is Reason.PRIVATE_ADDRESS and not info.value.transient
    assert origin.total_requests() == 0
    with make_client(settings_allowing(settings, "127.0.0.1/32")) as client:
        assert client.get(url).content == b"s" * 10


@pytest.mark.parametrize("target", ["http://127.0.0.2:{port}/x", "http://169.254.169.254/latest/meta-data/"])
def test_redirect_to_private_address_is_refused(settings, origin, target):
    # The origin is allow-listed by name (localhost), the redirect target is not: refused before connecting.
    port = int(origin.url("/").rsplit(":", 1)[1].split("/")[0])
    url = origin.add("/hop", b"h", FaultMode(redirect_to=target.format(port=port))).replace("127.0.0.1", "localhost")
    with make_client(settings_allowing(settings, "localhost")) as client, pytest.raises(DtkgError) as info:
        client.get(url)
    assert info.value.reason is Reason.PRIVATE_ADDRESS
    assert origin.stats("/hop").requests == 1


def test_redirect_to_file_scheme_is_refused(settings, origin):
    url = origin.add("/to-file", b"f", FaultMode(redirect_to="file:///etc/passwd"))
    with make_client(settings_allowing(settings, "127.0.0.1")) as client:
        with pytest.raises((httpx.HTTPError, DtkgError)) as info:
            client.get(url)
        assert request_error(info.value).reason is Reason.UNSUPPORTED_SCHEME
        # A file:// URL given directly never reaches a socket either.
        with pytest.raises((httpx.HTTPError, DtkgError)) as direct:
            client.get("file:///etc/passwd")
        assert request_error(direct.value).reason is Reason.UNSUPPORTED_SCHEME
    assert origin.stats("/to-file").requests == 1
