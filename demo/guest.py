"""A stand-in for a VM: a network namespace linked to an instance's namespace, for the demo and
the tests (needs root).

A guest is a namespace joined to an instance's namespace (``rc-<instance-id>``, where the agent
serves 169.254.169.254) by a veth pair with link-local /30 addresses, as a VM's tap device would
be. It reaches 169.254.169.254 and its own loopback, nothing else (DESIGN.md, "Test network
rules"). To use the controller's public API, a guest talks to a :class:`Relay` on its own
127.0.0.1, which this process forwards to a port in the root namespace.

Both ends of a veth pair are created inside their namespaces, never in the root one, so deleting
a guest's namespace removes its links too.
"""

from __future__ import annotations

import http.client
import itertools
import os
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import netns
from agent.imds.rules import TOKEN_HEADER, TOKEN_PATH, TTL_HEADER

METADATA_ADDRESS = netns.METADATA_ADDRESS
#: Where the guest finds the tools of this installation (python, aws): this virtualenv's bin.
BIN = Path(sys.executable).parent
GUEST_PREFIX = "rcg-"
ROUTER_PREFIX = "rcr-"
VETH_PREFIX = "rcv"

__all__ = [
    "BIN",
    "GUEST_PREFIX",
    "METADATA_ADDRESS",
    "ROUTER_PREFIX",
    "TOKEN_HEADER",
    "TOKEN_PATH",
    "TTL_HEADER",
    "VETH_PREFIX",
    "Answer",
    "Forwarder",
    "Guest",
    "GuestError",
    "Relay",
    "add_namespace",
    "delete_namespace",
    "imds",
    "ip",
    "link",
    "make_guest",
    "make_routed_guest",
    "namespaces",
    "remove_guest",
    "root_veths",
    "serves_tokens",
    "unique",
]


class GuestError(Exception):
    """A namespace, link or route could not be made; the message says which command failed."""


def unique(prefix: str, length: int = 8) -> str:
    return f"{prefix}{uuid.uuid4().hex[:length]}"


def ip(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGV`` and return its result (raising with its stderr when `check`)."""
    result = subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise GuestError(f"ip {' '.join(argv)} failed: {result.stderr.strip()}")
    return result


def namespaces() -> set[str]:
    """The named network namespaces that exist now."""
    listing = ip("netns", "list").stdout
    return {line.split()[0] for line in listing.splitlines() if line.strip()}


def add_namespace(name: str) -> str:
    """Create namespace `name` with its loopback up."""
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "set", "lo", "up")
    except BaseException:
        delete_namespace(name)
        raise
    return name


def delete_namespace(name: str) -> None:
    """Remove namespace `name` if it exists (the veth ends inside it go with it)."""
    if netns.exists(name):
        ip("netns", "delete", name, check=False)


def root_veths() -> list[str]:
    """Veth links of ours in the root namespace (there should never be any)."""
    listing = ip("-o", "link", "show", "type", "veth").stdout
    return [line for line in listing.splitlines() if f": {VETH_PREFIX}" in line]


_SUBNETS = (n for n in itertools.cycle(range(1, 255)) if n != 169)
_SUBNETS_LOCK = threading.Lock()


def _next_subnet() -> int:
    """The third octet of the next link-local /30 (169.254.N.0/30; never 169.254.169.x)."""
    with _SUBNETS_LOCK:
        return next(_SUBNETS)


def link(left: str, right: str, left_mac: str | None = None) -> tuple[str, str]:
    """A veth pair between namespaces `left` and `right` (created in place, never in the root
    namespace), addressed 169.254.N.2/30 on the left and .1 on the right; the two addresses.
    `left_mac`: the left end's MAC address (a VM's, from its assignment)."""
    subnet = _next_subnet()
    name = unique(VETH_PREFIX, 8)  # 11 characters, +1 for the side: within IFNAMSIZ (15)
    left_end, right_end = f"{name}l", f"{name}r"
    left_address, right_address = f"169.254.{subnet}.2", f"169.254.{subnet}.1"
    address = ["address", left_mac] if left_mac else []
    ip("link", "add", left_end, *address, "netns", left, "type", "veth",
       "peer", "name", right_end, "netns", right)  # fmt: skip
    ip("-n", left, "addr", "add", f"{left_address}/30", "dev", left_end)
    ip("-n", right, "addr", "add", f"{right_address}/30", "dev", right_end)
    ip("-n", left, "link", "set", left_end, "up")
    ip("-n", right, "link", "set", right_end, "up")
    return left_address, right_address


# -- a guest -------------------------------------------------------------------------------------


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
            f"http://{METADATA_ADDRESS}{TOKEN_PATH}", max_time=max_time,
        )  # fmt: skip
        body, _, status = result.stdout.rpartition("\n")
        return (int(status) if result.returncode == 0 else 0), body


def make_guest(
    instance_namespace: str, workdir: Path, name: str | None = None, mac: str | None = None
) -> Guest:
    """A guest one link away from the instance's namespace (as a VM's tap device would be),
    its end of the link with MAC address `mac` when given (the instance's, as a VM has).

    Give `name` to know it before anything is made (to clean up after an interruption); a
    failure on the way removes what was made.
    """
    name = name or unique(GUEST_PREFIX)
    add_namespace(name)
    try:
        guest_address, instance_side = link(name, instance_namespace, mac)
        ip("-n", name, "route", "add", f"{METADATA_ADDRESS}/32", "via", instance_side)
        home = workdir / name
        home.mkdir()
    except BaseException:
        delete_namespace(name)
        raise
    return Guest(name, home, guest_address, instance_namespace)


def make_routed_guest(
    instance_namespace: str, workdir: Path, name: str | None = None, router: str | None = None
) -> Guest:
    """A guest two routed hops away: guest — router — instance (a container inside a VM)."""
    router = router or unique(ROUTER_PREFIX)
    name = name or unique(GUEST_PREFIX)
    add_namespace(router)
    try:
        add_namespace(name)
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
    except BaseException:
        delete_namespace(name)
        delete_namespace(router)
        raise
    return Guest(name, home, guest_address, instance_namespace, router=router)


def remove_guest(guest: Guest) -> None:
    delete_namespace(guest.name)
    if guest.router is not None:
        delete_namespace(guest.router)


# -- an instance's metadata service, from this process -------------------------------------------


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
        return imds(namespace, "PUT", TOKEN_PATH, {TTL_HEADER: "60"}, 1).status == 200
    except (OSError, http.client.HTTPException, netns.NamespaceError):
        return False


# -- forwarding into a guest ---------------------------------------------------------------------


class Forwarder:
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

    def _spawn(self, target: Callable[..., None], *args: Any) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()
        return thread

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


class Relay(Forwarder):
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


# -- cloud-init in a guest -----------------------------------------------------------------------

#: cloud-init's EC2 datasource, run in a guest by Debian's Python (demo/cloudinit_probe.py).
CLOUD_INIT_PROBE = Path(__file__).resolve().parent / "cloudinit_probe.py"
DEBIAN_PYTHON = "/usr/bin/python3"
#: A system UUID of the form EC2 gives, as /sys/hypervisor/uuid shows it.
EC2_UUID = "ec2e1916-9099-7caf-fd21-01234abcdef0"
#: Runs its arguments where cloud-init identifies the platform as AWS: a tmpfs over /sys in a
#: mount namespace of the command's own, with /sys/hypervisor/uuid saying ``ec2…`` (as on
#: Xen-based EC2) and the real /sys/class/net and /sys/devices bound back in for the interfaces.
AS_AWS = (
    'set -e; real=$(mktemp -d); mount --rbind /sys "$real"; mount -t tmpfs none /sys;'
    " mkdir -p /sys/hypervisor /sys/class/net /sys/devices;"
    f" echo {EC2_UUID} > /sys/hypervisor/uuid;"
    ' mount --rbind "$real/class/net" /sys/class/net;'
    ' mount --rbind "$real/devices" /sys/devices;'
    ' exec "$@"'
)


def cloud_init_command(as_aws: bool) -> list[str]:
    """The command that runs cloud-init's EC2 datasource in a guest and prints what it found
    (JSON): over IMDSv2 as on AWS, or as on any other VM (IMDSv1 on a dated version)."""
    command = [DEBIAN_PYTHON, str(CLOUD_INIT_PROBE)]
    if as_aws:
        command = ["unshare", "--mount", "sh", "-c", AS_AWS, "as-aws", *command]
    return command
