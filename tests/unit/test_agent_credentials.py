"""Instance credentials: the lifecycle machine, rotation over simulated hours, the fetch cap.

Time moves only through `twisted.internet.task.Clock`; the controller is a fake whose answers
are Deferreds fired by that clock.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, DeferredSemaphore, fail, succeed
from twisted.internet.task import Clock

from agent.refresh import RefreshPolicy, Verdict, retry_ceiling
from agent.rotation import (
    EXPIRING_ON_ARRIVAL,
    MALFORMED,
    TRANSITIONS,
    CredentialCache,
    CredentialSet,
    Input,
    InstanceCredentials,
    MalformedCredentials,
    Output,
    State,
    TransitionError,
)

START = 1_795_000_000.0  # 2026-11-18, a whole second
HOUR = 3600.0
MINUTE = 60.0
MARGIN = timedelta(seconds=60)
THIRTY_MINUTES = timedelta(minutes=30)


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def node_api_body(expiration: datetime, serial: int = 1) -> dict[str, str]:
    return {
        "AccessKeyId": f"ASIA{serial:016d}",
        "SecretAccessKey": f"secret-{serial}",
        "Token": f"token-{serial}",
        "Expiration": format_time(expiration),
        "RoleArn": "arn:aws:iam::123456789012:role/app/web-server",
        "InstanceProfileArn": "arn:aws:iam::123456789012:instance-profile/web",
        "InstanceProfileId": "AIPAEXAMPLEPROFILE01",
        "AccountId": "123456789012",
    }


class FakeController:
    """The node API's credential call, answering after `latency` on the test's clock.

    While `up` is false it refuses (errback) or, with `outage="hang"`, never answers.
    """

    def __init__(
        self,
        clock: Clock,
        lifetime: float = 6 * HOUR,
        latency: float = 0.25,
        outage: str = "refuse",
        skew: float = 0.0,
    ) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.latency = latency
        self.outage = outage
        self.skew = skew
        self.up = True
        self.calls: list[float] = []
        self.outstanding = 0
        self.max_outstanding = 0
        self.body: Callable[[datetime, int], object] | None = None

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.seconds() + self.skew, UTC)

    def fetch(self) -> Deferred[Any]:
        self.calls.append(self.clock.seconds())
        self.outstanding += 1
        self.max_outstanding = max(self.max_outstanding, self.outstanding)
        pending = []

        def cancel(_: Deferred[Any]) -> None:
            self.outstanding -= 1
            for call in pending:
                if call.active():
                    call.cancel()

        answer: Deferred[Any] = Deferred(cancel)
        if self.up or self.outage != "hang":
            pending.append(self.clock.callLater(self.latency, self._answer, answer))
        return answer

    def _answer(self, answer: Deferred[Any]) -> None:
        self.outstanding -= 1
        if not self.up:
            answer.errback(ConnectionRefusedError("controller down"))
            return
        expiration = self.now() + timedelta(seconds=self.lifetime)
        if self.body is not None:
            answer.callback(self.body(expiration, len(self.calls)))
        else:
            answer.callback(node_api_body(expiration, len(self.calls)))


@pytest.fixture
def clock() -> Iterator[Clock]:
    clock = Clock()
    clock.advance(START)
    yield clock


def machine(
    clock: Clock,
    controller: FakeController,
    *,
    seed: int = 1,
    policy: RefreshPolicy | None = None,
    limiter: DeferredSemaphore | None = None,
    on_transition: Callable[[State, Input, State], None] | None = None,
) -> InstanceCredentials:
    return InstanceCredentials(
        "i-0123456789abcdef0",
        clock,
        controller.fetch,
        limiter=limiter if limiter is not None else DeferredSemaphore(8),
        policy=policy,
        random=random.Random(seed),
        on_transition=on_transition,
    )


def run(clock: Clock, seconds: float) -> None:
    """Advance `seconds`, stopping at every delayed call on the way so that each runs at its
    own time (`Clock.advance` alone runs them all at the end time, late)."""
    end = clock.seconds() + seconds
    while True:
        due = [call.getTime() for call in clock.getDelayedCalls() if call.getTime() <= end]
        if not due:
            break
        clock.advance(max(0.0, min(due) - clock.seconds()))
    clock.advance(max(0.0, end - clock.seconds()))


def now_of(clock: Clock) -> datetime:
    return datetime.fromtimestamp(clock.seconds(), UTC)


# -- the scenario -------------------------------------------------------------------


@pytest.mark.parametrize("outage", ["refuse", "hang"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_six_hours_of_rotation_with_a_two_hour_outage_serve_only_valid_credentials(
    clock: Clock, outage: str, seed: int
) -> None:
    controller = FakeController(clock, lifetime=6 * HOUR, outage=outage)
    credentials = machine(clock, controller, seed=seed)
    # Covers the whole window in which the first refresh can fall (2h24 to 3h after issue).
    outage_start, outage_end = 2 * HOUR + 20 * MINUTE, 4 * HOUR + 20 * MINUTE
    seen_last_updated: list[datetime] = []
    states: set[State] = set()
    for minute in range(1, 6 * 60 + 1):
        elapsed = clock.seconds() - START
        controller.up = not outage_start <= elapsed < outage_end
        run(clock, MINUTE)
        now = now_of(clock)
        states.add(credentials.state)
        served = credentials.current(now)
        assert served is not None, f"nothing served at minute {minute}"
        assert served.expiration - now > MARGIN  # never expired, never about to
        if controller.up:
            assert served.expiration - now >= THIRTY_MINUTES
        if seen_last_updated:
            assert served.last_updated >= seen_last_updated[-1]
        if not seen_last_updated or served.last_updated != seen_last_updated[-1]:
            seen_last_updated.append(served.last_updated)
    assert len(seen_last_updated) == 2  # one rotation, after the outage
    assert seen_last_updated[1] - seen_last_updated[0] > timedelta(hours=4)
    assert State.STALE in states
    assert sum(credentials.failures.values()) > 10
    assert (
        credentials.failures.keys()
        == {
            "refuse": {"ConnectionRefusedError"},
            "hang": {"FetchTimeout"},
        }[outage]
    )
    credentials.stop()
    assert clock.getDelayedCalls() == []
    assert credentials.current(now_of(clock)) is None


def test_a_healthy_agent_rotates_every_few_hours_serving_at_least_half_the_lifetime(
    clock: Clock,
) -> None:
    controller = FakeController(clock, lifetime=6 * HOUR, latency=0.5)
    credentials = machine(clock, controller)
    keys: list[str] = []
    last_updated: list[datetime] = []
    for _ in range(24 * 60):
        run(clock, MINUTE)
        now = now_of(clock)
        served = credentials.current(now)
        assert served is not None
        # Half the life, less the controller's half-second answer.
        assert served.expiration - now >= timedelta(hours=3, seconds=-1)
        if not keys or served.access_key_id != keys[-1]:
            keys.append(served.access_key_id)
            last_updated.append(served.last_updated)
    assert 8 <= len(keys) <= 11  # a refresh every 2.4 to 3 hours
    assert last_updated == sorted(set(last_updated))
    assert credentials.failures == {}
    assert credentials.attempts == credentials.successes == len(keys)
    credentials.stop()
    assert clock.getDelayedCalls() == []


def test_an_outage_longer_than_the_credentials_stops_serving_before_expiry_then_recovers(
    clock: Clock,
) -> None:
    controller = FakeController(clock, lifetime=HOUR)
    credentials = machine(clock, controller)
    run(clock, 1)
    first = credentials.current(now_of(clock))
    assert first is not None
    controller.up = False
    verdicts: list[Verdict] = []
    while clock.seconds() - START < 3 * HOUR:
        run(clock, 10)
        now = now_of(clock)
        served = credentials.current(now)
        verdicts.append(credentials.verdict(now))
        if served is not None:
            assert served.expiration - now > MARGIN
        if now >= first.expiration - MARGIN:
            assert served is None
            assert credentials.verdict(now) is Verdict.EXPIRED
            assert credentials.state is State.EXPIRED
    assert Verdict.SERVE in verdicts and verdicts[-1] is Verdict.EXPIRED
    controller.up = True
    for _ in range(int(retry_ceiling(100, RefreshPolicy())) + 1):
        run(clock, 1)
    assert credentials.state is State.FRESH
    recovered = credentials.current(now_of(clock))
    assert recovered is not None and recovered.last_updated > first.last_updated
    credentials.stop()
    assert clock.getDelayedCalls() == []


def test_while_the_controller_answers_a_set_under_thirty_minutes_is_not_served(
    clock: Clock,
) -> None:
    controller = FakeController(clock, lifetime=6 * HOUR, outage="hang")
    policy = RefreshPolicy(fetch_timeout_seconds=6 * HOUR)  # a refresh that hangs for hours
    credentials = machine(clock, controller, policy=policy)
    run(clock, 1)
    first = credentials.current(now_of(clock))
    assert first is not None
    controller.up = False
    run(clock, 5 * HOUR + 31 * MINUTE)
    assert credentials.state is State.REFRESHING
    assert credentials.controller_reachable
    now = now_of(clock)
    assert first.expiration - now < THIRTY_MINUTES
    assert credentials.current(now) is None
    assert credentials.verdict(now) is Verdict.REFRESH_PENDING
    credentials.stop()
    assert clock.getDelayedCalls() == []


# -- the lifecycle --------------------------------------------------------------------------


def test_fetching_starts_when_the_machine_is_created(clock: Clock) -> None:
    controller = FakeController(clock)
    credentials = machine(clock, controller)
    assert controller.calls == [START]
    assert credentials.state is State.FETCHING
    assert credentials.current(now_of(clock)) is None
    assert credentials.verdict(now_of(clock)) is Verdict.NO_CREDENTIALS
    run(clock, controller.latency)
    assert credentials.state is State.FRESH
    assert credentials.current(now_of(clock)) is not None
    credentials.stop()


def test_a_normal_life_goes_through_the_transition_table(clock: Clock) -> None:
    controller = FakeController(clock, lifetime=HOUR)
    seen: list[tuple[State, Input, State]] = []
    credentials = machine(clock, controller, on_transition=lambda *t: seen.append(t))
    run(clock, 1)
    controller.up = False
    run(clock, 30 * MINUTE)
    controller.up = True
    run(clock, 10 * MINUTE)
    credentials.stop()
    assert seen[:6] == [
        (State.EMPTY, Input.START, State.FETCHING),
        (State.FETCHING, Input.FETCHED, State.FRESH),
        (State.FRESH, Input.REFRESH_DUE, State.REFRESHING),
        (State.REFRESHING, Input.FAILED, State.STALE),
        (State.STALE, Input.RETRY_DUE, State.REFRESHING),
        (State.REFRESHING, Input.FAILED, State.STALE),
    ]
    assert (State.REFRESHING, Input.FETCHED, State.FRESH) in seen
    assert seen[-1] == (State.FRESH, Input.STOP, State.GONE)


def test_a_failed_first_fetch_retries_and_says_no_credentials_meanwhile(clock: Clock) -> None:
    controller = FakeController(clock)
    controller.up = False
    credentials = machine(clock, controller)
    run(clock, controller.latency)
    assert credentials.state is State.EMPTY
    assert credentials.verdict(now_of(clock)) is Verdict.NO_CREDENTIALS
    assert credentials.failures == {"ConnectionRefusedError": 1}
    assert credentials.last_error == "controller down"
    controller.up = True
    run(clock, retry_ceiling(0, RefreshPolicy()) + controller.latency)
    assert credentials.state is State.FRESH
    assert credentials.consecutive_failures == 0
    credentials.stop()


def test_a_rotation_replaces_the_set_and_moves_last_updated(clock: Clock) -> None:
    controller = FakeController(clock, lifetime=HOUR)
    credentials = machine(clock, controller)
    run(clock, 1)
    first = credentials.current(now_of(clock))
    run(clock, 31 * MINUTE)
    second = credentials.current(now_of(clock))
    assert first is not None and second is not None
    assert second.access_key_id != first.access_key_id
    assert second.last_updated > first.last_updated
    assert second.expiration > first.expiration
    assert credentials.successes == 2
    credentials.stop()


def test_failures_back_off_exponentially_with_jitter_up_to_the_cap(clock: Clock) -> None:
    controller = FakeController(clock, latency=0.0)
    controller.up = False
    credentials = machine(clock, controller, seed=5)
    run(clock, 3 * HOUR)
    gaps = [later - earlier for earlier, later in itertools.pairwise(controller.calls)]
    policy = RefreshPolicy()
    assert len(gaps) > 20
    for attempt, gap in enumerate(gaps):
        assert 0.0 <= gap <= retry_ceiling(attempt, policy)
    assert max(gaps) > 0.5 * policy.retry_cap_seconds
    assert max(gaps[:5]) <= 16.0
    assert credentials.consecutive_failures == len(controller.calls)
    assert credentials.attempts == len(controller.calls)
    credentials.stop()
    assert clock.getDelayedCalls() == []


def test_a_hanging_controller_call_times_out(clock: Clock) -> None:
    controller = FakeController(clock, outage="hang")
    controller.up = False
    credentials = machine(clock, controller)
    run(clock, 59)
    assert credentials.state is State.FETCHING
    run(clock, 1)
    assert credentials.state is State.EMPTY
    assert credentials.failures == {"FetchTimeout": 1}
    assert controller.outstanding == 0  # the call was cancelled
    credentials.stop()
    assert clock.getDelayedCalls() == []


def test_a_malformed_answer_is_a_failure_naming_the_field(clock: Clock) -> None:
    controller = FakeController(clock)

    def without_token(expiration: datetime, serial: int) -> object:
        body = node_api_body(expiration, serial)
        del body["Token"]
        return body

    controller.body = without_token
    credentials = machine(clock, controller)
    run(clock, controller.latency)
    assert credentials.state is State.EMPTY
    assert credentials.failures == {MALFORMED: 1}
    assert credentials.last_error is not None and "Token" in credentials.last_error
    credentials.stop()


@pytest.mark.parametrize("lifetime", [-HOUR, 0, 30, 120])
def test_a_set_with_two_minutes_or_less_left_is_refused_and_retried(
    clock: Clock, lifetime: float
) -> None:
    controller = FakeController(clock, lifetime=lifetime)
    credentials = machine(clock, controller)
    run(clock, controller.latency)
    assert credentials.state is State.EMPTY
    assert credentials.failures == {EXPIRING_ON_ARRIVAL: 1}
    controller.lifetime = HOUR
    run(clock, 2)
    assert credentials.state is State.FRESH
    credentials.stop()


def test_a_controller_clock_behind_ours_shortens_the_life_but_never_serves_expired(
    clock: Clock,
) -> None:
    controller = FakeController(clock, lifetime=HOUR, skew=-50 * MINUTE)
    credentials = machine(clock, controller)
    for _ in range(120):
        run(clock, MINUTE)
        now = now_of(clock)
        served = credentials.current(now)
        assert served is not None  # ten minutes of life, refreshed every four or five
        assert served.expiration - now > MARGIN
    credentials.stop()
    assert clock.getDelayedCalls() == []


def test_a_jump_past_the_refresh_drops_the_set_and_fetches_at_once(clock: Clock) -> None:
    controller = FakeController(clock, lifetime=HOUR)
    credentials = machine(clock, controller)
    run(clock, 1)
    first = credentials.current(now_of(clock))
    assert first is not None
    # Fire only the expiry timer, as if the refresh timer had been lost: the set stops.
    (expiry,) = [
        call
        for call in clock.getDelayedCalls()
        if call.getTime() == (first.expiration - MARGIN).timestamp()
    ]
    expiry.func(*expiry.args, **expiry.kw)
    expiry.cancel()
    assert credentials.state is State.EXPIRED
    assert len(controller.calls) == 2
    run(clock, 1)
    assert credentials.state is State.FRESH
    credentials.stop()
    assert clock.getDelayedCalls() == []


def test_counters_report_attempts_failures_and_time_to_expiry(clock: Clock) -> None:
    controller = FakeController(clock, lifetime=6 * HOUR)
    credentials = machine(clock, controller)
    assert credentials.seconds_until_expiry() is None
    run(clock, 1)
    assert credentials.seconds_until_expiry() == pytest.approx(6 * HOUR - 0.75, abs=1)
    controller.up = False
    run(clock, 3 * HOUR + 10 * MINUTE)
    assert credentials.attempts == 1 + sum(credentials.failures.values())
    assert credentials.successes == 1
    assert credentials.failures["ConnectionRefusedError"] >= 1
    assert not credentials.controller_reachable
    assert credentials.state is State.STALE
    credentials.stop()


# -- stopping -------------------------------------------------------------------------------


def test_stop_while_a_call_is_in_flight_cancels_it_and_leaves_no_timers(clock: Clock) -> None:
    controller = FakeController(clock)
    limiter = DeferredSemaphore(8)
    credentials = machine(clock, controller, limiter=limiter)
    credentials.stop()
    assert credentials.state is State.GONE
    assert controller.outstanding == 0
    assert limiter.tokens == limiter.limit
    assert clock.getDelayedCalls() == []
    run(clock, HOUR)
    assert len(controller.calls) == 1


def test_stop_while_waiting_for_the_cap_gives_up_the_place(clock: Clock) -> None:
    controller = FakeController(clock)
    limiter = DeferredSemaphore(1)
    first = machine(clock, controller, limiter=limiter)
    second = machine(clock, controller, limiter=limiter)
    assert len(limiter.waiting) == 1
    second.stop()
    assert limiter.waiting == []
    run(clock, 1)
    assert first.state is State.FRESH
    assert len(controller.calls) == 1
    first.stop()
    assert clock.getDelayedCalls() == []
    assert limiter.tokens == 1


def test_stop_twice_is_harmless_and_nothing_is_served_after(clock: Clock) -> None:
    controller = FakeController(clock)
    credentials = machine(clock, controller)
    run(clock, 1)
    credentials.stop()
    credentials.stop()
    assert credentials.current(now_of(clock)) is None
    assert credentials.verdict(now_of(clock)) is Verdict.NO_CREDENTIALS
    assert credentials.seconds_until_expiry() is None
    assert clock.getDelayedCalls() == []


# -- the transition table -------------------------------------------------------------------


def test_every_live_state_stops_into_gone() -> None:
    for state in State:
        assert TRANSITIONS[(state, Input.STOP)][0] is State.GONE
        if state is not State.GONE:
            assert TRANSITIONS[(state, Input.STOP)][1] == (Output.HALT,)


def test_gone_absorbs_every_input() -> None:
    for event in Input:
        assert TRANSITIONS[(State.GONE, event)] == (State.GONE, ())


def test_only_states_that_hold_a_set_can_expire() -> None:
    expiring = {state for (state, event) in TRANSITIONS if event is Input.EXPIRY_DUE}
    assert expiring == {State.FRESH, State.REFRESHING, State.STALE, State.GONE}


def test_an_input_without_a_transition_is_a_bug(clock: Clock) -> None:
    controller = FakeController(clock)
    credentials = machine(clock, controller)
    run(clock, 1)
    assert (State.FRESH, Input.FETCHED) not in TRANSITIONS
    with pytest.raises(TransitionError, match="fresh on fetched"):
        credentials._handle(Input.FETCHED)
    credentials.stop()


# -- the shared cap on controller calls -----------------------------------------------------


@pytest.mark.parametrize("up", [True, False])
def test_five_hundred_instances_never_have_more_than_eight_calls_outstanding(
    clock: Clock, up: bool
) -> None:
    controller = FakeController(clock, latency=0.05)
    controller.up = up
    cache = CredentialCache(clock, random=random.Random(3), max_concurrent_fetches=8)
    for number in range(500):
        cache.add(f"i-{number:017x}", controller.fetch)
        assert controller.outstanding <= 8
    assert controller.outstanding == 8
    run(clock, 10)
    assert controller.max_outstanding == 8  # counted at every call
    if up:
        assert len(controller.calls) == 500
        assert all(instance.state is State.FRESH for instance in cache)
    else:
        assert len(controller.calls) > 1000  # every instance retried, eight at a time
        assert all(sum(instance.failures.values()) >= 2 for instance in cache)
    assert len(cache) == 500
    cache.stop()
    assert len(cache) == 0
    assert clock.getDelayedCalls() == []


def test_calls_that_answer_at_once_do_not_recurse_through_the_cap(clock: Clock) -> None:
    answered: list[int] = []

    def fetch() -> Deferred[Any]:
        answered.append(1)
        if len(answered) <= 8:
            pending: Deferred[Any] = Deferred()
            clock.callLater(1, pending.errback, ConnectionRefusedError("down"))
            return pending
        return fail(ConnectionRefusedError("down"))

    cache = CredentialCache(clock, random=random.Random(3))
    for number in range(1000):
        cache.add(f"i-{number}", fetch)
    clock.advance(1)  # the first eight fail at once; the 992 waiting then fail in turn
    assert len(answered) == 1000
    assert all(instance.state is State.EMPTY for instance in cache)
    cache.stop()
    assert clock.getDelayedCalls() == []


def test_a_call_that_succeeds_at_once_is_served_on_the_next_tick(clock: Clock) -> None:
    expiration = now_of(clock) + timedelta(hours=6)
    cache = CredentialCache(clock)
    credentials = cache.add("i-1", lambda: succeed(node_api_body(expiration)))
    assert credentials.state is State.FETCHING
    clock.advance(0)
    assert credentials.state is State.FRESH
    cache.stop()
    assert clock.getDelayedCalls() == []


def test_cache_adds_gets_and_removes_instances(clock: Clock) -> None:
    controller = FakeController(clock)
    seen: list[tuple[str, State, Input, State]] = []
    cache = CredentialCache(clock, on_transition=lambda *t: seen.append(t))
    added = cache.add("i-1", controller.fetch)
    assert cache.get("i-1") is added and "i-1" in cache and cache.get("i-2") is None
    with pytest.raises(ValueError, match="i-1"):
        cache.add("i-1", controller.fetch)
    run(clock, 1)
    cache.remove("i-1")
    cache.remove("i-1")  # already gone: nothing happens
    assert added.state is State.GONE and "i-1" not in cache
    assert seen == [
        ("i-1", State.EMPTY, Input.START, State.FETCHING),
        ("i-1", State.FETCHING, Input.FETCHED, State.FRESH),
        ("i-1", State.FRESH, Input.STOP, State.GONE),
    ]
    assert clock.getDelayedCalls() == []


def test_cache_shares_one_limiter_of_the_configured_size(clock: Clock) -> None:
    assert CredentialCache(clock).limiter.limit == 8
    assert CredentialCache(clock, max_concurrent_fetches=3).limiter.limit == 3


# -- never expired, whatever happens --------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    lifetime=st.integers(min_value=1, max_value=36 * 3600),
    skew=st.integers(min_value=-2 * 3600, max_value=2 * 3600),
    latency=st.floats(min_value=0.0, max_value=120.0),
    outage=st.sampled_from(["refuse", "hang"]),
    pattern=st.lists(st.booleans(), max_size=40),
    steps=st.lists(st.floats(min_value=0.0, max_value=2 * 3600.0), min_size=1, max_size=60),
    probe=st.floats(min_value=0.0, max_value=4 * 3600.0),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_current_never_returns_credentials_inside_the_expiry_margin(
    lifetime: int,
    skew: int,
    latency: float,
    outage: str,
    pattern: list[bool],
    steps: list[float],
    probe: float,
    seed: int,
) -> None:
    clock = Clock()
    clock.advance(START)
    controller = FakeController(clock, lifetime=lifetime, latency=latency, outage=outage, skew=skew)
    credentials = machine(clock, controller, seed=seed)
    for index, step in enumerate(steps):
        controller.up = pattern[index % len(pattern)] if pattern else True
        clock.advance(step)
        now = now_of(clock)
        moments = [now, now + timedelta(seconds=probe)]
        left = credentials.seconds_until_expiry(now)
        if left is not None:  # asked just outside, at and inside the margin, and after expiry
            moments += [now + timedelta(seconds=left + offset) for offset in (-61, -60, -1, 0, 1)]
        for moment in moments:
            served = credentials.current(moment)
            assert served is None or served.expiration - moment > MARGIN
            if served is not None and credentials.controller_reachable:
                assert credentials.verdict(moment) is Verdict.SERVE
    credentials.stop()
    assert clock.getDelayedCalls() == []


# -- the credential set ---------------------------------------------------------------------

OBTAINED = datetime(2026, 11, 27, 13, 17, 17, 654321, tzinfo=UTC)
EXPIRATION = datetime(2026, 11, 27, 19, 17, 17, tzinfo=UTC)


def test_a_node_api_answer_becomes_a_credential_set() -> None:
    body = node_api_body(EXPIRATION, 7)
    body["Unknown"] = "ignored"
    parsed = CredentialSet.from_node_api(body, OBTAINED)
    assert parsed == CredentialSet(
        access_key_id="ASIA0000000000000007",
        secret_access_key="secret-7",
        token="token-7",
        expiration=EXPIRATION,
        last_updated=datetime(2026, 11, 27, 13, 17, 17, tzinfo=UTC),
        role_arn="arn:aws:iam::123456789012:role/app/web-server",
        instance_profile_arn="arn:aws:iam::123456789012:instance-profile/web",
        instance_profile_id="AIPAEXAMPLEPROFILE01",
        account_id="123456789012",
    )
    assert parsed.role_name == "web-server"


def test_last_updated_is_the_time_obtained_in_utc_whole_seconds() -> None:
    here = OBTAINED.astimezone(timezone(timedelta(hours=2)))
    parsed = CredentialSet.from_node_api(node_api_body(EXPIRATION), here)
    assert parsed.last_updated == datetime(2026, 11, 27, 13, 17, 17, tzinfo=UTC)
    assert parsed.last_updated.tzinfo is UTC


def test_repr_never_shows_the_secret_or_the_token() -> None:
    parsed = CredentialSet.from_node_api(node_api_body(EXPIRATION, 7), OBTAINED)
    shown = repr(parsed) + str(parsed)
    assert "ASIA0000000000000007" in shown
    assert "secret-7" not in shown
    assert "token-7" not in shown


@pytest.mark.parametrize(
    "key",
    [
        "AccessKeyId",
        "SecretAccessKey",
        "Token",
        "Expiration",
        "RoleArn",
        "InstanceProfileArn",
        "InstanceProfileId",
        "AccountId",
    ],
)
def test_a_missing_empty_or_non_string_field_is_refused_naming_it(key: str) -> None:
    for broken in (None, "", 5, ["x"]):
        body: dict[str, object] = dict(node_api_body(EXPIRATION))
        if broken is None:
            del body[key]
        else:
            body[key] = broken
        with pytest.raises(MalformedCredentials, match=rf"^{key}: "):
            CredentialSet.from_node_api(body, OBTAINED)


@pytest.mark.parametrize(
    "expiration",
    [
        "2026-11-27T19:17:17.000Z",
        "2026-11-27T19:17:17+00:00",
        "2026-11-27T19:17:17",
        "2026-11-27 19:17:17Z",
        "2026-11-27t19:17:17z",
        "2026-13-27T19:17:17Z",
        "2026-02-30T19:17:17Z",
        "2026-11-27T25:17:17Z",
        "\u0662026-11-27T19:17:17Z",  # an Arabic-Indic digit
        " 2026-11-27T19:17:17Z",
        "1795000000",
    ],
)
def test_an_expiration_not_exactly_in_aws_form_is_refused(expiration: str) -> None:
    body = node_api_body(EXPIRATION)
    body["Expiration"] = expiration
    with pytest.raises(MalformedCredentials, match=r"^Expiration: "):
        CredentialSet.from_node_api(body, OBTAINED)


@pytest.mark.parametrize(
    "role_arn",
    [
        "web-server",
        "arn:aws:iam::123456789012:user/web-server",
        "arn:aws:iam::123456789012:role/",
        "arn:aws:sts::123456789012:assumed-role/web/i-1",
    ],
)
def test_a_role_arn_that_names_no_role_is_refused(role_arn: str) -> None:
    body = node_api_body(EXPIRATION)
    body["RoleArn"] = role_arn
    with pytest.raises(MalformedCredentials, match=r"^RoleArn: "):
        CredentialSet.from_node_api(body, OBTAINED)


def test_role_name_of_a_role_without_a_path() -> None:
    body = node_api_body(EXPIRATION)
    body["RoleArn"] = "arn:aws:iam::123456789012:role/web"
    assert CredentialSet.from_node_api(body, OBTAINED).role_name == "web"


@pytest.mark.parametrize("body", [None, [], "text", 5])
def test_an_answer_that_is_not_an_object_is_refused(body: object) -> None:
    with pytest.raises(MalformedCredentials, match="JSON object"):
        CredentialSet.from_node_api(body, OBTAINED)


def test_a_naive_time_obtained_is_refused() -> None:
    with pytest.raises(ValueError, match="now"):
        CredentialSet.from_node_api(node_api_body(EXPIRATION), OBTAINED.replace(tzinfo=None))


def test_a_controller_handing_out_short_sets_is_called_with_backoff_not_in_a_loop(
    clock: Clock,
) -> None:
    controller = FakeController(clock, lifetime=61)
    credentials = machine(clock, controller)
    for _ in range(60):
        run(clock, MINUTE)
        assert credentials.current(now_of(clock)) is None
    assert len(controller.calls) < 60  # backoff up to 5 minutes, not a call a second
    assert credentials.failures.keys() == {EXPIRING_ON_ARRIVAL}
    credentials.stop()
    assert clock.getDelayedCalls() == []


def test_a_set_with_a_little_over_two_minutes_is_served_and_refreshed_before_expiry(
    clock: Clock,
) -> None:
    controller = FakeController(clock, lifetime=180)
    credentials = machine(clock, controller)
    for _ in range(60 * 60):
        run(clock, 1)
        now = now_of(clock)
        served = credentials.current(now)
        assert served is not None and served.expiration - now > MARGIN
    assert 40 <= len(controller.calls) <= 60  # every 72 to 90 seconds
    credentials.stop()


class RefusedByController(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"{status}: refused")
        self.status = status


def test_failures_are_counted_by_exception_and_http_status(clock: Clock) -> None:
    statuses = iter([503, 404, 404])

    def fetch() -> Deferred[Any]:
        refused: Deferred[Any] = Deferred()
        clock.callLater(0.1, refused.errback, RefusedByController(next(statuses, 503)))
        return refused

    credentials = InstanceCredentials(
        "i-1", clock, fetch, limiter=DeferredSemaphore(8), random=random.Random(1)
    )
    run(clock, 20)
    assert credentials.failures["RefusedByController:503"] >= 1
    assert credentials.failures["RefusedByController:404"] == 2
    assert credentials.last_error == "503: refused"
    credentials.stop()
    assert clock.getDelayedCalls() == []


# -- the verdict the metadata service caches ---------------------------------------------------


@pytest.mark.parametrize(
    ("lifetime", "latency", "policy", "expected"),
    [
        (6 * HOUR, 0.25, RefreshPolicy(), {Verdict.SERVE, Verdict.EXPIRED}),
        # A late refresh and a slow controller: the set crosses its minimum while the refresh
        # is in flight.
        (
            15 * MINUTE,
            5 * MINUTE,
            RefreshPolicy(refresh_jitter=0.0, fetch_timeout_seconds=10 * MINUTE),
            {Verdict.SERVE, Verdict.REFRESH_PENDING, Verdict.EXPIRED},
        ),
    ],
)
def test_a_cached_verdict_never_outlives_the_computed_one(
    clock: Clock, lifetime: float, latency: float, policy: RefreshPolicy, expected: set[Verdict]
) -> None:
    """`verdict_until` says until when a verdict stands while `generation` does not move. Over
    rotations and an outage long enough to expire the set, probed every few seconds and around
    each announced boundary, the verdict a cache would hold always equals `verdict(now)`."""
    controller = FakeController(clock, lifetime=lifetime, latency=latency)
    credentials = machine(clock, controller, policy=policy)
    cached: tuple[int, Verdict, float] | None = None
    outage = (lifetime * 1.05, lifetime * 2.5)  # after the first rotation, until the end
    verdicts: set[Verdict] = set()
    boundaries = 0
    step = lifetime / 2000
    for _ in range(5000):
        elapsed = clock.seconds() - START
        controller.up = not outage[0] <= elapsed < outage[1]
        run(clock, step)
        now = clock.seconds()
        truth = credentials.verdict(now_of(clock))
        verdicts.add(truth)
        if cached is not None and cached[0] == credentials.generation and now < cached[2]:
            assert cached[1] is truth, f"a stale verdict {cached[1]} at {now - START:.3f} s"
        else:
            verdict, until = credentials.verdict_until(now)
            assert verdict is truth
            assert until > now
            cached = (credentials.generation, verdict, until)
            if until != float("inf"):
                # A real boundary: the verdict stands just before it and not 2 ms after it.
                boundaries += 1
                assert credentials.verdict(datetime.fromtimestamp(until - 1e-4, UTC)) is verdict
                assert credentials.verdict(datetime.fromtimestamp(until + 2e-3, UTC)) is not verdict
    assert expected <= verdicts
    assert boundaries >= 2


def test_every_transition_moves_the_generation(clock: Clock) -> None:
    controller = FakeController(clock)
    seen: list[int] = []
    credentials = machine(clock, controller, on_transition=lambda *_: seen.append(0))
    first = credentials.generation
    run(clock, 1.0)
    assert credentials.generation == len(seen) > first
    credentials.stop()
    assert credentials.generation == len(seen)


# -- a set kept across a restart, and the retries after an outage ------------------------------


def kept_set(clock: Clock, issued_ago: float, lifetime: float = 6 * HOUR) -> CredentialSet:
    issued = datetime.fromtimestamp(clock.seconds() - issued_ago, UTC)
    return CredentialSet.from_node_api(
        node_api_body(issued + timedelta(seconds=lifetime), serial=7), issued
    )


def restored_machine(
    clock: Clock, controller: FakeController, restored: CredentialSet
) -> InstanceCredentials:
    return InstanceCredentials(
        "i-0123456789abcdef0",
        clock,
        controller.fetch,
        limiter=DeferredSemaphore(8),
        random=random.Random(3),
        restored=restored,
    )


def test_a_kept_set_is_served_at_once_and_refreshed_on_its_own_schedule(clock: Clock) -> None:
    controller = FakeController(clock, latency=0.0)
    held = kept_set(clock, issued_ago=10 * MINUTE)
    credentials = restored_machine(clock, controller, held)
    assert credentials.state is State.FRESH
    assert credentials.current() is held
    assert controller.calls == []  # no call until its refresh is due (about 2.5 hours on)
    run(clock, 2 * HOUR)
    assert controller.calls == []
    run(clock, 1 * HOUR)
    assert len(controller.calls) == 1
    assert credentials.current() is not held and credentials.state is State.FRESH
    credentials.stop()
    assert clock.getDelayedCalls() == []


def test_a_kept_set_is_served_down_to_the_margin_while_the_controller_is_down(
    clock: Clock,
) -> None:
    """Not yet confirmed by the controller, a kept set is served as while the controller is
    unreachable: with less than 30 minutes left too, never inside the expiry margin."""
    controller = FakeController(clock, latency=0.0)
    controller.up = False
    held = kept_set(clock, issued_ago=5 * HOUR + 50 * MINUTE)  # ten minutes left
    credentials = restored_machine(clock, controller, held)
    assert credentials.current() is held
    run(clock, 0.0)
    assert len(controller.calls) == 1  # its refresh was overdue: asked at once
    assert credentials.state is State.STALE
    run(clock, 8 * MINUTE)
    assert credentials.current() is held
    run(clock, 1 * MINUTE + 1)  # inside the margin
    assert credentials.current() is None
    assert credentials.verdict() is Verdict.EXPIRED
    credentials.stop()


def test_once_the_controller_answers_again_backed_off_retries_are_due_within_seconds(
    clock: Clock,
) -> None:
    controller = FakeController(clock, latency=0.0)
    controller.up = False
    credentials = machine(clock, controller, seed=5)
    run(clock, 1 * HOUR)  # the backoff has grown to minutes
    waiting = [call.getTime() - clock.seconds() for call in clock.getDelayedCalls()]
    assert max(waiting) > 30
    controller.up = True
    asked = len(controller.calls)
    credentials.hurry(5.0)
    run(clock, 5.0)
    assert len(controller.calls) == asked + 1
    assert credentials.current() is not None
    credentials.hurry(5.0)  # nothing waits to retry: nothing changes
    assert len(controller.calls) == asked + 1
    credentials.stop()


def test_hurry_leaves_a_retry_due_sooner_alone(clock: Clock) -> None:
    controller = FakeController(clock, latency=0.0)
    controller.up = False
    credentials = machine(clock, controller, seed=5)
    run(clock, 0.0)
    (retry,) = clock.getDelayedCalls()
    due = retry.getTime()
    assert due - clock.seconds() <= 1.0
    credentials.hurry(5.0)
    (after,) = clock.getDelayedCalls()
    assert after.getTime() == due
    credentials.stop()
