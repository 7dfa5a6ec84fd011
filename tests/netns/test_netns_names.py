"""agent.netns never takes a name or a file in /run/netns on trust (issue 16, item 9).

A namespace name comes from the controller; a file in /run/netns may have been put there by
anyone with root on the host. Neither may make the agent create or remove a file elsewhere, nor
serve an instance in the host's own network namespace. Every file made here has a unique name
and is removed in the fixture's teardown, also when a test fails.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from agent import netns

BAD_NAMES = ["../../tmp/rct-escape", "../rct-escape", "..", ".", "", "a/b", "-x", "x" * 65]


def listing() -> set[str]:
    return set(os.listdir(netns.NETNS_DIR)) if netns.NETNS_DIR.exists() else set()


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_a_malformed_name_is_refused_by_every_operation_and_makes_no_file(bad: str) -> None:
    before = listing()
    for operation in (
        lambda: netns.prepare(bad),
        lambda: netns.listen(bad, 0),
        lambda: netns.release(netns.Ownership(bad, created_namespace=True, added_address=True)),
        lambda: netns.exists(bad),
        lambda: netns.open_namespace(bad),
    ):
        with pytest.raises(netns.NamespaceError, match="namespace name"):
            operation()
    assert not Path("/tmp/rct-escape").exists()
    assert not Path("/run/rct-escape").exists()
    assert listing() == before


def test_a_symbolic_link_to_the_hosts_namespace_is_refused_and_left_alone(name: str) -> None:
    path = netns.NETNS_DIR / name
    path.symlink_to("/proc/1/ns/net")
    home = os.readlink("/proc/thread-self/ns/net")
    with pytest.raises(netns.NamespaceError, match="symbolic link"):
        netns.prepare(name)
    with pytest.raises(netns.NamespaceError, match="symbolic link"):
        netns.listen(name, 0)
    assert os.readlink("/proc/thread-self/ns/net") == home
    assert path.is_symlink()


def test_a_regular_file_is_refused_as_not_a_namespace_and_left_alone(name: str) -> None:
    netns.NETNS_DIR.mkdir(parents=True, exist_ok=True)
    path = netns.NETNS_DIR / name
    path.write_text("not a namespace")
    with pytest.raises(netns.NamespaceError, match="not a namespace file"):
        netns.prepare(name)
    with pytest.raises(netns.NamespaceError, match="not a namespace file"):
        netns.listen(name, 0)
    assert path.read_text() == "not a namespace"


def test_the_hosts_own_namespace_under_any_name_is_refused(name: str) -> None:
    # `ip netns attach NAME PID` names PID's namespace: this process runs in the host's.
    subprocess.run(["ip", "netns", "attach", name, str(os.getpid())], check=True)
    with pytest.raises(netns.NamespaceError, match="host's own network namespace"):
        netns.prepare(name)
    with pytest.raises(netns.NamespaceError, match="host's own network namespace"):
        netns.listen(name, 0)
    host_loopback = subprocess.run(
        ["ip", "-o", "addr", "show", "dev", "lo"], capture_output=True, text=True, check=True
    ).stdout
    assert "169.254.169.254" not in host_loopback


def test_the_host_namespaces_include_this_processs_own() -> None:
    own = os.stat("/proc/self/ns/net")
    assert (own.st_dev, own.st_ino) in netns.HOST_NAMESPACES
