"""agent.netns against real network namespaces (needs root, as CI and developers run).

Every namespace made here has a unique name and is removed in a fixture teardown, also when a
test fails.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from agent import netns


@pytest.fixture
def name() -> Iterator[str]:
    assert os.geteuid() == 0, "namespace tests need root (CI and the demo run as root)"
    chosen = f"rct-{uuid.uuid4().hex[:10]}"
    try:
        yield chosen
    finally:
        subprocess.run(["ip", "netns", "delete", chosen], capture_output=True, check=False)


def addresses(name: str) -> str:
    return subprocess.run(
        ["ip", "-n", name, "-o", "addr", "show", "dev", "lo"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_prepare_creates_the_namespace_and_adds_the_address(name: str) -> None:
    owned = netns.prepare(name)
    assert owned == netns.Ownership(name, created_namespace=True, added_address=True)
    assert netns.exists(name)
    assert "169.254.169.254/32" in addresses(name)
    assert (
        "UP"
        in subprocess.run(
            ["ip", "-n", name, "link", "show", "lo"], capture_output=True, text=True, check=True
        ).stdout
    )


def test_an_existing_namespace_is_adopted_and_left_in_place(name: str) -> None:
    subprocess.run(["ip", "netns", "add", name], check=True)
    owned = netns.prepare(name)
    assert owned.created_namespace is False and owned.added_address is True
    netns.release(owned)
    assert netns.exists(name)
    assert "169.254.169.254" not in addresses(name)


def test_preparing_twice_adds_nothing_the_second_time(name: str) -> None:
    netns.prepare(name)
    again = netns.prepare(name)
    assert again.created_namespace is False and again.added_address is False
    assert addresses(name).count("169.254.169.254") == 1


def test_release_removes_a_namespace_the_agent_created(name: str) -> None:
    owned = netns.prepare(name)
    netns.release(owned)
    assert not netns.exists(name)
    netns.release(owned)  # twice is harmless


def test_a_socket_listens_inside_the_namespace_only(name: str) -> None:
    netns.prepare(name)
    server = netns.listen(name, 0)
    try:
        port = server.getsockname()[1]
        with netns.inside(name):
            client = socket.create_connection((netns.METADATA_ADDRESS, port), timeout=5)
        client.close()
        # From the root namespace the address does not exist at all.
        with pytest.raises(OSError):
            socket.create_connection((netns.METADATA_ADDRESS, port), timeout=0.5).close()
    finally:
        server.close()


def test_the_thread_is_back_in_its_own_namespace_after_an_error(name: str) -> None:
    before = os.readlink("/proc/thread-self/ns/net")
    with pytest.raises(netns.NamespaceError):
        netns.listen("rct-does-not-exist-" + uuid.uuid4().hex[:6], 0)
    assert os.readlink("/proc/thread-self/ns/net") == before
