"""A plain netlink socket, the base of the agent's rtnetlink and nf_tables clients
(`agent.rtnetlink`, `agent.nftables`): no pyroute2 socket, no asyncio, one request at a time."""

from __future__ import annotations

import socket
from types import TracebackType
from typing import Self

#: How long a client waits for the kernel's answer (it answers at once).
TIMEOUT_SECONDS = 5.0


class NetlinkSocket:
    """A netlink socket of `protocol` in the network namespace the calling thread is in when it
    is opened (it stays in that one); closed on leaving a ``with`` block."""

    def __init__(self, protocol: int) -> None:
        self._socket = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol
        )
        try:
            self._socket.bind((0, 0))
            self._socket.settimeout(TIMEOUT_SECONDS)
        except OSError:
            self._socket.close()
            raise
        self._sequence = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._socket.close()
