"""core.networks: the one rule for addresses and ranges (allow-lists, trusted proxies)."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network

from core.networks import ip_in, parse_network, parse_networks


def test_addresses_and_ranges_parse() -> None:
    assert parse_network(" 10.1.2.3 ") == IPv4Network("10.1.2.3/32")
    assert parse_network("10.1.2.3/8") == IPv4Network("10.0.0.0/8")
    assert parse_network("2001:DB8::1") == IPv6Network("2001:db8::1/128")
    for bad in ("", "example.com", "10.0.0.0/33", "fe80::1%eth0", "fe80::%eth0/64"):
        assert parse_network(bad) is None, bad
    assert parse_networks(["10.0.0.0/8", "nope", "::1"]) == [IPv4Network("10.0.0.0/8"),
                                                             IPv6Network("::1/128")]


def test_ipv4_mapped_entries_match_ipv4_peers() -> None:
    assert parse_network("::ffff:192.0.2.1") == IPv4Network("192.0.2.1/32")
    assert parse_network("::ffff:192.0.2.0/120") == IPv4Network("192.0.2.0/24")
    for entry in ("::ffff:192.0.2.1", "::ffff:192.0.2.0/120", "192.0.2.1"):
        allowed = parse_networks([entry])
        assert ip_in("192.0.2.1", allowed), entry
        assert ip_in("::ffff:192.0.2.1", allowed), entry  # a dual-stack socket's peer
        assert not ip_in("192.0.3.1", allowed), entry
    assert not ip_in("not-an-ip", parse_networks(["0.0.0.0/0"]))
    assert not ip_in("2001:db8::1", parse_networks(["0.0.0.0/0"]))
