"""The privileged process's side of the channel (agent/channel.py, agent/privileged.py), with
fake namespaces: every malformed or hostile request gets an error answer, nothing reaches the
namespace functions unless the name is valid, and the loop keeps serving afterwards."""

from __future__ import annotations

import array
import json
import os
import socket
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent import channel
from agent.kept import MAX_ENTRY_BYTES, InstanceFiles
from agent.netns import Ownership, OwnershipRecord, Plug
from agent.privileged import Broker
from common.notify import Notifier


class FakeNamespaces:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def prepare(self, name: str) -> Ownership:
        self.calls.append(("prepare", name))
        return Ownership(name, created_namespace=True, added_address=True)

    def listen(self, name: str, port: int) -> socket.socket:
        self.calls.append(("listen", name))
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM)

    def release(self, ownership: Ownership) -> None:
        self.calls.append(("release", ownership.namespace))

    def listed(self, prefix: str) -> list[str]:
        return [name for name in ("rc-i-00000001", "rc-i-00000002") if name.startswith(prefix)]

    def remove_if_empty(self, name: str, listening_is_foreign: bool = True) -> str | None:
        self.calls.append(("remove_if_empty", name))
        return "link tap7" if name == "rc-i-00000002" else None

    def exists(self, name: str) -> bool:
        return name in self.present

    #: Namespaces that exist on the host (for `exists`).
    present: frozenset[str] = frozenset()


@dataclass(frozen=True)
class FakeLink:
    index: int
    kind: str = "tun"


class FakeSteering:
    """The host's links and the steering tables, in memory."""

    def __init__(self) -> None:
        self.host_links: dict[str, FakeLink] = {"lo": FakeLink(1, ""), "vnet0": FakeLink(10)}
        self.installed: dict[str, str] = {}
        self.calls: list[tuple[str, str]] = []

    def links(self) -> dict[str, int]:
        return {name: link.index for name, link in self.host_links.items()}

    def link_kind(self, name: str) -> str | None:
        found = self.host_links.get(name)
        return found.kind if found is not None else None

    def link_index(self, name: str) -> int | None:
        found = self.host_links.get(name)
        return found.index if found is not None else None

    def install(self, namespace: str, tap: str) -> None:
        self.calls.append(("install", namespace))
        self.installed[namespace] = tap

    def ensure_veth(self, namespace: str) -> bool:
        self.calls.append(("ensure_veth", namespace))
        return namespace not in self.installed  # made now unless its steering is there

    def remove(self, namespace: str) -> None:
        self.calls.append(("remove", namespace))
        self.installed.pop(namespace, None)

    def tables(self) -> list[str]:
        return sorted(self.installed)


@pytest.fixture
def broker(tmp_path: Path) -> Broker:
    return Broker(
        80,
        OwnershipRecord(tmp_path / "namespaces.json"),
        Notifier(None),
        FakeNamespaces(),
        kept=InstanceFiles(tmp_path / "instances", print),
        steering=FakeSteering(),
    )


def ask(broker: Broker, message: object) -> dict[str, Any]:
    answer, sockets = broker.handle(json.dumps(message).encode(), False)
    for each in sockets:
        each.close()
    return answer


VALID = [
    {"op": "prepare", "netns": "rc-i-0123456789abcdef0"},
    {"op": "release", "netns": "vm-7.tap"},
    {"op": "unstore", "netns": "rc-i-01234567"},
    {"op": "compact"},
    {"op": "notify", "ready": True, "status": "serving 3 instances", "stopping": False},
    {"op": "keep", "instance": "i-0123456789abcdef0", "entry": "{}"},
    {"op": "forget", "instance": "i-01234567"},
    {"op": "unplug", "netns": "rc-i-01234567", "tap": ""},
]
REFUSED = [
    ({"op": "prepare", "netns": "../../etc/nologin"}, "namespace name"),
    ({"op": "prepare", "netns": ".."}, "namespace name"),
    ({"op": "prepare", "netns": "a/b"}, "namespace name"),
    ({"op": "prepare", "netns": ""}, "namespace name"),
    ({"op": "release", "netns": "/etc/passwd"}, "namespace name"),
    ({"op": "unstore", "netns": "x:y"}, "namespace name"),
    ({"op": "prepare", "netns": 7}, "netns must be str"),
    ({"op": "prepare", "netns": "rc-x", "extra": 1}, "exactly the fields"),
    ({"op": "prepare"}, "exactly the fields"),
    ({"op": "listen", "netns": "rc-x", "port": "80"}, "port must be int"),
    ({"op": "listen", "netns": "rc-x", "port": True}, "port must be int"),
    ({"op": "listen", "netns": "rc-x", "port": 22}, "only port 80"),
    ({"op": "listen", "netns": "rc-x", "port": 80}, "was not prepared"),
    ({"op": "notify", "ready": 1, "status": "", "stopping": False}, "ready must be bool"),
    (
        {"op": "notify", "ready": True, "status": "x\nREADY=1", "stopping": False},
        "printable",
    ),
    ({"op": "keep", "instance": "../../etc/cron.d/x", "entry": "{}"}, "instance id"),
    ({"op": "keep", "instance": ".i-01234567.tmp", "entry": "{}"}, "instance id"),
    ({"op": "keep", "instance": "i-01234567", "entry": 7}, "entry must be str"),
    (
        {"op": "keep", "instance": "i-01234567", "entry": "x" * (MAX_ENTRY_BYTES + 1)},
        f"at most {MAX_ENTRY_BYTES} bytes",
    ),
    ({"op": "forget", "instance": "/etc/passwd"}, "instance id"),
    ({"op": "remove_orphan", "netns": "vm-7"}, "not an orphan of this agent's"),
    ({"op": "remove_orphan", "netns": "../rc-x"}, "namespace name"),
    ({"op": "unlink", "path": "/etc/nologin"}, "unknown operation"),
    ({"netns": "rc-x"}, "unknown operation"),
    ({"op": "plug", "netns": "rc-x", "tap": "lo"}, "loopback"),
    ({"op": "plug", "netns": "rc-x", "tap": "rcv0123456789ab"}, "agent's own veth"),
    ({"op": "plug", "netns": "rc-x", "tap": "imds0"}, "agent's own veth"),
    ({"op": "plug", "netns": "rc-x", "tap": "a/b"}, "not an interface name"),
    ({"op": "plug", "netns": "rc-x", "tap": "x" * 16}, "not an interface name"),
    ({"op": "plug", "netns": "rc-x", "tap": 'v"; flush ruleset'}, "not an interface name"),
    ({"op": "plug", "netns": "rc-x", "tap": ""}, "not an interface name"),
    ({"op": "plug", "netns": "rc-x", "tap": "vnet9"}, "no link vnet9"),
    ({"op": "plug", "netns": "../x", "tap": "vnet0"}, "namespace name"),
    ({"op": "plug", "netns": "rc-x"}, "exactly the fields"),
    ({"op": "unplug", "netns": "rc-x", "tap": "a b"}, "not an interface name"),
    (["prepare", "rc-x"], "not a JSON object"),
]


@pytest.mark.parametrize("message", VALID)
def test_a_well_formed_request_is_answered_ok(broker: Broker, message: dict[str, Any]) -> None:
    assert ask(broker, message) == {"ok": True, **ask_fields(message)}


def ask_fields(message: dict[str, Any]) -> dict[str, Any]:
    if message["op"] == "prepare":
        return {"created_namespace": True, "added_address": True}
    if message["op"] == "unplug":
        return {"state": "unplugged"}
    return {}


@pytest.mark.parametrize(("message", "reason"), REFUSED)
def test_a_malformed_or_hostile_request_is_refused_and_touches_no_namespace(
    broker: Broker, message: object, reason: str
) -> None:
    answer = ask(broker, message)
    assert answer["ok"] is False
    assert reason in answer["error"]
    assert broker._namespaces.calls == []  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("data", "truncated", "reason"),
    [
        (b"\xff\xfe", False, "not JSON"),
        (b"{", False, "not JSON"),
        (b'{"op": "compact"}', True, f"over {channel.MAX_REQUEST_BYTES} bytes"),
        (b" " * (channel.MAX_REQUEST_BYTES + 1), False, f"over {channel.MAX_REQUEST_BYTES} bytes"),
    ],
)
def test_bytes_that_are_no_request_are_refused(
    broker: Broker, data: bytes, truncated: bool, reason: str
) -> None:
    answer, sockets = broker.handle(data, truncated)
    assert (answer["ok"], sockets) == (False, [])
    assert reason in answer["error"]


def test_an_entry_is_kept_as_a_private_file_and_forgotten(broker: Broker, tmp_path: Path) -> None:
    assert ask(broker, {"op": "keep", "instance": "i-01234567", "entry": "{...}"})["ok"]
    kept = tmp_path / "instances" / "i-01234567"
    assert kept.read_text() == "{...}"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert ask(broker, {"op": "forget", "instance": "i-01234567"})["ok"]
    assert not kept.exists()


def test_orphans_are_namespaces_with_the_prefix_it_does_not_own(broker: Broker) -> None:
    assert ask(broker, {"op": "prepare", "netns": "rc-i-00000001"})["ok"]
    assert ask(broker, {"op": "orphans"}) == {"ok": True, "names": ["rc-i-00000002"]}


def test_an_orphan_is_removed_only_if_it_holds_nothing_and_is_not_its_own(
    broker: Broker,
) -> None:
    assert ask(broker, {"op": "remove_orphan", "netns": "rc-i-00000001"}) == {
        "ok": True,
        "holds": "",
    }
    assert ask(broker, {"op": "remove_orphan", "netns": "rc-i-00000002"}) == {
        "ok": True,
        "holds": "link tap7",
    }
    assert ask(broker, {"op": "prepare", "netns": "rc-i-00000003"})["ok"]
    refused = ask(broker, {"op": "remove_orphan", "netns": "rc-i-00000003"})
    assert refused["ok"] is False and "not an orphan" in refused["error"]


def test_only_what_it_recorded_as_made_is_ever_released(broker: Broker, tmp_path: Path) -> None:
    fake: FakeNamespaces = broker._namespaces  # type: ignore[assignment]
    assert ask(broker, {"op": "release", "netns": "made-by-the-hypervisor"}) == {"ok": True}
    assert fake.calls == []
    ask(broker, {"op": "prepare", "netns": "rc-i-01234567"})
    assert ask(broker, {"op": "listen", "netns": "rc-i-01234567", "port": 80}) == {"ok": True}
    ask(broker, {"op": "release", "netns": "rc-i-01234567"})
    assert fake.calls == [
        ("prepare", "rc-i-01234567"),
        ("listen", "rc-i-01234567"),
        ("release", "rc-i-01234567"),
    ]
    assert OwnershipRecord(tmp_path / "namespaces.json").load() == {}
    # Released: the name is no longer its own, so no socket for it either.
    assert ask(broker, {"op": "listen", "netns": "rc-i-01234567", "port": 80})["ok"] is False


def test_a_failure_inside_the_privileged_process_is_an_error_answer_not_a_crash(
    broker: Broker,
) -> None:
    def broken(name: str) -> Ownership:
        raise RuntimeError("a bug")

    broker._namespaces.prepare = broken  # type: ignore[attr-defined]
    answer = ask(broker, {"op": "prepare", "netns": "rc-x"})
    assert answer == {"ok": False, "error": "internal error: RuntimeError"}


# -- over a real socket pair ------------------------------------------------------------------


@pytest.fixture
def served(broker: Broker) -> Iterator[socket.socket]:
    privileged, serving = channel.pair()
    thread = threading.Thread(target=broker.serve, args=(privileged,), daemon=True)
    thread.start()
    try:
        serving.settimeout(5)
        yield serving
    finally:
        serving.close()
        thread.join(5)
        privileged.close()
    assert not thread.is_alive(), "the loop did not end when its peer went away"


def exchange(end: socket.socket, data: bytes, fds: list[int] | None = None) -> dict[str, Any]:
    ancillary = []
    if fds:
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
    end.sendmsg([data], ancillary)
    answer, _, received = channel.receive(end, channel.MAX_REQUEST_BYTES, 1)
    for fd in received:
        os.close(fd)
    return dict(json.loads(answer))


def test_the_loop_answers_every_bad_message_and_keeps_serving(served: socket.socket) -> None:
    assert exchange(served, b"x" * 70000)["ok"] is False  # cut short by the 4 KiB read
    assert exchange(served, b"\x00garbage")["ok"] is False
    with open(os.devnull) as sent:
        answer = exchange(served, b'{"op": "compact"}', [sent.fileno()])
    assert answer["ok"] is False and "descriptors" in answer["error"]
    assert exchange(served, b'{"op": "compact"}') == {"ok": True}


def test_a_socket_comes_back_with_its_answer(served: socket.socket) -> None:
    exchange(served, b'{"op": "prepare", "netns": "rc-i-01234567"}')
    served.sendmsg([b'{"op": "listen", "netns": "rc-i-01234567", "port": 80}'])
    answer, _, received = channel.receive(served, channel.MAX_REQUEST_BYTES, 1)
    try:
        assert json.loads(answer) == {"ok": True}
        assert len(received) == 1
        assert socket.socket(fileno=os.dup(received[0])).type == socket.SOCK_STREAM
    finally:
        for fd in received:
            os.close(fd)


# -- the IMDSv2 token key, kept across restarts ----------------------------------------------


def test_the_token_key_is_made_once_private_and_read_back_after_a_restart(tmp_path: Path) -> None:
    from agent.privileged import token_key

    path = tmp_path / "imds-token.key"
    first = token_key(path)
    assert len(first) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert token_key(path) == first  # the next agent process signs with the same key


@pytest.mark.parametrize(
    "spoil",
    [
        lambda path: path.chmod(0o644),
        lambda path: path.write_bytes(b"short"),
        lambda path: os.chown(path, 65534, 65534),
    ],
    ids=["readable by others", "wrong length", "another user's"],
)
def test_a_token_key_file_that_is_not_the_agents_is_replaced(tmp_path: Path, spoil: Any) -> None:
    from agent.privileged import token_key

    path = tmp_path / "imds-token.key"
    first = token_key(path)
    spoil(path)
    second = token_key(path)
    assert second != first and len(second) == 32
    status = path.stat()
    assert (status.st_uid, stat.S_IMODE(status.st_mode)) == (os.geteuid(), 0o600)


# -- the hello: what the serving process is given --------------------------------------------


def test_the_hello_carries_the_upstream_secret_read_by_root_and_none_without_one(
    tmp_path: Path,
) -> None:
    from dataclasses import replace

    from agent.config import AgentConfig, config_from_wire
    from agent.privileged import hello

    for name in ("ca.pem", "node.pem", "node.key"):
        (tmp_path / name).write_text(f"{name}\n")
    plain = AgentConfig(
        controller_urls=("https://127.0.0.1:8775",),
        certificate=tmp_path / "node.pem",
        key=tmp_path / "node.key",
        ca_certificate=tmp_path / "ca.pem",
    )
    assert hello(plain, {}, b"k" * 32)["upstream_secret"] is None
    secret = tmp_path / "metadata-proxy.secret"
    secret.write_bytes(b"n0va-s3cret\n")
    secret.chmod(0o600)
    forwarding = replace(
        plain, upstream_url="http://127.0.0.1:8775", upstream_shared_secret_file=secret
    )
    first = json.loads(json.dumps(hello(forwarding, {}, b"k" * 32)))
    assert bytes.fromhex(first["upstream_secret"]) == b"n0va-s3cret"
    assert config_from_wire(first["config"]) == forwarding
    assert "n0va-s3cret" not in json.dumps(first["config"])  # the file's name only


# -- plugs: a VM's tap steered into its instance's namespace -----------------------------------


def steering(broker: Broker) -> FakeSteering:
    return broker._steering  # type: ignore[no-any-return]


PLUG = {"op": "plug", "netns": "rc-i-01234567", "tap": "vnet0"}


def test_a_plug_before_the_namespace_is_prepared_is_pending_then_steered_at_prepare(
    broker: Broker,
) -> None:
    assert ask(broker, PLUG) == {"ok": True, "state": "pending"}
    assert steering(broker).installed == {}
    assert ask(broker, {"op": "prepare", "netns": "rc-i-01234567"})["ok"]
    assert steering(broker).installed == {"rc-i-01234567": "vnet0"}
    assert ask(broker, PLUG) == {"ok": True, "state": "steered"}  # the same plug: nothing to do
    assert steering(broker).calls.count(("install", "rc-i-01234567")) == 1


def test_a_plug_after_prepare_steers_at_once_and_is_recorded(
    broker: Broker, tmp_path: Path
) -> None:
    ask(broker, {"op": "prepare", "netns": "rc-i-01234567"})
    assert ask(broker, PLUG) == {"ok": True, "state": "steered"}
    record = OwnershipRecord(tmp_path / "namespaces.json")
    record.load()
    assert record.plugs["rc-i-01234567"].tap == "vnet0"
    assert record.plugs["rc-i-01234567"].tap_index == 10


def test_a_tap_plugged_for_one_namespace_is_refused_for_another(broker: Broker) -> None:
    assert ask(broker, PLUG)["ok"]
    answer = ask(broker, {**PLUG, "netns": "rc-i-89abcdef"})
    assert answer["ok"] is False and "plugged for namespace rc-i-01234567" in answer["error"]


@pytest.mark.parametrize(("kind", "said"), [("", "a physical"), ("bridge", "a bridge")])
def test_a_link_that_is_no_tap_veth_or_macvtap_is_refused(
    broker: Broker, kind: str, said: str
) -> None:
    steering(broker).host_links["eth0"] = FakeLink(2, kind)
    answer = ask(broker, {**PLUG, "tap": "eth0"})
    assert answer["ok"] is False and f"eth0 is {said} device" in answer["error"]
    assert steering(broker).installed == {} and broker.plugs == {}


def test_an_agent_veth_end_is_refused_as_a_tap_even_if_it_exists(broker: Broker) -> None:
    # (refused by its name's form, which no VM's tap has, whatever the link is)
    steering(broker).host_links["rcv0123456789ab"] = FakeLink(30, "veth")
    answer = ask(broker, {**PLUG, "tap": "rcv0123456789ab"})
    assert answer["ok"] is False and "agent's own" in answer["error"]


def test_unplug_and_release_remove_the_steering_and_release_keeps_the_plug(
    broker: Broker, tmp_path: Path
) -> None:
    ask(broker, {"op": "prepare", "netns": "rc-i-01234567"})
    ask(broker, PLUG)
    assert ask(broker, {"op": "release", "netns": "rc-i-01234567"}) == {"ok": True}
    assert steering(broker).installed == {}
    assert "rc-i-01234567" in broker.plugs  # steered again if the instance comes back
    ask(broker, {"op": "prepare", "netns": "rc-i-01234567"})
    assert steering(broker).installed == {"rc-i-01234567": "vnet0"}
    assert ask(broker, {"op": "unplug", "netns": "rc-i-01234567", "tap": "vnet0"}) == {
        "ok": True,
        "state": "unplugged",
    }
    assert steering(broker).installed == {} and broker.plugs == {}


def test_an_unplug_naming_another_tap_leaves_the_plug(broker: Broker) -> None:
    ask(broker, {"op": "prepare", "netns": "rc-i-01234567"})
    ask(broker, PLUG)
    steering(broker).host_links["vnet1"] = FakeLink(11)
    answer = ask(broker, {"op": "unplug", "netns": "rc-i-01234567", "tap": "vnet1"})
    assert answer == {"ok": True, "state": "steered"}
    assert steering(broker).installed == {"rc-i-01234567": "vnet0"}


def test_a_tap_that_vanished_or_was_replaced_is_unsteered_and_forgotten_at_compact(
    broker: Broker,
) -> None:
    ask(broker, {"op": "prepare", "netns": "rc-i-01234567"})
    ask(broker, PLUG)
    steering(broker).host_links["vnet0"] = FakeLink(99)  # same name, another device
    assert ask(broker, {"op": "compact"}) == {"ok": True}
    assert steering(broker).installed == {} and broker.plugs == {}


def test_a_replaced_tap_is_not_steered_again_at_prepare(broker: Broker) -> None:
    ask(broker, PLUG)
    del steering(broker).host_links["vnet0"]
    ask(broker, {"op": "prepare", "netns": "rc-i-01234567"})
    assert steering(broker).installed == {} and broker.plugs == {}


def test_leftover_steering_of_the_prefix_is_removed_at_compact_but_not_one_to_adopt(
    tmp_path: Path,
) -> None:
    record = OwnershipRecord(tmp_path / "namespaces.json")
    record.load()
    record.plug(Plug("rc-i-01234567", "vnet0", 10))
    record.save({"rc-i-01234567": Ownership("rc-i-01234567", True, True)})
    fake = FakeSteering()
    fake.installed = {"rc-i-01234567": "vnet0", "rc-i-0000dead": "vnet5", "other-ns": "vnet6"}
    broker = Broker(80, record, Notifier(None), FakeNamespaces(), steering=fake)
    assert ask(broker, {"op": "compact"}) == {"ok": True}
    # Its own plugged namespace is kept for the prepare to replace; another agent's (another
    # prefix, not in its record) is not its to remove.
    assert fake.installed == {"rc-i-01234567": "vnet0", "other-ns": "vnet6"}


def test_steering_into_a_namespace_that_still_exists_is_left_to_its_agent(tmp_path: Path) -> None:
    """A table with this agent's prefix, not in its record, whose namespace exists: another
    agent's with the same prefix (a second test run), or one whose namespace the sweep is about
    to look at. Not removed; the one whose namespace is gone is."""
    record = OwnershipRecord(tmp_path / "namespaces.json")
    record.load()
    fake = FakeSteering()
    fake.installed = {"rc-i-0000beef": "vnet5", "rc-i-0000dead": "vnet6"}
    namespaces = FakeNamespaces()
    namespaces.present = frozenset({"rc-i-0000beef"})
    broker = Broker(80, record, Notifier(None), namespaces, steering=fake)
    assert ask(broker, {"op": "compact"}) == {"ok": True}
    assert fake.installed == {"rc-i-0000beef": "vnet5"}


def test_after_a_restart_the_last_agents_steering_is_adopted_without_nft(tmp_path: Path) -> None:
    record = OwnershipRecord(tmp_path / "namespaces.json")
    record.load()
    record.plug(Plug("rc-i-01234567", "vnet0", 10))
    record.save({"rc-i-01234567": Ownership("rc-i-01234567", True, True)})
    fake = FakeSteering()
    fake.installed = {"rc-i-01234567": "vnet0"}
    broker = Broker(80, record, Notifier(None), FakeNamespaces(), steering=fake)
    assert ask(broker, {"op": "prepare", "netns": "rc-i-01234567"})["ok"]
    assert ("install", "rc-i-01234567") not in fake.calls
    assert ("ensure_veth", "rc-i-01234567") in fake.calls
    assert ask(broker, PLUG) == {"ok": True, "state": "steered"}
    # Prepared again (the namespace made again meanwhile): installed whole this time.
    assert ask(broker, {"op": "prepare", "netns": "rc-i-01234567"})["ok"]
    assert fake.calls.count(("install", "rc-i-01234567")) == 1


class HoldingNamespaces(FakeNamespaces):
    """A namespace that holds a VM's tap until the test removes it."""

    def __init__(self) -> None:
        super().__init__()
        self.holding: str | None = "tap-vm"
        self.removed: list[str] = []

    def release(self, ownership: Ownership) -> str | None:
        self.calls.append(("release", ownership.namespace))
        if self.holding is not None:
            return self.holding
        self.removed.append(ownership.namespace)
        return None


def test_a_namespace_holding_a_foreign_link_is_left_released_and_removed_once_empty(
    tmp_path: Path,
) -> None:
    record = OwnershipRecord(tmp_path / "namespaces.json")
    namespaces = HoldingNamespaces()
    broker = Broker(80, record, Notifier(None), namespaces, steering=FakeSteering())
    ask(broker, {"op": "prepare", "netns": "rc-i-01234567"})
    assert ask(broker, {"op": "release", "netns": "rc-i-01234567"}) == {"ok": True}
    assert broker.owned["rc-i-01234567"].released
    assert broker.serving_owned() == {}
    assert ask(broker, {"op": "listen", "netns": "rc-i-01234567", "port": 80})["ok"] is False
    ask(broker, {"op": "compact"})
    assert namespaces.removed == [] and "rc-i-01234567" in broker.owned
    # Kept across a restart as released.
    assert OwnershipRecord(record.path).load()["rc-i-01234567"].released
    namespaces.holding = None
    ask(broker, {"op": "compact"})
    assert namespaces.removed == ["rc-i-01234567"] and broker.owned == {}
    assert OwnershipRecord(record.path).load() == {}
