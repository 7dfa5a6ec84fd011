"""Pass-through to an upstream metadata service (issue 12, item 7), end to end: a guest in its
namespace, the real agent configured with ``[imds.upstream]``, and a small metadata service of
the cloud's own that records every request it gets.

The upstream runs in this test process on 127.0.0.1 of the root namespace, where the agent's
serving process (which makes the upstream calls) runs; guests cannot reach it themselves (their
namespaces reach 169.254.169.254 and their own loopback only), so whatever it sees came through
the agent.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest

from tests.netns import harness
from tests.netns.harness import ACCOUNT_ID, METADATA_ADDRESS, TOKEN_HEADER, Cloud, Guest

SECRET = "n0va-metadata-proxy-s3cret"
META_DATA_JSON = "/openstack/latest/meta_data.json"
UPSTREAM_ONLY = "/latest/meta-data/something-upstream"
SLOW = "/openstack/latest/slow.json"
#: The agent's deadline for each upstream call in these tests.
TIMEOUT_SECONDS = 1


class Recorded:
    """One request the upstream got: method, path (with query) and headers."""

    def __init__(self, method: str, path: str, headers: list[tuple[str, str]]) -> None:
        self.method = method
        self.path = path
        self.headers = headers

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]


class RecordingUpstream:
    """A metadata service of the cloud's own: answers a few paths, 404 for the rest, and
    records everything it is asked."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self._answer(with_body=True)

            def do_HEAD(self) -> None:
                self._answer(with_body=False)

            def do_PUT(self) -> None:
                self._answer(with_body=True)

            def do_POST(self) -> None:
                self._answer(with_body=True)

            def _answer(self, with_body: bool) -> None:
                with upstream._lock:
                    upstream.requests.append(
                        Recorded(self.command, self.path, list(self.headers.items()))
                    )
                path = self.path.partition("?")[0]
                if path == SLOW:
                    time.sleep(TIMEOUT_SECONDS + 1.5)
                found = {
                    META_DATA_JSON: (b'{"uuid": "from-upstream"}', "application/json"),
                    UPSTREAM_ONLY: (b"something from upstream", "text/plain"),
                    SLOW: (b"{}", "application/json"),
                }.get(path)
                body, content_type = found if found is not None else (b"nope", "text/plain")
                self.send_response(200 if found is not None else 404)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Set-Cookie", "upstream=1")
                self.end_headers()
                if with_body:
                    self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="recording upstream", daemon=True
        )
        harness.MADE.threads.append(self._thread)
        self._thread.start()
        self._closed = False

    def seen(self) -> list[Recorded]:
        with self._lock:
            return list(self.requests)

    def close(self) -> None:
        """Stop answering: connections to its port are refused from now on."""
        if not self._closed:
            self._closed = True
            self.server.shutdown()
            self.server.server_close()
            self._thread.join(timeout=10)


@pytest.fixture
def upstream() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def cloud(tmp_path: Path, upstream: RecordingUpstream) -> Iterator[Cloud]:
    """A cloud whose agent forwards to `upstream`, the secret in a file of root's, 0600."""
    secret = tmp_path / "metadata-proxy.secret"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o600)
    config = (
        f'[imds.upstream]\nurl = "{upstream.url}"\nshared_secret_file = "{secret}"\n'
        f"timeout_seconds = {TIMEOUT_SECONDS}\n"
    )
    with harness.cloud_in(tmp_path, agent_config=config) as running:
        yield running


def fetch(guest: Guest, path: str, *headers: str, max_time: float = 3) -> tuple[int, str]:
    """GET `path` from the guest with curl and the given header lines: (status, body)."""
    argv = [item for header in headers for item in ("-H", header)]
    result = guest.curl(*argv, f"http://{METADATA_ADDRESS}{path}", max_time=max_time)
    body, _, status = result.stdout.rpartition("\n")
    assert result.returncode == 0, result.stderr
    return int(status), body


def test_a_guest_gets_rolecalls_paths_from_rolecall_and_the_rest_from_upstream_as_its_instance(
    cloud: Cloud, upstream: RecordingUpstream
) -> None:
    profile, _ = cloud.profile()
    instance_id = cloud.launch(profile)
    described = cloud.ec2.describe_instances(InstanceIds=[instance_id])
    private_ip = described["Reservations"][0]["Instances"][0]["PrivateIpAddress"]
    guest = cloud.guest(instance_id)
    status, token = guest.token()
    assert status == 200
    with_token = f"{TOKEN_HEADER}: {token}"

    # RoleCall's own paths are RoleCall's: upstream is never asked.
    assert fetch(guest, "/latest/meta-data/instance-id", with_token) == (200, instance_id)
    assert fetch(guest, "/latest/meta-data/iam/info", with_token)[0] == 200
    assert upstream.seen() == []

    # A path RoleCall does not serve comes from upstream, signed as this instance.
    status, body = fetch(guest, META_DATA_JSON, with_token, "Accept: application/json")
    assert (status, json.loads(body)) == (200, {"uuid": "from-upstream"})
    assert fetch(guest, UPSTREAM_ONLY, with_token, "X-Instance-ID: i-0000000000000bad") == (
        200,
        "something from upstream",
    )
    first, second = upstream.seen()
    assert (first.method, first.path, second.path) == ("GET", META_DATA_JSON, UPSTREAM_ONLY)
    signature = hmac.new(SECRET.encode(), instance_id.encode(), hashlib.sha256).hexdigest()
    for seen in (first, second):
        assert seen.values("X-Instance-ID") == [instance_id]  # the guest's own one stripped
        assert seen.values("X-Instance-ID-Signature") == [signature]
        assert seen.values("X-Tenant-ID") == [ACCOUNT_ID]
        assert seen.values("X-Forwarded-For") == [private_ip]
        assert seen.values(TOKEN_HEADER) == []
        assert seen.values("User-Agent")[0].startswith("curl/")
    assert first.values("Accept") == ["application/json"]

    # Without a token (tokens required), nothing is forwarded: 401 from RoleCall.
    assert fetch(guest, UPSTREAM_ONLY)[0] == 401
    assert len(upstream.seen()) == 2

    # IAM paths, in any spelling and however unknown, and tokens never leave RoleCall.
    for path in (
        "/latest/meta-data/iam/no-such-item",
        "/latest/meta-data/iam/security-credentials/no-such-role",
        "/2021-03-23/meta-data/iam/made-up/deeper",
        "/latest//meta-data/%69am/info2",
        "/latest/meta-data/IAM/info",
        "/latest/meta-data/iam%2Finfo2",
        "/2021-03-23/api/token",
    ):
        assert fetch(guest, path, with_token)[0] in (403, 404, 405), path
    assert guest.token()[0] == 200
    put = guest.curl("-X", "PUT", "-H", with_token, f"http://{METADATA_ADDRESS}{META_DATA_JSON}")
    assert put.stdout.rpartition("\n")[2] == "403"
    seen_paths = [seen.path for seen in upstream.seen()]
    assert seen_paths == [META_DATA_JSON, UPSTREAM_ONLY]
    for seen in upstream.seen():
        assert seen.method == "GET"
        assert "iam" not in unquote(seen.path).lower() and "api" not in seen.path.lower()

    samples = cloud.agent.metrics()
    assert samples['rolecall_agent_imds_upstream_requests_total{outcome="answered"}'] == 2
    assert SECRET not in cloud.agent.output


def test_an_upstream_that_is_slow_or_down_gives_the_guest_504_or_502_in_time(
    cloud: Cloud, upstream: RecordingUpstream
) -> None:
    instance_id = cloud.launch(MetadataOptions={"HttpTokens": "optional"})
    guest = cloud.guest(instance_id)

    started = time.monotonic()
    status, body = fetch(guest, SLOW, max_time=10)
    took = time.monotonic() - started
    assert (status, body) == (504, "the upstream metadata service did not answer in time\n")
    assert TIMEOUT_SECONDS - 0.1 < took < TIMEOUT_SECONDS + 1.5

    upstream.close()
    started = time.monotonic()
    status, body = fetch(guest, META_DATA_JSON, max_time=10)
    took = time.monotonic() - started
    assert (status, body) == (502, "the upstream metadata service could not be reached\n")
    assert took < 1.5
    # RoleCall's own paths are served as ever.
    assert fetch(guest, "/latest/meta-data/instance-id") == (200, instance_id)

    samples = cloud.agent.metrics()
    assert samples['rolecall_agent_imds_upstream_requests_total{outcome="timeout"}'] == 1
    assert samples['rolecall_agent_imds_upstream_requests_total{outcome="unreachable"}'] == 1
    cloud.agent.logged("unreachable")  # said once, in the log
