"""The client address behind trusted reverse proxies, for ``aws:SourceIp``.

Only proxies the operator names are believed: a connection from one of them may say, in
``X-Forwarded-For``, whom it forwards. Each proxy appends the address it saw, so the list is read
from the right, skipping the trusted proxies; the first address that is not one of them is the
client. What a client wrote further left is never believed, and a malformed entry stops the walk
at the last address known to be true. No I/O here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: Sequence[str]) -> tuple[Network, ...]:
    """``["10.0.0.0/8", "::1"]`` as networks; ValueError names a value that is not one."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address or network") from None
    return tuple(networks)


def _trusted(address: str, proxies: tuple[Network, ...]) -> bool:
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(parsed in network for network in proxies)


def client_address(peer: str, forwarded_for: Sequence[str], proxies: tuple[Network, ...]) -> str:
    """The address of the client: the TCP ``peer``, or, when the peer is a trusted proxy, the
    right-most address of ``forwarded_for`` (the header's values, in order) that is not one."""
    if not proxies or not forwarded_for or not _trusted(peer, proxies):
        return peer
    client = peer
    hops = [hop.strip() for value in forwarded_for for hop in value.split(",")]
    for hop in reversed(hops):
        try:
            address = str(ipaddress.ip_address(hop))
        except ValueError:
            return client  # not an address: nothing further left can be believed
        client = address
        if not _trusted(address, proxies):
            return address
    return client
