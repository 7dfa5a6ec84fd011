"""When to refresh instance credentials, how long to wait after a failure, and when to serve.

Pure functions of `now`, the credential times and an injected random source: no reactor, no I/O.
The numbers follow DESIGN.md "Timing" and spec/imds.md 25-28: refresh half-way through the
lifetime (jittered earlier, never later, so a healthy agent always serves at least half a
lifetime), retry with capped exponential backoff and full jitter, never serve a set with less
than `min_remaining_seconds` left while the controller answers, and never one inside the
`expiry_margin_seconds` before its Expiration, whatever happens.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol

#: Past this exponent the backoff ceiling is the cap for any sane policy; it keeps float powers
#: from overflowing on very long outages.
_MAX_EXPONENT = 64


class RandomSource(Protocol):
    """The part of `random.Random` the schedule uses, so tests can pass a seeded generator."""

    def uniform(self, a: float, b: float) -> float: ...


@dataclass(frozen=True)
class RefreshPolicy:
    """How a node agent keeps instance credentials fresh; durations are in seconds."""

    #: Refresh when this fraction of the lifetime has passed...
    refresh_fraction: float = 0.5
    #: ...or up to this fraction of the lifetime earlier (spreads the refreshes of many instances
    #: issued at once; only earlier, so a healthy agent serves at least half the lifetime).
    refresh_jitter: float = 0.1
    #: While the controller answers, never serve a set with less than this left (spec 26).
    min_remaining_seconds: float = 30 * 60.0
    #: Never serve a set this close to its Expiration, even when the controller is unreachable
    #: (spec 28): the guest needs time to sign and send a request with it.
    expiry_margin_seconds: float = 60.0
    #: Backoff after failed fetches: `initial * factor ** attempt`, capped, with full jitter.
    retry_initial_seconds: float = 1.0
    retry_factor: float = 2.0
    retry_cap_seconds: float = 5 * 60.0
    #: A controller call that has not answered after this long counts as failed.
    fetch_timeout_seconds: float = 60.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.refresh_jitter < self.refresh_fraction < 1.0:
            raise ValueError(
                "refresh_fraction and refresh_jitter must satisfy "
                f"0 <= jitter < fraction < 1 (got {self.refresh_fraction}, {self.refresh_jitter})"
            )
        if not 0.0 < self.expiry_margin_seconds <= self.min_remaining_seconds:
            raise ValueError(
                "expiry_margin_seconds must be positive and at most min_remaining_seconds "
                f"(got {self.expiry_margin_seconds}, {self.min_remaining_seconds})"
            )
        if not 0.0 < self.retry_initial_seconds <= self.retry_cap_seconds:
            raise ValueError(
                "retry_initial_seconds must be positive and at most retry_cap_seconds "
                f"(got {self.retry_initial_seconds}, {self.retry_cap_seconds})"
            )
        if self.retry_factor < 1.0:
            raise ValueError(f"retry_factor must be at least 1 (got {self.retry_factor})")
        if self.fetch_timeout_seconds <= 0.0:
            raise ValueError(
                f"fetch_timeout_seconds must be positive (got {self.fetch_timeout_seconds})"
            )


class Verdict(StrEnum):
    """Whether a credential set may be served now; the value is the `Code` for ``iam/info``
    (the same codes as `agent.imds.tree`)."""

    SERVE = "Success"
    #: No set has been obtained for this instance yet.
    NO_CREDENTIALS = "NoCredentials"
    #: The controller answers but this set has less than the minimum left; a new one is due.
    REFRESH_PENDING = "CredentialsExpiring"
    #: The set is expired or inside the expiry margin: it is never served again.
    EXPIRED = "CredentialsExpired"


def _require_aware(**moments: datetime | None) -> None:
    for name, moment in moments.items():
        if moment is not None and moment.utcoffset() is None:
            raise ValueError(f"{name} must be timezone-aware (got {moment!r})")


def min_remaining(
    issued: datetime | None, expires: datetime, controller_reachable: bool, policy: RefreshPolicy
) -> timedelta:
    """The least time left a set may have to be served.

    Unreachable: the expiry margin. Reachable: `min_remaining_seconds`, but never more than half
    of what a healthy schedule leaves (``(1 - refresh_fraction) * lifetime / 2``), so that short
    credential lifetimes (the controller allows 15 minutes) are still served between refreshes.
    """
    margin = timedelta(seconds=policy.expiry_margin_seconds)
    if not controller_reachable:
        return margin
    floor = timedelta(seconds=policy.min_remaining_seconds)
    if issued is not None:
        healthy_least = (expires - issued) * (1.0 - policy.refresh_fraction) / 2
        floor = min(floor, healthy_least)
    return max(margin, floor)


def servable(
    expires: datetime | None,
    now: datetime,
    controller_reachable: bool,
    policy: RefreshPolicy,
    *,
    issued: datetime | None = None,
) -> Verdict:
    """May a set expiring at `expires` (None: no set) be served at `now`?

    `controller_reachable` says whether the controller gave usable credentials at the last
    attempt; `issued` (when the set was obtained) lets short lifetimes lower the 30-minute rule.
    """
    _require_aware(expires=expires, now=now, issued=issued)
    if expires is None:
        return Verdict.NO_CREDENTIALS
    left = expires - now
    if left <= timedelta(seconds=policy.expiry_margin_seconds):
        return Verdict.EXPIRED
    if left < min_remaining(issued, expires, controller_reachable, policy):
        return Verdict.REFRESH_PENDING
    return Verdict.SERVE


def usable_on_arrival(expires: datetime, now: datetime, policy: RefreshPolicy) -> bool:
    """Whether a set just obtained is worth holding: more than twice the expiry margin left.

    A shorter set would be refreshed again within seconds, and a controller that keeps handing
    them out would be called in a loop; refusing it sends the agent through the retry backoff.
    """
    _require_aware(expires=expires, now=now)
    return expires - now > timedelta(seconds=2 * policy.expiry_margin_seconds)


def next_refresh_at(
    issued: datetime, expires: datetime, policy: RefreshPolicy, random: RandomSource
) -> datetime:
    """When to fetch the successor of a set obtained at `issued` that expires at `expires`.

    At ``refresh_fraction`` of the lifetime, less up to ``refresh_jitter`` of it, never after the
    set stops being served while the controller answers, and never before `issued`.
    """
    _require_aware(issued=issued, expires=expires)
    lifetime = expires - issued
    if lifetime <= timedelta(0):
        return issued
    fraction = random.uniform(
        policy.refresh_fraction - policy.refresh_jitter, policy.refresh_fraction
    )
    due = issued + lifetime * fraction
    latest = expires - min_remaining(issued, expires, True, policy)
    return max(issued, min(due, latest))


def retry_ceiling(attempt: int, policy: RefreshPolicy) -> float:
    """The largest delay before retry number `attempt` (0 after the first failure)."""
    if attempt < 0:
        raise ValueError(f"attempt must be 0 or more (got {attempt})")
    exponent = min(attempt, _MAX_EXPONENT)
    return min(
        policy.retry_cap_seconds, policy.retry_initial_seconds * policy.retry_factor**exponent
    )


def retry_delay(attempt: int, policy: RefreshPolicy, random: RandomSource) -> float:
    """Seconds to wait before retry number `attempt`: full jitter below the capped ceiling.

    Full jitter (uniform between 0 and the ceiling) spreads the retries of every instance on a
    node that lost the controller at the same moment.
    """
    ceiling = retry_ceiling(attempt, policy)
    return min(ceiling, max(0.0, random.uniform(0.0, ceiling)))
