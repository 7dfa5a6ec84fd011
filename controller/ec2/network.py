"""An instance's network identity: its MAC address, private IPv4 address and interface id.

RoleCall does not run the cloud's network; it hands out the identity the hypervisor gives the VM
(the MAC, in the node API's assignment) and the metadata service reports (``mac``,
``local-ipv4``, ``network/interfaces/macs/…``), so cloud-init configures the interface it finds
by that MAC. The addresses come from a subnet: the node's own (``enroll-node --subnet``), else
the controller's ``ec2.subnet``. See docs/decisions.md, "Instance network identity".

Pure apart from the two store reads the caller passes in as functions.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Callable, Iterator
from typing import Final

from controller.errors import InsufficientFreeAddressesInSubnet

#: The default subnet: link-local, as RoleCall's addresses were before subnets.
DEFAULT_SUBNET: Final = "169.254.0.0/16"
#: As a VPC subnet: from /16 to /28.
SHORTEST_PREFIX: Final = 16
LONGEST_PREFIX: Final = 28
#: Never handed out: the metadata service's own block (169.254.169.254, .253 DNS, .123 NTP),
#: and link-local's first and last /24, which RFC 3927 reserves.
_NEVER: Final = (
    ipaddress.IPv4Network("169.254.169.0/24"),
    ipaddress.IPv4Network("169.254.0.0/24"),
    ipaddress.IPv4Network("169.254.255.0/24"),
)
#: The same blocks as first and last address numbers: `candidates` checks every address of a
#: subnet on each RunInstances, and comparing integers is what keeps that cheap.
_NEVER_NUMBERS: Final = tuple(
    (int(block.network_address), int(block.broadcast_address)) for block in _NEVER
)
_OCTETS: Final = tuple(str(octet) for octet in range(256))
#: Tries before a random MAC is given up on (a collision is one in 2**46 per live instance).
_MAC_TRIES: Final = 8


def parse_subnet(text: str) -> ipaddress.IPv4Network:
    """A subnet CIDR, or ValueError saying what is wrong with it."""
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as error:
        raise ValueError(f"{text!r} is not a CIDR block: {error}") from None
    if not isinstance(network, ipaddress.IPv4Network):
        raise ValueError(f"{text!r} is not an IPv4 CIDR block (IPv6 is not supported yet)")
    if not SHORTEST_PREFIX <= network.prefixlen <= LONGEST_PREFIX:
        raise ValueError(
            f"{text!r} must be a /{SHORTEST_PREFIX} to a /{LONGEST_PREFIX}, as a VPC subnet"
        )
    return network


def candidates(network: ipaddress.IPv4Network) -> Iterator[str]:
    """The addresses of `network` an instance may get, lowest first: as in a VPC subnet, not
    the first four (network, router, DNS, reserved) nor the last (broadcast), never one the
    metadata service or link-local reserves, and none ending in .0 or .255 (legal inside a
    larger block, but some guests' tools take them for a network or a broadcast)."""
    # A /24 at a time, each address as its block's prefix and last octet: a RunInstances walks
    # past every address in use (10,000 on a large cloud) before it finds a free one, and an
    # IPv4Address made, checked and printed per address cost 14 µs each of them.
    first, broadcast = int(network.network_address) + 4, int(network.broadcast_address)
    for block in range(first & ~0xFF, broadcast, 256):
        low, high = max(block + 1, first), min(block + 254, broadcast - 1)
        if low > high or any(start <= low and high <= end for start, end in _NEVER_NUMBERS):
            continue
        prefix = f"{block >> 24}.{block >> 16 & 0xFF}.{block >> 8 & 0xFF}."
        whole = not any(start <= high and low <= end for start, end in _NEVER_NUMBERS)
        for number in range(low, high + 1):
            if whole or _allowed_number(first, broadcast, number):
                yield prefix + _OCTETS[number & 0xFF]


def may_hold(subnet: str, address: str) -> bool:
    """Whether `subnet` could have given `address` (one of its `candidates`): what an instance
    that moves to a node of that subnet needs, since a live-migrated VM keeps its address."""
    try:
        parsed = ipaddress.IPv4Address(address)
    except ValueError:
        return False
    return _allowed(parse_subnet(subnet), parsed)


def _allowed(network: ipaddress.IPv4Network, address: ipaddress.IPv4Address) -> bool:
    return _allowed_number(
        int(network.network_address) + 4, int(network.broadcast_address), int(address)
    )


def _allowed_number(first: int, broadcast: int, number: int) -> bool:
    return (
        first <= number < broadcast
        and number & 0xFF not in (0, 0xFF)
        and not any(low <= number <= high for low, high in _NEVER_NUMBERS)
    )


class AddressPool:
    """The free addresses of one subnet during one RunInstances, taken lowest first."""

    def __init__(self, subnet: str, used: set[str]) -> None:
        self.subnet = subnet
        self._used = used
        self._free = candidates(parse_subnet(subnet))

    def take(self) -> str:
        for address in self._free:
            if address not in self._used:
                self._used.add(address)
                return address
        raise InsufficientFreeAddressesInSubnet(
            f"There are not enough free addresses in subnet '{self.subnet}' to satisfy the"
            " requested number of instances."
        )


def new_mac(in_use: Callable[[str], bool], taken: set[str]) -> str:
    """A random locally administered unicast MAC address that no live instance has."""
    for _ in range(_MAC_TRIES):
        octets = bytearray(secrets.token_bytes(6))
        octets[0] = (octets[0] & 0xFC) | 0x02  # locally administered, unicast
        mac = ":".join(f"{octet:02x}" for octet in octets)
        if mac not in taken and not in_use(mac):
            taken.add(mac)
            return mac
    raise InsufficientFreeAddressesInSubnet("No free MAC address could be found; try again.")
