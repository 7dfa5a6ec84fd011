"""Load for the high-availability tests: a guest asking its metadata service for credentials,
and API clients writing through several controllers, each write the API acknowledged recorded
in a ledger so that none may go missing after a failure.

Both run in threads of the test process until stopped; every outcome is counted, nothing is
retried: a request that failed is what the tests look for.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from agent import netns
from demo.guest import METADATA_ADDRESS, TOKEN_HEADER, TTL_HEADER

TOKEN_PATH = "/latest/api/token"
CREDENTIALS_PATH = "/latest/meta-data/iam/security-credentials/"
#: One round of three requests this often: 37.5 requests/s.
ROUND_SECONDS = 0.08


# -- the guest: IMDSv2 as an SDK asks it ----------------------------------------------------------


def metadata_request(
    namespace: str, method: str, path: str, headers: Mapping[str, str], timeout: float = 10
) -> tuple[int, bytes]:
    """One HTTP/1.1 request to the metadata service from a socket in `namespace`: (status,
    body). Raises on a refused, reset or unanswered connection."""
    with netns.inside(namespace):
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with client:
        client.settimeout(timeout)
        client.connect((METADATA_ADDRESS, 80))
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        client.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: {METADATA_ADDRESS}\r\n{head}"
            "Connection: close\r\n\r\n".encode("ascii")
        )
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    if not answer.startswith(b"HTTP/1.1 "):
        raise ConnectionError(f"closed without an answer ({answer[:40]!r})")
    status = int(answer.split(b" ", 2)[1])
    return status, answer.partition(b"\r\n\r\n")[2]


class GuestLoad:
    """A guest that fetches its role credentials over and over as an SDK does (a token, the
    role's name, then the credentials: three requests a round), counting every request and
    every one that failed (an error status, a refused or reset connection, a timeout)."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.requests = 0
        self.rounds = 0
        #: (seconds since the load started, what went wrong), for every failed request.
        self.failures: list[tuple[float, str]] = []
        self.access_key_ids: set[str] = set()
        self._started = time.monotonic()
        self._running = threading.Event()
        self._running.set()
        self._thread = threading.Thread(target=self._run, daemon=True, name="guest load")
        self._thread.start()

    def _request(self, method: str, path: str, headers: Mapping[str, str]) -> bytes | None:
        self.requests += 1
        try:
            status, body = metadata_request(self.namespace, method, path, headers)
        except Exception as error:
            self.failures.append((self._elapsed(), f"{method} {path}: {error!r}"))
            return None
        if status != 200:
            self.failures.append((self._elapsed(), f"{method} {path}: {status} {body[:200]!r}"))
            return None
        return body

    def _round(self) -> None:
        token = self._request("PUT", TOKEN_PATH, {TTL_HEADER: "21600"})
        if token is None:
            return
        headers = {TOKEN_HEADER: token.decode("ascii")}
        names = self._request("GET", CREDENTIALS_PATH, headers)
        if names is None:
            return
        document = self._request("GET", CREDENTIALS_PATH + names.decode().strip(), headers)
        if document is None:
            return
        self.access_key_ids.add(json.loads(document)["AccessKeyId"])
        self.rounds += 1

    def _run(self) -> None:
        while self._running.is_set():
            started = time.monotonic()
            self._round()
            # A busy guest, not a flood: under the agent's rate limit (50 requests/s, a burst
            # of 200), or the guest would see its 503s instead of what the test looks for.
            time.sleep(max(0.0, ROUND_SECONDS - (time.monotonic() - started)))

    def _elapsed(self) -> float:
        return round(time.monotonic() - self._started, 3)

    def wait_for_rounds(self, count: int, timeout: float = 15) -> None:
        """Until `count` more rounds were done (a failure fails the wait at once)."""
        target = self.rounds + count
        deadline = time.monotonic() + timeout
        while self.rounds < target and not self.failures:
            assert time.monotonic() < deadline, f"the guest did {self.rounds}/{target} rounds"
            time.sleep(0.02)

    def stop(self) -> None:
        self._running.clear()
        self._thread.join(30)


# -- the API: writes through several controllers, acknowledged ones in a ledger ------------------


@dataclass(frozen=True)
class Write:
    """One write the API acknowledged: which call, on what, through which controller, when."""

    action: str
    role: str
    policy: str | None
    document: str | None
    controller: str
    at: float


def outcome_of(error: Exception) -> str:
    """How a failed call ended, as a client sees it: the AWS error code of a clean error
    answer, else the kind of transport failure (never the message: it may vary)."""
    if isinstance(error, ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
        return f"{error.response.get('Error', {}).get('Code', '?')} (HTTP {status})"
    if isinstance(error, EndpointConnectionError):
        return "connection refused"
    if isinstance(error, ConnectionClosedError):
        return "connection closed without an answer"
    if isinstance(error, ReadTimeoutError):
        return "no answer in time (read timeout)"
    if isinstance(error, BotoCoreError):
        return type(error).__name__
    return f"{type(error).__name__} (not an AWS error)"


@dataclass(frozen=True)
class Failure:
    """A write the API did not acknowledge: when it ended (seconds of the load), and how."""

    at: float
    write: Write
    outcome: str
    #: How long the client waited for that outcome.
    seconds: float

    @property
    def controller(self) -> str:
        return self.write.controller


@dataclass
class Ledger:
    """Every write the API acknowledged, and how every other call ended."""

    acknowledged: list[Write] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    calls: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def outcomes(self, since: float = 0.0) -> Counter[str]:
        with self.lock:
            return Counter(failure.outcome for failure in self.failures if failure.at >= since)

    def acknowledged_through(self, controller: str, since: float = 0.0) -> int:
        with self.lock:
            return sum(
                1
                for write in self.acknowledged
                if write.controller == controller and write.at >= since
            )


def policy_document(role: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{role}/*"}
            ],
        }
    )


ROLE_TRUST = json.dumps(
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


class ApiLoad:
    """Threads that each create a role and put a policy on it, with unique names, through the
    controllers in turn (`clients`: controller name to an IAM client), recording each write
    the API acknowledged in :attr:`ledger` and how every failed call ended."""

    def __init__(self, clients: Mapping[str, Any], prefix: str, threads: int = 2) -> None:
        self.clients = dict(clients)
        self.prefix = prefix
        self.ledger = Ledger()
        self._started = time.monotonic()
        self._running = threading.Event()
        self._running.set()
        self._threads = [
            threading.Thread(target=self._run, args=(index,), daemon=True, name=f"api load {index}")
            for index in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def _call(self, write: Write, method: str, **arguments: str) -> bool:
        """Call `method` of the IAM client of `write.controller`; `write` goes into the
        ledger when the API acknowledged it."""
        started = self.elapsed()
        try:
            getattr(self.clients[write.controller], method)(**arguments)
        except Exception as error:
            ended = self.elapsed()
            failure = Failure(ended, write, outcome_of(error), ended - started)
            with self.ledger.lock:
                self.ledger.calls += 1
                self.ledger.failures.append(failure)
            return False
        with self.ledger.lock:
            self.ledger.calls += 1
            self.ledger.acknowledged.append(replace(write, at=self.elapsed()))
        return True

    def _run(self, index: int) -> None:
        names = list(self.clients)
        count = 0
        while self._running.is_set():
            controller = names[(count + index) % len(names)]
            role = f"{self.prefix}-{index}-{count}"
            count += 1
            created = Write("CreateRole", role, None, None, controller, 0.0)
            if not self._call(
                created, "create_role", RoleName=role, AssumeRolePolicyDocument=ROLE_TRUST
            ):
                time.sleep(0.02)  # a refused controller answers at once: do not spin
                continue
            document = policy_document(role)
            put = Write("PutRolePolicy", role, "read", document, controller, 0.0)
            self._call(
                put, "put_role_policy", RoleName=role, PolicyName="read", PolicyDocument=document
            )

    def wait_for_writes(self, controller: str, count: int, since: float, timeout: float) -> float:
        """Until `count` writes through `controller` were acknowledged after `since` (seconds
        of this load); the time the last of them was acknowledged."""
        deadline = time.monotonic() + timeout
        while self.ledger.acknowledged_through(controller, since) < count:
            assert time.monotonic() < deadline, (
                f"{controller} acknowledged"
                f" {self.ledger.acknowledged_through(controller, since)}/{count} writes in"
                f" {timeout} s; failures since: {self.ledger.outcomes(since)}"
            )
            time.sleep(0.01)
        with self.ledger.lock:
            return [
                w.at
                for w in self.ledger.acknowledged
                if w.controller == controller and w.at >= since
            ][count - 1]

    def stop(self) -> None:
        self._running.clear()
        for thread in self._threads:
            thread.join(60)


def present_writes(client: Any, writes: list[Write]) -> list[Write]:
    """Those of `writes` (not acknowledged) that `client`'s controller shows all the same."""
    return [write for write in writes if not missing_writes(client, [write])]


def missing_writes(client: Any, writes: list[Write]) -> list[str]:
    """The acknowledged writes that `client`'s controller does not show (read back one by one:
    each role by GetRole, each policy by GetRolePolicy with its document)."""
    missing = []
    for write in writes:
        try:
            if write.action == "CreateRole":
                client.get_role(RoleName=write.role)
            else:
                answer = client.get_role_policy(RoleName=write.role, PolicyName=write.policy)
                document = answer["PolicyDocument"]
                if not isinstance(document, str):
                    document = json.dumps(document)
                if json.loads(document) != json.loads(write.document or "null"):
                    missing.append(f"{write}: another document {document}")
        except ClientError as error:
            missing.append(f"{write}: {outcome_of(error)}")
    return missing


# -- a health checker: how long a controller's other ports wait while its store does -------------


class Prober:
    """GET `url` every 50 ms (as a load balancer's health check would, faster), recording each
    answer's status (0: none) and how long it took."""

    def __init__(self, url: str) -> None:
        self.url = url
        #: (seconds since the prober started, status, seconds the answer took)
        self.answers: list[tuple[float, int, float]] = []
        self._started = time.monotonic()
        self._running = threading.Event()
        self._running.set()
        self._thread = threading.Thread(target=self._run, daemon=True, name="prober")
        self._thread.start()

    def _run(self) -> None:
        host = self.url.removeprefix("http://").split("/", 1)[0]
        path = "/" + self.url.removeprefix("http://").split("/", 1)[1]
        while self._running.is_set():
            started = time.monotonic()
            status = 0
            connection = http.client.HTTPConnection(host, timeout=30)
            try:
                connection.request("GET", path)
                response = connection.getresponse()
                response.read()
                status = response.status
            except OSError:
                pass
            finally:
                connection.close()
            ended = time.monotonic()
            self.answers.append((round(started - self._started, 3), status, ended - started))
            time.sleep(max(0.0, 0.05 - (ended - started)))

    def slowest(self) -> float:
        return max((seconds for _, _, seconds in self.answers), default=0.0)

    def stop(self) -> None:
        self._running.clear()
        self._thread.join(40)
