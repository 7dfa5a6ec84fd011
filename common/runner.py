"""A daemon's life on the reactor, the same recipe for both: start the services once the
reactor runs, say READY=1 when every awaited condition is met (`notify.ReadyGate`), stop once
on SIGTERM or SIGINT, say STOPPING=1 and stop the services on shutdown, and exit 1 if a
listener cannot listen."""

from __future__ import annotations

import signal
import typing
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any

from twisted.application.service import IService, MultiService, Service

from common.listening import ListeningService
from common.notify import Notifier, ReadyGate


class DaemonReactor(typing.Protocol):
    """What running a daemon uses of the reactor (IReactorCore, IReactorTime and
    IReactorThreads at once, as Twisted's reactors are)."""

    @property
    def running(self) -> bool: ...

    def run(self) -> None: ...

    def stop(self) -> None: ...

    def callWhenRunning(self, callable: Callable[..., Any], *args: object) -> object: ...

    def callFromThread(self, callable: Callable[..., Any], *args: object) -> None: ...

    def callLater(self, delay: float, callable: Callable[..., Any], *args: object) -> object: ...

    def addSystemEventTrigger(
        self, phase: str, eventType: str, callable: Callable[..., Any], *args: object
    ) -> object: ...


def add_service(parent: MultiService, name: str, service: Service) -> None:
    """Make ``service`` a child of ``parent`` under ``name``: how both daemons compose theirs.
    (Taken as Twisted's own `Service`, whose methods have no annotations but may be called.)"""
    service.setName(name)
    service.setServiceParent(parent)


def run_daemon(
    reactor: DaemonReactor,
    service: IService,
    notifier: Notifier,
    ready: ReadyGate,
    listeners: Mapping[str, ListeningService],
    *,
    stop_once: bool = False,
) -> int:
    """Run `service` until the reactor stops; the exit status (1 if a listener failed).
    Each of `listeners` meets the `ready` condition of its name once it listens. With
    `stop_once`, SIGTERM and SIGINT stop it once (`stop_once_on_signals`); else Twisted's own
    handlers do."""
    status = 0

    def failed(failure: object) -> None:
        nonlocal status
        if status == 0:  # the listener said why, in one line
            status = 1
            reactor.callWhenRunning(reactor.stop)

    for name, listener in listeners.items():
        listener.listening.addCallbacks(lambda _port, name=name: ready.met(name), failed)
    if stop_once:
        # First: once a listener listens (and says so), a signal must already find them.
        reactor.callWhenRunning(stop_once_on_signals, reactor)
    reactor.callWhenRunning(service.startService)
    reactor.addSystemEventTrigger("before", "shutdown", notifier.stopping)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return status


def stop_once_on_signals(reactor: DaemonReactor) -> None:
    """SIGTERM and SIGINT stop the reactor once. A daemon can be sent SIGTERM twice (the agent's
    serving process by its root process, and with it by whoever signalled the whole group: a
    terminal, `systemctl kill`); Twisted's own handler would raise ReactorNotRunning with a
    traceback on the second."""
    stopping: list[bool] = []

    def stop() -> None:
        if not stopping and reactor.running:
            stopping.append(True)
            reactor.stop()

    def handle(signum: int, frame: FrameType | None) -> None:
        reactor.callFromThread(stop)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, handle)
