"""When the controller is ready: its store reachable and a token key loaded. The listener itself
(``/metrics``, ``/healthz``, ``/readyz``) is both daemons' (`common.health`).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry

from common.health import HealthPages, Readiness
from controller.store.base import Store, StoreError
from controller.tokens import KeyRing

KeyRingSource = Callable[[], KeyRing | None]


def readiness_problem(store: Store, key_ring: KeyRingSource) -> str | None:
    """Why this controller cannot serve requests now, or None when it can."""
    try:
        store.run(lambda tx: tx.list_accounts())
    except StoreError as error:
        return f"store unreachable: {error}"
    except Exception as error:  # whatever the store's driver raises, the answer is "not ready"
        return f"store unreachable: {type(error).__name__}: {error}"
    ring = key_ring()
    if ring is None or ring.get(ring.active_id) is None:
        return "no active token key loaded"
    return None


def readiness(store: Store, key_ring: KeyRingSource) -> Readiness:
    """The controller's answer to /readyz: ready when `readiness_problem` finds none."""

    def ready() -> tuple[bool, str]:
        problem = readiness_problem(store, key_ring)
        return problem is None, problem or "ready"

    return ready


def health_pages(registry: CollectorRegistry, store: Store, key_ring: KeyRingSource) -> HealthPages:
    """The listener's pages with the controller's readiness (`common.health`)."""
    return HealthPages(registry, readiness(store, key_ring))
