"""The serving process's side of the plug socket (`agent.plug`): one JSON line in, one out,
from root only, within `agent.plug.IDLE_SECONDS`; each request forwarded to the root process.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from typing import Any, cast

from twisted.application.service import Service
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorFDSet,
    IReactorSocket,
    IReactorTime,
    IReadDescriptor,
)
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from zope.interface import implementer

from agent.plug import (
    IDLE_SECONDS,
    MAX_LINE_BYTES,
    PlugRefused,
    PlugRequest,
    decode_request,
    encode,
)

log = Logger(namespace="rolecall.agent")

#: What answers a request: a dict with "ok" (never raises for a refusal: it says it).
Handler = Callable[[PlugRequest], dict[str, Any]]
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_uid(transport: Any) -> int | None:
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED), None if
    unknown."""
    try:
        handle = transport.getHandle()
        data = handle.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except (AttributeError, OSError):
        return None
    return int(_UCRED.unpack(data)[1])


class PlugProtocol(LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE_BYTES

    def __init__(self, factory: PlugFactory) -> None:
        self._factory = factory
        self._answered = False
        self._idle: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self._idle = self._factory.clock.callLater(IDLE_SECONDS, self._timed_out)
        uid = self._factory.peer_uid(self.transport)
        if uid != 0:
            log.warn("refused a plug request from uid {uid}: only root may plug", uid=uid)
            self._answer({"ok": False, "error": "only root may plug or unplug"})

    def lineReceived(self, line: bytes) -> None:
        if self._answered:
            return
        try:
            request = decode_request(line)
        except PlugRefused as error:
            self._answer({"ok": False, "error": str(error)})
            return
        self._answer(self._factory.handle(request))

    def lineLengthExceeded(self, line: bytes) -> None:
        self._answer({"ok": False, "error": f"request over {MAX_LINE_BYTES} bytes"})

    def _timed_out(self) -> None:
        self._idle = None
        cast(Any, self.transport).abortConnection()

    def _stop_timer(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None

    def connectionLost(self, reason: Any = None) -> None:
        self._stop_timer()

    def _answer(self, answer: dict[str, Any]) -> None:
        if self._answered:
            return
        self._answered = True
        self._stop_timer()
        assert self.transport is not None
        self.transport.write(encode(answer))
        self.transport.loseConnection()


class PlugFactory(ServerFactory):
    def __init__(
        self,
        handle: Handler,
        clock: IReactorTime,
        peer_uid: Callable[[Any], int | None] = peer_uid,
    ) -> None:
        self.handle = handle
        self.clock = clock
        self.peer_uid = peer_uid

    def buildProtocol(self, addr: Any) -> Protocol:
        return PlugProtocol(self)


class IPlugReactor(IReactorSocket, IReactorTime, IReactorFDSet):
    """Watching the plug socket, adopting each connection, timing out idle clients."""


@implementer(IReadDescriptor)
class _Acceptor:
    """Accepts on the plug socket and hands each connection to the reactor. (Not the reactor's
    adoptStreamPort: a Unix port chmods its path when it starts listening, 0666 by default, and
    the socket is root's, 0600, on purpose.)"""

    def __init__(self, reactor: IPlugReactor, listening: socket.socket, factory: PlugFactory):
        self._reactor = reactor
        self._listening = listening
        self._factory = factory

    def fileno(self) -> int:
        return self._listening.fileno()

    def doRead(self) -> None:
        for _ in range(16):  # a few per turn; the rest on the next
            try:
                client, _ = self._listening.accept()
            except BlockingIOError:
                return
            except OSError as error:
                log.warn("cannot accept on the plug socket: {error}", error=str(error))
                return
            try:
                client.setblocking(False)
                self._reactor.adoptStreamConnection(client.fileno(), socket.AF_UNIX, self._factory)
            finally:
                client.close()  # the reactor has its own copy

    def connectionLost(self, reason: Any) -> None:
        pass

    def logPrefix(self) -> str:
        return "plug socket"


class PlugService(Service):
    """Serves the plug socket the root process made (its descriptor) while running."""

    def __init__(self, reactor: IPlugReactor, descriptor: int, handle: Handler) -> None:
        self._reactor = reactor
        self._listening = socket.socket(fileno=descriptor)
        self._listening.setblocking(False)
        self._acceptor = _Acceptor(reactor, self._listening, PlugFactory(handle, reactor))

    def startService(self) -> None:
        Service.startService(self)
        self._reactor.addReader(self._acceptor)
        log.info("hypervisor plug socket served")

    def stopService(self) -> None:
        Service.stopService(self)
        self._reactor.removeReader(self._acceptor)
        self._listening.close()


def forwarding_handler(
    namespace_of: Callable[[str], str], ask_root: Callable[..., dict[str, Any]]
) -> Handler:
    """A handler that names the instance's namespace (`namespace_of`: the assignment's, or the
    prefix and the id before it comes) and asks the root process (`ask_root(op, netns=, tap=)`,
    which raises with a message when refused)."""

    def handle(request: PlugRequest) -> dict[str, Any]:
        name = namespace_of(request.instance_id)
        try:
            answer = ask_root(request.op, netns=name, tap=request.tap)
        except Exception as error:  # refused, or the root process is gone: said, not raised
            log.warn(
                "{op} {instance} {tap} refused: {error}",
                op=request.op,
                instance=request.instance_id,
                tap=request.tap or "-",
                error=str(error),
            )
            return {"ok": False, "error": str(error)}
        state = str(answer.get("state", ""))
        log.info(
            "{op} {instance} {tap}: {state} ({netns})",
            op=request.op,
            instance=request.instance_id,
            tap=request.tap or "-",
            state=state,
            netns=name,
        )
        return {"ok": True, "state": state, "namespace": name}

    return handle
