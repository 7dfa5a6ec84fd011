"""aws:SourceIp behind trusted reverse proxies: only what a trusted proxy appended is believed."""

from __future__ import annotations

import pytest

from controller.config import ConfigError, config_from_string
from controller.forwarded import Network, client_address, parse_networks

PROXIES = parse_networks(["127.0.0.1", "10.0.0.0/8", "fd00::/8"])
NONE: tuple[Network, ...] = ()

# (rule, trusted proxies, peer, X-Forwarded-For values, expected client)
CASES = [
    ("no proxies configured: the peer", NONE, "127.0.0.1", ["203.0.113.9"], "127.0.0.1"),
    (
        "an untrusted peer's header is ignored",
        PROXIES,
        "198.51.100.1",
        ["203.0.113.9"],
        "198.51.100.1",
    ),
    ("a trusted peer without the header is the client", PROXIES, "127.0.0.1", [], "127.0.0.1"),
    ("one trusted proxy", PROXIES, "127.0.0.1", ["203.0.113.9"], "203.0.113.9"),
    (
        "what the client wrote further left is never believed",
        PROXIES,
        "127.0.0.1",
        ["192.0.2.66, 203.0.113.9"],
        "203.0.113.9",
    ),
    (
        "a chain of trusted proxies is skipped",
        PROXIES,
        "127.0.0.1",
        ["203.0.113.9, 10.1.2.3"],
        "203.0.113.9",
    ),
    (
        "several header lines read as one list",
        PROXIES,
        "127.0.0.1",
        ["203.0.113.9", "10.1.2.3"],
        "203.0.113.9",
    ),
    (
        "garbage stops the walk at the last true address",
        PROXIES,
        "127.0.0.1",
        ["junk, 10.1.2.3"],
        "10.1.2.3",
    ),
    (
        "an address with a port is not believed",
        PROXIES,
        "127.0.0.1",
        ["203.0.113.9:443"],
        "127.0.0.1",
    ),
    ("IPv6 through a trusted IPv6 proxy", PROXIES, "fd00::1", ["2001:db8::5"], "2001:db8::5"),
    (
        "only trusted proxies: the left-most of them",
        PROXIES,
        "127.0.0.1",
        ["10.9.9.9, 10.1.1.1"],
        "10.9.9.9",
    ),
]


@pytest.mark.parametrize(
    ("proxies", "peer", "forwarded", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_the_client_address_believes_trusted_proxies_only(
    proxies: tuple[Network, ...], peer: str, forwarded: list[str], expected: str
) -> None:
    assert client_address(peer, forwarded, proxies) == expected


def test_trusted_proxies_are_read_from_the_configuration() -> None:
    config = config_from_string('[api]\ntrusted_proxies = ["127.0.0.1", "10.0.0.0/8"]\n')
    assert config.trusted_proxies == ("127.0.0.1", "10.0.0.0/8")


@pytest.mark.parametrize("value", ['["10.0.0.0/33"]', '["proxy.example"]', '"127.0.0.1"', "[1]"])
def test_a_bad_trusted_proxy_is_refused_naming_the_key(value: str) -> None:
    with pytest.raises(ConfigError, match=r"api\.trusted_proxies"):
        config_from_string(f"[api]\ntrusted_proxies = {value}\n")
