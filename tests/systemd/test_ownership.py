"""What the agent made outlives ``systemctl stop`` with its namespaces, so it still removes them
when their instances go (issue 17, item 1); and at start it removes a namespace of its own
prefix that no assignment names and that holds nothing of anyone else's, but never one that
does (a VM's tap device)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from tests.systemd.deployment import AGENT, Deployment, wait_until


def test_a_namespace_made_before_a_stop_and_start_goes_with_its_instance(
    restored: Deployment,
) -> None:
    instance_id = restored.launch()
    restored.wait_served(instance_id)
    namespace = f"rc-{instance_id}"
    assert restored.systemctl("stop", AGENT).returncode == 0
    stopped = restored.unit(AGENT)
    assert stopped["ActiveState"] == "inactive", stopped
    # Documented in the unit: the stored sockets go with a stop, the namespaces stay.
    assert stopped["NFileDescriptorStore"] == "0", stopped
    assert namespace in restored.namespaces()

    assert restored.systemctl("start", AGENT).returncode == 0
    restored.wait_served(instance_id)
    restored.terminate(instance_id)
    wait_until(
        lambda: namespace not in restored.namespaces(),
        20,
        lambda: (
            f"the agent to remove {namespace} after the instance was terminated"
            f" (namespaces: {sorted(restored.namespaces())})"
        ),
    )


@pytest.fixture
def stray(restored: Deployment) -> Iterator[str]:
    """A name for a namespace with the agent's prefix and an instance id nobody was given
    (removed afterwards if the test left it)."""
    name = f"rc-i-{secrets.token_hex(9)[:17]}"
    try:
        yield name
    finally:
        if name in restored.namespaces():
            restored.container.run(["ip", "netns", "delete", name])


def make_stray(restored: Deployment, name: str, contents: str) -> None:
    run = restored.container.run
    run(["ip", "netns", "add", name])
    if contents in ("the metadata address", "a veth pair"):
        # What a forgotten instance's namespace holds: the agent's address on an up loopback.
        run(["ip", "-n", name, "link", "set", "lo", "up"])
        run(["ip", "-n", name, "address", "add", "169.254.169.254/32", "dev", "lo"])
    if contents == "a veth pair":
        # Someone else's: a link such as a VM's tap device.
        run(["ip", "-n", name, "link", "add", "rct-a", "type", "veth", "peer", "name", "rct-b"])


@pytest.mark.parametrize("contents", ["nothing", "the metadata address"])
def test_the_agent_removes_at_start_an_unassigned_namespace_of_its_prefix_holding_nothing_foreign(
    restored: Deployment, stray: str, contents: str
) -> None:
    assert restored.systemctl("stop", AGENT).returncode == 0
    make_stray(restored, stray, contents)
    assert restored.systemctl("start", AGENT).returncode == 0
    restored.wait_active(AGENT)
    wait_until(
        lambda: stray not in restored.namespaces(),
        10,
        f"the agent to remove {stray}, which holds {contents} and no assignment names",
    )


def test_the_agent_keeps_an_unassigned_namespace_of_its_prefix_holding_a_foreign_link(
    restored: Deployment, stray: str
) -> None:
    assert restored.systemctl("stop", AGENT).returncode == 0
    make_stray(restored, stray, "a veth pair")
    assert restored.systemctl("start", AGENT).returncode == 0
    restored.wait_active(AGENT)
    # A reconcile at start is over once the agent is ready; give it a moment beyond.
    restored.container.run(["sleep", "2"])
    assert stray in restored.namespaces()
    links = restored.container.run(["ip", "-n", stray, "-o", "link", "show"]).stdout
    assert "rct-a" in links and "rct-b" in links, links
