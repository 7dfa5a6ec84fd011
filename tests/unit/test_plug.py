"""The plug socket (agent/plug.py, agent/plugserver.py): what a request may be, the serving
process's protocol (root only, one line, bounded, idle clients dropped) on a test transport with
a Clock, and the socket the root process makes, asked by the client as the hook asks it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from agent import plug
from agent.plugserver import PlugFactory, forwarding_handler

INSTANCE = "i-0123456789abcdef0"


def line(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xff", "not a JSON line"),
        (b"[]", "must be"),
        (line(op="plug", instance=INSTANCE), "must be"),
        (line(op="plug", instance=INSTANCE, tap="vnet0", extra=1), "must be"),
        (line(op="steer", instance=INSTANCE, tap="vnet0"), "op must be plug or unplug"),
        (line(op="plug", instance="../x", tap="vnet0"), "instance id"),
        (line(op="plug", instance=INSTANCE, tap=""), "not an interface name"),
        (line(op="plug", instance=INSTANCE, tap="lo"), "loopback"),
        (line(op="plug", instance=INSTANCE, tap="rcv0123456789ab"), "agent's own"),
        (line(op="unplug", instance=INSTANCE, tap="a b"), "not an interface name"),
        (b"x" * (plug.MAX_LINE_BYTES + 1), "over"),
    ],
)
def test_a_request_that_is_not_a_plug_or_unplug_is_refused_saying_why(
    data: bytes, reason: str
) -> None:
    with pytest.raises(plug.PlugRefused, match=reason):
        plug.decode_request(data)


def test_plug_and_unplug_requests_are_read() -> None:
    assert plug.decode_request(line(op="plug", instance=INSTANCE, tap="vnet0")) == (
        plug.PlugRequest("plug", INSTANCE, "vnet0")
    )
    assert plug.decode_request(line(op="unplug", instance=INSTANCE, tap="")) == (
        plug.PlugRequest("unplug", INSTANCE, "")
    )


class Connected:
    def __init__(self, uid: int | None, handler: Any = None) -> None:
        self.clock = Clock()
        self.asked: list[plug.PlugRequest] = []

        def handle(request: plug.PlugRequest) -> dict[str, Any]:
            self.asked.append(request)
            return {"ok": True, "state": "pending", "namespace": "rc-" + request.instance_id}

        factory = PlugFactory(handler or handle, self.clock, peer_uid=lambda transport: uid)
        self.protocol = factory.buildProtocol(None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def answer(self) -> dict[str, Any]:
        value = self.transport.value()
        assert value.endswith(b"\n") and value.count(b"\n") == 1
        return dict(json.loads(value))


def test_a_root_client_gets_one_answer_and_the_connection_closes() -> None:
    connected = Connected(0)
    connected.protocol.dataReceived(line(op="plug", instance=INSTANCE, tap="vnet0") + b"\n")
    assert connected.answer() == {"ok": True, "state": "pending", "namespace": f"rc-{INSTANCE}"}
    assert connected.transport.disconnecting
    assert connected.clock.getDelayedCalls() == []


@pytest.mark.parametrize("uid", [1000, 65534, None])
def test_a_client_that_is_not_root_is_refused_before_it_asks(uid: int | None) -> None:
    connected = Connected(uid)
    assert connected.answer() == {"ok": False, "error": "only root may plug or unplug"}
    connected.protocol.dataReceived(line(op="plug", instance=INSTANCE, tap="vnet0") + b"\n")
    assert connected.asked == [] and connected.transport.disconnecting


def test_a_line_over_the_limit_is_refused_without_being_read_whole() -> None:
    connected = Connected(0)
    connected.protocol.dataReceived(b"x" * (plug.MAX_LINE_BYTES + 10))
    assert connected.answer()["ok"] is False and connected.asked == []


def test_an_idle_client_is_dropped_and_no_timer_is_left() -> None:
    connected = Connected(0)
    connected.clock.advance(plug.IDLE_SECONDS)
    assert connected.transport.value() == b""
    connected.protocol.connectionLost(None)
    assert connected.clock.getDelayedCalls() == []


def test_the_handler_names_the_namespace_and_says_a_refusal() -> None:
    def ask_root(op: str, **fields: Any) -> dict[str, Any]:
        if fields["tap"] == "vnet9":
            raise ValueError("plug: there is no link vnet9 in the host's namespace")
        return {"ok": True, "state": "steered"}

    handle = forwarding_handler(lambda instance: f"ns-{instance}", ask_root)
    assert handle(plug.PlugRequest("plug", INSTANCE, "vnet0")) == {
        "ok": True,
        "state": "steered",
        "namespace": f"ns-{INSTANCE}",
    }
    refused = handle(plug.PlugRequest("plug", INSTANCE, "vnet9"))
    assert refused == {"ok": False, "error": "plug: there is no link vnet9 in the host's namespace"}


# -- the socket itself ---------------------------------------------------------------------------


@pytest.fixture
def directory() -> Iterator[Path]:
    made = Path(tempfile.mkdtemp(prefix="rcplug-", dir="/tmp"))  # short: a socket's path
    try:
        yield made
    finally:
        shutil.rmtree(made, ignore_errors=True)


def serve_once(server: socket.socket, answer: bytes) -> threading.Thread:
    def run() -> None:
        client, _ = server.accept()
        with client:
            client.recv(4096)
            client.sendall(answer)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_the_socket_is_made_private_in_a_directory_made_for_it(directory: Path) -> None:
    path = directory / "run" / "plug.sock"
    server = plug.bind(path)
    try:
        assert stat.S_ISSOCK(path.lstat().st_mode)
        assert stat.S_IMODE(path.lstat().st_mode) == 0o600
        assert path.lstat().st_uid == os.geteuid()
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755
        thread = serve_once(server, b'{"ok": true, "state": "steered"}\n')
        assert plug.ask(path, "plug", INSTANCE, "vnet0") == {"ok": True, "state": "steered"}
        thread.join(5)
    finally:
        server.close()


def test_a_dead_agents_socket_is_replaced_and_a_live_ones_is_not(directory: Path) -> None:
    path = directory / "plug.sock"
    first = plug.bind(path)
    try:
        with pytest.raises(plug.PlugSocketError, match="another process listens"):
            plug.bind(path)
    finally:
        first.close()
    plug.bind(path).close()  # the file stayed, nothing listens: replaced


def test_a_file_that_is_not_a_socket_is_never_replaced(directory: Path) -> None:
    path = directory / "plug.sock"
    path.write_text("mine")
    with pytest.raises(plug.PlugSocketError, match="not a socket"):
        plug.bind(path)
    assert path.read_text() == "mine"


def test_the_client_says_clearly_when_no_agent_answers(directory: Path) -> None:
    with pytest.raises(plug.PlugSocketError, match=r"no agent socket.*tried for 0\.3 s"):
        plug.ask(directory / "none.sock", "plug", INSTANCE, "vnet0", timeout=0.3)
    server = plug.bind(directory / "mute.sock")
    try:  # accepts (the kernel's backlog) but never answers
        with pytest.raises(plug.PlugSocketError, match="did not answer"):
            plug.ask(directory / "mute.sock", "plug", INSTANCE, "vnet0", timeout=0.3)
    finally:
        server.close()


def test_a_plug_made_while_the_agent_restarts_lands_once_its_socket_is_back(
    directory: Path,
) -> None:
    """No socket at first (the agent restarting): the client tries again until the agent binds
    it, within its timeout, and gets the agent's answer."""
    path = directory / "plug.sock"
    answered: list[bytes] = []

    def agent_comes_back() -> None:
        time.sleep(0.5)
        server = plug.bind(path)
        try:
            connection, _ = server.accept()
            with connection:
                answered.append(connection.recv(4096))
                connection.sendall(plug.encode({"ok": True, "state": "pending"}))
        finally:
            server.close()

    thread = threading.Thread(target=agent_comes_back)
    thread.start()
    try:
        assert plug.ask(path, "plug", INSTANCE, "vnet0", timeout=3) == {
            "ok": True,
            "state": "pending",
        }
    finally:
        thread.join()
    assert json.loads(answered[0]) == {"op": "plug", "instance": INSTANCE, "tap": "vnet0"}


# -- the commands ------------------------------------------------------------------------------


def test_plug_without_its_arguments_names_what_is_missing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from agent.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["plug", INSTANCE])
    assert exited.value.code == 2
    assert "TAP" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["plug", "i-XYZ", "vnet0"], "argument INSTANCE: instance id 'i-XYZ'"),
        (["plug", INSTANCE, "lo"], "argument TAP: tap lo"),
        (["unplug", INSTANCE, "a/b"], "argument TAP: tap 'a/b'"),
    ],
)
def test_a_bad_instance_or_tap_is_refused_naming_the_argument(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.cli import main

    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert said in capsys.readouterr().err


def test_plug_says_in_one_line_when_no_agent_listens(
    directory: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.cli import main

    assert main(["plug", "--socket", str(directory / "none.sock"), INSTANCE, "vnet0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("rolecall-agent plug: no agent socket at") and err.count("\n") == 1


def test_a_hook_operation_the_agent_ignores_exits_at_once(
    directory: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.cli import main

    assert (
        main(["hook", "--socket", str(directory / "none.sock"), "vm", "prepare", "begin", "-"]) == 0
    )
    assert capsys.readouterr() == ("", "")


def test_the_daemons_own_flags_still_parse_as_before(capsys: pytest.CaptureFixture[str]) -> None:
    from agent.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    assert "--ownership-file" in capsys.readouterr().out
