"""IP addresses and CIDR ranges: one rule for trusted proxies, API-key allow-lists and the API.

An entry is an IPv4/IPv6 address or CIDR range. IPv6 zone ids (``fe80::1%eth0``) name an
interface of one host, meaningless to compare a peer address with: refused everywhere.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def parse_network(entry: str) -> IPNetwork | None:
    """The entry as a network (an address is a /32 or /128), or None if it is neither.

    IPv4-mapped IPv6 entries (``::ffff:192.0.2.1``) become the IPv4 network: a peer's mapped
    address is compared as IPv4 (``ip_in``), so the mapped form could never match."""
    entry = entry.strip()
    if "%" in entry:
        return None
    try:
        network = ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return None
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_IPV4_MAPPED):
        mapped = network.network_address.ipv4_mapped
        assert mapped is not None
        return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


def parse_networks(entries: Iterable[str]) -> list[IPNetwork]:
    """The entries that are addresses or ranges; the others are skipped."""
    return [net for net in map(parse_network, entries) if net is not None]


def ip_in(ip: str, networks: Iterable[IPNetwork]) -> bool:
    """Whether the address is in one of the networks (an IPv4-mapped IPv6 address as IPv4)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address.version == net.version and address in net for net in networks)
