"""The systemd notification protocol against real AF_UNIX datagram sockets standing in for the
service manager's: what arrives, from whom, and descriptors passed with SCM_RIGHTS that come
back to a new process as LISTEN_FDS, still the very same sockets."""

from __future__ import annotations

import array
import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.notify import (
    MAX_FDS_PER_MESSAGE,
    Notifier,
    ReadyGate,
    instances_status,
    listen_fds,
    listening_status,
    parse_listen_fds,
)


@dataclass
class Message:
    fields: dict[str, str]
    fds: list[int]
    sender_pid: int


class Manager:
    """The service manager's end: a bound datagram socket that reads what a notifier sends."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(address)
        # systemd checks who sent each message (NotifyAccess=main): it asks for credentials.
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.socket.settimeout(5)
        self.received_fds: list[int] = []

    @property
    def environment_value(self) -> str:
        """How NOTIFY_SOCKET names this socket."""
        return "@" + self.address[1:] if self.address.startswith("\0") else self.address

    def receive(self) -> Message:
        space = socket.CMSG_SPACE(MAX_FDS_PER_MESSAGE * array.array("i").itemsize)
        credentials_space = socket.CMSG_SPACE(3 * 4)
        data, ancillary, flags, _ = self.socket.recvmsg(4096, space + credentials_space)
        assert not flags & socket.MSG_CTRUNC, "descriptors were cut off"
        fds: list[int] = []
        sender_pid = 0
        for level, kind, payload in ancillary:
            if (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS):
                rights = array.array("i")
                rights.frombytes(payload[: len(payload) - len(payload) % rights.itemsize])
                fds.extend(rights)
            elif (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS):
                sender_pid = array.array("i", payload[:12])[0]
        self.received_fds.extend(fds)
        lines = data.decode("utf-8").split("\n")
        fields = dict(line.split("=", 1) for line in lines)
        assert len(fields) == len(lines), f"a field came twice in {data!r}"
        return Message(fields, fds, sender_pid)

    def nothing_waiting(self) -> bool:
        readable, _, _ = select.select([self.socket], [], [], 0)
        return not readable

    def close(self) -> None:
        for fd in self.received_fds:
            os.close(fd)
        self.socket.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: a socket's path must fit in 108 bytes."""
    with tempfile.TemporaryDirectory(prefix="rc-notify-") as directory:
        yield Path(directory)


@pytest.fixture(params=["path", "abstract"])
def manager(request: pytest.FixtureRequest, short_dir: Path) -> Iterator[Manager]:
    """The manager's socket bound to a path (as systemd's /run/systemd/notify) or abstract."""
    if request.param == "path":
        address = str(short_dir / "notify")
    else:
        address = f"\0rolecall-test-{uuid.uuid4().hex}"
    bound = Manager(address)
    try:
        yield bound
    finally:
        bound.close()


@pytest.fixture
def notifier(manager: Manager) -> Notifier:
    return Notifier.from_environment({"NOTIFY_SOCKET": manager.environment_value})


def listening_socket() -> socket.socket:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    return server


# the environment


def test_from_environment_reads_a_path_and_an_abstract_name() -> None:
    assert Notifier.from_environment({"NOTIFY_SOCKET": "/run/systemd/notify"}).address == (
        "/run/systemd/notify"
    )
    assert Notifier.from_environment({"NOTIFY_SOCKET": "@manager"}).address == "\0manager"


@pytest.mark.parametrize("value", ["relative/notify", "vsock:2:1234"])
def test_from_environment_refuses_what_it_cannot_reach(value: str) -> None:
    with pytest.raises(ValueError, match="NOTIFY_SOCKET"):
        Notifier.from_environment({"NOTIFY_SOCKET": value})


@pytest.mark.parametrize("environ", [{}, {"NOTIFY_SOCKET": ""}])
def test_without_notify_socket_every_call_sends_nothing(environ: dict[str, str]) -> None:
    notifier = Notifier.from_environment(environ)
    assert not notifier.enabled
    with socket.socket() as unused:
        results = [
            notifier.ready("serving"),
            notifier.status("serving"),
            notifier.stopping(),
            notifier.send(RELOADING=1),
            notifier.store_fds("imds", [unused.fileno()]),
            notifier.remove_fds("imds"),
        ]
    assert results == [False] * 6


# messages


def test_ready_sends_ready_and_status_in_one_message_from_this_process(
    notifier: Notifier, manager: Manager
) -> None:
    assert notifier.ready("serving API on 127.0.0.1:8773")
    message = manager.receive()
    assert message.fields == {"READY": "1", "STATUS": "serving API on 127.0.0.1:8773"}
    assert message.sender_pid == os.getpid()
    assert message.fds == []


def test_ready_without_status_sends_ready_alone(notifier: Notifier, manager: Manager) -> None:
    assert notifier.ready()
    assert manager.receive().fields == {"READY": "1"}


def test_status_and_stopping_are_single_fields(notifier: Notifier, manager: Manager) -> None:
    assert notifier.status("serving 3 instances")
    assert notifier.stopping()
    assert manager.receive().fields == {"STATUS": "serving 3 instances"}
    assert manager.receive().fields == {"STOPPING": "1"}


def test_send_keeps_the_order_of_arbitrary_fields(notifier: Notifier, manager: Manager) -> None:
    assert notifier.send(RELOADING=1, STATUS="reloading", MONOTONIC_USEC=12)
    data = list(manager.receive().fields.items())
    assert data == [("RELOADING", "1"), ("STATUS", "reloading"), ("MONOTONIC_USEC", "12")]


def test_a_value_with_a_newline_is_refused_before_anything_is_sent(
    notifier: Notifier, manager: Manager
) -> None:
    with pytest.raises(ValueError, match="newline"):
        notifier.status("fine\nREADY=1")
    with pytest.raises(ValueError, match="upper case"):
        notifier.send(ready=1)
    assert manager.nothing_waiting()


def test_a_manager_that_is_gone_is_reported_as_false_not_raised(short_dir: Path) -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": str(short_dir / "gone")})
    assert notifier.enabled
    assert notifier.ready("serving") is False


# the descriptor store


def test_store_fds_passes_the_same_sockets_with_their_name(
    notifier: Notifier, manager: Manager
) -> None:
    first, second = listening_socket(), listening_socket()
    with first, second:
        assert notifier.store_fds("imds-i-0123456789abcdef0", [first.fileno(), second.fileno()])
        message = manager.receive()
        assert message.fields == {"FDSTORE": "1", "FDNAME": "imds-i-0123456789abcdef0"}
        assert message.sender_pid == os.getpid()
        assert len(message.fds) == 2
        for original, passed in zip((first, second), message.fds, strict=True):
            assert os.fstat(passed).st_ino == os.fstat(original.fileno()).st_ino
            assert passed != original.fileno()  # a duplicate the manager owns, not ours
            with socket.socket(fileno=os.dup(passed)) as received:
                assert received.getsockname() == original.getsockname()


def test_more_descriptors_than_one_message_takes_go_in_several(
    notifier: Notifier, manager: Manager
) -> None:
    with listening_socket() as server:
        fds = [os.dup(server.fileno()) for _ in range(MAX_FDS_PER_MESSAGE + 7)]
        try:
            assert notifier.store_fds("many", fds)
        finally:
            for fd in fds:
                os.close(fd)
        first, second = manager.receive(), manager.receive()
        assert (len(first.fds), len(second.fds)) == (MAX_FDS_PER_MESSAGE, 7)
        assert first.fields == second.fields == {"FDSTORE": "1", "FDNAME": "many"}
        inode = os.fstat(server.fileno()).st_ino
        assert {os.fstat(fd).st_ino for fd in first.fds + second.fds} == {inode}


def test_remove_fds_names_what_to_drop(notifier: Notifier, manager: Manager) -> None:
    assert notifier.remove_fds("imds-i-0123456789abcdef0")
    message = manager.receive()
    assert message.fields == {"FDSTOREREMOVE": "1", "FDNAME": "imds-i-0123456789abcdef0"}
    assert message.fds == []


@pytest.mark.parametrize("name", ["", "a:b", "tab\there", "é", "x" * 256])
def test_names_systemd_would_refuse_are_refused(
    notifier: Notifier, manager: Manager, name: str
) -> None:
    with socket.socket() as unused:
        with pytest.raises(ValueError, match="descriptor names"):
            notifier.store_fds(name, [unused.fileno()])
    with pytest.raises(ValueError, match="descriptor names"):
        notifier.remove_fds(name)
    assert manager.nothing_waiting()


def test_storing_no_descriptor_is_refused(notifier: Notifier) -> None:
    with pytest.raises(ValueError, match="no descriptors"):
        notifier.store_fds("imds", [])


# descriptors passed back: LISTEN_FDS


def test_parse_listen_fds_groups_descriptors_by_name_from_3_on() -> None:
    environ = {"LISTEN_PID": "42", "LISTEN_FDS": "4", "LISTEN_FDNAMES": "health:imds:imds:other"}
    assert parse_listen_fds(environ, 42) == {"health": [3], "imds": [4, 5], "other": [6]}


def test_parse_listen_fds_names_unnamed_descriptors_unknown() -> None:
    assert parse_listen_fds({"LISTEN_PID": "42", "LISTEN_FDS": "2"}, 42) == {"unknown": [3, 4]}


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"LISTEN_FDS": "2"},  # no LISTEN_PID: not ours
        {"LISTEN_PID": "41", "LISTEN_FDS": "2"},  # inherited from a parent
        {"LISTEN_PID": "42", "LISTEN_FDS": "0"},
    ],
)
def test_parse_listen_fds_finds_nothing_not_meant_for_this_process(
    environ: dict[str, str],
) -> None:
    assert parse_listen_fds(environ, 42) == {}


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        ({"LISTEN_PID": "42", "LISTEN_FDS": "two"}, "not a number"),
        ({"LISTEN_PID": "42", "LISTEN_FDS": "-1"}, "negative"),
        ({"LISTEN_PID": "42", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "one"}, "names 1"),
    ],
)
def test_parse_listen_fds_refuses_inconsistent_variables(
    environ: dict[str, str], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_listen_fds(environ, 42)


def test_listen_fds_unsets_the_variables_and_ignores_another_process() -> None:
    environ = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "x"}
    assert listen_fds(environ) == {}
    assert environ == {}


# What systemd does when it starts the service's next process: the stored descriptors moved to
# 3, 4, … and LISTEN_PID set to the new process's own pid (the same across exec).
LAUNCHER = """
import fcntl, os, sys
fds, names, child = [int(fd) for fd in sys.argv[1].split(",")], sys.argv[2], sys.argv[3]
moved = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]
for fd in fds:
    os.close(fd)
for offset, fd in enumerate(moved):
    os.dup2(fd, 3 + offset)
    os.close(fd)
os.environ.update(LISTEN_FDS=str(len(fds)), LISTEN_FDNAMES=names, LISTEN_PID=str(os.getpid()))
os.execv(sys.executable, [sys.executable, "-c", child])
"""
# The restarted daemon: takes its descriptors and accepts the connection waiting on each.
CHILD = """
import json, os, socket
from common.notify import listen_fds
taken = listen_fds(os.environ)
report = {"left": [v for v in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES") if v in os.environ]}
for name, fds in taken.items():
    report[name] = []
    for fd in fds:
        server = socket.socket(fileno=fd)
        connection, _ = server.accept()
        report[name].append(
            {"fd": fd, "inode": os.fstat(fd).st_ino, "address": list(server.getsockname()),
             "inheritable": os.get_inheritable(fd), "said": connection.recv(16).decode()}
        )
        connection.close()
print(json.dumps(report))
"""


def restart_with(fds: list[int], names: list[str]) -> dict[str, object]:
    """Run a new process that receives ``fds`` as systemd passes them, and what it found."""
    done = subprocess.run(
        [sys.executable, "-c", LAUNCHER, ",".join(map(str, fds)), ":".join(names), CHILD],
        pass_fds=fds,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_stored_listening_sockets_reach_the_next_process_as_the_same_sockets(
    notifier: Notifier, manager: Manager
) -> None:
    health, first, second = listening_socket(), listening_socket(), listening_socket()
    clients = []
    with health, first, second:
        assert notifier.store_fds("health", [health.fileno()])
        assert notifier.store_fds("imds", [first.fileno(), second.fileno()])
        stored = [manager.receive(), manager.receive()]
        # Connections that arrive while no process listens wait in the kept sockets' backlog.
        for server, greeting in ((health, "h"), (first, "one"), (second, "two")):
            client = socket.create_connection(server.getsockname(), timeout=5)
            client.sendall(greeting.encode())
            clients.append(client)
        names = [message.fields["FDNAME"] for message in stored for _ in message.fds]
        report = restart_with([fd for message in stored for fd in message.fds], names)
        expected = {
            "health": [(3, health, "h")],
            "imds": [(4, first, "one"), (5, second, "two")],
        }
        assert report.pop("left") == []
        assert set(report) == set(expected)
        for name, sockets in expected.items():
            found = report[name]
            assert isinstance(found, list)
            for entry, (fd, server, greeting) in zip(found, sockets, strict=True):
                assert entry["fd"] == fd
                assert entry["inode"] == os.fstat(server.fileno()).st_ino
                assert tuple(entry["address"]) == server.getsockname()
                assert entry["said"] == greeting
                assert entry["inheritable"] is False
    for client in clients:
        client.close()


# readiness


class Recorder:
    """A notifier's stand-in that records what would be sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str | None]] = []

    def ready(self, status: str | None = None) -> bool:
        self.sent.append(("READY", status))
        return True

    def status(self, text: str) -> bool:
        self.sent.append(("STATUS", text))
        return True


def test_ready_gate_sends_ready_only_once_everything_awaited_is_met() -> None:
    recorder = Recorder()
    served = {"count": 0}
    gate = ReadyGate(
        recorder,  # type: ignore[arg-type]
        ("metrics listener", "assignments"),
        lambda: instances_status(served["count"], 0),
    )
    served["count"] = 2
    gate.met("assignments")
    assert not gate.ready
    gate.met("metrics listener")
    served["count"] = 3
    gate.met("assignments")
    assert gate.ready
    assert recorder.sent == [
        ("STATUS", "starting: waiting for metrics listener"),
        ("READY", "serving 2 instances"),
        ("STATUS", "serving 3 instances"),
    ]


def test_ready_gate_refuses_a_condition_it_does_not_await() -> None:
    gate = ReadyGate(Recorder(), ("api",), lambda: "serving")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not awaited"):
        gate.met("apí")


def test_ready_gate_reaches_the_manager_socket(notifier: Notifier, manager: Manager) -> None:
    gate = ReadyGate(notifier, ("api", "node-api"), lambda: "serving API on 127.0.0.1:8773")
    gate.met("node-api")
    gate.met("api")
    assert manager.receive().fields == {"STATUS": "starting: waiting for api"}
    assert manager.receive().fields == {"READY": "1", "STATUS": "serving API on 127.0.0.1:8773"}


# status lines


@dataclass
class FakeAddress:
    host: str
    port: int


def test_listening_status_names_each_listener_and_brackets_ipv6() -> None:
    text = listening_status(
        [
            ("API", FakeAddress("127.0.0.1", 8773)),
            ("node API", FakeAddress("::", 8775)),
            ("metrics", FakeAddress("127.0.0.1", 9773)),
        ]
    )
    assert text == "serving API on 127.0.0.1:8773, node API on [::]:8775, metrics on 127.0.0.1:9773"


@pytest.mark.parametrize(
    ("served", "failed", "text"),
    [
        (0, 0, "serving 0 instances"),
        (1, 0, "serving 1 instance"),
        (3, 2, "serving 3 instances, 2 not served"),
    ],
)
def test_instances_status_counts_served_and_failed_instances(
    served: int, failed: int, text: str
) -> None:
    assert instances_status(served, failed) == text


def test_a_failure_to_notify_is_said_to_the_given_writer_and_reported_false(
    tmp_path: Path,
) -> None:
    said: list[str] = []
    notifier = Notifier(str(tmp_path / "no-such-socket"), said.append)
    assert notifier.ready("serving") is False
    assert said == [
        f"cannot notify the service manager at {tmp_path / 'no-such-socket'}:"
        " No such file or directory"
    ]
