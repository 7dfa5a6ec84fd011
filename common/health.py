"""The metrics and health listener of both daemons: ``/metrics``, ``/healthz``, ``/readyz``.

``/metrics`` is prometheus_client's own exposition of the daemon's registry, in the format the
scraper's ``Accept`` asks for (Prometheus text, or OpenMetrics). ``/healthz`` answers 200 while
the process serves HTTP (restart it if not). ``/readyz`` answers 200 "ready" when the daemon can
do its work, else 503 with the reason on one line (send it no traffic, or look). Any other path
is 404; GET and HEAD are answered, any other method is 405; a request body is refused past
1 KiB. The listener is `common.http11`'s protocol, as every port of both daemons.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import unquote_to_bytes

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from twisted.internet.interfaces import IReactorTime

from common.http11 import Http11Factory, Http11Protocol, Request, Response, status_line

#: Whether the daemon can do its work now, and if not why (one line).
Readiness = Callable[[], tuple[bool, str]]
#: Nothing here takes a body.
MAX_BODY = 1024
#: The methods answered; HEAD gets GET's headers (the protocol leaves the body out).
ALLOWED = b"GET, HEAD"


def text_answer(status: int, text: str, *headers: tuple[bytes, bytes]) -> Response:
    return Response(
        status,
        (
            (b"Content-Type", b"text/plain; charset=utf-8"),
            (b"Cache-Control", b"no-store"),
            *headers,
        ),
        (text.replace("\n", " ") + "\n").encode("utf-8"),
    )


def _path(uri: bytes) -> bytes:
    """The path without its leading slash, each segment percent-decoded (as twisted.web's
    traversal saw it): ``/metrics?x`` is ``metrics``."""
    path = uri.partition(b"?")[0]
    return b"/".join(unquote_to_bytes(segment) for segment in path[1:].split(b"/"))


class HealthPages:
    """The whole listener: one handler that answers by path."""

    def __init__(self, registry: CollectorRegistry, readiness: Readiness) -> None:
        self._registry = registry
        self._readiness = readiness

    def answer(self, request: Request) -> Response:
        if request.method not in (b"GET", b"HEAD"):
            return text_answer(
                405,
                f"{request.method.decode('latin-1')} is not allowed here: GET or HEAD",
                (b"Allow", ALLOWED),
            )
        path = _path(request.uri)
        if path == b"metrics":
            accept = (request.header(b"accept") or b"").decode("latin-1")
            encoder, content_type = choose_encoder(accept)
            return Response(
                200, ((b"Content-Type", content_type.encode("ascii")),), encoder(self._registry)
            )
        if path == b"healthz":
            return text_answer(200, "ok")
        if path == b"readyz":
            ready, reason = self._readiness()
            return text_answer(200 if ready else 503, reason)
        return text_answer(404, "see /metrics, /healthz and /readyz")


def refusal() -> bytes:
    """The whole answer to a body over `MAX_BODY` bytes, before the connection is closed."""
    body = f"a request body is at most {MAX_BODY} bytes here\n".encode("ascii")
    return (
        status_line(413)
        + b"Content-Type: text/plain\r\n"
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode("ascii")
        + body
    )


def health_factory(
    registry: CollectorRegistry, readiness: Readiness, clock: IReactorTime
) -> Http11Factory:
    """The listener: `registry` on /metrics, `readiness` on /readyz."""
    pages = HealthPages(registry, readiness)

    def answer(request: Request, connection: Http11Protocol) -> Response:
        return pages.answer(request)

    return Http11Factory(answer, clock, refusal=refusal, max_body=MAX_BODY)
