"""Why a call to the controller failed, in one line an operator can act on.

Pure: an exception (as Twisted's HTTP client raises it) in, a sentence out. Twisted wraps a TLS
failure in `ResponseNeverReceived` whose text is a list of `Failure` reprs; the useful part is
OpenSSL's reason string inside, and what it means for this node's files.
"""

from __future__ import annotations

from collections.abc import Iterator

from OpenSSL import SSL
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.error import TimeoutError as ConnectTimeout

from agent.failover import ConnectionNotReady, NoAnswer

#: OpenSSL's reason when the controller's certificate does not chain to our trust root.
_NOT_VERIFIED = "certificate verify failed"
#: Alerts the controller sends when it refuses the node's own certificate.
_CLIENT_REFUSED = ("unknown ca", "bad certificate", "certificate revoked", "certificate expired")


def _causes(error: BaseException) -> Iterator[BaseException]:
    """`error` and what it wraps: a Twisted wrapper's `reasons`, then `__cause__`s."""
    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for reason in getattr(current, "reasons", None) or []:
            value = getattr(reason, "value", reason)
            if isinstance(value, BaseException):
                pending.append(value)
        if current.__cause__ is not None:
            pending.append(current.__cause__)


def _tls_reasons(error: SSL.Error) -> list[str]:
    reasons = []
    for entry in error.args[0] if error.args and isinstance(error.args[0], list) else []:
        if isinstance(entry, tuple) and entry:
            reasons.append(str(entry[-1]))
    return reasons or [str(error)]


def describe_failure(url: str, error: BaseException, ca_file: str) -> str:
    """One line saying why calling the controller at `url` failed; `ca_file` names the CA the
    node trusts (the serving process has its contents only, so the path is passed in)."""
    for cause in _causes(error):
        if isinstance(cause, SSL.Error):
            reasons = _tls_reasons(cause)
            if any(_NOT_VERIFIED in reason for reason in reasons):
                return (
                    f"controller {url}: its certificate does not verify against the CA in "
                    f"{ca_file} ({_NOT_VERIFIED})"
                )
            refused = [r for r in reasons if any(alert in r for alert in _CLIENT_REFUSED)]
            if refused:
                return (
                    f"controller {url}: it refused this node's certificate ({refused[0]}); "
                    "the node certificate must come from its CA (enroll-node)"
                )
            return f"controller {url}: TLS handshake failed ({'; '.join(reasons)})"
    leaves = [c for c in _causes(error) if not getattr(c, "reasons", None)] or [error]
    return f"controller {url}: unreachable ({_text(leaves[0])})"


def is_timeout(error: BaseException) -> bool:
    """Whether a bound passed (no connection, handshake or answer in time), rather than the
    controller refusing or dropping the connection."""
    return any(
        isinstance(cause, (DeferredTimeout, ConnectTimeout, ConnectionNotReady, NoAnswer))
        for cause in _causes(error)
    )


def cause_text(error: BaseException) -> str:
    """What went wrong at bottom, in a few words: OpenSSL's reasons for a TLS failure, else the
    innermost error Twisted wrapped (for the upstream metadata service's problems)."""
    for cause in _causes(error):
        if isinstance(cause, SSL.Error):
            return f"TLS handshake failed: {'; '.join(_tls_reasons(cause))}"
    leaves = [c for c in _causes(error) if not getattr(c, "reasons", None)] or [error]
    return _text(leaves[0])


def _text(error: BaseException) -> str:
    return str(error).strip() or type(error).__name__
