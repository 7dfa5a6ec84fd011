"""The agent's TLS policy for the node API: one OpenSSL context per controller address."""

from __future__ import annotations

from datetime import UTC, datetime

from agent.client import NodeTLSPolicy
from controller.nodeca import create_ca, issue_node_certificate


def test_tls_options_are_made_once_per_controller_address() -> None:
    now = datetime.now(UTC)
    ca_key, ca_cert = create_ca(now)
    key, cert, _ = issue_node_certificate(ca_key, ca_cert, "compute1", now)
    policy = NodeTLSPolicy(ca_cert.decode(), cert.decode(), key.decode())
    first = policy.creatorForNetloc(b"controller.example", 8774)
    assert policy.creatorForNetloc(b"controller.example", 8774) is first
    assert policy.creatorForNetloc(b"controller2.example", 8774) is not first
    assert policy.creatorForNetloc(b"controller.example", 8775) is not first
