"""Per-instance network namespaces: adopt or create one, put 169.254.169.254 on its loopback,
and open a listening socket inside it.

The socket is created after entering the namespace with setns on this thread only for the few
system calls it takes (microseconds), not through a forked helper; a socket keeps the namespace
it was created in. Creating a namespace forks once (pyroute2), which is fine: it happens once per
instance. What the agent added is recorded so that it removes exactly that, and after a restart
it adopts what exists instead of rebuilding.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from pyroute2 import IPRoute, netns

NETNS_DIR = Path("/var/run/netns")
METADATA_ADDRESS = "169.254.169.254"


class NamespaceError(Exception):
    """A namespace could not be prepared or cleaned up; the message names it."""


@dataclass(frozen=True)
class Ownership:
    """What the agent made for one instance, so it removes only that."""

    namespace: str
    created_namespace: bool
    added_address: bool


_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000


def _setns(descriptor: int) -> None:
    if _libc.setns(descriptor, _CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


@contextmanager
def inside(name: str) -> Iterator[None]:
    """Run the block with this thread in the existing namespace `name`, and always come back.

    (pyroute2's pushns would create a missing namespace; this never does.)
    """
    try:
        target = os.open(NETNS_DIR / name, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as error:
        raise NamespaceError(f"no namespace {name}: {error.strerror}") from error
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


def exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def _link_index(ipr: IPRoute, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise NamespaceError(f"no {name} interface")
    return int(found[0])


def prepare(name: str) -> Ownership:
    """Adopt or create namespace `name`, bring `lo` up and add the metadata address to it."""
    created = False
    if not exists(name):
        try:
            netns.create(name)
        except OSError as error:
            if error.errno != errno.EEXIST:
                raise NamespaceError(f"cannot create namespace {name}: {error}") from error
        else:
            created = True
    try:
        with inside(name):
            with IPRoute() as ipr:
                loopback = _link_index(ipr, "lo")
                ipr.link("set", index=loopback, state="up")
                present = any(
                    message.get_attr("IFA_ADDRESS") == METADATA_ADDRESS
                    for message in ipr.get_addr(index=loopback)
                )
                if not present:
                    ipr.addr("add", index=loopback, address=METADATA_ADDRESS, prefixlen=32)
    except Exception as error:
        if created:
            _remove_namespace(name)
        raise NamespaceError(f"cannot prepare namespace {name}: {error}") from error
    return Ownership(name, created, not present)


def listen(
    name: str, port: int, address: str = METADATA_ADDRESS, backlog: int = 1024
) -> socket.socket:
    """A non-blocking TCP socket listening on address:port inside namespace `name`."""
    with inside(name):
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((address, port))
        server.listen(backlog)
        server.setblocking(False)
    except OSError as error:
        server.close()
        raise NamespaceError(f"cannot listen on {address}:{port} in {name}: {error}") from error
    return server


def release(ownership: Ownership) -> None:
    """Remove what the agent added: the address, and the namespace if the agent created it."""
    if not exists(ownership.namespace):
        return
    if ownership.created_namespace:
        _remove_namespace(ownership.namespace)
        return
    if ownership.added_address:
        try:
            with inside(ownership.namespace), IPRoute() as ipr:
                ipr.addr(
                    "del", index=_link_index(ipr, "lo"), address=METADATA_ADDRESS, prefixlen=32
                )
        except Exception as error:  # the hypervisor may have removed it already
            if "No such" not in str(error) and "Cannot assign" not in str(error):
                raise NamespaceError(
                    f"cannot clean namespace {ownership.namespace}: {error}"
                ) from error


def _remove_namespace(name: str) -> None:
    try:
        netns.remove(name)
    except OSError as error:
        if error.errno != errno.ENOENT:
            raise NamespaceError(f"cannot remove namespace {name}: {error}") from error


class OwnershipRecord:
    """Which namespaces and addresses the agent made, kept across agent restarts (in /run)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Ownership]:
        try:
            entries = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            raise NamespaceError(f"cannot read {self.path}: {error}") from error
        return {entry["namespace"]: Ownership(**entry) for entry in entries}

    def save(self, owned: dict[str, Ownership]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(
            json.dumps([asdict(entry) for entry in owned.values()]), encoding="utf-8"
        )
        os.replace(temporary, self.path)
