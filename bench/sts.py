"""STS AssumeRole capacity of RoleCall next to moto's server, and the policy engine's speed.

A benchmark, never a test: it prints a table and judges the figures against the targets of the
issue (RoleCall's AssumeRole at least 10x moto's on one core; at least 50,000 evaluations/s of a
20-statement policy). Both servers run in the same run, each pinned to core 0, on loopback only;
wrk (pinned to another core when there is one) replays one signed request for a bounded time.
Every process and temporary directory it starts is removed on exit, failure and Ctrl-C.

    .venv/bin/python bench/sts.py [--duration 10] [--connections 16]

With ``--stores`` it measures RoleCall against itself instead: one controller on SQLite next to
one on PostgreSQL (issue 14: at least 0.8x), the PostgreSQL a throwaway cluster started with
tests/pg.py (or the database ``--dsn`` names), pinned to the controllers' core.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from urllib.parse import quote, urlsplit

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import BotoCoreError, ClientError
from processes import BenchError, cpu_seconds, log_tail, started  # bench/processes.py

from controller.policy.document import PolicyKind, parse_policy
from controller.policy.evaluate import RequestContext, evaluate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.pg, for --stores

BIN = Path(sys.executable).parent
ACCOUNT_ID = "123456789012"
REGION = "us-east-1"
ROLE_NAME = "bench"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT_ID}:role/{ROLE_NAME}"
LISTENING = re.compile(r"public API listening on (http://\S+)")
# The servers (and the evaluation loop) share one core; wrk gets another when there is one.
_CORES = sorted(os.sched_getaffinity(0))
SERVER_CORE = str(_CORES[0])
CLIENT_CORE = str(_CORES[1]) if len(_CORES) > 1 else None
START_TIMEOUT = 60.0

ASSUME_RATIO_TARGET = 10.0
STORE_RATIO_TARGET = 0.8
EVALUATIONS_TARGET = 50_000

TRUST_POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT_ID}:root"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
)
ROLE_POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:ListBucket"],
                "Resource": ["arn:aws:s3:::bench-data", "arn:aws:s3:::bench-data/*"],
            }
        ],
    }
)


# -- processes and clean-up ---------------------------------------------------------------------


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    #: CPU seconds of the processes that serve beside it (its PostgreSQL), counted as its own.
    helpers_cpu: Callable[[], float] | None = None


def server_cpu(server: Server) -> float:
    own = cpu_seconds(server.process.pid)
    return own + (server.helpers_cpu() if server.helpers_cpu is not None else 0.0)


def _wait_for(
    server_name: str, process: subprocess.Popen[bytes], log: Path, ready: Callable[[], str]
) -> str:
    """Poll until ``ready()`` gives a URL; fail if the process dies or it takes too long."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        url = ready()
        if url:
            return url
        if process.poll() is not None:
            raise BenchError(f"{server_name} exited with {process.returncode}:\n{log_tail(log)}")
        time.sleep(0.1)
    raise BenchError(f"{server_name} did not start in {START_TIMEOUT:.0f}s:\n{log_tail(log)}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def init_rolecall(state_dir: Path, config: Path | None = None) -> tuple[str, str]:
    """``rolecall-controller init``: the root key of the new account."""
    subprocess.run(
        [
            BIN / "rolecall-controller",
            *(["--config", config] if config is not None else []),
            "--state-dir",
            state_dir,
            "init",
            "--account-id",
            ACCOUNT_ID,
        ],
        capture_output=True,
        timeout=60,
        check=True,
    )
    credentials = configparser.ConfigParser()
    credentials.read(state_dir / "root-credentials")
    profile = credentials["rolecall"]
    return profile["aws_access_key_id"], profile["aws_secret_access_key"]


def rolecall_url(log: Path) -> str:
    match = LISTENING.search(log.read_text(errors="replace"))
    return match.group(1) if match else ""


def moto_url(port: int) -> str:
    """The URL once moto itself answers there (its own API, not just any listener)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/moto-api/data.json")
        response = connection.getresponse()
        response.read()
        return f"http://127.0.0.1:{port}" if response.status == 200 else ""
    except OSError:
        return ""
    finally:
        connection.close()


# -- the signed request -------------------------------------------------------------------------


@dataclass(frozen=True)
class SignedRequest:
    url: str
    body: str
    headers: dict[str, str]


def create_role(url: str, access_key_id: str, secret_access_key: str) -> None:
    """The role ``bench``, trusting the account's root, with one inline policy."""
    iam = boto3.client(
        "iam",
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        config=Config(retries={"max_attempts": 1}),
    )
    role = iam.create_role(RoleName=ROLE_NAME, AssumeRolePolicyDocument=TRUST_POLICY)["Role"]
    if role["Arn"] != ROLE_ARN:
        raise BenchError(f"{url} created {role['Arn']}, expected {ROLE_ARN}")
    iam.put_role_policy(RoleName=ROLE_NAME, PolicyName="bench", PolicyDocument=ROLE_POLICY)


def sign(url: str, action: str, access_key_id: str, secret_access_key: str) -> SignedRequest:
    """One SigV4-signed STS Query request, frozen: wrk sends these very bytes again and again."""
    fields = {"Action": action, "Version": "2011-06-15"}
    if action == "AssumeRole":
        fields.update(RoleArn=ROLE_ARN, RoleSessionName="bench")
    body = "&".join(f"{name}={quote(value, safe='-_.~')}" for name, value in sorted(fields.items()))
    request = AWSRequest(
        method="POST",
        url=url.rstrip("/") + "/",
        data=body,
        headers={
            "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
            "Host": urlsplit(url).netloc,
        },
    )
    SigV4Auth(Credentials(access_key_id, secret_access_key), "sts", REGION).add_auth(request)
    headers = {name: str(value) for name, value in request.headers.items()}
    return SignedRequest(url=request.url, body=body, headers=headers)


def send_once(request: SignedRequest) -> tuple[int, bytes]:
    parts = urlsplit(request.url)
    connection = http.client.HTTPConnection(parts.netloc, timeout=30)
    try:
        connection.request("POST", parts.path, body=request.body, headers=request.headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def check_replay(name: str, request: SignedRequest, action: str) -> None:
    """The frozen request works, and works again: a replayed figure is a real one."""
    for attempt in ("first", "replayed"):
        status, body = send_once(request)
        if status != 200 or f"<{action}Result>".encode() not in body:
            raise BenchError(
                f"{name}: the {attempt} {action} answered {status}:\n"
                f"{body.decode(errors='replace')[:2000]}"
            )


# -- wrk ----------------------------------------------------------------------------------------


def _lua_string(text: str) -> str:
    escaped = []
    for character in text:
        if character in '"\\':
            escaped.append("\\" + character)
        elif " " <= character <= "~":
            escaped.append(character)
        else:
            escaped.extend(f"\\{byte}" for byte in character.encode())
    return '"' + "".join(escaped) + '"'


NON_2XX_LINE = re.compile(r"^bench non-2xx: (\d+)$", re.MULTILINE)


def wrk_script(request: SignedRequest) -> str:
    """A Lua script for wrk: the frozen request, and an exact count of non-2xx answers."""
    lines = ['wrk.method = "POST"', f"wrk.body = {_lua_string(request.body)}"]
    lines += [
        f"wrk.headers[{_lua_string(name)}] = {_lua_string(value)}"
        for name, value in request.headers.items()
    ]
    lines.append(
        """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) non2xx = 0 end
function response(status, headers, body)
  if status < 200 or status > 299 then non2xx = non2xx + 1 end
end
function done(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do total = total + thread:get("non2xx") end
  io.write(string.format("bench non-2xx: %d\\n", total))
end
"""
    )
    return "\n".join(lines)


@dataclass(frozen=True)
class WrkResult:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    requests: int
    server_cores: float = 0.0  # the server's CPU time over the run, in cores
    others_cores: float = 0.0  # what other processes took of the server's core meanwhile


def core_busy_seconds(core: str) -> float:
    """CPU time one core spent on anything but idling, since boot (Linux /proc/stat)."""
    for line in Path("/proc/stat").read_text().splitlines():
        name, *ticks = line.split()
        if name == f"cpu{core}":
            values = [int(tick) for tick in ticks]
            return (sum(values[:8]) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")
    return 0.0


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _milliseconds(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if match is None:
        raise BenchError(f"wrk printed a latency I cannot read: {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str) -> WrkResult:
    """Requests/s, p50 and p99 from ``wrk --latency``; errors from its summary and our script."""

    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, output, re.MULTILINE)
        if match is None:
            raise BenchError(f"wrk output lacks {pattern!r}:\n{output}")
        return match

    socket_errors = 0
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if errors:
        socket_errors = sum(int(count) for count in errors.groups())
    non_2xx = int(find(NON_2XX_LINE.pattern).group(1))
    # wrk's own count (status >= 400), should our script ever miss one.
    wrk_errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if wrk_errors:
        non_2xx = max(non_2xx, int(wrk_errors.group(1)))
    return WrkResult(
        requests_per_second=float(find(r"^Requests/sec:\s+([\d.]+)").group(1)),
        p50_ms=_milliseconds(find(r"^\s+50%\s+(\S+)").group(1)),
        p99_ms=_milliseconds(find(r"^\s+99%\s+(\S+)").group(1)),
        non_2xx=non_2xx,
        socket_errors=socket_errors,
        requests=int(find(r"^\s+(\d+) requests in").group(1)),
    )


def run_wrk(script: Path, url: str, connections: int, seconds: int) -> WrkResult:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script)]
    command.append(url)
    if CLIENT_CORE is not None:
        command = ["taskset", "-c", CLIENT_CORE, *command]  # the client off the servers' core
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    if result.returncode != 0:
        raise BenchError(f"wrk failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return parse_wrk(result.stdout)


# -- policy evaluation --------------------------------------------------------------------------

_ACCOUNT_ARN = f"arn:aws:iam::{ACCOUNT_ID}"
_REGIONAL_SERVICES = [
    f"{service}:*"
    for service in "s3 ec2 dynamodb sqs sns kms logs cloudwatch ssm secretsmanager lambda".split()
] + ["sts:*", "iam:*"]


def _statement(effect: str, actions: object, resources: object, **extra: object) -> object:
    statement: dict[str, object] = {"Effect": effect}
    statement["NotAction" if extra.pop("not_action", False) else "Action"] = actions
    statement["NotResource" if extra.pop("not_resource", False) else "Resource"] = resources
    if extra.get("condition"):
        statement["Condition"] = extra["condition"]
    return statement


POLICY_20 = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            _statement(
                "Allow",
                ["s3:GetObject", "s3:ListBucket"],
                ["arn:aws:s3:::bench-data", "arn:aws:s3:::bench-data/*"],
                condition={"StringEquals": {"aws:PrincipalTag/team": "storage"}},
            ),
            _statement(
                "Allow", "s3:PutObject", "arn:aws:s3:::bench-data/uploads/${aws:username}/*"
            ),
            _statement(
                "Deny",
                "s3:DeleteObject",
                "arn:aws:s3:::bench-data/*",
                condition={"BoolIfExists": {"aws:MultiFactorAuthPresent": "false"}},
            ),
            _statement("Allow", "ec2:Describe*", "*"),
            _statement(
                "Allow",
                ["ec2:StartInstances", "ec2:StopInstances"],
                f"arn:aws:ec2:{REGION}:{ACCOUNT_ID}:instance/*",
                condition={"StringEquals": {"ec2:ResourceTag/env": ["dev", "test"]}},
            ),
            _statement(
                "Deny",
                "ec2:TerminateInstances",
                "*",
                condition={"NotIpAddress": {"aws:SourceIp": ["10.0.0.0/8", "127.0.0.0/8"]}},
            ),
            _statement(
                "Allow",
                ["dynamodb:GetItem", "dynamodb:Query", "dynamodb:PutItem"],
                f"arn:aws:dynamodb:{REGION}:{ACCOUNT_ID}:table/bench-*",
                condition={"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["${aws:userid}*"]}},
            ),
            _statement(
                "Allow",
                ["sqs:SendMessage", "sqs:ReceiveMessage"],
                f"arn:aws:sqs:*:{ACCOUNT_ID}:bench-queue-?",
            ),
            _statement(
                "Allow",
                "sns:Publish",
                f"arn:aws:sns:{REGION}:{ACCOUNT_ID}:alerts",
                condition={"DateLessThan": {"aws:CurrentTime": "2099-01-01T00:00:00Z"}},
            ),
            _statement(
                "Allow",
                "kms:Decrypt",
                f"arn:aws:kms:{REGION}:{ACCOUNT_ID}:key/*",
                condition={"StringEquals": {"kms:ViaService": f"s3.{REGION}.amazonaws.com"}},
            ),
            _statement(
                "Allow",
                ["logs:CreateLogStream", "logs:PutLogEvents"],
                f"arn:aws:logs:{REGION}:{ACCOUNT_ID}:log-group:/bench/*",
            ),
            _statement(
                "Deny",
                _REGIONAL_SERVICES,
                "*",
                not_action=True,
                condition={"StringNotEquals": {"aws:RequestedRegion": REGION}},
            ),
            _statement(
                "Allow",
                "ssm:GetParameter*",
                f"arn:aws:ssm:{REGION}:{ACCOUNT_ID}:parameter/bench/${{aws:PrincipalTag/team}}/*",
            ),
            _statement(
                "Allow",
                "secretsmanager:GetSecretValue",
                f"arn:aws:secretsmanager:{REGION}:{ACCOUNT_ID}:secret:bench/*",
                condition={"NumericLessThanEqualsIfExists": {"aws:MultiFactorAuthAge": "3600"}},
            ),
            _statement(
                "Allow",
                "lambda:InvokeFunction",
                f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:bench-*",
                condition={"ArnLike": {"aws:PrincipalArn": f"{_ACCOUNT_ARN}:user/*"}},
            ),
            _statement(
                "Allow",
                "cloudwatch:PutMetricData",
                "*",
                condition={"StringLike": {"cloudwatch:namespace": "Bench/*"}},
            ),
            _statement("Allow", ["iam:Get*", "iam:List*"], f"{_ACCOUNT_ARN}:role/bench*"),
            _statement("Deny", "iam:*", f"{_ACCOUNT_ARN}:role/bench*", not_resource=True),
            _statement(
                "Allow",
                "sts:AssumeRole",
                f"{_ACCOUNT_ARN}:role/bench-*",
                condition={"StringEqualsIgnoreCase": {"aws:PrincipalTag/team": "STORAGE"}},
            ),
            _statement(
                "Allow",
                "s3:*",
                "arn:aws:s3:::bench-scratch-*",
                condition={
                    "IpAddress": {"aws:SourceIp": "127.0.0.0/8"},
                    "Bool": {"aws:SecureTransport": "true"},
                },
            ),
        ],
    }
)

_USER_ARN = f"{_ACCOUNT_ARN}:user/alice"
#: The keys ``controller.authorize.context_keys`` gives a user's request.
_BASE_KEYS: dict[str, tuple[str, ...]] = {
    "aws:CurrentTime": ("2025-06-01T12:00:00Z",),
    "aws:EpochTime": ("1748779200",),
    "aws:SourceIp": ("127.0.0.1",),
    "aws:SecureTransport": ("true",),
    "aws:PrincipalArn": (_USER_ARN,),
    "aws:PrincipalAccount": (ACCOUNT_ID,),
    "aws:PrincipalType": ("User",),
    "aws:userid": ("AIDABENCHALICE",),
    "aws:RequestedRegion": (REGION,),
    "aws:username": ("alice",),
    "aws:PrincipalTag/team": ("storage",),
}

#: (action, resource, extra keys, the decision expected): the mix every run cycles through.
REQUESTS: tuple[tuple[str, str, dict[str, tuple[str, ...]], str], ...] = (
    ("s3:GetObject", "arn:aws:s3:::bench-data/report.csv", {}, "Allow"),
    ("s3:PutObject", "arn:aws:s3:::bench-data/uploads/alice/a.txt", {}, "Allow"),
    ("s3:PutObject", "arn:aws:s3:::bench-data/uploads/bob/a.txt", {}, "ImplicitDeny"),
    ("s3:DeleteObject", "arn:aws:s3:::bench-data/report.csv", {}, "Deny"),
    ("ec2:DescribeInstances", "*", {}, "Allow"),
    (
        "ec2:StopInstances",
        f"arn:aws:ec2:{REGION}:{ACCOUNT_ID}:instance/i-0123456789abcdef0",
        {"ec2:ResourceTag/env": ("prod",)},
        "ImplicitDeny",
    ),
    (
        "ec2:TerminateInstances",
        f"arn:aws:ec2:{REGION}:{ACCOUNT_ID}:instance/i-0123456789abcdef0",
        {"aws:SourceIp": ("192.0.2.10",)},
        "Deny",
    ),
    (
        "dynamodb:Query",
        f"arn:aws:dynamodb:{REGION}:{ACCOUNT_ID}:table/bench-users",
        {"dynamodb:LeadingKeys": ("AIDABENCHALICE#1", "AIDABENCHALICE#2")},
        "Allow",
    ),
    ("sqs:SendMessage", f"arn:aws:sqs:eu-west-1:{ACCOUNT_ID}:bench-queue-1", {}, "Allow"),
    ("sns:Publish", f"arn:aws:sns:{REGION}:{ACCOUNT_ID}:alerts", {}, "Allow"),
    (
        "kms:Decrypt",
        f"arn:aws:kms:{REGION}:{ACCOUNT_ID}:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        {"kms:ViaService": (f"s3.{REGION}.amazonaws.com",)},
        "Allow",
    ),
    (
        "ssm:GetParameter",
        f"arn:aws:ssm:{REGION}:{ACCOUNT_ID}:parameter/bench/storage/db-url",
        {},
        "Allow",
    ),
    ("iam:DeleteRole", f"{_ACCOUNT_ARN}:role/admin", {}, "Deny"),
    ("rds:DescribeDBInstances", "*", {"aws:RequestedRegion": ("eu-west-1",)}, "Deny"),
    ("s3:PutObject", "arn:aws:s3:::bench-scratch-7/tmp/file", {}, "Allow"),
    (
        "lambda:InvokeFunction",
        f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:bench-resize",
        {},
        "Allow",
    ),
)


def _request_mix() -> list[tuple[str, str, dict[str, tuple[str, ...]], str]]:
    return [
        (action, resource, _BASE_KEYS | extra, want) for action, resource, extra, want in REQUESTS
    ]


def check_policy_mix() -> Counter[str]:
    """Each request of the mix gets the decision it is meant to: the loop measures real work."""
    document = parse_policy(POLICY_20, PolicyKind.IDENTITY)
    if len(document.statements) != 20:
        raise BenchError(f"the policy has {len(document.statements)} statements, not 20")
    effects: Counter[str] = Counter()
    for action, resource, keys, want in _request_mix():
        context = RequestContext(action, resource, _USER_ARN, ACCOUNT_ID, dict(keys))
        got = evaluate([("p", document)], context).effect
        if got != want:
            raise BenchError(f"{action} on {resource}: the engine said {got}, expected {want}")
        effects[got] += 1
    return effects


def evaluations_per_second(seconds: float) -> tuple[float, float]:
    """Evaluate the mix in a loop for ``seconds``; a fresh RequestContext (and key dict) per call,
    as the controller builds one per request; the document is parsed once, as the controller's
    cache of stored policies does. Also the share of the time this process had the CPU."""
    document = parse_policy(POLICY_20, PolicyKind.IDENTITY)
    policies = [("p", document)]
    mix = _request_mix()
    count = 0
    clock = time.perf_counter
    start, cpu_start = clock(), time.process_time()
    deadline = start + seconds
    while True:
        for action, resource, keys, _want in mix:
            evaluate(policies, RequestContext(action, resource, _USER_ARN, ACCOUNT_ID, dict(keys)))
        count += len(mix)
        now = clock()
        if now >= deadline:
            return count / (now - start), (time.process_time() - cpu_start) / (now - start)


def pin_to_server_core() -> None:
    """The evaluation loop runs on one core too, like the servers."""
    os.sched_setaffinity(0, {int(SERVER_CORE)})


# -- the run ------------------------------------------------------------------------------------


def _stop_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # so every finally runs, as on Ctrl-C


def rolecall_command(state_dir: Path, config: Path | None = None) -> list[str]:
    return [
        str(BIN / "rolecall-controller"),
        *(["--config", str(config)] if config is not None else []),
        "--state-dir",
        str(state_dir),
        "serve",
        "--port",
        "0",
        # Its other listeners on free ports too, so a controller already running cannot clash.
        "--node-api-port",
        "0",
        "--metrics-port",
        "0",
    ]


def cluster_pids(data: Path) -> list[int]:
    """The postmaster of the cluster in `data` and its processes (backends included)."""
    postmaster = int((data / "postmaster.pid").read_text().split()[0])
    pids = [postmaster]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == postmaster:
            pids.append(int(stat.parent.name))
    return pids


def pin_cluster(data: Path, core: str) -> None:
    """The cluster's processes on `core` (backends forked later inherit it)."""
    for pid in cluster_pids(data):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(pid, {int(core)})


def cluster_cpu(data: Path) -> Callable[[], float]:
    """CPU seconds of the cluster: its postmaster and every process under it."""
    postmaster = int((data / "postmaster.pid").read_text().split()[0])
    return lambda: cpu_seconds(postmaster)


def measure_stores(arguments: argparse.Namespace, work: Path) -> dict[str, WrkResult]:
    """RoleCall on SQLite next to RoleCall on PostgreSQL, taking turns as in measure_servers."""
    with ExitStack() as stack:
        dsn = arguments.dsn
        helpers: Callable[[], float] | None = None
        if dsn is None:
            from tests.pg import running_cluster

            cluster = stack.enter_context(running_cluster())
            database_core = CLIENT_CORE if arguments.database_core == "client" else None
            pin_cluster(cluster.primary.data, database_core or SERVER_CORE)
            helpers = cluster_cpu(cluster.primary.data)
            dsn = cluster.dsn(cluster.create_database())
        config = work / "postgresql.toml"
        config.write_text(f'[store]\nbackend = "postgresql"\ndsn = "{dsn}"\n')
        servers: list[Server] = []
        keys: dict[str, tuple[str, str]] = {}
        for name, chosen in (("sqlite", None), ("postgresql", config)):
            state_dir = work / name
            keys[name] = init_rolecall(state_dir, chosen)
            log = work / f"{name}.log"
            process = stack.enter_context(
                started(rolecall_command(state_dir, chosen), log, SERVER_CORE)
            )
            url = _wait_for(name, process, log, lambda log=log: rolecall_url(log))
            servers.append(
                Server(name, url, process, log, helpers if name == "postgresql" else None)
            )
        return take_turns(arguments, work, servers, keys)


def measure_servers(arguments: argparse.Namespace, work: Path) -> dict[str, WrkResult]:
    state_dir = work / "rolecall"
    access_key_id, secret_access_key = init_rolecall(state_dir)
    rolecall_log, moto_log = work / "rolecall.log", work / "moto.log"
    with ExitStack() as stack:
        rolecall = stack.enter_context(
            started(rolecall_command(state_dir), rolecall_log, SERVER_CORE)
        )
        url = _wait_for("rolecall", rolecall, rolecall_log, lambda: rolecall_url(rolecall_log))
        servers = [Server("rolecall", url, rolecall, rolecall_log)]
        # moto needs a port number: chosen once RoleCall holds its own, so they cannot collide.
        moto_port = free_port()
        moto_command = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(moto_port)]
        moto = stack.enter_context(started(moto_command, moto_log, SERVER_CORE))
        url = _wait_for("moto", moto, moto_log, lambda: moto_url(moto_port))
        servers.append(Server("moto", url, moto, moto_log))
        # moto checks no signature; the same key signs both, so only Host differs.
        keys = {server.name: (access_key_id, secret_access_key) for server in servers}
        return take_turns(arguments, work, servers, keys)


def take_turns(
    arguments: argparse.Namespace,
    work: Path,
    servers: list[Server],
    keys: dict[str, tuple[str, str]],
) -> dict[str, WrkResult]:
    """Set each server up, warm it, then measure them in alternating rounds."""
    results: dict[str, WrkResult] = {}
    scripts: dict[str, Path] = {}
    for server in servers:
        access_key_id, secret_access_key = keys[server.name]
        request = sign(server.url, arguments.action, access_key_id, secret_access_key)
        try:
            if arguments.action == "AssumeRole":
                create_role(server.url, access_key_id, secret_access_key)
            check_replay(server.name, request, arguments.action)
        except (BotoCoreError, ClientError, OSError) as error:
            raise BenchError(
                f"{server.name}: setting up failed: {error}\n{log_tail(server.log)}"
            ) from error
        scripts[server.name] = work / f"{server.name}.lua"
        scripts[server.name].write_text(wrk_script(request))
    for server in servers:
        if arguments.warmup > 0:
            print(f"warming up {server.name} ({server.url}) ...", file=sys.stderr, flush=True)
            run_wrk(scripts[server.name], server.url, arguments.connections, arguments.warmup)
    # The servers take turns, in rounds ordered A B, B A, A B, ...: this VM's speed drifts by
    # 10-15 % over tens of seconds, and alternating makes the drift hit both alike, where
    # one long window each would hand it to whichever ran second.
    rounds: dict[str, list[WrkResult]] = {server.name: [] for server in servers}
    seconds = max(1, round(arguments.duration / arguments.rounds))
    for number in range(arguments.rounds):
        for server in servers if number % 2 == 0 else servers[::-1]:
            print(
                f"measuring {server.name}, round {number + 1} of {arguments.rounds} ...",
                file=sys.stderr,
                flush=True,
            )
            cpu_before = server_cpu(server)
            core_before = core_busy_seconds(SERVER_CORE)
            result = run_wrk(scripts[server.name], server.url, arguments.connections, seconds)
            cpu = (server_cpu(server) - cpu_before) / seconds
            core = (core_busy_seconds(SERVER_CORE) - core_before) / seconds
            rounds[server.name].append(
                replace(result, server_cores=cpu, others_cores=max(0.0, core - cpu))
            )
            if server.process.poll() is not None:
                raise BenchError(f"{server.name} died during the run:\n{log_tail(server.log)}")
    for name, results_of in rounds.items():
        results[name] = combined(results_of)
    return results


def combined(rounds: list[WrkResult]) -> WrkResult:
    """One server's rounds as one figure: requests/s over all of them (equal lengths), the
    median p50, the worst p99, every error, the mean CPU."""
    count = len(rounds)
    return WrkResult(
        requests_per_second=sum(each.requests_per_second for each in rounds) / count,
        p50_ms=statistics.median(each.p50_ms for each in rounds),
        p99_ms=max(each.p99_ms for each in rounds),
        non_2xx=sum(each.non_2xx for each in rounds),
        socket_errors=sum(each.socket_errors for each in rounds),
        requests=sum(each.requests for each in rounds),
        server_cores=sum(each.server_cores for each in rounds) / count,
        others_cores=sum(each.others_cores for each in rounds) / count,
    )


DISTURBED = 0.1  # other processes' share of the servers' core beyond which a figure is not judged


def _verdict(met: bool, disturbed: bool) -> str:
    if disturbed:
        return "not judged: the machine was busy, run again when it is quiet"
    return "met" if met else "NOT met"


def report(
    arguments: argparse.Namespace,
    results: dict[str, WrkResult],
    evaluations: list[tuple[float, float]],
    effects: Counter[str],
) -> bool:
    """Print the table; True if every figure is valid (no errors)."""
    print()
    print(
        f"{arguments.action}, one core each, wrk -t1 -c{arguments.connections},"
        f" {arguments.rounds} alternating rounds of"
        f" {max(1, round(arguments.duration / arguments.rounds))} s each,"
        " same signed request replayed"
    )
    valid, per_cpu = print_rows("server", results)
    rolecall, moto = results["rolecall"], results["moto"]
    ratio = rolecall.requests_per_second / moto.requests_per_second
    disturbed = max(rolecall.others_cores, moto.others_cores) > DISTURBED
    verdict = _verdict(ratio >= ASSUME_RATIO_TARGET, disturbed or not valid)
    print(
        f"ratio      RoleCall / moto = {ratio:.1f} x   (target >= {ASSUME_RATIO_TARGET:.0f}x:"
        f" {verdict})"
    )
    print(f"           per CPU second: {per_cpu['rolecall'] / per_cpu['moto']:.1f} x")
    best, share = max(evaluations)
    median = statistics.median(rate for rate, _share in evaluations)
    verdict = _verdict(best >= EVALUATIONS_TARGET, share < 1 - DISTURBED)
    mix = ", ".join(f"{effect} {count}" for effect, count in sorted(effects.items()))
    print(
        f"policy evaluation, 20 statements: {best:,.0f} evaluations/s best of"
        f" {len(evaluations)}, median {median:,.0f} (target >= {EVALUATIONS_TARGET:,}: {verdict})"
    )
    print(f"  request mix of {sum(effects.values())}: {mix}; the best run had the CPU {share:.0%}")
    return valid


def print_rows(column: str, results: dict[str, WrkResult]) -> tuple[bool, dict[str, float]]:
    """One row per server (named in the first `column`); whether every figure is valid (no
    errors), and each server's requests per CPU second."""
    width = 11
    print(
        f"{column:<{width}} {'requests/s':>11} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}"
        f" {'socket errors':>14} {'server CPU':>11} {'requests/CPU s':>15}"
    )
    valid = True
    per_cpu: dict[str, float] = {}
    for name, result in results.items():
        per_cpu[name] = result.requests_per_second / max(result.server_cores, 0.01)
        print(
            f"{name:<{width}} {result.requests_per_second:>11,.0f} {result.p50_ms:>8.2f}"
            f" {result.p99_ms:>8.2f} {result.non_2xx:>8} {result.socket_errors:>14}"
            f" {result.server_cores:>6.2f} core {per_cpu[name]:>15,.0f}"
        )
        if result.non_2xx or result.socket_errors:
            valid = False
            print(f"  {name}: {result.non_2xx + result.socket_errors} errors: NOT a valid figure")
        if result.others_cores > DISTURBED:
            print(
                f"  {name}: other processes took {result.others_cores:.0%} of core {SERVER_CORE}"
                " meanwhile: a disturbed figure"
            )
    return valid, per_cpu


def report_stores(arguments: argparse.Namespace, results: dict[str, WrkResult]) -> bool:
    """The table of RoleCall on SQLite next to RoleCall on PostgreSQL; True if valid."""
    print()
    print(
        f"{arguments.action}, RoleCall on each store, one core for the controller"
        + (
            " (PostgreSQL on the client's core, as on a machine of its own)"
            if arguments.database_core == "client"
            else " (and its PostgreSQL with it)"
        )
        + f", wrk -t1 -c{arguments.connections}, {arguments.rounds}"
        f" alternating rounds of {max(1, round(arguments.duration / arguments.rounds))} s each"
    )
    valid, per_cpu = print_rows("store", results)
    sqlite, postgresql = results["sqlite"], results["postgresql"]
    ratio = postgresql.requests_per_second / sqlite.requests_per_second
    disturbed = max(sqlite.others_cores, postgresql.others_cores) > DISTURBED
    verdict = _verdict(ratio >= STORE_RATIO_TARGET, disturbed or not valid)
    print(
        f"ratio       PostgreSQL / SQLite = {ratio:.2f} x   (target >= {STORE_RATIO_TARGET}x:"
        f" {verdict})"
    )
    print(f"            per CPU second: {per_cpu['postgresql'] / per_cpu['sqlite']:.2f} x")
    return valid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--duration", type=int, default=20, help="seconds of wrk per server, all rounds"
    )
    parser.add_argument("--connections", type=int, default=16, help="wrk connections")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of wrk before measuring")
    parser.add_argument(
        "--rounds",
        type=int,
        default=4,
        help="turns each server takes, alternating (--duration is split among them)",
    )
    parser.add_argument(
        "--action",
        choices=("AssumeRole", "GetCallerIdentity"),
        default="AssumeRole",
        help="the STS action replayed",
    )
    parser.add_argument(
        "--stores",
        action="store_true",
        help="RoleCall on SQLite next to RoleCall on PostgreSQL, instead of next to moto",
    )
    parser.add_argument(
        "--dsn",
        help="with --stores: the PostgreSQL database to use (default: a throwaway cluster)",
    )
    parser.add_argument(
        "--database-core",
        choices=("server", "client"),
        default="server",
        help="with --stores and a throwaway cluster: run it on the controllers' core (their"
        " CPU together, the default) or on the client's (the database on a machine of its own,"
        " as deployed; wrk is light)",
    )
    parser.add_argument("--policy-runs", type=int, default=5)
    parser.add_argument("--policy-seconds", type=float, default=2.0)
    arguments = parser.parse_args(argv)
    if not 1 <= arguments.rounds <= 20:
        parser.error("--rounds must be 1..20")
    if not 1 <= arguments.duration <= 300 or not 1 <= arguments.connections <= 1024:
        parser.error("--duration must be 1..300 seconds and --connections 1..1024")
    if arguments.dsn is not None and not arguments.stores:
        parser.error("--dsn goes with --stores")
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (apt-get install wrk; `make bench` does it)")

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop_on_signal)
    work = Path(tempfile.mkdtemp(prefix="rolecall-bench-"))
    try:
        if arguments.stores:
            return 0 if report_stores(arguments, measure_stores(arguments, work)) else 1
        effects = check_policy_mix()
        results = measure_servers(arguments, work)
        print("measuring policy evaluation ...", file=sys.stderr, flush=True)
        pin_to_server_core()
        evaluations = [
            evaluations_per_second(arguments.policy_seconds) for _ in range(arguments.policy_runs)
        ]
        valid = report(arguments, results, evaluations, effects)
    except BenchError as error:
        print(f"bench/sts.py: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench/sts.py: interrupted", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if valid else 1


if __name__ == "__main__":
    sys.exit(main())
