"""Both daemons' life on the reactor (common/runner.py), on a fake reactor that runs what was
scheduled when `run` is called: READY=1 once every listener listens, exit 1 when one cannot,
STOPPING=1 and the services stopped on shutdown."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from twisted.application.service import Service
from twisted.python.failure import Failure

from common.listening import ListeningService
from common.notify import Notifier, ReadyGate
from common.runner import run_daemon, stop_once_on_signals


class FakeReactor:
    running = False

    def __init__(self) -> None:
        self.when_running: list[Callable[[], Any]] = []
        self.before_shutdown: list[Callable[[], Any]] = []
        self.stopped = False

    def callWhenRunning(self, callable: Callable[..., Any], *args: object) -> None:
        self.when_running.append(lambda: callable(*args))

    def callFromThread(self, callable: Callable[..., Any], *args: object) -> None:
        callable(*args)

    def callLater(self, delay: float, callable: Callable[..., Any], *args: object) -> None:
        raise AssertionError("not used")

    def addSystemEventTrigger(
        self, phase: str, event: str, callable: Callable[..., Any], *args: object
    ) -> None:
        assert (phase, event) == ("before", "shutdown")
        self.before_shutdown.append(lambda: callable(*args))

    def run(self) -> None:
        self.running = True
        while self.when_running:
            self.when_running.pop(0)()
        # stopped (by the daemon, or a signal): the shutdown triggers run
        for trigger in self.before_shutdown:
            trigger()
        self.running = False

    def stop(self) -> None:
        self.stopped = True


class Heard(Notifier):
    def __init__(self) -> None:
        super().__init__(None)
        self.messages: list[str] = []

    def _send(self, payload: bytes, fds: Sequence[int]) -> bool:
        self.messages.append(payload.decode())
        return True


class Listener(ListeningService):
    """A listener whose outcome the test decides, when the service starts."""

    def __init__(self, outcome: Exception | None) -> None:
        super().__init__(None, "127.0.0.1", 0, None, "test")  # type: ignore[arg-type]
        self.outcome = outcome

    def startService(self) -> None:
        Service.startService(self)
        if self.outcome is None:
            self.listening.callback(None)
        else:
            self.listening.errback(Failure(self.outcome))

    def stopService(self) -> None:
        Service.stopService(self)


@pytest.fixture(autouse=True)
def signal_handlers() -> Iterator[None]:
    """run_daemon installs the daemon's SIGTERM and SIGINT handlers: pytest's come back."""
    kept = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in kept.items():
        signal.signal(signum, handler)


def run(*outcomes: Exception | None) -> tuple[int, FakeReactor, Heard, list[Listener]]:
    reactor, notifier = FakeReactor(), Heard()
    listeners = [Listener(outcome) for outcome in outcomes]
    service = Service()
    started: list[str] = []

    def start() -> None:
        started.append("started")
        for each in listeners:
            each.startService()

    service.startService = start  # type: ignore[method-assign]
    service.stopService = lambda: started.append("stopped")  # type: ignore[method-assign]
    names = {f"listener {index}": each for index, each in enumerate(listeners)}
    ready = ReadyGate(notifier, names, lambda: "all listen")
    code = run_daemon(reactor, service, notifier, ready, names, stop_once=True)
    assert started[-1] == "stopped"
    return code, reactor, notifier, listeners


def test_ready_once_every_listener_listens_and_stopping_on_shutdown() -> None:
    code, reactor, notifier, _ = run(None, None)
    assert code == 0 and not reactor.stopped
    assert any(
        "READY=1" in message and "STATUS=all listen" in message for message in notifier.messages
    )
    assert "STOPPING=1" in notifier.messages[-1]


def test_a_signal_stops_the_reactor_once() -> None:
    run(None)
    reactor = FakeReactor()
    reactor.running = True
    stop_once_on_signals(reactor)
    handler = signal.getsignal(signal.SIGTERM)
    assert callable(handler)
    handler(signal.SIGTERM, None)
    assert reactor.stopped
    reactor.stopped = False
    handler(signal.SIGTERM, None)  # a second SIGTERM: nothing more
    assert not reactor.stopped


def test_a_listener_that_cannot_listen_stops_the_daemon_with_status_one() -> None:
    code, reactor, notifier, _ = run(None, OSError("address in use"))
    assert code == 1 and reactor.stopped
    assert not any("READY=1" in message for message in notifier.messages)
