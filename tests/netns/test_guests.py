"""Guests in their own namespaces against the real agent: isolation between instances, the hop
limit, and refusal of requests proxied inside a guest (spec/imds.md 3, 5, 7, 13, 30)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.netns.harness import (
    BIN,
    METADATA_ADDRESS,
    TOKEN_HEADER,
    TTL_HEADER,
    Cloud,
    Guest,
    wait_until,
)

INSTANCE_ID_PATH = "/latest/meta-data/instance-id"
TOKEN_URL = f"http://{METADATA_ADDRESS}/latest/api/token"
# What botocore's default chain finds, with no configuration: the access key id, or "none"
# (with IMDSv1 disabled, botocore says so by raising MetadataRetrievalError).
CREDENTIALS_SCRIPT = (
    "import boto3, botocore.exceptions\n"
    "try:\n"
    "    found = boto3.Session().get_credentials()\n"
    "except botocore.exceptions.MetadataRetrievalError:\n"
    "    found = None\n"
    "print(found.get_frozen_credentials().access_key if found else 'none')\n"
)


def test_each_guest_sees_only_its_own_instance_and_its_tokens_are_refused_elsewhere(
    cloud: Cloud,
) -> None:
    first, second = cloud.launch(), cloud.launch()
    first_guest, second_guest = cloud.guest(first), cloud.guest(second)
    status, first_token = first_guest.token()
    assert status == 200 and first_token
    status, second_token = second_guest.token()
    assert status == 200 and second_token

    assert first_guest.get(INSTANCE_ID_PATH, first_token) == (200, first)
    assert second_guest.get(INSTANCE_ID_PATH, second_token) == (200, second)
    # A token is bound to the instance whose socket minted it (spec 7).
    assert second_guest.get(INSTANCE_ID_PATH, first_token)[0] == 401
    assert first_guest.get(INSTANCE_ID_PATH, second_token)[0] == 401


def _token_within(guest: Guest, max_time: float) -> str:
    status, token = guest.token(max_time=max_time)
    return token if status == 200 else ""


def test_a_guest_two_hops_away_gets_a_token_only_once_the_hop_limit_allows_it(
    cloud: Cloud,
) -> None:
    instance_id = cloud.launch()
    near = cloud.guest(instance_id)
    far = cloud.guest(instance_id, routed=True)
    assert near.token()[0] == 200
    # The far guest does reach the service (a refusal travels with the default TTL)...
    assert far.get(INSTANCE_ID_PATH)[0] == 401
    # ...but the token's packets leave with TTL 1 and die at the router (spec 5).
    assert far.token(max_time=1.5) == (0, "")

    cloud.ec2.modify_instance_metadata_options(InstanceId=instance_id, HttpPutResponseHopLimit=3)
    # The long poll tells the agent at once (in about 10 ms here); allow a generous bound.
    token = wait_until(
        lambda: _token_within(far, 1), 10, "the agent to apply HttpPutResponseHopLimit=3"
    )
    assert far.get(INSTANCE_ID_PATH, token) == (200, instance_id)


# Run in a guest: one connection per plan to the metadata service, a token PUT then (after a
# pause, or pipelined in the same segment) a GET; everything received within 4 s of the last
# send is kept. Prints, per plan, whether any byte of a token answer arrived.
ONE_CONNECTION_SCRIPT = """
import json, socket, sys, threading, time
PUT = (b"PUT /latest/api/token HTTP/1.1\\r\\nHost: 169.254.169.254\\r\\n"
       b"X-aws-ec2-metadata-token-ttl-seconds: 60\\r\\n\\r\\n")
GET = b"GET /latest/meta-data/instance-id HTTP/1.1\\r\\nHost: 169.254.169.254\\r\\n\\r\\n"
PLANS = {"put alone": [PUT], "put+get in one segment": [PUT + GET],
         "put, get 0.5 s later": [PUT, 0.5, GET], "put, get 2 s later": [PUT, 2.0, GET]}
found = {}
def run(name, steps):
    connection = socket.create_connection(("169.254.169.254", 80), timeout=5)
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for step in steps:
        if isinstance(step, float):
            time.sleep(step)
        else:
            connection.sendall(step)
    received, deadline = b"", time.monotonic() + 4
    while time.monotonic() < deadline:
        connection.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = connection.recv(65536)
        except OSError:
            break
        if not data:
            break
        received += data
    connection.close()
    found[name] = b"ttl-seconds" in received.lower() or b"200 OK" in received
threads = [threading.Thread(target=run, args=item) for item in PLANS.items()]
for thread in threads: thread.start()
for thread in threads: thread.join()
print(json.dumps(found))
"""


def test_no_byte_of_a_token_answer_reaches_a_guest_beyond_the_hop_limit(cloud: Cloud) -> None:
    """Not with the token PUT alone, nor with a GET on the same connection right behind it or
    seconds later: the TTL of a connection that carried a token never rises again, so neither
    the token, its retransmissions, nor a later answer carries it past the hop limit."""
    instance_id = cloud.launch()
    far = cloud.guest(instance_id, routed=True)
    assert far.get(INSTANCE_ID_PATH)[0] == 401  # the far guest does reach the service
    result = far.run([sys.executable, "-c", ONE_CONNECTION_SCRIPT], timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "put alone": False,
        "put+get in one segment": False,
        "put, get 0.5 s later": False,
        "put, get 2 s later": False,
    }


# Run in a guest: hold as many idle connections as the instance's limit, then try one more
# (which must wait unanswered); say "holding", keep them a while, then close one and see the
# waiting connection answered. Prints what it saw as JSON.
HOLD_CONNECTIONS_SCRIPT = """
import json, socket, sys, time
limit = int(sys.argv[1])
held = [socket.create_connection(("169.254.169.254", 80), timeout=5) for _ in range(limit)]
extra = socket.create_connection(("169.254.169.254", 80), timeout=5)
extra.sendall(b"GET /latest/meta-data/ HTTP/1.1\\r\\nHost: 169.254.169.254\\r\\n\\r\\n")
def answer(connection, seconds):
    connection.settimeout(seconds)
    try:
        return connection.recv(4096)
    except OSError:
        return b""
seen = {"answered past the limit": bool(answer(extra, 1.5))}
print("holding", flush=True)
time.sleep(3)
held.pop().close()
seen["answered once one closed"] = answer(extra, 5).startswith(b"HTTP/1.1 ")
print(json.dumps(seen), flush=True)
"""


def test_an_instance_at_its_connection_limit_waits_and_leaves_the_others_alone(
    cloud: Cloud,
) -> None:
    cloud.agent.stop()
    with cloud.agent.config.open("a", encoding="utf-8") as config:
        config.write("[imds]\nmax_connections_per_instance = 4\n")
    cloud.agent.start()
    busy, other = cloud.launch(), cloud.launch()
    greedy, neighbour = cloud.guest(busy), cloud.guest(other)
    holding = subprocess.Popen(
        ["ip", "netns", "exec", greedy.name, sys.executable, "-c", HOLD_CONNECTIONS_SCRIPT, "4"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert holding.stdout is not None
        assert holding.stdout.readline().strip() == "holding"
        # The other instance is served as ever while the first sits at its limit.
        status, token = neighbour.token()
        assert status == 200
        assert neighbour.get(INSTANCE_ID_PATH, token) == (200, other)
        samples = cloud.agent.metrics()
        assert samples['rolecall_agent_imds_connection_limit_reached_total{limit="instance"}'] >= 1
        assert samples['rolecall_agent_imds_connection_limit_reached_total{limit="all"}'] == 0
        output, errors = holding.communicate(timeout=30)
    finally:
        if holding.poll() is None:
            holding.kill()
            holding.wait()
    assert json.loads(output) == {
        "answered past the limit": False,
        "answered once one closed": True,
    }, errors


def test_a_request_relayed_by_a_proxy_inside_the_guest_is_refused(cloud: Cloud) -> None:
    instance_id = cloud.launch()
    guest = cloud.guest(instance_id)
    proxy = cloud.proxy(guest)
    through_proxy = ("--proxy", f"http://127.0.0.1:{proxy.port}")
    status, token = guest.token()
    assert status == 200
    assert guest.get(INSTANCE_ID_PATH, token) == (200, instance_id)
    before = cloud.agent.metrics().get(
        'rolecall_agent_imds_proxied_refused_total{reason="proxy-header"}', 0
    )

    put = guest.curl(*through_proxy, "-X", "PUT", "-H", f"{TTL_HEADER}: 60", TOKEN_URL)
    assert put.stdout.rpartition("\n")[2] == "403", put
    get = guest.curl(
        *through_proxy,
        "-H",
        f"{TOKEN_HEADER}: {token}",
        f"http://{METADATA_ADDRESS}{INSTANCE_ID_PATH}",
    )
    assert get.stdout.rpartition("\n")[2] == "403", get
    assert proxy.connections == 2  # both went through the proxy, which added X-Forwarded-For
    after = cloud.agent.metrics()[
        'rolecall_agent_imds_proxied_refused_total{reason="proxy-header"}'
    ]
    assert after == before + 2


@pytest.mark.parametrize(
    ("http_tokens", "v1_disabled"),
    [
        ("required", "true"),  # spec 30: the token PUT is refused and botocore may not fall back
        ("optional", "false"),  # spec 13: the IMDSv1 fallback is refused too
    ],
)
def test_botocore_behind_a_proxy_in_the_guest_gets_no_credentials(
    cloud: Cloud, http_tokens: str, v1_disabled: str
) -> None:
    profile, _ = cloud.profile()
    instance_id = cloud.launch(profile)
    if http_tokens == "optional":
        cloud.ec2.modify_instance_metadata_options(InstanceId=instance_id, HttpTokens="optional")
    guest = cloud.guest(instance_id)
    wait_until(
        lambda: guest.get(INSTANCE_ID_PATH)[0] == (200 if http_tokens == "optional" else 401),
        10,
        f"HttpTokens={http_tokens} to apply",
    )
    proxy = cloud.proxy(guest)
    python = str(BIN / "python")

    direct = guest.run([python, "-c", CREDENTIALS_SCRIPT])
    assert direct.stdout.startswith("ASIA"), direct  # the control: without the proxy it works
    proxied = guest.run(
        [python, "-c", CREDENTIALS_SCRIPT],
        env={
            "HTTP_PROXY": f"http://127.0.0.1:{proxy.port}",
            "AWS_EC2_METADATA_V1_DISABLED": v1_disabled,
        },
    )
    assert proxied.stdout.strip() == "none", proxied
    assert proxy.connections >= 1, "botocore did not use the proxy"


def test_a_token_minted_before_an_agent_restart_is_still_good_after_it(cloud: Cloud) -> None:
    """The IMDSv2 token key lives beside the ownership record, not in the process: a busy
    guest's token survives `systemctl restart`, so no burst of 401s and retried PUTs follows."""
    instance_id = cloud.launch()
    guest = cloud.guest(instance_id)
    status, token = guest.token()
    assert status == 200
    cloud.agent.stop()
    cloud.agent.start()
    cloud.wait_served(instance_id)
    assert guest.get(INSTANCE_ID_PATH, token) == (200, instance_id)
