"""Plumbing for tests that run the real agent against real network namespaces (needs root).

A test builds its own small cloud: a controller process on fixed loopback ports (so it can be
restarted in place), an enrolled node, and ``rolecall-agent`` as a real process serving the
instances placed on that node inside their ``rc-<instance-id>`` namespaces. Guests are further
namespaces joined to an instance's namespace by veth pairs with link-local /30 addresses: they
reach 169.254.169.254 and their own loopback, nothing else (DESIGN.md, "Test network rules").
To reach the controller's public API a guest talks to a relay on its own 127.0.0.1, which the
test process forwards to the controller's port in the root namespace. Guests, links and relays
are the product's own (``agent/guest.py``, which ``make demo`` uses too); this module records
what they make.

Everything made here is recorded in :data:`MADE`, so that fixtures can remove it even when a test
fails and the session can assert nothing was left behind.
"""

from __future__ import annotations

import configparser
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from prometheus_client.parser import text_string_to_metric_families

from agent import netns, steer
from agent.privileged import serving_python_environment
from demo import guest
from demo.guest import (
    GUEST_PREFIX,
    METADATA_ADDRESS,
    ROUTER_PREFIX,
    TOKEN_HEADER,
    TTL_HEADER,
    VETH_PREFIX,
    Answer,
    Guest,
    delete_namespace,
    imds,
    ip,
    link,
    namespaces,
    remove_guest,
    root_veths,
    serves_tokens,
    unique,
)
from tests.e2e.conftest import ACCOUNT_ID, BIN
from tests.waiting import wait_until

__all__ = [
    "ACCOUNT_ID",
    "BIN",
    "METADATA_ADDRESS",
    "TOKEN_HEADER",
    "TTL_HEADER",
    "VETH_PREFIX",
    "Answer",
    "Cloud",
    "ForwardProxy",
    "Guest",
    "Relay",
    "add_namespace",
    "cloud_in",
    "delete_namespace",
    "imds",
    "ip",
    "link",
    "loopback_addresses",
    "make_guest",
    "make_routed_guest",
    "namespace_of",
    "namespaces",
    "remove_guest",
    "root_veths",
    "serves_tokens",
    "unique",
    "wait_until",
]
#: The user the agent's serving process runs as in these tests.
SERVING_USER = "nobody"
EC2_TRUST = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "ec2.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
)
READ_ROLES = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "iam:GetRole", "Resource": "*"}],
    }
)


@dataclass
class Made:
    """Everything this test session created, for the end-of-session leak check."""

    namespaces: set[str] = field(default_factory=set)
    processes: list[subprocess.Popen[str]] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)


MADE = Made()


def loopback_addresses(name: str) -> str:
    return ip("-n", name, "-o", "addr", "show", "dev", "lo").stdout


def children() -> list[str]:
    """Processes whose parent is this test process (none should outlive their test)."""
    found = []
    mine = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ..."; comm may contain spaces and parentheses.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == mine:
            found.append(f"{entry.name} {stat.split('(', 1)[1].rsplit(')', 1)[0]}")
    return found


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports (held together while choosing, then released)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for each in sockets:
            each.bind(("127.0.0.1", 0))
        return [each.getsockname()[1] for each in sockets]


# -- processes -----------------------------------------------------------------------------------


class LoggedProcess:
    """A child process whose merged stdout and stderr is collected line by line by a thread."""

    def __init__(
        self, argv: list[str], env: dict[str, str] | None = None, pass_fds: Sequence[int] = ()
    ) -> None:
        self.argv = argv
        self.process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            pass_fds=tuple(pass_fds),
        )
        MADE.processes.append(self.process)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._closed = False
        # A thread, not select(): lines already buffered by Python are invisible to select().
        drain = threading.Thread(target=self._drain, daemon=True, name=f"drain {argv[0]}")
        MADE.threads.append(drain)
        drain.start()
        self._drain_thread = drain

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 30, start: int = 0) -> re.Match[str]:
        """The first match of `pattern` in a line from line `start` on, waiting for it."""
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines[start:]:
                    match = compiled.search(line)
                    if match:
                        return match
                remaining = deadline - time.monotonic()
                if self._closed or remaining <= 0:
                    break
                self._changed.wait(remaining)
        raise AssertionError(
            f"{Path(self.argv[0]).name} did not log {pattern!r}:\n{''.join(self.lines)}"
        )

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM, then SIGKILL if it does not exit in time; its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._drain_thread.join(timeout=5)
        return self.process.returncode


class ControllerProcess:
    """``rolecall-controller serve`` on ports chosen once, so that a restart with the same state
    directory comes back at the same URLs (the agent keeps its ``--controller-url``)."""

    def __init__(self, state_dir: Path, initialise: bool = True) -> None:
        """`initialise`: run ``init`` first; False for another controller on a state
        directory already initialised (SQLite takes several processes on one store)."""
        self.state_dir = state_dir
        self.api_port, self.node_api_port, self.metrics_port = free_ports(3)
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.node_api_url = f"https://127.0.0.1:{self.node_api_port}"
        self.process: LoggedProcess | None = None
        #: Exit statuses and output of the processes stopped so far, for the teardown checks.
        self.stopped: list[tuple[int, str]] = []
        if initialise:
            init = subprocess.run(
                [BIN / "rolecall-controller", "--state-dir", state_dir, "init",
                 "--account-id", ACCOUNT_ID],
                capture_output=True, text=True, timeout=60, check=True,
            )  # fmt: skip
            assert "Initialised RoleCall" in init.stdout, init.stdout + init.stderr
        credentials = configparser.ConfigParser()
        credentials.read(state_dir / "root-credentials")
        self.access_key_id = credentials["rolecall"]["aws_access_key_id"]
        self.secret_access_key = credentials["rolecall"]["aws_secret_access_key"]

    def start(self) -> None:
        """``serve`` (only: the state directory was initialised once), until both APIs listen."""
        self.spawn()
        self.wait_listening()

    def spawn(self) -> None:
        """``serve``, not waiting for it (start several at once, then `wait_listening`)."""
        assert self.process is None, "the controller is running already"
        self.process = LoggedProcess(
            [str(BIN / "rolecall-controller"), "--state-dir", str(self.state_dir), "serve",
             "--port", str(self.api_port), "--node-api-port", str(self.node_api_port),
             "--metrics-port", str(self.metrics_port)],
            env=daemon_env(),
        )  # fmt: skip

    def wait_listening(self) -> None:
        assert self.process is not None, "the controller was not started"
        self.process.wait_for(r"public API listening on http://")
        self.process.wait_for(r"node API listening on https://")

    def stop(self) -> None:
        if self.process is not None:
            code = self.process.stop()
            self.stopped.append((code, self.process.output))
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            config=Config(retries={"max_attempts": 1}),
        )

    def enroll(self, node: str, out: Path) -> Path:
        subprocess.run(
            [BIN / "rolecall-controller", "--state-dir", self.state_dir, "enroll-node", node,
             "--out", out],
            check=True, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        return out


class AgentProcess:
    """``rolecall-agent`` serving a node's instances on port 80 inside their namespaces."""

    def __init__(
        self,
        controller_url: str | Sequence[str],
        credentials: Path,
        workdir: Path,
        extra_config: str = "",
        controller_config: str = "",
    ) -> None:
        # An explicit (minimal) configuration file: a host's /etc/rolecall/agent.toml must not
        # leak into the test. `extra_config`: more TOML tables, appended; `controller_config`:
        # more keys of [controller]. Several URLs: the agent fails over between them.
        self.config = workdir / "agent.toml"
        # The hypervisor's plug socket: one per agent, under /tmp (a socket's path is short).
        self.plug_directory = Path(tempfile.mkdtemp(prefix="rcplug-", dir="/tmp"))
        self.plug_socket = self.plug_directory / "plug.sock"
        urls = [controller_url] if isinstance(controller_url, str) else list(controller_url)
        # The serving process runs as nobody (a real node has its own rolecall-agent user).
        self.config.write_text(
            f'user = "{SERVING_USER}"\n[controller]\nurls = {json.dumps(urls)}\n'
            + controller_config
            + f'[hypervisor]\nplug_socket = "{self.plug_socket}"\n'
            + extra_config,
            encoding="utf-8",
        )
        self.credentials = credentials
        self.ownership_file = workdir / "namespaces.json"
        self.process: LoggedProcess | None = None
        self.metrics_url = ""
        self.stopped: list[tuple[int, str]] = []

    def start(self) -> None:
        assert self.process is None, "the agent is running already"
        self.process = LoggedProcess(
            [str(BIN / "rolecall-agent"), "--config", str(self.config),
             "--certificate", str(self.credentials / "node.pem"),
             "--key", str(self.credentials / "node.key"),
             "--ca-certificate", str(self.credentials / "ca.pem"),
             "--metrics-port", "0", "--imds-port", "80",
             "--ownership-file", str(self.ownership_file)],
            env=daemon_env(),
        )  # fmt: skip
        found = self.process.wait_for(r"agent metrics listening on (http://\S+)")
        self.metrics_url = found.group(1)

    def stop(self) -> None:
        if self.process is not None:
            code = self.process.stop()
            self.stopped.append((code, self.process.output))
            self.process = None

    @property
    def output(self) -> str:
        return self.process.output if self.process is not None else ""

    def logged(self, text: str, timeout: float = 10) -> None:
        """Wait until the running agent has logged ``text``: its output is read by a thread,
        so a line may arrive a moment after the effect it tells of."""
        assert self.process is not None, "the agent is not running"
        self.process.wait_for(re.escape(text), timeout)

    def command_argv(self, command: str) -> list[str]:
        """``rolecall-agent COMMAND --socket`` this agent's plug socket (plug, unplug, hook)."""
        return [str(BIN / "rolecall-agent"), command, "--socket", str(self.plug_socket)]

    def command(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """``rolecall-agent ARGV`` (plug, unplug, hook) on this agent's plug socket."""
        return subprocess.run(
            [*self.command_argv(argv[0]), *argv[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=daemon_env(),
        )

    def remove_plug_directory(self) -> None:
        shutil.rmtree(self.plug_directory, ignore_errors=True)

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics, keyed ``name`` or ``name{label="value",...}``."""
        return scrape(self.metrics_url.removeprefix("http://"))


def scrape(address: str) -> dict[str, float]:
    """Every sample of http://`address`/metrics, keyed ``name`` or ``name{label="value",...}``."""
    connection = http.client.HTTPConnection(address, timeout=5)
    try:
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
    finally:
        connection.close()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{key}="{value}"' for key, value in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def daemon_env() -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    environment["PYTHONUNBUFFERED"] = "1"
    # The agent's serving process runs as nobody, who may not reach a Python under /root.
    environment.update(serving_python_environment())
    return environment


# -- guests, relays and proxies: agent/guest.py, with what they make recorded for the leak check -


def add_namespace(name: str) -> str:
    """Create namespace `name` with its loopback up; it is recorded for the leak check."""
    MADE.namespaces.add(name)
    return guest.add_namespace(name)


def make_guest(instance_namespace: str, workdir: Path, mac: str | None = None) -> Guest:
    """A guest one link away from the instance's namespace (as a VM's tap device would be)."""
    name = unique(GUEST_PREFIX)
    MADE.namespaces.add(name)
    return guest.make_guest(instance_namespace, workdir, name=name, mac=mac)


def make_routed_guest(instance_namespace: str, workdir: Path) -> Guest:
    """A guest two routed hops away: guest — router — instance (a container inside a VM)."""
    name, router = unique(GUEST_PREFIX), unique(ROUTER_PREFIX)
    MADE.namespaces.update((name, router))
    return guest.make_routed_guest(instance_namespace, workdir, name=name, router=router)


class _Recorded(guest.Forwarder):
    """A forwarder whose threads are recorded for the leak check."""

    def _spawn(self, target: Callable[..., None], *args: Any) -> threading.Thread:
        thread = super()._spawn(target, *args)
        MADE.threads.append(thread)
        return thread


class Relay(_Recorded, guest.Relay):
    """The controller's public API on 127.0.0.1 inside a guest (see :class:`demo.guest.Relay`)."""


class ForwardProxy(_Recorded):
    """A minimal HTTP forward proxy in a guest (what a guest's squid or corporate proxy does):
    it takes ``GET http://169.254.169.254/… HTTP/1.1``, adds ``X-Forwarded-For`` and forwards
    one request per connection to the metadata service, from inside the guest."""

    def _upstream(self, client: socket.socket) -> tuple[socket.socket, bytes]:
        received = b""
        while b"\r\n\r\n" not in received:
            data = client.recv(65536)
            if not data:
                raise OSError("the client closed before sending a request")
            received += data
        head, _, rest = received.partition(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, target, version = request_line.split(" ")
        match = re.fullmatch(r"http://([^/:]+)(?::(\d+))?(/.*)?", target)
        if match is None or match.group(1) != METADATA_ADDRESS:
            raise OSError(f"this proxy only forwards to {METADATA_ADDRESS}, not {target}")
        port = int(match.group(2) or 80)
        length = 0
        headers = []
        for line in header_lines:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
            if name.strip().lower() not in ("proxy-connection", "connection"):
                headers.append(line)
        while len(rest) < length:
            data = client.recv(65536)
            if not data:
                break
            rest += data
        headers += ["X-Forwarded-For: 127.0.0.1", "Connection: close"]
        forwarded = "\r\n".join([f"{method} {match.group(3) or '/'} {version}", *headers])
        with netns.inside(self.namespace):
            upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        upstream.settimeout(10)
        upstream.connect((METADATA_ADDRESS, port))
        upstream.settimeout(None)
        return upstream, forwarded.encode("latin-1") + b"\r\n\r\n" + rest


# -- the whole cloud for one test ----------------------------------------------------------------


def remove_instance_namespaces(instances: Iterable[str]) -> None:
    """The namespaces of these instances, and their steering: a steering table outlives its
    tap (the kernel keeps a netdev chain by its device's name), and the agent, stopped, will
    not see the tap gone."""
    instance_ids = list(instances)
    steered = set(steer.tables()) if instance_ids else set()
    for instance_id in instance_ids:
        if namespace_of(instance_id) in steered:
            steer.remove(namespace_of(instance_id))
        delete_namespace(namespace_of(instance_id))


class Cloud:
    """A controller, an enrolled node with its agent, and what the test adds (instances, guests,
    relays, proxies); :meth:`close` removes all of it, whatever state the test left.
    `agent_config`: TOML tables added to the agent's configuration."""

    def __init__(self, workdir: Path, agent_config: str = "") -> None:
        self.workdir = workdir
        self._cleanup = ExitStack()
        self.instances: list[str] = []
        try:
            self.controller = ControllerProcess(self._directory("controller"))
            self._cleanup.callback(self.controller.stop)
            self.controller.start()
            self.node = unique("hv-")
            credentials = self.controller.enroll(self.node, self._directory("node"))
            self._cleanup.callback(self._remove_instance_namespaces)
            self.agent = AgentProcess(
                self.controller.node_api_url, credentials, self._directory("agent"), agent_config
            )
            self._cleanup.callback(self.agent.remove_plug_directory)
            self._cleanup.callback(self.agent.stop)
            self.agent.start()
            self.iam = self.controller.client("iam")
            self.ec2 = self.controller.client("ec2")
        except BaseException:
            self._cleanup.close()
            raise

    def _directory(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir()
        return path

    def close(self) -> None:
        """Stop relays and proxies, remove guests, stop the agent, remove the instances'
        namespaces, stop the controller: in that order, each step whatever happened before."""
        self._cleanup.close()

    def _remove_instance_namespaces(self) -> None:
        remove_instance_namespaces(self.instances)

    # the control plane

    def profile(self) -> tuple[str, str]:
        """A role that EC2 may assume, in an instance profile of the same name: (name, arn)."""
        name = unique("ip-")
        self.iam.create_role(RoleName=name, AssumeRolePolicyDocument=EC2_TRUST)
        self.iam.put_role_policy(RoleName=name, PolicyName="read", PolicyDocument=READ_ROLES)
        self.iam.create_instance_profile(InstanceProfileName=name)
        self.iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
        return name, f"arn:aws:iam::{ACCOUNT_ID}:instance-profile/{name}"

    def launch(self, profile: str | None = None, **more: Any) -> str:
        """Run an instance on this node (`more`: other RunInstances parameters); its namespace
        is removed at teardown."""
        extra: dict[str, Any] = {"Placement": {"HostId": self.node}, **more}
        if profile is not None:
            extra["IamInstanceProfile"] = {"Name": profile}
        answer = self.ec2.run_instances(ImageId="emi-1", MinCount=1, MaxCount=1, **extra)
        instance_id = str(answer["Instances"][0]["InstanceId"])
        self.instances.append(instance_id)
        MADE.namespaces.add(namespace_of(instance_id))
        return instance_id

    def wait_served(self, instance_id: str, timeout: float = 15) -> str:
        """Wait until the agent serves `instance_id` in its namespace; the namespace's name."""
        name = namespace_of(instance_id)
        wait_until(
            lambda: serves_tokens(name),
            timeout,
            f"the agent to serve {instance_id}:\n{self.agent.output}",
        )
        return name

    # the data plane

    def guest(self, instance_id: str, routed: bool = False, mac: str | None = None) -> Guest:
        """A guest linked to the served instance's namespace, one link or two routed hops away;
        `mac`: its interface's MAC address (one link only)."""
        namespace = self.wait_served(instance_id)
        if routed:
            guest = make_routed_guest(namespace, self.workdir)
        else:
            guest = make_guest(namespace, self.workdir, mac)
        self._cleanup.callback(remove_guest, guest)
        return guest

    def relay(self, guest: Guest) -> Relay:
        """The controller's public API at ``relay.url`` inside `guest`."""
        relay = Relay(guest.name, self.controller.api_port)
        self._cleanup.callback(relay.close)
        return relay

    def proxy(self, guest: Guest) -> ForwardProxy:
        proxy = ForwardProxy(guest.name)
        self._cleanup.callback(proxy.close)
        return proxy

    def problems(self) -> list[str]:
        """After :meth:`close`: what the daemons did wrong (unclean exits, tracebacks)."""
        found = []
        for what, stopped in (
            ("agent", self.agent.stopped),
            ("controller", self.controller.stopped),
        ):
            for code, output in stopped:
                if code != 0:
                    found.append(f"the {what} exited with {code} on SIGTERM:\n{output}")
                elif "Traceback" in output:
                    found.append(f"the {what} logged a traceback:\n{output}")
        return found


def namespace_of(instance_id: str) -> str:
    return f"rc-{instance_id}"


@contextmanager
def cloud_in(workdir: Path, agent_config: str = "") -> Iterator[Cloud]:
    """A :class:`Cloud` that is closed however the block ends; its daemons must exit cleanly."""
    cloud = Cloud(workdir, agent_config)
    try:
        yield cloud
    finally:
        cloud.close()
    problems = cloud.problems()
    assert not problems, "\n".join(problems)
