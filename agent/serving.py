"""The agent's serving process: everything that talks to guests and to the controller, run as an
unprivileged user with no capabilities (started by `agent.privileged`; ``python -m
agent.serving FD``, FD being its end of the socket pair).

It reads no file: its configuration, the node's certificate and key, the ownership record and the
sockets systemd kept come in the privileged process's first messages. What needs root (a
namespace, the socket inside it, removing them, telling systemd) it asks for over the channel,
through the same interfaces `NodeAgent` uses in one process: `PrivilegedNamespaces` for
`agent.netns`, `PrivilegedOwnership` for the ownership record, `RelayNotifier` for the notifier.
Each request is a blocking round trip of well under a millisecond on the reactor thread, as the
same work done in-process was.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any, cast

from agent import capabilities, channel, kept
from agent.config import AgentConfig, config_from_wire
from agent.netns import NamespaceError, Ownership
from common.notify import Notifier

#: How long the agent waits for something to serve (instances kept across the restart, or the
#: controller's first answer) before it tells systemd it has started anyway.
STARTUP_SECONDS = 10.0


class PrivilegedPeer:
    """The privileged process, asked one request at a time."""

    def __init__(self, end: socket.socket) -> None:
        self._end = end
        end.settimeout(channel.ANSWER_TIMEOUT_SECONDS)

    def request(self, op: str, **fields: Any) -> tuple[dict[str, Any], list[int]]:
        """The answer and the descriptors that came with it; NamespaceError if refused."""
        channel.send(self._end, {"op": op, **fields})
        data, _, fds = channel.receive(self._end, channel.MAX_REQUEST_BYTES, 1)
        if not data:
            raise channel.ChannelError("the privileged process has gone")
        answer = json.loads(data)
        if not answer.get("ok"):
            for fd in fds:
                os.close(fd)
            raise NamespaceError(str(answer.get("error", "refused")))
        return answer, fds


class PrivilegedNamespaces:
    """`agent.netns`'s prepare, listen and release, done by the privileged process."""

    def __init__(self, peer: PrivilegedPeer) -> None:
        self._peer = peer

    def prepare(self, name: str) -> Ownership:
        answer, _ = self._peer.request("prepare", netns=name)
        return Ownership(name, bool(answer["created_namespace"]), bool(answer["added_address"]))

    def listen(self, name: str, port: int) -> socket.socket:
        _, fds = self._peer.request("listen", netns=name, port=port)
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise NamespaceError(f"no socket came for {name}")
        listening = socket.socket(fileno=fds[0])
        listening.setblocking(False)
        return listening

    def release(self, ownership: Ownership) -> None:
        self._peer.request("release", netns=ownership.namespace)

    def listed(self, prefix: str) -> list[str]:
        """The namespaces with the agent's prefix that the root process's record does not own
        (it knows the prefix from the configuration)."""
        answer, _ = self._peer.request("orphans")
        return [str(name) for name in answer["names"]]

    def remove_if_empty(self, name: str) -> str | None:
        answer, _ = self._peer.request("remove_orphan", netns=name)
        return str(answer["holds"]) or None


class PrivilegedKeeper:
    """Each instance kept across a restart (`agent.kept`), written by the root process."""

    def __init__(self, peer: PrivilegedPeer) -> None:
        self._peer = peer

    def keep(self, instance_id: str, entry: str) -> None:
        self._peer.request("keep", instance=instance_id, entry=entry)

    def forget(self, instance_id: str) -> None:
        self._peer.request("forget", instance=instance_id)


class PrivilegedOwnership:
    """The ownership record as `NodeAgent` sees it: what was made, as the privileged process
    said at start. The privileged process records every change itself (it decides what it made),
    so remembering and forgetting here only keep the agent's view."""

    def __init__(self, peer: PrivilegedPeer, owned: dict[str, Ownership]) -> None:
        self._peer = peer
        self._owned = owned

    def load(self) -> dict[str, Ownership]:
        return dict(self._owned)

    def save(self, owned: dict[str, Ownership]) -> None:
        self._peer.request("compact")

    def compact(self, owned: dict[str, Ownership]) -> None:
        self._peer.request("compact")

    def remember(self, ownership: Ownership) -> None:
        pass

    def forget(self, name: str) -> None:
        pass


class RelayNotifier(Notifier):
    """The service manager, told through the privileged process (the only one systemd hears)."""

    def __init__(self, peer: PrivilegedPeer) -> None:
        super().__init__(None)
        self._peer = peer

    @property
    def enabled(self) -> bool:
        return True

    def _notify(self, ready: bool = False, status: str = "", stopping: bool = False) -> bool:
        # The channel takes printable ASCII only (an error text may carry anything else).
        shown = "".join(char if " " <= char <= "~" else "?" for char in status)
        try:
            self._peer.request(
                "notify", ready=ready, status=shown[: channel.MAX_STATUS_CHARS], stopping=stopping
            )
        except (NamespaceError, channel.ChannelError):
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self._notify(ready=True, status=status or "")

    def status(self, text: str) -> bool:
        return self._notify(status=text)

    def stopping(self) -> bool:
        return self._notify(stopping=True)

    def store_fds(self, name: str, fds: Sequence[int]) -> bool:
        """Nothing to do: the privileged process stored the socket when it opened it."""
        return True

    def remove_fds(self, name: str) -> bool:
        try:
            self._peer.request("unstore", netns=name)
        except (NamespaceError, channel.ChannelError):
            return False
        return True


def receive_start(
    end: socket.socket,
) -> tuple[dict[str, Any], int | None, dict[str, list[int]], list[str]]:
    """The privileged process's first message, the plug socket (a descriptor, or None if it
    could not be made), the kept sockets by namespace name, and the instances kept across the
    restart (`agent.kept` entries, not yet checked)."""
    data, truncated, _ = channel.receive(end, channel.MAX_HELLO_BYTES, 0)
    if truncated or not data:
        raise channel.ChannelError("no start message from the privileged process")
    first = json.loads(data)
    _, _, plug_fds = channel.receive(end, channel.MAX_HELLO_BYTES, 1)
    plug_socket = plug_fds[0] if plug_fds else None
    kept_sockets: dict[str, list[int]] = {}
    while True:
        data, _, fds = channel.receive(end, channel.MAX_HELLO_BYTES, channel.MAX_FDS_PER_MESSAGE)
        batch = json.loads(data)["names"]
        if not batch:
            break
        for name, fd in zip(batch, fds, strict=True):
            kept_sockets.setdefault(name, []).append(fd)
    entries: list[str] = []
    while True:
        data, _, _ = channel.receive(end, channel.MAX_HELLO_BYTES, 0)
        texts = json.loads(data)["entries"]
        if not texts:
            return first, plug_socket, kept_sockets, entries
        entries.extend(str(text) for text in texts)


def decode_entries(texts: Sequence[str], warn: Callable[[str], None]) -> list[kept.Entry]:
    """The kept instances that can be used; each that cannot is said in one line."""
    entries = []
    for text in texts:
        try:
            entries.append(kept.decode_entry(text))
        except kept.EntryError as error:
            warn(f"not serving an instance as kept across the restart: {error}")
    return entries


def check_unprivileged() -> None:
    """Refuse to serve guests with any privilege (a mistake in how the process was started)."""
    held = capabilities.process_capabilities()
    if os.getuid() == 0 or os.geteuid() == 0 or any(held[key] for key in ("CapEff", "CapPrm")):
        raise SystemExit("rolecall-agent: the serving process must run unprivileged")


def run(end: socket.socket) -> int:
    """The serving process's whole life: the exit status."""
    check_unprivileged()
    first, plug_socket, kept_sockets, kept_texts = receive_start(end)
    config: AgentConfig = config_from_wire(first["config"])
    owned = {
        name: Ownership(name, bool(created), bool(added)) for name, created, added in first["owned"]
    }
    peer = PrivilegedPeer(end)

    from twisted.internet import reactor
    from twisted.logger import Logger

    from agent.compose import IServingReactor, make_agent_service
    from agent.reconcile import NodeAgent
    from common.listening import ListeningService
    from common.logs import start_logging
    from common.notify import ReadyGate, instances_status
    from common.runner import DaemonReactor, run_daemon

    log = Logger(namespace="rolecall.agent")
    restored = decode_entries(kept_texts, lambda message: log.warn("{message}", message=message))
    del kept_texts
    notifier = RelayNotifier(peer)
    service = make_agent_service(
        config,
        # The global reactor's static type names only the interfaces every reactor has; the
        # agent's are among those it provides.
        cast(IServingReactor, reactor),
        tls=(first["ca_certificate"], first["certificate"], first["key"]),
        imds_key=bytes.fromhex(first["imds_token_key"]),
        upstream_secret=(
            bytes.fromhex(first["upstream_secret"]) if first.get("upstream_secret") else None
        ),
        namespaces=PrivilegedNamespaces(peer),
        ownership=PrivilegedOwnership(peer, owned),
        notifier=notifier,
        inherited=kept_sockets,
        keeper=PrivilegedKeeper(peer),
        restored=restored,
    )
    del first  # the key stays only in the TLS context, the secret only in the forwarder
    start_logging()
    # systemd (Type=notify, through the privileged process) hears READY=1 once the metrics
    # listener listens and the instances are served: as kept across the restart, or as the
    # first assignments answer says; or, with neither, after STARTUP_SECONDS, so that a start
    # while the controller is unreachable never blocks `systemctl`. STATUS= on every change
    # after that, STOPPING=1 on shutdown.
    agent = cast(NodeAgent, service.getServiceNamed("agent"))

    def status_line() -> str:
        text = instances_status(len(agent.slots), len(agent.failed))
        if not agent.synced:
            problem = agent.poll_problem
            text += "; not yet synced with the controller" + (f": {problem}" if problem else "")
        return text

    if plug_socket is not None:
        from agent.plugserver import PlugService, forwarding_handler
        from common.runner import add_service

        def ask_root(op: str, **fields: Any) -> dict[str, Any]:
            return peer.request(op, **fields)[0]

        add_service(
            service,
            "plugs",
            PlugService(
                cast(Any, reactor), plug_socket, forwarding_handler(agent.namespace_of, ask_root)
            ),
        )
    ready = ReadyGate(notifier, ("metrics listener", "instances"), status_line)
    agent.on_change = lambda: ready.met("instances")

    def started_anyway() -> None:
        if not ready.ready:
            ready.met("instances")

    reactor.callLater(STARTUP_SECONDS, started_anyway)
    health = cast(ListeningService, service.getServiceNamed("health"))
    return run_daemon(
        cast(DaemonReactor, reactor),
        service,
        notifier,
        ready,
        {"metrics listener": health},
        # The root process passes SIGTERM on, and a group signal reaches this process too.
        stop_once=True,
    )


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if len(arguments) != 1 or not arguments[0].isdigit():
        print("usage: python -m agent.serving FD (started by rolecall-agent)", file=sys.stderr)
        return 2
    end = socket.socket(fileno=int(arguments[0]))
    try:
        return run(end)
    except (channel.ChannelError, OSError, ValueError) as error:
        print(f"rolecall-agent (serving): {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
