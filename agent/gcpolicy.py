"""Keep the garbage collector's full passes short: freeze what the agent holds for long.

A full (oldest-generation) collection walks every tracked object: the modules the agent
imported and its whole state (slots, trees, credential machines, sockets). That took about
95 ms on the benchmark machine with 500 instances, a stall every guest request arriving
meanwhile waits out, about twice a minute under load. Almost all of it lives as long as the
process or until the assignments change. So:

- when the agent has applied a new set of assignments (and each instance has its credentials
  or a reason), it collects the young generations (milliseconds) and moves every tracked object
  to the permanent generation (`gc.freeze`), which no collection walks;
- when it starts (before it serves anyone) and then every `REFREEZE_SECONDS`, it thaws
  everything (`gc.unfreeze`), makes one full collection and freezes again. Frozen objects that
  became cyclic garbage (an instance removed, a set rotated out) are collected then: what can
  pile up is bounded by an hour of changes. The hourly pass is the one stall left.

Objects made between freezes, per request or per rotation, are collected as usual, and a full
pass walks only them.
"""

from __future__ import annotations

import gc
import time
from typing import Protocol

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
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
    """Freezes after each applied change of assignments; thaws, collects and freezes at the
    first and then every `refreeze` seconds."""

    def __init__(
        self, agent: Watched, clock: IReactorTime, *, refreeze: float = REFREEZE_SECONDS
    ) -> None:
        self._agent = agent
        self._clock = clock
        self._refreeze_after = refreeze
        self._frozen_revision: int | None = None
        self._full_at = 0.0
        self._loop = LoopingCall(self._check)
        self._loop.clock = clock
        #: How many refreezes were made, and how long the last one took (for logs and tests).
        self.refreezes = 0
        self.last_seconds = 0.0

    def startService(self) -> None:
        """The first full pass runs now, before any instance is served: no guest waits on it."""
        Service.startService(self)
        self.refreeze(full=True)
        self._loop.start(CHECK_SECONDS, now=False)

    def stopService(self) -> None:
        Service.stopService(self)
        if self._loop.running:
            self._loop.stop()

    def _check(self) -> None:
        # A LoopingCall whose function raises stops for good: a bug here must cost one check,
        # not every refreeze after it.
        try:
            agent = self._agent
            if agent.revision == self._frozen_revision or not agent.ready()[0]:
                if self._clock.seconds() - self._full_at >= self._refreeze_after:
                    self.refreeze(full=True)
                return
            self.refreeze(full=False)
        except Exception:
            log.failure(
                "the collector's check failed; checking again in {seconds} s", seconds=CHECK_SECONDS
            )

    def refreeze(self, *, full: bool) -> None:
        """Freeze what is tracked; `full`: thaw and collect everything first."""
        started = time.perf_counter()
        if full:
            gc.unfreeze()
            gc.collect()
            self._full_at = self._clock.seconds()
        else:
            gc.collect(1)
        gc.freeze()
        self.last_seconds = time.perf_counter() - started
        self.refreezes += 1
        self._frozen_revision = self._agent.revision
        log.info(
            "froze {count} long-lived objects out of the collector's passes in {ms:.1f} ms"
            " ({kind})",
            count=gc.get_freeze_count(),
            ms=self.last_seconds * 1000,
            kind="after a full collection" if full else "after the young generations",
        )
