"""A request body limit for the daemons' twisted.web listeners (the node API, metrics and health).

`twisted.web.http.Request` keeps a body of any announced length, spilling to a temporary file
past 100 kB: a client announcing gigabytes fills the disk. `BodyLimit` refuses a body over
`max_body` bytes as soon as its length is announced (or, for a chunked body, as soon as it grows
past the limit): it writes the subclass's `refusal()` (a complete HTTP answer in the protocol's
own format) and hangs up unread.
"""

from __future__ import annotations

from twisted.logger import Logger
from twisted.web import http

log = Logger(namespace="rolecall.http")


class BodyLimit(http.Request):
    """Mix in first; set `max_body` and define `refusal`."""

    max_body = 1024 * 1024
    #: The body was refused: the answer is sent and the connection is closing.
    refused = False

    def refusal(self) -> bytes:
        """The whole answer to send (status line, headers ending ``Connection: close``, body)."""
        raise NotImplementedError

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.max_body:
            self._refuse()
            length = None
        super().gotLength(length)  # type: ignore[no-untyped-call]

    def handleContentChunk(self, data: bytes) -> None:
        if self.refused:
            return
        if self.content is not None and self.content.tell() + len(data) > self.max_body:
            self._refuse()
            return
        super().handleContentChunk(data)  # type: ignore[no-untyped-call]

    def _refuse(self) -> None:
        self.refused = True
        log.warn("refused a request body over {limit} bytes", limit=self.max_body)
        transport = self.channel.transport if self.channel is not None else None
        if transport is not None:
            transport.write(self.refusal())
            transport.loseConnection()
