"""The per-instance token bucket behind spec/imds.md line 14 (excess requests get 503)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.imds.ratelimit import TokenBucket

NOW = 1_795_000_000.0


def test_a_full_bucket_allows_a_burst_then_refuses() -> None:
    bucket = TokenBucket(rate=10, burst=5)
    assert [bucket.allow(NOW) for _ in range(6)] == [True] * 5 + [False]


def test_the_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=10, burst=5)
    for _ in range(5):
        bucket.allow(NOW)
    assert not bucket.allow(NOW + 0.05)
    assert bucket.allow(NOW + 0.1)
    assert not bucket.allow(NOW + 0.1)


def test_the_bucket_never_holds_more_than_its_burst() -> None:
    bucket = TokenBucket(rate=100, burst=3)
    bucket.allow(NOW)
    assert bucket.available(NOW + 3600) == 3


def test_a_clock_stepping_backwards_refills_nothing() -> None:
    bucket = TokenBucket(rate=1, burst=1)
    assert bucket.allow(NOW)
    assert not bucket.allow(NOW - 100)
    assert not bucket.allow(NOW + 0.5)
    assert bucket.allow(NOW + 1)


def test_a_non_finite_now_neither_refills_nor_raises() -> None:
    bucket = TokenBucket(rate=1, burst=1)
    assert bucket.allow(NOW)
    assert not bucket.allow(float("inf"))
    assert not bucket.allow(float("nan"))
    assert bucket.allow(NOW + 1)


@pytest.mark.parametrize(
    ("rate", "burst"), [(0, 1), (-1, 1), (float("nan"), 1), (1, 0.5), (1, float("inf"))]
)
def test_a_bucket_with_a_meaningless_rate_or_burst_is_refused(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)


@given(
    rate=st.floats(min_value=0.1, max_value=1000),
    burst=st.integers(min_value=1, max_value=100),
    steps=st.lists(st.floats(min_value=0, max_value=2), max_size=200),
)
def test_allowed_requests_never_exceed_burst_plus_rate_times_elapsed(
    rate: float, burst: int, steps: list[float]
) -> None:
    bucket = TokenBucket(rate, burst)
    now, allowed = NOW, 0
    for step in steps:
        now += step
        allowed += bucket.allow(now)
    # 1 µs of rounding slack per request at most (see ratelimit._SLACK_SECONDS).
    assert allowed <= burst + rate * (now - NOW + 1e-6 * len(steps)) + 1e-9
