"""An agent with several controller URLs moves on when a controller refuses, dies or hangs,
and no guest request fails meanwhile.

Real parts: three ``rolecall-controller serve`` processes on ONE state directory (the SQLite
store takes several processes on one file), the real agent serving instances in their
namespaces, a guest asking for its credentials in a loop. The URL listed first is a stand-in
that answers every node API call with 503 StoreUnavailable over TLS with the controllers' own
node API certificate: a controller that lost its database. After the first controller come a
port that completes TCP and never answers (a stopped controller to a new connection: the TLS
handshake bound, 3 s, ends it) and a stand-in whose certificate comes from a CA the agent does
not trust: the agent moves past both and sends the latter no request. A real controller
cannot be made to lose an SQLite store the others keep (the file and its locks are shared; root
ignores file modes), and PostgreSQL is issue 14's other part.

A change made through one controller wakes only the long polls that controller holds (SQLite;
PostgreSQL's NOTIFY is another part of issue 14), so each instance is launched through the
controller the agent is expected to use at that point, and the agent's long poll is 1 s.

One test for the three failures, since the cloud it needs takes seconds to build, and the hang
costs the long poll and its answer bound (1 + 5 s) and the silent port the handshake bound
(3 s) by design: about 20 s on two cores, worth it for the issue's first promise (guests never
notice a controller dying or hanging).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agent.failover import Bounds
from controller.nodeca import create_ca, create_server_certificate
from tests.netns.harness import (
    EC2_TRUST,
    MADE,
    READ_ROLES,
    TOKEN_HEADER,
    TTL_HEADER,
    AgentProcess,
    ControllerProcess,
    imds,
    make_guest,
    namespace_of,
    remove_guest,
    remove_instance_namespaces,
    serves_tokens,
    unique,
    wait_until,
)
from tests.netns.test_restart import Stream

LONG_POLL_SECONDS = 1


class _Refuses(BaseHTTPRequestHandler):
    """Every node API call: 503, as a controller whose store is unavailable answers."""

    def _refuse(self) -> None:
        self.server.requests += 1  # type: ignore[attr-defined]
        body = json.dumps({"error": "StoreUnavailable", "message": "try again"}).encode()
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _refuse

    def log_message(self, format: str, *args: object) -> None:
        pass


class _CountingServer(ThreadingHTTPServer):
    daemon_threads = True
    connections = 0
    requests = 0

    def get_request(self) -> tuple[socket.socket, object]:
        self.connections += 1  # counted before the TLS handshake, which may fail
        return super().get_request()


class StandIn:
    """A TLS server on 127.0.0.1 answering every request 503 (`_Refuses`), with the given
    certificate: the controllers' own node API one, or one from another CA."""

    def __init__(self, certificate: Path, key: Path) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certificate, key)
        self.server = _CountingServer(("127.0.0.1", 0), _Refuses)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="stand-in")
        MADE.threads.append(self.thread)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def foreign_certificate(directory: Path) -> tuple[Path, Path]:
    """A node API certificate for 127.0.0.1 from a CA the agent does not trust."""
    now = datetime.now(UTC)
    ca_key, ca_certificate = create_ca(now)
    key, certificate = create_server_certificate(ca_key, ca_certificate, now, ["127.0.0.1"])
    (directory / "foreign.pem").write_bytes(certificate)
    (directory / "foreign.key").write_bytes(key)
    return directory / "foreign.pem", directory / "foreign.key"


class Silent:
    """A port the kernel completes TCP connections on and nothing ever reads: what a stopped
    controller's port is to a new connection. The agent's TLS handshake there never ends."""

    def __init__(self) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(16)
        self.url = f"https://127.0.0.1:{self.socket.getsockname()[1]}"

    def close(self) -> None:
        self.socket.close()


class Stopped:
    """SIGSTOP a process now; SIGCONT when closed (also when the test fails first)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        os.kill(pid, signal.SIGSTOP)

    def close(self) -> None:
        try:
            os.kill(self.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


@pytest.fixture
def cleanup() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


def issued_for(controller: ControllerProcess, instance_id: str) -> bool:
    assert controller.process is not None
    return f"for {instance_id} on" in controller.process.output


def credentials_served(namespace: str, role: str) -> bool:
    if not serves_tokens(namespace):
        return False
    token = imds(namespace, "PUT", "/latest/api/token", {TTL_HEADER: "60"}).body
    path = f"/latest/meta-data/iam/security-credentials/{role}"
    return imds(namespace, "GET", path, {TOKEN_HEADER: token}).status == 200


def test_the_agent_moves_past_a_refusing_a_dead_and_a_hung_controller_without_a_guest_noticing(
    tmp_path: Path, cleanup: ExitStack
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    first = ControllerProcess(state)
    second, third = ControllerProcess(state, False), ControllerProcess(state, False)
    for controller in (first, second, third):  # three processes, one store
        cleanup.callback(controller.stop)
        controller.spawn()
    for controller in (first, second, third):
        controller.wait_listening()
    refusing = StandIn(state / "node-api.pem", state / "node-api.key")
    cleanup.callback(refusing.close)
    foreign = StandIn(*foreign_certificate(tmp_path))
    cleanup.callback(foreign.close)
    silent = Silent()
    cleanup.callback(silent.close)
    node = unique("hv-")
    (tmp_path / "node").mkdir()
    credentials = first.enroll(node, tmp_path / "node")
    instances: list[str] = []

    cleanup.callback(remove_instance_namespaces, instances)
    (tmp_path / "agent").mkdir()
    # After the first controller dies, the agent tries the silent port (given up at the
    # handshake bound) and the foreign stand-in (which must get no request) before the second.
    urls = [
        refusing.url,
        first.node_api_url,
        silent.url,
        foreign.url,
        second.node_api_url,
        third.node_api_url,
    ]
    agent = AgentProcess(
        urls,
        credentials,
        tmp_path / "agent",
        controller_config=f"long_poll_seconds = {LONG_POLL_SECONDS}\n",
        # The guest's loop asks as fast as it is answered, above the default limit of 50 a
        # second: every answer counted is then the metadata service's, none the limiter's 503.
        extra_config="[imds]\nrate_per_second = 10000\nburst = 10000\n",
    )
    cleanup.callback(agent.remove_plug_directory)
    cleanup.callback(agent.stop)
    agent.start()

    iam = first.client("iam")
    role = unique("ip-")
    iam.create_role(RoleName=role, AssumeRolePolicyDocument=EC2_TRUST)
    iam.put_role_policy(RoleName=role, PolicyName="read", PolicyDocument=READ_ROLES)
    iam.create_instance_profile(InstanceProfileName=role)
    iam.add_role_to_instance_profile(InstanceProfileName=role, RoleName=role)

    def launch(through: ControllerProcess) -> str:
        ec2 = through.client("ec2")
        answer = ec2.run_instances(
            ImageId="emi-1",
            MinCount=1,
            MaxCount=1,
            Placement={"HostId": node},
            IamInstanceProfile={"Name": role},
        )
        instance_id = str(answer["Instances"][0]["InstanceId"])
        instances.append(instance_id)
        MADE.namespaces.add(namespace_of(instance_id))
        return instance_id

    def served_through(instance_id: str, controller: ControllerProcess) -> None:
        wait_until(
            lambda: credentials_served(namespace_of(instance_id), role),
            15 + Bounds().answer_seconds,
            f"{instance_id}'s credentials to be served:\n{agent.output}",
        )
        assert issued_for(controller, instance_id), agent.output

    # Refused: the first URL answers 503; the agent uses the next, the first controller.
    before = launch(first)
    served_through(before, first)
    first_ec2 = first.client("ec2")
    first_ec2.modify_instance_metadata_options(InstanceId=before, HttpTokens="optional")
    guest = make_guest(namespace_of(before), tmp_path)
    cleanup.callback(remove_guest, guest)
    stream = Stream(guest.name, f"/latest/meta-data/iam/security-credentials/{role}")
    cleanup.callback(stream.stop)
    wait_until(lambda: len(stream.statuses) >= 5, 15, f"guest requests: {stream.errors[-3:]}")

    # Dies: kill -9 the controller in use; the next instance comes through the second.
    assert first.process is not None
    first.process.process.kill()
    after_kill = launch(second)
    served_through(after_kill, second)

    # Hangs: SIGSTOP the second (it holds the agent's long poll); the third takes over.
    assert second.process is not None
    stopped = Stopped(second.process.process.pid)
    cleanup.callback(stopped.close)
    after_stop = launch(third)
    served_through(after_stop, third)
    stopped.close()

    during = len(stream.statuses)
    wait_until(lambda: len(stream.statuses) >= during + 5, 15, "guest requests after")
    stream.stop()
    assert stream.errors == []
    assert set(stream.statuses) == {200}, sorted(set(stream.statuses))

    metrics = agent.metrics()
    in_use = {
        url: metrics[f'rolecall_agent_node_api_controller_in_use{{url="{url}"}}'] for url in urls
    }
    assert in_use == {**dict.fromkeys(urls, 0.0), third.node_api_url: 1.0}
    failovers = {
        reason: metrics[f'rolecall_agent_node_api_failovers_total{{reason="{reason}"}}']
        for reason in ("refused", "unreachable", "timeout")
    }
    assert failovers == {"refused": 1.0, "unreachable": 1.0, "timeout": 1.0}, agent.output
    for url in (first.node_api_url, second.node_api_url, third.node_api_url):
        agent.logged(f"controller {url} in use from now on, after controller ")
    agent.logged(f"controller {foreign.url}: its certificate does not verify")
    agent.logged(f"controller {silent.url}: unreachable (no TLS connection within 3 s)")
    assert foreign.server.connections >= 1 and foreign.server.requests == 0
    assert refusing.server.requests >= 1
    assert "Traceback" not in agent.output
