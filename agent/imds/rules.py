"""The IMDS request rules (spec/imds.md lines 1-15) as one pure function, :func:`respond`.

The socket layer parses a request, decodes its target and headers as ISO-8859-1 (lossless for any
bytes), asks the instance's rate limiter, and hands all that to :func:`respond` with the
:class:`InstanceView` of the instance whose socket accepted the connection. It writes back the
:class:`ImdsResponse` as it is, adding only ``Date`` and connection handling, and applies
``ip_ttl`` (the hop limit) to the packets of a token response (spec line 5).

The checks run in this order; the first that refuses decides the answer:

1. ``HttpEndpoint=disabled`` → 403 for everything (line 9).
2. Over the instance's rate → 503 with ``Retry-After: 1`` (line 14).
3. ``PUT`` with ``X-Forwarded-For`` → 403, with or without ``strict_proxy`` (line 3).
4. With ``strict_proxy`` (the default, line 13): ``X-Forwarded-For``, ``Forwarded`` or ``Via``
   → 403; a request target in absolute form (``GET http://…``, what a proxy receives) → 403;
   ``Host`` other than exactly one ``169.254.169.254`` or ``169.254.169.254:80`` → 403. A
   missing ``Host`` is refused too: every SDK, curl and cloud-init send one (HTTP/1.1 requires
   it), so its absence means a hand-made request. Without ``strict_proxy`` none of this is
   checked and an absolute-form target is served by its path.
5. The method. ``PUT`` is for ``/latest/api/token`` only (exact path; a query string is ignored):
   anywhere else it is 403, never 404 or 405 (line 4). ``GET`` and ``HEAD`` are for everything
   else. Any other method → 405, and so is ``GET``/``HEAD`` on the token path. ``Allow`` names
   what the target accepts: ``PUT`` on the token path, ``GET, HEAD`` everywhere else.
6. Token ``PUT``: ``X-aws-ec2-metadata-token-ttl-seconds`` must be exactly one value of 1-5 ASCII
   digits in 1..21600, else 400 (line 2). The 200 answer echoes the TTL (line 1).
7. ``GET``/``HEAD``: an ``X-aws-ec2-metadata-token`` header, whenever present (in optional mode
   too), must be exactly one token valid for this instance, else 401 (lines 6, 7). With
   ``HttpTokens=required`` a request without one → 401 (line 8).
8. The tree answers: 200 with the leaf or the listing, or 404 with the IMDS XHTML page (line 12).

Every response carries ``Content-Type``, ``Content-Length`` and ``Server: EC2ws`` (what EC2's
IMDS sends). Refusals (400, 401, 403, 405, 503) have an empty ``text/plain`` body; only the 404
page is ``text/html``. ``HEAD`` answers the same status and headers with an empty body. No
status outside 200, 400, 401, 403, 404, 405 and 503 is ever produced, so never a redirect.
(With an upstream metadata service configured, a 404 of the tree may be replaced by upstream's
answer: `agent.imds.passthrough` says which, and its statuses.)
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Final

from agent.imds.tokens import MAX_TTL_SECONDS, MIN_TTL_SECONDS, TokenMinter
from agent.imds.tree import TEXT_PLAIN, Directory, Found, ImdsTree
from common.nodemessages import HttpEndpoint, HttpTokens, MetadataOptions

TOKEN_PATH: Final = "/latest/api/token"  # noqa: S105 - a URL path, not a secret
TTL_HEADER: Final = "X-aws-ec2-metadata-token-ttl-seconds"
TTL_ECHO_HEADER: Final = "X-Aws-Ec2-Metadata-Token-Ttl-Seconds"
TOKEN_HEADER: Final = "X-aws-ec2-metadata-token"  # noqa: S105 - a header name
SERVER: Final = "EC2ws"
METADATA_HOSTS: Final = frozenset({"169.254.169.254", "169.254.169.254:80"})
PROXY_HEADERS: Final = frozenset({"x-forwarded-for", "forwarded", "via"})

TEXT_HTML: Final = "text/html"
NOT_FOUND_PAGE: Final = (
    b'<?xml version="1.0" encoding="iso-8859-1"?>\n'
    b'<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN"\n'
    b'\t\t "http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">\n'
    b'<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="en" lang="en">\n'
    b" <head>\n"
    b"  <title>404 - Not Found</title>\n"
    b" </head>\n"
    b" <body>\n"
    b"  <h1>404 - Not Found</h1>\n"
    b" </body>\n"
    b"</html>\n"
)
"""EC2's IMDS 404 page, byte for byte (339 bytes)."""

MEMO_ANSWERS: Final = 256
"""How many distinct (path, method) answers one instance view remembers."""

_TTL_VALUE: Final = re.compile(r"[0-9]{1,5}", re.ASCII)
_ABSOLUTE_FORM: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*", re.ASCII)
_OWS: Final = " \t"


# -- requests and responses --------------------------------------------------------------------


@dataclass(frozen=True)
class ImdsRequest:
    """One parsed HTTP request: method, raw target (path and query) and headers, as text."""

    method: str
    target: str
    headers: Sequence[tuple[str, str]] = ()

    def values(self, name: str) -> list[str]:
        """Every value of header ``name`` (case-insensitive), trimmed of spaces and tabs."""
        return self._by_name.get(name.lower(), [])

    @cached_property
    def _by_name(self) -> dict[str, list[str]]:
        """The headers by lower-cased name, each list in arrival order (built once)."""
        index: dict[str, list[str]] = {}
        for key, value in self.headers:
            index.setdefault(key.lower(), []).append(value.strip(_OWS))
        return index


@dataclass(frozen=True)
class ImdsResponse:
    """What to send back. ``reason`` labels the decision for logs and metrics (never sent)."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    ip_ttl: int | None = None
    reason: str = "ok"

    @cached_property
    def raw_headers(self) -> tuple[tuple[bytes, bytes], ...]:
        """The headers as the wire carries them (ISO-8859-1), encoded once per answer (a
        memoised answer is encoded once)."""
        return tuple(
            (name.encode("latin-1"), value.encode("latin-1")) for name, value in self.headers
        )

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or ``None``."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)


@dataclass(frozen=True)
class InstanceView:
    """What :func:`respond` needs to know of the instance whose socket took the request."""

    instance_id: str
    options: MetadataOptions
    tree: ImdsTree
    minter: TokenMinter
    strict_proxy: bool = True
    #: The tree's answers by (path, HEAD?), memoised: the tree never changes, so neither do
    #: they. Bounded, as guests choose the paths.
    answers: dict[tuple[str, bool], ImdsResponse] = field(
        default_factory=dict, compare=False, repr=False
    )


# -- the error map -----------------------------------------------------------------------------


class Refusal(enum.Enum):
    """Every way a request is refused: its status and its label. The one place refusals become
    status codes."""

    ENDPOINT_DISABLED = (403, "endpoint-disabled")
    RATE_LIMITED = (503, "rate-limited")
    PROXY_HEADER = (403, "proxy-header")
    ABSOLUTE_TARGET = (403, "absolute-target")
    BAD_HOST = (403, "bad-host")
    PUT_NOT_TOKEN_PATH = (403, "put-not-token-path")
    METHOD_NOT_ALLOWED = (405, "method-not-allowed")
    BAD_TTL = (400, "bad-ttl")
    TOKEN_INVALID = (401, "token-invalid")
    TOKEN_REQUIRED = (401, "token-required")

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason


# -- the rules ---------------------------------------------------------------------------------


def respond(
    request: ImdsRequest, instance: InstanceView, now: float, *, rate_limited: bool = False
) -> ImdsResponse:
    """The answer to ``request`` made in ``instance`` at ``now`` (POSIX seconds). Never raises
    for any request: whatever a guest sends, the answer is one of the statuses above."""
    head = request.method == "HEAD"
    if instance.options.http_endpoint is HttpEndpoint.DISABLED:
        return _refuse(Refusal.ENDPOINT_DISABLED, head)
    if rate_limited:
        return _refuse(Refusal.RATE_LIMITED, head, (("Retry-After", "1"),))
    if request.method == "PUT" and request.values("X-Forwarded-For"):
        return _refuse(Refusal.PROXY_HEADER, head)

    path = request.target.partition("?")[0].partition("#")[0]
    # A scheme starts with a letter: an origin-form target ("/…") needs no regular expression.
    absolute = None if path[:1] == "/" else _ABSOLUTE_FORM.match(path)
    if instance.strict_proxy:
        refusal = _proxy_refusal(request, absolute is not None)
        if refusal is not None:
            return _refuse(refusal, head)
    if absolute is not None:
        path = path[absolute.end() :] or "/"

    if request.method == "PUT":
        if path != TOKEN_PATH:
            return _refuse(Refusal.PUT_NOT_TOKEN_PATH, head)
        return _token(request, instance, now)
    if path == TOKEN_PATH or request.method not in ("GET", "HEAD"):
        allow = "PUT" if path == TOKEN_PATH else "GET, HEAD"
        return _refuse(Refusal.METHOD_NOT_ALLOWED, head, (("Allow", allow),))

    tokens = request.values(TOKEN_HEADER)
    if tokens:
        if len(tokens) != 1 or not instance.minter.check(tokens[0], instance.instance_id, now):
            return _refuse(Refusal.TOKEN_INVALID, head)
    elif instance.options.http_tokens is HttpTokens.REQUIRED:
        return _refuse(Refusal.TOKEN_REQUIRED, head)

    tree = instance.tree.as_of(now)
    if tree is not instance.tree:  # expired meanwhile: answered from the tree hiding them
        return _from_tree(tree, path, head)
    key = (path, head)
    answer = instance.answers.get(key)
    if answer is None:
        answer = _from_tree(tree, path, head)
        if len(instance.answers) < MEMO_ANSWERS:
            instance.answers[key] = answer
    return answer


def _from_tree(tree: ImdsTree, path: str, head: bool) -> ImdsResponse:
    found = tree.lookup(path)
    if isinstance(found, Found | Directory):
        return _response(200, found.content_type, found.body, head)
    return _response(404, TEXT_HTML, NOT_FOUND_PAGE, head, reason="not-found")


def _proxy_refusal(request: ImdsRequest, absolute_target: bool) -> Refusal | None:
    if any(name.lower() in PROXY_HEADERS for name, _ in request.headers):
        return Refusal.PROXY_HEADER
    if absolute_target:
        return Refusal.ABSOLUTE_TARGET
    hosts = request.values("Host")
    if len(hosts) != 1 or hosts[0] not in METADATA_HOSTS:
        return Refusal.BAD_HOST
    return None


def _token(request: ImdsRequest, instance: InstanceView, now: float) -> ImdsResponse:
    values = request.values(TTL_HEADER)
    if len(values) != 1 or _TTL_VALUE.fullmatch(values[0]) is None:
        return _refuse(Refusal.BAD_TTL, head=False)
    ttl = int(values[0])
    if not MIN_TTL_SECONDS <= ttl <= MAX_TTL_SECONDS:
        return _refuse(Refusal.BAD_TTL, head=False)
    token = instance.minter.mint(instance.instance_id, ttl, now)
    return _response(
        200,
        TEXT_PLAIN,
        token.encode("ascii"),
        head=False,
        extra=((TTL_ECHO_HEADER, str(ttl)),),
        reason="token",
        ip_ttl=instance.options.http_put_response_hop_limit,
    )


def _refuse(refusal: Refusal, head: bool, extra: tuple[tuple[str, str], ...] = ()) -> ImdsResponse:
    return _response(refusal.status, TEXT_PLAIN, b"", head, extra=extra, reason=refusal.reason)


def _response(
    status: int,
    content_type: str,
    body: bytes,
    head: bool,
    *,
    extra: tuple[tuple[str, str], ...] = (),
    reason: str = "ok",
    ip_ttl: int | None = None,
) -> ImdsResponse:
    headers = (
        ("Content-Type", content_type),
        ("Content-Length", str(len(body))),
        ("Server", SERVER),
        *extra,
    )
    return ImdsResponse(status, headers, b"" if head else body, ip_ttl, reason)
