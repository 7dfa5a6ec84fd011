"""Thousands of mutated requests over real sockets (issue 10, "keep it found"): from a guest to
the agent in its namespace, and to the controller's public API on loopback. Whatever arrives:
no server error but the spec's 503 for throttling, no request left hanging, memory bounded. The
in-process counterpart, with hypothesis, is tests/unit/test_fuzz_http.py."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

from tests.netns.harness import Cloud

REQUESTS = 2000
#: How much the process that parses the requests may grow over the run.
RSS_GROWTH_LIMIT_KB = 30 * 1024

# Run in a guest (and, with a target and seeds, against the controller): each request on a
# connection of its own, its write side shut after sending, so a request the server cannot
# finish is closed, never waited on. Prints {status or "closed" or "timeout": count}.
FUZZ_SCRIPT = r"""
import json, random, socket, sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
host, port, count, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
seeds = [bytes.fromhex(each) for each in json.loads(sys.stdin.read())]
chooser = random.Random(seed)

def mutate(data):
    data = bytearray(data)
    for _ in range(chooser.randint(1, 6)):
        kind, at = chooser.randrange(5), chooser.randrange(len(data) + 1)
        chunk = bytes(chooser.randrange(256) for _ in range(chooser.randint(1, 8)))
        if kind == 0 and data:
            data[at % len(data)] = chunk[0]
        elif kind == 1:
            data[at:at] = chunk
        elif kind == 2:
            del data[at:at + len(chunk)]
        elif kind == 3:
            data[at:at] = bytes(data[at:at + 16]) * chooser.randint(2, 40)
        else:
            data = data[:at]
    return bytes(data)

requests = [mutate(chooser.choice(seeds)) for _ in range(count)]

def send(data):
    try:
        connection = socket.create_connection((host, port), timeout=15)
    except OSError:
        return "refused"
    try:
        connection.sendall(data)
        connection.shutdown(socket.SHUT_WR)
        answer = b""
        while True:
            piece = connection.recv(65536)
            if not piece:
                break
            answer += piece
    except socket.timeout:
        return "timeout"
    except OSError:
        return "closed"
    finally:
        connection.close()
    if not answer:
        return "closed"
    if not answer.startswith(b"HTTP/1.1 ") or len(answer) < 12:
        return "malformed"
    return answer[9:12].decode("latin-1")

with ThreadPoolExecutor(16) as pool:
    print(json.dumps(Counter(pool.map(send, requests))))
"""


def resident_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def serving_pid(cloud: Cloud) -> int:
    assert cloud.agent.process is not None
    root = cloud.agent.process.process.pid
    children = Path(f"/proc/{root}/task/{root}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def run_fuzz(argv: list[str], seeds: list[bytes]) -> dict[str, int]:
    result = subprocess.run(
        argv,
        input=json.dumps([seed.hex() for seed in seeds]),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    counts: dict[str, int] = json.loads(result.stdout)
    return counts


def test_the_agent_survives_thousands_of_mutated_requests_from_a_guest(cloud: Cloud) -> None:
    instance_id = cloud.launch()
    guest = cloud.guest(instance_id)
    status, token = guest.token()
    assert status == 200
    seeds = [
        b"PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\n"
        b"X-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n",
        b"GET /latest/meta-data/iam/security-credentials/ HTTP/1.1\r\nHost: 169.254.169.254\r\n"
        + f"X-aws-ec2-metadata-token: {token}\r\n\r\n".encode(),
        b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n"
        b"GET /latest/api/token HTTP/1.1\r\n\r\n",
    ]
    pid = serving_pid(cloud)
    before = resident_kb(pid)
    counts = run_fuzz(
        ["ip", "netns", "exec", guest.name, sys.executable, "-c", FUZZ_SCRIPT,
         "169.254.169.254", "80", str(REQUESTS), "16"],
        seeds,
    )  # fmt: skip
    assert sum(counts.values()) == REQUESTS
    server_errors = {
        code: n for code, n in counts.items() if code.startswith("5") and code != "503"
    }
    assert not server_errors, counts
    assert counts.get("timeout", 0) == 0 and counts.get("malformed", 0) == 0, counts
    assert counts.get("refused", 0) == 0, counts
    assert resident_kb(pid) - before < RSS_GROWTH_LIMIT_KB
    # And the guest is served as before.
    assert guest.get("/latest/meta-data/instance-id", guest.token()[1]) == (200, instance_id)


def test_the_controller_survives_thousands_of_mutated_api_requests(cloud: Cloud) -> None:
    controller = cloud.controller
    assert controller.process is not None
    address = urlsplit(controller.url)
    sts = controller.client("sts")
    signed: list[bytes] = []

    def keep(request: object, **_: object) -> None:
        prepared = request  # botocore's AWSPreparedRequest, as it goes on the wire
        body = prepared.body or b""  # type: ignore[attr-defined]
        body = body.encode() if isinstance(body, str) else body
        headers = "".join(f"{name}: {value}\r\n" for name, value in prepared.headers.items())  # type: ignore[attr-defined]
        signed.append(
            f"POST / HTTP/1.1\r\nHost: {address.netloc}\r\n{headers}".encode()
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )

    sts.meta.events.register("before-send.sts.*", keep)
    sts.get_caller_identity()
    iam = controller.client("iam")
    iam.meta.events.register("before-send.iam.*", keep)
    iam.list_roles(MaxItems=5)
    assert len(signed) == 2
    seeds = [*signed, b"GET /?Action=ListRoles&Version=2010-05-08 HTTP/1.1\r\nHost: x\r\n\r\n"]
    pid = controller.process.process.pid
    before = resident_kb(pid)
    counts = run_fuzz(
        [sys.executable, "-c", FUZZ_SCRIPT, address.hostname or "127.0.0.1",
         str(address.port), str(REQUESTS), "17"],
        seeds,
    )  # fmt: skip
    assert sum(counts.values()) == REQUESTS
    assert not {code: n for code, n in counts.items() if code.startswith("5")}, counts
    assert counts.get("timeout", 0) == 0 and counts.get("malformed", 0) == 0, counts
    assert resident_kb(pid) - before < RSS_GROWTH_LIMIT_KB
    assert sts.get_caller_identity()["Account"]  # and it serves as before


def test_the_fuzz_client_tells_what_it_saw() -> None:
    """The script counts an answer's status, a close without one, and a silent server apart."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]

    def serve() -> None:
        for answer in (b"HTTP/1.1 500 Internal Server Error\r\n\r\n", b"", b"junk"):
            connection, _ = listener.accept()
            connection.recv(65536)
            connection.sendall(answer)
            connection.close()

    with ThreadPoolExecutor(1) as pool:
        served = pool.submit(serve)
        script = FUZZ_SCRIPT.replace("ThreadPoolExecutor(16)", "ThreadPoolExecutor(1)")
        counts = run_fuzz(
            [sys.executable, "-c", script, "127.0.0.1", str(port), "3", "1"], [b"GET / HTTP/1.1"]
        )
        served.result(timeout=30)
    listener.close()
    assert counts == {"500": 1, "closed": 1, "malformed": 1}
