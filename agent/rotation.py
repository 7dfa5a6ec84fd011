"""Each instance's role credentials, kept fresh in memory: the guest never waits on the controller.

`InstanceCredentials` is the lifecycle of one instance's credentials as an explicit state machine
(`TRANSITIONS`): it fetches as soon as the instance is assigned, refreshes on the schedule of
`agent.refresh`, retries failures with backoff while it keeps serving the set it has, and drops a
set before it expires. `current(now)` answers from memory only. `CredentialCache` holds the
machines of every instance on the node and shares one cap on concurrent controller calls, so that
an agent restarting with hundreds of instances does not stampede the controller.

Time comes from an injected clock (the reactor, or `twisted.internet.task.Clock` in tests), the
controller call from an injected `fetch`, and jitter from an injected random source.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from enum import Enum
from random import SystemRandom
from typing import Any, Protocol

from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore
from twisted.logger import Logger
from twisted.python.failure import Failure

from agent.imds.credentials import CredentialSet, MalformedCredentials, parse_expiration
from agent.refresh import (
    RandomSource,
    RefreshPolicy,
    Verdict,
    min_remaining,
    next_refresh_at,
    retry_delay,
    servable,
    usable_on_arrival,
)
from common.timestamps import format_timestamp

log = Logger(namespace="rolecall.agent.credentials")

DEFAULT_MAX_CONCURRENT_FETCHES = 8

#: Failure reasons of answers that arrived but cannot be used (other failures are labelled by
#: their exception's class name: see `failure_reason`).
MALFORMED = "MalformedCredentials"
EXPIRING_ON_ARRIVAL = "ExpiringOnArrival"

_SYSTEM_RANDOM = SystemRandom()

_BOUNDARY_SLACK_SECONDS = 0.001


class DelayedCall(Protocol):
    """What this module uses of `IDelayedCall`."""

    def cancel(self) -> None: ...

    def active(self) -> bool: ...

    def getTime(self) -> float: ...


class ReactorTime(Protocol):
    """What this module uses of `IReactorTime`, spelled as a protocol so mypy can check it."""

    def seconds(self) -> float: ...

    def callLater(
        self, delay: float, callable: Callable[..., object], *args: object, **kw: object
    ) -> Any: ...


#: The controller call: a Deferred that fires with the node API's decoded JSON body, or fails.
Fetch = Callable[[], Deferred[Any]]


class FetchTimeout(TimeoutError):
    """The controller did not answer within the policy's fetch timeout."""


class TransitionError(RuntimeError):
    """An input arrived in a state that has no transition for it: a bug in this module."""


class State(Enum):
    """Where one instance's credentials are in their lifecycle."""

    #: Nothing obtained yet, no call in flight (before the first fetch, or waiting to retry it).
    EMPTY = "empty"
    #: Nothing obtained yet, a controller call in flight.
    FETCHING = "fetching"
    #: A set is held and served; its refresh is scheduled.
    FRESH = "fresh"
    #: A set is held and served; a controller call for its successor is in flight.
    REFRESHING = "refreshing"
    #: A set is held and still served, but the last refresh failed; a retry is scheduled.
    STALE = "stale"
    #: The held set came too close to expiry and was dropped; retrying (waiting or in flight).
    EXPIRED = "expired"
    #: The instance was removed: no timers, no calls, nothing held.
    GONE = "gone"


class Input(Enum):
    START = "start"
    #: Started with the set the agent kept across its restart (`agent.kept`).
    RESTORED = "restored"
    FETCHED = "fetched"
    FAILED = "failed"
    REFRESH_DUE = "refresh_due"
    RETRY_DUE = "retry_due"
    EXPIRY_DUE = "expiry_due"
    STOP = "stop"


class Output(Enum):
    #: Call the controller (through the shared concurrency cap).
    FETCH = "fetch"
    #: Hold the new set; schedule its refresh and its expiry; reset the backoff.
    INSTALL = "install"
    #: Hold the set kept across a restart as INSTALL does, but as not yet confirmed by the
    #: controller: served down to the expiry margin, refreshed on its own schedule.
    RESTORE = "restore"
    #: Count the failure; schedule a retry after the backoff delay.
    SCHEDULE_RETRY = "schedule_retry"
    #: Forget the held set and cancel its refresh and expiry timers.
    DROP = "drop"
    #: Cancel every timer and the call in flight; forget the held set.
    HALT = "halt"


_STOP = (State.GONE, (Output.HALT,))

#: (state, input) -> (next state, outputs in order). A pair that is absent is a bug.
TRANSITIONS: Mapping[tuple[State, Input], tuple[State, tuple[Output, ...]]] = {
    (State.EMPTY, Input.START): (State.FETCHING, (Output.FETCH,)),
    (State.EMPTY, Input.RESTORED): (State.FRESH, (Output.RESTORE,)),
    (State.EMPTY, Input.RETRY_DUE): (State.FETCHING, (Output.FETCH,)),
    (State.EMPTY, Input.STOP): _STOP,
    (State.FETCHING, Input.FETCHED): (State.FRESH, (Output.INSTALL,)),
    (State.FETCHING, Input.FAILED): (State.EMPTY, (Output.SCHEDULE_RETRY,)),
    (State.FETCHING, Input.STOP): _STOP,
    (State.FRESH, Input.REFRESH_DUE): (State.REFRESHING, (Output.FETCH,)),
    # Only if the clock jumps past the refresh: fetch at once, the set is no longer served.
    (State.FRESH, Input.EXPIRY_DUE): (State.EXPIRED, (Output.DROP, Output.FETCH)),
    (State.FRESH, Input.STOP): _STOP,
    (State.REFRESHING, Input.FETCHED): (State.FRESH, (Output.INSTALL,)),
    (State.REFRESHING, Input.FAILED): (State.STALE, (Output.SCHEDULE_RETRY,)),
    (State.REFRESHING, Input.EXPIRY_DUE): (State.EXPIRED, (Output.DROP,)),
    (State.REFRESHING, Input.STOP): _STOP,
    (State.STALE, Input.RETRY_DUE): (State.REFRESHING, (Output.FETCH,)),
    (State.STALE, Input.EXPIRY_DUE): (State.EXPIRED, (Output.DROP,)),
    (State.STALE, Input.STOP): _STOP,
    (State.EXPIRED, Input.RETRY_DUE): (State.EXPIRED, (Output.FETCH,)),
    (State.EXPIRED, Input.FETCHED): (State.FRESH, (Output.INSTALL,)),
    (State.EXPIRED, Input.FAILED): (State.EXPIRED, (Output.SCHEDULE_RETRY,)),
    (State.EXPIRED, Input.STOP): _STOP,
    # Removed: late answers and a second stop change nothing.
    **{(State.GONE, event): (State.GONE, ()) for event in Input},
}


def failure_reason(failure: Failure) -> str:
    """A short, secret-free label for a failed fetch: the exception's class name, and its HTTP
    status when it carries one as ``status`` (``NodeApiError:404`` is not ``NodeApiError:503``)."""
    name = type(failure.value).__name__
    status = getattr(failure.value, "status", None)
    if isinstance(status, int) and not isinstance(status, bool):
        return f"{name}:{status}"
    return name


class InstanceCredentials:
    """One instance's credentials, fetched at creation and kept fresh until `stop()`.

    The attributes `attempts`, `successes`, `failures` (a Counter by reason),
    `consecutive_failures` and `last_error` are for metrics and logs; `on_transition(old, input,
    new)` is called after every transition.
    """

    def __init__(
        self,
        instance_id: str,
        clock: ReactorTime,
        fetch: Fetch,
        *,
        limiter: DeferredSemaphore,
        policy: RefreshPolicy | None = None,
        random: RandomSource | None = None,
        on_transition: Callable[[State, Input, State], None] | None = None,
        restored: CredentialSet | None = None,
    ) -> None:
        self.instance_id = instance_id
        self._clock = clock
        self._fetch = fetch
        self._limiter = limiter
        self._policy = policy if policy is not None else RefreshPolicy()
        self._random: RandomSource = random if random is not None else _SYSTEM_RANDOM
        self.on_transition = on_transition
        self._state = State.EMPTY
        self._held: CredentialSet | None = None
        #: Whether the last completed controller call gave a usable set.
        self._reachable = False
        self._timers: dict[Input, DelayedCall] = {}
        self._in_flight: Deferred[Any] | None = None
        self._queue: deque[tuple[Input, CredentialSet | str | None]] = deque()
        self._handling = False
        self.attempts = 0
        self.successes = 0
        self.consecutive_failures = 0
        self.failures: Counter[str] = Counter()
        #: The message of the last failed fetch (never a secret: the controller's error text).
        self.last_error: str | None = None
        #: Bumped by every transition: what `verdict` depends on (the held set, whether the
        #: controller answers, the state) changes only then, or with the time.
        self.generation = 0
        if restored is not None:
            self._handle(Input.RESTORED, restored)
        else:
            self._handle(Input.START)

    # -- what the IMDS server and the metrics read ------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def controller_reachable(self) -> bool:
        """Whether the last completed controller call gave a usable set."""
        return self._reachable

    def now(self) -> datetime:
        """The injected clock's time as an aware UTC datetime."""
        return datetime.fromtimestamp(self._clock.seconds(), UTC)

    def verdict(self, now: datetime | None = None) -> Verdict:
        """Whether the held set may be served at `now`; the value is ``iam/info``'s ``Code``."""
        when = now if now is not None else self.now()
        if self._held is None:
            return Verdict.EXPIRED if self._state is State.EXPIRED else Verdict.NO_CREDENTIALS
        return servable(
            self._held.expiration,
            when,
            self._reachable,
            self._policy,
            issued=self._held.last_updated,
        )

    def verdict_until(self, now: float) -> tuple[Verdict, float]:
        """The verdict at `now` (POSIX seconds), and a moment before which it stays the same
        while `generation` does: what the metadata service caches between transitions.

        The verdict itself comes from `verdict`; the moment is the next boundary of
        `agent.refresh.servable` (too little left, then expired), a millisecond early so that
        rounding never stretches a cached verdict past it.
        """
        verdict = self.verdict(datetime.fromtimestamp(now, UTC))
        held = self._held
        if held is None:
            return verdict, math.inf
        expires = held.expiration.timestamp()
        if verdict is Verdict.SERVE:
            least = min_remaining(held.last_updated, held.expiration, self._reachable, self._policy)
            return verdict, expires - least.total_seconds() - _BOUNDARY_SLACK_SECONDS
        if verdict is Verdict.REFRESH_PENDING:
            margin = self._policy.expiry_margin_seconds
            return verdict, expires - margin - _BOUNDARY_SLACK_SECONDS
        return verdict, math.inf

    @property
    def held(self) -> CredentialSet | None:
        """The set held, servable or not (`current` says whether it may be served)."""
        return self._held

    def current(self, now: datetime | None = None) -> CredentialSet | None:
        """The set to serve at `now`, or None (then `verdict(now)` says why). Never waits."""
        if self.verdict(now) is Verdict.SERVE:
            return self._held
        return None

    def seconds_until_expiry(self, now: datetime | None = None) -> float | None:
        """Seconds until the held set's Expiration (negative once past), None when none is held."""
        if self._held is None:
            return None
        when = now if now is not None else self.now()
        return (self._held.expiration - when).total_seconds()

    def stop(self) -> None:
        """The instance is gone: cancel every timer and the call in flight, forget the set."""
        self._handle(Input.STOP)

    def hurry(self, within: float) -> None:
        """A retry waiting longer than `within` seconds is due within them instead (at a random
        moment, so a node's instances do not all call at once): the controller answers again
        after an outage, and the backoff it grew is no reason to wait minutes more."""
        timer = self._timers.get(Input.RETRY_DUE)
        if timer is None or not timer.active():
            return
        if timer.getTime() - self._clock.seconds() > within:
            self._later(self._random.uniform(0.0, within), Input.RETRY_DUE)

    # -- the machine -------------------------------------------------------------------------

    def _handle(self, event: Input, payload: CredentialSet | str | None = None) -> None:
        # Inputs raised while an output runs (a fetch that answers at once, a cancelled call)
        # wait their turn, so every transition completes before the next begins.
        self._queue.append((event, payload))
        if self._handling:
            return
        self._handling = True
        try:
            while self._queue:
                self._step(*self._queue.popleft())
        finally:
            self._handling = False

    def _step(self, event: Input, payload: CredentialSet | str | None) -> None:
        old = self._state
        try:
            new, outputs = TRANSITIONS[(old, event)]
        except KeyError:
            raise TransitionError(f"no transition from {old.value} on {event.value}") from None
        self._state = new
        for output in outputs:
            self._perform(output, payload)
        self.generation += 1
        if self.on_transition is not None:
            self.on_transition(old, event, new)

    def _perform(self, output: Output, payload: CredentialSet | str | None) -> None:
        if output is Output.FETCH:
            self._begin_fetch()
        elif output is Output.INSTALL:
            assert isinstance(payload, CredentialSet)
            self._install(payload)
        elif output is Output.RESTORE:
            assert isinstance(payload, CredentialSet)
            self._install(payload, confirmed=False)
        elif output is Output.SCHEDULE_RETRY:
            assert isinstance(payload, str)
            self._schedule_retry(payload)
        elif output is Output.DROP:
            self._drop()
        elif output is Output.HALT:
            self._halt()

    def _later(self, seconds: float, event: Input) -> None:
        self._cancel_timer(event)
        self._timers[event] = self._clock.callLater(max(0.0, seconds), self._timer_fired, event)

    def _at(self, moment: datetime, event: Input) -> None:
        self._later((moment - self.now()).total_seconds(), event)

    def _timer_fired(self, event: Input) -> None:
        del self._timers[event]
        self._handle(event)

    def _cancel_timer(self, event: Input) -> None:
        timer = self._timers.pop(event, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _begin_fetch(self) -> None:
        self.attempts += 1
        call = self._limiter.run(self._call_controller)
        self._in_flight = call
        call.addCallbacks(self._answered, self._failed)
        call.addErrback(self._bug)

    def _call_controller(self) -> Deferred[Any]:
        """The injected fetch, failed with `FetchTimeout` if it takes too long."""
        answer = self._fetch()
        if answer.called:
            # Answered at once (a client that fails before any I/O): releasing the shared cap
            # now would start the next waiter's call inside this one, and so on for every
            # waiting instance, exhausting the stack. Hand the answer over on the next tick.
            return self._on_next_tick(answer)
        timed_out = False

        def give_up() -> None:
            nonlocal timed_out
            timed_out = True
            answer.cancel()

        timer: DelayedCall = self._clock.callLater(self._policy.fetch_timeout_seconds, give_up)

        def settle(result: object) -> object:
            if timer.active():
                timer.cancel()
            if (
                timed_out
                and isinstance(result, Failure)
                and isinstance(result.value, CancelledError)
            ):
                seconds = self._policy.fetch_timeout_seconds
                raise FetchTimeout(f"no answer from the controller in {seconds:g}s")
            return result

        return answer.addBoth(settle)

    def _on_next_tick(self, answer: Deferred[Any]) -> Deferred[Any]:
        pending: list[DelayedCall] = []

        def cancel(_: Deferred[Any]) -> None:
            for call in pending:
                if call.active():
                    call.cancel()

        later: Deferred[Any] = Deferred(cancel)

        def settle(result: object) -> None:
            if isinstance(result, Failure):
                later.errback(result)
            else:
                later.callback(result)

        def hand_over(result: object) -> None:
            pending.append(self._clock.callLater(0, settle, result))

        answer.addBoth(hand_over)
        return later

    def _answered(self, body: object) -> None:
        self._in_flight = None
        if self._state is State.GONE:
            return
        now = self.now()
        try:
            arrived = CredentialSet.from_node_api(body, now)
        except MalformedCredentials as error:
            self._fail(MALFORMED, str(error))
            return
        if not usable_on_arrival(arrived.expiration, now, self._policy):
            expiration = format_timestamp(arrived.expiration)
            self._fail(EXPIRING_ON_ARRIVAL, f"the new set expires at {expiration}, too soon")
            return
        self._handle(Input.FETCHED, arrived)

    def _failed(self, failure: Failure) -> None:
        self._in_flight = None
        if self._state is not State.GONE:
            self._fail(failure_reason(failure), failure.getErrorMessage())

    def _fail(self, reason: str, message: str) -> None:
        self.last_error = message
        self._handle(Input.FAILED, reason)

    def _bug(self, failure: Failure) -> None:
        log.failure(
            "credentials of {instance_id}: unexpected error", failure, instance_id=self.instance_id
        )

    def _install(self, arrived: CredentialSet, confirmed: bool = True) -> None:
        replaced = self._held
        self._held = arrived
        # A kept set is served as when the controller is unreachable (down to the expiry
        # margin) until the controller has answered; its refresh may be due at once.
        self._reachable = confirmed
        if confirmed:
            self.successes += 1
        self.consecutive_failures = 0
        self._at(
            next_refresh_at(arrived.last_updated, arrived.expiration, self._policy, self._random),
            Input.REFRESH_DUE,
        )
        self._later(
            (arrived.expiration - self.now()).total_seconds() - self._policy.expiry_margin_seconds,
            Input.EXPIRY_DUE,
        )
        log.info(
            "credentials of {instance_id}: {access_key_id} until {expiration} ({previous})",
            instance_id=self.instance_id,
            access_key_id=arrived.access_key_id,
            expiration=format_timestamp(arrived.expiration),
            previous=(
                "kept across the restart"
                if not confirmed
                else f"replaces {replaced.access_key_id if replaced is not None else 'nothing'}"
            ),
        )

    def _schedule_retry(self, reason: str) -> None:
        self._reachable = False
        self.failures[reason] += 1
        delay = retry_delay(self.consecutive_failures, self._policy, self._random)
        self.consecutive_failures += 1
        self._later(delay, Input.RETRY_DUE)
        log.warn(
            "credentials of {instance_id}: fetch failed ({reason}: {error});"
            " retry {attempt} in {delay:.1f}s",
            instance_id=self.instance_id,
            reason=reason,
            error=self.last_error,
            attempt=self.consecutive_failures,
            delay=delay,
        )

    def _drop(self) -> None:
        if self._held is not None:
            log.warn(
                "credentials of {instance_id}: {access_key_id} is too close to expiry;"
                " no longer served",
                instance_id=self.instance_id,
                access_key_id=self._held.access_key_id,
            )
        self._held = None
        self._cancel_timer(Input.REFRESH_DUE)
        self._cancel_timer(Input.EXPIRY_DUE)

    def _halt(self) -> None:
        for event in list(self._timers):
            self._cancel_timer(event)
        self._held = None
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            in_flight.cancel()


class CredentialCache:
    """The credentials of every instance on this node, sharing one cap on controller calls."""

    def __init__(
        self,
        clock: ReactorTime,
        *,
        policy: RefreshPolicy | None = None,
        random: RandomSource | None = None,
        max_concurrent_fetches: int = DEFAULT_MAX_CONCURRENT_FETCHES,
        on_transition: Callable[[str, State, Input, State], None] | None = None,
    ) -> None:
        self._clock = clock
        self._policy = policy if policy is not None else RefreshPolicy()
        self._random = random
        self._on_transition = on_transition
        #: Shared by every instance: at most this many controller calls at once.
        self.limiter = DeferredSemaphore(max_concurrent_fetches)
        self._instances: dict[str, InstanceCredentials] = {}

    def add(
        self, instance_id: str, fetch: Fetch, restored: CredentialSet | None = None
    ) -> InstanceCredentials:
        """Start keeping `instance_id`'s credentials: the first fetch starts now, or, with a set
        `restored` from before a restart, when that set's refresh is due."""
        if instance_id in self._instances:
            raise ValueError(f"{instance_id} already has credentials kept")
        hook = self._on_transition

        def report(old: State, event: Input, new: State) -> None:
            if hook is not None:
                hook(instance_id, old, event, new)

        instance = InstanceCredentials(
            instance_id,
            self._clock,
            fetch,
            limiter=self.limiter,
            policy=self._policy,
            random=self._random,
            on_transition=report if hook is not None else None,
            restored=restored,
        )
        self._instances[instance_id] = instance
        return instance

    def remove(self, instance_id: str) -> None:
        """Stop and forget `instance_id`'s credentials; nothing happens if none are kept."""
        instance = self._instances.pop(instance_id, None)
        if instance is not None:
            instance.stop()

    def get(self, instance_id: str) -> InstanceCredentials | None:
        return self._instances.get(instance_id)

    def __contains__(self, instance_id: object) -> bool:
        return instance_id in self._instances

    def __len__(self) -> int:
        return len(self._instances)

    def __iter__(self) -> Iterator[InstanceCredentials]:
        return iter(list(self._instances.values()))

    def hurry(self, within: float) -> None:
        """Every instance's retry waiting longer than `within` seconds is due within them."""
        for instance in self._instances.values():
            instance.hurry(within)

    def stop(self) -> None:
        """Stop every instance's machine (the agent is shutting down)."""
        for instance_id in list(self._instances):
            self.remove(instance_id)


__all__ = [
    "CredentialCache",
    "CredentialSet",
    "InstanceCredentials",
    "MalformedCredentials",
    "parse_expiration",
]
