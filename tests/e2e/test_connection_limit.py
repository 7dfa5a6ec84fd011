"""The public API port holds at most api.max_connections at once (issue 10, item 2): idle
connections a client opens cannot take the descriptors the node API's handshakes need; past the
limit a connection waits in the backlog and is served once another closes."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from tests.e2e.conftest import Controller, start_controller, stop_controller

LIMIT = 20
UNSIGNED = b"GET /?Action=ListRoles&Version=2010-05-08 HTTP/1.1\r\nHost: localhost\r\n\r\n"


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[Controller]:
    config = tmp_path / "controller.toml"
    config.write_text(f"[api]\nmax_connections = {LIMIT}\n")
    controller = start_controller(tmp_path / "state", config)
    try:
        yield controller
    finally:
        stop_controller(controller)


def answered(connection: socket.socket, timeout: float) -> bytes:
    connection.settimeout(timeout)
    try:
        return connection.recv(4096)
    except TimeoutError:
        return b""


def test_past_the_limit_a_connection_waits_and_is_served_when_another_closes(
    limited: Controller,
) -> None:
    address = urlsplit(limited.url)
    endpoint = (address.hostname, address.port)
    idle = [socket.create_connection(endpoint, timeout=5) for _ in range(LIMIT)]
    try:
        # Each of them is being served: one request on the first shows the port answers.
        idle[0].sendall(UNSIGNED)
        assert answered(idle[0], 5).startswith(b"HTTP/1.1 403")
        waiting = socket.create_connection(endpoint, timeout=5)  # the kernel's backlog takes it
        waiting.sendall(UNSIGNED)
        assert answered(waiting, 1.0) == b""  # not accepted: the limit holds
        metrics = requests.get(f"{limited.metrics_url}/metrics", timeout=10).text
        assert f"rolecall_api_connections {LIMIT}.0" in metrics
        assert "rolecall_api_connection_limit_reached_total 1.0" in metrics
        idle.pop().close()
        assert answered(waiting, 5).startswith(b"HTTP/1.1 403")
        waiting.close()
    finally:
        for connection in idle:
            connection.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        metrics = requests.get(f"{limited.metrics_url}/metrics", timeout=10).text
        if "rolecall_api_connections 0.0" in metrics:
            break
        time.sleep(0.05)
    assert "rolecall_api_connections 0.0" in metrics  # every one was counted out again
