"""Keep the garbage collector's full passes short: freeze what the agent holds for long.

A full (oldest-generation) collection walks every tracked object. On a node with hundreds of
instances that is the agent's whole state (slots, trees, credential machines, sockets): about
95 ms on the benchmark machine with 500 instances, a stall that every guest request arriving
meanwhile waits out. That state changes only when the assignments do. So once the agent has
applied a new set of assignments (and each instance has its credentials or a reason), it
collects once and moves every surviving object to the permanent generation (`gc.freeze`),
which later collections do not walk. Objects made afterwards, per request or per rotation, are
collected as usual, and their full passes walk only them.

Frozen objects that later become cyclic garbage (an instance removed, a set rotated out) are
not collected while frozen, so every refreeze first thaws everything (`gc.unfreeze`) and
collects, and it happens at least every `REFREEZE_SECONDS` even when nothing changes: what
could pile up is bounded by what one refreeze froze.
"""

from __future__ import annotations

import gc
import time
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger(namespace="rolecall.agent.gc")

#: How often the policy looks at the agent.
CHECK_SECONDS = 5.0
#: The longest time between two refreezes.
REFREEZE_SECONDS = 3600.0


class Watched(Protocol):
    """What the policy reads of the agent: the assignments' revision and readiness."""

    revision: int

    def ready(self) -> tuple[bool, str]: ...


class FreezeAfterChanges(Service):
    """Refreezes after each applied change of assignments, and every `refreeze` seconds."""

    def __init__(self, agent: Watched, clock: Any, *, refreeze: float = REFREEZE_SECONDS) -> None:
        self._agent = agent
        self._clock = clock
        self._refreeze_after = refreeze
        self._frozen_revision: int | None = None
        self._frozen_at = 0.0
        self._loop = LoopingCall(self._check)
        self._loop.clock = clock
        #: How many refreezes were made, and how long the last one took (for logs and tests).
        self.refreezes = 0
        self.last_seconds = 0.0

    def startService(self) -> None:
        super().startService()
        self._loop.start(CHECK_SECONDS, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def _check(self) -> None:
        agent = self._agent
        due = self._clock.seconds() - self._frozen_at >= self._refreeze_after
        changed = agent.revision != self._frozen_revision and agent.ready()[0]
        if changed or (due and self._frozen_revision is not None):
            self.refreeze()

    def refreeze(self) -> None:
        started = time.perf_counter()
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        self.last_seconds = time.perf_counter() - started
        self.refreezes += 1
        self._frozen_revision = self._agent.revision
        self._frozen_at = self._clock.seconds()
        log.info(
            "froze {count} long-lived objects out of the collector's passes in {ms:.1f} ms",
            count=gc.get_freeze_count(),
            ms=self.last_seconds * 1000,
        )
