"""The agent's two processes, as they run (issue 16, item 8): the process that accepts guests'
connections has no privilege at all, and the root process refuses what a hostile serving process
would ask of it, spoken to on its real socket (taken from the running serving process, as code
that took over that process would use it)."""

from __future__ import annotations

import ctypes
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent import capabilities, channel, netns
from agent.privileged import KEPT_CAPABILITIES
from tests.netns.harness import Cloud, delete_namespace, ip, wait_until

_SYS_PIDFD_GETFD = 438


def status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def children_of(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def listening_pids(namespace: str) -> set[int]:
    """The processes holding a socket that listens on port 80 inside `namespace`."""
    shown = subprocess.run(
        ["ip", "netns", "exec", namespace, "ss", "-Hltnp", "sport = :80"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    return {int(pid) for pid in re.findall(r"pid=(\d+)", shown)}


def test_the_process_that_accepts_guest_connections_has_no_privilege(cloud: Cloud) -> None:
    instance_id = cloud.launch()
    namespace = cloud.wait_served(instance_id)
    assert cloud.agent.process is not None
    root = cloud.agent.process.process.pid
    holders = listening_pids(namespace)
    assert holders == set(children_of(root)), (holders, children_of(root))
    for pid in holders:
        found = status(pid)
        assert all(uid != "0" for uid in found["Uid"].split()), found["Uid"]
        assert all(gid != "0" for gid in found["Gid"].split()), found["Gid"]
        assert found["Groups"] == ""
        held = capabilities.process_capabilities(pid)
        assert held == {"CapInh": 0, "CapPrm": 0, "CapEff": 0, "CapBnd": 0, "CapAmb": 0}
        assert found["NoNewPrivs"] == "1"
    # The root process kept what it needs for namespaces, and dropped what started the other.
    kept = sum(1 << capability for capability in KEPT_CAPABILITIES)
    held = capabilities.process_capabilities(root)
    assert (held["CapEff"], held["CapPrm"], held["CapBnd"]) == (kept, kept, kept)


# -- a hostile serving process ----------------------------------------------------------------


def take_channel(cloud: Cloud) -> socket.socket:
    """The serving process's end of its channel to the root process (pidfd_getfd), once the
    agent is ready: from then on, with nothing changing, the serving process itself sends
    nothing on it, so every answer read here is to a request made here."""
    assert cloud.agent.process is not None
    wait_until(lambda: _ready(cloud), 30, "the agent to be ready")
    (serving,) = children_of(cloud.agent.process.process.pid)
    descriptor = int(Path(f"/proc/{serving}/cmdline").read_bytes().split(b"\0")[-2])
    pidfd = os.pidfd_open(serving)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        taken = libc.syscall(_SYS_PIDFD_GETFD, pidfd, descriptor, 0)
        if taken < 0:
            raise OSError(ctypes.get_errno(), "pidfd_getfd")
    finally:
        os.close(pidfd)
    end = socket.socket(fileno=taken)
    end.settimeout(10)
    return end


def _ready(cloud: Cloud) -> bool:
    host = cloud.agent.metrics_url.removeprefix("http://")
    connection = http.client.HTTPConnection(host, timeout=5)
    try:
        connection.request("GET", "/readyz")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def ask(end: socket.socket, **request: Any) -> dict[str, Any]:
    channel.send(end, request)
    data, _, fds = channel.receive(end, channel.MAX_REQUEST_BYTES, 1)
    for fd in fds:
        os.close(fd)
    return dict(json.loads(data))


@pytest.fixture
def planted() -> Iterator[dict[str, str]]:
    """Files in /run/netns a hostile request might name: a symbolic link to the host's
    namespace, a plain file, the host's namespace bind-mounted, a hypervisor's namespace."""
    netns.NETNS_DIR.mkdir(parents=True, exist_ok=True)
    made = {kind: f"rct-{kind}-{uuid.uuid4().hex[:8]}" for kind in ("link", "file", "host", "vm")}
    try:
        (netns.NETNS_DIR / made["link"]).symlink_to("/proc/1/ns/net")
        (netns.NETNS_DIR / made["file"]).write_text("not a namespace")
        ip("netns", "attach", made["host"], str(os.getpid()))  # this process: the host's
        ip("netns", "add", made["vm"])
        yield made
    finally:
        for kind in ("link", "file"):
            (netns.NETNS_DIR / made[kind]).unlink(missing_ok=True)
        for kind in ("host", "vm"):
            delete_namespace(made[kind])


def test_the_root_process_refuses_a_hostile_serving_process(
    cloud: Cloud, planted: dict[str, str]
) -> None:
    nologin_existed = Path("/etc/nologin").exists()
    with take_channel(cloud) as end:
        refusals = {
            "../../etc/nologin": ask(end, op="prepare", netns="../../etc/nologin"),
            "symbolic link": ask(end, op="prepare", netns=planted["link"]),
            "plain file": ask(end, op="prepare", netns=planted["file"]),
            "host's namespace": ask(end, op="prepare", netns=planted["host"]),
            "unprepared listen": ask(end, op="listen", netns=planted["vm"], port=80),
            "another port": ask(end, op="listen", netns=planted["vm"], port=22),
            "unknown operation": ask(end, op="unlink", netns="x"),
        }
        # Not its own: answered, but nothing is removed.
        released = ask(end, op="release", netns=planted["vm"])
    for what, answer in refusals.items():
        assert answer["ok"] is False, what
    assert "namespace name" in refusals["../../etc/nologin"]["error"]
    assert "symbolic link" in refusals["symbolic link"]["error"]
    assert "not a namespace file" in refusals["plain file"]["error"]
    assert "host's own" in refusals["host's namespace"]["error"]
    assert released == {"ok": True}
    assert Path("/etc/nologin").exists() == nologin_existed
    assert (netns.NETNS_DIR / planted["link"]).is_symlink()
    assert (netns.NETNS_DIR / planted["file"]).read_text() == "not a namespace"
    assert netns.exists(planted["vm"]) and netns.exists(planted["host"])
    host_loopback = ip("-o", "addr", "show", "dev", "lo").stdout
    assert "169.254.169.254" not in host_loopback
    # And the agent is none the worse: it still serves a new instance.
    cloud.wait_served(cloud.launch())
    assert cloud.agent.process is not None and cloud.agent.process.process.poll() is None


def test_the_serving_process_runs_code_its_user_has_no_path_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RoleCall may live where the serving user cannot go (a clone in a 0700 folder, a Python
    under /root): the root process hands it its code as directory descriptors. Here a stand-in
    `agent.serving` in a 0700 folder answers on the channel, run through the real spawn."""
    from agent import privileged

    hidden = tmp_path / "hidden"
    package = hidden / "code" / "agent"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "serving.py").write_text(
        "import os, socket, sys\n"
        "peer = socket.socket(fileno=int(sys.argv[-1]))\n"
        "peer.send(f'{os.getuid()} {__file__}'.encode())\n"
    )
    site_packages = hidden / "site-packages"
    site_packages.mkdir()
    for directory in (package.parent, package, site_packages):
        directory.chmod(0o755)
    (package / "serving.py").chmod(0o644)
    (package / "__init__.py").chmod(0o644)
    hidden.chmod(0o700)
    monkeypatch.setattr(privileged, "code_directories", lambda: (package.parent, site_packages))
    mine, theirs = channel.pair()
    environment = {**os.environ, **privileged.serving_python_environment()}
    child = privileged.spawn_serving(theirs, 65534, 65534, environment)
    theirs.close()
    try:
        mine.settimeout(30)
        uid, path = mine.recv(4096).decode().split(" ", 1)
    finally:
        assert child.wait(timeout=30) == 0
        mine.close()
    assert uid == "65534"
    assert path.startswith("/proc/self/fd/") and path.endswith("/agent/serving.py")
    by_path = subprocess.run(  # the path itself stays closed to that user
        ["/usr/bin/test", "-r", str(package / "serving.py")], user=65534, timeout=30
    )
    assert by_path.returncode == 1


def test_a_sigterm_to_both_processes_stops_the_agent_cleanly(cloud: Cloud) -> None:
    """As `kill -TERM -PGID` or `systemctl kill` would: the serving process hears SIGTERM from
    the signaller and again from the root process, and must stop once, without a traceback."""
    instance_id = cloud.launch()
    cloud.wait_served(instance_id)
    assert cloud.agent.process is not None
    (child,) = children_of(cloud.agent.process.process.pid)
    os.kill(child, signal.SIGTERM)
    code = cloud.agent.process.stop()
    output = cloud.agent.process.output
    assert code == 0, output
    assert "Traceback" not in output and "ReactorNotRunning" not in output
