"""Pass-through to an upstream metadata service (issue 12, item 7), as pure rules: which
requests go upstream, what they carry, and what the guest gets back.

A cloud that already has a metadata service (OpenStack's Nova behind Neutron's metadata agent,
say) keeps serving what RoleCall does not: the agent forwards a request there only when
RoleCall's own rules let it through (`agent.imds.rules.respond`: endpoint, rate limit, proxy
headers, ``Host``, method, token) and its own tree answered 404. On top of that:

- **Never upstream** (:func:`outgoing` says ``None``): any method but ``GET`` and ``HEAD``; a
  target not in origin form (``/…``); a path or query with a character outside RFC 3986's
  (``;`` included, which some servers read as a parameter and drop), an encoded ``%`` left
  after one decoding, a backslash, or a ``.`` or ``..`` segment; and any path one of whose
  decoded segments is ``iam`` or ``api`` (any case) or starts with ``security-credentials``.
  So the IAM tree, every spelling of it, and the token path stay RoleCall's, whichever version
  prefix and whatever a guest makes up below them.
- **What goes**: the method, the target as the guest sent it (path and query), the trusted
  headers of the instance (:func:`trusted_headers`), and of the guest's own headers only
  ``Accept`` and ``User-Agent`` (:data:`GUEST_HEADERS`). Nothing else a guest sends leaves the
  node: not its ``X-aws-ec2-metadata-token``, not a header named like a trusted one, not a
  cookie. The configuration refuses trusted header names that a guest's allowed headers or
  the HTTP framing use (:data:`RESERVED_NAMES`).
- **Trusted headers**, Neutron's by default (:data:`NEUTRON`): ``X-Instance-ID`` (the instance
  id), ``X-Tenant-ID`` (its account), ``X-Instance-ID-Signature`` (HMAC-SHA256 of the instance
  id under the shared secret, lower-case hex, as Nova checks it) and ``X-Forwarded-For`` (the
  instance's private IPv4, which Nova reads as the guest's address). Another scheme renames
  them; the account and address headers may be left out.
- **The answer** (:func:`answer`, :func:`failure`): upstream's 2xx and 4xx pass back with their
  status, body and ``Content-Type`` (and, for ``HEAD``, ``Content-Length``), except that a 404
  is RoleCall's own IMDS page, so a guest sees one 404 whoever answered. Nothing else upstream
  sends is passed on: no ``Location``, no cookie. A redirect (never served, spec/imds.md line
  11), a 5xx, no answer at all, or a body over the limit is 502 with one line of text; no
  answer within the timeout is 504. SDKs (botocore, the JS and Go SDKs) and cloud-init retry
  any 5xx.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote

from agent.imds.headers import GUEST_HEADERS as GUEST_HEADERS
from agent.imds.headers import HEADER_NAME as HEADER_NAME
from agent.imds.headers import NEUTRON as NEUTRON
from agent.imds.headers import RESERVED_NAMES as RESERVED_NAMES
from agent.imds.headers import HeaderScheme as HeaderScheme
from agent.imds.rules import NOT_FOUND_PAGE, SERVER, TEXT_HTML, ImdsRequest, ImdsResponse

OCTET_STREAM: Final = "application/octet-stream"
#: What an answer's ``Content-Type`` may be to be passed back (printable ASCII, bounded).
_CONTENT_TYPE: Final = re.compile(r"[\x21-\x7e][\x20-\x7e]{0,254}", re.ASCII)
#: RFC 3986's characters of a path (pchar and "/") and of a query, ";" left out of the path.
_PATH: Final = re.compile(r"/(?:[A-Za-z0-9._~!$&'()*+,=:@/-]|%[0-9A-Fa-f]{2})*", re.ASCII)
_QUERY: Final = re.compile(r"(?:[A-Za-z0-9._~!$&'()*+,;=:@/?-]|%[0-9A-Fa-f]{2})*", re.ASCII)
#: Decoded segments that name RoleCall's own trees: never forwarded, in any case.
_OWN_SEGMENTS: Final = frozenset({"iam", "api"})
_OWN_PREFIX: Final = "security-credentials"


def sign(secret: bytes, instance_id: str) -> str:
    """``X-Instance-ID-Signature``: HMAC-SHA256 of the instance id (UTF-8) under the shared
    secret, in lower-case hex."""
    return hmac.new(secret, instance_id.encode("utf-8"), hashlib.sha256).hexdigest()


def trusted_headers(
    scheme: HeaderScheme,
    secret: bytes,
    instance_id: str,
    account_id: str | None,
    address: str | None,
) -> tuple[tuple[str, str], ...]:
    """The headers that tell the upstream service which instance asks: computed by the agent
    from the socket the request came in on, never from anything the guest sent. A header
    whose value is unknown (no account, no private address) is left out."""
    headers = [(scheme.instance_id, instance_id), (scheme.signature, sign(secret, instance_id))]
    if scheme.account_id is not None and account_id:
        headers.append((scheme.account_id, account_id))
    if scheme.forwarded_for is not None and address:
        headers.append((scheme.forwarded_for, address))
    return tuple(headers)


@dataclass(frozen=True)
class Outgoing:
    """A request for the upstream service: ``target`` is the path and query to append to its
    base URL."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]


def forwardable_target(request: ImdsRequest) -> str | None:
    """The target (path and query, no fragment) to send upstream, or ``None`` if this request
    must never leave RoleCall (see the module's rules)."""
    if request.method not in ("GET", "HEAD"):
        return None
    target = request.target.partition("#")[0]
    path, question, query = target.partition("?")
    if _PATH.fullmatch(path) is None or _QUERY.fullmatch(query) is None:
        return None
    decoded = unquote(path)
    if "%" in decoded or "\\" in decoded or any(ord(char) < 0x20 for char in decoded):
        return None
    for segment in decoded.split("/"):
        lowered = segment.lower()
        if lowered in (".", "..") or lowered in _OWN_SEGMENTS or lowered.startswith(_OWN_PREFIX):
            return None
    return path + question + query


def outgoing(request: ImdsRequest, trusted: tuple[tuple[str, str], ...]) -> Outgoing | None:
    """What to send upstream for ``request``, with the instance's ``trusted`` headers, or
    ``None`` if it is never forwarded. Of the guest's headers only :data:`GUEST_HEADERS`
    go."""
    target = forwardable_target(request)
    if target is None:
        return None
    allowed = {name.lower(): name for name in GUEST_HEADERS}
    taken = {name.lower() for name, _ in trusted}
    from_guest = tuple(
        (allowed[name.lower()], value)
        for name, value in request.headers
        if name.lower() in allowed and name.lower() not in taken
    )
    return Outgoing(request.method, target, (*trusted, *from_guest))


# -- what comes back ---------------------------------------------------------------------------


class Outcome(enum.Enum):
    """How a forwarded request ended: its metric label, and the status a failure answers."""

    ANSWERED = ("answered", 0)  # a 2xx, passed back
    NOT_FOUND = ("not-found", 404)  # RoleCall's 404 page
    REFUSED = ("refused", 0)  # a 4xx other than 404, passed back
    REDIRECT = ("redirect", 502)
    ERROR = ("error", 502)  # a 5xx, or any status outside 2xx-4xx
    UNREACHABLE = ("unreachable", 502)  # no answer: not connected, TLS failed, connection lost
    TOO_LARGE = ("too-large", 502)
    TIMEOUT = ("timeout", 504)
    CANCELLED = ("cancelled", 0)  # the guest hung up first: nothing is sent

    def __init__(self, label: str, status: int) -> None:
        self.label = label
        self.status = status


#: Every outcome's label, for metrics (each present from the start).
OUTCOMES: Final = tuple(outcome.label for outcome in Outcome)

_FAILURE_TEXT: Final = {
    Outcome.REDIRECT: "the upstream metadata service answered with a redirect",
    Outcome.ERROR: "the upstream metadata service failed",
    Outcome.UNREACHABLE: "the upstream metadata service could not be reached",
    Outcome.TOO_LARGE: "the upstream metadata service's answer is too large",
    Outcome.TIMEOUT: "the upstream metadata service did not answer in time",
}


@dataclass(frozen=True)
class UpstreamAnswer:
    """What the upstream service answered: status, ``Content-Type`` (if any), body, and the
    ``Content-Length`` it declared (if any: a HEAD answer's)."""

    status: int
    content_type: str | None
    body: bytes
    declared_length: int | None = None


def classify(status: int) -> Outcome:
    """The outcome of an upstream answer with ``status``."""
    if 200 <= status < 300:
        return Outcome.ANSWERED
    if status == 404:
        return Outcome.NOT_FOUND
    if 400 <= status < 500:
        return Outcome.REFUSED
    if 300 <= status < 400:
        return Outcome.REDIRECT
    return Outcome.ERROR


def answer(upstream: UpstreamAnswer, head: bool) -> ImdsResponse:
    """The guest's answer to what upstream answered (``head``: the guest's request was a
    HEAD). Its ``reason`` is ``upstream-`` and the outcome's label."""
    outcome = classify(upstream.status)
    if outcome is Outcome.NOT_FOUND:
        return _response(404, TEXT_HTML, NOT_FOUND_PAGE, head, outcome)
    if outcome.status:
        return failure(outcome, head)
    content_type = upstream.content_type
    if content_type is None or _CONTENT_TYPE.fullmatch(content_type) is None:
        content_type = OCTET_STREAM
    if head:
        length = upstream.declared_length or 0
        return _response(upstream.status, content_type, b"", head, outcome, length)
    return _response(upstream.status, content_type, upstream.body, head, outcome)


def failure(outcome: Outcome, head: bool) -> ImdsResponse:
    """The guest's answer when the upstream service gave none it can have: 502 or 504 with
    one line saying why (never the upstream's address)."""
    if not outcome.status or outcome is Outcome.NOT_FOUND:
        raise ValueError(f"{outcome} is not a failure")
    text = _FAILURE_TEXT[outcome].encode("ascii") + b"\n"
    return _response(outcome.status, "text/plain", text, head, outcome)


def _response(
    status: int,
    content_type: str,
    body: bytes,
    head: bool,
    outcome: Outcome,
    length: int | None = None,
) -> ImdsResponse:
    headers = (
        ("Content-Type", content_type),
        ("Content-Length", str(len(body) if length is None else length)),
        ("Server", SERVER),
    )
    return ImdsResponse(status, headers, b"" if head else body, None, f"upstream-{outcome.label}")
