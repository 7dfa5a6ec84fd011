"""AWS Signature Version 4 as pure functions: canonicalise, sign, parse and verify requests.

Nothing here reads a clock, a socket or a database: a request and ``now`` come in, a
:class:`SignedClaim` or one of :mod:`controller.errors` comes out. The rules are AWS's (non-S3
services), checked against AWS's published test suite and against botocore's signer.

Text is hashed as UTF-8, and characters that ``errors="surrogateescape"`` decoding made of
undecodable bytes go back to those bytes, so a caller may decode the wire that way losslessly.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from urllib.parse import quote, unquote_to_bytes

from controller.errors import (
    IncompleteSignature,
    MalformedQueryString,
    MissingAuthenticationToken,
    RequestExpired,
    SignatureDoesNotMatch,
    shown_value,
)

ALGORITHM = "AWS4-HMAC-SHA256"
TERMINATOR = "aws4_request"
MAX_SKEW = timedelta(minutes=15)
#: AWS's upper bound for ``X-Amz-Expires``: seven days.
MAX_PRESIGNED_EXPIRES = 604800
AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"

SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. "
    "Consult the service documentation for details."
)

#: Headers our signer leaves unsigned: hop-by-hop headers (RFC 9110 section 7.6.1) that proxies
#: may rewrite or drop, and headers that clients, tracers and load balancers add after signing.
#: botocore leaves out the same ones, so both sign the same headers of the same request.
UNSIGNED_HEADERS = frozenset(
    {
        "authorization",
        "baggage",
        "connection",
        "expect",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "traceparent",
        "tracestate",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "x-amzn-trace-id",
    }
)

_PRESIGN_PARAMETERS = (
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Security-Token",
    "X-Amz-Signature",
)
_AUTHORIZATION_PARTS = ("Credential", "SignedHeaders", "Signature")
_AMZ_DATE = re.compile(r"[0-9]{8}T[0-9]{6}Z")
_SCOPE_DATE = re.compile(r"[0-9]{8}")
_SIGNED_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")
_HTTP_WHITESPACE = re.compile(r"[ \t]+")
_EXPECTED_CREDENTIAL = '"<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request"'


@dataclass(frozen=True)
class HttpRequest:
    """An HTTP request as it arrived: raw path and query, headers in order, body bytes."""

    method: str
    #: The path exactly as on the request line, without the query.
    path: str
    #: The raw query string after ``?``, ``""`` if none.
    query: str
    #: ``(name, value)`` in arrival order, names as sent, duplicates allowed.
    headers: Sequence[tuple[str, str]]
    body: bytes = b""


@dataclass(frozen=True)
class SignedClaim:
    """What a request claims about its signature: all that is needed to check it once the secret
    key for ``access_key_id`` is known. Its repr leaves out the session token."""

    # security_token and canonical_request (which holds the token header) stay out of repr so
    # that logging a claim never logs a session token.

    access_key_id: str
    #: ``YYYYMMDD`` from the credential scope.
    date: str
    region: str
    service: str
    #: Aware, UTC.
    request_time: datetime
    signed_headers: tuple[str, ...]
    #: As sent; a well-formed one is 64 lowercase hex digits.
    signature: str
    security_token: str | None = field(repr=False)
    presigned: bool
    canonical_request: str = field(repr=False)
    string_to_sign: str

    @property
    def scope(self) -> str:
        """The credential scope, ``date/region/service/aws4_request``."""
        return credential_scope(self.date, self.region, self.service)


# Canonical request


def parse_query(raw: str, *, plus_as_space: bool = False) -> list[tuple[str, str]]:
    """Split a query string into percent-decoded ``(name, value)`` pairs, in order; ``+`` stays a
    plus unless ``plus_as_space`` (form bodies). Raises MalformedQueryString for non-UTF-8."""
    # SigV4 reads '+' in a query string as a plus; botocore encodes form bodies with '+' for a
    # space, hence the option. Empty segments ("a=1&&b=2") carry no parameter and are skipped.
    pairs: list[tuple[str, str]] = []
    if not raw:
        return pairs
    for segment in raw.split("&"):
        if not segment:
            continue
        name, _, value = segment.partition("=")
        pairs.append((_percent_decode(name, plus_as_space), _percent_decode(value, plus_as_space)))
    return pairs


def _percent_decode(text: str, plus_as_space: bool) -> str:
    if plus_as_space:
        text = text.replace("+", " ")
    if "%" not in text and text.isascii():
        return text  # nothing to decode (the common case: names, versions, ARNs)
    try:
        return unquote_to_bytes(text).decode("utf-8")
    except UnicodeError:
        raise MalformedQueryString(
            "The query string is malformed: a parameter is not valid UTF-8 once percent-decoded."
        ) from None


def uri_encode(text: str, *, safe: str = "") -> str:
    """RFC 3986 percent-encoding of the UTF-8 bytes of ``text``: only unreserved characters
    (letters, digits, ``-._~``) and ``safe`` stay as they are, in uppercase hex."""
    return quote(text, safe=safe, encoding="utf-8", errors="surrogateescape")


def canonical_uri(raw_path: str) -> str:
    """The canonical URI of a non-S3 request: dot segments removed, repeated slashes collapsed,
    a trailing slash kept, then the path as received URI-encoded (so ``%`` is encoded again)."""
    if raw_path == "/":
        return raw_path  # the Query API's path, every time
    segments: list[str] = []
    for segment in raw_path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
        else:
            segments.append(segment)
    path = "/" + "/".join(segments)
    if segments and raw_path.endswith("/"):
        path += "/"
    return uri_encode(path, safe="/")


def canonical_query_string(pairs: Iterable[tuple[str, str]]) -> str:
    """Each decoded name and value URI-encoded, sorted by encoded name then encoded value."""
    if not pairs:
        return ""
    encoded = sorted((uri_encode(name), uri_encode(value)) for name, value in pairs)
    return "&".join(f"{name}={value}" for name, value in encoded)


def canonical_header_value(value: str) -> str:
    """A header value trimmed, with each run of spaces and tabs inside it made one space."""
    value = value.strip(" \t")
    if "  " in value or "\t" in value:  # else every run is one space already
        value = _HTTP_WHITESPACE.sub(" ", value)
    return value


def canonical_headers(headers: Iterable[tuple[str, str]], signed_headers: Iterable[str]) -> str:
    """``name:value\\n`` for each signed header, sorted by lowercase name; the values of a header
    sent more than once are joined with ``,`` in arrival order. A header absent gets ``name:``."""
    return _canonical_headers(_index(headers), _canonical_names(signed_headers))


def _index(headers: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """Header values by lowercase name, in arrival order: made once per request."""
    index: dict[str, list[str]] = {}
    for name, value in headers:
        lowered = name.lower()
        values = index.get(lowered)
        if values is None:
            index[lowered] = [value]
        else:
            values.append(value)
    return index


def _canonical_headers(index: dict[str, list[str]], names: Iterable[str]) -> str:
    """As :func:`canonical_headers`, from an index and canonical (sorted lowercase) names."""
    lines = []
    for name in names:
        values = index.get(name)
        if values is None:
            lines.append(f"{name}:\n")
        elif len(values) == 1:
            lines.append(f"{name}:{canonical_header_value(values[0])}\n")
        else:
            lines.append(f"{name}:{','.join(map(canonical_header_value, values))}\n")
    return "".join(lines)


def payload_hash(body: bytes) -> str:
    """Hex SHA-256 of the body: non-S3 services always sign the payload."""
    return hashlib.sha256(body).hexdigest()


def canonical_request(
    request: HttpRequest,
    signed_headers: Iterable[str],
    *,
    exclude_query: Collection[str] = (),
) -> str:
    """The canonical request; ``exclude_query`` names parameters left out (X-Amz-Signature of a
    presigned URL). It holds the session token header when that is signed: never log it."""
    return _canonical_request(
        request,
        parse_query(request.query),
        _index(request.headers),
        _canonical_names(signed_headers),
        exclude_query,
    )


def _canonical_request(
    request: HttpRequest,
    query: list[tuple[str, str]],
    index: dict[str, list[str]],
    names: Sequence[str],
    exclude_query: Collection[str],
) -> str:
    """:func:`canonical_request` from the parsed query, the header index and canonical names."""
    pairs = [pair for pair in query if pair[0] not in exclude_query] if exclude_query else query
    return "\n".join(
        [
            request.method,
            canonical_uri(request.path),
            canonical_query_string(pairs),
            _canonical_headers(index, names),
            ";".join(names),
            payload_hash(request.body),
        ]
    )


def _canonical_names(names: Iterable[str]) -> list[str]:
    return sorted({name.lower() for name in names})


# Signature


def credential_scope(date: str, region: str, service: str) -> str:
    """``date/region/service/aws4_request``."""
    return f"{date}/{region}/{service}/{TERMINATOR}"


def string_to_sign(amz_date: str, scope: str, canonical_request: str) -> str:
    """Algorithm, request time, credential scope and the hex SHA-256 of the canonical request."""
    digest = hashlib.sha256(canonical_request.encode("utf-8", "surrogateescape")).hexdigest()
    return "\n".join([ALGORITHM, amz_date, scope, digest])


@functools.lru_cache(maxsize=4096)
def signing_key(secret_access_key: str, date: str, region: str, service: str) -> bytes:
    """The key derived from the secret for one day, region and service (kept for reuse: it
    changes once a day per key, and deriving it is four HMACs)."""
    key = ("AWS4" + secret_access_key).encode("utf-8")
    for part in (date, region, service, TERMINATOR):
        key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()
    return key


def signature(key: bytes, string_to_sign: str) -> str:
    """The hex HMAC-SHA256 of the string to sign under a signing key."""
    return hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def verify(claim: SignedClaim, secret_access_key: str) -> None:
    """Raise SignatureDoesNotMatch unless the claim was signed with this secret key; the
    comparison takes the same time wherever the signatures differ."""
    key = signing_key(secret_access_key, claim.date, claim.region, claim.service)
    expected = signature(key, claim.string_to_sign).encode("ascii")
    # "replace" turns anything unencodable into "?", which no hex signature contains.
    if not hmac.compare_digest(expected, claim.signature.encode("utf-8", "replace")):
        raise SignatureDoesNotMatch(SIGNATURE_MISMATCH)


# Parsing and checking a request


@dataclass(frozen=True)
class _Parts:
    """The signature parameters, from the Authorization header or the presigned query."""

    credential: str
    signed_headers: str
    signature: str


def parse_request(
    request: HttpRequest, now: datetime, *, max_skew: timedelta = MAX_SKEW
) -> SignedClaim:
    """Check all that can be checked without the secret key (complete, current, every x-amz-*
    header signed) and return what the request claims; :func:`verify` does the rest."""
    _require_utc(now, "now")
    query = parse_query(request.query)
    index = _index(request.headers)
    authorizations = index.get("authorization", [])
    presigned = any(name == "X-Amz-Algorithm" for name, _ in query)
    if authorizations and presigned:
        raise IncompleteSignature(
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter "
            "or the Authorization header should be specified."
        )
    if not authorizations and not presigned:
        raise MissingAuthenticationToken("Request is missing Authentication Token")

    parameters = _presigned_parameters(query) if presigned else {}
    parts = _presigned_parts(parameters) if presigned else _authorization_parts(authorizations)
    access_key_id, date, region, service = _parse_credential(parts.credential)
    signed_headers = _parse_signed_headers(parts.signed_headers, presigned)
    _require_signed(index, signed_headers)

    if presigned:
        amz_date = parameters["X-Amz-Date"]
        request_time = _parse_amz_date(amz_date, "The X-Amz-Date query parameter")
        expires = _parse_expires(parameters.get("X-Amz-Expires"))
        _check_presigned_time(request_time, expires, now, max_skew)
        security_token = _presigned_token(parameters, index)
    else:
        request_time, amz_date = _header_request_time(index)
        _check_skew(request_time, now, max_skew)
        security_token = _single_header(index, "x-amz-security-token")

    if date != amz_date[:8]:
        raise SignatureDoesNotMatch(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date "
            f"from HTTP: '{date}' != '{amz_date[:8]}', from '{amz_date}'."
        )
    # A signed header missing from the request means it is no longer the request that was signed
    # (a proxy dropped the header, say): a mismatch, not a malformed signature.
    absent = [name for name in signed_headers if name not in index]
    if absent:
        raise SignatureDoesNotMatch(
            f"{SIGNATURE_MISMATCH} The request is missing signed headers: {', '.join(absent)}."
        )

    # signed_headers are canonical already: lowercase, sorted, each once (_parse_signed_headers).
    creq = _canonical_request(
        request, query, index, signed_headers, ("X-Amz-Signature",) if presigned else ()
    )
    return SignedClaim(
        access_key_id=access_key_id,
        date=date,
        region=region,
        service=service,
        request_time=request_time,
        signed_headers=signed_headers,
        signature=parts.signature,
        security_token=security_token,
        presigned=presigned,
        canonical_request=creq,
        string_to_sign=string_to_sign(amz_date, credential_scope(date, region, service), creq),
    )


def _authorization_parts(authorizations: list[str]) -> _Parts:
    if len(authorizations) > 1:
        raise IncompleteSignature("The request has more than one Authorization header.")
    algorithm, _, rest = authorizations[0].strip().replace("\t", " ").partition(" ")
    if algorithm != ALGORITHM:
        raise IncompleteSignature(
            f"Unsupported AWS 'algorithm': {shown_value(algorithm)}; only {ALGORITHM} is supported."
        )
    found: dict[str, str] = {}
    for component in rest.split(","):
        component = component.strip()
        if not component:
            continue
        name, equals, value = component.partition("=")
        if not equals:
            raise IncompleteSignature(
                "Invalid key=value pair (missing equal-sign) in Authorization header."
            )
        if name not in _AUTHORIZATION_PARTS:
            raise IncompleteSignature(
                f"Unknown parameter {shown_value(name)} in Authorization header; expected "
                "Credential, SignedHeaders and Signature."
            )
        if name in found:
            raise IncompleteSignature(f"Authorization header has '{name}' more than once.")
        found[name] = value.strip()
    missing = [name for name in _AUTHORIZATION_PARTS if not found.get(name)]
    if missing:
        raise IncompleteSignature(
            " ".join(f"Authorization header requires '{name}' parameter." for name in missing)
        )
    return _Parts(found["Credential"], found["SignedHeaders"], found["Signature"])


def _presigned_parameters(query: list[tuple[str, str]]) -> dict[str, str]:
    parameters: dict[str, str] = {}
    for name, value in query:
        if name in _PRESIGN_PARAMETERS:
            if name in parameters:
                raise IncompleteSignature(f"The query parameter {name} is given more than once.")
            parameters[name] = value
    return parameters


def _presigned_parts(parameters: dict[str, str]) -> _Parts:
    algorithm = parameters["X-Amz-Algorithm"]
    if algorithm != ALGORITHM:
        raise IncompleteSignature(
            f"X-Amz-Algorithm only supports {ALGORITHM!r}, not {shown_value(algorithm)}."
        )
    required = ("X-Amz-Credential", "X-Amz-Date", "X-Amz-SignedHeaders", "X-Amz-Signature")
    missing = [name for name in required if not parameters.get(name)]
    if missing:
        raise IncompleteSignature(
            " ".join(f"AWS query-string parameters must include '{name}'." for name in missing)
            + " Re-examine the query-string parameters."
        )
    return _Parts(
        parameters["X-Amz-Credential"],
        parameters["X-Amz-SignedHeaders"],
        parameters["X-Amz-Signature"],
    )


# A client signs every request of a day with the same credential scope and signed header names:
# both are parsed once (errors are raised again each time: lru_cache keeps only results).
@functools.lru_cache(maxsize=1024)
def _parse_credential(credential: str) -> tuple[str, str, str, str]:
    parts = credential.split("/")
    if len(parts) != 5 or not parts[0]:
        raise IncompleteSignature(
            "Error parsing the Credential parameter; the Credential is mal-formed (it has "
            f"{len(parts)} '/'-separated parts, not 5); expecting {_EXPECTED_CREDENTIAL}."
        )
    access_key_id, date, region, service, terminator = parts
    if not _SCOPE_DATE.fullmatch(date) or not _is_calendar_date(date):
        raise IncompleteSignature(
            f"Credential should be scoped to a valid date (YYYYMMDD), not {shown_value(date)}; "
            f"expecting {_EXPECTED_CREDENTIAL}."
        )
    if not region:
        raise IncompleteSignature("Credential should be scoped to a valid region, not ''.")
    if not service:
        raise IncompleteSignature("Credential should be scoped to a valid service, not ''.")
    if terminator != TERMINATOR:
        raise IncompleteSignature(
            f"Credential should be scoped with a valid terminator: '{TERMINATOR}', "
            f"not {shown_value(terminator)}."
        )
    return access_key_id, date, region, service


def _is_calendar_date(date: str) -> bool:
    # By hand, not strptime: this runs for every request and strptime is slow.
    if len(date) != 8 or not date.isascii() or not date.isdigit():
        return False
    try:
        datetime(int(date[:4]), int(date[4:6]), int(date[6:8]))
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=1024)
def _parse_signed_headers(value: str, presigned: bool) -> tuple[str, ...]:
    where = "X-Amz-SignedHeaders" if presigned else "SignedHeaders"
    names = tuple(value.split(";"))
    well_formed = all(_SIGNED_HEADER_NAME.fullmatch(name) for name in names)
    if not well_formed or list(names) != sorted(set(names)):
        raise IncompleteSignature(
            f"{where} must be lowercase header names, sorted, each once, separated by ';'; "
            f"got {shown_value(value)}."
        )
    return names


def _require_signed(index: dict[str, list[str]], signed_headers: tuple[str, ...]) -> None:
    if "host" not in signed_headers:
        raise IncompleteSignature("'Host' must be a signed header.")
    unsigned = sorted(
        name for name in index if name.startswith("x-amz-") and name not in signed_headers
    )
    if unsigned:
        raise IncompleteSignature(
            "There were headers present in the request which were not signed: "
            f"{', '.join(unsigned)}. Every x-amz-* header must be signed."
        )


def _single_header(index: dict[str, list[str]], name: str) -> str | None:
    values = index.get(name)
    if values is None:
        return None
    if len(values) > 1:
        raise IncompleteSignature(f"The request has more than one {name} header.")
    return values[0].strip()


def _parse_amz_date(value: str, where: str) -> datetime:
    if _AMZ_DATE.fullmatch(value):
        try:  # the regex has checked the layout: YYYYMMDDTHHMMSSZ
            return datetime(
                int(value[0:4]), int(value[4:6]), int(value[6:8]),
                int(value[9:11]), int(value[11:13]), int(value[13:15]), tzinfo=UTC,
            )  # fmt: skip
        except ValueError:
            pass
    raise IncompleteSignature(
        f"{where} must be in ISO-8601 'basic format' (YYYYMMDD'T'HHMMSS'Z'), "
        f"not {shown_value(value)}."
    )


def _header_request_time(index: dict[str, list[str]]) -> tuple[datetime, str]:
    """The request time from X-Amz-Date or else Date, and its ISO 8601 basic form."""
    amz_date = _single_header(index, "x-amz-date")
    if amz_date is not None:
        # Valid (checked by _parse_amz_date), it is that form already.
        return _parse_amz_date(amz_date, "The X-Amz-Date header"), amz_date
    date = _single_header(index, "date")
    if date is None:
        raise IncompleteSignature(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
        )
    try:
        parsed = parsedate_to_datetime(date)
    except (TypeError, ValueError):
        raise IncompleteSignature(
            f"The Date header must be an RFC 1123 date, not {shown_value(date)}."
        ) from None
    if parsed.tzinfo is None:  # "-0000": the time is UTC, the zone unknown
        parsed = parsed.replace(tzinfo=UTC)
    parsed = parsed.astimezone(UTC)
    return parsed, parsed.strftime(AMZ_DATE_FORMAT)


def _parse_expires(value: str | None) -> timedelta:
    if value is None:
        raise IncompleteSignature(
            "AWS query-string parameters must include 'X-Amz-Expires'. "
            "Re-examine the query-string parameters."
        )
    if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= MAX_PRESIGNED_EXPIRES:
        raise IncompleteSignature(
            "X-Amz-Expires must be a whole number of seconds from 1 to "
            f"{MAX_PRESIGNED_EXPIRES} (seven days), not {shown_value(value)}."
        )
    return timedelta(seconds=int(value))


def _check_skew(request_time: datetime, now: datetime, max_skew: timedelta) -> None:
    if request_time < now - max_skew:
        raise RequestExpired(
            f"Signature expired: {_amz(request_time)} is now earlier than "
            f"{_amz(now - max_skew)} ({_amz(now)} - {_span(max_skew)})"
        )
    _check_not_future(request_time, now, max_skew)


def _check_not_future(request_time: datetime, now: datetime, max_skew: timedelta) -> None:
    if request_time > now + max_skew:
        raise RequestExpired(
            f"Signature not yet current: {_amz(request_time)} is still later than "
            f"{_amz(now + max_skew)} ({_amz(now)} + {_span(max_skew)})"
        )


def _check_presigned_time(
    request_time: datetime, expires: timedelta, now: datetime, max_skew: timedelta
) -> None:
    if now > request_time + expires:
        raise RequestExpired(
            f"Request has expired: signed at {_amz(request_time)} for "
            f"{int(expires.total_seconds())} seconds, so valid until "
            f"{_amz(request_time + expires)}; it is now {_amz(now)}."
        )
    _check_not_future(request_time, now, max_skew)


def _presigned_token(parameters: dict[str, str], index: dict[str, list[str]]) -> str | None:
    header = _single_header(index, "x-amz-security-token")
    parameter = parameters.get("X-Amz-Security-Token")
    if header is not None and parameter is not None:
        raise IncompleteSignature(
            "X-Amz-Security-Token must be given once, as a query parameter or as a header, "
            "not both."
        )
    return parameter if parameter is not None else header


def _amz(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(AMZ_DATE_FORMAT)


def _span(duration: timedelta) -> str:
    seconds = int(duration.total_seconds())
    return f"{seconds // 60} min." if seconds % 60 == 0 else f"{seconds} sec."


def _require_utc(moment: datetime, name: str) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime, got a naive one")


# Signing (our own clients and tests)


def sign(
    request: HttpRequest,
    *,
    access_key_id: str,
    secret_access_key: str,
    region: str,
    service: str,
    now: datetime,
    security_token: str | None = None,
) -> HttpRequest:
    """The request signed in an Authorization header at ``now``, signing every header but
    :data:`UNSIGNED_HEADERS`; it must have a Host header. Old auth headers are replaced."""
    _require_utc(now, "now")
    _check_scope_parts(access_key_id, region, service)
    replaced = {"authorization", "x-amz-date", "x-amz-security-token"}
    headers = [(name, value) for name, value in request.headers if name.lower() not in replaced]
    if not any(name.lower() == "host" for name, _ in headers):
        raise ValueError("a request must have a Host header to be signed")
    amz_date = _amz(now)
    headers.append(("X-Amz-Date", amz_date))
    if security_token is not None:
        headers.append(("X-Amz-Security-Token", security_token))
    signed_headers = _canonical_names(
        name for name, _ in headers if name.lower() not in UNSIGNED_HEADERS
    )
    unsigned = replace(request, headers=tuple(headers))
    scope = credential_scope(amz_date[:8], region, service)
    creq = canonical_request(unsigned, signed_headers)
    key = signing_key(secret_access_key, amz_date[:8], region, service)
    authorization = (
        f"{ALGORITHM} Credential={access_key_id}/{scope}, "
        f"SignedHeaders={';'.join(signed_headers)}, "
        f"Signature={signature(key, string_to_sign(amz_date, scope, creq))}"
    )
    return replace(request, headers=(*headers, ("Authorization", authorization)))


def presign(
    request: HttpRequest,
    *,
    access_key_id: str,
    secret_access_key: str,
    region: str,
    service: str,
    now: datetime,
    expires: int = 3600,
    security_token: str | None = None,
) -> HttpRequest:
    """The request signed in its query string (a presigned URL) at ``now`` for ``expires``
    seconds, signing Host and any x-amz-* headers; the body is hashed as it is."""
    # As botocore's SigV4QueryAuth for non-S3 services, the payload hash is the body's (botocore
    # first moves form parameters into the query, leaving the body empty); callers who want a
    # URL usable alone put the parameters in the query themselves.
    _require_utc(now, "now")
    _check_scope_parts(access_key_id, region, service)
    if not 1 <= expires <= MAX_PRESIGNED_EXPIRES:
        raise ValueError(f"expires must be from 1 to {MAX_PRESIGNED_EXPIRES} seconds")
    if not any(name.lower() == "host" for name, _ in request.headers):
        raise ValueError("a request must have a Host header to be signed")
    if any(name in _PRESIGN_PARAMETERS for name, _ in parse_query(request.query)):
        raise ValueError("the query string already has presigning parameters")
    amz_date = _amz(now)
    scope = credential_scope(amz_date[:8], region, service)
    signed_headers = _canonical_names(
        name
        for name, _ in request.headers
        if name.lower() == "host" or name.lower().startswith("x-amz-")
    )
    parameters = [
        ("X-Amz-Algorithm", ALGORITHM),
        ("X-Amz-Credential", f"{access_key_id}/{scope}"),
        ("X-Amz-Date", amz_date),
        ("X-Amz-Expires", str(expires)),
        ("X-Amz-SignedHeaders", ";".join(signed_headers)),
    ]
    if security_token is not None:
        parameters.append(("X-Amz-Security-Token", security_token))
    encoded = "&".join(f"{uri_encode(name)}={uri_encode(value)}" for name, value in parameters)
    unsigned = replace(request, query=f"{request.query}&{encoded}" if request.query else encoded)
    creq = canonical_request(unsigned, signed_headers)
    key = signing_key(secret_access_key, amz_date[:8], region, service)
    signed = signature(key, string_to_sign(amz_date, scope, creq))
    return replace(unsigned, query=f"{unsigned.query}&X-Amz-Signature={signed}")


def _check_scope_parts(access_key_id: str, region: str, service: str) -> None:
    for name, value in (("access_key_id", access_key_id), ("region", region), ("service", service)):
        if not value or "/" in value:
            raise ValueError(f"{name} must be non-empty and contain no '/'")
