"""Plumbing for tests that run the real agent against real network namespaces (needs root).

A test builds its own small cloud: a controller process on fixed loopback ports (so it can be
restarted in place), an enrolled node, and ``rolecall-agent`` as a real process serving the
instances placed on that node inside their ``rc-<instance-id>`` namespaces. Guests are further
namespaces joined to an instance's namespace by veth pairs with link-local /30 addresses: they
reach 169.254.169.254 and their own loopback, nothing else (DESIGN.md, "Test network rules").
To reach the controller's public API a guest talks to a relay on its own 127.0.0.1, which the
test process forwards to the controller's port in the root namespace.

Everything made here is recorded in :data:`MADE`, so that fixtures can remove it even when a test
fails and the session can assert nothing was left behind.
"""

from __future__ import annotations

import configparser
import http.client
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from prometheus_client.parser import text_string_to_metric_families

from agent import netns
from tests.e2e.conftest import ACCOUNT_ID, BIN

METADATA_ADDRESS = netns.METADATA_ADDRESS
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
GUEST_PREFIX = "rcg-"
ROUTER_PREFIX = "rcr-"
VETH_PREFIX = "rcv"
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


def unique(prefix: str, length: int = 8) -> str:
    return f"{prefix}{uuid.uuid4().hex[:length]}"


def ip(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGV`` and return its result (raising with its stderr when `check`)."""
    result = subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise AssertionError(f"ip {' '.join(argv)} failed: {result.stderr.strip()}")
    return result


def namespaces() -> set[str]:
    """The named network namespaces that exist now."""
    listing = ip("netns", "list").stdout
    return {line.split()[0] for line in listing.splitlines() if line.strip()}


def add_namespace(name: str) -> str:
    """Create namespace `name` with its loopback up; it is recorded for the leak check."""
    MADE.namespaces.add(name)
    ip("netns", "add", name)
    ip("-n", name, "link", "set", "lo", "up")
    return name


def delete_namespace(name: str) -> None:
    """Remove namespace `name` if it exists (the veth ends inside it go with it)."""
    if netns.exists(name):
        ip("netns", "delete", name, check=False)


def loopback_addresses(name: str) -> str:
    return ip("-n", name, "-o", "addr", "show", "dev", "lo").stdout


def root_veths() -> list[str]:
    """Veth links of ours in the root namespace (there should never be any)."""
    listing = ip("-o", "link", "show", "type", "veth").stdout
    return [line for line in listing.splitlines() if f": {VETH_PREFIX}" in line]


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


def wait_until(
    condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1
) -> Any:
    """Poll `condition` until it returns something true, at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# -- processes -----------------------------------------------------------------------------------


class LoggedProcess:
    """A child process whose merged stdout and stderr is collected line by line by a thread."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
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

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.api_port, self.node_api_port, self.metrics_port = free_ports(3)
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.node_api_url = f"https://127.0.0.1:{self.node_api_port}"
        self.process: LoggedProcess | None = None
        #: Exit statuses and output of the processes stopped so far, for the teardown checks.
        self.stopped: list[tuple[int, str]] = []
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
        assert self.process is None, "the controller is running already"
        self.process = LoggedProcess(
            [str(BIN / "rolecall-controller"), "--state-dir", str(self.state_dir), "serve",
             "--port", str(self.api_port), "--node-api-port", str(self.node_api_port),
             "--metrics-port", str(self.metrics_port)],
            env=_daemon_env(),
        )  # fmt: skip
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

    def __init__(self, controller_url: str, credentials: Path, workdir: Path) -> None:
        # An explicit (minimal) configuration file: a host's /etc/rolecall/agent.toml must not
        # leak into the test.
        self.config = workdir / "agent.toml"
        self.config.write_text(f'[controller]\nurls = ["{controller_url}"]\n', encoding="utf-8")
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
            env=_daemon_env(),
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

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics, keyed ``name`` or ``name{label="value",...}``."""
        connection = http.client.HTTPConnection(self.metrics_url.removeprefix("http://"), timeout=5)
        try:
            connection.request("GET", "/metrics")
            text = connection.getresponse().read().decode()
        finally:
            connection.close()
        samples: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(
                    f'{key}="{value}"' for key, value in sorted(sample.labels.items())
                )
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return samples


def _daemon_env() -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    environment["PYTHONUNBUFFERED"] = "1"
    return environment


# -- talking to an instance's metadata service from the test process ---------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: str


def imds(
    namespace: str,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    timeout: float = 2,
) -> Answer:
    """One request to 169.254.169.254:80 from inside `namespace` (an instance's, or a guest's)."""
    connection = http.client.HTTPConnection(METADATA_ADDRESS, 80, timeout=timeout)
    try:
        with netns.inside(namespace):
            connection.connect()  # the socket stays in the namespace it was created in
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        body = response.read().decode("latin-1")
        return Answer(response.status, dict(response.getheaders()), body)
    finally:
        connection.close()


def serves_tokens(namespace: str) -> bool:
    """Whether a metadata service answers a token PUT with 200 inside `namespace` now."""
    if not netns.exists(namespace):
        return False
    try:
        return imds(namespace, "PUT", "/latest/api/token", {TTL_HEADER: "60"}, 1).status == 200
    except (OSError, http.client.HTTPException, netns.NamespaceError):
        return False


# -- guests --------------------------------------------------------------------------------------

_SUBNETS = (n for n in itertools.cycle(range(1, 255)) if n != 169)


def _next_subnet() -> int:
    """The third octet of the next link-local /30 (169.254.N.0/30; never 169.254.169.x)."""
    return next(_SUBNETS)


def link(left: str, right: str) -> tuple[str, str]:
    """A veth pair between namespaces `left` and `right` (created in place, never in the root
    namespace), addressed 169.254.N.2/30 on the left and .1 on the right; the two addresses."""
    subnet = _next_subnet()
    name = unique(VETH_PREFIX, 8)  # 11 characters, +1 for the side: within IFNAMSIZ (15)
    left_end, right_end = f"{name}l", f"{name}r"
    left_address, right_address = f"169.254.{subnet}.2", f"169.254.{subnet}.1"
    ip("link", "add", left_end, "netns", left, "type", "veth",
       "peer", "name", right_end, "netns", right)  # fmt: skip
    ip("-n", left, "addr", "add", f"{left_address}/30", "dev", left_end)
    ip("-n", right, "addr", "add", f"{right_address}/30", "dev", right_end)
    ip("-n", left, "link", "set", left_end, "up")
    ip("-n", right, "link", "set", right_end, "up")
    return left_address, right_address


@dataclass
class Guest:
    """A guest's network namespace, which reaches only 169.254.169.254 and its own loopback."""

    name: str
    home: Path
    address: str
    instance_namespace: str
    router: str | None = None

    def environment(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """What a freshly booted guest has: no AWS_* variables, no proxy, an empty HOME."""
        environment = {
            "PATH": f"{BIN}{os.pathsep}/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
        }
        environment.update(extra or {})
        return environment

    def run(
        self, argv: list[str], env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside the guest with a clean environment plus `env`."""
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *argv],
            env=self.environment(env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def curl(self, *argv: str, max_time: float = 2) -> subprocess.CompletedProcess[str]:
        """curl in the guest: the body on stdout, then a last line with the HTTP status."""
        return self.run(
            ["curl", "--silent", "--show-error", "--max-time", str(max_time),
             "--write-out", r"\n%{http_code}", *argv],
            timeout=max_time + 10,
        )  # fmt: skip

    def get(self, path: str, token: str | None = None, max_time: float = 2) -> tuple[int, str]:
        """GET `path` of the metadata service: (status, body); status 0 if no answer came."""
        headers = ["-H", f"{TOKEN_HEADER}: {token}"] if token is not None else []
        result = self.curl(*headers, f"http://{METADATA_ADDRESS}{path}", max_time=max_time)
        body, _, status = result.stdout.rpartition("\n")
        return (int(status) if result.returncode == 0 else 0), body

    def token(self, ttl: int = 60, max_time: float = 2) -> tuple[int, str]:
        """PUT /latest/api/token: (status, token); status 0 if no answer came in `max_time`."""
        result = self.curl(
            "-X", "PUT", "-H", f"{TTL_HEADER}: {ttl}",
            f"http://{METADATA_ADDRESS}/latest/api/token", max_time=max_time,
        )  # fmt: skip
        body, _, status = result.stdout.rpartition("\n")
        return (int(status) if result.returncode == 0 else 0), body


def make_guest(instance_namespace: str, workdir: Path) -> Guest:
    """A guest one link away from the instance's namespace (as a VM's tap device would be)."""
    name = add_namespace(unique(GUEST_PREFIX))
    guest_address, instance_side = link(name, instance_namespace)
    ip("-n", name, "route", "add", f"{METADATA_ADDRESS}/32", "via", instance_side)
    home = workdir / name
    home.mkdir()
    return Guest(name, home, guest_address, instance_namespace)


def make_routed_guest(instance_namespace: str, workdir: Path) -> Guest:
    """A guest two routed hops away: guest — router — instance (a container inside a VM)."""
    router = add_namespace(unique(ROUTER_PREFIX))
    name = add_namespace(unique(GUEST_PREFIX))
    guest_address, router_guest_side = link(name, router)
    router_instance_side, instance_side = link(router, instance_namespace)
    subprocess.run(
        ["ip", "netns", "exec", router, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    ip("-n", name, "route", "add", f"{METADATA_ADDRESS}/32", "via", router_guest_side)
    ip("-n", router, "route", "add", f"{METADATA_ADDRESS}/32", "via", instance_side)
    guest_subnet = guest_address.rsplit(".", 1)[0] + ".0/30"
    ip("-n", instance_namespace, "route", "add", guest_subnet, "via", router_instance_side)
    home = workdir / name
    home.mkdir()
    return Guest(name, home, guest_address, instance_namespace, router=router)


def remove_guest(guest: Guest) -> None:
    delete_namespace(guest.name)
    if guest.router is not None:
        delete_namespace(guest.router)


# -- relays and proxies inside a guest -----------------------------------------------------------


class _Forwarder:
    """Listens on 127.0.0.1 inside a guest namespace and pipes each accepted connection to an
    upstream socket that `_upstream` opens; threads, closed for good by :meth:`close`."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        with netns.inside(namespace):
            self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(64)
        self.port: int = self._server.getsockname()[1]
        self.connections = 0
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._closing = False
        self._spawn(self._accept)

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        MADE.threads.append(thread)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _track(self, each: socket.socket) -> None:
        with self._lock:
            if self._closing:
                each.close()
                raise OSError("closing")
            self._open.add(each)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                self._track(client)
            except OSError:
                return
            self.connections += 1
            self._spawn(self._serve, client)

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream, first = self._upstream(client)
            self._track(upstream)
        except OSError:
            client.close()
            return
        upstream.sendall(first)
        self._spawn(self._pump, client, upstream)
        self._pump(upstream, client)

    def _upstream(self, client: socket.socket) -> tuple[socket.socket, bytes]:
        raise NotImplementedError

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        with self._lock:
            self._closing = True
            sockets = [self._server, *self._open]
            threads = list(self._threads)
        for each in sockets:
            try:
                each.shutdown(socket.SHUT_RDWR)  # wakes accept() and recv() in other threads
            except OSError:
                pass
        for thread in threads:
            thread.join(timeout=5)
        for each in sockets:
            each.close()


class Relay(_Forwarder):
    """127.0.0.1:port in a guest → 127.0.0.1:target_port in the root namespace, so a guest uses
    the controller's public API without any address but link-local and loopback ones."""

    def __init__(self, namespace: str, target_port: int) -> None:
        self.target_port = target_port
        super().__init__(namespace)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _upstream(self, client: socket.socket) -> tuple[socket.socket, bytes]:
        # This thread never entered a namespace: the connection is made in the root one.
        upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
        upstream.settimeout(None)
        return upstream, b""


class ForwardProxy(_Forwarder):
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


class Cloud:
    """A controller, an enrolled node with its agent, and what the test adds (instances, guests,
    relays, proxies); :meth:`close` removes all of it, whatever state the test left."""

    def __init__(self, workdir: Path) -> None:
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
                self.controller.node_api_url, credentials, self._directory("agent")
            )
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
        for instance_id in self.instances:
            delete_namespace(namespace_of(instance_id))

    # the control plane

    def profile(self) -> tuple[str, str]:
        """A role that EC2 may assume, in an instance profile of the same name: (name, arn)."""
        name = unique("ip-")
        self.iam.create_role(RoleName=name, AssumeRolePolicyDocument=EC2_TRUST)
        self.iam.put_role_policy(RoleName=name, PolicyName="read", PolicyDocument=READ_ROLES)
        self.iam.create_instance_profile(InstanceProfileName=name)
        self.iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
        return name, f"arn:aws:iam::{ACCOUNT_ID}:instance-profile/{name}"

    def launch(self, profile: str | None = None) -> str:
        """Run an instance on this node; its namespace is removed at teardown."""
        extra: dict[str, Any] = {"Placement": {"HostId": self.node}}
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

    def guest(self, instance_id: str, routed: bool = False) -> Guest:
        """A guest linked to the served instance's namespace, one link or two routed hops away."""
        namespace = self.wait_served(instance_id)
        make = make_routed_guest if routed else make_guest
        guest = make(namespace, self.workdir)
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
def cloud_in(workdir: Path) -> Iterator[Cloud]:
    """A :class:`Cloud` that is closed however the block ends; its daemons must exit cleanly."""
    cloud = Cloud(workdir)
    try:
        yield cloud
    finally:
        cloud.close()
    problems = cloud.problems()
    assert not problems, "\n".join(problems)
