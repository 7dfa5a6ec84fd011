"""agent.netns against real network namespaces (needs root, as CI and developers run).

Every namespace made here has a unique name and is removed in a fixture teardown, also when a
test fails.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from agent import netns, rtnetlink


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


# -- made without forking, as `ip netns add` makes it -------------------------------------------


def listed() -> set[str]:
    """What `ip netns list` shows."""
    output = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=True
    ).stdout
    return {line.split()[0] for line in output.splitlines() if line.strip()}


def home() -> str:
    return os.readlink("/proc/thread-self/ns/net")


def in_namespace(name: str, *argv: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", name, *argv], capture_output=True, text=True, check=True
    ).stdout


def refuse(*args: object) -> None:
    raise OSError(errno.EPERM, "refused by the test")


def test_a_namespace_is_made_on_this_thread_without_forking(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = home()
    monkeypatch.setattr(os, "fork", refuse)
    netns.prepare(name)
    assert home() == before
    assert netns.exists(name)


def test_a_made_namespace_is_listed_and_entered_by_ip_netns(name: str) -> None:
    netns.prepare(name)
    assert name in listed()
    assert "169.254.169.254/32" in in_namespace(name, "ip", "-o", "addr", "show", "dev", "lo")
    assert "127.0.0.1/8" in in_namespace(name, "ip", "-o", "addr", "show", "dev", "lo")
    assert ",UP," in in_namespace(name, "ip", "-o", "link", "show", "lo")
    # `ip netns exec` enters the very namespace the agent listens in.
    server = netns.listen(name, 0)
    try:
        port = server.getsockname()[1]
        probe = f"import socket; socket.create_connection(('169.254.169.254', {port}), 5)"
        in_namespace(name, sys.executable, "-c", probe)
    finally:
        server.close()


def test_ip_netns_delete_removes_a_namespace_the_agent_made(name: str) -> None:
    netns.prepare(name)
    subprocess.run(["ip", "netns", "delete", name], check=True)
    assert name not in listed()
    assert not netns.exists(name)


def test_a_made_namespace_is_seen_from_another_mount_namespace(name: str) -> None:
    """/run/netns is a shared mount point: the hypervisor's tools in another mount namespace
    see a namespace named after they started."""
    other = subprocess.Popen(["unshare", "--mount", "--propagation", "unchanged", "sleep", "60"])
    try:
        mine = os.readlink("/proc/self/ns/mnt")
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{other.pid}/ns/mnt") == mine:
            assert time.monotonic() < deadline, "unshare did not start"
            time.sleep(0.01)
        netns.prepare(name)
        seen = subprocess.run(
            ["nsenter", "-t", str(other.pid), "-m", "ip", "netns", "exec", name,
             "ip", "-o", "addr", "show", "dev", "lo"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert "169.254.169.254/32" in seen
    finally:
        other.kill()
        other.wait()


def test_the_namespace_directory_is_made_a_shared_mount_point_if_it_is_not_one(
    tmp_path: Path,
) -> None:
    """In a mount namespace of its own, so that the host's /run/netns is not touched (the mount
    goes with that namespace)."""
    script = (
        "import subprocess, sys\n"
        "from pathlib import Path\n"
        "from agent import netns\n"
        "netns._share(Path(sys.argv[1]))\n"
        "print(subprocess.run(['findmnt', '-n', '-o', 'PROPAGATION', '--mountpoint',"
        " sys.argv[1]], capture_output=True, text=True, check=True).stdout.strip())\n"
    )
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", script,
         str(tmp_path)],
        capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert result.stdout.strip() == "shared"


def test_a_failure_inside_a_new_namespace_removes_it_and_the_thread_comes_home(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = home()
    monkeypatch.setattr(rtnetlink.Rtnetlink, "add_to_loopback", refuse)
    with pytest.raises(netns.NamespaceError, match=f"cannot create namespace {name}"):
        netns.prepare(name)
    assert home() == before
    assert not netns.exists(name)
    assert name not in listed()


def test_a_failure_to_name_a_new_namespace_removes_its_file_and_the_thread_comes_home(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = home()
    mount = netns._mount

    def refuse_naming(source: bytes, target: bytes, flags: int) -> None:
        if source.startswith(b"/proc/"):
            refuse()
        mount(source, target, flags)

    monkeypatch.setattr(netns, "_mount", refuse_naming)
    with pytest.raises(netns.NamespaceError, match="refused by the test"):
        netns.prepare(name)
    assert home() == before
    assert not netns.exists(name)


def test_a_namespace_made_meanwhile_by_someone_else_is_adopted(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    subprocess.run(["ip", "netns", "add", name], check=True)
    monkeypatch.setattr(netns, "exists", lambda _name: False)  # as if made just after the check
    owned = netns.prepare(name)
    assert owned == netns.Ownership(name, created_namespace=False, added_address=True)
    assert "169.254.169.254/32" in in_namespace(name, "ip", "-o", "addr", "show", "dev", "lo")
