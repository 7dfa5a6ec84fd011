"""The controller daemon as composable Twisted services: ``make_service(config, reactor, ...)``."""

from __future__ import annotations

import resource as resource_limits
from typing import TYPE_CHECKING, Any, cast

from prometheus_client import CollectorRegistry
from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.interfaces import IListeningPort, IReactorTCP, IReactorTime
from twisted.internet.ssl import Certificate, CertificateOptions, PrivateCertificate
from twisted.logger import Logger

from common.health import health_factory
from common.http11 import ConnectionLimit
from common.listening import ListeningService
from common.runner import add_service
from controller.actions import Registry, Services
from controller.api import ApiFactory, PublicApi
from controller.assignments import AssignmentHub
from controller.audit import AuditLog, DatabaseAuditLog
from controller.config import ControllerConfig
from controller.ec2 import registry as ec2_registry
from controller.ec2.limits import Ec2Limits
from controller.forwarded import parse_networks
from controller.health import readiness
from controller.iam import registry as iam_registry
from controller.identity import IdentitySigner
from controller.identityfiles import load_identity_signer
from controller.keyring import KeyRingError, KeyRingFile, KeyRingSource
from controller.lastused import RoleLastUsedService
from controller.listener import ChangeListener, IListenerReactor
from controller.metrics import ControllerMetrics
from controller.nodeapi import NodeApi, NodeApiSettings, node_api_factory
from controller.sessions import Sessions
from controller.shared import (
    IDENTITY_CERT,
    IDENTITY_KEY,
    NODE_CA_CERT,
    NODE_CA_KEY,
    TOKEN_KEYS,
    KeyRingRow,
    load_pair_in,
)
from controller.store.base import Store, StoreError
from controller.store.factory import open_store
from controller.sts import registry as sts_registry

if TYPE_CHECKING:
    import psycopg

log = Logger(namespace="rolecall.controller")
KEY_RING_REFRESH_SECONDS = 30.0


class IControllerReactor(IReactorTime, IReactorTCP):
    """What the controller's services use of the reactor: timers (long polls, the key ring's
    refresh, the node metrics) and TCP listeners. The node API's TLS listener adapts it to
    `IReactorSSL`, as Twisted's reactors provide where TLS is available."""


class KeyRingRefresh(TimerService):
    """Re-reads the token key ring file now and then, so a rotation reaches this process."""

    def __init__(self, sessions: Sessions, interval: float, clock: IReactorTime) -> None:
        TimerService.__init__(self, interval, self._refresh)
        self.clock = clock
        self._sessions = sessions
        self._problem: str | None = None

    def refresh_now(self) -> None:
        """Re-read the ring now (a change was announced), logging a failure as the timer does."""
        self._refresh()

    def _refresh(self) -> None:
        try:
            self._sessions.refresh()
        except KeyRingError as error:
            # One line when the problem starts or changes, not one traceback every interval.
            if str(error) != self._problem:
                self._problem = str(error)
                log.error(
                    "cannot re-read the token key ring ({problem}); serving with the keys"
                    " loaded before",
                    problem=self._problem,
                )
        except Exception:  # a LoopingCall that raises stops for good: log and go on
            log.failure("cannot re-read the token key ring; keeping the keys loaded")
        else:
            if self._problem is not None:
                log.info("the token key ring is readable again")
                self._problem = None


def api_registry() -> Registry:
    """Every action the public API serves."""
    return Registry(iam_registry, sts_registry, ec2_registry)


class ReleaseWaiters(Service):
    """Answers every waiting long poll when the controller stops (with what it has)."""

    def __init__(self, hub: AssignmentHub) -> None:
        self._hub = hub

    def stopService(self) -> None:
        Service.stopService(self)
        self._hub.stop()


def make_service(
    config: ControllerConfig,
    reactor: IControllerReactor,
    store: Store,
    registry: CollectorRegistry | None = None,
) -> MultiService:
    """The controller: its public API, node API and metrics listeners and the key ring refresh.

    Metrics go to ``registry`` (a new one by default; never prometheus_client's global one).
    """
    root = MultiService()
    shared = config.store_backend == "postgresql"
    # On PostgreSQL, a store of one connection of its own for what is read or written beside a
    # request's transaction: the audit table (from a thread) and the key ring row (re-read while
    # a request holds one of the pool's connections, which may be its only one).
    side_store = open_store(config.with_overrides(store_pool_size=1)) if shared else None
    keys: KeyRingSource = (
        KeyRingRow(side_store) if side_store is not None else KeyRingFile(config.token_keys_path)
    )
    sessions = Sessions(keys)
    hub = AssignmentHub(reactor)
    actions = api_registry()
    metrics = ControllerMetrics(
        registry if registry is not None else CollectorRegistry(),
        ((action.service, action.name) for action in actions),
    )
    metrics.watch_long_polls(hub.waiting)
    metrics.watch_nodes(store, reactor)
    # Added first, so stopped last: its final write comes after the listeners have stopped.
    last_used = RoleLastUsedService(store, reactor, config.role_last_used_seconds)
    metrics.watch_last_used(last_used.waiting)
    add_service(root, "role-last-used", last_used)
    limits = Ec2Limits(
        max_instances_per_account=config.max_instances_per_account,
        node_capacity=config.node_capacity,
        subnet=config.subnet,
        max_key_pairs_per_account=config.max_key_pairs_per_account,
    )
    if shared:
        pair = load_pair_in(store, (IDENTITY_KEY, IDENTITY_CERT))
        signer = None if pair is None else IdentitySigner(*pair)
    else:
        signer = load_identity_signer(config.identity_key_path, config.identity_cert_path)
    if signer is None:
        log.warn(
            "no instance identity key ({path}): instances get no signed identity documents"
            " until rolecall-controller init makes one",
            path="in the database" if shared else str(config.identity_key_path),
        )
    resource = PublicApi(
        store,
        actions,
        reactor,
        sessions,
        Services(assignments=hub, ec2_limits=limits, identity_signer=signer, last_used=last_used),
        metrics,
        trusted_proxies=parse_networks(config.trusted_proxies),
    )
    descriptors = resource_limits.getrlimit(resource_limits.RLIMIT_NOFILE)[0]
    if descriptors == resource_limits.RLIM_INFINITY:
        descriptors = 1 << 20
    limit = ConnectionLimit(config.api_connection_limit(descriptors))
    metrics.watch_connections(limit)
    factory = ApiFactory(resource, reactor, config.max_body_bytes, limit)
    api = ListeningService(reactor, config.api_host, config.api_port, factory, "public API")

    # The node API's TLS handshakes need descriptors too: the public port stops accepting at
    # its limit rather than take them all (issue 10).
    def watched(port: IListeningPort) -> IListeningPort:
        limit.watch(port)
        return port

    api.listening.addCallback(watched)
    add_service(root, "api", api)
    refresh = KeyRingRefresh(sessions, KEY_RING_REFRESH_SECONDS, reactor)
    add_service(root, "key-ring-refresh", refresh)
    audit: AuditLog | DatabaseAuditLog
    if side_store is not None:
        # The audit table is written from a thread, one group at a time, apart from the pool
        # the reactor's requests use.
        audit = DatabaseAuditLog(side_store)
        add_service(root, "side-store", CloseStore(side_store))
        add_service(root, "listener", change_listener(config, reactor, hub, refresh, metrics))
    else:
        audit = AuditLog(config.audit_log_path)
    node_api = ListeningService(
        reactor,
        config.node_api_host,
        config.node_api_port,
        node_api_factory(
            NodeApi(
                store,
                hub,
                sessions,
                audit,
                reactor,
                NodeApiSettings(config.instance_credential_seconds),
                metrics,
                last_used,
            ),
            reactor,
        ),
        "node API",
        tls=node_api_tls(config, shared_node_ca(store) if shared else None),
    )
    add_service(root, "node-api", node_api)
    health = ListeningService(
        reactor,
        config.metrics_host,
        config.metrics_port,
        health_factory(metrics.registry, readiness(store, lambda: keys.ring), reactor),
        "metrics",
    )
    add_service(root, "metrics", health)
    add_service(root, "release-long-polls", ReleaseWaiters(hub))
    return root


def shared_node_ca(store: Store) -> bytes:
    """The node CA's certificate from the database (several controllers, one CA)."""
    pair = load_pair_in(store, (NODE_CA_KEY, NODE_CA_CERT))
    if pair is None:
        raise StoreError("the database holds no node CA; run rolecall-controller init")
    return pair[1]


class CloseStore(Service):
    """Closes a store the controller opened for one service when the controller stops."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def stopService(self) -> None:
        Service.stopService(self)
        self._store.close()


def change_listener(
    config: ControllerConfig,
    reactor: IControllerReactor,
    hub: AssignmentHub,
    refresh: KeyRingRefresh,
    metrics: ControllerMetrics,
) -> ChangeListener:
    """What other controllers change, as this one hears it: a node's assignments (its long
    polls answer) and the key ring (re-read at once); after a reconnection, both."""
    import psycopg
    from psycopg.conninfo import make_conninfo

    dsn = config.store_dsn
    assert dsn is not None

    conninfo = make_conninfo(dsn, **listener_connection_options(dsn))

    def connect() -> psycopg.Connection[Any]:
        return psycopg.connect(conninfo, autocommit=True)

    def shared_state_changed(name: str) -> None:
        if name == TOKEN_KEYS:
            refresh.refresh_now()

    def everything_changed() -> None:
        hub.changed_all()
        refresh.refresh_now()

    return ChangeListener(
        connect,
        cast(IListenerReactor, reactor),
        hub.changed,
        shared_state_changed,
        everything_changed,
        metrics.database_listener(),
    )


def listener_connection_options(dsn: str) -> dict[str, str]:
    """TCP keepalives for the listening connection, which sits idle: a database host that
    vanished without closing it is noticed within about 20 s, and the listener reconnects.
    Whatever the DSN sets itself is kept."""
    from psycopg.conninfo import conninfo_to_dict

    given = conninfo_to_dict(dsn)
    wanted = {
        "keepalives": "1",
        "keepalives_idle": "10",
        "keepalives_interval": "3",
        "keepalives_count": "3",
        "connect_timeout": "10",
        "application_name": "rolecall-controller listener",
    }
    return {key: value for key, value in wanted.items() if key not in given}


def node_api_tls(config: ControllerConfig, ca_cert_pem: bytes | None = None) -> CertificateOptions:
    """The node API's TLS: its own certificate, and client certificates from the node CA only
    (``ca_cert_pem``, from the database; default: the node CA's file)."""
    try:
        identity = PrivateCertificate.loadPEM(
            config.node_api_cert_path.read_bytes() + config.node_api_key_path.read_bytes()
        )
        authority = Certificate.loadPEM(
            ca_cert_pem if ca_cert_pem is not None else config.ca_cert_path.read_bytes()
        )
    except OSError as error:
        raise StoreError(
            f"cannot read the node API certificates in {config.state_dir}: {error.strerror};"
            " run rolecall-controller init"
        ) from error
    # PrivateCertificate has no annotations: its options are CertificateOptions.
    return cast(CertificateOptions, identity.options(authority))
