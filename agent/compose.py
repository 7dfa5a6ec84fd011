"""The agent as composed Twisted services: ``make_agent_service(config, reactor, ...)``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.application.service import MultiService

from agent.client import IClientReactor, NodeApiClient, NodeTLSPolicy
from agent.config import AgentConfig
from agent.gcpolicy import FreezeAfterChanges
from agent.imds.tokens import TokenMinter, new_key
from agent.kept import Entry
from agent.metrics import AgentMetrics, FailoverCollector, UpstreamCollector
from agent.reconcile import IAgentReactor, Keeper, NodeAgent
from agent.server import ConnectionLimitsCollector
from agent.upstream import Upstream, UpstreamService, make_upstream
from common.health import health_factory
from common.listening import ListeningService
from common.notify import Notifier
from common.runner import add_service


class IServingReactor(IClientReactor, IAgentReactor):
    """What the serving process's services use of the reactor: the node API client's, the
    instances' (timers, adopted sockets) and TCP for the metrics listener (the client's too)."""


def make_agent_service(
    config: AgentConfig,
    reactor: IServingReactor,
    *,
    tls: tuple[str, str, str],
    namespaces: Any,
    ownership: Any,
    registry: CollectorRegistry | None = None,
    notifier: Notifier | None = None,
    inherited: dict[str, list[int]] | None = None,
    imds_key: bytes | None = None,
    keeper: Keeper | None = None,
    restored: Sequence[Entry] = (),
    upstream_secret: bytes | None = None,
) -> MultiService:
    """The reconcile loop with every instance's metadata service, and the metrics listener.

    `tls` is the node CA, the node's certificate and its key (PEM text; the serving process
    reads no file), `namespaces`, `ownership` and `keeper` what `NodeAgent` takes (in the
    agent, the privileged process's stand-ins from `agent.serving`), `restored` the instances
    kept across the restart, `upstream_secret` the shared secret of the upstream metadata
    service (with ``imds.upstream.url``)."""
    policy = NodeTLSPolicy(*tls)
    client = NodeApiClient(
        reactor, config.controller_urls, policy, ca_file=str(config.ca_certificate)
    )
    registry = registry if registry is not None else CollectorRegistry()
    upstream: Upstream | None = None
    if config.upstream_url is not None:
        if not upstream_secret:
            raise ValueError("imds.upstream.url needs the shared secret of the upstream service")
        upstream = make_upstream(
            reactor,
            config.upstream_url,
            config.upstream_scheme(),
            upstream_secret,
            timeout=config.upstream_timeout_seconds,
            max_body_bytes=config.upstream_max_body_bytes,
        )
    # The IMDSv2 token key outlives the agent process (the root process keeps it in /run), so
    # that tokens guests hold stay valid across a restart; a new key only without one.
    agent = NodeAgent(
        config,
        reactor,
        client,
        TokenMinter(imds_key if imds_key is not None else new_key()),
        namespaces=namespaces,
        ownership=ownership,
        notifier=notifier,
        inherited=inherited,
        keeper=keeper,
        restored=restored,
        upstream=upstream,
    )
    metrics = AgentMetrics(registry, agent)
    registry.register(ConnectionLimitsCollector(agent.connections, agent.instance_limits))
    registry.register(FailoverCollector(client))
    agent.observe = metrics.observe
    client.observe = lambda endpoint, seconds: metrics.controller_latency.labels(endpoint).observe(
        seconds
    )
    root = MultiService()
    add_service(root, "agent", agent)
    health = ListeningService(
        reactor,
        config.metrics_host,
        config.metrics_port,
        health_factory(registry, agent.ready, reactor),
        "agent metrics",
        log_namespace="rolecall.agent",
    )
    add_service(root, "health", health)
    add_service(root, "gc", FreezeAfterChanges(agent, reactor))
    if upstream is not None:
        registry.register(UpstreamCollector(upstream))
        add_service(root, "upstream", UpstreamService(upstream))
    return root
