"""The wire between the agent's privileged process and its serving process.

One AF_UNIX SOCK_SEQPACKET socket pair: each message is one JSON object (UTF-8), with
descriptors attached by SCM_RIGHTS where a message carries them. Requests from the serving
process are at most `MAX_REQUEST_BYTES`; the privileged process reads each with a buffer one
byte larger and refuses anything cut short, not JSON, not an object, or carrying descriptors (it
closes them). Requests and answers strictly alternate; only the serving process asks.

The pure part (`decode_request`) says what a request is, or why it is refused; the rest sends and
receives.
"""

from __future__ import annotations

import array
import json
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agent.kept import MAX_ENTRY_BYTES

#: A request is a JSON object: an operation and a namespace name, a status line, or an instance's
#: entry to keep (`agent.kept`, up to its size, twice over for JSON's escapes).
MAX_REQUEST_BYTES = 2 * MAX_ENTRY_BYTES + 1024
#: The first message to the serving process (configuration, the node's certificate and key, and
#: the ownership record), and each batch of kept sockets or of kept entries after it.
MAX_HELLO_BYTES = 4 * 1024 * 1024
#: Buffer size asked for both ends, so that the hello fits in one message.
BUFFER_BYTES = 8 * 1024 * 1024
#: The kernel takes at most this many descriptors in one message (SCM_MAX_FD).
MAX_FDS_PER_MESSAGE = 253
#: How long the serving process waits for an answer (making a namespace takes milliseconds).
ANSWER_TIMEOUT_SECONDS = 30.0

#: Each operation and the fields it takes (besides "op"), with their types.
OPERATIONS: dict[str, dict[str, type]] = {
    "prepare": {"netns": str},
    "listen": {"netns": str, "port": int},
    "release": {"netns": str},
    "unstore": {"netns": str},
    "compact": {},
    "notify": {"ready": bool, "status": str, "stopping": bool},
    "orphans": {},
    "remove_orphan": {"netns": str},
    "keep": {"instance": str, "entry": str},
    "forget": {"instance": str},
    # A VM's tap for the instance served in a namespace (`agent.steer`); unplug's tap: "" for
    # whichever is plugged, else only that one.
    "plug": {"netns": str, "tap": str},
    "unplug": {"netns": str, "tap": str},
}
#: A STATUS= line for systemd: printable ASCII, short.
MAX_STATUS_CHARS = 200


class ChannelError(Exception):
    """A message could not be sent or received, or the other side is gone."""


class Refused(ValueError):
    """A request that is not one the privileged process serves; the message says why."""


@dataclass(frozen=True)
class Request:
    op: str
    fields: dict[str, Any]


def decode_request(data: bytes, truncated: bool) -> Request:
    """The request in one received message, or Refused saying why (never anything else)."""
    if truncated or len(data) > MAX_REQUEST_BYTES:
        raise Refused(f"request over {MAX_REQUEST_BYTES} bytes")
    try:
        message = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise Refused("request is not JSON") from None
    if not isinstance(message, dict):
        raise Refused("request is not a JSON object")
    op = message.pop("op", None)
    if not isinstance(op, str) or op not in OPERATIONS:
        raise Refused(f"unknown operation {str(op)[:40]!r}")
    expected = OPERATIONS[op]
    if set(message) != set(expected):
        raise Refused(f"{op} takes exactly the fields {sorted(expected)}")
    for key, kind in expected.items():
        value = message[key]
        # bool is an int to isinstance: exact types only.
        if type(value) is not kind:
            raise Refused(f"{op}: {key} must be {kind.__name__}")
    if op == "notify":
        status = message["status"]
        if len(status) > MAX_STATUS_CHARS or not all(" " <= char <= "~" for char in status):
            raise Refused(f"notify: status must be up to {MAX_STATUS_CHARS} printable characters")
    return Request(op, message)


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode("utf-8")


def send(channel: socket.socket, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
    """One message, with `fds` attached (at most `MAX_FDS_PER_MESSAGE`)."""
    ancillary = []
    if fds:
        ancillary.append((socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes()))
    try:
        channel.sendmsg([encode(message)], ancillary)
    except OSError as error:
        raise ChannelError(f"cannot send to the other agent process: {error}") from error


def receive(channel: socket.socket, limit: int, max_fds: int) -> tuple[bytes, bool, list[int]]:
    """One message: its bytes, whether it was cut short (over `limit`), and the descriptors that
    came with it (beyond `max_fds`, or when more were cut off, all are closed and ChannelError
    raised). Empty bytes and no descriptors: the other side has gone."""
    try:
        data, ancillary, flags, _ = channel.recvmsg(
            limit + 1, socket.CMSG_SPACE(max(max_fds, 1) * array.array("i").itemsize)
        )
    except OSError as error:
        raise ChannelError(f"cannot receive from the other agent process: {error}") from error
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            passed = array.array("i")
            passed.frombytes(payload[: len(payload) - len(payload) % passed.itemsize])
            fds.extend(passed)
    if len(fds) > max_fds or flags & socket.MSG_CTRUNC:
        for fd in fds:
            os.close(fd)
        raise ChannelError("a message came with more descriptors than it may carry")
    for fd in fds:
        os.set_inheritable(fd, False)
    return data, bool(flags & socket.MSG_TRUNC) or len(data) > limit, fds


def pair() -> tuple[socket.socket, socket.socket]:
    """The socket pair: (the privileged end, the serving end), close-on-exec both."""
    privileged, serving = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for end in (privileged, serving):
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            end.setsockopt(socket.SOL_SOCKET, option, BUFFER_BYTES)
    # Root may go past net.core.wmem_max (the hello is sent this way, as root).
    so_sndbufforce = getattr(socket, "SO_SNDBUFFORCE", 32)
    try:
        privileged.setsockopt(socket.SOL_SOCKET, so_sndbufforce, BUFFER_BYTES)
    except OSError:
        pass
    return privileged, serving
