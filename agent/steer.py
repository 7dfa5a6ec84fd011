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

`ruleset` and `removal` are pure: they build the nft text, the documented form of what is
installed (what ``nft list table netdev rolecall-…`` shows). `install_batch` and `removal_batch`
are the same transactions as nf_tables netlink messages, the names of the devices resolved to
their indexes as nft resolves them. `install` and `remove` send those in one atomic batch each
(installing again replaces the table: adoption after a restart never duplicates a rule), never
running nft (`agent.nftables`), and make or delete the veth with rtnetlink.
"""

from __future__ import annotations

import os
import socket
import sys
from hashlib import blake2b
from typing import TYPE_CHECKING

from agent import netns
from agent import nftables as nf
from agent.names import HOST_END as HOST_END
from agent.names import INSIDE as INSIDE
from agent.names import TAP as TAP
from agent.names import InvalidTap as InvalidTap
from agent.names import check_namespace
from agent.names import check_tap as check_tap
from agent.netns import METADATA_ADDRESS, NamespaceError

if TYPE_CHECKING:
    from agent.rtnetlink import Link, Rtnetlink

#: Every steering table's name is this and the namespace's name.
TABLE_PREFIX = "rolecall-"
#: The netdev ingress priority of both chains: before anything else on these devices.
PRIORITY = -500


class SteerError(NamespaceError):
    """Steering could not be installed or removed; the message says what and why."""


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


#: What the tap's rules match: ARP (ETH_P_ARP) and IPv4 (ETH_P_IP) as ``meta protocol`` loads
#: them (network byte order), an Ethernet device (ARPHRD_ETHER, host order) for the MAC rewrite.
_ARP = b"\x08\x06"
_IPV4 = b"\x08\x00"
_ETHERNET = (1).to_bytes(2, sys.byteorder)
#: Where the addresses are: ARP's target protocol address, IPv4's destination, Ethernet's
#: destination.
_ARP_TARGET_OFFSET = 24
_IPV4_DESTINATION_OFFSET = 16


def install_batch(namespace: str, tap: str, tap_index: int, veth_index: int) -> list[nf.Message]:
    """`ruleset(namespace, tap)` as nf_tables messages, with `tap` and the veth's host end
    resolved to `tap_index` and `veth_index`, expression for expression as nft 1.0.6 sends it
    (tests/unit/test_nftables.py, tests/netns/test_steer.py)."""
    check_namespace(namespace)
    check_tap(tap)
    table = table_name(namespace)
    veth = host_end(namespace)
    address = socket.inet_aton(METADATA_ADDRESS)
    mac = bytes.fromhex(inside_address(namespace).replace(":", ""))
    from_tap = [nf.meta_load(nf.META_IIF), nf.cmp_eq(nf.interface_index(tap_index))]
    to_veth = [nf.immediate(nf.interface_index(veth_index)), nf.forward()]
    arp = [
        nf.meta_load(nf.META_PROTOCOL),
        nf.cmp_eq(_ARP),
        nf.payload_load(nf.NETWORK_HEADER, _ARP_TARGET_OFFSET, 4),
        nf.cmp_eq(address),
    ]
    ipv4 = [
        nf.meta_load(nf.META_PROTOCOL),
        nf.cmp_eq(_IPV4),
        nf.payload_load(nf.NETWORK_HEADER, _IPV4_DESTINATION_OFFSET, 4),
        nf.cmp_eq(address),
        nf.meta_load(nf.META_IIFTYPE),
        nf.cmp_eq(_ETHERNET),
        nf.immediate(mac),
        nf.payload_write(nf.LINK_HEADER, 0, 6),
    ]
    return [
        *removal_batch(namespace),
        nf.new_table(nf.NETDEV, table),
        nf.new_base_chain(nf.NETDEV, table, "tap", nf.NF_NETDEV_INGRESS, PRIORITY, tap),
        nf.new_base_chain(nf.NETDEV, table, "veth", nf.NF_NETDEV_INGRESS, PRIORITY, veth),
        nf.new_rule(nf.NETDEV, table, "tap", [*from_tap, *arp, *to_veth], "ARP to the veth"),
        nf.new_rule(nf.NETDEV, table, "tap", [*from_tap, *ipv4, *to_veth], "IPv4 to the veth"),
        nf.new_rule(
            nf.NETDEV,
            table,
            "veth",
            [nf.immediate(nf.interface_index(tap_index)), nf.forward()],
            "all to the tap",
        ),
    ]


def removal_batch(namespace: str) -> list[nf.Message]:
    """`removal(namespace)` as nf_tables messages: the table made if missing, then deleted."""
    check_namespace(namespace)
    table = table_name(namespace)
    return [nf.new_table(nf.NETDEV, table), nf.delete_table(nf.NETDEV, table)]


def steered_namespaces(names: list[str]) -> list[str]:
    """The namespaces whose steering tables are among the netdev tables `names`."""
    return sorted(
        name.removeprefix(TABLE_PREFIX) for name in names if name.startswith(TABLE_PREFIX)
    )


# -- applying it (root) --------------------------------------------------------------------------


#: The root process's nf_tables socket and the network namespace it is in (the inode of the
#: thread's namespace), opened at the first use and kept: closing an nfnetlink socket after a
#: batch that deleted a table waits for the kernel to free it (an RCU grace period, 14 ms
#: here), which every plug and unplug would pay. The root process runs no threads.
_nftables: tuple[int, nf.Nftables] | None = None


def _namespace_inode() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def _nftables_socket() -> nf.Nftables:
    global _nftables
    here = _namespace_inode()
    if _nftables is not None and _nftables[0] != here:
        _close_nftables()
    if _nftables is None:
        _nftables = (here, nf.Nftables())
    return _nftables[1]


def _close_nftables() -> None:
    global _nftables
    if _nftables is not None:
        _nftables[1].close()
        _nftables = None


def _commit(messages: list[nf.Message], what: str) -> None:
    """Send `messages` in one batch; SteerError saying `what` failed and what the kernel said."""
    try:
        _nftables_socket().commit(messages)
    except OSError as error:
        _close_nftables()  # a new socket next time: no late answer can be taken for another's
        raise SteerError(f"cannot {what}: {error.strerror or error}") from error


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


def install(namespace: str, tap: str, tap_index: int | None = None) -> None:
    """Steer `tap`'s metadata frames into `namespace` (which exists): the veth pair made or
    adopted, then the table installed or replaced in one transaction, its rules bound to the
    indexes the tap and the veth's host end have now. With `tap_index`, only if the tap is still
    that device (the one that was plugged)."""
    check_namespace(namespace)
    check_tap(tap)
    found = link_index(tap)
    if found is None:
        raise SteerError(f"cannot steer {tap} into {namespace}: there is no link {tap}")
    if tap_index is not None and found != tap_index:
        raise SteerError(
            f"cannot steer {tap} into {namespace}: {tap} is another device now"
            f" (index {found}, plugged as {tap_index})"
        )
    ensure_veth(namespace)
    veth = host_end(namespace)
    veth_index = link_index(veth)
    if veth_index is None:
        raise SteerError(f"cannot steer {tap} into {namespace}: {veth} vanished")
    _commit(
        install_batch(namespace, tap, found, veth_index),
        f"install the steering of {tap} into {namespace}",
    )


def remove(namespace: str) -> None:
    """Remove `namespace`'s steering: its table (if any), then the veth pair (if any)."""
    _commit(removal_batch(namespace), f"remove the steering table of {namespace}")
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
    try:
        names = _nftables_socket().table_names(nf.NETDEV)
    except OSError as error:
        _close_nftables()
        raise SteerError(f"cannot list the steering tables: {error.strerror or error}") from error
    return steered_namespaces(names)
