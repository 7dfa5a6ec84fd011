"""Which controller URL the agent calls, how long it waits for one, and when it moves on.

Pure: URLs, outcomes and seconds in, decisions out; no reactor, no I/O (`agent.client` is the
shell). The rules (docs/decisions.md, "Agents fail over between controllers"):

- **Bounds.** Every attempt on one URL ends: its connection (TCP and the TLS handshake) must be
  ready within `Bounds.connect_seconds`, and its answer must be whole within
  `Bounds.answer_seconds` of the attempt's start (a long poll: its ``wait`` more). A controller
  that hangs (SIGSTOP: the kernel still accepts the connection, nothing answers) is left when a
  bound passes, as one that is dead (connection refused or reset) is left at once.
- **Refusals.** A controller that answers 5xx (its store is unavailable...) or refuses the
  node's certificate (403 ``UnknownNode``, ``NoCertificate``: another controller may know the
  node) is left for the next URL. Other answers (403 ``NotYourInstance``, 404, 409) are the same
  from every controller: they are the call's answer. When every controller refuses, the node is
  the one at fault (a retired node), and the caller backs off as for any error answer.
- **Stickiness.** A call starts at the URL in use. It moves on to the next URL in the configured
  order (wrapping around), each URL at most once per call. The URL in use changes (a
  *failover*) only when a call failed on it and then succeeded on another; the agent never goes
  back by itself to the first URL while the one in use works. A restart starts at the first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: Why a controller was left: no connection (refused, reset, TLS failure), a bound passed, or an
#: error answer another controller may not give. A fixed set: metric label values.
FAILOVER_REASONS = ("unreachable", "timeout", "refused")

#: Error codes of a 403 that say "this controller does not know you", not "no": another
#: controller (one on the right database) may accept the node.
_NOT_KNOWN_HERE = frozenset({"UnknownNode", "NoCertificate"})


class ConnectionNotReady(Exception):
    """No connection (TCP and TLS) to the controller within `Bounds.connect_seconds`."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no TLS connection within {seconds:g} s")
        self.seconds = seconds


class NoAnswer(Exception):
    """The controller's answer was not whole within the attempt's bound (`attempt_seconds`)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no answer within {seconds:g} s")
        self.seconds = seconds


@dataclass(frozen=True)
class Bounds:
    """How long one attempt on one controller URL may take; in seconds."""

    #: The TCP connection and the TLS handshake together. Loopback and a data centre's network
    #: take milliseconds; 3 s allows one lost SYN (Linux retries it after 1 s).
    connect_seconds: float = 3.0
    #: The whole answer, from the attempt's start (a long poll: its ``wait`` more). A credential
    #: issue takes milliseconds (an audited write); 5 s is a controller that is not working.
    answer_seconds: float = 5.0

    def __post_init__(self) -> None:
        if not 0.0 < self.connect_seconds <= self.answer_seconds:
            raise ValueError(
                "connect_seconds must be positive and at most answer_seconds "
                f"(got {self.connect_seconds}, {self.answer_seconds})"
            )


def attempt_seconds(wait: float, bounds: Bounds) -> float:
    """How long one attempt may take in all: its answer's bound, plus a long poll's `wait`
    (the controller holds it that long when nothing changes)."""
    if wait < 0:
        raise ValueError(f"wait must be 0 or more (got {wait})")
    return bounds.answer_seconds + wait


def moves_on(status: int, code: str | None) -> bool:
    """Whether a controller's answer with HTTP `status` (and error `code`, if it sent one) is
    this controller's problem, so that another may answer: 5xx, or a 403 that does not know the
    node. Every other answer is the call's answer, the same from every controller."""
    if status >= 500:
        return True
    return status == 403 and code in _NOT_KNOWN_HERE


def next_url(urls: Sequence[str], current: str, tried: Sequence[str]) -> str | None:
    """The URL a call tries next: the one in use if this call has not tried it (it may have
    changed while the call waited), else the first untried one after it in the configured
    order, wrapping around; None once every URL was tried."""
    if current not in urls:
        raise ValueError(f"{current!r} is not one of the URLs")
    start = urls.index(current)
    for offset in range(len(urls)):
        url = urls[(start + offset) % len(urls)]
        if url not in tried:
            return url
    return None


class ControllerChoice:
    """The URL in use, and the failovers so far (by reason, for metrics)."""

    def __init__(self, urls: Sequence[str]) -> None:
        if not urls:
            raise ValueError("at least one controller URL is needed")
        if len(set(urls)) != len(urls):
            raise ValueError("a controller URL is listed twice")
        self.urls = tuple(urls)
        #: The URL calls start at: the first at start, then the last that answered after the
        #: one in use failed.
        self.current = self.urls[0]
        self.failovers = dict.fromkeys(FAILOVER_REASONS, 0)

    def next(self, tried: Sequence[str]) -> str | None:
        return next_url(self.urls, self.current, tried)

    def answered(self, url: str, failed: dict[str, str]) -> str | None:
        """`url` answered a call that had failed on the URLs in `failed` (URL -> reason, one of
        `FAILOVER_REASONS`). If the URL in use was one of them, `url` is in use from now on:
        that is a failover, counted under the reason the URL in use failed for; the URL left
        is returned. Otherwise nothing changes (None): a call that failed elsewhere, or that
        reached `url` after another call had already moved there, says nothing against the
        URL in use."""
        if url == self.current or self.current not in failed:
            return None
        left, self.current = self.current, url
        self.failovers[failed[left]] += 1
        return left
