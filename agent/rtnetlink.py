"""A plain rtnetlink socket for the few requests a namespace's loopback needs, with pyroute2's
message classes to encode requests and parse answers.

Separate from `agent.netns` so that only the process that makes namespaces imports pyroute2.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial
from typing import Any

from pyroute2.netlink import (
    NETLINK_ROUTE,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
)
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import (
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
)
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP, ifinfmsg
from pyroute2.netlink.rtnl.marshal import MarshalRtnl
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from agent.netlink import NetlinkSocket

#: The kernel gives every namespace's loopback this index (LOOPBACK_IFINDEX).
LOOPBACK_INDEX = 1
#: IN6_ADDR_GEN_MODE_NONE: the link gets no IPv6 link-local address (and sends nothing of its own).
_ADDR_GEN_MODE_NONE = 1
_RT_TABLE_MAIN = 254
_RTPROT_BOOT = 3
_RT_SCOPE_LINK = 253
_RTN_UNICAST = 1


@dataclass(frozen=True)
class Link:
    """What `Rtnetlink.link` says of one link."""

    index: int
    name: str
    kind: str  # "veth", "tun", "bridge"... ("" for a plain device such as lo)
    #: For a veth: its peer's index (in the peer's namespace); else 0 or the lower device.
    peer_index: int
    address: str  # the MAC address, lower-case ("" for none)
    up: bool


class Rtnetlink(NetlinkSocket):
    """A plain rtnetlink socket in the namespace the calling thread is in when it is opened (it
    stays in that one), with pyroute2's message classes to encode requests and parse answers.

    Not pyroute2's `IPRoute`: its asyncio core costs about 1.5 ms to open and as much per
    request, which a thousand namespaces turn into seconds; this does a namespace's requests in
    a fraction of a millisecond.
    """

    def __init__(self) -> None:
        super().__init__(NETLINK_ROUTE)
        self._marshal = MarshalRtnl()

    def _request(self, encode: Callable[[int], bytes]) -> list[Any]:
        """Send the request `encode(sequence)`; the messages answering it (a dump's), once the
        kernel acknowledged it or ended the dump. A refusal raises OSError with the kernel's
        errno."""
        self._sequence += 1
        self._socket.send(encode(self._sequence))
        answers: list[Any] = []
        while True:
            data = self._socket.recv(65536)
            if _plain_ack(data, self._sequence):
                return answers
            for answer in self._marshal.parse(data):
                header = answer["header"]
                if header["sequence_number"] != self._sequence:
                    continue
                error = header.get("error")
                if isinstance(error, NetlinkError):
                    raise OSError(error.code, os.strerror(error.code)) from error
                if error is not None:
                    raise error
                if header["type"] in (NLMSG_ERROR, NLMSG_DONE):
                    return answers
                answers.append(answer)

    def loopback_up(self) -> None:
        """`ip link set lo up`."""
        self._request(_loopback_up)

    def loopback_has(self, address: str) -> bool:
        """Whether the loopback has IPv4 `address`, with whatever prefix length."""
        return any(
            answer["index"] == LOOPBACK_INDEX and answer.get_attr("IFA_ADDRESS") == address
            for answer in self._request(_address_dump)
        )

    def add_to_loopback(self, address: str) -> None:
        """`ip addr add ADDRESS/32 dev lo`; EEXIST if it is there already."""
        flags = NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
        self._request(partial(_loopback_address, RTM_NEWADDR, flags, address))

    def remove_from_loopback(self, address: str) -> None:
        """`ip addr del ADDRESS/32 dev lo`."""
        self._request(partial(_loopback_address, RTM_DELADDR, NLM_F_ACK, address))

    def links(self) -> list[tuple[int, str]]:
        """Every link of the namespace: (index, name), as `ip link` lists them."""
        return [
            (answer["index"], str(answer.get_attr("IFLA_IFNAME")))
            for answer in self._request(_link_dump)
        ]

    def link(self, name: str) -> Link | None:
        """The link named `name` in this namespace, or None if there is none."""
        try:
            answers = self._request(partial(_link_by_name, name))
        except OSError as error:
            if error.errno in (errno.ENODEV, errno.ENOENT):  # no such link
                return None
            raise
        return _link(answers[0]) if answers else None

    def link_indexes(self) -> dict[str, int]:
        """Every link of the namespace: name -> index, from one dump read without pyroute2's
        parser (which takes about a millisecond a link: a node with a thousand VMs has
        thousands of links, and the agent checks its taps on every plug)."""
        self._sequence += 1
        self._socket.send(_link_dump(self._sequence))
        found: dict[str, int] = {}
        while True:
            data = self._socket.recv(1 << 20)
            offset = 0
            while offset + _NLMSG.size <= len(data):
                length, kind, _flags, sequence, _port = _NLMSG.unpack_from(data, offset)
                if length < _NLMSG.size:
                    raise OSError(errno.EPROTO, "a netlink message too short")
                if sequence == self._sequence:
                    if kind == NLMSG_DONE:
                        return found
                    if kind == NLMSG_ERROR:
                        code = struct.unpack_from("=i", data, offset + _NLMSG.size)[0]
                        raise OSError(-code, os.strerror(-code))
                    if kind == RTM_NEWLINK:
                        index, name = _index_and_name(data, offset + _NLMSG.size, offset + length)
                        if name is not None:
                            found[name] = index
                offset += (length + 3) & ~3

    def add_veth(self, name: str, peer: str, peer_address: str, peer_namespace: int) -> None:
        """`ip link add NAME type veth peer name PEER address PEER_ADDRESS netns FD`: both ends
        made at once, the peer inside the namespace open at descriptor `peer_namespace`."""
        self._request(partial(_veth, name, peer, peer_address, peer_namespace))

    def set_up(self, index: int) -> None:
        """`ip link set dev X addrgenmode none up` (no IPv6 link-local address, so the link
        sends nothing of its own)."""
        self._request(partial(_no_ipv6_link_local, index))
        self._request(partial(_up, index))

    def delete_link(self, index: int) -> None:
        """`ip link delete dev X` (a veth's peer goes with it)."""
        self._request(partial(_delete_link, index))

    def replace_default_route(self, index: int) -> None:
        """`ip route replace default dev X` (on-link, scope link)."""
        self._request(partial(_default_route, index))

    def addresses(self) -> list[tuple[int, str]]:
        """Every IPv4 and IPv6 address of the namespace: (link index, address)."""
        return [
            (answer["index"], str(answer.get_attr("IFA_ADDRESS")))
            for answer in self._request(partial(_address_dump_of, socket.AF_UNSPEC))
        ]


# The requests, encoded by pyroute2 once for each sequence number (a socket's first requests
# are numbered 1, 2, ...): encoding is most of what a request costs in Python.


def _encoded(message: Any, kind: int, flags: int, sequence: int) -> bytes:
    message["header"]["type"] = kind
    message["header"]["flags"] = NLM_F_REQUEST | flags
    message["header"]["sequence_number"] = sequence
    message.encode()
    return bytes(message.data)


@cache
def _loopback_up(sequence: int) -> bytes:
    message = ifinfmsg()
    message["index"] = LOOPBACK_INDEX
    message["flags"] = IFF_UP
    message["change"] = IFF_UP
    return _encoded(message, RTM_NEWLINK, NLM_F_ACK, sequence)


@cache
def _address_dump_of(family: int, sequence: int) -> bytes:
    message = ifaddrmsg()
    message["family"] = family
    return _encoded(message, RTM_GETADDR, NLM_F_DUMP, sequence)


_address_dump = partial(_address_dump_of, socket.AF_INET)


@cache
def _link_dump(sequence: int) -> bytes:
    message = ifinfmsg()
    message["family"] = socket.AF_UNSPEC
    return _encoded(message, RTM_GETLINK, NLM_F_DUMP, sequence)


def _link(answer: Any) -> Link:
    info = answer.get_attr("IFLA_LINKINFO")
    kind = str(info.get_attr("IFLA_INFO_KIND") or "") if info is not None else ""
    return Link(
        index=int(answer["index"]),
        name=str(answer.get_attr("IFLA_IFNAME")),
        kind=kind,
        peer_index=int(answer.get_attr("IFLA_LINK") or 0),
        address=str(answer.get_attr("IFLA_ADDRESS") or "").lower(),
        up=bool(answer["flags"] & IFF_UP),
    )


def _link_by_name(name: str, sequence: int) -> bytes:
    message = ifinfmsg()
    message["family"] = socket.AF_UNSPEC
    message["attrs"] = [["IFLA_IFNAME", name]]
    return _encoded(message, RTM_GETLINK, NLM_F_ACK, sequence)


def _veth(name: str, peer: str, peer_address: str, namespace: int, sequence: int) -> bytes:
    message = ifinfmsg()
    message["family"] = socket.AF_UNSPEC
    peer_attributes = [
        ["IFLA_IFNAME", peer],
        ["IFLA_ADDRESS", peer_address],
        ["IFLA_NET_NS_FD", namespace],
    ]
    message["attrs"] = [
        ["IFLA_IFNAME", name],
        [
            "IFLA_LINKINFO",
            {
                "attrs": [
                    ["IFLA_INFO_KIND", "veth"],
                    ["IFLA_INFO_DATA", {"attrs": [["VETH_INFO_PEER", {"attrs": peer_attributes}]]}],
                ]
            },
        ],
    ]
    return _encoded(message, RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, sequence)


def _up(index: int, sequence: int) -> bytes:
    message = ifinfmsg()
    message["index"] = index
    message["flags"] = IFF_UP
    message["change"] = IFF_UP
    return _encoded(message, RTM_NEWLINK, NLM_F_ACK, sequence)


def _no_ipv6_link_local(index: int, sequence: int) -> bytes:
    message = ifinfmsg()
    message["index"] = index
    message["attrs"] = [
        [
            "IFLA_AF_SPEC",
            {
                "attrs": [
                    ["AF_INET6", {"attrs": [["IFLA_INET6_ADDR_GEN_MODE", _ADDR_GEN_MODE_NONE]]}]
                ]
            },
        ]
    ]
    return _encoded(message, RTM_NEWLINK, NLM_F_ACK, sequence)


def _delete_link(index: int, sequence: int) -> bytes:
    message = ifinfmsg()
    message["index"] = index
    return _encoded(message, RTM_DELLINK, NLM_F_ACK, sequence)


def _default_route(index: int, sequence: int) -> bytes:
    message = rtmsg()
    message["family"] = socket.AF_INET
    message["dst_len"] = 0
    message["table"] = _RT_TABLE_MAIN
    message["proto"] = _RTPROT_BOOT
    message["scope"] = _RT_SCOPE_LINK
    message["type"] = _RTN_UNICAST
    message["attrs"] = [["RTA_OIF", index]]
    return _encoded(message, RTM_NEWROUTE, NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE, sequence)


@cache
def _loopback_address(kind: int, flags: int, address: str, sequence: int) -> bytes:
    message = ifaddrmsg()
    message["family"] = socket.AF_INET
    message["prefixlen"] = 32
    message["index"] = LOOPBACK_INDEX
    message["attrs"] = [["IFA_LOCAL", address], ["IFA_ADDRESS", address]]
    return _encoded(message, kind, flags, sequence)


_NLMSG = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
_RTATTR = struct.Struct("=HH")  # rtattr: length, type
_IFLA_IFNAME = 3


def _index_and_name(data: bytes, start: int, end: int) -> tuple[int, str | None]:
    """The index and IFLA_IFNAME of the RTM_NEWLINK message body at data[start:end]."""
    _family, _type, index, _flags, _change = _IFINFO.unpack_from(data, start)
    offset = start + _IFINFO.size
    while offset + _RTATTR.size <= end:
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < _RTATTR.size:
            break
        if kind & 0x3FFF == _IFLA_IFNAME:
            raw = data[offset + _RTATTR.size : offset + length]
            return index, raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        offset += (length + 3) & ~3
    return index, None


_HEADER = struct.Struct("=IHHIIi")  # nlmsghdr (length, type, flags, sequence, port), error


def _plain_ack(data: bytes, sequence: int) -> bool:
    """Whether `data` is exactly the kernel's "done, no error" for request `sequence` (the
    common answer, checked without pyroute2's parser)."""
    if len(data) < _HEADER.size:
        return False
    length, kind, _flags, answered, _port, error = _HEADER.unpack_from(data)
    return bool(length == len(data) and kind == NLMSG_ERROR and answered == sequence and error == 0)
