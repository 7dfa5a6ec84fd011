"""A plain rtnetlink socket for the few requests a namespace's loopback needs, with pyroute2's
message classes to encode requests and parse answers.

Separate from `agent.netns` so that only the process that makes namespaces imports pyroute2.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable
from functools import cache, partial
from types import TracebackType
from typing import Any

from pyroute2.netlink import (
    NETLINK_ROUTE,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
)
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import (
    RTM_DELADDR,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_NEWADDR,
    RTM_NEWLINK,
)
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP, ifinfmsg
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

#: The kernel gives every namespace's loopback this index (LOOPBACK_IFINDEX).
LOOPBACK_INDEX = 1
_NETLINK_TIMEOUT_SECONDS = 5.0


class Rtnetlink:
    """A plain rtnetlink socket in the namespace the calling thread is in when it is opened (it
    stays in that one), with pyroute2's message classes to encode requests and parse answers.

    Not pyroute2's `IPRoute`: its asyncio core costs about 1.5 ms to open and as much per
    request, which a thousand namespaces turn into seconds; this does a namespace's requests in
    a fraction of a millisecond.
    """

    def __init__(self) -> None:
        self._socket = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE
        )
        try:
            self._socket.bind((0, 0))
            self._socket.settimeout(_NETLINK_TIMEOUT_SECONDS)  # the kernel answers at once
        except OSError:
            self._socket.close()
            raise
        self._marshal = MarshalRtnl()
        self._sequence = 0

    def __enter__(self) -> Rtnetlink:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._socket.close()

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


@cache
def _loopback_address(kind: int, flags: int, address: str, sequence: int) -> bytes:
    message = ifaddrmsg()
    message["family"] = socket.AF_INET
    message["prefixlen"] = 32
    message["index"] = LOOPBACK_INDEX
    message["attrs"] = [["IFA_LOCAL", address], ["IFA_ADDRESS", address]]
    return _encoded(message, kind, flags, sequence)


_HEADER = struct.Struct("=IHHIIi")  # nlmsghdr (length, type, flags, sequence, port), error


def _plain_ack(data: bytes, sequence: int) -> bool:
    """Whether `data` is exactly the kernel's "done, no error" for request `sequence` (the
    common answer, checked without pyroute2's parser)."""
    if len(data) < _HEADER.size:
        return False
    length, kind, _flags, answered, _port, error = _HEADER.unpack_from(data)
    return bool(length == len(data) and kind == NLMSG_ERROR and answered == sequence and error == 0)
