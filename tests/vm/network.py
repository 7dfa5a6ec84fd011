"""The network a test VM is plugged into, made by the test: a bridge (the cloud's), taps for
QEMU (as libvirt makes them), and a "cloud" service in a namespace of the test's own, on the same
bridge by a veth pair. Everything made is recorded in :data:`MADE` for the end-of-session check.
Addresses are link-local only (DESIGN.md, "Test network rules")."""

from __future__ import annotations

import secrets
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from agent import netns
from demo import guest as namespaces
from demo import vmguest
from demo.vmimage import GuestImage

CLOUD_PREFIX = "rcc-"
CLOUD_VETH_PREFIX = "rccv"
#: The cloud's end of its veth pair, inside its namespace.
CLOUD_INTERFACE = "cloud0"


@dataclass
class Made:
    links: set[str] = field(default_factory=set)
    namespaces: set[str] = field(default_factory=set)
    guests: list[vmguest.VmGuest] = field(default_factory=list)


MADE = Made()


def bridge() -> str:
    name = f"{vmguest.BRIDGE_PREFIX}{uuid.uuid4().hex[:8]}"
    MADE.links.add(name)
    return vmguest.add_bridge(name)


def tap(bridge: str | None = None) -> str:
    name = f"{vmguest.TAP_PREFIX}{uuid.uuid4().hex[:8]}"
    MADE.links.add(name)
    return vmguest.add_tap(name, bridge)


def guest(
    image: GuestImage, nics: Sequence[vmguest.Nic], gateway: str | None = None
) -> vmguest.VmGuest:
    """A VM, not booted yet (``with`` boots it), recorded for the end-of-session check."""
    vm = vmguest.VmGuest(image, nics, gateway=gateway)
    MADE.guests.append(vm)
    return vm


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    client: str


class CloudServer:
    """An HTTP server on port 80 in its own namespace, reached over `bridge` at `address`
    (``A.B.C.D/PREFIX``); also on 169.254.169.254 when `metadata` (a stand-in metadata service
    for a guest routed through it). It answers ``PUT /latest/api/token`` with :attr:`token`, any
    other GET with :attr:`page`, and records every request."""

    def __init__(self, bridge: str, address: str, metadata: bool = False) -> None:
        self.address = address.split("/")[0]
        self.page = f"cloud page {secrets.token_hex(8)}\n"
        self.token = f"stand-in-token-{secrets.token_hex(8)}"
        self.requests: list[Request] = []
        self.namespace = f"{CLOUD_PREFIX}{uuid.uuid4().hex[:8]}"
        self.veth = f"{CLOUD_VETH_PREFIX}{uuid.uuid4().hex[:8]}"
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        MADE.namespaces.add(self.namespace)
        namespaces.add_namespace(self.namespace)
        try:
            MADE.links.add(self.veth)
            namespaces.ip("link", "add", self.veth, "type", "veth",
                          "peer", "name", CLOUD_INTERFACE, "netns", self.namespace)  # fmt: skip
            namespaces.ip("link", "set", self.veth, "master", bridge, "up")
            inside = ("-n", self.namespace)
            namespaces.ip(*inside, "addr", "add", address, "dev", CLOUD_INTERFACE)
            namespaces.ip(*inside, "link", "set", CLOUD_INTERFACE, "up")
            if metadata:
                namespaces.ip(*inside, "addr", "add", "169.254.169.254/32", "dev", "lo")
            self._serve()
        except BaseException:
            self.close()
            raise

    def _serve(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, body: str) -> None:
                server.requests.append(
                    Request(self.command, self.path, dict(self.headers.items()),
                            self.client_address[0])
                )  # fmt: skip
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._answer(server.page)

            def do_PUT(self) -> None:
                self._answer(server.token if self.path == "/latest/api/token" else "")

            def log_message(self, format: str, *args: object) -> None:
                pass

        with netns.inside(self.namespace):  # the listening socket stays in the namespace
            self._server = ThreadingHTTPServer(("0.0.0.0", 80), Handler)  # noqa: S104
        self._thread = threading.Thread(
            target=self._server.serve_forever, daemon=True, name=f"cloud {self.namespace}"
        )
        self._thread.start()

    def neighbour_mac(self, address: str) -> str | None:
        """The MAC address the cloud's namespace learned for `address` (from its ARP table)."""
        shown = namespaces.ip("-n", self.namespace, "neigh", "show", address).stdout.split()
        return shown[shown.index("lladdr") + 1] if "lladdr" in shown else None

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        namespaces.delete_namespace(self.namespace)
        vmguest.delete_link(self.veth)  # gone with the namespace already, unless that failed
