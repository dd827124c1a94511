"""Private-address guard: refuse requests that would reach this machine or its private networks.

A download URL comes from third-party metadata, so it (or any redirect hop) may point at
127.0.0.1, a router on 192.168.x.x or a cloud metadata service on 169.254.169.254. The host is
resolved before connecting and every address must be public, unless the host name or the address is
allow-listed (``DTKG_ALLOW_HOSTS``: host names or CIDRs; the demo and tests allow-list loopback).

Known limit: the connection resolves the name again, so a DNS answer that changes between the check
and the connect (DNS rebinding) is not caught. Literal addresses and stable names are.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from dtkg_assets.core.errors import DtkgError, Reason

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]


def is_private_address(address: IPAddress) -> bool:
    """True for anything that is not a public unicast address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        # ::ffff:127.0.0.1 reaches 127.0.0.1.
        return is_private_address(address.ipv4_mapped)
    return (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    )


@dataclass(frozen=True)
class AllowList:
    """Host names (exact, case-insensitive) and networks exempt from the guard."""

    names: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = field(default_factory=tuple)

    @classmethod
    def parse(cls, items: Iterable[str]) -> AllowList:
        names: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in items:
            item = raw.strip().lower()
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item.strip("[]"), strict=False))
            except ValueError:
                names.add(item)
        return cls(frozenset(names), tuple(networks))

    def allows_name(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.names

    def allows_address(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def check_host(host: str, port: int, allow: AllowList, resolver: Resolver = system_resolver) -> list[str]:
    """Raise ``DtkgError(PRIVATE_ADDRESS)`` unless every address of ``host`` is public or allowed.

    Returns the addresses checked (empty when the name itself is allow-listed).
    """
    bare = host.strip("[]").lower()
    if allow.allows_name(bare):
        return []
    try:
        addresses = [ipaddress.ip_address(bare)]
    except ValueError:
        try:
            addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in resolver(bare, port)]
        except (OSError, UnicodeError) as exc:
            raise DtkgError(Reason.CONNECT_ERROR, f"cannot resolve {host}: {exc}") from exc
    if not addresses:
        raise DtkgError(Reason.CONNECT_ERROR, f"cannot resolve {host}: no addresses")
    for address in addresses:
        if is_private_address(address) and not allow.allows_address(address):
            raise DtkgError(
                Reason.PRIVATE_ADDRESS,
                f"{host} resolves to non-public address {address}; allow-list it in DTKG_ALLOW_HOSTS to fetch it",
            )
    return [str(a) for a in addresses]
