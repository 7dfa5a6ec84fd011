"""The controller's /metrics, /healthz and /readyz against a real controller process, read with
the Prometheus exposition parser after real AWS SDK calls and real node API calls."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from controller import sigv4
from tests.e2e.conftest import ACCOUNT_ID, Controller
from tests.e2e.principals import error_of, new_role, new_user, trust, unique, user_arn
from tests.e2e.test_node_api import NodeClient, enroll, launch, profile

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
NODE = "hv-m"


def http() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # no proxy from the environment between us and loopback
    return session


def scrape(controller: Controller) -> Samples:
    response = http().get(f"{controller.metrics_url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def read(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def change(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return read(after, name, **labels) - read(before, name, **labels)


def eventually(condition: Callable[[], bool], what: str, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def signed_post(controller: Controller, params: dict[str, str]) -> requests.Response:
    """A Query API POST signed for IAM with the root key, whatever its parameters."""
    body = urlencode(params).encode("ascii")
    headers = {
        "Host": urlsplit(controller.url).netloc,
        "Content-Type": "application/x-www-form-urlencoded",
    }
    signed = sigv4.sign(
        sigv4.HttpRequest("POST", "/", "", tuple(headers.items()), body),
        access_key_id=controller.access_key_id,
        secret_access_key=controller.secret_access_key,
        region="us-east-1",
        service="iam",
        now=datetime.now(UTC),
    )
    return http().post(controller.url, data=body, headers=dict(signed.headers), timeout=10)


@pytest.fixture(scope="module")
def node(controller: Controller, tmp_path_factory: pytest.TempPathFactory) -> NodeClient:
    return NodeClient(controller, enroll(controller, NODE, tmp_path_factory.mktemp(NODE)))


def test_iam_calls_are_counted_by_service_action_and_status(
    controller: Controller, iam: Any
) -> None:
    name = unique("metrics")
    before = scrape(controller)
    iam.create_role(RoleName=name, AssumeRolePolicyDocument=trust({"Service": "ec2.amazonaws.com"}))
    iam.get_role(RoleName=name)
    code, status, _ = error_of(iam.get_role, RoleName=unique("missing"))
    assert (code, status) == ("NoSuchEntity", 404)
    after = scrape(controller)
    total = "rolecall_api_requests_total"
    assert change(before, after, total, service="iam", action="CreateRole", status="200") == 1
    assert change(before, after, total, service="iam", action="GetRole", status="200") == 1
    assert change(before, after, total, service="iam", action="GetRole", status="404") == 1
    histogram = "rolecall_api_request_duration_seconds"
    assert change(before, after, f"{histogram}_count", service="iam") == 3
    assert change(before, after, f"{histogram}_sum", service="iam") > 0
    assert change(before, after, f"{histogram}_bucket", service="iam", le="+Inf") == 3


def test_an_unsigned_request_is_counted_as_an_authentication_failure(
    controller: Controller,
) -> None:
    before = scrape(controller)
    response = http().post(
        controller.url, data={"Action": "ListRoles", "Version": "2010-05-08"}, timeout=10
    )
    assert response.status_code == 403
    assert "MissingAuthenticationToken" in response.text
    after = scrape(controller)
    failures = "rolecall_api_authentication_failures_total"
    assert change(before, after, failures, reason="MissingAuthenticationToken") == 1
    assert change(before, after, failures, reason="SignatureDoesNotMatch") == 0
    total = "rolecall_api_requests_total"
    assert change(before, after, total, service="-", action="-", status="403") == 1


def test_an_invented_action_is_counted_as_unknown_not_by_its_name(
    controller: Controller, iam: Any
) -> None:
    before = scrape(controller)
    response = signed_post(controller, {"Action": "Invented42", "Version": "2010-05-08"})
    assert response.status_code == 400
    assert "InvalidAction" in response.text
    after = scrape(controller)
    total = "rolecall_api_requests_total"
    assert change(before, after, total, service="iam", action="unknown", status="400") == 1
    assert not any("Invented42" in str(labels) for (_, labels) in after)


def test_sts_credentials_are_counted_by_kind(controller: Controller) -> None:
    user = unique("metrics")
    keys = new_user(controller, user)
    role_arn = new_role(controller, unique("metrics"), trust({"AWS": user_arn(user)}))
    before = scrape(controller)
    keys.client(controller, "sts").assume_role(RoleArn=role_arn, RoleSessionName="m1")
    controller.client("sts").get_federation_token(Name="metrics")
    keys.client(controller, "sts").get_session_token()
    after = scrape(controller)
    issued = "rolecall_credentials_issued_total"
    assert change(before, after, issued, kind="assume-role") == 1
    assert change(before, after, issued, kind="federation") == 1
    assert change(before, after, issued, kind="session") == 1
    assert change(before, after, issued, kind="instance") == 0
    total = "rolecall_api_requests_total"
    assert change(before, after, total, service="sts", action="AssumeRole", status="200") == 1
    assert (
        change(before, after, total, service="sts", action="GetFederationToken", status="200") == 1
    )


def test_a_refused_assume_role_issues_nothing(controller: Controller) -> None:
    before = scrape(controller)
    _, status, _ = error_of(
        controller.client("sts").assume_role,
        RoleArn=f"arn:aws:iam::{ACCOUNT_ID}:role/{unique('none')}",
        RoleSessionName="m1",
    )
    assert status == 403
    after = scrape(controller)
    assert change(before, after, "rolecall_credentials_issued_total", kind="assume-role") == 0
    total = "rolecall_api_requests_total"
    assert change(before, after, total, service="sts", action="AssumeRole", status="403") == 1


def test_healthz_and_readyz_answer_200(controller: Controller) -> None:
    session = http()
    healthz = session.get(f"{controller.metrics_url}/healthz", timeout=10)
    readyz = session.get(f"{controller.metrics_url}/readyz", timeout=10)
    assert (healthz.status_code, healthz.text) == (200, "ok\n")
    assert (readyz.status_code, readyz.text) == (200, "ready\n")


def test_instance_credentials_and_the_nodes_last_contact_are_reported(
    controller: Controller, node: NodeClient, iam: Any
) -> None:
    name, _ = profile(iam)
    instance_id = launch(controller, NODE, name)
    before = scrape(controller)
    response = node.credentials(instance_id)
    assert response.status_code == 200, response.text
    after = scrape(controller)
    assert change(before, after, "rolecall_credentials_issued_total", kind="instance") == 1
    requests_total = "rolecall_node_api_requests_total"
    assert change(before, after, requests_total, endpoint="credentials", status="200") == 1
    contact = after.get(("rolecall_node_last_contact_seconds", frozenset({("node", NODE)})))
    assert contact is not None, "no last contact for the node that just called"
    assert 0 <= contact < 30


def test_a_waiting_long_poll_is_counted_until_it_answers(
    controller: Controller, node: NodeClient
) -> None:
    waiting = "rolecall_node_long_polls_waiting"
    assert read(scrape(controller), waiting) == 0
    revision = node.assignments()["revision"]
    answers: list[Any] = []
    thread = threading.Thread(
        target=lambda: answers.append(node.assignments(since=revision, wait=60, timeout=70)),
        daemon=True,
    )
    thread.start()
    eventually(lambda: read(scrape(controller), waiting) == 1, "the long poll was not counted")
    launch(controller, NODE)  # a change on the node answers the poll
    thread.join(timeout=20)
    assert not thread.is_alive(), "the long poll did not answer the change"
    assert answers[0]["revision"] > revision
    assert read(scrape(controller), waiting) == 0
    after = scrape(controller)
    assert read(after, "rolecall_node_api_requests_total", endpoint="assignments", status="200")


def test_a_long_poll_the_node_hangs_up_on_stops_waiting(
    controller: Controller, node: NodeClient
) -> None:
    """The controller keeps reading a connection whose answer it owes, so it sees the node go."""
    waiting = "rolecall_node_long_polls_waiting"
    revision = node.assignments()["revision"]
    parts = urlsplit(node.url)
    host, port = parts.hostname or "", parts.port or 0
    context = ssl.create_default_context(cafile=node.session.verify)
    context.load_cert_chain(*node.session.cert)
    with (
        socket.create_connection((host, port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=host) as connection,
    ):
        target = f"/v1/assignments?since={revision}&wait=120"
        connection.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        eventually(lambda: read(scrape(controller), waiting) == 1, "the long poll was not counted")
    eventually(
        lambda: read(scrape(controller), waiting) == 0, "the poll still waits after the hang-up"
    )


def test_an_audit_log_that_cannot_be_written_is_counted(
    controller: Controller, node: NodeClient, iam: Any
) -> None:
    name, _ = profile(iam)
    instance_id = launch(controller, NODE, name)
    audit = controller.state_dir / "audit.log"
    saved = controller.state_dir / "audit.log.saved"
    before = scrape(controller)
    _replace_with_directory(audit, saved)
    try:
        response = node.credentials(instance_id)
    finally:
        audit.rmdir()
        if saved.exists():
            saved.rename(audit)
    assert response.status_code == 503
    after = scrape(controller)
    assert change(before, after, "rolecall_audit_log_write_failures_total") == 1
    assert change(before, after, "rolecall_credentials_issued_total", kind="instance") == 0


def _replace_with_directory(path: Path, saved: Path) -> None:
    """A directory where the file was: opening it for writing fails even for root."""
    if path.exists():
        path.rename(saved)
    path.mkdir()
