"""The metrics and health listener of both daemons: ``/metrics``, ``/healthz``, ``/readyz``.

``/metrics`` is prometheus_client's own exposition of the daemon's registry, in the format the
scraper's ``Accept`` asks for (Prometheus text, or OpenMetrics). ``/healthz`` answers 200 while
the process serves HTTP (restart it if not). ``/readyz`` answers 200 "ready" when the daemon can
do its work, else 503 with the reason on one line (send it no traffic, or look). Any other path
is 404; a request body is refused past 1 KiB.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from twisted.web import http, server
from twisted.web.resource import Resource

from common.bodylimit import BodyLimit

#: Whether the daemon can do its work now, and if not why (one line).
Readiness = Callable[[], tuple[bool, str]]
#: Nothing here takes a body.
MAX_BODY = 1024


def text_answer(request: server.Request, status: int, text: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    request.setHeader(b"Cache-Control", b"no-store")
    return (text.replace("\n", " ") + "\n").encode("utf-8")


class HealthResource(Resource):
    """The whole listener: one leaf that answers by path."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry, readiness: Readiness) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._registry = registry
        self._readiness = readiness

    def render_GET(self, request: server.Request) -> bytes:
        path = b"/".join(request.postpath or [])
        if path == b"metrics":
            accept = (request.getHeader(b"accept") or b"").decode("latin-1")
            encoder, content_type = choose_encoder(accept)
            request.setHeader(b"Content-Type", content_type.encode("ascii"))
            return encoder(self._registry)
        if path == b"healthz":
            return text_answer(request, 200, "ok")
        if path == b"readyz":
            ready, reason = self._readiness()
            return text_answer(request, 200 if ready else 503, reason)
        return text_answer(request, 404, "see /metrics, /healthz and /readyz")


class _Request(BodyLimit, server.Request):
    max_body = MAX_BODY

    def refusal(self) -> bytes:
        body = f"a request body is at most {MAX_BODY} bytes here\n".encode("ascii")
        return (
            b"HTTP/1.1 413 Request Entity Too Large\r\nContent-Type: text/plain\r\n"
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode("ascii")
            + body
        )


class _Site(server.Site):
    displayTracebacks = False
    noisy = False
    requestFactory = _Request

    def log(self, request: http.Request) -> None:
        pass  # scrapes and probes are not events worth a line each


def health_site(registry: CollectorRegistry, readiness: Readiness) -> server.Site:
    """The listener's site: `registry` on /metrics, `readiness` on /readyz."""
    return _Site(HealthResource(registry, readiness))  # type: ignore[no-untyped-call]
