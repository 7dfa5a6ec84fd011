"""One TCP listener as a Twisted service: listens while running, says where in one log line
(under the daemon's own log namespace), or why it cannot, and stops listening on stop. Both
daemons compose their listeners from it."""

from __future__ import annotations

from typing import cast

from twisted.application.service import Service
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import (
    IListeningPort,
    IReactorSSL,
    IReactorTCP,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import ServerFactory
from twisted.internet.ssl import CertificateOptions
from twisted.logger import Logger
from twisted.python.failure import Failure


class ListeningService(Service):
    """Listens on one TCP address while running; `listening` fires with the port (or the error).
    With `tls`, the reactor is adapted to `IReactorSSL`, as Twisted's reactors provide where TLS
    is available."""

    def __init__(
        self,
        reactor: IReactorTCP,
        host: str,
        port: int,
        factory: ServerFactory,
        label: str,
        tls: CertificateOptions | None = None,
        log_namespace: str = "rolecall.controller",
    ) -> None:
        self._log = Logger(namespace=log_namespace)
        self._reactor = reactor
        self._host = host
        self._port_number = port
        self._factory = factory
        self._label = label
        self._tls = tls
        self.port: IListeningPort | None = None
        self.listening: Deferred[IListeningPort] = Deferred()

    def startService(self) -> None:
        Service.startService(self)
        self._endpoint().listen(self._factory).addCallbacks(self._listened, self._failed)

    def _endpoint(self) -> IStreamServerEndpoint:
        if self._tls is not None:
            return SSL4ServerEndpoint(
                IReactorSSL(self._reactor), self._port_number, self._tls, interface=self._host
            )
        if ":" in self._host:
            return TCP6ServerEndpoint(self._reactor, self._port_number, interface=self._host)
        return TCP4ServerEndpoint(self._reactor, self._port_number, interface=self._host)

    def address(self) -> IPv4Address | IPv6Address:
        """Where it listens (only once `listening` has fired)."""
        assert self.port is not None, f"{self._label} does not listen"
        return cast(IPv4Address | IPv6Address, self.port.getHost())

    def _listened(self, port: IListeningPort) -> None:
        self.port = port
        address = self.address()
        host = f"[{address.host}]" if ":" in address.host else address.host
        self._log.info(
            "{label} listening on {scheme}://{host}:{port}",
            label=self._label,
            scheme="https" if self._tls is not None else "http",
            host=host,
            port=address.port,
        )
        self.listening.callback(port)

    def _failed(self, failure: Failure) -> None:
        self._log.critical(
            "{label} cannot listen on {host}:{port}: {error}",
            label=self._label,
            host=self._host,
            port=self._port_number,
            error=failure.getErrorMessage(),
        )
        self.listening.errback(failure)

    def stopService(self) -> Deferred[None] | None:
        Service.stopService(self)
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None
