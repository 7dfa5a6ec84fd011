"""The agent's privileged process: what systemd starts as root, kept small and free of HTTP.

It reads what only root may (the configuration, the node's certificate and key), takes the
listening sockets systemd kept across a restart, starts the serving process (`agent.serving`) as
an unprivileged user with no capabilities, hands it all that over one socket pair
(`agent.channel`), gives up the capabilities it needs no more, and then serves the serving
process's requests in a blocking loop: prepare a namespace, open the metadata socket in it (sent
back with SCM_RIGHTS, and stored with systemd), release what it made, relay READY/STATUS/STOPPING.
It is the only process that talks to systemd and the only one that writes the ownership record.

It trusts nothing its peer sends: every namespace name is checked (`agent.names`,
`agent.netns`), a socket is opened only for a namespace it prepared and only on the configured
port, only what its own record says it made is ever removed, and a malformed request is answered
with an error, never a crash. No Twisted reactor, no HTTP, no TLS. When the serving process
exits, so does this one (with its status), and systemd restarts both; on SIGTERM or SIGINT it
passes SIGTERM on and waits for the serving process to finish.
"""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

from agent import capabilities, channel, names, netns, steer
from agent import kept as kept_module
from agent import plug as plug_module
from agent.checks import UPSTREAM_SHARED_FILE, read_secret
from agent.config import AgentConfig, ConfigError, config_to_wire
from agent.imds.tokens import KEY_BYTES as TOKEN_KEY_BYTES
from agent.imds.tokens import new_key
from agent.netns import NamespaceError, Plug
from common.notify import Notifier, listen_fds

#: What the privileged process keeps once the serving process runs: namespaces (setns, mount,
#: unshare), the loopback address, port 80, and SIGTERM to the serving process (another user).
KEPT_CAPABILITIES = (
    capabilities.CAP_SYS_ADMIN,
    capabilities.CAP_NET_ADMIN,
    capabilities.CAP_NET_BIND_SERVICE,
    capabilities.CAP_KILL,
)
LOG_NAMESPACE = "rolecall.agent.privileged"
#: The IMDSv2 token key's file, beside the ownership record.
IMDS_KEY_FILE = "imds-token.key"  # a file name, not a secret
#: An answer to the serving process, and the sockets to send with it (closed once sent).
Answer = tuple[dict[str, Any], list[socket.socket]]


def say(level: str, message: str) -> None:
    """One log line, in the daemons' format (``LEVEL namespace: message``)."""
    sys.stdout.write(f"{level} {LOG_NAMESPACE}: {message}\n")
    sys.stdout.flush()


class Broker:
    """The requests of the serving process, answered one by one. `handle` never raises."""

    def __init__(
        self,
        imds_port: int,
        record: netns.OwnershipRecord,
        notifier: Notifier,
        namespaces: Any,
        *,
        kept: kept_module.InstanceFiles | None = None,
        prefix: str = "rc-",
        steering: Any = steer,
    ) -> None:
        self._imds_port = imds_port
        self._record = record
        self._notifier = notifier
        self._namespaces = namespaces
        self._kept = kept
        self._prefix = prefix
        #: `agent.steer`: the veth pairs and nftables tables that steer VMs' taps.
        self._steering = steering
        self.owned = record.load()
        record.save(self.owned)  # the journal folded in
        #: The namespaces this process steered (after a restart, each is steered again once,
        #: when it is prepared: installing replaces the table the last process left).
        self._steered: set[str] = set()
        #: Whether the steering left by the last agent was looked for (at the first compact).
        self._swept_steering = False
        #: The steering tables present when this process first looked, not yet adopted.
        self._found_tables: set[str] | None = None

    @property
    def plugs(self) -> dict[str, Plug]:
        """The taps plugged, by namespace (kept in the ownership record)."""
        return self._record.plugs

    def serving_owned(self) -> dict[str, netns.Ownership]:
        """What the serving process is told was made: every namespace not released."""
        return {name: made for name, made in self.owned.items() if not made.released}

    def handle(self, data: bytes, truncated: bool) -> Answer:
        """The answer to one message, and the sockets to send with it (closed once sent)."""
        try:
            request = channel.decode_request(data, truncated)
            handler: Callable[..., Answer] = getattr(self, f"_{request.op}")
            return handler(**request.fields)
        except (channel.Refused, names.InvalidName, netns.NamespaceError, OSError) as error:
            say("WARN", f"refused a request of the serving process: {error}")
            return {"ok": False, "error": str(error)}, []
        except Exception as error:  # a bug here must not take the node's namespaces down
            say("ERROR", f"failed a request of the serving process: {error!r}")
            return {"ok": False, "error": f"internal error: {type(error).__name__}"}, []

    def _prepare(self, netns: str) -> Answer:
        name = names.check_namespace(netns)
        made = self._namespaces.prepare(name)
        previous = self.owned.get(name)
        if previous is not None:  # adopted after a restart: keep what was made before
            made = type(made)(
                name,
                previous.created_namespace or made.created_namespace,
                previous.added_address or made.added_address,
            )
        if previous != made:
            self.owned[name] = made
            self._record.remember(made)
        if name in self.plugs:
            self._steer_prepared(name)
        fields = asdict(made)
        del fields["namespace"]
        del fields["released"]
        return {"ok": True, **fields}, []

    def _steer_prepared(self, name: str) -> None:
        """Steer `name`'s plugged tap into it, now that it is prepared (after a restart, or into
        a namespace made again, too: the table is replaced, never doubled, and a whole veth
        kept), unless that tap is gone. Never fails the prepare: the
        namespace is still served to what reaches it otherwise."""
        plug = self.plugs[name]
        try:
            if self._steering.link_index(plug.tap) != plug.tap_index:
                self._tap_gone(name, plug)
            elif self._left_by_last_agent(name) and not self._steering.ensure_veth(name):
                # The last agent's table for this very plug (same tap, same index), with its
                # veth whole: adopted as it is. Installing it again would cost an nft run, which
                # grows with the node's tables (bench/steer.py), for each instance at a restart.
                self._steered.add(name)
                say("INFO", f"adopted the steering of {plug.tap} into namespace {name}")
            else:  # new, or the namespace was made again: installed whole
                self._steer(name)
        except NamespaceError as error:
            say("WARN", f"cannot steer {plug.tap} into {name}: {error}")

    def _left_by_last_agent(self, name: str) -> bool:
        """Whether `name`'s steering table was there when this process first looked (once, at
        the first preparation of a plugged namespace); true once per namespace."""
        if self._found_tables is None:
            self._found_tables = set(self._steering.tables())
        if name in self._found_tables:
            self._found_tables.discard(name)
            return True
        return False

    def _steer(self, name: str) -> str:
        """Steer `name`'s plugged tap into it if it is prepared ("steered"), else "pending"."""
        made = self.owned.get(name)
        plug = self.plugs[name]
        if made is None or made.released:
            return "pending"
        self._steering.install(name, plug.tap)
        self._steered.add(name)
        say("INFO", f"steered {plug.tap} into namespace {name}")
        return "steered"

    def _unsteer(self, name: str) -> None:
        """Remove `name`'s steering (its table and veth pair), whatever this process did."""
        self._steering.remove(name)
        if name in self._steered:
            self._steered.discard(name)
            say("INFO", f"removed the steering into namespace {name}")

    def _tap_gone(self, name: str, plug: Plug) -> None:
        self._unsteer(name)
        self._record.unplug(name)
        say("INFO", f"{plug.tap} of namespace {name} is gone: steering removed, plug forgotten")

    def _check_taps(self) -> dict[str, int]:
        """Plugs whose tap vanished or is now another device (another index) are dropped, and
        their steering removed. The host namespace's links, by name."""
        present: dict[str, int] = self._steering.links()
        for name, plug in list(self.plugs.items()):
            if present.get(plug.tap) != plug.tap_index:
                try:
                    self._tap_gone(name, plug)
                except NamespaceError as error:
                    say("WARN", f"cannot remove the steering into {name}: {error}")
        return present

    def _plug(self, netns: str, tap: str) -> Answer:
        name = names.check_namespace(netns)
        try:
            steer.check_tap(tap)
        except steer.InvalidTap as error:
            raise channel.Refused(f"plug: {error}") from None
        index = self._check_taps().get(tap)
        if index is None:
            raise channel.Refused(f"plug: there is no link {tap} in the host's namespace")
        kind = self._steering.link_kind(tap)
        if kind not in steer.TAP_KINDS:
            raise channel.Refused(
                f"plug: {tap} is {('a ' + kind) if kind else 'a physical'} device, not a VM's"
                " tap (a tap, veth or macvtap)"
            )
        for other, plug in self.plugs.items():
            if other != name and plug.tap == tap:
                raise channel.Refused(
                    f"plug: {tap} is plugged for namespace {other} already (unplug that first)"
                )
        plugged = Plug(name, tap, index)
        previous = self.plugs.get(name)
        if previous != plugged:
            if previous is not None:
                self._unsteer(name)
            self._record.plug(plugged)
            say("INFO", f"plugged {tap} (index {index}) for namespace {name}")
        elif name in self._steered:
            return {"ok": True, "state": "steered"}, []
        return {"ok": True, "state": self._steer(name)}, []

    def _unplug(self, netns: str, tap: str) -> Answer:
        name = names.check_namespace(netns)
        if tap:
            try:
                steer.check_tap(tap)
            except steer.InvalidTap as error:
                raise channel.Refused(f"unplug: {error}") from None
        self._check_taps()
        plug = self.plugs.get(name)
        if plug is None:
            return {"ok": True, "state": "unplugged"}, []
        if tap and plug.tap != tap:
            say("INFO", f"not unplugging {name}: it is plugged to {plug.tap}, not {tap}")
            state = "steered" if name in self._steered else "pending"
            return {"ok": True, "state": state}, []
        self._unsteer(name)
        self._record.unplug(name)
        say("INFO", f"unplugged {plug.tap} from namespace {name}")
        return {"ok": True, "state": "unplugged"}, []

    def _listen(self, netns: str, port: int) -> Answer:
        name = names.check_namespace(netns)
        if port != self._imds_port:
            raise channel.Refused(f"listen: only port {self._imds_port}, not {port}")
        if name not in self.owned or self.owned[name].released:
            raise channel.Refused(f"listen: namespace {name} was not prepared")
        listening = self._namespaces.listen(name, port)
        # Kept by systemd for the next agent process (FileDescriptorStoreMax=).
        self._notifier.store_fds(name, [listening.fileno()])
        return {"ok": True}, [listening]

    def _release(self, netns: str) -> Answer:
        name = names.check_namespace(netns)
        made = self.owned.get(name)
        if made is not None and not made.released:  # else nothing of it is ours to remove
            if name in self.plugs or name in self._steered:
                try:
                    self._unsteer(name)  # the plug is kept: steered again if it comes back
                except NamespaceError as error:
                    say("WARN", f"cannot remove the steering into {name}: {error}")
            held = self._namespaces.release(made)
            if held is not None:
                self._leave_in_place(made, held)
                return {"ok": True}, []
            del self.owned[name]
            self._record.forget(name)
            if not made.created_namespace and name.startswith(self._prefix):
                # Adopted, with the agent's name: made by an agent whose record was lost, or by
                # the hypervisor for a VM now gone. Empty, it would only leak. (The socket the
                # agent served it on may not be closed yet.)
                self._remove_if_empty(name, listening_is_foreign=False)
        return {"ok": True}, []

    def _leave_in_place(self, made: netns.Ownership, held: str) -> None:
        """A namespace the agent made holds `held`, a link not its own: removing it would
        destroy that link (a VM's tap). Kept as released, removed once it holds none."""
        say("INFO", f"left namespace {made.namespace} in place: it holds link {held}")
        released = replace(made, released=True)
        if released != made:
            self.owned[made.namespace] = released
            self._record.remember(released)

    def _remove_released(self) -> None:
        """Namespaces left in place at their release: removed once they hold no foreign link."""
        for name, made in list(self.owned.items()):
            if not made.released:
                continue
            try:
                held = self._namespaces.release(replace(made, released=False))
            except NamespaceError as error:
                say("WARN", f"cannot remove namespace {name}: {error}")
                continue
            if held is None:
                del self.owned[name]
                self._record.forget(name)
                say("INFO", f"removed namespace {name}, left in place until it held no link")

    def _remove_leftover_steering(self) -> None:
        """Steering tables of namespaces this agent neither steers nor is about to steer again
        (plugged and prepared, after a restart): those of its prefix or of its record."""
        for name in self._steering.tables():
            if name in self._steered:
                continue
            made = self.owned.get(name)
            if name in self.plugs and made is not None and not made.released:
                continue  # steered by the last process: replaced when it is prepared
            ours = name in self.owned or name in self.plugs
            if not ours and self._namespaces.exists(name):
                # Another agent's (same prefix: a test run beside this one, or an agent that
                # lost its record, whose namespace the sweep looks at): not this one's to touch.
                continue
            if ours or name.startswith(self._prefix):
                try:
                    self._steering.remove(name)
                except NamespaceError as error:
                    say("WARN", f"cannot remove the steering into {name}: {error}")
                    continue
                say("INFO", f"removed leftover steering into namespace {name}")

    def _orphans(self) -> Answer:
        """Namespaces with the agent's prefix that its record does not name."""
        found = [name for name in self._namespaces.listed(self._prefix) if name not in self.owned]
        return {"ok": True, "names": found}, []

    def _remove_orphan(self, netns: str) -> Answer:
        name = names.check_namespace(netns)
        if not name.startswith(self._prefix) or name in self.owned:
            raise channel.Refused(f"remove_orphan: {name} is not an orphan of this agent's")
        return {"ok": True, "holds": self._remove_if_empty(name) or ""}, []

    def _remove_if_empty(self, name: str, listening_is_foreign: bool = True) -> str | None:
        held: str | None = self._namespaces.remove_if_empty(name, listening_is_foreign)
        if held is None:
            say("INFO", f"removed namespace {name}: no instance of this node, nothing in it")
        else:
            say(
                "INFO",
                f"left namespace {name} in place: no instance of this node, but it holds {held}",
            )
        return held

    def _keep(self, instance: str, entry: str) -> Answer:
        if self._kept is None:
            raise channel.Refused("keep: nothing is kept across restarts here")
        try:
            self._kept.write(names.check_instance_id(instance), entry)
        except ValueError as error:
            raise channel.Refused(str(error)) from None
        return {"ok": True}, []

    def _forget(self, instance: str) -> Answer:
        if self._kept is not None:
            self._kept.remove(names.check_instance_id(instance))
        return {"ok": True}, []

    def _unstore(self, netns: str) -> Answer:
        self._notifier.remove_fds(names.check_namespace(netns))
        return {"ok": True}, []

    def _compact(self) -> Answer:
        """At the end of every reconcile: forget the plugs whose tap is gone, remove what was
        left in place once it can go (and, the first time, steering the last agent left behind
        for nothing), and compact the record."""
        steps: list[Callable[[], object]] = [self._check_taps, self._remove_released]
        if not self._swept_steering:  # once: listing nft's tables costs ~1 ms a table
            self._swept_steering = True
            steps.append(self._remove_leftover_steering)
        for step in steps:
            try:
                step()
            except NamespaceError as error:
                say("WARN", f"cleaning up: {error}")
        self._record.compact(self.owned)
        return {"ok": True}, []

    def _notify(self, ready: bool, status: str, stopping: bool) -> Answer:
        if stopping:
            self._notifier.stopping()
        elif ready:
            self._notifier.ready(status or None)
        elif status:
            self._notifier.status(status)
        return {"ok": True}, []

    def serve(self, peer: socket.socket) -> None:
        """Answer requests until the serving process closes its end (it exited)."""
        while True:
            try:
                data, truncated, fds = channel.receive(peer, channel.MAX_REQUEST_BYTES, 0)
            except channel.ChannelError as error:
                if error.__cause__ is not None:  # the socket itself failed: the peer is gone
                    return
                say("WARN", f"refused a request of the serving process: {error}")
                self._answer(peer, {"ok": False, "error": str(error)}, [])
                continue
            if not data and not fds:
                return
            answer, sockets = self.handle(data, truncated)
            self._answer(peer, answer, sockets)

    @staticmethod
    def _answer(peer: socket.socket, answer: dict[str, Any], sockets: list[socket.socket]) -> None:
        try:
            channel.send(peer, answer, [each.fileno() for each in sockets])
        except channel.ChannelError as error:
            say("WARN", str(error))
        finally:
            for each in sockets:
                each.close()


def serving_user(name: str) -> tuple[int, int]:
    """The uid and primary gid of the serving process's user; never root."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise ConfigError(
            f"user: there is no user {name!r} for the serving process (install"
            " systemd/rolecall.sysusers and run systemd-sysusers, or set user = in agent.toml)"
        ) from None
    if entry.pw_uid == 0 or entry.pw_gid == 0:
        raise ConfigError(
            f"user: {name!r} is root or in root's group; the serving process must not be"
        )
    return entry.pw_uid, entry.pw_gid


#: An interpreter for the serving process other than this one (same Python minor version), for
#: when the serving user cannot reach this one: a development machine whose Python lives under
#: /root (pyenv). The virtualenv's packages are used either way.
SERVING_PYTHON_VARIABLE = "ROLECALL_AGENT_SERVING_PYTHON"
#: Runs in the serving process's interpreter, started with -I -S (no PYTHON* variables, no user
#: or system site directories). The code and this virtualenv's site-packages are reached through
#: directory descriptors the root process opened (``/proc/self/fd/N``), so the serving user needs
#: no path to where RoleCall is installed: only the files themselves must be readable by others.
_BOOTSTRAP = (
    "import runpy, site, sys; sys.path.insert(0, sys.argv[1]); site.addsitedir(sys.argv[2]); "
    "del sys.argv[1:3]; runpy.run_module('agent.serving', run_name='__main__', alter_sys=True)"
)


def code_directories() -> tuple[Path, Path]:
    """The directory holding the ``agent`` package (a source tree for an editable install,
    else site-packages), and this virtualenv's site-packages."""
    return Path(__file__).resolve().parent.parent, Path(sysconfig.get_paths()["purelib"])


def open_code_directories() -> list[int]:
    """Descriptors (O_PATH) of `code_directories`, inheritable, for the serving process."""
    descriptors = []
    for directory in code_directories():
        descriptor = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        os.set_inheritable(descriptor, True)
        descriptors.append(descriptor)
    return descriptors


def serving_command(fd: int, code: Sequence[int], environ: Mapping[str, str]) -> list[str]:
    python = environ.get(SERVING_PYTHON_VARIABLE) or sys.executable
    paths = [f"/proc/self/fd/{descriptor}" for descriptor in code]
    return [python, "-I", "-S", "-c", _BOOTSTRAP, *paths, str(fd)]


def reachable_by_others(path: str) -> bool:
    """Whether a user other than the owner may execute `path` (every directory on the way
    searchable by others, the file executable by others)."""
    real = Path(os.path.realpath(path))
    steps = [*reversed(real.parents), real]
    return all(step.stat().st_mode & 0o001 for step in steps)


def serving_python_environment() -> dict[str, str]:
    """For the demo, tests and benchmarks: `SERVING_PYTHON_VARIABLE` naming the system's
    interpreter of this Python version when this one is out of the serving user's reach."""
    if reachable_by_others(sys.executable):
        return {}
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for directory in ("/usr/bin", "/usr/local/bin"):
        candidate = f"{directory}/{version}"
        if os.path.exists(candidate) and reachable_by_others(candidate):
            return {SERVING_PYTHON_VARIABLE: candidate}
    return {}


def spawn_serving(
    serving_end: socket.socket, uid: int, gid: int, environ: Mapping[str, str]
) -> subprocess.Popen[bytes]:
    """The serving process (`agent.serving`), unprivileged from its first instruction: it is
    exec'd as `uid`/`gid` with every capability gone."""
    environment = {
        key: value
        for key, value in environ.items()
        if key not in ("NOTIFY_SOCKET", SERVING_PYTHON_VARIABLE) and not key.startswith("LISTEN_")
    }
    code = open_code_directories()
    try:
        return subprocess.Popen(
            serving_command(serving_end.fileno(), code, environ),
            pass_fds=(serving_end.fileno(), *code),
            cwd="/",
            env=environment,
            # No threads run in this process, which is what makes preexec_fn safe.
            preexec_fn=partial(
                capabilities.become_unprivileged,
                uid,
                gid,
                capabilities.last_capability(),
                os.getpid(),
            ),
        )
    finally:
        for descriptor in code:  # the serving process has its own copies
            os.close(descriptor)


def token_key(path: Path) -> bytes:
    """The key that signs the metadata service's IMDSv2 tokens, kept in ``path`` (beside the
    ownership record, in the runtime directory: tmpfs, root's, gone at reboot) so that tokens
    a guest holds stay valid across an agent restart; made there, 0600, the first time."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        key = new_key()
        try:
            descriptor = os.open(
                path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
            )
        except FileExistsError:
            return token_key(path)  # made meanwhile: theirs is the key
        try:
            os.write(descriptor, key)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        return key
    try:
        status = os.fstat(descriptor)
        key = os.read(descriptor, TOKEN_KEY_BYTES + 1)
    finally:
        os.close(descriptor)
    if status.st_uid != os.geteuid() or status.st_mode & 0o077 or len(key) != TOKEN_KEY_BYTES:
        # Not what this process made: make a new one (guests' tokens are then refused once, and
        # their SDKs fetch new ones).
        say("WARN", f"{path} is not a token key of this agent's; making a new one")
        os.unlink(path)
        return token_key(path)
    return key


def hello(
    config: AgentConfig, owned: Mapping[str, netns.Ownership], imds_key: bytes
) -> dict[str, Any]:
    """The serving process's first message: its configuration, the node's TLS files' contents
    (it reads no file under /etc/rolecall), what the ownership record says was made, the
    IMDSv2 token key, and the upstream metadata service's shared secret if there is one."""
    secret_file = config.upstream_shared_secret_file
    return {
        "imds_token_key": imds_key.hex(),
        "upstream_secret": (
            read_secret(secret_file, UPSTREAM_SHARED_FILE).hex()
            if secret_file is not None
            else None
        ),
        "config": config_to_wire(config),
        "ca_certificate": config.ca_certificate.read_text(),
        "certificate": config.certificate.read_text(),
        "key": config.key.read_text(),
        "owned": [
            [entry.namespace, entry.created_namespace, entry.added_address]
            for entry in owned.values()
        ],
    }


def make_plug_socket(path: Path) -> socket.socket | None:
    """The hypervisor's plug socket (`agent.plug`), or None, said in one line, if it cannot be
    made (the instances are served all the same; only plugging waits for a restart)."""
    try:
        made = plug_module.bind(path)
    except plug_module.PlugSocketError as error:
        say("WARN", f"{error}; VMs' taps cannot be plugged")
        return None
    say("INFO", f"hypervisor plug socket at {path}")
    return made


def send_plug_socket(peer: socket.socket, plug_socket: socket.socket | None) -> None:
    """The plug socket for the serving process to answer on (none: an empty message); closed
    here once sent."""
    try:
        channel.send(
            peer,
            {"plug_socket": plug_socket is not None},
            [plug_socket.fileno()] if plug_socket else [],
        )
    finally:
        if plug_socket is not None:
            plug_socket.close()


def send_kept_sockets(peer: socket.socket, kept: Mapping[str, list[int]]) -> None:
    """The sockets systemd kept, by namespace name, in batches the kernel takes; then closed
    here (systemd still keeps its own copies)."""
    flat = [(name, fd) for name, fds in kept.items() for fd in fds]
    for start in range(0, len(flat), channel.MAX_FDS_PER_MESSAGE):
        batch = flat[start : start + channel.MAX_FDS_PER_MESSAGE]
        channel.send(peer, {"names": [name for name, _ in batch]}, [fd for _, fd in batch])
    channel.send(peer, {"names": []})
    for _, fd in flat:
        os.close(fd)


def send_kept_entries(peer: socket.socket, entries: Mapping[str, str]) -> None:
    """The instances kept across the restart (`agent.kept`), in batches under the hello's
    limit, then an empty batch."""
    batch: list[str] = []
    size = 0
    for text in entries.values():
        if batch and size + len(text) > channel.MAX_HELLO_BYTES // 4:  # JSON escapes, at worst
            channel.send(peer, {"entries": batch})
            batch, size = [], 0
        batch.append(text)
        size += len(text)
    if batch:
        channel.send(peer, {"entries": batch})
    channel.send(peer, {"entries": []})


def kept_instances(directory: Path) -> tuple[kept_module.InstanceFiles | None, dict[str, str]]:
    """Where instances are kept across restarts, and what was kept; (None, {}) with one line
    said if the directory cannot be used (the agent then serves only what the controller says)."""
    files = kept_module.InstanceFiles(directory, lambda message: say("WARN", message))
    try:
        return files, files.load()
    except OSError as error:
        say("WARN", f"not keeping instances across restarts: {error}")
        return None, {}


def run(config: AgentConfig, ownership_file: Path) -> int:
    """The whole life of the privileged process; the serving process's exit status."""
    # Listening sockets kept by systemd across a restart, by namespace name; the LISTEN_*
    # variables are removed so that the serving process never takes them for its own.
    kept = listen_fds(os.environ)
    notifier = Notifier.from_environment(os.environ, lambda message: say("WARN", message))
    uid, gid = serving_user(config.user)
    record = netns.OwnershipRecord(ownership_file)
    files, entries = kept_instances(ownership_file.parent / kept_module.DIRECTORY_NAME)
    broker = Broker(
        config.imds_port, record, notifier, netns, kept=files, prefix=config.namespace_prefix
    )
    first = hello(config, broker.serving_owned(), token_key(ownership_file.parent / IMDS_KEY_FILE))
    privileged_end, serving_end = channel.pair()
    child = spawn_serving(serving_end, uid, gid, os.environ)
    serving_end.close()
    say(
        "INFO", f"serving process {child.pid} started as {config.user} (uid {uid}), no capabilities"
    )

    def stop(signum: int, frame: FrameType | None) -> None:
        notifier.stopping()
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        plug_socket = make_plug_socket(config.plug_socket)
        capabilities.keep_only(KEPT_CAPABILITIES)
        channel.send(privileged_end, first)
        send_plug_socket(privileged_end, plug_socket)
        send_kept_sockets(privileged_end, kept)
        send_kept_entries(privileged_end, entries)
        del entries
        broker.serve(privileged_end)
    except BaseException:
        child.kill()
        raise
    finally:
        privileged_end.close()
    code = child.wait()
    if code != 0:
        say("ERROR", f"the serving process exited with {code}; exiting so that it is restarted")
    return code if code >= 0 else 128 - code
