"""Per-instance network namespaces: adopt or create one, put 169.254.169.254 on its loopback,
and open a listening socket inside it.

Nothing here forks. A namespace is made as iproute2's ``ip netns add`` makes it, on the calling
thread: unshare a new network namespace, bind-mount it onto an empty file in /run/netns, set up
its loopback there, and setns back home (always, also on error). Entering one to open a socket
is a setns there and back around the few system calls it takes; a socket keeps the namespace it
was created in. What the agent added is recorded (`OwnershipRecord`) so that it removes exactly
that, and after a restart it adopts what exists instead of rebuilding.
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
from typing import TYPE_CHECKING

from agent.names import InvalidName, check_namespace

if TYPE_CHECKING:
    from agent.rtnetlink import Rtnetlink

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
    #: Its instance ended or moved away, but the namespace was left in place because it held a
    #: link that is not the agent's (a VM's tap): removed once it holds none (never served).
    released: bool = False


@dataclass(frozen=True)
class Plug:
    """A VM's tap, named by the hypervisor for the instance served in `namespace`
    (``rolecall-agent plug``): steered there while the namespace is prepared."""

    namespace: str
    tap: str
    #: The tap's interface index when it was plugged: a device that later takes the same name
    #: (another index) is another VM's, never steered.
    tap_index: int


_libc = ctypes.CDLL(None, use_errno=True)
_text = ctypes.c_char_p
_libc.mount.argtypes = [_text, _text, _text, ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [_text, ctypes.c_int]
_libc.fstatfs.argtypes = [ctypes.c_int, ctypes.c_void_p]
_CLONE_NEWNET = 0x40000000
_MS_BIND = 4096
_MS_REC = 16384
_MS_SHARED = 1 << 20
_MNT_DETACH = 2
_UMOUNT_NOFOLLOW = 8
_THREAD_NAMESPACE = "/proc/thread-self/ns/net"
#: fstatfs(2)'s f_type for namespace files (linux/magic.h).
NSFS_MAGIC = 0x6E736673
#: Directories already made shared mount points by this process (see `_share`).
_shared: set[Path] = set()


def _failed(what: str) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, f"{what}: {os.strerror(code)}")


def _setns(descriptor: int) -> None:
    if _libc.setns(descriptor, _CLONE_NEWNET) != 0:
        raise _failed("setns")


def _mount(source: bytes, target: bytes, flags: int) -> None:
    if _libc.mount(source, target, b"none", flags, None) != 0:
        raise _failed(f"mount {os.fsdecode(target)}")


def _checked(name: str) -> str:
    """`name` if it may name a namespace file (`agent.names.NAMESPACE`), else NamespaceError."""
    try:
        return check_namespace(name)
    except InvalidName as error:
        raise NamespaceError(str(error)) from None


def _directory() -> int:
    """A descriptor of /run/netns, which names are looked up relative to (never a path built
    from a name). Opened afresh: `_share` may mount over the directory."""
    return os.open(NETNS_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _namespace_identity(path: str) -> tuple[int, int] | None:
    try:
        found = os.stat(path)
    except OSError:  # /proc/1/ns/net needs CAP_SYS_PTRACE when pid 1 has more capabilities
        return None
    return (found.st_dev, found.st_ino)


#: The host's own network namespaces, which no instance may be served in: this process's as it
#: was when the module was loaded (before any setns), and pid 1's where it can be read.
HOST_NAMESPACES = frozenset(
    identity
    for identity in (_namespace_identity(_THREAD_NAMESPACE), _namespace_identity("/proc/1/ns/net"))
    if identity is not None
)


def _filesystem_type(descriptor: int) -> int:
    """fstatfs(2)'s f_type (the first field of struct statfs, a C long on Linux)."""
    buffer = ctypes.create_string_buffer(256)
    if _libc.fstatfs(descriptor, buffer) != 0:
        raise _failed("fstatfs")
    return int(ctypes.c_long.from_buffer(buffer).value)


def open_namespace(name: str) -> int:
    """A descriptor of the existing network namespace /run/netns/`name`, checked: the name has
    the allowed form, the file is no symbolic link (O_NOFOLLOW, relative to the directory), it is
    a namespace (nsfs) and not the host's own. NamespaceError otherwise."""
    _checked(name)
    try:
        directory = _directory()
    except OSError as error:
        raise NamespaceError(f"no namespace {name}: {error.strerror}") from error
    try:
        descriptor = os.open(
            name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=directory
        )
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise NamespaceError(f"refusing namespace {name}: a symbolic link") from error
        raise NamespaceError(f"no namespace {name}: {error.strerror}") from error
    finally:
        os.close(directory)
    try:
        if _filesystem_type(descriptor) != NSFS_MAGIC:
            raise NamespaceError(f"refusing namespace {name}: not a namespace file")
        found = os.fstat(descriptor)
        if (found.st_dev, found.st_ino) in HOST_NAMESPACES:
            raise NamespaceError(f"refusing namespace {name}: the host's own network namespace")
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


@contextmanager
def inside(name: str) -> Iterator[None]:
    """Run the block with this thread in the existing namespace `name` (checked as
    `open_namespace` does), and always come back.

    (pyroute2's pushns would create a missing namespace; this never does.)
    """
    target = open_namespace(name)
    home = os.open(_THREAD_NAMESPACE, os.O_RDONLY | os.O_CLOEXEC)
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
    """Whether /run/netns/`name` exists (whatever it is: `open_namespace` checks that)."""
    _checked(name)
    try:
        directory = _directory()
    except FileNotFoundError:
        return False
    try:
        os.stat(name, dir_fd=directory, follow_symlinks=False)
    except FileNotFoundError:
        return False
    finally:
        os.close(directory)
    return True


def _rtnetlink() -> Rtnetlink:
    """An rtnetlink socket in the calling thread's namespace. pyroute2 is imported here, not by
    this module: it costs some 20 MB, and only the root process makes namespaces (the serving
    process imports this module for its names and records alone)."""
    from agent.rtnetlink import Rtnetlink

    return Rtnetlink()


def _share(directory: Path) -> None:
    """Make `directory` a shared mount point, as ``ip netns add`` does with /run/netns: the
    namespaces named there (bind mounts) are then seen from every mount namespace, and unnamed
    from all of them at once. Done once per process."""
    if directory in _shared:
        return
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    target = os.fsencode(directory)
    try:
        _mount(b"", target, _MS_SHARED | _MS_REC)
    except OSError as error:
        if error.errno != errno.EINVAL:  # EINVAL: not a mount point yet; make it one
            raise
        _mount(target, target, _MS_BIND | _MS_REC)
        _mount(b"", target, _MS_SHARED | _MS_REC)
    _shared.add(directory)


def _create(name: str) -> None:
    """Make namespace `name` as ``ip netns add`` does, on this thread and without forking, with
    its loopback up and the metadata address on it. The thread is back in its own namespace
    afterwards, also on error; a half-made namespace is removed. FileExistsError when the name
    is taken (someone else made it meanwhile)."""
    _checked(name)
    _share(NETNS_DIR)
    home = os.open(_THREAD_NAMESPACE, os.O_RDONLY | os.O_CLOEXEC)
    try:
        directory = _directory()
        try:
            # O_EXCL: never an existing file, nor a symbolic link's target.
            made = os.open(
                name,
                os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0,
                dir_fd=directory,
            )
        finally:
            os.close(directory)
        try:
            if _libc.unshare(_CLONE_NEWNET) != 0:
                raise _failed("unshare")
            try:
                # Mounted on the very file just made (through its descriptor), not on a path
                # that could be swapped meanwhile.
                _mount(_THREAD_NAMESPACE.encode(), f"/proc/self/fd/{made}".encode(), _MS_BIND)
                with _rtnetlink() as rtnetlink:
                    rtnetlink.loopback_up()
                    rtnetlink.add_to_loopback(METADATA_ADDRESS)
            finally:
                _setns(home)
        except BaseException as error:
            try:
                _remove_namespace(name)
            except NamespaceError as leftover:
                error.add_note(str(leftover))
            raise
        finally:
            os.close(made)
    finally:
        os.close(home)


def prepare(name: str) -> Ownership:
    """Adopt or create namespace `name`, bring `lo` up and add the metadata address to it."""
    if not exists(name):
        try:
            _create(name)
        except FileExistsError:
            pass  # made meanwhile by someone else: adopt it
        except OSError as error:
            raise NamespaceError(f"cannot create namespace {name}: {error}") from error
        else:
            return Ownership(name, created_namespace=True, added_address=True)
    try:
        with inside(name), _rtnetlink() as rtnetlink:
            rtnetlink.loopback_up()
            present = rtnetlink.loopback_has(METADATA_ADDRESS)
            if not present:
                rtnetlink.add_to_loopback(METADATA_ADDRESS)
    except Exception as error:
        raise NamespaceError(f"cannot prepare namespace {name}: {error}") from error
    return Ownership(name, created_namespace=False, added_address=not present)


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


#: What the kernel says when the address (or the namespace's loopback) is gone already.
_ALREADY_GONE = {errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENOENT, errno.ENXIO, errno.ESRCH}


#: The links of a namespace that are the agent's own: its loopback and its steering veth's end.
OWN_LINKS = frozenset({"lo", "imds0"})


def foreign_link(name: str) -> str | None:
    """The name of a link in namespace `name` that is not the agent's own (`OWN_LINKS`), or
    None."""
    try:
        with inside(name), _rtnetlink() as rtnetlink:
            found = rtnetlink.links()
    except OSError as error:
        raise NamespaceError(f"cannot look into namespace {name}: {error}") from error
    for _, link in found:
        if link not in OWN_LINKS:
            return link
    return None


def release(ownership: Ownership) -> str | None:
    """Remove what the agent added: the address, and the namespace if the agent created it and
    it holds no link but the agent's own. The foreign link a namespace the agent made still
    holds (a VM's tap, moved in: removing the namespace would destroy it), which leaves it in
    place without the address; None otherwise."""
    if not exists(ownership.namespace):
        return None
    if ownership.created_namespace:
        held = foreign_link(ownership.namespace)
        if held is None:
            _remove_namespace(ownership.namespace)
            return None
        _remove_address(ownership.namespace)
        return held
    if ownership.added_address:
        _remove_address(ownership.namespace)
    return None


def _remove_address(namespace: str) -> None:
    """Take the metadata address off `namespace`'s loopback (nothing if it is gone already)."""
    try:
        with inside(namespace), _rtnetlink() as rtnetlink:
            rtnetlink.remove_from_loopback(METADATA_ADDRESS)
    except NamespaceError:
        if exists(namespace):
            raise
    except OSError as error:
        if error.errno not in _ALREADY_GONE:  # else the hypervisor removed it already
            raise NamespaceError(f"cannot clean namespace {namespace}: {error}") from error


#: What a namespace the agent made holds: its loopback and these addresses on it.
_OWN_ADDRESSES = frozenset({"127.0.0.1", "::1", METADATA_ADDRESS})


def foreign_contents(name: str, listening_is_foreign: bool = True) -> str | None:
    """What namespace `name` holds that an agent with no instance there would not (a link other
    than its loopback, another address, a listening TCP socket, a process whose network
    namespace it is), said in a few words; None when it holds nothing foreign. A listening
    socket means that something serves in it, another agent with the same prefix say. Processes
    of other users are out of this process's sight (no CAP_SYS_PTRACE): a VM's tap or veth,
    which its namespace holds, is a link."""
    with inside(name), _rtnetlink() as rtnetlink:
        links = rtnetlink.links()
        addresses = rtnetlink.addresses()
        listening = _listening_tcp()
    others = [link for index, link in links if link not in OWN_LINKS]
    if others:
        return f"link {others[0]}"
    own = {index for index, link in links if link in OWN_LINKS}
    for index, address in addresses:
        if index not in own or address not in _OWN_ADDRESSES:
            return f"address {address}"
    if listening and listening_is_foreign:
        return f"{listening} listening TCP socket(s)"
    descriptor = open_namespace(name)
    try:
        found = os.fstat(descriptor)
    finally:
        os.close(descriptor)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            used = os.stat(f"/proc/{entry.name}/ns/net")
        except OSError:  # gone meanwhile, or another user's
            continue
        if (used.st_dev, used.st_ino) == (found.st_dev, found.st_ino):
            return f"process {entry.name}"
    return None


def _listening_tcp() -> int:
    """How many TCP sockets listen in the calling thread's network namespace."""
    count = 0
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/thread-self/net/{table}", encoding="ascii") as lines:
                next(lines, None)  # the header
                count += sum(1 for line in lines if line.split()[3] == "0A")  # TCP_LISTEN
        except FileNotFoundError:  # no IPv6
            continue
    return count


def remove_if_empty(name: str, listening_is_foreign: bool = True) -> str | None:
    """Remove namespace `name` if it holds nothing foreign (`foreign_contents`); what it holds
    otherwise (then it stays). For namespaces the agent's record does not say it made, which
    carry the agent's prefix and which no assignment names. Where the agent served the instance
    until now, its own socket may still be closing: `listening_is_foreign` false then."""
    if not exists(name):
        return None
    try:
        held = foreign_contents(name, listening_is_foreign)
    except OSError as error:
        raise NamespaceError(f"cannot look into namespace {name}: {error}") from error
    if held is None:
        _remove_namespace(name)
    return held


def listed(prefix: str) -> list[str]:
    """The namespaces in /run/netns whose names start with `prefix` (valid names only)."""
    try:
        entries = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    found = []
    for entry in entries:
        if entry.startswith(prefix):
            try:
                found.append(check_namespace(entry))
            except InvalidName:
                continue
    return sorted(found)


def _remove_namespace(name: str) -> None:
    """Unname namespace `name` as ``ip netns delete`` does: detach its bind mount and remove the
    file; the kernel frees the namespace once nothing else holds it."""
    _checked(name)
    path = os.fsencode(NETNS_DIR / name)
    # Fails harmlessly if it was never mounted (half-made); never follows a symbolic link.
    _libc.umount2(path, _MNT_DETACH | _UMOUNT_NOFOLLOW)
    try:
        directory = _directory()
        try:
            os.unlink(name, dir_fd=directory)
        finally:
            os.close(directory)
    except FileNotFoundError:
        pass
    except OSError as error:
        raise NamespaceError(f"cannot remove namespace {name}: {error}") from error


class OwnershipRecord:
    """Which namespaces and addresses the agent made, and which taps were plugged for which
    namespace, kept across agent restarts (in /run).

    Three files. PATH is a JSON list of every `Ownership` (``released`` only where true, so
    that the list reads as it always did), and PATH's sibling ``….plugs.json`` a JSON list of
    every `Plug`, both written whole by `save` (to a temporary file, then renamed over).
    PATH.journal has one JSON line per change since then, appended by `remember`, `forget`,
    `plug` and `unplug` as each change is made, so a change costs one small append however many
    instances the node has. `load` replays the journal over the lists (and only reads, so other
    tools may call it); the agent saves what it loaded when it starts, which empties the
    journal (a line torn by a crash included), and once at the end of every reconcile. The
    plugs are kept here, in `plugs`, and saved with whatever `save` is given.

    Crash safety: an agent that dies mid-reconcile has appended a line for every namespace it
    made, so the next one knows them all (and removes them when their instances are gone).
    Replaying a line twice is harmless, so dying between the rename and emptying the journal
    loses nothing; a torn last line (dying mid-append) is ignored. A line is appended just after
    its namespace is made, never before: an agent killed in between leaves that namespace
    unrecorded, to be adopted and left in place, rather than recording as its own a namespace it
    may not have made. /run, like the namespaces, does not outlive a reboot: no fsync.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.journal = path.with_name(path.name + ".journal")
        self.plugs_path = path.with_name(path.stem + ".plugs.json")
        self._changes = 0
        #: The taps plugged, by namespace, as `load` found them and changed since.
        self.plugs: dict[str, Plug] = {}

    def load(self) -> dict[str, Ownership]:
        """What the record says the agent made: the list, with the journal replayed (the plugs
        into `plugs`)."""
        try:
            entries = json.loads(self.path.read_text(encoding="utf-8"))
            owned = {entry["namespace"]: Ownership(**entry) for entry in entries}
        except FileNotFoundError:
            owned = {}
        except (OSError, ValueError, TypeError, KeyError) as error:
            raise NamespaceError(f"cannot read {self.path}: {error}") from error
        try:
            entries = json.loads(self.plugs_path.read_text(encoding="utf-8"))
            plugs = {entry["namespace"]: Plug(**entry) for entry in entries}
        except FileNotFoundError:
            plugs = {}
        except (OSError, ValueError, TypeError, KeyError) as error:
            raise NamespaceError(f"cannot read {self.plugs_path}: {error}") from error
        self.plugs = plugs
        try:
            text = self.journal.read_text(encoding="utf-8")
        except FileNotFoundError:
            return owned
        except OSError as error:
            raise NamespaceError(f"cannot read {self.journal}: {error}") from error
        lines = text.split("\n")[:-1]  # what follows the last newline is a torn append
        for number, line in enumerate(lines, 1):
            try:
                change = json.loads(line)
                if "forget" in change:
                    owned.pop(str(change["forget"]), None)
                elif "unplug" in change:
                    plugs.pop(str(change["unplug"]), None)
                elif "plug" in change:
                    plug = Plug(**change["plug"])
                    plugs[plug.namespace] = plug
                else:
                    entry = Ownership(**change["remember"])
                    owned[entry.namespace] = entry
            except (ValueError, TypeError, KeyError) as error:
                raise NamespaceError(f"cannot read {self.journal}:{number}: {error}") from error
        return owned

    def remember(self, ownership: Ownership) -> None:
        """Record what the agent made for one namespace (replacing what was recorded)."""
        self._append({"remember": _entry(ownership)})

    def forget(self, name: str) -> None:
        """Record that the agent removed (or no longer owns) what it made in namespace `name`."""
        self._append({"forget": name})

    def plug(self, plug: Plug) -> None:
        """Record the tap plugged for a namespace (replacing the one recorded)."""
        self.plugs[plug.namespace] = plug
        self._append({"plug": asdict(plug)})

    def unplug(self, name: str) -> None:
        """Record that no tap is plugged for namespace `name` any more."""
        if self.plugs.pop(name, None) is not None:
            self._append({"unplug": name})

    def compact(self, owned: dict[str, Ownership]) -> None:
        """`save`, if anything was appended since the last save."""
        if self._changes:
            self.save(owned)

    def save(self, owned: dict[str, Ownership]) -> None:
        """Write the whole record as `owned` and `plugs`, and empty the journal."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.plugs or self.plugs_path.exists():
            _write_whole(self.plugs_path, [asdict(plug) for plug in self.plugs.values()])
        _write_whole(self.path, [_entry(ownership) for ownership in owned.values()])
        self.journal.unlink(missing_ok=True)
        self._changes = 0

    def _append(self, change: dict[str, object]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(change) + "\n").encode("utf-8")
        descriptor = os.open(
            self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        try:
            os.write(descriptor, line)  # one write: a crash leaves at most a torn last line
        finally:
            os.close(descriptor)
        self._changes += 1


def _entry(ownership: Ownership) -> dict[str, object]:
    """An `Ownership` as the record writes it: ``released`` only when true."""
    entry = asdict(ownership)
    if not ownership.released:
        del entry["released"]
    return entry


def _write_whole(path: Path, entries: list[dict[str, object]]) -> None:
    """`entries` as a JSON list in `path`, replacing it at once (a temporary file renamed)."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(entries), encoding="utf-8")
    os.replace(temporary, path)
