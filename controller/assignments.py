"""Long polls waiting for a node's assignments to change, woken when they do.

Thousands of nodes may wait at once: each waiter is a Deferred and one timer, never a thread.
"""

from __future__ import annotations

from collections import defaultdict

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime


class AssignmentHub:
    """Who waits for which node, and waking them: `wait` fires with True on a (possible)
    change, False on timeout; `changed` is called once a change to a node's assignments has
    committed, here or (on PostgreSQL) through another controller."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        #: Set by `stop`: waiters answer with what they have, whatever changed.
        self.stopped = False
        self._waiters: dict[str, dict[Deferred[bool], IDelayedCall]] = defaultdict(dict)

    def wait(self, node: str, seconds: float) -> Deferred[bool]:
        waiters = self._waiters[node]

        def cancelled(deferred: Deferred[bool]) -> None:
            timer = waiters.pop(deferred, None)
            if timer is not None and timer.active():
                timer.cancel()

        deferred: Deferred[bool] = Deferred(cancelled)
        waiters[deferred] = self._clock.callLater(seconds, self._expire, node, deferred)
        return deferred

    def _expire(self, node: str, deferred: Deferred[bool]) -> None:
        if self._waiters[node].pop(deferred, None) is not None:
            deferred.callback(False)

    def changed(self, node: str) -> None:
        waiters = self._waiters.pop(node, {})
        for deferred, timer in waiters.items():
            if timer.active():
                timer.cancel()
            deferred.callback(True)

    def waiting(self) -> int:
        """How many long polls are waiting now (a metric)."""
        return sum(len(waiters) for waiters in self._waiters.values())

    def changed_all(self) -> None:
        """Wake every waiter: each looks at the store again (after changes may have gone
        unannounced, as while a controller's database listener reconnects)."""
        for node in list(self._waiters):
            self.changed(node)

    def stop(self) -> None:
        """Release every waiter (the service is stopping): they answer with what they have."""
        self.stopped = True
        self.changed_all()
