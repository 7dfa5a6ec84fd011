"""RoleLastUsed without a write per request: uses wait in memory and are written in batches.

AssumeRole and the node API's instance credentials `record` a use; `RoleLastUsedService` writes
the latest use of each role in one transaction every interval and once when the controller
stops. A write that fails keeps its uses for the next one. Uses still waiting when the process
is killed (-9) are lost: the role's next use records it again. See docs/operations.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from controller.store.base import Store, StoreError
from controller.store.records import REGION
from controller.xmlout import format_time

log = Logger(namespace="rolecall.lastused")

DEFAULT_FLUSH_SECONDS = 60.0
#: What is recorded as a region: a region's name, as SigV4 scopes name it (``eu-west-1``).
#: Anything else a caller signed with is recorded as RoleCall's own region.
_REGION_NAME = re.compile(r"[a-z]{2,4}(-[a-z0-9]{1,16}){1,4}")

#: (role_id, when as ISO 8601 UTC, region), as `Transaction.record_roles_last_used` takes it.
Use = tuple[str, str, str]


def region_of(signing_region: str) -> str:
    """The region recorded for a use signed for ``signing_region``."""
    return signing_region if _REGION_NAME.fullmatch(signing_region) else REGION


class PendingUses:
    """The latest use of each role not written yet. Pure: no store, no clock."""

    def __init__(self) -> None:
        self._latest: dict[str, tuple[str, str]] = {}

    def __len__(self) -> int:
        return len(self._latest)

    def record(self, role_id: str, when: datetime, region: str) -> None:
        self.add(((role_id, format_time(when), region),))

    def add(self, uses: Iterable[Use]) -> None:
        """Keep each role's latest use (the later one given wins a tie)."""
        latest = self._latest
        for role_id, when, region in uses:
            kept = latest.get(role_id)
            if kept is None or kept[0] <= when:
                latest[role_id] = (when, region)

    def take(self) -> list[Use]:
        """Every waiting use, which are no longer waiting."""
        taken = [(role_id, when, region) for role_id, (when, region) in self._latest.items()]
        self._latest = {}
        return taken


class RoleLastUsedService(Service):
    """Records uses of roles (`record`) and writes them every ``interval`` seconds and when
    the service stops. Runs on the reactor's thread, as the store's other callers do."""

    def __init__(self, store: Store, clock: IReactorTime, interval: float) -> None:
        self._store = store
        self._interval = interval
        self._pending = PendingUses()
        self._loop = LoopingCall(self.flush)
        self._loop.clock = clock
        self._failing = False

    def record(self, role_id: str, when: datetime, region: str) -> None:
        """A use of the role at ``when`` in ``region`` (a signing region: see `region_of`)."""
        self._pending.record(role_id, when, region_of(region))

    def waiting(self) -> int:
        """Roles whose latest use is not written yet (a gauge)."""
        return len(self._pending)

    def startService(self) -> None:
        Service.startService(self)
        self._loop.start(self._interval, now=False)

    def stopService(self) -> None:
        Service.stopService(self)
        if self._loop.running:
            self._loop.stop()
        self.flush()

    def flush(self) -> None:
        """Write the waiting uses in one transaction; on failure keep them for the next flush.
        Never raises: a LoopingCall whose function raises stops for good."""
        uses = self._pending.take()
        if not uses:
            return
        try:
            self._store.run(lambda tx: tx.record_roles_last_used(uses))
        except Exception as error:
            self._pending.add(uses)  # uses recorded meanwhile are newer and are kept
            problem = str(error) if isinstance(error, StoreError) else repr(error)
            log.error(
                "cannot write the last use of {count} roles ({problem}); trying again in"
                " {interval} s",
                count=len(uses),
                problem=problem,
                interval=self._interval,
            )
            self._failing = True
            return
        if self._failing:
            self._failing = False
            log.info("the last use of roles is written again")
