"""Benchmark (never a test): a fleet of nodes, each with its instances, against real controllers.

    .venv/bin/python bench/fleet.py [--nodes 100] [--instances-per-node 100] [--profile]
    .venv/bin/python bench/fleet.py --controllers 2 --store postgresql --dsn DSN

Every node is a lightweight node-API client in a client process of this script (not an agent
process): its own certificate from ``enroll-node``, real TLS, the agent's own `NodeApiClient`
long-polling ``GET /v1/assignments?since=&wait=`` and fetching each instance's credentials
with the agent's concurrency cap. Measured: the cold start (every node connects at once, until
every instance holds credentials), the long-poll wake-up after an API change, instance-credential
issues per second from 1 and 4 client processes, and the controllers' CPU and RSS. See
bench/README.md.
"""

from __future__ import annotations

import argparse
import collections
import configparser
import contextlib
import io
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.processes import BenchError, cpu_seconds, log_tail, terminate

ROOT = Path(__file__).resolve().parent.parent
ACCOUNT_ID = "123456789012"
ROLE = "fleet"
TRUST = json.dumps(
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
MAX_LAUNCH = 100  # RunInstances' MaxCount bound


def monotonic() -> float:
    """CLOCK_MONOTONIC: one clock for every process on the machine, so the client processes'
    timestamps compare with this one's."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def child_environment() -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    environment["PYTHONPATH"] = str(ROOT)
    environment["PYTHONUNBUFFERED"] = "1"
    return environment


# -- the controllers -----------------------------------------------------------------------


@dataclass
class Controller:
    state_dir: Path
    config: Path
    log: Path
    process: subprocess.Popen[bytes]
    url: str = ""
    node_api_url: str = ""
    access_key_id: str = ""
    secret_access_key: str = ""

    def client(self, service: str) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            config=Config(retries={"max_attempts": 1}, read_timeout=120),
        )

    def memory(self) -> dict[str, int]:
        """VmRSS and VmHWM in KiB, from /proc."""
        found = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0])
        return found


def controller_cli(config: Path, state_dir: Path, *arguments: str) -> str:
    """``rolecall-controller ARGUMENTS`` run in this process (the same code as the command,
    without a Python start per node); its output, or BenchError with it."""
    from controller.cli import main as controller_main

    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        try:
            code = controller_main(
                ["--config", str(config), "--state-dir", str(state_dir), *arguments]
            )
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    if code != 0:
        raise BenchError(f"rolecall-controller {' '.join(arguments)} failed:\n{output.getvalue()}")
    return output.getvalue()


def config_text(args: argparse.Namespace, total_instances: int) -> str:
    lines = [
        "[ec2]",
        # Room for the fleet and the wake-up rounds' launches.
        f"max_instances_per_account = {total_instances + args.wakeups + 100}",
    ]
    if args.store == "postgresql":
        lines += ["", "[store]", 'backend = "postgresql"', f"dsn = {json.dumps(args.dsn)}"]
    return "\n".join(lines) + "\n"


def start_controller(work: Path, index: int, text: str, first: bool) -> Controller:
    """``init`` (the first one with the bench's account id) then ``serve`` on free ports."""
    state_dir = work / f"controller-{index}"
    config = work / f"controller-{index}.toml"
    config.write_text(text)
    init = ["init", "--node-api-name", "127.0.0.1"]
    if first:
        init += ["--account-id", ACCOUNT_ID]
    controller_cli(config, state_dir, *init)
    log = work / f"controller-{index}.log"
    command = [
        sys.executable, "-m", "controller.cli", "--config", str(config),
        "--state-dir", str(state_dir), "serve",
        "--port", "0", "--node-api-port", "0", "--metrics-port", "0",
    ]  # fmt: skip
    with log.open("wb") as output:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=child_environment(),
            start_new_session=True,
        )
    controller = Controller(state_dir, config, log, process)
    deadline = time.monotonic() + 60
    while not (controller.url and controller.node_api_url):
        if process.poll() is not None or time.monotonic() > deadline:
            raise BenchError(f"controller {index} did not start:\n{log_tail(log)}")
        time.sleep(0.05)
        for line in log.read_text(errors="replace").splitlines():
            if "public API listening on " in line:
                controller.url = line.split("public API listening on ")[1].split()[0]
            if "node API listening on " in line:
                controller.node_api_url = line.split("node API listening on ")[1].split()[0]
    return controller


def root_keys(controllers: list[Controller]) -> None:
    """Every controller acts with the bootstrap account's root key (the first one's file)."""
    credentials = configparser.ConfigParser()
    credentials.read(controllers[0].state_dir / "root-credentials")
    for controller in controllers:
        controller.access_key_id = credentials["rolecall"]["aws_access_key_id"]
        controller.secret_access_key = credentials["rolecall"]["aws_secret_access_key"]


def throwaway_database(stack: contextlib.ExitStack) -> str:
    """A PostgreSQL cluster of the tests' harness (tests/pg.py: initdb into a temporary
    directory as the user postgres, loopback only, fsync on) for this run, with a database; its
    DSN (the password in a passfile). Stopped and removed when `stack` closes."""
    from tests import pg

    pg.SETTINGS["shared_buffers"] = "256MB"  # the fleet's rows are about 40 MB
    try:
        cluster = stack.enter_context(pg.running_cluster())
    except (pg.PostgresMissing, RuntimeError) as error:
        raise BenchError(f"no PostgreSQL for --store postgresql: {error}") from None
    pid_file = cluster.primary.data / "postmaster.pid"
    Window.database = int(pid_file.read_text().split()[0])
    return cluster.dsn(cluster.create_database())


# -- the client processes ------------------------------------------------------------------


@dataclass
class ClientProcess:
    process: subprocess.Popen[str]
    events: collections.deque[dict[str, Any]] = field(default_factory=collections.deque)

    def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()


class Events:
    """What the client processes report, one JSON object a line, gathered by a thread each."""

    def __init__(self) -> None:
        self.condition = threading.Condition()
        self.polls: dict[str, list[tuple[int, float]]] = collections.defaultdict(list)
        self.first: dict[str, float] = {}
        self.done: dict[str, float] = {}
        self.errors: list[str] = []
        self.other: list[dict[str, Any]] = []

    def read(self, client: ClientProcess) -> None:
        assert client.process.stdout is not None
        for line in client.process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                with self.condition:
                    self.errors.append(line.strip())
                continue
            with self.condition:
                kind = event.get("t")
                if kind == "poll":
                    self.polls[event["node"]].append((event["revision"], event["at"]))
                    self.first.setdefault(event["node"], event["at"])
                elif kind == "done":
                    self.done[event["node"]] = event["at"]
                elif kind == "error":
                    self.errors.append(f"{event.get('node')}: {event.get('message')}")
                else:
                    self.other.append(event)
                self.condition.notify_all()
        with self.condition:
            self.other.append({"t": "exit", "pid": client.process.pid})
            self.condition.notify_all()

    def wait(self, predicate: Any, timeout: float) -> bool:
        with self.condition:
            return self.condition.wait_for(predicate, timeout)


def spawn(mode: str, spec: dict[str, Any], events: Events) -> ClientProcess:
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), mode],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=None,
        text=True,
        env=child_environment(),
        start_new_session=True,
    )
    client = ClientProcess(process)
    client.send(spec)
    threading.Thread(target=events.read, args=(client,), daemon=True).start()
    return client


def nodes_worker() -> int:
    """A client process: its share of the nodes, each long-polling and fetching credentials as
    the agent does (`agent.client.NodeApiClient`, a `DeferredSemaphore` per node)."""
    from twisted.internet import reactor
    from twisted.internet.defer import DeferredSemaphore

    from agent.client import NodeApiClient, NodeTLSPolicy
    from agent.failover import Bounds

    spec = json.loads(sys.stdin.readline())
    lock = threading.Lock()

    def report(**event: Any) -> None:
        with lock:
            sys.stdout.write(json.dumps(event) + "\n")
            sys.stdout.flush()

    issued = [0]
    stopping = [False]

    class Node:
        def __init__(self, name: str, directory: str, urls: list[str]) -> None:
            base = Path(directory)
            policy = NodeTLSPolicy(
                (base / "ca.pem").read_text(),
                (base / "node.pem").read_text(),
                (base / "node.key").read_text(),
            )
            self.name = name
            # Generous bounds: a cold start queues thousands of requests on the controller,
            # and the bench measures how long they take, not when an agent would move on.
            self.client = NodeApiClient(
                reactor, urls, policy, bounds=Bounds(connect_seconds=60.0, answer_seconds=60.0)
            )
            self.limiter = DeferredSemaphore(spec["concurrency"])
            self.revision = -1
            self.held: set[str] = set()
            self.asked: set[str] = set()
            self.wanted: set[str] = set()
            self.finished = False

        def poll(self) -> None:
            if stopping[0]:
                return
            wait = 0 if self.revision < 0 else spec["wait"]
            self.client.assignments(self.revision, wait).addCallbacks(self.answered, self.failed)

        def answered(self, body: dict[str, Any]) -> None:
            at = monotonic()
            revision = body["revision"]
            if revision != self.revision:
                report(t="poll", node=self.name, revision=revision, at=at)
            self.revision = revision
            self.wanted = {
                each["instance_id"] for each in body["instances"] if each["instance_profile"]
            }
            for instance_id in sorted(self.wanted - self.asked):
                self.asked.add(instance_id)
                self.limiter.run(self.fetch, instance_id)
            self.check_done()
            self.poll()

        def failed(self, failure: Any) -> None:
            if not stopping[0]:
                report(t="error", node=self.name, message=failure.getErrorMessage()[:300])
                reactor.callLater(1.0, self.poll)

        def fetch(self, instance_id: str) -> Any:
            def got(body: dict[str, Any]) -> None:
                if "AccessKeyId" not in body:
                    raise ValueError(f"no AccessKeyId in {sorted(body)}")
                issued[0] += 1
                self.held.add(instance_id)
                self.check_done()

            def refused(failure: Any) -> None:
                if stopping[0]:
                    return
                report(t="error", node=self.name, message=failure.getErrorMessage()[:300])
                self.asked.discard(instance_id)  # asked again on the next answer

            return self.client.credentials(instance_id).addCallbacks(got, refused)

        def check_done(self) -> None:
            if not self.finished and self.wanted and self.wanted <= self.held:
                self.finished = True
                report(t="done", node=self.name, at=monotonic(), instances=len(self.held))

    nodes = [Node(name, directory, urls) for name, directory, urls in spec["nodes"]]

    def commands() -> None:
        for line in sys.stdin:
            if line.strip() == "go":
                for node in nodes:
                    reactor.callFromThread(node.poll)
            elif line.strip() == "stop":
                break
        reactor.callFromThread(stop)

    def stop() -> None:
        stopping[0] = True
        report(t="bye", issued=issued[0])
        for node in nodes:
            node.client.close()
        reactor.callLater(0.5, reactor.stop)

    reactor.callWhenRunning(lambda: report(t="ready"))
    threading.Thread(target=commands, daemon=True).start()
    reactor.run()
    return 0


def issuer_worker() -> int:
    """A client process issuing instance credentials over one keep-alive TLS connection, one
    request after the other, for a fixed time (as bench/node_api.py does, with http.client)."""
    import http.client
    import ssl
    from urllib.parse import urlsplit

    spec = json.loads(sys.stdin.readline())
    base = Path(spec["directory"])
    context = ssl.create_default_context(cafile=str(base / "ca.pem"))
    context.load_cert_chain(str(base / "node.pem"), str(base / "node.key"))
    url = urlsplit(spec["url"])
    connection = http.client.HTTPSConnection(url.hostname, url.port, context=context, timeout=60)
    instances = spec["instances"]
    connection.request("POST", f"/v1/instances/{instances[0]}/credentials")
    first = connection.getresponse()
    if first.status != 200:
        raise SystemExit(f"credentials answered {first.status}: {first.read()[:200]!r}")
    first.read()
    print(json.dumps({"t": "ready"}), flush=True)
    sys.stdin.readline()  # "go"
    issued = errors = 0
    deadline = monotonic() + spec["seconds"]
    while monotonic() < deadline:
        connection.request(
            "POST", f"/v1/instances/{instances[issued % len(instances)]}/credentials"
        )
        response = connection.getresponse()
        response.read()
        if response.status == 200:
            issued += 1
        else:
            errors += 1
    print(json.dumps({"t": "issued", "issued": issued, "errors": errors}), flush=True)
    return 0


# -- measuring ------------------------------------------------------------------------------


def busy_jiffies() -> int:
    """Every core's non-idle time since boot, in clock ticks (/proc/stat)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4]  # less idle and iowait


class Window:
    """CPU over a stretch of wall-clock time: the controllers', the clients', the machine's."""

    #: The PostgreSQL server's postmaster when the bench started it (its backends count).
    database: int | None = None

    def __init__(self, controllers: list[int], clients: list[int]) -> None:
        self.controllers, self.clients = controllers, clients
        self.started = time.monotonic()
        self.controller_cpu = [cpu_seconds(pid) for pid in controllers]
        self.client_cpu = sum(cpu_seconds(pid) for pid in clients)
        self.database_cpu = cpu_seconds(self.database) if self.database else 0.0
        self.busy = busy_jiffies()

    def close(self) -> dict[str, Any]:
        seconds = time.monotonic() - self.started
        controller = [cpu_seconds(pid) - before for pid, before in zip(
            self.controllers, self.controller_cpu, strict=True)]  # fmt: skip
        client = sum(cpu_seconds(pid) for pid in self.clients) - self.client_cpu
        database = cpu_seconds(self.database) - self.database_cpu if self.database else 0.0
        busy = (busy_jiffies() - self.busy) / os.sysconf("SC_CLK_TCK")
        return {
            "seconds": seconds,
            "controller_cpu": controller,
            "client_cpu": client,
            "database": database / seconds if self.database else None,
            "others": max(0.0, busy - sum(controller) - client - database) / seconds,
        }


class Profiler:
    """py-spy recording a controller until stopped (wall-clock samples of busy threads, so a
    thread blocked in fsync counts; a thread waiting in epoll does not)."""

    RATE = 200

    def __init__(self, pid: int, output: Path) -> None:
        self.output = output
        binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        self.process = subprocess.Popen(
            [binary, "record", "--pid", str(pid), "--rate", str(self.RATE), "--nonblocking",
             "--format", "raw", "--output", str(output)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        self.started = time.monotonic()

    def stop(self) -> Profile | None:
        """Where the reactor thread's busy time went, and how busy it and the audit thread were."""
        seconds = time.monotonic() - self.started
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            terminate(self.process)  # type: ignore[arg-type]
        inclusive: collections.Counter[str] = collections.Counter()
        own: collections.Counter[str] = collections.Counter()
        reactor = audit = 0
        try:
            lines = self.output.read_text().splitlines()
        except OSError:
            return None
        for line in lines:
            stack, _, count_text = line.rpartition(" ")
            count = int(count_text)
            frames = [_short(frame) for frame in stack.split(";")]
            if "base.py:ReactorBase.mainLoop" not in frames:
                if "audit.py:AuditLog._write_lines" in frames:
                    audit += count
                continue
            reactor += count
            for frame in set(frames):
                inclusive[frame] += count
            own[frames[-1]] += count
        if not reactor:
            return None
        rows = [
            (frame, inclusive[frame] / reactor, own[frame] / reactor)
            for frame, _ in inclusive.most_common()
        ]
        expected = seconds * self.RATE
        return Profile(rows, reactor / expected, audit / expected)


@dataclass
class Profile:
    #: (frame, inclusive share, own share) of the reactor thread's busy samples.
    rows: list[tuple[str, float, float]]
    #: The share of the wall-clock time the reactor thread was busy (running or blocked).
    reactor_busy: float
    #: The same for the thread writing and fsyncing the audit log.
    audit_busy: float


def _plumbing(frame: str) -> bool:
    """The reactor's and the TLS/HTTP layers' frames that every request passes through."""
    return frame.split(":")[0] in (
        "epollreactor.py", "log.py", "context.py", "posixbase.py", "tcp.py", "tls.py",
        "policies.py", "runpy", "<frozen runpy>", "threading.py", "base.py", "cli.py",
        "runner.py", "_threadworker.py", "_team.py", "threadpool.py",
    )  # fmt: skip


def _short(frame: str) -> str:
    """``function (path/to/module.py:LINE)`` as ``module.py:function``."""
    name, _, where = frame.partition(" (")
    module = where.split(":")[0].rsplit("/", 1)[-1]
    return f"{module}:{name}" if module else name


# -- the run --------------------------------------------------------------------------------


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--nodes-worker":
        return nodes_worker()
    if len(sys.argv) > 1 and sys.argv[1] == "--issuer-worker":
        return issuer_worker()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--instances-per-node", type=int, default=100)
    parser.add_argument(
        "--concurrency", type=int, default=8, help="credential fetches at once per node (8)"
    )
    parser.add_argument(
        "--client-processes", type=int, default=1, help="processes the nodes are spread over"
    )
    parser.add_argument("--wait", type=int, default=60, help="the long poll's wait= in seconds")
    parser.add_argument("--wakeups", type=int, default=300)
    parser.add_argument("--issue-seconds", type=float, default=10.0)
    parser.add_argument(
        "--steady-seconds",
        type=float,
        help="the idle steady state's length (default: --wait, so each poll times out once)",
    )
    parser.add_argument("--cold-timeout", type=float, default=300.0)
    parser.add_argument("--controllers", type=int, default=1)
    parser.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument(
        "--dsn",
        help="libpq connection string (with --store postgresql; default: a throwaway cluster)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy the first controller in each phase; its raw samples are kept in DIR",
    )
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args()
    for flag, value, low in (
        ("--nodes", args.nodes, 1),
        ("--instances-per-node", args.instances_per_node, 1),
        ("--concurrency", args.concurrency, 1),
        ("--client-processes", args.client_processes, 1),
        ("--wait", args.wait, 1),
        ("--wakeups", args.wakeups, 0),
        ("--controllers", args.controllers, 1),
    ):
        if value < low:
            parser.error(f"argument {flag}: must be at least {low} (got {value})")
    if args.store == "sqlite" and args.dsn:
        parser.error("argument --dsn: only with --store postgresql")
    if args.store == "sqlite" and args.controllers > 1:
        parser.error("argument --controllers: several controllers need --store postgresql")
    if args.steady_seconds is None:
        args.steady_seconds = float(args.wait)
    if args.nodes < 4:
        parser.error("argument --nodes: at least 4 (the issuance runs use 4 nodes' clients)")

    work = Path(tempfile.mkdtemp(prefix="rolecall-fleet-"))
    controllers: list[Controller] = []
    clients: list[ClientProcess] = []
    profilers: list[Profiler] = []

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        with contextlib.ExitStack() as stack:
            if args.store == "postgresql" and not args.dsn:
                args.dsn = throwaway_database(stack)
            return run(args, work, controllers, clients, profilers)
    except BenchError as error:
        print(f"fleet: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fleet: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for profiler in profilers:
            if profiler.process.poll() is None:
                terminate(profiler.process)  # type: ignore[arg-type]
        for client in clients:
            terminate(client.process)  # type: ignore[arg-type]
        for controller in controllers:
            terminate(controller.process)
        shutil.rmtree(work, ignore_errors=True)


def run(
    args: argparse.Namespace,
    work: Path,
    controllers: list[Controller],
    clients: list[ClientProcess],
    profilers: list[Profiler],
) -> int:
    total = args.nodes * args.instances_per_node
    randomness = random.Random(args.seed)
    text = config_text(args, total)
    for index in range(args.controllers):
        controllers.append(start_controller(work, index, text, first=index == 0))
    root_keys(controllers)
    first = controllers[0]
    iam, ec2s = first.client("iam"), [controller.client("ec2") for controller in controllers]
    iam.create_role(RoleName=ROLE, AssumeRolePolicyDocument=TRUST)
    iam.create_instance_profile(InstanceProfileName=ROLE)
    iam.add_role_to_instance_profile(InstanceProfileName=ROLE, RoleName=ROLE)

    # Enrolled as `rolecall-controller enroll-node NAME --capacity N --out DIR` does it.
    setup_started = time.monotonic()
    names = [f"fleet-{index:03d}" for index in range(args.nodes)]
    for name in names:
        controller_cli(
            first.config, first.state_dir, "enroll-node", name,
            "--capacity", str(args.instances_per_node + 10), "--out", str(work / "nodes" / name),
        )  # fmt: skip
    enrolled = time.monotonic() - setup_started
    instances: dict[str, list[str]] = {}
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
        profilers.append(Profiler(first.process.pid, args.profile / "launch.txt"))
        time.sleep(1.0)  # py-spy attaches
    launch_started = time.monotonic()
    for name in names:
        left = args.instances_per_node
        while left:
            count = min(left, MAX_LAUNCH)
            answer = ec2s[0].run_instances(
                ImageId="emi-fleet", MinCount=count, MaxCount=count,
                IamInstanceProfile={"Name": ROLE}, Placement={"HostId": name},
            )  # fmt: skip
            instances.setdefault(name, []).extend(
                each["InstanceId"] for each in answer["Instances"]
            )
            left -= count
    launched = time.monotonic() - launch_started
    launch_profile = profilers[-1].stop() if args.profile else None
    print(
        f"setup: {args.nodes} nodes enrolled in {enrolled:.1f} s,"
        f" {total} instances launched in {launched:.1f} s",
        flush=True,
    )

    # The nodes: node i polls controller i mod C, spread over the client processes.
    events = Events()
    shares: list[list[Any]] = [[] for _ in range(args.client_processes)]
    home: dict[str, int] = {}
    for index, name in enumerate(names):
        home[name] = index % len(controllers)
        shares[index % args.client_processes].append(
            [name, str(work / "nodes" / name), [controllers[home[name]].node_api_url]]
        )
    for share in shares:
        clients.append(
            spawn(
                "--nodes-worker",
                {"nodes": share, "concurrency": args.concurrency, "wait": args.wait},
                events,
            )
        )
    if not events.wait(lambda: sum(e["t"] == "ready" for e in events.other) == len(clients), 60):
        raise BenchError("the client processes did not start")
    controller_pids = [controller.process.pid for controller in controllers]
    client_pids = [client.process.pid for client in clients]

    # Cold start: every node at once, until every instance holds credentials.
    if args.profile:
        profilers.append(Profiler(first.process.pid, args.profile / "cold.txt"))
        time.sleep(1.0)  # py-spy attaches
    window = Window(controller_pids, client_pids)
    started = monotonic()
    for client in clients:
        assert client.process.stdin is not None
        client.process.stdin.write("go\n")
        client.process.stdin.flush()
    if not events.wait(lambda: len(events.done) == args.nodes, args.cold_timeout):
        raise BenchError(
            f"cold start: {len(events.done)} of {args.nodes} nodes held all their credentials"
            f" after {args.cold_timeout:.0f} s; errors: {events.errors[:5]}"
        )
    cold = window.close()
    cold_seconds = max(events.done.values()) - started
    first_answers = max(events.first.values()) - started
    cold_profile = profilers[-1].stop() if args.profile else None
    cold_errors = len(events.errors)
    memory_cold = [controller.memory() for controller in controllers]

    # Steady state: every node holds a long poll, nothing changes.
    steady: dict[str, Any] | None = None
    if args.steady_seconds > 0:
        time.sleep(2.0)
        window = Window(controller_pids, client_pids)
        time.sleep(args.steady_seconds)
        steady = window.close()
    memory_steady = [controller.memory() for controller in controllers]

    # Wake-up: a change through the API, to the changed node's poll answering.
    if args.profile and args.wakeups:
        profilers.append(Profiler(first.process.pid, args.profile / "wakeup.txt"))
        time.sleep(1.0)
    latencies: dict[str, list[float]] = collections.defaultdict(list)
    from_call: dict[str, list[float]] = collections.defaultdict(list)
    tokens: dict[str, str] = {}
    launched_on: tuple[str, str] | None = None
    for round_number in range(args.wakeups):
        kind = ("modify", "run", "modify", "terminate")[round_number % 4]
        if kind == "terminate" and launched_on is not None:
            node, instance_id = launched_on
        else:
            kind = "modify" if kind == "terminate" else kind
            node = randomness.choice(names)
            instance_id = randomness.choice(instances[node])
        # Through another controller than the node's, when there are several.
        via = ec2s[(home[node] + 1) % len(ec2s)]
        with events.condition:
            before = events.polls[node][-1][0] if events.polls[node] else -1
        called = monotonic()
        if kind == "modify":
            tokens[instance_id] = (
                "optional" if tokens.get(instance_id) == "required" else "required"
            )
            via.modify_instance_metadata_options(
                InstanceId=instance_id, HttpTokens=tokens[instance_id]
            )
        elif kind == "run":
            answer = via.run_instances(
                ImageId="emi-fleet", MinCount=1, MaxCount=1,
                IamInstanceProfile={"Name": ROLE}, Placement={"HostId": node},
            )  # fmt: skip
            launched_on = (node, answer["Instances"][0]["InstanceId"])
        else:
            via.terminate_instances(InstanceIds=[instance_id])
            launched_on = None
        returned = monotonic()

        def woke(node: str = node, before: int = before) -> bool:
            return any(revision > before for revision, _ in events.polls[node])

        if not events.wait(woke, 30):
            raise BenchError(f"wake-up: node {node}'s poll did not answer within 30 s ({kind})")
        with events.condition:
            answered = next(at for revision, at in events.polls[node] if revision > before)
        latencies[kind].append((answered - returned) * 1000)
        from_call[kind].append((answered - called) * 1000)
        time.sleep(randomness.uniform(0.005, 0.02))  # not in step with the polls' re-arming

    wakeup_profile = profilers[-1].stop() if args.profile and args.wakeups else None

    # Issuance: 1, then 4 client processes, each one node's keep-alive connection.
    issuance = []
    for processes in (1, 4) if args.issue_seconds > 0 else ():
        issuers: list[ClientProcess] = []
        issuer_events = Events()
        for index in range(processes):
            name = names[index]
            issuers.append(
                spawn(
                    "--issuer-worker",
                    {
                        "directory": str(work / "nodes" / name),
                        "url": controllers[home[name]].node_api_url,
                        "instances": instances[name],
                        "seconds": args.issue_seconds,
                    },
                    issuer_events,
                )
            )
        clients.extend(issuers)
        ready = issuer_events.wait(
            lambda issuers=issuers, issuer_events=issuer_events: (
                sum(e["t"] == "ready" for e in issuer_events.other) == len(issuers)
            ),
            60,
        )
        if not ready:
            raise BenchError(f"issuers did not start: {issuer_events.errors[:3]}")
        if args.profile and processes == 4:
            profilers.append(Profiler(first.process.pid, args.profile / "issue.txt"))
            time.sleep(1.0)
        window = Window(controller_pids, [issuer.process.pid for issuer in issuers] + client_pids)
        for issuer in issuers:
            assert issuer.process.stdin is not None
            issuer.process.stdin.write("go\n")
            issuer.process.stdin.flush()
        if not issuer_events.wait(
            lambda issuers=issuers, issuer_events=issuer_events: (
                sum(e["t"] == "issued" for e in issuer_events.other) == len(issuers)
            ),
            args.issue_seconds + 60,
        ):
            raise BenchError(f"issuers did not finish: {issuer_events.errors[:3]}")
        measured = window.close()
        results = [e for e in issuer_events.other if e["t"] == "issued"]
        measured["issued"] = sum(e["issued"] for e in results)
        measured["errors"] = sum(e["errors"] for e in results)
        measured["processes"] = processes
        measured["memory"] = [controller.memory() for controller in controllers]
        issuance.append(measured)
        for issuer in issuers:
            issuer.process.wait(timeout=30)
    issue_profile = profilers[-1].stop() if args.profile and issuance else None

    # The nodes stop; the audit log holds a record for every credential handed out.
    for client in clients[: len(shares)]:
        assert client.process.stdin is not None
        client.process.stdin.write("stop\n")
        client.process.stdin.flush()
    events.wait(lambda: sum(e["t"] == "bye" for e in events.other) == len(shares), 30)
    handed_out = sum(e["issued"] for e in events.other if e["t"] == "bye")
    handed_out += sum(each["issued"] for each in issuance) + len(clients) - len(shares)
    # `rolecall-controller audit`: the audit log file (SQLite) or the audit_log table.
    records = controller_cli(first.config, first.state_dir, "audit").splitlines()
    audited = sum('"instance-credentials"' in line for line in records)

    report(
        args, controllers, cold, cold_seconds, first_answers, cold_errors, memory_cold, steady,
        memory_steady, latencies, from_call, issuance, handed_out, audited, len(events.errors),
    )  # fmt: skip
    for title, profile in (
        ("launching the fleet", launch_profile),
        ("cold start", cold_profile),
        ("wake-up rounds", wakeup_profile),
        ("issuance, 4 processes", issue_profile),
    ):
        if profile is not None:
            print(
                f"\nwhere controller 0's reactor thread went ({title}; py-spy): busy"
                f" {profile.reactor_busy:.0%} of the time (the audit log's thread"
                f" {profile.audit_busy:.0%}); shares of the busy time:"
            )
            print(f"  {'inclusive':>9} {'own':>6}  frame")
            shown = [row for row in profile.rows if row[1] < 0.97 and not _plumbing(row[0])]
            for frame, inclusive, own_share in shown[:25]:
                print(f"  {inclusive:9.1%} {own_share:6.1%}  {frame}")
            print("  busiest own time:")
            for frame, inclusive, own_share in sorted(profile.rows, key=lambda row: -row[2])[:12]:
                print(f"  {inclusive:9.1%} {own_share:6.1%}  {frame}")
    if events.errors:
        print("client errors (the first of each kind):")
        for message in dict.fromkeys(error.partition(": ")[2] for error in events.errors):
            print(f"  {message}")
    if audited < handed_out:
        print(f"fleet: {handed_out} credentials handed out but {audited} audit records")
        return 1
    return 0


def _cores(window: dict[str, Any]) -> str:
    return " + ".join(f"{cpu / window['seconds']:.2f}" for cpu in window["controller_cpu"])


def _database(window: dict[str, Any]) -> str:
    """The PostgreSQL server's CPU (all its processes), when the bench started it."""
    return "" if window["database"] is None else f" PostgreSQL {window['database']:.2f},"


def _per(window: dict[str, Any], count: int) -> str:
    return " + ".join(f"{cpu * 1000 / count:.2f}" for cpu in window["controller_cpu"])


def _mib(memory: list[dict[str, int]], key: str) -> str:
    return " + ".join(f"{each.get(key, 0) / 1024:.0f}" for each in memory)


def report(
    args: argparse.Namespace,
    controllers: list[Controller],
    cold: dict[str, Any],
    cold_seconds: float,
    first_answers: float,
    cold_errors: int,
    memory_cold: list[dict[str, int]],
    steady: dict[str, Any] | None,
    memory_steady: list[dict[str, int]],
    latencies: dict[str, list[float]],
    from_call: dict[str, list[float]],
    issuance: list[dict[str, Any]],
    handed_out: int,
    audited: int,
    errors: int,
) -> None:
    total = args.nodes * args.instances_per_node
    print()
    print(
        f"fleet: {args.nodes} nodes x {args.instances_per_node} instances = {total},"
        f" {len(controllers)} controller(s) on {args.store}, {args.client_processes} node client"
        f" process(es), {os.cpu_count()} cores shared by all (and anything else running)"
    )
    print("controller CPU in cores (per controller), client processes' CPU in cores;")
    print("'others': the rest of the machine")
    print()
    print("cold start (every node at once, until every instance holds credentials)")
    print(f"  all {total} instances held credentials after {cold_seconds:6.2f} s"
          f"   (target < 30 s: {'met' if cold_seconds < 30 else 'not met'})")  # fmt: skip
    print(f"  every node's first assignments answer by   {first_answers:6.2f} s")
    print(f"  {total / cold_seconds:,.0f} credentials/s; controller {_cores(cold)} cores,"
          f" clients {cold['client_cpu'] / cold['seconds']:.2f},{_database(cold)}"
          f" others {cold['others']:.2f}; errors {cold_errors}")  # fmt: skip
    cpu_seconds = " + ".join(f"{cpu:.1f}" for cpu in cold["controller_cpu"])
    print(f"  controller CPU time {cpu_seconds} s: {_per(cold, total)} ms per instance"
          f" (its first answer's share and its credentials)")  # fmt: skip
    print(f"  controller RSS after it: {_mib(memory_cold, 'VmRSS')} MiB"
          f" (peak {_mib(memory_cold, 'VmHWM')} MiB)")  # fmt: skip
    print()
    if steady is not None:
        print(f"steady state, {args.nodes} long polls held, {steady['seconds']:.0f} s")
        print(f"  controller {_cores(steady)} cores, RSS {_mib(memory_steady, 'VmRSS')} MiB;"
              f" clients {steady['client_cpu'] / steady['seconds']:.2f},{_database(steady)}"
              f" others {steady['others']:.2f}")  # fmt: skip
        print()
    every = [value for values in latencies.values() for value in values]
    if every:
        every_call = [value for values in from_call.values() for value in values]
        print("long-poll wake-up: the changed node's poll answering, in ms after the API call")
        print("returned (boto3 has parsed the answer; negative: the node heard first), and after")
        print("it was made (the API call's own time included)")
        print(f"  {'change':10} {'rounds':>6} {'p50':>8} {'p99':>8} {'max':>8}"
              f"   {'call p50':>8} {'call p99':>8}")  # fmt: skip
        rows = [(kind, values, from_call[kind]) for kind, values in sorted(latencies.items())]
        for kind, values, called in [*rows, ("all", every, every_call)]:
            print(
                f"  {kind:10} {len(values):6d} {statistics.median(values):8.2f}"
                f" {percentile(values, 0.99):8.2f} {max(values):8.2f}"
                f"   {statistics.median(called):8.2f} {percentile(called, 0.99):8.2f}"
            )
        verdict = "met" if percentile(every, 0.99) < 100 else "not met"
        print(f"  (target p99 < 100 ms: {verdict})")
        print()
    if issuance:
        print(
            "instance credentials issued per second (each audited durably before it is handed out)"
        )
        print(f"  {'processes':>9} {'issued/s':>9} {'errors':>6} {'controller':>11} {'clients':>8}"
              f" {'others':>6} {'RSS MiB':>8} {'CPU ms/issue':>12}")  # fmt: skip
        for each in issuance:
            clients = each["client_cpu"] / each["seconds"]
            each["per"] = _per(each, max(1, each["issued"]))
            print(f"  {each['processes']:9d} {each['issued'] / each['seconds']:9.0f}"
                  f" {each['errors']:6d} {_cores(each):>11} {clients:8.2f}"
                  f" {each['others']:6.2f} {_mib(each['memory'], 'VmRSS'):>8}"
                  f" {each['per']:>10}{_database(each).rstrip(',')}")  # fmt: skip
    print()
    print(
        f"credentials handed out in all: {handed_out:,}; {audited:,} audit records;"
        f" client errors {errors}"
    )


if __name__ == "__main__":
    sys.exit(main())
