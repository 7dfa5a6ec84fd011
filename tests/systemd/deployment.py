"""RoleCall installed and running in the test container as docs/operations.md says, and what
the tests do with it: the units' properties and journal, instances, a guest's requests.

The wheels are built on the host (the container has no network) and installed with ``pip
--no-index``; the install commands themselves are read from the "## Install" section of
docs/operations.md and run as they are written, so the guide cannot drift from what is tested.
The controller is initialised as its user, the node enrolled and its files copied to
/etc/rolecall as root's, both units enabled and started with ``systemctl enable --now``. Roles,
instance profiles and instances are made with the project's own command-line tools inside.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.systemd.container import Container, ContainerError
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
#: Where the host puts what the install needs, inside the container.
SOURCE = "/root/rolecall"
WHEELHOUSE = f"{SOURCE}/wheelhouse"
GUEST = f"{SOURCE}/guest.py"
VENV_BIN = "/opt/rolecall/venv/bin"
STATE_DIR = "/var/lib/rolecall"
NODE = "compute1"
ROLE = "s3access"
AGENT = "rolecall-agent"
CONTROLLER = "rolecall-controller"
API_URL = "http://127.0.0.1:8773"
NODE_API_URL = "https://127.0.0.1:8775"
CONTROLLER_TOML = """\
state_dir = "/var/lib/rolecall"

[api]
host = "127.0.0.1"
port = 8773

[node_api]
host = "127.0.0.1"
port = 8775

[metrics]
host = "127.0.0.1"
port = 9773
"""
AGENT_TOML = f"""\
[controller]
urls = ["{NODE_API_URL}"]
certificate = "/etc/rolecall/node.pem"
key = "/etc/rolecall/node.key"
ca_certificate = "/etc/rolecall/ca.pem"
"""
#: The environment of the command-line tools, with what ``init`` printed.
TOOLS_ENV = {
    "PATH": f"{VENV_BIN}:/usr/sbin:/usr/bin:/sbin:/bin",
    "AWS_SHARED_CREDENTIALS_FILE": f"{STATE_DIR}/root-credentials",
    "AWS_PROFILE": "rolecall",
    "AWS_ENDPOINT_URL": API_URL,
}


def build_wheels(destination: Path) -> None:
    """RoleCall's wheel and its dependencies' (cp311, manylinux: Debian 12's Python 3.11 takes
    them), built from a copy of this tree's files (not a stale build/ directory)."""
    if sys.version_info[:2] != (3, 11):
        raise ContainerError(
            "the test container runs Debian 12's Python 3.11, and the wheels are built with this"
            f" interpreter ({sys.version.split()[0]}): run the tests from a Python 3.11 virtualenv"
        )
    with tempfile.TemporaryDirectory(prefix="rolecall-source-") as copy:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO, capture_output=True, check=True,
        )  # fmt: skip
        for name in listed.stdout.decode().split("\0"):
            source = REPO / name
            if name and source.is_file():
                target = Path(copy) / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(source.read_bytes())
        built = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
             copy, "--wheel-dir", str(destination)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    if built.returncode != 0:
        raise ContainerError(f"pip wheel failed ({built.returncode}):\n{built.stderr[-3000:]}")


def install_commands() -> str:
    """The first ``sh`` block of docs/operations.md's "## Install", with the wheels built here as
    what pip installs."""
    text = (REPO / "docs/operations.md").read_text(encoding="utf-8")
    section = text.split("\n## Install\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    assert "/path/to/rolecall" in block, "docs/operations.md: the pip line has changed"
    return block.replace("/path/to/rolecall", f"--no-index --find-links {WHEELHOUSE} rolecall")


def put_sources(container: Container, wheelhouse: Path) -> None:
    """What the install needs, into the container's tree (before it boots)."""
    target = container.path(SOURCE)
    target.mkdir(parents=True)
    (target / "wheelhouse").mkdir()
    for wheel in wheelhouse.glob("*.whl"):
        (target / "wheelhouse" / wheel.name).write_bytes(wheel.read_bytes())
    (target / "systemd").mkdir()
    for unit in (REPO / "systemd").iterdir():
        (target / "systemd" / unit.name).write_bytes(unit.read_bytes())
    (target / "guest.py").write_bytes((REPO / "tests/systemd/guest.py").read_bytes())


@dataclass
class UnitState:
    """What ``systemctl show`` says of a unit."""

    properties: dict[str, str]

    def __getitem__(self, name: str) -> str:
        return self.properties[name]

    @property
    def active(self) -> bool:
        return self["ActiveState"] == "active" and self["SubState"] == "running"

    def __str__(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in self.properties.items())


class Deployment:
    """RoleCall on the container: the controller, this node's agent, and one role with its
    instance profile (`ROLE`)."""

    def __init__(self, container: Container) -> None:
        self.container = container
        #: Instances launched and not yet terminated, for the tests' teardown.
        self.launched: list[str] = []

    # -- installing ------------------------------------------------------------------------

    def install(self) -> None:
        """docs/operations.md's "## Install", as written."""
        self.container.shell(
            f"cd {SOURCE}\n{install_commands()}",
            env={"PIP_DISABLE_PIP_VERSION_CHECK": "1"},
            timeout=300,
        )

    def start_controller(self) -> None:
        """The controller host's steps: its configuration, ``init`` as the service user, and
        ``systemctl enable --now``."""
        self.write_file("/etc/rolecall/controller.toml", CONTROLLER_TOML, mode="0644")
        self.container.run(
            ["runuser", "-u", "rolecall", "--", f"{VENV_BIN}/rolecall-controller",
             "--state-dir", STATE_DIR, "init"],
        )  # fmt: skip
        self.container.run(["systemctl", "enable", "--now", CONTROLLER], timeout=120)

    def start_agent(self) -> None:
        """The hypervisor's steps: enroll the node (as the controller's user), its three files
        into /etc/rolecall (root's, the key 0600), agent.toml, ``systemctl enable --now``."""
        self.container.shell(
            f"""
            runuser -u rolecall -- {VENV_BIN}/rolecall-controller --state-dir {STATE_DIR} \\
                enroll-node {NODE} --out /tmp/{NODE}
            install -o root -g root -m 0600 /tmp/{NODE}/node.key /etc/rolecall/
            install -o root -g root -m 0644 /tmp/{NODE}/node.pem /tmp/{NODE}/ca.pem /etc/rolecall/
            rm -r /tmp/{NODE}
            """
        )
        self.write_file("/etc/rolecall/agent.toml", AGENT_TOML, mode="0644")
        self.container.run(["systemctl", "enable", "--now", AGENT], timeout=120)

    def make_role(self) -> None:
        """The original design's three lines (README): a role EC2 may assume, a policy, an
        instance profile of the same name."""
        for argv in (
            ["iam-rolecreate", "-r", ROLE, "-s", "ec2.amazonaws.com"],
            ["iam-roleaddpolicy", "-r", ROLE, "-e", "Allow", "-a", "s3:*", "-c", "*",
             "-p", "s3star"],
            ["iam-instanceprofilecreate", "-s", ROLE, "-r", ROLE],
        ):  # fmt: skip
            self.tool(argv)

    # -- files, units, journal -------------------------------------------------------------

    def write_file(self, path: str, text: str, mode: str) -> None:
        """Write a file inside as root (atomically: a temporary file renamed into place)."""
        self.container.shell(
            f"umask 077; cat > {path}.new; chmod {mode} {path}.new; mv {path}.new {path}",
            input=text,
        )

    def unit(self, name: str) -> UnitState:
        properties = (
            "ActiveState", "SubState", "Result", "StatusText", "MainPID",
            "NFileDescriptorStore", "NRestarts",
        )  # fmt: skip
        shown = self.container.run(
            ["systemctl", "show", name, *(f"--property={each}" for each in properties)]
        ).stdout
        return UnitState(dict(line.split("=", 1) for line in shown.splitlines() if "=" in line))

    def systemctl(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.container.run(["systemctl", *argv], check=False, timeout=timeout)

    def wait_active(self, name: str, timeout: float = 30) -> UnitState:
        seen: list[UnitState] = []

        def active() -> UnitState | None:
            seen.append(self.unit(name))
            return seen[-1] if seen[-1].active else None

        return wait_until(active, timeout, lambda: f"{name} to be active ({seen[-1]})")

    def now(self) -> float:
        """The container's clock (the host's: containers share it), for journal ``--since``."""
        return time.time()

    def journal(self, unit: str, since: float) -> list[dict[str, Any]]:
        """The unit's journal entries since `since` (Unix time), as journalctl's JSON."""
        shown = self.container.run(
            ["journalctl", "--no-pager", "--output=json", f"--unit={unit}",
             f"--since=@{since:.6f}"],
        ).stdout  # fmt: skip
        return [json.loads(line) for line in shown.splitlines() if line.strip()]

    @staticmethod
    def messages(entries: list[dict[str, Any]]) -> list[str]:
        return [str(entry.get("MESSAGE", "")) for entry in entries]

    # -- the cloud -------------------------------------------------------------------------

    def tool(self, argv: list[str]) -> str:
        """One of RoleCall's command-line tools, as root with the root credentials."""
        return self.container.run(argv, env=TOOLS_ENV).stdout

    def launch(self) -> str:
        """``euca-run-instances`` with the role's instance profile; the instance's id."""
        shown = self.tool(["euca-run-instances", "emi-12345678", "-p", ROLE])
        found = re.search(r"^INSTANCE\t(i-[0-9a-f]+)\t", shown, re.MULTILINE)
        assert found, f"euca-run-instances printed no instance:\n{shown}"
        self.launched.append(found.group(1))
        return found.group(1)

    def terminate(self, instance_id: str) -> None:
        self.tool(["euca-terminate-instances", instance_id])
        if instance_id in self.launched:
            self.launched.remove(instance_id)

    def live_instances(self) -> set[str]:
        """The instances the controller has not terminated (all on this one node)."""
        shown = self.tool(["euca-describe-instances"])
        live = set()
        for line in shown.splitlines():
            columns = line.split("\t")
            if columns[0] == "INSTANCE" and columns[5] not in ("terminated", "shutting-down"):
                live.add(columns[1])
        return live

    def namespaces(self) -> set[str]:
        shown = self.container.run(["ip", "netns", "list"]).stdout
        return {line.split()[0] for line in shown.splitlines() if line.strip()}

    # -- a guest ---------------------------------------------------------------------------

    def guest(
        self, instance_id: str, *argv: str, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """guest.py run in the instance's namespace."""
        return self.container.run(
            ["ip", "netns", "exec", f"rc-{instance_id}", "python3", GUEST, *argv],
            check=False, timeout=timeout,
        )  # fmt: skip

    def credentials(self, instance_id: str, token: str, timeout: float = 10) -> tuple[int, str]:
        """GET the role's credentials as the guest: (status, body), or (0, why) when no
        answer came (refused, reset, timed out)."""
        result = self.guest(
            instance_id, "get", f"/latest/meta-data/iam/security-credentials/{ROLE}",
            "--token", token, "--timeout", str(timeout), timeout=timeout + 20,
        )  # fmt: skip
        if result.returncode != 0:
            return 0, result.stderr.strip()[-300:]
        status, _, body = result.stdout.partition("\n")
        return int(status), body

    def wait_served(self, instance_id: str, timeout: float = 20) -> str:
        """Wait until the agent serves the instance its credentials; a token for it."""
        last: list[str] = ["nothing yet"]

        def served() -> str | None:
            result = self.guest(instance_id, "token", "--timeout", "2")
            if result.returncode != 0:
                last.append(result.stderr.strip()[-300:])
                return None
            token = result.stdout.strip()
            status, body = self.credentials(instance_id, token)
            last.append(f"{status} {body[:200]}")
            return token if status == 200 else None

        return wait_until(served, timeout, lambda: f"the agent to serve {instance_id}: {last[-1]}")

    @contextmanager
    def guest_loop(
        self, instance_id: str, token: str, interval: float = 0.1, timeout: float = 10
    ) -> Iterator[GuestLoop]:
        """A guest's requests in a loop (see guest.py) for as long as the block runs."""
        stop_file = f"/run/rolecall-test-stop-{instance_id}"
        self.container.run(["rm", "-f", stop_file])
        process = self.container.spawn(
            ["ip", "netns", "exec", f"rc-{instance_id}", "python3", GUEST, "loop",
             "--role", ROLE, "--token", token, "--stop-file", stop_file,
             "--interval", str(interval), "--timeout", str(timeout), "--seconds", "150"],
        )  # fmt: skip
        loop = GuestLoop()
        try:
            yield loop
        finally:
            self.container.run(["touch", stop_file])
            try:
                output, errors = process.communicate(timeout=timeout + 20)
            except subprocess.TimeoutExpired:
                process.kill()
                output, errors = process.communicate()
            self.container.run(["rm", "-f", stop_file])
        assert process.returncode == 0, f"the guest's loop failed ({process.returncode}): {errors}"
        loop.records = [tuple(each) for each in json.loads(output)["records"]]


class GuestLoop:
    """What a guest's loop saw: ``(started, kind, status or error, seconds)`` per request."""

    def __init__(self) -> None:
        self.records: list[tuple[Any, ...]] = []

    def errors(self) -> list[tuple[Any, ...]]:
        """Requests that got no HTTP answer (refused, reset, timed out)."""
        return [record for record in self.records if not isinstance(record[2], int)]

    def statuses(self, kind: str | None = None) -> dict[int, int]:
        counted: dict[int, int] = {}
        for _, what, status, _ in self.records:
            if isinstance(status, int) and (kind is None or what == kind):
                counted[status] = counted.get(status, 0) + 1
        return counted

    def in_flight(self, start: float, end: float) -> list[tuple[Any, ...]]:
        """Requests under way at some moment from `start` to `end` (Unix time). The guest asks
        one request after another, so an empty list means it had stopped asking."""
        return [
            record for record in self.records if record[0] <= end and record[0] + record[3] >= start
        ]

    def slowest(self) -> float:
        return max((record[3] for record in self.records), default=0.0)

    def summary(self) -> str:
        errors = self.errors()
        return (
            f"{len(self.records)} requests, statuses {self.statuses()}, {len(errors)} without an"
            f" answer{' (first: ' + str(errors[0]) + ')' if errors else ''}, slowest"
            f" {self.slowest():.2f} s"
        )
