"""agent.steer's pure part: the nftables text that steers one VM's tap into its instance's
namespace, the names it uses, and which taps it refuses (docs/operations.md, "Wiring a VM to its
metadata service")."""

from __future__ import annotations

import re

import pytest

from agent import steer
from agent.names import InvalidName

NAMESPACE = "rc-i-0123456789abcdef0"


def test_the_host_end_is_rcv_and_twelve_hex_digits_of_the_namespace_name() -> None:
    end = steer.host_end(NAMESPACE)
    assert re.fullmatch(r"rcv[0-9a-f]{12}", end) and len(end) == 15
    assert end == steer.host_end(NAMESPACE) != steer.host_end("rc-i-01234567")


def test_imds0_gets_a_locally_administered_unicast_address_of_its_own() -> None:
    address = steer.inside_address(NAMESPACE)
    first = int(address.split(":")[0], 16)
    assert re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", address)
    assert first & 0x02 and not first & 0x01
    assert address != steer.inside_address("rc-i-01234567")


def test_the_ruleset_replaces_the_table_in_one_transaction() -> None:
    text = steer.ruleset(NAMESPACE, "vnet7")
    table = f"rolecall-{NAMESPACE}"
    lines = text.splitlines()
    assert lines[:3] == [
        f"table netdev {table} {{}}",
        f"delete table netdev {table}",
        f"table netdev {table} {{",
    ]
    assert text.count(f"table netdev {table} {{") == 2  # the empty one, then the whole one


def test_metadata_frames_and_arp_go_to_the_veth_only_from_that_tap() -> None:
    veth = steer.host_end(NAMESPACE)
    mac = steer.inside_address(NAMESPACE)
    text = steer.ruleset(NAMESPACE, "vnet7")
    assert 'type filter hook ingress device "vnet7" priority -500; policy accept;' in text
    assert f'meta iif "vnet7" arp daddr ip 169.254.169.254 fwd to "{veth}"' in text
    assert (
        f'meta iif "vnet7" ip daddr 169.254.169.254 ether daddr set {mac} fwd to "{veth}"' in text
    )
    # Every rule of the tap's chain is bound to the device's index (meta iif).
    tap_chain = text.split("chain tap {")[1].split("}")[0]
    rules = [line.strip() for line in tap_chain.splitlines() if "fwd to" in line]
    assert len(rules) == 2 and all(rule.startswith('meta iif "vnet7" ') for rule in rules)


def test_everything_the_namespace_sends_goes_to_that_tap_and_nowhere_else() -> None:
    veth = steer.host_end(NAMESPACE)
    text = steer.ruleset(NAMESPACE, "vnet7")
    veth_chain = text.split("chain veth {")[1].split("}")[0]
    assert f'type filter hook ingress device "{veth}" priority -500; policy accept;' in veth_chain
    assert [line.strip() for line in veth_chain.splitlines() if "fwd" in line] == ['fwd to "vnet7"']


def test_removal_deletes_the_table_whether_it_exists_or_not() -> None:
    table = f"rolecall-{NAMESPACE}"
    assert steer.removal(NAMESPACE) == f"table netdev {table} {{}}\ndelete table netdev {table}\n"


@pytest.mark.parametrize(
    ("tap", "reason"),
    [
        ("lo", "loopback"),
        ("imds0", "agent's own"),
        ("rcv0123456789ab", "agent's own"),
        ("", "not an interface name"),
        ("a" * 16, "not an interface name"),
        ("a/b", "not an interface name"),
        ("a:b", "not an interface name"),
        ("a b", "not an interface name"),
        ('v"0', "not an interface name"),
        ("-v", "not an interface name"),
        (".", "not an interface name"),
        (7, "not an interface name"),
    ],
)
def test_a_tap_that_is_no_vm_interface_is_refused(tap: object, reason: str) -> None:
    with pytest.raises(steer.InvalidTap, match=reason):
        steer.check_tap(tap)
    if isinstance(tap, str):
        with pytest.raises(steer.InvalidTap):
            steer.ruleset(NAMESPACE, tap)


@pytest.mark.parametrize("tap", ["vnet0", "tap1a2b3c4d-5e", "macvtap3", "a" * 15, "eth0.100"])
def test_the_usual_tap_names_are_taken(tap: str) -> None:
    assert steer.check_tap(tap) == tap


def test_a_bad_namespace_name_never_reaches_nft() -> None:
    with pytest.raises(InvalidName):
        steer.ruleset("rc-x; flush ruleset", "vnet0")
    with pytest.raises(InvalidName):
        steer.removal("../x")


def test_the_steered_namespaces_are_the_netdev_tables_of_the_prefix() -> None:
    names = ["rolecall-rc-i-89abcdef", "other", "rolecall-rc-i-01234567", "rolecall"]
    assert steer.steered_namespaces(names) == ["rc-i-01234567", "rc-i-89abcdef"]
