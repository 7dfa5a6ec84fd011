"""``rolecall-agent hook GUEST OP SUBOP [EXTRA...]``: the libvirt qemu hook
(``libvirt/qemu.d/rolecall``), with the domain's XML on standard input.

``started`` plugs the VM's tap for its instance, ``stopped`` and ``release`` unplug it; every
other operation exits 0 at once, reading nothing (and printing nothing: for ``migrate`` and
``restore`` libvirt takes a hook's output as the domain XML, empty meaning unchanged).

The instance is the ``id`` of ``<rolecall:instance xmlns:rolecall="urn:rolecall:libvirt:1"/>``
in the domain's ``<metadata>``, else the domain's name if it is an instance id; the tap is the
``<target dev>`` of the interface whose MAC that element names (``mac="…"``), else of the first
``<interface>``. The hook never calls libvirt (libvirt waits for it: a deadlock) and always exits
0 for these operations too: a failing ``started`` hook makes libvirt stop the VM, and a VM must
not die because its metadata service could not be wired (the agent restarting, say); the failure
is said on standard error and in the agent's log. The whole run is bounded by
`HOOK_SECONDS`.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import IO, Any
from xml.etree import ElementTree

from agent.names import INSTANCE_ID, InvalidName, InvalidTap, check_instance_id, check_tap

#: The XML namespace of RoleCall's element in a domain's <metadata>.
METADATA_NAMESPACE = "urn:rolecall:libvirt:1"
#: libvirt's qemu hook operations the hook acts on, and what it asks the agent.
ACTIONS = {"started": "plug", "stopped": "unplug", "release": "unplug"}
#: The most a hook run may take, all included (libvirt waits for it).
HOOK_SECONDS = 5
#: The largest domain XML read (a domain's XML is a few KiB).
MAX_XML_BYTES = 1024 * 1024


class HookError(ValueError):
    """The domain XML does not say which instance or tap; the message says why."""


@dataclass(frozen=True)
class HookTarget:
    instance_id: str
    #: The VM's tap; "" when the XML names none (an unplug then takes whatever is plugged).
    tap: str


def parse_domain(text: str, guest: str) -> HookTarget:
    """The instance and tap a domain's XML names (see the module's docstring); HookError if
    the XML is not a domain, names no instance, or (`tap` "") names no usable tap."""
    # From libvirtd (root), bounded to MAX_XML_BYTES; Python's expat fetches no external
    # entities and (expat >= 2.4.1) stops entity-expansion bombs.
    try:
        root = ElementTree.fromstring(text)  # noqa: S314
    except ElementTree.ParseError as error:
        raise HookError(f"the domain XML on standard input is not XML: {error}") from None
    if root.tag != "domain":
        raise HookError(f"the XML on standard input is a <{root.tag[:40]}>, not a <domain>")
    element = root.find(f"metadata/{{{METADATA_NAMESPACE}}}instance")
    instance_id = element.get("id") if element is not None else None
    mac = (element.get("mac") or "").strip().lower() if element is not None else ""
    if instance_id is None:
        if not INSTANCE_ID.fullmatch(guest):
            raise HookError(
                f"domain {guest[:80]!r} has no <rolecall:instance id=…> in its <metadata>"
                f" (xmlns:rolecall={METADATA_NAMESPACE!r}) and its name is no instance id"
            )
        instance_id = guest
    try:
        check_instance_id(instance_id)
    except InvalidName as error:
        raise HookError(f"<rolecall:instance>: {error}") from None
    interfaces = root.findall("devices/interface")
    if mac:
        chosen = [interface for interface in interfaces if _mac_of(interface) == mac]
        if not chosen:
            raise HookError(f"{instance_id}: the domain has no interface with MAC {mac[:40]}")
    else:
        chosen = interfaces[:1]
        if not chosen:
            raise HookError(f"{instance_id}: the domain has no <interface>")
    target = chosen[0].find("target")
    dev = target.get("dev") if target is not None else None
    if not dev:
        return HookTarget(instance_id, "")
    try:
        return HookTarget(instance_id, check_tap(dev))
    except InvalidTap as error:
        raise HookError(f"{instance_id}: <target dev>: {error}") from None


def _mac_of(interface: ElementTree.Element) -> str:
    found = interface.find("mac")
    return (found.get("address") or "").strip().lower() if found is not None else ""


Ask = Callable[[str, str, str, float], dict[str, Any]]


def run_hook(
    guest: str, operation: str, stdin: IO[bytes], stderr: IO[str], ask: Ask, timeout: float
) -> int:
    """One hook run: plug or unplug as `operation` says, through `ask(op, instance, tap,
    timeout)`; the exit status (0 always: see the module's docstring). Says what it did, or
    why not, on `stderr`."""
    action = ACTIONS.get(operation)
    if action is None:
        return 0
    text = stdin.read(MAX_XML_BYTES + 1)
    if len(text) > MAX_XML_BYTES:
        stderr.write(
            f"rolecall-agent hook: {guest}: the domain XML is over {MAX_XML_BYTES} bytes\n"
        )
        return 0
    try:
        target = parse_domain(text.decode("utf-8", errors="replace"), guest)
    except HookError as error:
        stderr.write(f"rolecall-agent hook: {guest} {operation}: not wired: {error}\n")
        return 0
    if action == "plug" and not target.tap:
        stderr.write(
            f"rolecall-agent hook: {guest} {operation}: not wired: the interface has no"
            " <target dev> (libvirt names the tap once the domain runs)\n"
        )
        return 0
    try:
        answer = ask(action, target.instance_id, target.tap, timeout)
    except Exception as error:  # unreachable agent, timeout: said, never fatal to the VM
        stderr.write(f"rolecall-agent hook: {guest} {operation}: {action} failed: {error}\n")
        return 0
    if not answer.get("ok"):
        stderr.write(
            f"rolecall-agent hook: {guest} {operation}: {action} {target.instance_id}"
            f" {target.tap or '-'} refused: {answer.get('error', 'no reason given')}\n"
        )
        return 0
    stderr.write(
        f"rolecall-agent hook: {action} {target.instance_id} {target.tap or '-'}:"
        f" {answer.get('state', '')}\n"
    )
    return 0


class _OutOfTime(Exception):
    pass


def bounded(seconds: int, work: Callable[[], int], stderr: IO[str]) -> int:
    """`work()`, cut off after `seconds` (SIGALRM) with a message and status 0."""

    def expire(signum: int, frame: FrameType | None) -> None:
        raise _OutOfTime

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        return work()
    except _OutOfTime:
        stderr.write(f"rolecall-agent hook: gave up after {seconds} s\n")
        return 0
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def main_hook(
    guest: str, operation: str, ask: Ask, stdin: IO[bytes] | None = None
) -> int:  # pragma: no cover - the CLI's glue
    source = stdin if stdin is not None else sys.stdin.buffer
    return bounded(
        HOOK_SECONDS,
        lambda: run_hook(guest, operation, source, sys.stderr, ask, HOOK_SECONDS - 1.0),
        sys.stderr,
    )
