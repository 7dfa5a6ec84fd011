"""The libvirt qemu hook (agent/hook.py): which instance and tap a domain's XML names, what each
operation does, and that nothing makes it fail a VM's start or hang."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agent.hook import ACTIONS, HookError, HookTarget, bounded, parse_domain, run_hook

INSTANCE = "i-0123456789abcdef0"


def domain(metadata: str = "", interfaces: str = "", name: str = "vm1") -> str:
    return f"""<domain type='kvm'>
  <name>{name}</name>
  <metadata>{metadata}</metadata>
  <devices>{interfaces}</devices>
</domain>"""


def element(**attributes: str) -> str:
    shown = " ".join(f"{key}='{value}'" for key, value in attributes.items())
    return f"<rolecall:instance xmlns:rolecall='urn:rolecall:libvirt:1' {shown}/>"


def interface(mac: str, tap: str | None) -> str:
    target = f"<target dev='{tap}'/>" if tap is not None else ""
    return (
        f"<interface type='bridge'><mac address='{mac}'/><source bridge='br0'/>{target}"
        "<model type='virtio'/></interface>"
    )


TWO = interface("52:54:00:00:00:01", "vnet1") + interface("52:54:00:00:00:02", "vnet2")


@pytest.mark.parametrize(
    ("xml", "guest", "expected"),
    [
        (domain(element(id=INSTANCE), TWO), "vm1", HookTarget(INSTANCE, "vnet1")),
        (
            domain(element(id=INSTANCE, mac="52:54:00:00:00:02"), TWO),
            "vm1",
            HookTarget(INSTANCE, "vnet2"),
        ),
        (
            domain(element(id=INSTANCE, mac="52:54:00:00:00:02".upper()), TWO),
            "vm1",
            HookTarget(INSTANCE, "vnet2"),
        ),
        (domain("", TWO, name=INSTANCE), INSTANCE, HookTarget(INSTANCE, "vnet1")),
        (domain(element(id=INSTANCE), interface("52:54:00:00:00:01", None)), "vm1",
         HookTarget(INSTANCE, "")),
        (domain(f"<other xmlns='urn:x'/>{element(id=INSTANCE)}", TWO), "vm1",
         HookTarget(INSTANCE, "vnet1")),
    ],
)  # fmt: skip
def test_the_instance_and_tap_come_from_the_metadata_element_or_the_domain(
    xml: str, guest: str, expected: HookTarget
) -> None:
    assert parse_domain(xml, guest) == expected


@pytest.mark.parametrize(
    ("xml", "guest", "reason"),
    [
        ("<domain", "vm1", "not XML"),
        ("", "vm1", "not XML"),
        ("<network/>", "vm1", "not a <domain>"),
        (domain("", TWO), "vm1", "no <rolecall:instance"),
        (domain("<instance id='i-01234567'/>", TWO), "vm1", "no <rolecall:instance"),
        (domain(element(id="i-XYZ"), TWO), "vm1", "instance id"),
        (domain(element(id=INSTANCE), ""), "vm1", "no <interface>"),
        (domain(element(id=INSTANCE, mac="52:54:00:00:00:09"), TWO), "vm1", "no interface with"),
        (domain(element(id=INSTANCE), interface("52:54:00:00:00:01", "a/b")), "vm1", "target"),
        (domain(element(id=INSTANCE), interface("52:54:00:00:00:01", "lo")), "vm1", "loopback"),
    ],
)
def test_a_domain_that_names_no_instance_or_usable_tap_says_why(
    xml: str, guest: str, reason: str
) -> None:
    with pytest.raises(HookError, match=reason):
        parse_domain(xml, guest)


class Recorder:
    def __init__(self, answer: dict[str, Any] | Exception) -> None:
        self.answer = answer
        self.asked: list[tuple[str, str, str]] = []

    def __call__(self, op: str, instance: str, tap: str, timeout: float) -> dict[str, Any]:
        self.asked.append((op, instance, tap))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def hook(operation: str, xml: str, ask: Recorder) -> tuple[int, str]:
    stderr = io.StringIO()
    code = run_hook("vm1", operation, io.BytesIO(xml.encode()), stderr, ask, 4.0)
    return code, stderr.getvalue()


XML = domain(element(id=INSTANCE), TWO)


@pytest.mark.parametrize(("operation", "op"), sorted(ACTIONS.items()))
def test_started_plugs_and_stopped_and_release_unplug(operation: str, op: str) -> None:
    ask = Recorder({"ok": True, "state": "steered"})
    assert hook(operation, XML, ask)[0] == 0
    assert ask.asked == [(op, INSTANCE, "vnet1")]


@pytest.mark.parametrize("operation", ["prepare", "start", "migrate", "restore", "reconnect"])
def test_every_other_operation_exits_at_once_reading_nothing(operation: str) -> None:
    ask = Recorder({"ok": True})
    stdin = io.BytesIO(XML.encode())
    assert run_hook("vm1", operation, stdin, io.StringIO(), ask, 4.0) == 0
    assert ask.asked == [] and stdin.tell() == 0


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        ({"ok": False, "error": "plug: there is no link vnet1"}, "refused: plug: there is no"),
        (OSError("no agent socket at /run/rolecall-agent/plug.sock"), "plug failed: no agent"),
    ],
)
def test_a_failed_plug_is_said_but_never_stops_the_vm(
    answer: dict[str, Any] | Exception, said: str
) -> None:
    code, stderr = hook("started", XML, Recorder(answer))
    assert code == 0 and said in stderr


def test_bad_xml_is_said_and_nothing_is_asked() -> None:
    ask = Recorder({"ok": True})
    code, stderr = hook("started", "<domain", ask)
    assert code == 0 and "not XML" in stderr and ask.asked == []


def test_an_unplug_with_no_tap_in_the_xml_unplugs_whatever_is_plugged() -> None:
    ask = Recorder({"ok": True, "state": "unplugged"})
    xml = domain(element(id=INSTANCE), interface("52:54:00:00:00:01", None))
    assert hook("release", xml, ask)[0] == 0
    assert ask.asked == [("unplug", INSTANCE, "")]


def test_a_hook_that_would_hang_is_cut_off() -> None:
    stderr = io.StringIO()

    def hang() -> int:
        time.sleep(30)
        return 1

    assert bounded(1, hang, stderr) == 0  # 1 had it run to the end
    assert "gave up after 1 s" in stderr.getvalue()


ROOT = Path(__file__).resolve().parents[2]


def test_the_shipped_domain_example_names_its_instance_and_tap() -> None:
    text = (ROOT / "libvirt" / "domain-example.xml").read_text()
    assert parse_domain(text, "anything") == HookTarget("i-0123456789abcdef0", "tap-0abcdef0")


def test_the_shipped_hook_script_hands_everything_to_rolecall_agent_hook() -> None:
    script = ROOT / "libvirt" / "qemu.d" / "rolecall"
    lines = [line for line in script.read_text().splitlines() if not line.startswith("#")]
    assert script.read_text().startswith("#!/bin/sh\n")
    assert lines == ['exec rolecall-agent hook "$@"']
    assert script.stat().st_mode & 0o111 == 0o111
    if shutil.which("shellcheck"):
        result = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout


def test_the_hook_imports_no_more_than_it_needs() -> None:
    """libvirt runs the hook at every VM start and waits for it: `rolecall-agent hook` and
    `plug` load the name checks, the plug client and the configuration's parser, never the
    metadata service, the steering (pyroute2, nf_tables) or Twisted."""
    code = (
        "import sys, agent.cli, agent.hook, agent.plug\n"
        "heavy = ('agent.imds.passthrough', 'agent.imds.tree', 'agent.steer', 'agent.netns',"
        " 'agent.nftables', 'pyroute2', 'twisted')\n"
        "print(sorted(name for name in sys.modules if name.startswith(heavy)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
