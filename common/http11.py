"""The HTTP/1.1 server of both daemons (the public API, the node API, the metadata service and
the metrics listeners): a Twisted `Protocol` around httptools' parser.

httptools (MagicStack's bindings to llhttp, Node.js's HTTP parser, as uvicorn uses) parses the
request line, headers, bodies (by length or chunked) and keep-alive; this module keeps a
connection's rules: limits on the head (size, header count) and body, ``Expect: 100-continue``,
the idle timeout, answering pipelined requests in order, and a minimal answer then a hang-up for
anything that is not a well-formed HTTP/1.x request (a parser error, an upgrade, an oversized
head).

A handler answers a plain `Request` with a `Response`, at once, or with a ``Deferred`` that
fires with one later (the node API's long poll). An answer given at once is written at once.
While one is awaited the connection keeps reading, so a client that hangs up is noticed and the
awaited answer cancelled; requests pipelined behind it wait, parsed, with reading paused, and
are answered in order once it is written; the idle and head timeouts wait too.

Why not Twisted's channel (`twisted.web.http.HTTPChannel`): on the public port it parsed line by
line in Python and built a `Headers` object and a full `http.Request` per request, about 27% of
an AssumeRole's CPU; see docs/decisions.md, "The public port's HTTP parser".
"""

from __future__ import annotations

import typing
from collections import deque
from collections.abc import Callable, Sequence
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, cast

import httptools
from twisted import copyright
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IProtocolNegotiationFactory,
    IReactorTime,
    ISSLTransport,
)
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

if TYPE_CHECKING:
    from cryptography.x509 import Certificate
    from OpenSSL.crypto import X509

log = Logger(namespace="rolecall.http")


class _Connection(typing.Protocol):
    """What this protocol uses of its transport: a TCP (or TLS) connection, a consumer of this
    protocol's producing, and a producer the protocol pauses (ITCPTransport, IConsumer and
    IPushProducer at once, as `twisted.internet.tcp.Connection` is)."""

    def write(self, data: bytes) -> None: ...

    def loseConnection(self) -> None: ...

    def abortConnection(self) -> None: ...

    def getPeer(self) -> IAddress: ...

    def getHost(self) -> IAddress: ...

    def registerProducer(self, producer: object, streaming: bool) -> None: ...

    def unregisterProducer(self) -> None: ...

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...


#: A request head (request line and headers) larger than this is refused 431 (414 for the URL).
MAX_HEAD_BYTES = 16 * 1024
#: A request with more header lines than this is refused 431.
MAX_HEADERS = 100
#: A connection with no data in this many seconds is closed, as twisted.web closes it.
IDLE_TIMEOUT = 60.0
#: A timed-out connection whose answers are still unread after this long is aborted.
ABORT_TIMEOUT = 15.0
#: A request head must be complete this many seconds after the read that began it; more bytes
#: do not extend it (a client dripping a byte every few seconds would hold the connection for
#: good against the idle timeout alone). Past it: 408 and the connection is closed.
HEAD_TIMEOUT = 10.0


class Request:
    """One parsed request: a plain value the handler reads and never writes."""

    __slots__ = ("body", "clientproto", "headers", "host", "method", "peer", "secure", "uri")

    def __init__(
        self,
        method: bytes,
        uri: bytes,
        clientproto: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        peer: IAddress,
        host: IAddress,
        secure: bool,
    ) -> None:
        self.method = method
        #: The request target as sent (path and query).
        self.uri = uri
        self.clientproto = clientproto
        #: The header lines as received, in order, names in the case they came in.
        self.headers = headers
        self.body = body
        self.peer = peer
        self.host = host
        self.secure = secure

    def header_values(self, name: bytes) -> list[bytes]:
        """Every value of the header `name` (any case), in the order received."""
        wanted = name.lower()
        return [value for line, value in self.headers if line.lower() == wanted]

    def header(self, name: bytes) -> bytes | None:
        """The last value of the header `name` (any case), as twisted.web's getHeader gives it."""
        values = self.header_values(name)
        return values[-1] if values else None


class Response:
    """An answer: the status, the handler's header lines and the body. The protocol adds
    ``Server``, ``Date``, ``Connection`` and ``Content-Length`` (the body's length, unless the
    handler sent one: a HEAD answer may carry its GET's)."""

    __slots__ = ("body", "headers", "status")

    def __init__(
        self, status: int, headers: Sequence[tuple[bytes, bytes]] = (), body: bytes = b""
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def __repr__(self) -> str:
        return f"Response({self.status}, {list(self.headers)!r}, {len(self.body)} bytes)"


#: What a request handler is: a plain request in, a plain answer out, now or later (a Deferred
#: that fires with it). The protocol is passed too, for what belongs to the connection (its
#: socket, the TLS client's certificate).
Handler = Callable[[Request, "Http11Protocol"], "Response | Deferred[Response]"]

#: What the daemons' HTTP listeners send as ``Server`` unless the handler names itself (the
#: metadata service does): twisted.web's, which they all once were, kept so answers look the same.
SERVER = b"TwistedWeb/" + copyright.version.encode("ascii")


def status_line(code: int) -> bytes:
    try:
        phrase = HTTPStatus(code).phrase
    except ValueError:
        phrase = "Unknown Status"
    return b"HTTP/1.1 %d %s\r\n" % (code, phrase.encode("ascii"))


_STATUS_LINES = {status.value: status_line(status.value) for status in HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
#: The versions served, as httptools names them and as a request's ``clientproto``.
_VERSIONS = {"1.1": b"HTTP/1.1", "1.0": b"HTTP/1.0"}


def short_answer(code: int) -> bytes:
    """An answer with no body that closes the connection: for requests the handler never sees."""
    return status_line(code) + b"Content-Length: 0\r\nConnection: close\r\n\r\n"


class ConnectionLimit:
    """At most ``limit`` connections at once through the ports it watches. At the limit they
    stop accepting, so new connections wait in the kernel's backlog rather than take a
    descriptor each, and accept again as soon as one closes; a connection accepted in the same
    batch of accepts past the limit is closed at once (``admits``). Shared by several ports
    (an agent's global limit) or owned by one (an instance's, the public API's)."""

    def __init__(self, limit: int, tally: dict[str, int] | None = None) -> None:
        if limit < 1:
            raise ValueError(f"a connection limit must be at least 1, not {limit}")
        self.limit = limit
        self.open = 0
        #: Times the limit was reached (accepting paused), and connections closed unserved.
        self.pauses = 0
        self.refused = 0
        #: Where many short-lived limits add up the same two counts (``reached``, ``refused``).
        self._tally = tally
        self._ports: list[Any] = []
        self._paused = False

    def watch(self, port: Any) -> None:
        """Pause and resume ``port`` (an ``IListeningPort`` with stop/startReading) with the
        limit, and never let it accept more connections in one go than the limit has room for.

        Twisted's TCP port accepts up to ``numberAccepts`` connections each time its socket is
        readable, and grows that number under load; past the limit those would be closed at
        once, unserved. So its ``doRead`` is wrapped to cap the batch at the room left first.
        """
        self._ports.append(port)
        if self._paused:
            port.stopReading()
        if hasattr(port, "numberAccepts"):  # a real tcp.Port (tests pass simpler ones)
            accept = port.doRead

            def accept_within_room() -> Any:
                port.numberAccepts = max(1, min(port.numberAccepts, self.limit - self.open))
                return accept()

            port.doRead = accept_within_room

    def unwatch(self, port: Any) -> None:
        if port in self._ports:
            self._ports.remove(port)

    def admits(self) -> bool:
        """Whether one more connection fits; counted as refused when it does not."""
        if self.open < self.limit:
            return True
        self.refused += 1
        if self._tally is not None:
            self._tally["refused"] += 1
        return False

    def opened(self) -> None:
        self.open += 1
        if self.open >= self.limit and not self._paused:
            self._paused = True
            self.pauses += 1
            if self._tally is not None:
                self._tally["reached"] += 1
            for port in self._ports:
                port.stopReading()

    def closed(self) -> None:
        self.open -= 1
        if self._paused and self.open < self.limit:
            self._paused = False
            for port in self._ports:
                port.startReading()


class _Stop(Exception):
    """Raised from a parser callback once the connection is closing: the parser reads no more."""


class Http11Protocol(Protocol):
    """One connection: requests parsed by httptools, each answered by ``handler`` once complete.

    ``refusal`` is the whole answer (ending ``Connection: close``) to a body over ``max_body``
    bytes, sent as soon as the length is announced or a chunked body grows past it.
    """

    def __init__(
        self,
        handler: Handler,
        clock: IReactorTime,
        dates: Callable[[], bytes],
        server: bytes,
        refusal: Callable[[], bytes],
        max_body: int,
    ) -> None:
        self._handler = handler
        self._clock = clock
        self._dates = dates
        self._server = server
        self._refusal = refusal
        self._max_body = max_body
        self._parser = httptools.HttpRequestParser(self)
        #: Nothing more is parsed: the connection closes once what is owed is written.
        self._closing = False
        #: The transport was told to close (or has closed): nothing more is written.
        self._hung_up = False
        self._idle: IDelayedCall | None = None
        #: Running while a request head is incomplete after a read (see HEAD_TIMEOUT).
        self._head_deadline: IDelayedCall | None = None
        self._abort: IDelayedCall | None = None
        self._peer: IAddress
        self._host: IAddress
        self._secure = False
        self._messages = 0  # begun on this connection
        #: The answer being awaited (the handler gave a Deferred), and the requests complete
        #: behind it, each with its keep-alive and version: answered in order once it is written.
        self._pending: Deferred[Response] | None = None
        self._queued: deque[tuple[Request, bool, str]] = deque()
        #: What to send before hanging up once the awaited answers are written (a refusal).
        self._last_words = b""
        #: Reading is paused: because requests wait behind an awaited answer (held), because the
        #: transport's send buffer is full (throttled).
        self._held = False
        self._throttled = False
        #: The IP TTL a handler last set on this connection's socket (None: the default).
        self.ttl: int | None = None
        #: The connection limits this connection counts against (set by the factory).
        self.limits: tuple[ConnectionLimit, ...] = ()
        self._counted = False
        self._reset()

    def _reset(self) -> None:
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_size = 0
        self._in_head = False  # between on_message_begin and on_headers_complete
        self._expect_continue = False
        self._version = "1.1"
        self._body: list[bytes] = []
        self._body_size = 0

    # -- the connection ------------------------------------------------------------------------

    @property
    def _connection(self) -> _Connection | None:
        """The transport, as the TCP (or TLS) connection it is."""
        return cast("_Connection | None", self.transport)

    def peer_certificate(self) -> Certificate | None:
        """The certificate the client showed in the TLS handshake: None without TLS, or when it
        showed none. (Only asked once a request has come, so the handshake is done.)"""
        get = getattr(self.transport, "getPeerCertificate", None)
        shown = cast("X509 | None", get() if get is not None else None)
        return shown.to_cryptography() if shown is not None else None

    def connectionMade(self) -> None:
        transport = self._connection
        assert transport is not None
        for limit in self.limits:
            limit.opened()
        self._counted = True
        self._peer, self._host = transport.getPeer(), transport.getHost()
        self._secure = ISSLTransport(transport, None) is not None
        set_no_delay = getattr(transport, "setTcpNoDelay", None)
        if set_no_delay is not None:  # answers go out in one write: no reason to wait
            set_no_delay(True)
        # The transport pauses us when its send buffer fills (a client pipelining requests but
        # not reading answers); we then stop reading until it drains.
        transport.registerProducer(self, True)
        self._idle = self._clock.callLater(IDLE_TIMEOUT, self._timed_out)

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        if self._idle is not None:
            self._idle.reset(IDLE_TIMEOUT)
        in_head, messages = self._in_head, self._messages
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # refused in on_headers_complete already
            self._close(short_answer(400))
        except httptools.HttpParserError as error:
            if self._closing:
                return
            cause = error.__context__
            if isinstance(error, httptools.HttpParserCallbackError) and cause is not None:
                log.failure(
                    "cannot parse a request",
                    Failure(cause, type(cause), cause.__traceback__),
                )
                self._close(short_answer(500))
            else:
                self._close(short_answer(400))
            return
        if not self._in_head or self._closing:
            return
        # llhttp takes a request line without a version as HTTP/0.9 and waits for headers that
        # an HTTP/0.9 client never sends: a line ended with no version known yet is refused now,
        # not when the idle timeout runs out.
        if self._url and data.endswith(b"\n") and self._parser.get_http_version() == "0.0":
            self._close(short_answer(400))
            return
        # Only a head left incomplete by a read needs a deadline: most arrive whole in one.
        # (Behind an awaited answer it waits, as the idle timeout does.)
        if self._head_deadline is None and self._pending is None:
            self._head_deadline = self._clock.callLater(HEAD_TIMEOUT, self._head_timed_out)
        # A header still unfinished after a whole read is kept inside the parser, unseen by
        # on_header: count such reads against the head's limit too.
        if in_head and self._messages == messages:
            self._head_size += len(data)
            if self._head_size > MAX_HEAD_BYTES:
                self._close(short_answer(431))

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._closing = self._hung_up = True
        if self._counted:
            self._counted = False
            for limit in self.limits:
                limit.closed()
        for call in (self._idle, self._abort, self._head_deadline):
            if call is not None and call.active():
                call.cancel()
        self._idle = self._abort = self._head_deadline = None
        self._queued.clear()
        pending, self._pending = self._pending, None
        if pending is not None:  # the client hung up on an awaited answer: nobody wants it
            pending.cancel()

    def _close(self, answer: bytes) -> None:
        """Send ``answer`` (if any), then hang up once it is written; nothing more is read.
        Behind an awaited answer, both wait until it and those queued behind it are written."""
        if self._closing:
            return
        self._closing = True
        if self._pending is not None:
            self._last_words = answer
        else:
            self._hang_up(answer)

    def _hang_up(self, answer: bytes) -> None:
        if self._hung_up:
            return
        self._closing = self._hung_up = True
        transport = self._connection
        assert transport is not None
        if answer:
            transport.write(answer)
        transport.unregisterProducer()
        transport.loseConnection()

    def _timed_out(self) -> None:
        self._idle = None
        log.info("closing an idle connection from {peer}", peer=str(self._peer))
        self._close(b"")
        # A client that does not read its answers would hold the connection open for good.
        self._abort = self._clock.callLater(ABORT_TIMEOUT, self._abort_connection)

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        log.info(
            "closing a connection from {peer}: no complete request head in {seconds:.0f} s",
            peer=str(self._peer),
            seconds=HEAD_TIMEOUT,
        )
        self._close(short_answer(408))
        self._abort = self._clock.callLater(ABORT_TIMEOUT, self._abort_connection)

    def _abort_connection(self) -> None:
        self._abort = None
        transport = self._connection
        if transport is not None:
            transport.abortConnection()

    # IPushProducer, for the transport's send buffer
    def pauseProducing(self) -> None:
        self._throttled = True
        self._read_or_not()

    def resumeProducing(self) -> None:
        self._throttled = False
        self._read_or_not()

    def stopProducing(self) -> None:
        pass

    def _read_or_not(self) -> None:
        """Read while neither the send buffer nor requests waiting behind an answer say not."""
        transport = self._connection
        if transport is None or self._hung_up:
            return
        if self._held or self._throttled:
            transport.pauseProducing()
        else:
            transport.resumeProducing()

    # -- httptools' callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._closing:
            raise _Stop
        self._reset()
        self._in_head = True
        self._messages += 1

    def on_url(self, url: bytes) -> None:
        if self._closing:
            raise _Stop
        self._url += url
        self._head_size += len(url)
        if self._head_size > MAX_HEAD_BYTES:
            self._refuse(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._closing:
            raise _Stop
        headers = self._headers
        headers.append((name, value))
        self._head_size += len(name) + len(value) + 4
        if self._head_size > MAX_HEAD_BYTES or len(headers) > MAX_HEADERS:
            self._refuse(431)

    def on_headers_complete(self) -> None:
        if self._closing:
            raise _Stop
        self._in_head = False
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None
        parser = self._parser
        # llhttp takes a request line without a version as HTTP/0.9; and an Upgrade or CONNECT
        # would switch protocols: this port speaks HTTP/1.0 and 1.1 only.
        self._version = parser.get_http_version()
        if self._version not in _VERSIONS or parser.should_upgrade():
            self._refuse(400)
        for name, value in self._headers:
            lowered = name.lower()
            if lowered == b"content-length":
                # llhttp has checked it is a number, and the only one.
                if int(value) > self._max_body:
                    log.warn("refused a request body over {limit} bytes", limit=self._max_body)
                    self._close(self._refusal())
                    raise _Stop
            elif lowered == b"expect" and value.lower() == b"100-continue":
                self._expect_continue = self._version == "1.1"
        # Not behind an awaited answer: a 100 sent now would be taken for that answer's. The
        # client sends its body anyway after a moment (RFC 9110, 10.1.1).
        if self._expect_continue and self._pending is None:
            assert self.transport is not None
            self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        if self._closing:
            raise _Stop
        self._body_size += len(body)
        if self._body_size > self._max_body:
            log.warn("refused a request body over {limit} bytes", limit=self._max_body)
            self._close(self._refusal())
            raise _Stop
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._closing:
            raise _Stop
        parser = self._parser
        keep_alive = parser.should_keep_alive()
        version = self._version
        request = Request(
            parser.get_method(),
            self._url,
            _VERSIONS[version],
            self._headers,
            b"".join(self._body),
            self._peer,
            self._host,
            self._secure,
        )
        self._reset()
        if self._pending is not None:
            # Behind an awaited answer: this one waits its turn, and reading stops until then
            # (what this read brought is parsed still, and waits too).
            self._queued.append((request, keep_alive, version))
            if not self._held:
                self._held = True
                self._read_or_not()
            if not keep_alive:
                self._closing = True  # its answer closes the connection: read no further
                raise _Stop
            return
        self._respond(request, keep_alive, version)
        if self._closing:
            raise _Stop

    def _refuse(self, code: int) -> None:
        log.info("refused a request from {peer}: {code}", peer=str(self._peer), code=code)
        self._close(short_answer(code))
        raise _Stop

    # -- the answer ----------------------------------------------------------------------------

    def _respond(self, request: Request, keep_alive: bool, version: str) -> None:
        """Ask the handler, and write its answer now or once it comes."""
        try:
            answer = self._handler(request, self)
        except Exception:  # the handler answers its own errors: this is a last resort
            log.failure("cannot answer a request")
            self._hang_up(short_answer(500))
            return
        if isinstance(answer, Response):
            self._write(answer, request.method, keep_alive, version)
            return
        # Awaited: no timeout closes the connection meanwhile; reading goes on, so that a
        # client that hangs up is noticed (connectionLost cancels the answer).
        self._pending = answer
        for call in (self._idle, self._head_deadline):
            if call is not None and call.active():
                call.cancel()
        self._idle = self._head_deadline = None
        answer.addBoth(self._answered, answer, request.method, keep_alive, version)

    def _answered(
        self,
        outcome: Response | Failure,
        awaited: Deferred[Response],
        method: bytes,
        keep_alive: bool,
        version: str,
    ) -> None:
        if self._pending is not awaited:
            return None  # the connection was lost and the answer cancelled: nobody to tell
        self._pending = None
        if isinstance(outcome, Response):
            self._write(outcome, method, keep_alive, version)
        else:
            if isinstance(outcome, Failure):
                log.failure("cannot answer a request", outcome)
            else:
                log.error("a request handler answered {answer!r}", answer=outcome)
            self._hang_up(short_answer(500))
        self._next()
        return None

    def _next(self) -> None:
        """Answer the requests that waited behind an answer now written; once none waits, read
        and time out again (or hang up, if the connection was closing)."""
        while self._pending is None and self._queued and not self._hung_up:
            request, keep_alive, version = self._queued.popleft()
            self._respond(request, keep_alive, version)
        if self._pending is not None:
            return
        self._queued.clear()
        if self._closing:
            self._hang_up(self._last_words)
            return
        if self._held:
            self._held = False
            self._read_or_not()
        if self._idle is None:
            self._idle = self._clock.callLater(IDLE_TIMEOUT, self._timed_out)
        if self._in_head and self._head_deadline is None:
            self._head_deadline = self._clock.callLater(HEAD_TIMEOUT, self._head_timed_out)

    def _write(self, response: Response, method: bytes, keep_alive: bool, version: str) -> None:
        code, body = response.status, response.body
        lines = []
        length = server = True
        for name, value in response.headers:
            lines.append(b"%s: %s\r\n" % (name, value))
            lowered = name.lower()
            if lowered == b"content-length":
                length = False  # a HEAD answer may carry its GET's
            elif lowered == b"server":
                server = False  # the handler names itself
        head = [_STATUS_LINES.get(code) or status_line(code)]
        if server:
            head.append(b"Server: %s\r\n" % self._server)
        head.append(b"Date: %s\r\n" % self._dates())
        head += lines
        if length:
            head.append(b"Content-Length: %d\r\n" % len(body))
        if not keep_alive:
            head.append(b"Connection: close\r\n")
        elif version == "1.0":
            head.append(b"Connection: keep-alive\r\n")
        head.append(b"\r\n")
        if method != b"HEAD":
            head.append(body)
        answer = b"".join(head)
        if keep_alive:
            assert self.transport is not None
            self.transport.write(answer)
        else:
            self._hang_up(answer)


@implementer(IProtocolNegotiationFactory)
class Http11Factory(ServerFactory):
    """A port whose connections are `Http11Protocol`s answering with ``handler``, and refusing a
    body over ``max_body`` bytes with ``refusal()``: the node API's and the metrics listener's.
    (The public API and the metadata service have factories of their own, for their connection
    limits and last-resort answers.)"""

    noisy = False

    def __init__(
        self,
        handler: Handler,
        clock: IReactorTime,
        *,
        refusal: Callable[[], bytes],
        max_body: int,
        server: bytes = SERVER,
    ) -> None:
        self._handler = handler
        self._clock = clock
        self._refusal = refusal
        self._max_body = max_body
        self._server = server
        self._dates = HttpDates(clock)

    def buildProtocol(self, addr: IAddress | None) -> Http11Protocol:
        protocol = Http11Protocol(
            self._handler,
            self._clock,
            self._date,
            self._server,
            self._refusal,
            self._max_body,
        )
        protocol.factory = self
        return protocol

    def _date(self) -> bytes:
        return self._dates.now()[0]

    def acceptableProtocols(self) -> list[bytes]:
        """What TLS's ALPN may agree on (Twisted's TLS refuses a client that offers ALPN when
        the factory names nothing): HTTP/1.1, as twisted.web's Site offers it without h2."""
        return [b"http/1.1"]


class HttpDates:
    """The ``Date`` header value, formatted once a second of `clock`."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._second = -1
        self._value = [b""]

    def now(self) -> list[bytes]:
        second = int(self._clock.seconds())
        if second != self._second:
            self._second = second
            self._value = [formatdate(second, usegmt=True).encode("ascii")]
        return self._value
