"""When the agent asks the controller for its assignments again, after an answer or a failure.

Pure functions of the failure count and an injected random source: no reactor, no I/O.

While the controller is unreachable, the agent probes it at a short interval (the assignments
call with ``wait=0``: an answer at once, the cheapest call that also brings any change), so
that it notices the controller is back within `ReconnectPolicy.probe_seconds` however long the
outage lasted; the first answer resumes the long poll at once. The probe interval is jittered
(never longer than `probe_seconds`) so that the nodes that lost the controller together do
not come back in step. A controller that answers with an error (403: a re-enrolled node) is
not an outage: those retries back off to `RefreshPolicy.retry_cap_seconds` as before.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.refresh import RandomSource, RefreshPolicy, retry_delay


@dataclass(frozen=True)
class ReconnectPolicy:
    """How often an unreachable controller is probed; durations are in seconds."""

    #: The first probe after a failure comes within this long...
    first_probe_seconds: float = 1.0
    #: ...each next one within twice as long as the one before, up to this: the longest a
    #: controller that is back waits for the agent to notice.
    probe_seconds: float = 5.0
    #: A probe comes between `(1 - probe_jitter)` and all of its ceiling after the last.
    probe_jitter: float = 0.4

    def __post_init__(self) -> None:
        if not 0.0 < self.first_probe_seconds <= self.probe_seconds:
            raise ValueError(
                "first_probe_seconds must be positive and at most probe_seconds "
                f"(got {self.first_probe_seconds}, {self.probe_seconds})"
            )
        if not 0.0 <= self.probe_jitter < 1.0:
            raise ValueError(f"probe_jitter must be in [0, 1) (got {self.probe_jitter})")


def probe_delay(attempt: int, policy: ReconnectPolicy, random: RandomSource) -> float:
    """Seconds before probe number `attempt` (0 after the first failure) of an unreachable
    controller: at most `first_probe_seconds * 2 ** attempt`, never more than `probe_seconds`,
    and at least `1 - probe_jitter` of that."""
    if attempt < 0:
        raise ValueError(f"attempt must be 0 or more (got {attempt})")
    ceiling = min(policy.probe_seconds, policy.first_probe_seconds * 2.0 ** min(attempt, 64))
    floor = ceiling * (1.0 - policy.probe_jitter)
    return min(ceiling, max(floor, random.uniform(floor, ceiling)))


def next_poll_delay(
    failures: int,
    controller_answered: bool,
    reconnect: ReconnectPolicy,
    backoff: RefreshPolicy,
    random: RandomSource,
) -> float:
    """Seconds before the next assignments call after `failures` failed ones in a row (0: the
    last call was answered). `controller_answered`: the last failure was the controller's
    error answer, not a controller that could not be reached."""
    if failures <= 0:
        return 0.0
    if controller_answered:
        return retry_delay(failures - 1, backoff, random)
    return probe_delay(failures - 1, reconnect, random)


def poll_wait(synced: bool, failures: int, long_poll_seconds: float) -> float:
    """How long the controller may hold the next assignments call: the long poll once synced
    and answered, else 0 (a probe, or the first sync: answered at once)."""
    return long_poll_seconds if synced and failures == 0 else 0.0
