"""A token bucket: each instance's IMDS request budget (spec/imds.md line 14).

The caller keeps one bucket per instance, asks :meth:`TokenBucket.allow` before answering, and
passes the result to :func:`agent.imds.rules.respond` as ``rate_limited``. Time comes in as
``now`` (POSIX seconds); a clock that steps backwards refills nothing and never raises.
"""

from __future__ import annotations

import math
from typing import Final

_SLACK_SECONDS: Final = 1e-6
"""Rounding slack. A POSIX time near 2**31 as a float has a resolution of about 0.24 µs, so
``(now + 0.1) - (now + 0.05)`` is not exactly 0.05: allow a request whose token is at most 1 µs
short rather than refuse one that is owed."""


class TokenBucket:
    """Allows ``rate`` requests a second on average, and bursts of up to ``burst``."""

    def __init__(self, rate: float, burst: float) -> None:
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"rate must be a positive number of requests a second, not {rate}")
        if not (math.isfinite(burst) and burst >= 1):
            raise ValueError(f"burst must be at least 1 request, not {burst}")
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._last: float | None = None

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self.rate}, burst={self.burst}, tokens={self._tokens:.2f})"

    def allow(self, now: float) -> bool:
        """Take one request's token at ``now``; ``False`` means answer 503."""
        self._refill(now)
        if self._tokens + self.rate * _SLACK_SECONDS >= 1:
            self._tokens = max(0.0, self._tokens - 1)
            return True
        return False

    def available(self, now: float) -> float:
        """How many requests would be allowed at ``now`` without waiting (for metrics)."""
        self._refill(now)
        return self._tokens

    def _refill(self, now: float) -> None:
        if not math.isfinite(now):
            return
        if self._last is not None and now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        if self._last is None or now > self._last:
            self._last = now
