"""The agent's metadata service under load, next to a bare twisted.web server, and how long the
agent takes to serve hundreds of instances and how much memory it holds then.

A benchmark, never a test; it needs root (it makes network namespaces). One run starts a
controller in a temporary state directory, enrols a node, launches instances on it with an
instance profile and ``HttpTokens=optional``, and runs ``rolecall-agent`` pinned to core 0:

- reconcile (``--reconcile 500,1000``): from the agent's start until every instance answers
  ``GET /latest/meta-data/iam/security-credentials/ROLE`` with 200; the agent's RSS then;
- the credential GET (``--instances 1,50,500``) at saturation and at 2 requests/s per
  instance, against the agent and, in the same run, a bare twisted.web server (this script with
  ``--bare-server``, pinned to the same core) answering the same bytes on port 8080 of the same
  namespaces. The load comes from wrk in a guest namespace one veth link away (1 instance) and
  from this script itself, connected inside each instance's namespace (many instances), on the
  other core.

Traffic stays on loopback and inside the namespaces the run makes (link-local addresses only).
Every process, namespace, link and temporary directory it makes is removed when it ends, fails
or is interrupted. See bench/README.md for how each figure is made.

    .venv/bin/python bench/imds.py [--instances 1,50,500] [--reconcile 500,1000] [--duration 10]
    .venv/bin/python bench/imds.py --instances '' --reconcile 500,1000   # the reconcile runs only
"""

from __future__ import annotations

import argparse
import base64
import errno
import gc
import http.client
import json
import math
import os
import re
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from botocore.exceptions import BotoCoreError, ClientError
from processes import (  # bench/processes.py
    BenchError,
    cpu_seconds,
    log_tail,
    process_tree,
    started,
)

from agent import netns
from agent.imds.rules import TOKEN_HEADER, TOKEN_PATH, TTL_HEADER
from demo.guest import GuestError, delete_namespace, make_guest

BIN = Path(sys.executable).parent
ACCOUNT_ID = "123456789012"
METADATA_ADDRESS = netns.METADATA_ADDRESS
AGENT_PORT = 80
BARE_PORT = 8080
ROLE_NAME = "bench-imds"
CREDENTIALS_PATH = f"/latest/meta-data/iam/security-credentials/{ROLE_NAME}"
#: What wrk sends for this URL (no port: the Host has none); the script's own load sends it too.
REQUEST = f"GET {CREDENTIALS_PATH} HTTP/1.1\r\nHost: {METADATA_ADDRESS}\r\n\r\n".encode()
LAUNCH_BATCH = 100  # RunInstances MaxCount is at most 100
PUBLIC_API = re.compile(r"public API listening on (http://\S+)")
NODE_API = re.compile(r"node API listening on (https://\S+)")
AGENT_METRICS = re.compile(r"agent metrics listening on (http://\S+)")
BARE_READY = re.compile(r"bare server listening in (\d+) namespaces")

# The servers share core 0; clients, the controller and this script take another.
_CORES = sorted(os.sched_getaffinity(0))
SERVER_CORE = str(_CORES[0])
CLIENT_CORE = str(_CORES[1]) if len(_CORES) > 1 else SERVER_CORE
# Unique per run: the node and the guest namespace are named with it (demo.guest names the
# veth links uniquely itself).
RUN = uuid.uuid4().hex[:8]
GUEST_NAMESPACE = f"rcbg-{RUN}"

START_TIMEOUT = 60.0
WRK_CONNECTIONS = 32
FIXED_RATE = 2.0  # requests/s per instance
DRAIN_SECONDS = 5.0  # how long answers may trail the end of a measurement

RATIO_TARGET = 0.90
P99_TARGET_MS = 2.0
P99_TARGET_INSTANCES = 500
RECONCILE_TARGET_SECONDS = 10.0
LARGE_NODE = 1000
RSS_TARGET_MB = 100.0

EC2_TRUST = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "ec2.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
)
ROLE_POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}],
    }
)


# -- processes ----------------------------------------------------------------------------------


def wait_for_log(what: str, process: Any, log: Path, pattern: re.Pattern[str]) -> re.Match[str]:
    """The first match of ``pattern`` in ``log``; fails if the process exits or is too slow."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        match = pattern.search(log.read_text(errors="replace"))
        if match:
            return match
        if process.poll() is not None:
            raise BenchError(f"{what} exited with {process.returncode}:\n{log_tail(log)}")
        time.sleep(0.05)
    raise BenchError(f"{what} did not start in {START_TIMEOUT:.0f} s:\n{log_tail(log)}")


def busy_seconds(cores: set[str]) -> float:
    """CPU time ``cores`` spent on anything but idling, since boot (Linux /proc/stat)."""
    total = 0.0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *ticks = line.split()
        if name.removeprefix("cpu") in cores and name != "cpu":
            values = [int(tick) for tick in ticks]
            total += (sum(values[:8]) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")
    return total


def own_seconds() -> float:
    """CPU time of this script and of the children it waited for (wrk)."""
    mine = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return mine.ru_utime + mine.ru_stime + children.ru_utime + children.ru_stime


def memory_mb(pid: int) -> tuple[float, float]:
    """Resident set size now, and its peak, in MB (VmRSS and VmHWM of /proc/PID/status), of the
    process and its descendants together (the agent's privileged and serving processes)."""
    found = {"VmRSS": 0.0, "VmHWM": 0.0}
    for each in process_tree(pid):
        for line in Path(f"/proc/{each}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in found:
                found[name] += int(value.split()[0]) / 1024  # kB
    return found["VmRSS"], found["VmHWM"]


# -- the controller -----------------------------------------------------------------------------


@dataclass
class Controller:
    url: str
    node_api_url: str
    state_dir: Path
    access_key_id: str
    secret_access_key: str

    def client(self, service: str) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            config=Config(retries={"max_attempts": 1}),
        )


def controller_command(state_dir: Path, *argv: str) -> list[str]:
    return [str(BIN / "rolecall-controller"), "--state-dir", str(state_dir), *argv]


def start_controller(stack: ExitStack, work: Path) -> Controller:
    """``init`` and ``serve`` in a temporary state directory, on free loopback ports."""
    import configparser

    state_dir = work / "controller"
    subprocess.run(
        controller_command(state_dir, "init", "--account-id", ACCOUNT_ID),
        capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    credentials = configparser.ConfigParser()
    credentials.read(state_dir / "root-credentials")
    log = work / "controller.log"
    command = controller_command(
        state_dir, "serve", "--port", "0", "--node-api-port", "0", "--metrics-port", "0"
    )
    process = stack.enter_context(started(command, log))  # on this script's core
    url = wait_for_log("the controller", process, log, PUBLIC_API).group(1)
    node_api_url = wait_for_log("the controller", process, log, NODE_API).group(1)
    return Controller(
        url,
        node_api_url,
        state_dir,
        credentials["rolecall"]["aws_access_key_id"],
        credentials["rolecall"]["aws_secret_access_key"],
    )


def enrol_node(controller: Controller, work: Path) -> tuple[str, Path]:
    node = f"bench-{RUN}"
    out = work / "node"
    subprocess.run(
        controller_command(controller.state_dir, "enroll-node", node, "--out", str(out)),
        capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    return node, out


def create_profile(controller: Controller) -> None:
    """The role ROLE_NAME, which EC2 may assume, in an instance profile of the same name."""
    iam = controller.client("iam")
    iam.create_role(RoleName=ROLE_NAME, AssumeRolePolicyDocument=EC2_TRUST)
    iam.put_role_policy(RoleName=ROLE_NAME, PolicyName="read", PolicyDocument=ROLE_POLICY)
    iam.create_instance_profile(InstanceProfileName=ROLE_NAME)
    iam.add_role_to_instance_profile(InstanceProfileName=ROLE_NAME, RoleName=ROLE_NAME)


def launch(controller: Controller, node: str, count: int, launched: list[str]) -> None:
    """Run ``count`` more instances on ``node`` (in batches of 100), appending their ids."""
    ec2 = controller.client("ec2")
    while count > 0:
        batch = min(count, LAUNCH_BATCH)
        answer = ec2.run_instances(
            ImageId="emi-bench",
            MinCount=batch,
            MaxCount=batch,
            IamInstanceProfile={"Name": ROLE_NAME},
            MetadataOptions={"HttpTokens": "optional"},
            Placement={"HostId": node},
        )
        launched += [str(instance["InstanceId"]) for instance in answer["Instances"]]
        count -= batch


def namespace_of(instance_id: str) -> str:
    return f"rc-{instance_id}"  # what the controller assigns (``netns``)


# -- namespaces ---------------------------------------------------------------------------------


def remove_namespaces(names: list[str]) -> list[str]:
    """Remove those of ``names`` that exist (the veth ends inside go with them); what failed."""
    from pyroute2 import netns as pyroute2_netns

    failed = []
    for name in names:
        if netns.exists(name):
            try:
                pyroute2_netns.remove(name)
            except OSError as error:
                failed.append(f"{name}: {error}")
    return failed


# -- talking to one metadata service ------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def ask(
    namespace: str,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    port: int = AGENT_PORT,
) -> Answer:
    """One request to 169.254.169.254:``port`` from inside ``namespace``."""
    connection = http.client.HTTPConnection(METADATA_ADDRESS, port, timeout=5)
    try:
        with netns.inside(namespace):
            connection.connect()  # the socket keeps the namespace it was created in
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return Answer(response.status, response.getheaders(), response.read())
    finally:
        connection.close()


def http_status(url: str, path: str) -> int:
    """The status of GET ``path`` at ``url`` (loopback), 0 when nothing answers."""
    connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=2)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return 0
    finally:
        connection.close()


# -- the bare server ----------------------------------------------------------------------------


def serve_bare(port: int, answer_file: Path, namespaces_file: Path) -> int:
    """``--bare-server``: a plain twisted.web resource answering every GET with the agent's
    bytes (same body, Content-Type and Server), on 169.254.169.254:``port`` in every namespace
    listed, its sockets made and adopted as the agent does; no access log, as the agent."""
    from twisted.internet import reactor
    from twisted.web import resource as web_resource
    from twisted.web import server

    answer = json.loads(answer_file.read_text())
    body = base64.b64decode(answer["body"])
    headers = [(name.encode(), value.encode()) for name, value in answer["headers"]]

    class Same(web_resource.Resource):
        isLeaf = True

        def render_GET(self, request: server.Request) -> bytes:
            for name, value in headers:
                request.setHeader(name, value)
            return body

    site = server.Site(Same())
    site.noisy = False
    site.log = lambda request: None  # type: ignore[method-assign]
    names = namespaces_file.read_text().split()
    for name in names:
        listening = netns.listen(name, port)
        try:
            reactor.adoptStreamPort(listening.fileno(), socket.AF_INET, site)  # type: ignore[attr-defined]
        finally:
            listening.close()
    print(f"bare server listening in {len(names)} namespaces", flush=True)
    reactor.run()  # type: ignore[attr-defined]  # SIGTERM stops it
    return 0


def bare_command(answer_file: Path, namespaces_file: Path) -> list[str]:
    return [
        sys.executable, str(Path(__file__).resolve()), "--bare-server", "--port", str(BARE_PORT),
        "--answer", str(answer_file), "--namespaces", str(namespaces_file),
    ]  # fmt: skip


# -- load from this script, inside the instances' namespaces -----------------------------------

_HEAD_END = b"\r\n\r\n"
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)


def complete_response(buffer: bytearray) -> tuple[int, int] | None:
    """(status, length) of the whole response at the start of ``buffer``; None while partial."""
    end = buffer.find(_HEAD_END)
    if end < 0:
        return None
    head = bytes(buffer[:end])
    match = _CONTENT_LENGTH.search(head)
    length = end + len(_HEAD_END) + (int(match.group(1)) if match else 0)
    if len(buffer) < length:
        return None
    return int(head[9:12]), length


@dataclass
class Connection:
    """One keep-alive connection, made inside an instance's namespace, at most one request out."""

    namespace: str
    sock: socket.socket
    buffer: bytearray = field(default_factory=bytearray)
    sent_at: float | None = None


def connect_inside(namespace: str, port: int) -> socket.socket:
    with netns.inside(namespace):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(5)
        sock.connect((METADATA_ADDRESS, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


@contextmanager
def connections_to(namespaces: list[str], port: int, count: int) -> Iterator[list[Connection]]:
    """``count`` connections spread round robin over ``namespaces``; all closed afterwards."""
    made: list[Connection] = []
    try:
        for index in range(count):
            name = namespaces[index % len(namespaces)]
            made.append(Connection(name, connect_inside(name, port)))
        yield made
    finally:
        for connection in made:
            connection.sock.close()


@dataclass
class LoadResult:
    seconds: float
    completed: int  # answers that arrived within the measured window
    latencies: list[float]  # seconds, from send to the last byte of the answer, every answer
    statuses: Counter[int]
    missed: int = 0  # open loop: sends skipped because the previous answer was still due
    unanswered: int = 0
    client_cpu: float = 0.0  # this script's CPU seconds over the run


def drive(connections: list[Connection], seconds: float, rate: float | None) -> LoadResult:
    """Send the credential GET on every connection for ``seconds``: closed loop (the next
    request as soon as the answer is in) when ``rate`` is None, else open loop at ``rate``
    requests/s per connection, the sends spread evenly over time. One thread, epoll; the
    garbage collector is off meanwhile so that it cannot add pauses to the figures."""
    count = len(connections)
    by_descriptor = {connection.sock.fileno(): connection for connection in connections}
    poller = select.epoll()
    for descriptor in by_descriptor:
        poller.register(descriptor, select.EPOLLIN)
    clock = time.perf_counter
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    completed = missed = outstanding = 0

    def send(connection: Connection) -> None:
        nonlocal outstanding
        connection.sent_at = clock()
        if connection.sock.send(REQUEST) != len(REQUEST):
            raise BenchError(f"a short send to {connection.namespace}")
        outstanding += 1

    planned = round(seconds * rate * count) if rate is not None else 0
    interval = 1.0 / (rate * count) if rate is not None else 0.0
    gc.disable()
    cpu_start = time.process_time()
    start = clock()
    end = start + seconds
    give_up = end + DRAIN_SECONDS
    next_send = 0
    try:
        if rate is None:
            for connection in connections:
                send(connection)
        while True:
            now = clock()
            if rate is not None:
                while next_send < planned and start + next_send * interval <= now:
                    connection = connections[next_send % count]
                    next_send += 1
                    if connection.sent_at is not None:
                        missed += 1
                    else:
                        send(connection)
                if next_send >= planned and outstanding == 0:
                    break
                wait = start + next_send * interval - now if next_send < planned else give_up - now
            else:
                if now >= end and outstanding == 0:
                    break
                wait = (end if now < end else give_up) - now
            if now >= give_up:
                break
            events = poller.poll(max(0.0, wait))
            arrived = clock()
            for descriptor, _mask in events:
                connection = by_descriptor[descriptor]
                try:
                    data = connection.sock.recv(65536)
                except OSError as error:
                    raise BenchError(f"{connection.namespace}: {error}") from error
                if not data:
                    raise BenchError(f"{connection.namespace}: the server closed the connection")
                connection.buffer += data
                while (parsed := complete_response(connection.buffer)) is not None:
                    status, length = parsed
                    del connection.buffer[:length]
                    if connection.sent_at is None:
                        raise BenchError(f"{connection.namespace}: an answer nobody asked for")
                    latencies.append(arrived - connection.sent_at)
                    statuses[status] += 1
                    connection.sent_at = None
                    outstanding -= 1
                    if arrived <= end:
                        completed += 1
                        if rate is None:
                            send(connection)
        client_cpu = time.process_time() - cpu_start
    finally:
        gc.enable()
        poller.close()
    return LoadResult(
        seconds, completed, latencies, statuses, missed, outstanding, client_cpu=client_cpu
    )


# -- reconcile: when does every instance answer? -----------------------------------------------


@dataclass
class _Probe:
    namespace: str
    sock: socket.socket
    buffer: bytearray = field(default_factory=bytearray)
    sent: bool = False


def sweep(namespaces: list[str], timeout: float) -> dict[str, float]:
    """Ask every namespace's metadata service for the credentials at once, each on a new
    connection; when each of those that answered 200 did (``perf_counter``)."""
    clock = time.perf_counter
    poller = select.epoll()
    probes: dict[int, _Probe] = {}
    served: dict[str, float] = {}

    def drop(descriptor: int) -> None:
        probe = probes.pop(descriptor)
        poller.unregister(descriptor)
        probe.sock.close()

    try:
        for name in namespaces:
            try:
                with netns.inside(name):
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            except (netns.NamespaceError, OSError):
                continue  # not made yet
            sock.setblocking(False)
            code = sock.connect_ex((METADATA_ADDRESS, AGENT_PORT))
            if code not in (0, errno.EINPROGRESS):
                sock.close()  # no address or nothing listening yet
                continue
            probes[sock.fileno()] = _Probe(name, sock)
            poller.register(sock.fileno(), select.EPOLLOUT)
        deadline = clock() + timeout
        while probes and (left := deadline - clock()) > 0:
            for descriptor, _mask in poller.poll(left):
                probe = probes[descriptor]
                try:
                    if not probe.sent:
                        if probe.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
                            drop(descriptor)
                            continue
                        probe.sock.send(REQUEST)
                        probe.sent = True
                        poller.modify(descriptor, select.EPOLLIN)
                        continue
                    data = probe.sock.recv(65536)
                except OSError:
                    drop(descriptor)
                    continue
                if not data:
                    drop(descriptor)
                    continue
                probe.buffer += data
                parsed = complete_response(probe.buffer)
                if parsed is not None:
                    if parsed[0] == 200:
                        served[probe.namespace] = clock()
                    drop(descriptor)
    finally:
        for probe in probes.values():
            probe.sock.close()
        poller.close()
    return served


@dataclass(frozen=True)
class Reconcile:
    instances: int
    ready_seconds: float  # the agent's /readyz said ready
    served_seconds: float  # every instance had answered its credential path with 200
    agent_cpu: float
    rss_mb: float
    peak_rss_mb: float


def measure_reconcile(
    agent: Any, log: Path, started_at: float, namespaces: list[str], limit: float
) -> Reconcile:
    """Wait for /readyz (polled 20 times a second: probing hundreds of instances meanwhile would
    take the agent's CPU), then ask every instance until each has answered 200."""
    clock = time.perf_counter
    deadline = started_at + limit

    def check_time(what: str) -> None:
        if agent.poll() is not None:
            raise BenchError(f"the agent exited with {agent.returncode}:\n{log_tail(log)}")
        if clock() > deadline:
            raise BenchError(f"{what} after {limit:.0f} s:\n{log_tail(log)}")

    metrics_url = wait_for_log("the agent", agent, log, AGENT_METRICS).group(1)
    while http_status(metrics_url, "/readyz") != 200:
        check_time(f"the agent was not ready with {len(namespaces)} instances")
        time.sleep(0.05)
    ready_at = clock()
    remaining = set(namespaces)
    served_at = ready_at
    while remaining:
        check_time(f"{len(remaining)} of {len(namespaces)} instances did not answer 200")
        answered = sweep(sorted(remaining), timeout=5.0)
        remaining -= answered.keys()
        served_at = max([served_at, *answered.values()])
        if remaining:
            time.sleep(0.2)
    rss, peak = memory_mb(agent.pid)
    return Reconcile(
        len(namespaces),
        ready_at - started_at,
        served_at - started_at,
        cpu_seconds(agent.pid),
        rss,
        peak,
    )


# -- wrk in the guest ---------------------------------------------------------------------------

WRK_LINE = re.compile(
    r"^bench: requests=(\d+) seconds=([\d.]+) p50=([\d.]+) p99=([\d.]+) p999=([\d.]+)"
    r" status=(\d+) connect=(\d+) read=(\d+) write=(\d+) timeout=(\d+)$",
    re.MULTILINE,
)


def wrk_script(token: str | None) -> str:
    """Lua for wrk: the token header if any, and a summary line with p99.9 (``--latency`` stops
    at p99). wrk counts answers of 400 and over in ``errors.status``."""
    lines = []
    if token is not None:
        lines.append(f'wrk.headers["{TOKEN_HEADER}"] = "{token}"')
    lines.append(
        """
function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    "bench: requests=%d seconds=%.6f p50=%.1f p99=%.1f p999=%.1f"
    .. " status=%d connect=%d read=%d write=%d timeout=%d\\n",
    summary.requests, summary.duration / 1e6, latency:percentile(50), latency:percentile(99),
    latency:percentile(99.9), errors.status, errors.connect, errors.read, errors.write,
    errors.timeout))
end
"""
    )
    return "\n".join(lines)


@dataclass(frozen=True)
class Figure:
    """One measured line of the table."""

    instances: int
    server: str
    load: str
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    answers: int
    errors: int  # non-200 answers, socket errors, unanswered or skipped requests
    server_cores: float = 0.0  # the server's CPU time over the run, in cores
    others_cores: float = 0.0  # what other processes took of both cores meanwhile
    client_cores: float | None = None  # this script's CPU, for its own load

    @property
    def cpu_per_request_us(self) -> float:
        return self.server_cores / self.requests_per_second * 1e6 if self.answers else 0.0


@dataclass(frozen=True)
class WrkResult:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    requests: int
    errors: int


def run_wrk(guest: str, script: Path, url: str, seconds: int) -> WrkResult:
    command = [
        "ip", "netns", "exec", guest, "taskset", "-c", CLIENT_CORE, "wrk", "-t1",
        f"-c{WRK_CONNECTIONS}", f"-d{seconds}s", "--timeout", "5s", "-s", str(script), url,
    ]  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    match = WRK_LINE.search(result.stdout)
    if result.returncode != 0 or match is None:
        raise BenchError(f"wrk failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    requests, duration, p50, p99, p999, *errors = match.groups()
    return WrkResult(
        int(requests) / float(duration),
        float(p50) / 1000,
        float(p99) / 1000,
        float(p999) / 1000,
        int(requests),
        sum(int(count) for count in errors),
    )


# -- measuring ----------------------------------------------------------------------------------


def percentile(ordered: list[float], fraction: float) -> float:
    """Nearest rank of an ascending list."""
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


@contextmanager
def server_usage(pid: int, seconds: float) -> Iterator[dict[str, float]]:
    """The server's CPU over the block, in cores, and what processes other than the server and
    the client (this script, wrk) took of the two cores meanwhile: other work on the machine."""
    usage: dict[str, float] = {}
    cores = {SERVER_CORE, CLIENT_CORE}
    server_before, busy_before, own_before = cpu_seconds(pid), busy_seconds(cores), own_seconds()
    yield usage
    server = cpu_seconds(pid) - server_before
    others = busy_seconds(cores) - busy_before - server - (own_seconds() - own_before)
    usage.update(server=server / seconds, others=max(0.0, others / seconds))


def measure_wrk(
    instances: int,
    name: str,
    process: Any,
    guest: str,
    script: Path,
    url: str,
    arguments: argparse.Namespace,
) -> Figure:
    print(f"  {name}: wrk from the guest, {url}", file=sys.stderr, flush=True)
    if arguments.warmup > 0:
        run_wrk(guest, script, url, arguments.warmup)
    with server_usage(process.pid, arguments.duration) as usage:
        result = run_wrk(guest, script, url, arguments.duration)
    return Figure(
        instances,
        name,
        f"wrk -c{WRK_CONNECTIONS}, guest",
        result.requests_per_second,
        result.p50_ms,
        result.p99_ms,
        result.p999_ms,
        result.requests,
        result.errors,
        usage["server"],
        usage["others"],
    )


def measure_load(
    instances: int,
    name: str,
    process: Any,
    namespaces: list[str],
    port: int,
    rate: float | None,
    arguments: argparse.Namespace,
) -> Figure:
    """This script's own load inside the instances' namespaces: closed loop over
    max(instances, 32) connections, or ``rate`` requests/s on one connection per instance."""
    chosen = namespaces[:instances]
    count = instances if rate is not None else max(instances, WRK_CONNECTIONS)
    seconds = arguments.rate_duration if rate is not None else arguments.duration
    kind = f"{rate:g}/s each, open loop" if rate is not None else f"closed loop, {count} conn"
    print(f"  {name}: {instances} instance(s), {kind}", file=sys.stderr, flush=True)
    with connections_to(chosen, port, count) as connections:
        if rate is None and arguments.warmup > 0:
            drive(connections, arguments.warmup, None)
        with server_usage(process.pid, seconds) as usage:
            result = drive(connections, seconds, rate)
    ordered = sorted(result.latencies)
    errors = sum(n for status, n in result.statuses.items() if status != 200)
    return Figure(
        instances,
        name,
        kind,
        result.completed / seconds,
        percentile(ordered, 0.50) * 1000,
        percentile(ordered, 0.99) * 1000,
        percentile(ordered, 0.999) * 1000,
        len(ordered),
        errors + result.missed + result.unanswered,
        usage["server"],
        usage["others"],
        result.client_cpu / seconds,
    )


def check_alive(what: str, process: Any, log: Path) -> None:
    if process.poll() is not None:
        raise BenchError(f"{what} died during the run:\n{log_tail(log)}")


def measure_serving(
    arguments: argparse.Namespace,
    work: Path,
    agent: Any,
    agent_log: Path,
    namespaces: list[str],
) -> list[Figure]:
    """Every serving figure: the agent and the bare server, one at a time, same requests. The
    bare server and the guest are gone when it returns."""
    with ExitStack() as stack:
        return _measure_serving(arguments, work, agent, agent_log, namespaces, stack)


def _measure_serving(
    arguments: argparse.Namespace,
    work: Path,
    agent: Any,
    agent_log: Path,
    namespaces: list[str],
    stack: ExitStack,
) -> list[Figure]:
    first = namespaces[0]
    answer = ask(first, "GET", CREDENTIALS_PATH)
    if answer.status != 200 or b'"AccessKeyId"' not in answer.body:
        raise BenchError(f"the credential GET answered {answer.status}: {answer.body[:500]!r}")
    token_answer = ask(first, "PUT", TOKEN_PATH, {TTL_HEADER: "21600"})
    if token_answer.status != 200:
        raise BenchError(f"the token PUT answered {token_answer.status}")
    token = token_answer.body.decode()
    if ask(first, "GET", CREDENTIALS_PATH, {TOKEN_HEADER: token}).status != 200:
        raise BenchError("the credential GET with a token was refused")

    # The bare server: the agent's body and headers but those twisted.web writes itself.
    own = {"date", "content-length", "connection", "transfer-encoding"}
    answer_file, namespaces_file = work / "answer.json", work / "namespaces.txt"
    answer_file.write_text(
        json.dumps(
            {
                "headers": [(n, v) for n, v in answer.headers if n.lower() not in own],
                "body": base64.b64encode(answer.body).decode(),
            }
        )
    )
    largest = max(arguments.instances)
    namespaces_file.write_text("\n".join(namespaces[:largest]))
    bare_log = work / "bare.log"
    bare = stack.enter_context(
        started(bare_command(answer_file, namespaces_file), bare_log, SERVER_CORE)
    )
    wait_for_log("the bare server", bare, bare_log, BARE_READY)
    bare_answer = ask(first, "GET", CREDENTIALS_PATH, port=BARE_PORT)
    if (bare_answer.status, bare_answer.body) != (200, answer.body):
        raise BenchError(f"the bare server's answer differs: {bare_answer}")

    servers = (("agent", agent, agent_log, AGENT_PORT), ("bare", bare, bare_log, BARE_PORT))
    figures: list[Figure] = []
    for instances in sorted(arguments.instances):
        print(f"measuring {instances} instance(s) ...", file=sys.stderr, flush=True)
        if instances == 1:
            stack.callback(delete_namespace, GUEST_NAMESPACE)
            guest = make_guest(first, work, name=GUEST_NAMESPACE).name
            scripts = {}
            for name, token_value in (("plain", None), ("token", token)):
                scripts[name] = work / f"wrk-{name}.lua"
                scripts[name].write_text(wrk_script(token_value))
            agent_url = f"http://{METADATA_ADDRESS}{CREDENTIALS_PATH}"
            bare_url = f"http://{METADATA_ADDRESS}:{BARE_PORT}{CREDENTIALS_PATH}"
            for name, process, script, url in (
                ("agent", agent, scripts["plain"], agent_url),
                ("agent+token", agent, scripts["token"], agent_url),
                ("bare", bare, scripts["plain"], bare_url),
            ):
                figures.append(measure_wrk(1, name, process, guest, script, url, arguments))
                check_alive(name, process, agent_log if process is agent else bare_log)
        for name, process, log, port in servers:
            figures.append(
                measure_load(instances, name, process, namespaces, port, None, arguments)
            )
            check_alive(name, process, log)
        if instances > 1:
            for name, process, log, port in servers:
                figures.append(
                    measure_load(instances, name, process, namespaces, port, FIXED_RATE, arguments)
                )
                check_alive(name, process, log)
    return figures


# -- the run ------------------------------------------------------------------------------------


@dataclass
class Results:
    reconciles: list[Reconcile] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    rss_after_load: tuple[int, float, float] | None = None
    teardown: tuple[int, float] | None = None


def agent_config(work: Path, controller: Controller) -> Path:
    """The agent's configuration: the controller, and a per-instance rate limit high enough
    that it never answers 503 under saturation (the default is 50/s, burst 200)."""
    path = work / "agent.toml"
    path.write_text(
        'user = "nobody"\n'
        f'[controller]\nurls = ["{controller.node_api_url}"]\n\n'
        "[imds]\nrate_per_second = 100000\nburst = 1000000\n\n"
        # Its own plug socket, never the host agent's (a path short enough for a socket).
        f'[hypervisor]\nplug_socket = "{work / "plug.sock"}"\n',
        encoding="utf-8",
    )
    return path


def agent_command(config: Path, credentials: Path, ownership: Path) -> list[str]:
    return [
        str(BIN / "rolecall-agent"), "--config", str(config),
        "--certificate", str(credentials / "node.pem"), "--key", str(credentials / "node.key"),
        "--ca-certificate", str(credentials / "ca.pem"),
        "--metrics-port", "0", "--imds-port", str(AGENT_PORT),
        "--ownership-file", str(ownership),
    ]  # fmt: skip


def terminate_all(controller: Controller, instance_ids: list[str], limit: float) -> float:
    """TerminateInstances for all, then wait until the agent removed every namespace."""
    ec2 = controller.client("ec2")
    started_at = time.perf_counter()
    for index in range(0, len(instance_ids), LAUNCH_BATCH):
        ec2.terminate_instances(InstanceIds=instance_ids[index : index + LAUNCH_BATCH])
    deadline = started_at + limit
    while any(netns.exists(namespace_of(instance_id)) for instance_id in instance_ids):
        if time.perf_counter() > deadline:
            raise BenchError(f"the agent had not removed the namespaces after {limit:.0f} s")
        time.sleep(0.1)
    return time.perf_counter() - started_at


def run(arguments: argparse.Namespace, work: Path, results: Results) -> None:
    launched: list[str] = []
    with ExitStack() as stack:
        # Last out: whatever namespace of this run is left, whatever happened.
        stack.callback(lambda: remove_namespaces([namespace_of(i) for i in launched]))
        controller = start_controller(stack, work)
        node, credentials = enrol_node(controller, work)
        create_profile(controller)
        config = agent_config(work, controller)
        # No serving runs with --instances '': only the reconcile runs.
        largest_load = max(arguments.instances, default=None)
        sizes = sorted(set(arguments.reconcile) | ({largest_load} if largest_load else set()))
        for position, size in enumerate(sizes):
            print(f"launching up to {size} instances ...", file=sys.stderr, flush=True)
            launch(controller, node, size - len(launched), launched)
            namespaces = [namespace_of(instance_id) for instance_id in launched]
            # A clean node each time: no namespace left by the previous agent, no record of it.
            failed = remove_namespaces(namespaces)
            if failed:
                raise BenchError("cannot remove namespaces: " + "; ".join(failed))
            ownership = work / f"namespaces-{size}.json"
            log = work / f"agent-{size}.log"
            print(f"reconciling {size} instances ...", file=sys.stderr, flush=True)
            with ExitStack() as serving:
                started_at = time.perf_counter()
                agent = serving.enter_context(
                    started(agent_command(config, credentials, ownership), log, SERVER_CORE)
                )
                print(f"  agent pid {agent.pid}", file=sys.stderr, flush=True)
                reconcile = measure_reconcile(
                    agent, log, started_at, namespaces, arguments.reconcile_timeout
                )
                if size in arguments.reconcile:
                    results.reconciles.append(reconcile)
                if size == largest_load:
                    results.figures = measure_serving(arguments, work, agent, log, namespaces)
                    results.rss_after_load = (size, *memory_mb(agent.pid))
                if position == len(sizes) - 1:
                    # The guest's veth is in the first instance's namespace: the agent leaves a
                    # namespace holding a link not its own in place (issue 13, item 3).
                    delete_namespace(GUEST_NAMESPACE)
                    print("terminating every instance ...", file=sys.stderr, flush=True)
                    results.teardown = (len(launched), terminate_all(controller, launched, 60))
                check_alive("the agent", agent, log)
            if "Traceback" in log.read_text(errors="replace"):
                raise BenchError(f"the agent logged a traceback:\n{log_tail(log, 60)}")


# -- the report ---------------------------------------------------------------------------------


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def report(arguments: argparse.Namespace, results: Results) -> bool:
    """Print the tables and the targets; True when every figure is valid."""
    valid = True
    if arguments.instances:  # else no serving runs (--instances '')
        print()
        print(
            f"credential GET ({CREDENTIALS_PATH}), servers on core {SERVER_CORE},"
            f" clients on core {CLIENT_CORE}; saturation {arguments.duration} s,"
            f" {FIXED_RATE:g}/s per instance {arguments.rate_duration} s"
        )
        print(
            f"{'instances':>9}  {'server':<11} {'load':<22} {'requests/s':>10} {'p50 ms':>7}"
            f" {'p99 ms':>7} {'p999 ms':>8} {'answers':>8} {'errors':>6} {'server CPU':>10}"
            f" {'CPU/req':>8}"
        )
    for figure in results.figures:
        print(
            f"{figure.instances:>9}  {figure.server:<11} {figure.load:<22}"
            f" {figure.requests_per_second:>10,.0f} {figure.p50_ms:>7.2f} {figure.p99_ms:>7.2f}"
            f" {figure.p999_ms:>8.2f} {figure.answers:>8,} {figure.errors:>6}"
            f" {figure.server_cores:>5.2f} core {figure.cpu_per_request_us:>5.0f} us"
        )
        if figure.errors:
            valid = False
            print(f"    {figure.errors} errors: NOT a valid figure")
        if figure.others_cores > 0.1:
            print(
                f"    other processes took {figure.others_cores:.2f} core meanwhile:"
                " a disturbed figure, run again on a quiet machine"
            )
        if figure.client_cores is not None and figure.client_cores > 0.9:
            print(
                f"    this script's load used {figure.client_cores:.0%} of its core: the"
                " client may be the limit"
            )

    def find(instances: int, server: str, load_prefix: str) -> Figure | None:
        for figure in results.figures:
            if (figure.instances, figure.server) == (instances, server) and figure.load.startswith(
                load_prefix
            ):
                return figure
        return None

    ratio = None
    if results.figures:
        print("agent / bare requests/s at saturation:", end="")
        for instances in sorted(arguments.instances):
            for load in ("wrk", "closed"):
                agent, bare = find(instances, "agent", load), find(instances, "bare", load)
                if agent and bare:
                    share = agent.requests_per_second / bare.requests_per_second
                    print(f"  {instances} ({load}) {share:.0%}", end="")
                    if (instances, load) == (1, "wrk"):
                        ratio = share
        print()
        plain, token = find(1, "agent", "wrk"), find(1, "agent+token", "wrk")
        if plain and token:
            share = token.requests_per_second / plain.requests_per_second
            print(
                f"the token check: {token.cpu_per_request_us - plain.cpu_per_request_us:.0f} us"
                f" of agent CPU per request ({share:.0%} of the requests/s without it)"
            )

    if results.reconciles:
        print()
        print("reconcile: from the agent's start until every instance answers 200")
        print(
            f"{'instances':>9}  {'readyz':>8} {'all 200':>8} {'agent CPU':>10}"
            f" {'agent RSS':>10} {'peak RSS':>9}"
        )
        for item in results.reconciles:
            print(
                f"{item.instances:>9}  {item.ready_seconds:>6.2f} s {item.served_seconds:>6.2f} s"
                f" {item.agent_cpu:>8.2f} s {item.rss_mb:>7.1f} MB {item.peak_rss_mb:>6.1f} MB"
            )
    if results.rss_after_load is not None:
        size, rss, peak = results.rss_after_load
        print(f"agent RSS after the serving runs ({size} instances): {rss:.1f} MB, peak {peak:.1f}")
    if results.teardown is not None:
        count, seconds = results.teardown
        print(f"TerminateInstances of {count}: the agent removed the namespaces in {seconds:.2f} s")

    print()
    print("targets")
    if ratio is not None:
        print(
            f"  agent / bare at saturation, 1 instance (wrk): {ratio:.0%}"
            f" (>= {RATIO_TARGET:.0%}: {verdict(ratio >= RATIO_TARGET)})"
        )
    fixed = find(P99_TARGET_INSTANCES, "agent", f"{FIXED_RATE:g}/s")
    if fixed:
        met = fixed.p99_ms < P99_TARGET_MS
        print(
            f"  p99 at {P99_TARGET_INSTANCES} instances, {FIXED_RATE:g}/s each:"
            f" {fixed.p99_ms:.2f} ms (< {P99_TARGET_MS:g} ms: {verdict(met)})"
        )
    for item in results.reconciles:
        if item.instances == LARGE_NODE:
            print(
                f"  reconcile of {LARGE_NODE:,} instances: {item.served_seconds:.2f} s"
                f" (< {RECONCILE_TARGET_SECONDS:g} s:"
                f" {verdict(item.served_seconds < RECONCILE_TARGET_SECONDS)})"
            )
            print(
                f"  agent RSS with {LARGE_NODE:,} instances: {item.rss_mb:.1f} MB"
                f" (< {RSS_TARGET_MB:g} MB: {verdict(item.rss_mb < RSS_TARGET_MB)})"
            )
    return valid


# -- main ---------------------------------------------------------------------------------------


def _counts(text: str) -> list[int]:
    values = _optional_counts(text)
    if not values:
        raise argparse.ArgumentTypeError(f"counts must be 1..2000: {text!r}")
    return values


def _optional_counts(text: str) -> list[int]:
    """A comma-separated list of counts; empty for none."""
    try:
        values = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if values and (values[0] < 1 or values[-1] > 2000):
        raise argparse.ArgumentTypeError(f"counts must be 1..2000: {text!r}")
    return values


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _stop_on_signal(signum: int, frame: FrameType | None) -> None:
    """The first Ctrl-C (or SIGTERM, SIGHUP) unwinds, so every clean-up runs; later ones are
    ignored, so that they cannot cut the clean-up short (each step of it is bounded)."""
    for each in _STOP_SIGNALS:
        signal.signal(each, signal.SIG_IGN)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def _raise_file_limit(needed: int) -> None:
    """Enough descriptors for one connection per instance, here and in the agent."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        limit = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--instances",
        type=_optional_counts,
        default=[1, 50, 500],
        help="serving runs (default 1,50,500; '' for none)",
    )
    parser.add_argument(
        "--reconcile",
        type=_optional_counts,
        default=[500, 1000],
        help="reconcile runs (default 500,1000)",
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds of each saturation run")
    parser.add_argument(
        "--rate-duration", type=int, default=15, help="seconds of each 2/s-per-instance run"
    )
    parser.add_argument("--warmup", type=int, default=1, help="seconds of load before measuring")
    parser.add_argument("--reconcile-timeout", type=float, default=120.0)
    parser.add_argument("--bare-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--answer", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--namespaces", type=Path, help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.bare_server:
        return serve_bare(arguments.port, arguments.answer, arguments.namespaces)
    if not 1 <= arguments.duration <= 120 or not 1 <= arguments.rate_duration <= 300:
        parser.error("--duration must be 1..120 seconds and --rate-duration 1..300")
    if not 0 <= arguments.warmup <= 30 or not 1 <= arguments.reconcile_timeout <= 600:
        parser.error("--warmup must be 0..30 seconds and --reconcile-timeout 1..600")
    if os.geteuid() != 0:
        parser.error("needs root: it makes network namespaces")
    if 1 in arguments.instances and shutil.which("wrk") is None:
        parser.error("wrk is not installed (apt-get install wrk; `make bench-imds` does it)")

    largest = max([*arguments.instances, *arguments.reconcile])
    _raise_file_limit(4 * largest + 256)
    os.sched_setaffinity(0, {int(CLIENT_CORE)})  # this script and the controller: off core 0
    if CLIENT_CORE == SERVER_CORE:
        print("only one core: clients and servers share it", file=sys.stderr)
    for signum in _STOP_SIGNALS:
        signal.signal(signum, _stop_on_signal)
    work = Path(tempfile.mkdtemp(prefix="rolecall-bench-imds-"))
    results = Results()
    try:
        run(arguments, work, results)
        valid = report(arguments, results)
    except BenchError as error:
        print(f"bench/imds.py: {error}", file=sys.stderr)
        return 1
    except (
        subprocess.SubprocessError,
        OSError,
        GuestError,
        netns.NamespaceError,
        BotoCoreError,
        ClientError,
    ) as error:
        print(f"bench/imds.py: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench/imds.py: interrupted", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if valid else 1


if __name__ == "__main__":
    sys.exit(main())
