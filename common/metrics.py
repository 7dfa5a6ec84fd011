"""What every daemon exports about itself on its metrics listener."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)


def register_standard_collectors(registry: CollectorRegistry) -> None:
    """The daemon's own process (``process_*``: CPU, memory, descriptors, start time) and
    Python (``python_info``) on `registry`, and no ``_created`` series anywhere.

    ``_created`` (each counter's creation time) doubles the series of every counter and no rule
    reads it; prometheus_client 0.26 can switch it off only for the whole process, which is
    one daemon."""
    disable_created_metrics()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
