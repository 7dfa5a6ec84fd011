"""nf_tables over a plain netlink socket: the few messages the steering needs (a table, netdev
base chains, rules of meta, cmp, payload, immediate and fwd expressions), sent as one atomic
batch, and the list of tables.

Not the ``nft`` binary: nftables 1.0.6 reads every table on the host into its cache before each
command, so a plug among 500 steered instances cost a 280 MB process and 0.2 s
(docs/decisions.md). Not pyroute2's nftsocket classes either: in pyroute2 0.9.7 encoding a
``fwd`` expression fails (its attribute map names a type that does not exist) and nested
attributes lack NLA_F_NESTED. The messages are encoded here with `struct`, attribute for
attribute as nft 1.0.6 encodes the same rules (tests/unit/test_nftables.py holds its bytes).

The encoders are pure; `Nftables` is the socket.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from agent.netlink import TIMEOUT_SECONDS, NetlinkSocket

NETLINK_NETFILTER = 12
#: nfnetlink's subsystem of nf_tables (NFNL_SUBSYS_NFTABLES): the high byte of a message type.
SUBSYSTEM = 10
NFNL_MSG_BATCH_BEGIN = 16
NFNL_MSG_BATCH_END = 17
NFT_MSG_NEWTABLE = 0
NFT_MSG_GETTABLE = 1
NFT_MSG_DELTABLE = 2
NFT_MSG_NEWCHAIN = 3
NFT_MSG_NEWRULE = 6
#: The netdev family (NFPROTO_NETDEV): chains on a device's ingress.
NETDEV = 5
NF_NETDEV_INGRESS = 0
NF_ACCEPT = 1

NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300
NLM_F_CREATE = 0x400
NLM_F_APPEND = 0x800
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLA_F_NESTED = 0x8000

#: The first of the four 16-byte registers (NFT_REG_1), as nft uses it.
REGISTER_1 = 1
#: `meta` keys (NFT_META_*).
META_PROTOCOL = 1
META_IIF = 4
META_IIFTYPE = 8
#: `payload` bases (NFT_PAYLOAD_*_HEADER).
LINK_HEADER = 0
NETWORK_HEADER = 1
CMP_EQ = 0

_NLMSG = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port
_ATTRIBUTE = struct.Struct("=HH")  # nlattr: length, type
#: Attempts at a table dump that the kernel marks interrupted (a change during the dump).
_DUMP_ATTEMPTS = 5

# Attribute types (include/uapi/linux/netfilter/nf_tables.h).
_TABLE_NAME, _TABLE_FLAGS = 1, 2
_CHAIN_TABLE, _CHAIN_NAME, _CHAIN_HOOK, _CHAIN_POLICY, _CHAIN_TYPE = 1, 3, 4, 5, 7
_HOOK_HOOKNUM, _HOOK_PRIORITY, _HOOK_DEV = 1, 2, 3
_RULE_TABLE, _RULE_CHAIN, _RULE_EXPRESSIONS = 1, 2, 4
_LIST_ELEM = 1
_EXPR_NAME, _EXPR_DATA = 1, 2
_DATA_VALUE = 1
_META_DREG, _META_KEY = 1, 2
_CMP_SREG, _CMP_OP, _CMP_DATA = 1, 2, 3
_PAYLOAD_DREG, _PAYLOAD_BASE, _PAYLOAD_OFFSET, _PAYLOAD_LEN, _PAYLOAD_SREG = 1, 2, 3, 4, 5
_IMMEDIATE_DREG, _IMMEDIATE_DATA = 1, 2
_FWD_SREG_DEV = 1


@dataclass(frozen=True)
class Message:
    """One nf_tables request of a batch: its type (NFT_MSG_*), netlink flags besides REQUEST
    and ACK, family, attributes (encoded), and what it is, for errors."""

    kind: int
    flags: int
    family: int
    attributes: bytes
    label: str


class TransactionError(OSError):
    """The kernel refused a batch (nothing of it applied) or could not be asked; `errno` is the
    kernel's, the message names the request it refused."""


# -- encoding (pure) ------------------------------------------------------------------------------


def attribute(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    length = _ATTRIBUTE.size + len(payload)
    return _ATTRIBUTE.pack(length, kind) + payload + b"\0" * (-length % 4)


def nested(kind: int, *attributes: bytes) -> bytes:
    return attribute(kind | NLA_F_NESTED, b"".join(attributes))


def string(kind: int, value: str) -> bytes:
    return attribute(kind, value.encode("utf-8") + b"\0")


def be32(kind: int, value: int) -> bytes:
    return attribute(kind, struct.pack(">i" if value < 0 else ">I", value))


def new_table(family: int, name: str) -> Message:
    """Make table `name` if it is missing (``table FAMILY NAME {}``: an existing one is kept)."""
    body = string(_TABLE_NAME, name) + be32(_TABLE_FLAGS, 0)
    return Message(NFT_MSG_NEWTABLE, 0, family, body, f"NEWTABLE {name}")


def delete_table(family: int, name: str) -> Message:
    """Delete table `name` and all it holds (ENOENT if it is missing)."""
    return Message(NFT_MSG_DELTABLE, 0, family, string(_TABLE_NAME, name), f"DELTABLE {name}")


def new_base_chain(
    family: int, table: str, name: str, hook: int, priority: int, device: str
) -> Message:
    """A base chain of type filter, policy accept, on `hook` of `device`."""
    body = (
        string(_CHAIN_TABLE, table)
        + string(_CHAIN_NAME, name)
        + string(_CHAIN_TYPE, "filter")
        + be32(_CHAIN_POLICY, NF_ACCEPT)
        + nested(
            _CHAIN_HOOK,
            be32(_HOOK_HOOKNUM, hook),
            be32(_HOOK_PRIORITY, priority),
            string(_HOOK_DEV, device),
        )
    )
    label = f"NEWCHAIN {name} of table {table} on device {device}"
    return Message(NFT_MSG_NEWCHAIN, NLM_F_CREATE, family, body, label)


def new_rule(
    family: int, table: str, chain: str, expressions: Sequence[bytes], label: str
) -> Message:
    """A rule appended to `chain`: `expressions` (each from `expression`) in order."""
    body = (
        string(_RULE_TABLE, table)
        + string(_RULE_CHAIN, chain)
        + nested(_RULE_EXPRESSIONS, *expressions)
    )
    return Message(
        NFT_MSG_NEWRULE,
        NLM_F_CREATE | NLM_F_APPEND,
        family,
        body,
        f"NEWRULE in chain {chain} of table {table} ({label})",
    )


def expression(name: str, *attributes: bytes) -> bytes:
    return nested(_LIST_ELEM, string(_EXPR_NAME, name), nested(_EXPR_DATA, *attributes))


def meta_load(key: int, register: int = REGISTER_1) -> bytes:
    """``meta load KEY => reg``."""
    return expression("meta", be32(_META_KEY, key), be32(_META_DREG, register))


def cmp_eq(value: bytes, register: int = REGISTER_1) -> bytes:
    """``cmp eq reg VALUE``."""
    return expression(
        "cmp",
        be32(_CMP_SREG, register),
        be32(_CMP_OP, CMP_EQ),
        nested(_CMP_DATA, attribute(_DATA_VALUE, value)),
    )


def payload_load(base: int, offset: int, length: int, register: int = REGISTER_1) -> bytes:
    """``payload load LENGTHb @ BASE + OFFSET => reg``."""
    return expression(
        "payload",
        be32(_PAYLOAD_DREG, register),
        be32(_PAYLOAD_BASE, base),
        be32(_PAYLOAD_OFFSET, offset),
        be32(_PAYLOAD_LEN, length),
    )


def payload_write(base: int, offset: int, length: int, register: int = REGISTER_1) -> bytes:
    """``payload write reg => LENGTHb @ BASE + OFFSET`` (no checksum to update)."""
    return expression(
        "payload",
        be32(_PAYLOAD_SREG, register),
        be32(_PAYLOAD_BASE, base),
        be32(_PAYLOAD_OFFSET, offset),
        be32(_PAYLOAD_LEN, length),
    )


def immediate(value: bytes, register: int = REGISTER_1) -> bytes:
    """``immediate reg VALUE``."""
    return expression(
        "immediate",
        be32(_IMMEDIATE_DREG, register),
        nested(_IMMEDIATE_DATA, attribute(_DATA_VALUE, value)),
    )


def forward(register: int = REGISTER_1) -> bytes:
    """``fwd sreg_dev reg``: the frame leaves by the device whose index is in the register."""
    return expression("fwd", be32(_FWD_SREG_DEV, register))


def interface_index(index: int) -> bytes:
    """An interface index as `meta iif` loads it and `fwd` reads it (host byte order)."""
    return struct.pack("=I", index)


def _nfgenmsg(family: int, resource: int = 0) -> bytes:
    return struct.pack("=BB", family, 0) + struct.pack(">H", resource)


def _framed(kind: int, flags: int, sequence: int, body: bytes) -> bytes:
    return _NLMSG.pack(_NLMSG.size + len(body), kind, flags, sequence, 0) + body


def batch(messages: Sequence[Message], first: int) -> bytes:
    """`messages` between BATCH_BEGIN (sequence `first`) and BATCH_END, each a request with
    NLM_F_ACK numbered `first` + 1, + 2, ...: the kernel applies all of them or none."""
    parts = [_framed(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, first, _nfgenmsg(0, SUBSYSTEM))]
    for offset, message in enumerate(messages, 1):
        parts.append(
            _framed(
                SUBSYSTEM << 8 | message.kind,
                NLM_F_REQUEST | NLM_F_ACK | message.flags,
                first + offset,
                _nfgenmsg(message.family) + message.attributes,
            )
        )
    end = first + len(messages) + 1
    parts.append(_framed(NFNL_MSG_BATCH_END, NLM_F_REQUEST, end, _nfgenmsg(0, SUBSYSTEM)))
    return b"".join(parts)


def table_dump(family: int, sequence: int) -> bytes:
    """The request for every table of `family`."""
    kind = SUBSYSTEM << 8 | NFT_MSG_GETTABLE
    return _framed(kind, NLM_F_REQUEST | NLM_F_DUMP, sequence, _nfgenmsg(family))


def messages_in(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """The netlink messages in `data`: (type, flags, sequence, body after the header)."""
    found = []
    offset = 0
    while offset + _NLMSG.size <= len(data):
        length, kind, flags, sequence, _port = _NLMSG.unpack_from(data, offset)
        if length < _NLMSG.size or offset + length > len(data):
            raise TransactionError(errno.EPROTO, "a truncated netlink message from nf_tables")
        found.append((kind, flags, sequence, data[offset + _NLMSG.size : offset + length]))
        offset += (length + 3) & ~3
    return found


def attributes_of(body: bytes) -> dict[int, bytes]:
    """The attributes of an nf_tables message body (after its 4-byte nfgenmsg): type -> payload."""
    found = {}
    offset = 4
    while offset + _ATTRIBUTE.size <= len(body):
        length, kind = _ATTRIBUTE.unpack_from(body, offset)
        if length < _ATTRIBUTE.size:
            break
        found[kind & ~NLA_F_NESTED] = body[offset + _ATTRIBUTE.size : offset + length]
        offset += (length + 3) & ~3
    return found


def acknowledged(
    answers: Sequence[tuple[int, int, int, bytes]],
    first: int,
    waiting: set[int],
    refused: dict[int, int],
) -> None:
    """Take the kernel's answers to the batch begun at sequence `first`: each request answered
    leaves `waiting`, and goes into `refused` with its errno if it was refused (the kernel
    answers every request of a failed batch, then applies none). TransactionError if it refused
    the batch as a whole (no permission, say)."""
    for kind, _flags, sequence, body in answers:
        if kind != NLMSG_ERROR or len(body) < 4:
            continue
        code = -struct.unpack_from("=i", body)[0]
        if sequence == first and code:
            raise TransactionError(code, f"nf_tables refused the batch: {error_text(code)}")
        if sequence in waiting:
            waiting.discard(sequence)
            if code:
                refused[sequence] = code


def refusal(
    messages: Sequence[Message], first: int, refused: dict[int, int]
) -> TransactionError | None:
    """The error for a batch begun at `first` whose requests `refused` lists (sequence ->
    errno), naming the first: those after it may fail only because of it."""
    if not refused:
        return None
    sequence = min(refused)
    code = refused[sequence]
    number = sequence - first
    return TransactionError(
        code,
        f"nf_tables refused {messages[number - 1].label} (request {number} of {len(messages)}):"
        f" {error_text(code)}; nothing of the batch was applied",
    )


def error_text(code: int) -> str:
    """``No such device (ENODEV)`` for 19."""
    return f"{os.strerror(code)} ({errno.errorcode.get(code, code)})"


# -- the socket -----------------------------------------------------------------------------------


class Nftables(NetlinkSocket):
    """A plain nfnetlink socket in the namespace the calling thread is in when it is opened.
    Closing it after a batch that deleted a table waits for the kernel to free that table (some
    14 ms): keep one socket open rather than one per batch."""

    def __init__(self) -> None:
        super().__init__(NETLINK_NETFILTER)

    def _receive(self) -> list[tuple[int, int, int, bytes]]:
        try:
            return messages_in(self._socket.recv(1 << 20))
        except TimeoutError:
            raise TransactionError(
                errno.ETIMEDOUT, f"nf_tables did not answer in {TIMEOUT_SECONDS:.0f} s"
            ) from None

    def commit(self, messages: Sequence[Message]) -> None:
        """Apply `messages` as one transaction: all or nothing. TransactionError naming the
        first request the kernel refused, with its errno."""
        first = self._sequence + 1
        self._sequence += len(messages) + 2
        self._socket.send(batch(messages, first))
        waiting = set(range(first + 1, first + 1 + len(messages)))
        refused: dict[int, int] = {}
        while waiting:
            acknowledged(self._receive(), first, waiting, refused)
        error = refusal(messages, first, refused)
        if error is not None:
            raise error

    def table_names(self, family: int) -> list[str]:
        """The names of every table of `family`, as the kernel dumps them."""
        for _attempt in range(_DUMP_ATTEMPTS):
            self._sequence += 1
            self._socket.send(table_dump(family, self._sequence))
            names: list[str] = []
            interrupted = False
            done = False
            while not done:
                for kind, flags, sequence, body in self._receive():
                    if sequence != self._sequence:
                        continue
                    interrupted |= bool(flags & NLM_F_DUMP_INTR)
                    if kind == NLMSG_DONE:
                        done = True
                    elif kind == NLMSG_ERROR:
                        code = -struct.unpack_from("=i", body)[0]
                        raise TransactionError(
                            code, f"nf_tables refused the list of tables: {error_text(code)}"
                        )
                    elif kind == SUBSYSTEM << 8 | NFT_MSG_NEWTABLE and body[:1] == bytes([family]):
                        name = attributes_of(body).get(_TABLE_NAME)
                        if name is not None:
                            names.append(name.split(b"\0", 1)[0].decode("utf-8", "replace"))
            if not interrupted:
                return names
        raise TransactionError(errno.EINTR, "the list of tables kept changing while it was read")
