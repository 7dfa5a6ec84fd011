"""controller/ec2/network.py: the addresses an instance may get, the pool one RunInstances takes
them from, the subnets an operator may configure, and MAC addresses."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator

import pytest

from controller.ec2 import network
from controller.ec2.network import AddressPool, candidates, may_hold, new_mac, parse_subnet
from controller.errors import InsufficientFreeAddressesInSubnet

MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")


def addresses(first: str, last: str) -> list[str]:
    """Every IPv4 address from `first` to `last`, both included."""
    low, high = int(ipaddress.IPv4Address(first)), int(ipaddress.IPv4Address(last))
    return [str(ipaddress.IPv4Address(number)) for number in range(low, high + 1)]


# --- candidates ---------------------------------------------------------------------------------


def test_a_slash_28_offers_eleven_addresses_without_the_first_four_and_the_last() -> None:
    assert list(candidates(parse_subnet("10.1.2.0/28"))) == addresses("10.1.2.4", "10.1.2.14")


def test_a_slash_16_offers_all_but_the_reserved_and_those_ending_0_or_255_lowest_first() -> None:
    offered = list(candidates(parse_subnet("10.7.0.0/16")))
    # 256 end in .0 and 256 in .255 (the network and broadcast among them), and .1 to .3.
    assert len(offered) == 65536 - 2 * 256 - 3
    assert not [text for text in offered if text.endswith((".0", ".255"))]
    assert offered[:2] == ["10.7.0.4", "10.7.0.5"]
    assert offered[-1] == "10.7.255.254"
    assert offered == sorted(offered, key=lambda text: int(ipaddress.IPv4Address(text)))
    assert not {"10.7.0.0", "10.7.0.1", "10.7.0.2", "10.7.0.3", "10.7.255.255"} & set(offered)


def test_link_local_skips_the_metadata_block_and_its_first_and_last_slash_24() -> None:
    offered = list(candidates(parse_subnet("169.254.0.0/16")))
    assert len(offered) == 65536 - 3 * 256 - 2 * 253
    assert offered[0] == "169.254.1.1"
    assert offered[-1] == "169.254.254.254"
    reserved = [
        ipaddress.IPv4Network(block)
        for block in ("169.254.0.0/24", "169.254.169.0/24", "169.254.255.0/24")
    ]
    assert not [text for text in offered if any(ipaddress.IPv4Address(text) in r for r in reserved)]
    # Around the metadata service's block: right up to it, and right after it.
    assert "169.254.168.254" in offered and "169.254.170.1" in offered
    for never in ("169.254.169.254", "169.254.169.253", "169.254.169.123"):
        assert never not in offered


@pytest.mark.parametrize(
    "subnet",
    ["169.254.0.0/16", "10.1.2.16/28", "169.254.160.0/19", "169.254.168.0/22", "10.255.252.0/22"],
)
def test_the_candidates_are_the_rules_read_with_ipaddress_address_by_address(subnet: str) -> None:
    """`candidates` walks a /24 at a time with integers and text (for speed): it must offer
    exactly what the rules give when each address is an IPv4Address checked on its own."""
    network = parse_subnet(subnet)
    reserved = [
        ipaddress.IPv4Network(block)
        for block in ("169.254.0.0/24", "169.254.169.0/24", "169.254.255.0/24")
    ]
    expected = []
    for number in range(int(network.network_address) + 4, int(network.broadcast_address)):
        address = ipaddress.IPv4Address(number)
        if number & 0xFF not in (0, 0xFF) and not any(address in block for block in reserved):
            expected.append(str(address))
    assert list(candidates(network)) == expected


def test_a_subnet_inside_the_metadata_block_offers_nothing() -> None:
    assert list(candidates(parse_subnet("169.254.169.0/28"))) == []


@pytest.mark.parametrize("subnet", ["10.1.2.0/28", "10.7.0.0/22", "169.254.160.0/19"])
def test_may_hold_is_true_exactly_for_the_candidates(subnet: str) -> None:
    network = parse_subnet(subnet)
    offered = set(candidates(network))
    around = addresses(str(network.network_address - 2), str(network.broadcast_address + 2))
    assert [text for text in around if may_hold(subnet, text)] == [
        text for text in around if text in offered
    ]


@pytest.mark.parametrize("address", ["", "10.1.2.5/32", "fd00::5", "10.1.2", "a.b.c.d"])
def test_may_hold_is_false_for_what_is_no_ipv4_address(address: str) -> None:
    assert not may_hold("10.1.2.0/24", address)


# --- the pool -----------------------------------------------------------------------------------


def test_the_pool_takes_the_lowest_free_address_first() -> None:
    pool = AddressPool("10.0.0.0/24", set())
    assert [pool.take() for _ in range(3)] == ["10.0.0.4", "10.0.0.5", "10.0.0.6"]


def test_the_pool_skips_the_addresses_in_use_and_records_those_it_hands_out() -> None:
    used = {"10.0.0.4", "10.0.0.6", "10.0.0.7"}
    pool = AddressPool("10.0.0.0/24", used)
    assert [pool.take(), pool.take(), pool.take()] == ["10.0.0.5", "10.0.0.8", "10.0.0.9"]
    assert used == {"10.0.0.4", "10.0.0.5", "10.0.0.6", "10.0.0.7", "10.0.0.8", "10.0.0.9"}


def test_a_freed_address_below_the_others_is_taken_again_first() -> None:
    """An instance launched after one is terminated gets the terminated one's address back
    when it is the lowest free one: the store reports the live addresses only."""
    live = set(addresses("10.0.0.4", "10.0.0.9")) - {"10.0.0.6"}
    assert AddressPool("10.0.0.0/24", live).take() == "10.0.0.6"


def test_an_exhausted_subnet_is_insufficient_free_addresses_naming_it() -> None:
    pool = AddressPool("10.9.9.0/28", set())
    taken = [pool.take() for _ in range(11)]
    assert taken == addresses("10.9.9.4", "10.9.9.14")
    with pytest.raises(InsufficientFreeAddressesInSubnet) as raised:
        pool.take()
    assert "10.9.9.0/28" in raised.value.message
    assert raised.value.code == "InsufficientFreeAddressesInSubnet"
    assert raised.value.status == 400


def test_a_subnet_whose_addresses_are_all_in_use_is_exhausted_at_once() -> None:
    pool = AddressPool("10.9.9.0/28", set(addresses("10.9.9.4", "10.9.9.14")))
    with pytest.raises(InsufficientFreeAddressesInSubnet):
        pool.take()


# --- parse_subnet -------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["10.0.0.0/16", "10.0.0.0/24", "192.168.4.16/28"])
def test_a_slash_16_to_a_slash_28_is_a_subnet(text: str) -> None:
    assert parse_subnet(text) == ipaddress.IPv4Network(text)


@pytest.mark.parametrize(
    "text", ["10.0.0.0/8", "10.0.0.0/15", "10.0.0.0/29", "10.0.0.0/30", "10.0.0.1/32", "10.0.0.1"]
)
def test_a_block_larger_than_a_slash_16_or_smaller_than_a_slash_28_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"must be a /16 to a /28, as a VPC subnet"):
        parse_subnet(text)


def test_host_bits_set_are_refused() -> None:
    with pytest.raises(ValueError, match=r"'10\.0\.0\.1/24' is not a CIDR block: .*host bits"):
        parse_subnet("10.0.0.1/24")


def test_ipv6_is_refused_as_not_supported_yet() -> None:
    with pytest.raises(ValueError, match=r"is not an IPv4 CIDR block \(IPv6 is not supported"):
        parse_subnet("fd00:ec2::/64")


@pytest.mark.parametrize("text", ["garbage", "", "10.0.0.0/33", "300.1.0.0/16", "10.0.0.0/ab"])
def test_garbage_is_not_a_cidr_block(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not a CIDR block"):
        parse_subnet(text)


# --- MAC addresses ------------------------------------------------------------------------------


def test_a_new_mac_is_locally_administered_unicast_lower_case() -> None:
    taken: set[str] = set()
    macs = [new_mac(lambda mac: False, taken) for _ in range(200)]
    assert len(set(macs)) == 200
    assert set(macs) == taken
    for mac in macs:
        assert MAC.fullmatch(mac), mac
        first = int(mac[:2], 16)
        assert first & 0x01 == 0, f"{mac} is multicast"
        assert first & 0x02 == 0x02, f"{mac} is not locally administered"


def _random_bytes(monkeypatch: pytest.MonkeyPatch, *values: bytes) -> list[int]:
    """Make `secrets.token_bytes` give `values` in turn; the list counts the calls."""
    calls: list[int] = []
    supply: Iterator[bytes] = iter(values)

    def token_bytes(count: int) -> bytes:
        calls.append(count)
        return next(supply)

    monkeypatch.setattr(network.secrets, "token_bytes", token_bytes)
    return calls


def test_the_first_octet_is_forced_to_local_unicast(monkeypatch: pytest.MonkeyPatch) -> None:
    _random_bytes(monkeypatch, b"\xff" * 6, b"\x00" * 6)
    assert new_mac(lambda mac: False, set()) == "fe:ff:ff:ff:ff:ff"
    assert new_mac(lambda mac: False, set()) == "02:00:00:00:00:00"


def test_a_mac_a_live_instance_has_is_drawn_again(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _random_bytes(monkeypatch, b"\x02\x00\x00\x00\x00\x01", b"\x02\x00\x00\x00\x00\x02")
    asked: list[str] = []

    def in_use(mac: str) -> bool:
        asked.append(mac)
        return mac == "02:00:00:00:00:01"

    assert new_mac(in_use, set()) == "02:00:00:00:00:02"
    assert asked == ["02:00:00:00:00:01", "02:00:00:00:00:02"]
    assert calls == [6, 6]


def test_a_mac_taken_earlier_in_the_same_launch_is_drawn_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _random_bytes(monkeypatch, b"\x02" + b"\x11" * 5, b"\x02" + b"\x11" * 5, b"\x02" + b"\x22" * 5)
    taken: set[str] = set()
    first = new_mac(lambda mac: False, taken)
    second = new_mac(lambda mac: False, taken)
    assert (first, second) == ("02:11:11:11:11:11", "02:22:22:22:22:22")
    assert taken == {first, second}


def test_a_mac_that_keeps_colliding_is_given_up_on(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _random_bytes(monkeypatch, *([b"\x02" * 6] * 20))
    with pytest.raises(InsufficientFreeAddressesInSubnet, match="MAC"):
        new_mac(lambda mac: True, set())
    assert len(calls) == 8  # a few tries, not forever
