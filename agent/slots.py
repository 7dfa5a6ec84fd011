"""One assigned instance on this node: its namespace, socket, credentials and metadata view."""

from __future__ import annotations

import math
import socket
from dataclasses import dataclass

from twisted.internet.interfaces import IListeningPort

from agent.imds.credentials import CredentialSet
from agent.imds.ratelimit import TokenBucket
from agent.imds.rules import InstanceView
from agent.imds.tokens import TokenMinter
from agent.imds.tree import CredentialsUnavailable, ImdsTree
from agent.netns import Ownership
from agent.refresh import Verdict
from agent.rotation import InstanceCredentials
from common.http11 import ConnectionLimit
from common.nodemessages import InstanceAssignment


def profile_key(assignment: InstanceAssignment) -> tuple[str, str] | None:
    """What decides which credentials an instance gets: its profile and role."""
    profile = assignment.instance_profile
    if profile is None or profile.role_name is None:
        return None
    return (profile.arn, profile.role_name)


@dataclass
class Slot:
    """An instance the agent serves. Its view is rebuilt only when what it shows changes."""

    instance_id: str
    #: Checked when it arrived; replaced (never changed) when the controller changes it.
    assignment: InstanceAssignment
    ownership: Ownership
    #: Accepting connections; None while a socket taken back after a restart is held.
    port: IListeningPort | None
    bucket: TokenBucket
    minter: TokenMinter
    strict_proxy: bool
    credentials: InstanceCredentials | None = None
    #: A socket taken back after a restart, not yet accepting (see NodeAgent).
    pending: socket.socket | None = None
    #: The instance's own connection limit, and the one all instances share (watching `port`).
    limits: tuple[ConnectionLimit, ...] = ()
    _cache_key: tuple[object, ...] | None = None
    _cached: InstanceView | None = None
    _seen: tuple[object, ...] | None = None
    _valid_until: float = -math.inf

    def close(self) -> None:
        """Stop accepting (the service manager may still keep the socket for a restart)."""
        if self.port is not None:
            for limit in self.limits:
                limit.unwatch(self.port)
            self.port.stopListening()
            self.port = None
        if self.pending is not None:
            self.pending.close()
            self.pending = None

    def view(self, now: float) -> InstanceView:
        """The instance as a request at `now` sees it: from memory, never waiting.

        Rebuilt only when what it shows changes: a new assignment, a credentials transition,
        or the moment the held set stops being servable (`InstanceCredentials.verdict_until`).
        Between those, a request costs one comparison.
        """
        keeper = self.credentials
        generation = keeper.generation if keeper is not None else -1
        cached = self._cached
        if (
            cached is not None
            and now < self._valid_until
            and self._seen == (self.assignment, keeper, generation)
        ):
            return cached
        state: CredentialSet | CredentialsUnavailable | None = None
        verdict: Verdict | None = None
        held = None
        until = math.inf
        if keeper is not None:
            verdict, until = keeper.verdict_until(now)
            held = keeper.held if verdict is Verdict.SERVE else None
            state = held if held is not None else CredentialsUnavailable(verdict.value)
        key = (id(self.assignment), verdict, held)
        if cached is None or key != self._cache_key:
            cached = InstanceView(
                instance_id=self.instance_id,
                options=self.assignment.metadata_options,
                tree=ImdsTree.for_instance(self.assignment, state),
                minter=self.minter,
                strict_proxy=self.strict_proxy,
            )
            self._cached = cached
            self._cache_key = key
        self._seen = (self.assignment, keeper, generation)
        self._valid_until = until
        return cached
