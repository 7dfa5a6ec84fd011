"""The controller daemon as composable Twisted services: ``make_service(config, reactor, ...)``."""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.web.server import Site

from controller.api import ApiResource, make_site
from controller.config import ControllerConfig
from controller.iam import registry as iam_registry
from controller.store.base import Store

log = Logger(namespace="rolecall.controller")


class ListeningService(Service):
    """Listens on one TCP address while running; `listening` fires with the port (or the error)."""

    def __init__(self, reactor: Any, host: str, port: int, site: Site, label: str) -> None:
        self._reactor = reactor
        self._host = host
        self._port_number = port
        self._site = site
        self._label = label
        self.port: IListeningPort | None = None
        self.listening: Deferred[IListeningPort] = Deferred()

    def startService(self) -> None:
        super().startService()
        endpoint_type = TCP6ServerEndpoint if ":" in self._host else TCP4ServerEndpoint
        endpoint = endpoint_type(self._reactor, self._port_number, interface=self._host)
        endpoint.listen(self._site).addCallbacks(self._listened, self._failed)

    def _listened(self, port: IListeningPort) -> None:
        self.port = port
        address = port.getHost()
        host = f"[{address.host}]" if ":" in address.host else address.host
        log.info(
            "{label} listening on http://{host}:{port}",
            label=self._label,
            host=host,
            port=address.port,
        )
        self.listening.callback(port)

    def _failed(self, failure: Any) -> None:
        log.critical(
            "{label} cannot listen on {host}:{port}: {error}",
            label=self._label,
            host=self._host,
            port=self._port_number,
            error=failure.getErrorMessage(),
        )
        self.listening.errback(failure)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()  # type: ignore[no-any-return]
        return None


def make_service(config: ControllerConfig, reactor: Any, store: Store) -> MultiService:
    """The controller: its public API listener (and, as they arrive, the node API and metrics)."""
    root = MultiService()
    site = make_site(ApiResource(store, iam_registry, reactor), config.max_body_bytes)
    api = ListeningService(reactor, config.api_host, config.api_port, site, "public API")
    api.setName("api")
    api.setServiceParent(root)
    return root
