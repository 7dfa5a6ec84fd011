"""The node agent: learn this node's instances from the controller and serve each one's
metadata inside its namespace.

`NodeAgent` long-polls the node API and reconciles: a new instance gets its namespace (adopted
or created), 169.254.169.254 on its loopback, a listening socket opened inside it and handed to
the reactor, and its credentials fetched at once; a removed one loses exactly what the agent
added. That work is done a slice at a time (`SLICE_SECONDS` per reactor turn), so each instance
is served as soon as it is set up, and guests already served are answered in between. Guests
are answered from memory: nothing on the request path waits on the controller.
"""

from __future__ import annotations

import os
import resource
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from hashlib import blake2b
from random import SystemRandom
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorSocket, IReactorTime
from twisted.internet.task import CooperativeTask, Cooperator, TaskStopped, deferLater
from twisted.logger import Logger

from agent import kept, names, netns
from agent.client import ControllerUnreachable, NodeApiClient, NodeApiError
from agent.config import AgentConfig
from agent.imds.ratelimit import TokenBucket
from agent.imds.tokens import TokenMinter
from agent.reconnect import ReconnectPolicy, next_poll_delay, poll_wait
from agent.rotation import CredentialCache, Input, State
from agent.server import Forwarder, Observer, make_factory
from agent.slots import Slot, profile_key
from common.http11 import ConnectionLimit
from common.nodemessages import (
    AssignmentsAnswer,
    InstanceAssignment,
    RefusedInstance,
    parse_assignments,
)
from common.notify import Notifier

log = Logger(namespace="rolecall.agent")

#: After a restart, how long a taken-back socket waits for its instance's credentials before it
#: answers anyway (guests' connections queue meanwhile; SDKs wait at least a second).
HOLD_SECONDS = 5.0
#: On stop, how long connections already accepted get to send their request and be answered.
DRAIN_SECONDS = 0.5
#: How long one reactor turn may spend setting instances up (or tearing them down) before the
#: reactor answers guests and the controller again; an instance takes a few milliseconds.
SLICE_SECONDS = 0.015
#: The next slice is due this long after the last: the next reactor turn.
SLICE_GAP_SECONDS = 1e-8
#: How many instances without credentials `/readyz` names (the count is always complete).
_NAMED_IN_READYZ = 5
#: Once the controller answers again after failing, every credential retry that backed off
#: longer is due within this many seconds (spread over them).
RECOVERY_SPREAD_SECONDS = 5.0
#: Why an assignments poll failed: no controller URL answered, the controller refused (an HTTP
#: error status), its answer was not JSON or not an assignments answer, or anything else. A
#: fixed set: metric label values.
POLL_FAILURE_REASONS = ("unreachable", "refused", "malformed", "other")


class Keeper(Protocol):
    """Where the agent keeps each instance across its own restart (`agent.kept`): the root
    process (`agent.serving.PrivilegedKeeper`), or nothing."""

    def keep(self, instance_id: str, entry: str) -> None: ...

    def forget(self, instance_id: str) -> None: ...


def poll_failure_reason(failure: Any) -> str:
    """One of `POLL_FAILURE_REASONS` for a failed assignments call."""
    if failure.check(ControllerUnreachable):
        return "unreachable"
    if failure.check(NodeApiError):
        return "refused"
    if failure.check(ValueError):  # not JSON (json.loads), or not the shape (MessageError)
        return "malformed"
    return "other"


class IAgentReactor(IReactorTime, IReactorSocket):
    """What the agent's instances use of the reactor: timers (polls, refreshes, setup slices)
    and adopting the listening sockets made inside their namespaces."""


class NodeAgent(Service):
    """The reconcile loop and every instance slot. Injected: reactor, node API client, token
    minter, namespace functions (the real `agent.netns` outside unit tests), randomness, and
    the timer that bounds a reconcile slice."""

    def __init__(
        self,
        config: AgentConfig,
        reactor: IAgentReactor,
        client: NodeApiClient,
        minter: TokenMinter,
        *,
        namespaces: Any = netns,
        ownership: netns.OwnershipRecord | None = None,
        observe: Observer | None = None,
        random: Any = None,
        notifier: Notifier | None = None,
        inherited: dict[str, list[int]] | None = None,
        timer: Callable[[], float] = time.perf_counter,
        reconnect: ReconnectPolicy | None = None,
        keeper: Keeper | None = None,
        restored: Sequence[kept.Entry] = (),
        upstream: Forwarder | None = None,
    ) -> None:
        self._config = config
        #: The upstream metadata service every instance's paths RoleCall does not serve go to.
        self._upstream = upstream
        self._reactor = reactor
        self._client = client
        self._minter = minter
        self._namespaces = namespaces
        self._ownership = ownership
        #: Told of every metadata answer (metrics); settable after construction.
        self.observe = observe
        self._random = random if random is not None else SystemRandom()
        #: Keeps each instance's listening socket in the service manager's descriptor store,
        #: so that a restarted agent takes the very same sockets back and no guest is refused.
        self._notifier = notifier
        #: Listening sockets handed back by the service manager at start, by namespace name.
        self._inherited = dict(inherited or {})
        policy = config.refresh_policy()
        self._policy = policy
        self._reconnect = reconnect if reconnect is not None else ReconnectPolicy()
        self.credentials = CredentialCache(
            reactor,
            policy=policy,
            random=self._random,
            max_concurrent_fetches=config.max_concurrent_fetches,
            on_transition=self._credentials_changed,
        )
        #: Where each instance is kept across a restart, and what was kept before this one (by
        #: instance id; an entry is used once, when its instance is set up).
        self._keeper = keeper
        self._restored = {entry.instance_id: entry for entry in restored}
        #: A digest of what was last kept for each instance: unchanged entries are not resent.
        self._kept_digests: dict[str, bytes] = {}
        self._keep_problem: str | None = None
        #: Whether the assignments being applied came from the controller (else from what was
        #: kept across the restart: nothing is removed on their word).
        self._authoritative = False
        #: Whether namespaces with the agent's prefix that nothing names were looked for.
        self._swept = False
        self.slots: dict[str, Slot] = {}
        #: All instances' metadata connections together (each instance also has its own,
        #: whose events add up in `instance_limits`, for metrics).
        self.connections = ConnectionLimit(config.connection_limit(_descriptor_limit()))
        self.instance_limits = {"reached": 0, "refused": 0}
        #: Instances whose preparation failed, with why; retried on the next assignments answer.
        self.failed: dict[str, str] = {}
        self.revision = -1
        self.synced = False
        self.poll_failures = 0
        #: What the last failed assignments call said, while they fail; None once answered.
        self.poll_problem: str | None = None
        #: When (reactor seconds) the assignments calls started failing.
        self._failing_since: float | None = None
        #: Every failed assignments poll since the start, by reason (for metrics).
        self.poll_failures_by_reason = dict.fromkeys(POLL_FAILURE_REASONS, 0)
        #: When (reactor seconds) the controller last answered an assignments poll; None: never.
        self.last_poll_success: float | None = None
        self._owned: dict[str, netns.Ownership] = {}
        #: The latest assignments answer, by instance id, and what is left to do for it.
        self._desired: dict[str, InstanceAssignment] = {}
        self._to_remove: deque[str] = deque()
        self._to_add: deque[str] = deque()
        self._timer = timer
        self._cooperator = Cooperator(
            terminationPredicateFactory=self._slice,
            # A hair after now, as Twisted's own cooperator does: the next reactor turn (and
            # one slice per `Clock.advance` in tests).
            scheduler=lambda step: reactor.callLater(SLICE_GAP_SECONDS, step),
        )
        self._work: CooperativeTask[Iterator[None]] | None = None
        self._poll_call: IDelayedCall | None = None
        self._in_flight: Deferred[Any] | None = None
        self.on_change: Callable[[], None] | None = None

    # lifecycle

    def startService(self) -> None:
        Service.startService(self)
        if self._ownership is not None:
            self._owned = self._ownership.load()
            self._ownership.save(self._owned)  # the journal folded in
        if self._inherited:
            log.info(
                "the service manager kept {count} listening socket(s) across the restart",
                count=len(self._inherited),
            )
        if self._restored:
            # Served at once, as before the restart, while the controller is asked.
            log.info(
                "serving {count} instance(s) as kept across the restart until the controller"
                " answers",
                count=len(self._restored),
            )
            self.reconcile(
                [entry.assignment for entry in self._restored.values()], authoritative=False
            )
        self._poll()

    def stopService(self) -> Deferred[None]:
        """Stop accepting and polling, then give requests already accepted a moment to be
        answered before the process goes. Namespaces, addresses and (with systemd) the listening
        sockets stay, for the next agent to take over without refusing a guest."""
        Service.stopService(self)
        if self._poll_call is not None and self._poll_call.active():
            self._poll_call.cancel()
        if self._in_flight is not None:
            self._in_flight.cancel()
        if self._work is not None:
            self._work.stop()  # instances not yet set up stay so
        for slot in self.slots.values():
            slot.close()

        def finish() -> None:
            self.credentials.stop()
            self.slots.clear()

        return deferLater(self._reactor, DRAIN_SECONDS, finish)

    # the loop

    def _poll(self) -> None:
        self._poll_call = None
        if not self.running:
            return
        # While the controller is unreachable each call is a probe: answered at once when it
        # is back (agent.reconnect).
        wait = poll_wait(self.synced, self.poll_failures, self._config.long_poll_seconds)
        answer = self._client.assignments(self.revision, wait)
        self._in_flight = answer
        # Checked once, as it arrives: from here on every instance is typed. An answer that is
        # not an assignments answer (MessageError) is a failed poll; an instance in it that is
        # not an assignment is refused alone (`reconcile`).
        answer.addCallback(self._parse).addCallbacks(self._answered, self._poll_failed)

    def _parse(self, body: object) -> tuple[AssignmentsAnswer, tuple[RefusedInstance, ...]]:
        """The answer, typed; an answer that only repeats the revision already applied (a long
        poll that ran out) is not parsed again: it changes nothing (`_unchanged`), and parsing
        a thousand instances costs some 13 ms."""
        if isinstance(body, dict):
            revision = body.get("revision")
            if type(revision) is int and self._unchanged(revision):
                return AssignmentsAnswer(revision), ()
        return parse_assignments(body)

    def _unchanged(self, revision: int) -> bool:
        """Whether an answer at `revision` leaves nothing to do: the same revision as applied,
        no instance that failed to be set up (retried on every answer), no work queued."""
        return self.synced and revision == self.revision and not self.failed and self._work is None

    def _answered(self, parsed: tuple[AssignmentsAnswer, tuple[RefusedInstance, ...]]) -> None:
        answer, refused = parsed
        self._in_flight = None
        if self._failing_since is not None:
            log.info(
                "the controller answers again, after {seconds:.0f} s without assignments",
                seconds=self._reactor.seconds() - self._failing_since,
            )
            self.credentials.hurry(RECOVERY_SPREAD_SECONDS)
        self.poll_failures = 0
        self.poll_problem = None
        self._failing_since = None
        self.last_poll_success = self._reactor.seconds()
        try:
            revision = answer.revision
            # A long poll that ran out answers the same revision: the same assignments, unless
            # an instance failed to be set up (retried on every answer) or work is still queued.
            if not self._unchanged(revision):
                self.reconcile(answer.instances, refused=refused)
            self.revision = revision
            self.synced = True
        except Exception:
            log.failure("cannot apply the controller's assignments; asking again")
        self._next(0)

    def _poll_failed(self, failure: Any) -> None:
        self._in_flight = None
        if not self.running:
            return
        self.poll_failures += 1
        self.poll_failures_by_reason[poll_failure_reason(failure)] += 1
        if self._failing_since is None:
            self._failing_since = self._reactor.seconds()
        answered = failure.check(NodeApiError) is not None
        delay = next_poll_delay(
            self.poll_failures, answered, self._reconnect, self._policy, self._random
        )
        problem = failure.getErrorMessage()
        # Said once per change of problem, not on every probe.
        if problem != self.poll_problem:
            log.warn(
                "assignments unavailable: {error}; asking again every {every:.0f} s at most",
                error=problem,
                every=delay if answered else self._reconnect.probe_seconds,
            )
        self.poll_problem = problem
        self._next(delay)

    def _next(self, delay: float) -> None:
        if self.running:
            self._poll_call = self._reactor.callLater(delay, self._poll)

    # reconciling

    def reconcile(
        self,
        instances: Sequence[InstanceAssignment],
        *,
        authoritative: bool = True,
        refused: Sequence[RefusedInstance] = (),
    ) -> None:
        """Make the served instances exactly the assigned ones.

        Changed assignments apply at once; instances to set up or tear down are queued and
        worked through a slice at a time (`_reconciling`). A newer answer replaces the queues,
        so an instance no longer wanted is not set up, and none is set up twice. `ready()` is
        false until the queues are empty. Assignments that are not `authoritative` (kept across
        a restart) set instances up but never make the agent remove anything.

        A `refused` instance (not an assignment the agent can read) is not served and makes the
        agent not ready, said once; one already served keeps its last good assignment."""
        desired = {entry.instance_id: entry for entry in instances}
        refusals = {refusal.key: refusal.reason for refusal in refused}
        for instance_id in refusals:
            slot = self.slots.get(instance_id)
            if slot is not None and instance_id not in desired:
                desired[instance_id] = slot.assignment
        self._desired = desired
        self._authoritative = authoritative
        for instance_id, slot in self.slots.items():
            if instance_id in desired:
                self._update(slot, desired[instance_id])
        for instance_id in list(self.failed):
            if instance_id in refusals:
                continue
            if instance_id not in desired or instance_id in self.slots:  # gone, or served again
                del self.failed[instance_id]
        for instance_id, reason in refusals.items():
            self._refuse(instance_id, reason)
        self._to_remove = deque(i for i in self.slots if authoritative and i not in desired)
        self._to_add = deque(i for i in desired if i not in self.slots)  # failed ones again too
        if self._work is not None:
            return  # it carries on with the new queues
        if not self._to_remove and not self._to_add:
            self._settle()
            return
        work = self._cooperator.cooperate(self._reconciling())
        self._work = work
        work.whenDone().addCallbacks(self._reconciled, self._not_reconciled).addErrback(
            lambda failure: log.failure("cannot apply the controller's assignments", failure)
        )

    def _reconciling(self) -> Iterator[None]:
        """One instance torn down or set up per step, removals first; the cooperator runs steps
        until the slice's time is up, then lets the reactor turn."""
        while self._to_remove or self._to_add:
            try:
                if self._to_remove:
                    instance_id = self._to_remove.popleft()
                    if instance_id in self.slots and instance_id not in self._desired:
                        self._remove(instance_id)
                else:
                    instance_id = self._to_add.popleft()
                    entry = self._desired.get(instance_id)
                    if entry is not None and instance_id not in self.slots:
                        self._add(instance_id, entry)
            except Exception:  # a bug: the other instances still get their turn
                log.failure("reconciling {instance} failed", instance=instance_id)
            if self._to_remove or self._to_add:
                yield None  # else done now, not a turn later

    def _slice(self) -> Callable[[], bool]:
        """A slice's termination predicate: true once `SLICE_SECONDS` have gone by."""
        end = self._timer() + SLICE_SECONDS
        return lambda: self._timer() >= end

    def _reconciled(self, _: object) -> None:
        self._work = None
        self._settle()

    def _not_reconciled(self, failure: Any) -> None:
        self._work = None
        if not failure.check(TaskStopped):  # stopped with the agent: nothing to report
            log.failure("reconciling failed; the next assignments answer tries again", failure)

    def _settle(self) -> None:
        """Every queued instance is set up or torn down: once the controller said which
        instances are this node's, clean up after the others, drop the sockets nobody claimed,
        compact the ownership record; tell on_change."""
        if self._authoritative:
            self._clean_up()
        if self.on_change is not None:
            self.on_change()

    def _clean_up(self) -> None:
        # What the agent made for instances no longer assigned (terminated while it was down,
        # or whose preparation failed): every answer lists all of the node's instances.
        wanted = {self._namespace_name(i, entry) for i, entry in self._desired.items()}
        for name in [name for name in self._owned if name not in wanted]:
            try:
                self._namespaces.release(self._owned[name])
            except Exception as error:
                log.error("cannot clean up {netns}: {error}", netns=name, error=str(error))
                continue
            self._forget(name)
        self._drop_unclaimed_sockets()
        for instance_id in [i for i in self._restored if i not in self._desired]:
            self._forget_kept(instance_id)  # kept, but no longer this node's
        self._restored.clear()
        if not self._swept:
            self._swept = True
            self._sweep(wanted)
        if self._ownership is not None:
            self._ownership.compact(self._owned)

    def _sweep(self, wanted: set[str]) -> None:
        """Once, at the first answer: namespaces with the agent's prefix that no assignment
        names and that the agent's record does not own (made by an agent that lost its record,
        or for an instance terminated meanwhile) are removed if they hold nothing foreign."""
        try:
            found = self._namespaces.listed(self._config.namespace_prefix)
        except Exception as error:
            log.warn("cannot look for namespaces left behind: {error}", error=str(error))
            return
        for name in found:
            if name in wanted or name in self._owned:
                continue
            try:
                self._namespaces.remove_if_empty(name)
            except Exception as error:
                log.warn("cannot remove namespace {netns}: {error}", netns=name, error=str(error))

    def namespace_of(self, instance_id: str) -> str:
        """The namespace `instance_id` is (or will be) served in: its assignment's, or, before
        one names it (a VM started ahead of its assignment, a live migration's destination),
        the prefix and the id."""
        entry = self._desired.get(instance_id)
        if entry is None and instance_id in self.slots:
            entry = self.slots[instance_id].assignment
        if entry is not None:
            return self._namespace_name(instance_id, entry)
        return f"{self._config.namespace_prefix}{instance_id}"

    def _namespace_name(self, instance_id: str, entry: InstanceAssignment) -> str:
        return entry.netns or f"{self._config.namespace_prefix}{instance_id}"

    def _refuse(self, instance_id: str, reason: str) -> None:
        """Not serving an instance for `reason`: said once, not on every assignments answer;
        the other instances are served."""
        if self.failed.get(instance_id) != reason:
            log.error("refusing an assignment: {error}", error=reason)
        self.failed[instance_id] = reason

    def _add(self, instance_id: str, entry: InstanceAssignment) -> None:
        name = self._namespace_name(instance_id, entry)
        try:
            names.check_instance_id(instance_id)
            names.check_namespace(name)
        except names.InvalidName as error:
            # Both become paths (the node API's URL, /run/netns): never used as they are.
            self._refuse(instance_id, str(error))
            return
        try:
            ownership = self._namespaces.prepare(name)
            previous = self._owned.get(name)
            if previous is not None:  # adopted after a restart: keep what we made before
                ownership = netns.Ownership(
                    name,
                    previous.created_namespace or ownership.created_namespace,
                    previous.added_address or ownership.added_address,
                )
            self._remember(ownership)
            listening, kept = self._listening_socket(name)
        except Exception as error:
            self.failed[instance_id] = str(error)
            log.error("cannot serve {instance}: {error}", instance=instance_id, error=str(error))
            return
        slot = Slot(
            instance_id=instance_id,
            assignment=entry,
            ownership=ownership,
            port=None,
            bucket=TokenBucket(self._config.rate_per_second, self._config.burst),
            minter=self._minter,
            strict_proxy=self._config.strict_proxy,
            limits=(
                ConnectionLimit(self._config.max_connections_per_instance, self.instance_limits),
                self.connections,
            ),
        )
        self.failed.pop(instance_id, None)
        self.slots[instance_id] = slot
        self._start_credentials(slot)
        self._keep(slot)
        if kept and slot.credentials is not None:
            # Taken back after a restart: guests' connections wait in the socket's queue until
            # the credentials are back, rather than being answered "no credentials".
            slot.pending = listening
            self._accept_when_ready(slot, self._reactor.seconds() + HOLD_SECONDS)
        else:
            self._accept(slot, listening)
        log.info("serving {instance} in {netns}", instance=instance_id, netns=name)

    def _accept(self, slot: Slot, listening: socket.socket) -> None:
        try:
            slot.port = self._reactor.adoptStreamPort(
                listening.fileno(),
                socket.AF_INET,
                make_factory(slot, self._reactor, self._observed, slot.limits, self._upstream),
            )
            for limit in slot.limits:
                limit.watch(slot.port)
        finally:
            listening.close()  # the reactor has its own copy of the descriptor
            slot.pending = None

    def _accept_when_ready(self, slot: Slot, deadline: float) -> None:
        if self.slots.get(slot.instance_id) is not slot or slot.pending is None:
            return  # removed (or the agent stopped) meanwhile
        keeper = slot.credentials
        if keeper is None or keeper.current() is not None or self._reactor.seconds() >= deadline:
            self._accept(slot, slot.pending)
            return
        self._reactor.callLater(0.02, self._accept_when_ready, slot, deadline)

    def _listening_socket(self, name: str) -> tuple[socket.socket, bool]:
        """The instance's socket, and whether it was kept across a restart (else it is new, and
        handed to the service manager's store for the next restart)."""
        kept = self._inherited.pop(name, None)
        if kept:
            for extra in kept[1:]:
                os.close(extra)
            log.info("took back the listening socket of {netns}", netns=name)
            return socket.socket(fileno=kept[0]), True
        listening = self._namespaces.listen(name, self._config.imds_port)
        if self._notifier is not None:
            self._notifier.store_fds(name, [listening.fileno()])
        return listening, False

    def _drop_unclaimed_sockets(self) -> None:
        """Sockets kept for instances no longer assigned: close them and empty their store."""
        for name, fds in self._inherited.items():
            for fd in fds:
                os.close(fd)
            if self._notifier is not None:
                self._notifier.remove_fds(name)
        self._inherited.clear()

    def _update(self, slot: Slot, entry: InstanceAssignment) -> None:
        if entry == slot.assignment:
            return
        changed_profile = profile_key(entry) != profile_key(slot.assignment)
        slot.assignment = entry
        if changed_profile:
            self.credentials.remove(slot.instance_id)
            slot.credentials = None
            self._start_credentials(slot)
        self._keep(slot)
        log.info("updated {instance}", instance=slot.instance_id)

    def _remove(self, instance_id: str) -> None:
        slot = self.slots.pop(instance_id)
        slot.close()
        if self._notifier is not None:
            self._notifier.remove_fds(slot.ownership.namespace)
        self.credentials.remove(instance_id)
        self._forget_kept(instance_id)
        try:
            self._namespaces.release(slot.ownership)
        except Exception as error:
            log.error(
                "cannot clean up {netns}: {error}", netns=slot.ownership.namespace, error=str(error)
            )
        self._forget(slot.ownership.namespace)
        log.info("stopped serving {instance}", instance=instance_id)

    def _start_credentials(self, slot: Slot) -> None:
        if profile_key(slot.assignment) is None:
            return
        instance_id = slot.instance_id
        restored = None
        entry = self._restored.pop(instance_id, None)
        if entry is not None:
            now = datetime.fromtimestamp(self._reactor.seconds(), UTC)
            # Worth holding as a new set would be: more than twice the expiry margin left.
            least = 2 * self._policy.expiry_margin_seconds
            restored = kept.usable_credentials(entry, slot.assignment, now, least)
        slot.credentials = self.credentials.add(
            instance_id, lambda: self._client.credentials(instance_id), restored
        )

    # kept across a restart

    def _credentials_changed(self, instance_id: str, old: State, event: Input, new: State) -> None:
        """A new set is held, or the held one dropped: what is kept follows."""
        if event in (Input.FETCHED, Input.EXPIRY_DUE):
            slot = self.slots.get(instance_id)
            if slot is not None:
                self._keep(slot)

    def _keep(self, slot: Slot) -> None:
        """Keep the instance as it is served now (its assignment and the set it holds)."""
        if self._keeper is None:
            return
        keeper = slot.credentials
        held = keeper.held if keeper is not None else None
        try:
            text = kept.encode_entry(slot.instance_id, slot.assignment, held)
        except (kept.EntryError, TypeError, ValueError) as error:
            self._keeping_failed(f"{slot.instance_id}: {error}")
            return
        digest = blake2b(text.encode("utf-8"), digest_size=16).digest()
        if self._kept_digests.get(slot.instance_id) == digest:
            return
        try:
            self._keeper.keep(slot.instance_id, text)
        except Exception as error:
            self._keeping_failed(str(error))
            return
        self._kept_digests[slot.instance_id] = digest
        self._keep_problem = None

    def _forget_kept(self, instance_id: str) -> None:
        self._kept_digests.pop(instance_id, None)
        if self._keeper is None:
            return
        try:
            self._keeper.forget(instance_id)
        except Exception as error:
            self._keeping_failed(str(error))

    def _keeping_failed(self, problem: str) -> None:
        if problem != self._keep_problem:  # said once per problem, not per instance
            log.warn(
                "cannot keep instances across a restart: {problem}; they are served from the"
                " controller after one",
                problem=problem,
            )
        self._keep_problem = problem

    def _remember(self, ownership: netns.Ownership) -> None:
        """Record what was made at once (an append: see `netns.OwnershipRecord`)."""
        if self._owned.get(ownership.namespace) == ownership:
            return  # adopted again, nothing new made
        self._owned[ownership.namespace] = ownership
        if self._ownership is not None:
            self._ownership.remember(ownership)

    def _forget(self, name: str) -> None:
        if self._owned.pop(name, None) is not None and self._ownership is not None:
            self._ownership.forget(name)

    def _observed(self, instance_id: str, path: str, answer: Any, seconds: float) -> None:
        if self.observe is not None:
            self.observe(instance_id, path, answer, seconds)

    # for health and metrics

    def ready(self) -> tuple[bool, str]:
        """Synced with the controller, every assigned instance set up, and every instance with a
        profile holding credentials its guest is served: an instance whose credentials are
        missing or were dropped near expiry makes the agent not ready, naming how many and why."""
        if not self.synced:
            if self.poll_problem is not None:
                return False, f"not yet synced with the controller: {self.poll_problem}"
            return False, "not yet synced with the controller"
        if self._work is not None:
            return False, f"setting up instances, {len(self._to_add)} to go"
        if self.failed:
            instance_id, reason = next(iter(self.failed.items()))
            return False, f"{len(self.failed)} instance(s) not served, e.g. {instance_id}: {reason}"
        without = self.without_credentials()
        if without:
            count = len(without)
            shown = ", ".join(
                f"{instance_id}: {verdict}" for instance_id, verdict in without[:_NAMED_IN_READYZ]
            )
            more = f", and {count - _NAMED_IN_READYZ} more" if count > _NAMED_IN_READYZ else ""
            noun = "instance" if count == 1 else "instances"
            return False, f"not ready: {count} {noun} without credentials ({shown}{more})"
        return True, "ready"

    def without_credentials(self) -> list[tuple[str, str]]:
        """Instances with a profile whose guests get no credentials now (none fetched yet,
        expired, or too close to expiry), with the ``iam/info`` code that says why. Instances
        without a profile need none and are never listed."""
        without = []
        for instance_id, slot in self.slots.items():
            keeper = slot.credentials
            if keeper is not None and keeper.current() is None:
                without.append((instance_id, str(keeper.verdict())))
        return without


def _descriptor_limit() -> int:
    """How many descriptors this process may open (its soft RLIMIT_NOFILE)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft
