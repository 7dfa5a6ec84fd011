"""The credential schedule: when to refresh, how long to back off, and when a set may be served."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.refresh import (
    RefreshPolicy,
    Verdict,
    min_remaining,
    next_refresh_at,
    retry_ceiling,
    retry_delay,
    servable,
    usable_on_arrival,
)

POLICY = RefreshPolicy()
ISSUED = datetime(2026, 11, 27, 13, 17, 17, tzinfo=UTC)
HOUR = timedelta(hours=1)
MINUTE = timedelta(minutes=1)
SECOND = timedelta(seconds=1)


class Fixed:
    """A random source that always lands at `position` (0 to 1) of the asked-for range."""

    def __init__(self, position: float) -> None:
        self.position = position

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.position


# -- next_refresh_at ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lifetime", "position", "after"),
    [
        (6 * HOUR, 1.0, 3 * HOUR),  # half-way, the latest it is ever due
        (6 * HOUR, 0.0, timedelta(hours=2, minutes=24)),  # 0.1 of the life earlier at most
        (6 * HOUR, 0.5, timedelta(hours=2, minutes=42)),
        (HOUR, 1.0, 30 * MINUTE),
        (15 * MINUTE, 1.0, timedelta(minutes=7, seconds=30)),
        (36 * HOUR, 1.0, 18 * HOUR),
        # The expiry margin (60 s) wins over half-way: due while the set is still served.
        (90 * SECOND, 1.0, 30 * SECOND),
        # Nothing left to wait for: due at once, never before it was obtained.
        (30 * SECOND, 1.0, timedelta(0)),
        (timedelta(0), 1.0, timedelta(0)),
        (-HOUR, 1.0, timedelta(0)),
    ],
)
def test_next_refresh_is_due_half_way_less_jitter_within_the_servable_life(
    lifetime: timedelta, position: float, after: timedelta
) -> None:
    due = next_refresh_at(ISSUED, ISSUED + lifetime, POLICY, Fixed(position))
    assert due == ISSUED + after


def test_next_refresh_follows_the_policy_fraction() -> None:
    policy = RefreshPolicy(refresh_fraction=0.7, refresh_jitter=0.0)
    assert next_refresh_at(ISSUED, ISSUED + 10 * HOUR, policy, Fixed(0.5)) == ISSUED + 7 * HOUR


def test_next_refresh_jitter_spreads_between_forty_and_fifty_percent_of_the_life() -> None:
    source = random.Random(20261127)
    dues = [next_refresh_at(ISSUED, ISSUED + 6 * HOUR, POLICY, source) for _ in range(2000)]
    assert all(ISSUED + 2.4 * HOUR <= due <= ISSUED + 3 * HOUR for due in dues)
    assert min(dues) < ISSUED + 2.5 * HOUR
    assert max(dues) > ISSUED + 2.9 * HOUR


@given(
    lifetime_seconds=st.integers(min_value=300, max_value=36 * 3600),
    position=st.floats(min_value=0.0, max_value=1.0),
)
def test_a_refresh_is_due_while_the_set_is_still_served_and_has_half_its_life(
    lifetime_seconds: int, position: float
) -> None:
    expires = ISSUED + timedelta(seconds=lifetime_seconds)
    due = next_refresh_at(ISSUED, expires, POLICY, Fixed(position))
    assert ISSUED <= due
    assert expires - due >= timedelta(seconds=lifetime_seconds) / 2
    assert servable(expires, due, True, POLICY, issued=ISSUED) is Verdict.SERVE


def test_next_refresh_refuses_naive_times() -> None:
    with pytest.raises(ValueError, match="issued"):
        next_refresh_at(ISSUED.replace(tzinfo=None), ISSUED + HOUR, POLICY, Fixed(1.0))


# -- servable -------------------------------------------------------------------------------

EXPIRES = ISSUED + 6 * HOUR


@pytest.mark.parametrize(
    ("left", "reachable", "verdict"),
    [
        (6 * HOUR, True, Verdict.SERVE),
        (31 * MINUTE, True, Verdict.SERVE),
        (30 * MINUTE, True, Verdict.SERVE),
        (30 * MINUTE - SECOND, True, Verdict.REFRESH_PENDING),  # spec 26
        (5 * MINUTE, True, Verdict.REFRESH_PENDING),
        (61 * SECOND, True, Verdict.REFRESH_PENDING),
        (60 * SECOND, True, Verdict.EXPIRED),
        (29 * MINUTE, False, Verdict.SERVE),  # spec 28: keep serving while valid
        (61 * SECOND, False, Verdict.SERVE),
        (60 * SECOND, False, Verdict.EXPIRED),  # too close to expiry
        (SECOND, False, Verdict.EXPIRED),
        (timedelta(0), False, Verdict.EXPIRED),
        (-HOUR, False, Verdict.EXPIRED),
        (-HOUR, True, Verdict.EXPIRED),
    ],
)
def test_servable_by_time_left_and_controller_reachability(
    left: timedelta, reachable: bool, verdict: Verdict
) -> None:
    assert servable(EXPIRES, EXPIRES - left, reachable, POLICY, issued=ISSUED) is verdict


def test_servable_without_credentials_says_no_credentials() -> None:
    assert servable(None, ISSUED, True, POLICY) is Verdict.NO_CREDENTIALS


def test_servable_without_issue_time_applies_the_full_minimum() -> None:
    assert servable(EXPIRES, EXPIRES - 29 * MINUTE, True, POLICY) is Verdict.REFRESH_PENDING


@pytest.mark.parametrize(
    ("lifetime", "left", "verdict"),
    [
        # 15-minute credentials: the minimum is a quarter of the life (half of what a healthy
        # schedule leaves), so they are served between refreshes at all.
        (15 * MINUTE, 7 * MINUTE, Verdict.SERVE),
        (15 * MINUTE, timedelta(minutes=3, seconds=45), Verdict.SERVE),
        (15 * MINUTE, 3 * MINUTE, Verdict.REFRESH_PENDING),
        (HOUR, 15 * MINUTE, Verdict.SERVE),
        (HOUR, 14 * MINUTE, Verdict.REFRESH_PENDING),
        # From two hours of life up, the full 30 minutes apply.
        (2 * HOUR, 30 * MINUTE, Verdict.SERVE),
        (2 * HOUR, 29 * MINUTE, Verdict.REFRESH_PENDING),
        # Never below the expiry margin.
        (2 * MINUTE, 61 * SECOND, Verdict.SERVE),
        (2 * MINUTE, 60 * SECOND, Verdict.EXPIRED),
    ],
)
def test_short_lifetimes_lower_the_minimum_while_reachable(
    lifetime: timedelta, left: timedelta, verdict: Verdict
) -> None:
    expires = ISSUED + lifetime
    assert servable(expires, expires - left, True, POLICY, issued=ISSUED) is verdict


def test_min_remaining_is_the_margin_when_unreachable_and_thirty_minutes_when_reachable() -> None:
    assert min_remaining(ISSUED, EXPIRES, False, POLICY) == 60 * SECOND
    assert min_remaining(ISSUED, EXPIRES, True, POLICY) == 30 * MINUTE
    assert min_remaining(None, EXPIRES, True, RefreshPolicy(min_remaining_seconds=3600)) == HOUR


def test_servable_refuses_naive_times() -> None:
    with pytest.raises(ValueError, match="now"):
        servable(EXPIRES, ISSUED.replace(tzinfo=None), True, POLICY)


@given(
    expires_offset=st.integers(min_value=-48 * 3600, max_value=48 * 3600),
    issued_offset=st.integers(min_value=-48 * 3600, max_value=48 * 3600),
    reachable=st.booleans(),
    with_issued=st.booleans(),
)
def test_servable_never_serves_inside_the_expiry_margin(
    expires_offset: int, issued_offset: int, reachable: bool, with_issued: bool
) -> None:
    now = ISSUED
    expires = now + timedelta(seconds=expires_offset)
    issued = now + timedelta(seconds=issued_offset) if with_issued else None
    if servable(expires, now, reachable, POLICY, issued=issued) is Verdict.SERVE:
        assert expires - now > timedelta(seconds=POLICY.expiry_margin_seconds)


def test_verdicts_are_the_iam_info_codes() -> None:
    assert [verdict.value for verdict in Verdict] == [
        "Success",
        "NoCredentials",
        "CredentialsExpiring",
        "CredentialsExpired",
    ]


# -- retry backoff --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(0, 1.0), (1, 2.0), (2, 4.0), (5, 32.0), (8, 256.0), (9, 300.0), (100, 300.0), (10**9, 300.0)],
)
def test_retry_ceiling_doubles_from_one_second_up_to_five_minutes(
    attempt: int, ceiling: float
) -> None:
    assert retry_ceiling(attempt, POLICY) == ceiling


def test_retry_delays_stay_within_the_ceiling_and_spread_across_it() -> None:
    source = random.Random(42)
    for attempt in range(20):
        ceiling = retry_ceiling(attempt, POLICY)
        delays = [retry_delay(attempt, POLICY, source) for _ in range(500)]
        assert all(0.0 <= delay <= ceiling for delay in delays)
        assert max(delays) > 0.9 * ceiling
        assert min(delays) < 0.1 * ceiling


def test_retry_delays_grow_with_the_attempt_until_the_cap() -> None:
    source = random.Random(7)
    means = [
        sum(retry_delay(attempt, POLICY, source) for _ in range(2000)) / 2000
        for attempt in range(12)
    ]
    assert all(later > earlier * 1.5 for earlier, later in itertools.pairwise(means[:9]))
    assert all(140.0 < mean < 160.0 for mean in means[9:])  # uniform below the 300 s cap


def test_retry_delay_is_repeatable_with_a_seeded_random() -> None:
    first = [retry_delay(attempt, POLICY, random.Random(99)) for attempt in range(10)]
    again = [retry_delay(attempt, POLICY, random.Random(99)) for attempt in range(10)]
    assert first == again


def test_retry_delay_never_exceeds_the_ceiling_even_if_the_source_does() -> None:
    assert retry_delay(3, POLICY, Fixed(1.5)) == 8.0
    assert retry_delay(3, POLICY, Fixed(-0.5)) == 0.0


def test_retry_delay_refuses_a_negative_attempt() -> None:
    with pytest.raises(ValueError, match="attempt"):
        retry_delay(-1, POLICY, Fixed(0.5))


def test_retry_backoff_follows_the_policy() -> None:
    policy = RefreshPolicy(retry_initial_seconds=5.0, retry_factor=3.0, retry_cap_seconds=60.0)
    assert [retry_ceiling(attempt, policy) for attempt in range(4)] == [5.0, 15.0, 45.0, 60.0]


# -- the policy -----------------------------------------------------------------------------


def test_default_policy_matches_the_design() -> None:
    assert POLICY == RefreshPolicy(
        refresh_fraction=0.5,
        refresh_jitter=0.1,
        min_remaining_seconds=1800.0,
        expiry_margin_seconds=60.0,
        retry_initial_seconds=1.0,
        retry_factor=2.0,
        retry_cap_seconds=300.0,
        fetch_timeout_seconds=60.0,
    )


@pytest.mark.parametrize(
    "overrides",
    [
        {"refresh_fraction": 0.0},
        {"refresh_fraction": 1.0},
        {"refresh_fraction": 0.1, "refresh_jitter": 0.1},
        {"refresh_jitter": -0.1},
        {"expiry_margin_seconds": 0.0},
        {"expiry_margin_seconds": 3600.0},
        {"retry_initial_seconds": 0.0},
        {"retry_initial_seconds": 600.0},
        {"retry_factor": 0.5},
        {"fetch_timeout_seconds": 0.0},
    ],
)
def test_inconsistent_policies_are_refused(overrides: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(overrides))):
        RefreshPolicy(**overrides)


@pytest.mark.parametrize(
    ("left", "usable"),
    [(HOUR, True), (121 * SECOND, True), (120 * SECOND, False), (SECOND, False), (-HOUR, False)],
)
def test_a_new_set_is_usable_only_with_more_than_twice_the_expiry_margin_left(
    left: timedelta, usable: bool
) -> None:
    assert usable_on_arrival(ISSUED + left, ISSUED, POLICY) is usable
