"""Steering a VM's metadata traffic into its instance's namespace (docs/operations.md, "Wiring a
VM to its metadata service").

The VM's tap stays where the cloud put it (a bridge, an OVS port). The instance's namespace gets
one veth pair to the host: `host_end` (``rcv`` and 12 hex digits) in the host namespace, enslaved
to nothing, and ``imds0`` inside, with ``default dev imds0``. One nftables table per instance
(family netdev, `table_name`) hooks the ingress of both: frames the VM sends to 169.254.169.254,
and ARP for it, go from the tap into the veth (the destination MAC rewritten to imds0's, so a
guest that routes the address through its gateway still arrives); everything the namespace sends
goes to that tap, and nowhere else. ``meta iif`` binds the tap's rules to the device's index, so
a new device that later takes the same name is never steered.

`ruleset` and `removal` are pure: they build the nft text. `install` and `remove` apply it with
one ``nft -f -`` transaction each (installing again replaces the table atomically: adoption
after a restart never duplicates a rule) and make or delete the veth with rtnetlink.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from hashlib import blake2b
from typing import TYPE_CHECKING

from agent import netns
from agent.names import check_namespace
from agent.netns import METADATA_ADDRESS, NamespaceError

if TYPE_CHECKING:
    from agent.rtnetlink import Link, Rtnetlink

#: Every steering table's name is this and the namespace's name.
TABLE_PREFIX = "rolecall-"
#: The namespace's end of the veth pair.
INSIDE = "imds0"
#: The host end of an instance's veth pair: "rcv" and 12 hex digits (15 characters, IFNAMSIZ-1).
HOST_END = re.compile(r"rcv[0-9a-f]{12}")
#: What a tap's name may be: a Linux interface name (1 to 15 characters, no "/", ":" or
#: whitespace), narrowed to characters nft takes in a quoted device name and a log line shows
#: as they are. libvirt's vnetN, Nova's tapXXXXXXXX-XX, macvtapN all fit.
TAP = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}")
#: The nft binary (nftables), found on PATH.
NFT = "nft"
#: How long one nft transaction may take (it takes milliseconds).
NFT_TIMEOUT_SECONDS = 10.0
#: The netdev ingress priority of both chains: before anything else on these devices.
PRIORITY = -500


class SteerError(NamespaceError):
    """Steering could not be installed or removed; the message says what and why."""


class InvalidTap(ValueError):
    """A tap name the agent refuses; the message says why."""


def host_end(namespace: str) -> str:
    """The host end of `namespace`'s veth pair: ``rcv`` + 12 hex digits of its name's blake2b."""
    return "rcv" + blake2b(namespace.encode("utf-8"), digest_size=6).hexdigest()


def inside_address(namespace: str) -> str:
    """imds0's MAC address: locally administered, unicast, derived from the namespace's name (so
    the ruleset is a pure function of the names, and an adopted veth can be checked)."""
    digest = blake2b(b"imds0\0" + namespace.encode("utf-8"), digest_size=5).digest()
    return ":".join(f"{byte:02x}" for byte in (0x02, *digest))


def table_name(namespace: str) -> str:
    return TABLE_PREFIX + namespace


def check_tap(value: object) -> str:
    """`value` if it may name a VM's tap: an interface name (`TAP`), not the loopback and not
    one of the agent's own veth ends."""
    if not isinstance(value, str) or not TAP.fullmatch(value):
        shown = repr(value)[:40]
        raise InvalidTap(
            f"tap {shown} is not an interface name (1 to 15 letters, digits, '_', '.' or '-',"
            " not starting with '.' or '-')"
        )
    if value == "lo":
        raise InvalidTap("tap lo: the loopback is no VM's tap")
    if HOST_END.fullmatch(value) or value == INSIDE:
        raise InvalidTap(f"tap {value}: that is one of the agent's own veth ends")
    return value


def ruleset(namespace: str, tap: str) -> str:
    """The nft transaction that installs (or replaces) `namespace`'s steering from `tap`: the
    table made if missing, deleted, and made again whole, all in one atomic transaction."""
    check_namespace(namespace)
    check_tap(tap)
    table = table_name(namespace)
    veth = host_end(namespace)
    mac = inside_address(namespace)
    return (
        f"table netdev {table} {{}}\n"
        f"delete table netdev {table}\n"
        f"table netdev {table} {{\n"
        f"\tchain tap {{\n"
        f'\t\ttype filter hook ingress device "{tap}" priority {PRIORITY}; policy accept;\n'
        f'\t\tmeta iif "{tap}" arp daddr ip {METADATA_ADDRESS} fwd to "{veth}"\n'
        f'\t\tmeta iif "{tap}" ip daddr {METADATA_ADDRESS} ether daddr set {mac}'
        f' fwd to "{veth}"\n'
        f"\t}}\n"
        f"\tchain veth {{\n"
        f'\t\ttype filter hook ingress device "{veth}" priority {PRIORITY}; policy accept;\n'
        f'\t\tfwd to "{tap}"\n'
        f"\t}}\n"
        f"}}\n"
    )


def removal(namespace: str) -> str:
    """The nft transaction that removes `namespace`'s steering table, whether it exists or not."""
    check_namespace(namespace)
    table = table_name(namespace)
    return f"table netdev {table} {{}}\ndelete table netdev {table}\n"


def steered_namespaces(listing: str) -> list[str]:
    """The namespaces whose steering tables ``nft -j list tables netdev`` lists (its output)."""
    try:
        entries = json.loads(listing)["nftables"]
    except (ValueError, KeyError, TypeError) as error:
        raise SteerError(f"cannot read nft's list of tables: {error}") from None
    found = []
    for entry in entries:
        table = entry.get("table") if isinstance(entry, dict) else None
        if not isinstance(table, dict) or table.get("family") != "netdev":
            continue
        name = table.get("name")
        if isinstance(name, str) and name.startswith(TABLE_PREFIX):
            found.append(name.removeprefix(TABLE_PREFIX))
    return sorted(found)


# -- applying it (root) --------------------------------------------------------------------------


def nft(text: str, *arguments: str) -> str:
    """Run ``nft ARGUMENTS`` (``-f -`` with `text` on its standard input when given); its
    output. SteerError naming nft's complaint when it fails."""
    argv = [NFT, *arguments] if arguments else [NFT, "-f", "-"]
    try:
        result = subprocess.run(
            argv,
            input=text,
            capture_output=True,
            text=True,
            timeout=NFT_TIMEOUT_SECONDS,
            check=True,
        )
    except FileNotFoundError:
        raise SteerError("nft not found: install nftables (the nft command)") from None
    except subprocess.TimeoutExpired:
        raise SteerError(f"nft did not answer in {NFT_TIMEOUT_SECONDS:.0f} s") from None
    except subprocess.CalledProcessError as error:
        said = " ".join((error.stderr or "").split())[:300]
        raise SteerError(f"nft refused the steering rules: {said}") from None
    return result.stdout


def _rtnetlink() -> Rtnetlink:
    from agent.rtnetlink import Rtnetlink  # see netns._rtnetlink: pyroute2 in the root process

    return Rtnetlink()


def links() -> dict[str, int]:
    """The host namespace's links: name -> index."""
    with _rtnetlink() as rtnetlink:
        return rtnetlink.link_indexes()


#: The kinds of link a VM's tap may be: a tap (the kernel's "tun" driver: QEMU, libvirt), a veth
#: (containers, the tests' stand-ins) or a macvtap. Never a physical NIC, a bridge, a bond or a
#: VLAN: steering one would divert the host's own traffic for 169.254.169.254.
TAP_KINDS = frozenset({"tun", "veth", "macvtap"})


def link_kind(name: str) -> str | None:
    """The kind of the host namespace's link `name` ("tun", "veth", "bridge"...; "" for a
    physical device or the loopback), or None if there is none."""
    with _rtnetlink() as rtnetlink:
        found = rtnetlink.link(name)
    return found.kind if found is not None else None


def link_index(name: str) -> int | None:
    """The index of the host namespace's link `name`, or None if there is none."""
    with _rtnetlink() as rtnetlink:
        found = rtnetlink.link(name)
    return found.index if found is not None else None


def _veth_is_whole(namespace: str, host: Link) -> bool:
    """Whether `host` (a link named `host_end(namespace)`) is the veth whose peer is imds0 in
    `namespace`, with the right address; brought up and routed if so."""
    if host.kind != "veth":
        return False
    with netns.inside(namespace), _rtnetlink() as inner:
        peer = inner.link(INSIDE)
        if (
            peer is None
            or peer.kind != "veth"
            or peer.peer_index != host.index
            or host.peer_index != peer.index
            or peer.address != inside_address(namespace)
        ):
            return False
        if not peer.up:
            inner.set_up(peer.index)
        inner.replace_default_route(peer.index)
    return True


def ensure_veth(namespace: str) -> bool:
    """Make `namespace`'s veth pair, up, with ``default dev imds0`` inside; an existing correct
    one is kept (after an agent restart), anything else by those names replaced. Whether it was
    made now."""
    check_namespace(namespace)
    host = host_end(namespace)
    try:
        with _rtnetlink() as root:
            found = root.link(host)
            if found is not None and _veth_is_whole(namespace, found):
                if not found.up:
                    root.set_up(found.index)
                return False
            if found is not None:
                root.delete_link(found.index)
            with netns.inside(namespace), _rtnetlink() as inner:
                stale = inner.link(INSIDE)
                if stale is not None:
                    inner.delete_link(stale.index)
            descriptor = netns.open_namespace(namespace)
            try:
                root.add_veth(host, INSIDE, inside_address(namespace), descriptor)
            finally:
                os.close(descriptor)
            made = root.link(host)
            if made is None:
                raise OSError(f"{host} vanished as it was made")
            root.set_up(made.index)
            with netns.inside(namespace), _rtnetlink() as inner:
                peer = inner.link(INSIDE)
                if peer is None:
                    raise OSError(f"{INSIDE} is not in {namespace} after it was made")
                inner.set_up(peer.index)
                inner.replace_default_route(peer.index)
    except OSError as error:
        raise SteerError(f"cannot make the veth pair of {namespace}: {error}") from error
    return True


def install(namespace: str, tap: str) -> None:
    """Steer `tap`'s metadata frames into `namespace` (which exists): the veth pair made or
    adopted, then the table installed or replaced in one transaction."""
    ensure_veth(namespace)
    nft(ruleset(namespace, tap))


def remove(namespace: str) -> None:
    """Remove `namespace`'s steering: its table (if any), then the veth pair (if any)."""
    nft(removal(namespace))
    host = host_end(namespace)
    try:
        with _rtnetlink() as root:
            found = root.link(host)
            if found is not None and found.kind == "veth":
                root.delete_link(found.index)
    except OSError as error:
        raise SteerError(f"cannot delete {host} of {namespace}: {error}") from error


def tables() -> list[str]:
    """The namespaces that have a steering table on this host (``rolecall-`` netdev tables)."""
    return steered_namespaces(nft("", "-j", "list", "tables", "netdev"))
