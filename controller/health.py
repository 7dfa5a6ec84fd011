"""The metrics and health listener: ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz``.

``/healthz`` answers 200 whenever the process serves HTTP (restart it if not); ``/readyz`` answers
200 only when this controller can do its work, its store reachable and a token key loaded (send it
no traffic if not), else 503 with the reason on one line.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from twisted.web import pages, server
from twisted.web.resource import IResource, Resource

from controller.store.base import Store, StoreError
from controller.tokens import KeyRing

KeyRingSource = Callable[[], KeyRing | None]


def readiness_problem(store: Store, key_ring: KeyRingSource) -> str | None:
    """Why this controller cannot serve requests now, or None when it can."""
    try:
        with store.transaction() as tx:
            tx.list_accounts()
    except StoreError as error:
        return f"store unreachable: {error}"
    except Exception as error:  # whatever the store's driver raises, the answer is "not ready"
        return f"store unreachable: {type(error).__name__}: {error}"
    ring = key_ring()
    if ring is None or ring.get(ring.active_id) is None:
        return "no active token key loaded"
    return None


def _text(request: server.Request, status: int, text: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    request.setHeader(b"Cache-Control", b"no-store")
    return (text.replace("\n", " ") + "\n").encode("utf-8")


class MetricsResource(Resource):
    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self._registry)


class LivenessResource(Resource):
    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:
        return _text(request, 200, "ok")


class ReadinessResource(Resource):
    isLeaf = True

    def __init__(self, store: Store, key_ring: KeyRingSource) -> None:
        super().__init__()
        self._store = store
        self._key_ring = key_ring

    def render_GET(self, request: server.Request) -> bytes:
        problem = readiness_problem(self._store, self._key_ring)
        if problem is not None:
            return _text(request, 503, problem)
        return _text(request, 200, "ready")


class _Root(Resource):
    def getChild(self, path: bytes, request: server.Request) -> IResource:
        return pages.notFound()  # type: ignore[no-any-return]

    def render_GET(self, request: server.Request) -> bytes:
        return _text(request, 404, "see /metrics, /healthz and /readyz")


def health_resource(registry: CollectorRegistry, store: Store, key_ring: KeyRingSource) -> Resource:
    """The listener's tree; any other path is 404."""
    root = _Root()
    root.putChild(b"metrics", MetricsResource(registry))
    root.putChild(b"healthz", LivenessResource())
    root.putChild(b"readyz", ReadinessResource(store, key_ring))
    return root
