"""Signature V4: canonical forms, the rules parse_request enforces, and agreement with botocore.

botocore's SigV4Auth.add_auth reads its own clock. Rather than patching it, each botocore test takes
the time botocore signed at from ``request.context["timestamp"]`` (botocore's own record) and uses
it as our ``now``, so results do not depend on when the tests run. Our own signer gets fixed times.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, urlsplit

import pytest
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.utils import percent_encode_sequence
from hypothesis import given, settings
from hypothesis import strategies as st

from controller import sigv4
from controller.errors import (
    ApiError,
    IncompleteSignature,
    MalformedQueryString,
    MissingAuthenticationToken,
    RequestExpired,
    SignatureDoesNotMatch,
)
from controller.sigv4 import HttpRequest

ACCESS_KEY_ID = "AKIAROLECALLEXAMPLE1"
SECRET_ACCESS_KEY = "rOLEcALL/sEcReT+kEy=9876543210zyxwvuTSRQ"
SESSION_TOKEN = "FwoGZXIvYXdzEJr//////////wEaDROLECALLtoken+/sessionEXAMPLE=="
REGION = "us-east-1"
HOST = "rolecall.test:8080"
ENDPOINT = f"http://{HOST}"
FORM = "application/x-www-form-urlencoded; charset=utf-8"
NOW = datetime(2015, 8, 30, 12, 36, 0, tzinfo=UTC)
AMZ_NOW = "20150830T123600Z"
SKEW = timedelta(minutes=15)
SECOND = timedelta(seconds=1)

# Values that travel badly: UTF-8, spaces, and every character form and query encoding treat
# specially.
AWKWARD = "Zürich ☃ two  spaces + plus / slash = equals ~ tilde * star & amp % pct"
POLICY = '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:*"}]}'
printable = st.characters(codec="utf-8", exclude_categories=("Cc", "Cs"))


# Building requests


def form(pairs: list[tuple[str, str]]) -> str:
    """Pairs as botocore encodes a query string (RFC 3986, '%20' for a space)."""
    return str(percent_encode_sequence(pairs))


def request(
    method: str = "POST",
    path: str = "/",
    query: str = "",
    headers: tuple[tuple[str, str], ...] = (),
    body: bytes = b"Action=GetCallerIdentity&Version=2011-06-15",
) -> HttpRequest:
    base = (("Host", HOST), ("Content-Type", FORM)) if method == "POST" else (("Host", HOST),)
    return HttpRequest(method, path, query, (*base, *headers), body if method == "POST" else b"")


def header_signed(
    unsigned: HttpRequest | None = None,
    *,
    token: str | None = SESSION_TOKEN,
    now: datetime = NOW,
    service: str = "sts",
) -> HttpRequest:
    return sigv4.sign(
        unsigned or request(),
        access_key_id=ACCESS_KEY_ID,
        secret_access_key=SECRET_ACCESS_KEY,
        region=REGION,
        service=service,
        now=now,
        security_token=token,
    )


def presigned(
    unsigned: HttpRequest | None = None,
    *,
    expires: int = 60,
    token: str | None = SESSION_TOKEN,
    now: datetime = NOW,
) -> HttpRequest:
    default = request("GET", query=form([("Action", "GetCallerIdentity")]))
    return sigv4.presign(
        unsigned or default,
        access_key_id=ACCESS_KEY_ID,
        secret_access_key=SECRET_ACCESS_KEY,
        region=REGION,
        service="sts",
        now=now,
        expires=expires,
        security_token=token,
    )


def hand_signed(
    unsigned: HttpRequest,
    signed_headers: list[str],
    *,
    scope_date: str = AMZ_NOW[:8],
    amz_date: str = AMZ_NOW,
) -> HttpRequest:
    """A correctly signed Authorization over exactly ``signed_headers``, whatever the rules say."""
    scope = sigv4.credential_scope(scope_date, REGION, "sts")
    creq = sigv4.canonical_request(unsigned, signed_headers)
    key = sigv4.signing_key(SECRET_ACCESS_KEY, scope_date, REGION, "sts")
    value = sigv4.signature(key, sigv4.string_to_sign(amz_date, scope, creq))
    authorization = (
        f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY_ID}/{scope}, "
        f"SignedHeaders={';'.join(sorted(signed_headers))}, Signature={value}"
    )
    return with_header(unsigned, "Authorization", authorization)


def with_header(original: HttpRequest, name: str, value: str) -> HttpRequest:
    return replace(original, headers=(*original.headers, (name, value)))


def without_header(original: HttpRequest, name: str) -> HttpRequest:
    headers = tuple((n, v) for n, v in original.headers if n.lower() != name.lower())
    return replace(original, headers=headers)


def header(original: HttpRequest, name: str) -> str:
    (value,) = [v for n, v in original.headers if n.lower() == name.lower()]
    return value


def edit_authorization(original: HttpRequest, old: str, new: str) -> HttpRequest:
    authorization = header(original, "Authorization")
    assert old in authorization
    edited = authorization.replace(old, new)
    return with_header(without_header(original, "Authorization"), "Authorization", edited)


def authorization_without(original: HttpRequest, part: str) -> HttpRequest:
    algorithm, _, rest = header(original, "Authorization").partition(" ")
    kept = [c.strip() for c in rest.split(",") if not c.strip().startswith(part + "=")]
    edited = f"{algorithm} {', '.join(kept)}"
    return with_header(without_header(original, "Authorization"), "Authorization", edited)


def signature_of(signed: HttpRequest) -> str:
    return header(signed, "Authorization").rpartition("Signature=")[2]


def with_signature(signed: HttpRequest, value: str) -> HttpRequest:
    return edit_authorization(signed, f"Signature={signature_of(signed)}", f"Signature={value}")


def edit_query(original: HttpRequest, name: str, value: str | None) -> HttpRequest:
    """The query with parameter ``name`` set to ``value`` (None drops it), order kept."""
    pairs = sigv4.parse_query(original.query)
    edited = [(n, value if n == name else v) for n, v in pairs if n != name or value is not None]
    if value is not None and name not in dict(pairs):
        edited.append((name, value))
    return replace(original, query=form([(n, v) for n, v in edited if v is not None]))


def check(signed: HttpRequest, now: datetime = NOW) -> sigv4.SignedClaim:
    claim = sigv4.parse_request(signed, now)
    sigv4.verify(claim, SECRET_ACCESS_KEY)
    return claim


# Canonical forms


@pytest.mark.parametrize(
    ("raw", "pairs"),
    [
        ("", []),
        ("a=1&b", [("a", "1"), ("b", "")]),
        ("a=b=c", [("a", "b=c")]),
        ("a=1&&b=2&", [("a", "1"), ("b", "2")]),
        ("k=a+b%20c", [("k", "a+b c")]),
        ("%E1%88%B4=bar", [("\u1234", "bar")]),
        ("\u1234=bar", [("\u1234", "bar")]),
        ("k=%2Fx%3D%26y", [("k", "/x=&y")]),
        ("k=%zz", [("k", "%zz")]),
        ("b=2&a=1&b=1", [("b", "2"), ("a", "1"), ("b", "1")]),
    ],
)
def test_parse_query_decodes_percent_escapes_and_keeps_plus(
    raw: str, pairs: list[tuple[str, str]]
) -> None:
    assert sigv4.parse_query(raw) == pairs


def test_parse_query_reads_plus_as_space_for_form_bodies() -> None:
    assert sigv4.parse_query("k=a+b%2Bc", plus_as_space=True) == [("k", "a b+c")]


def test_parse_query_refuses_parameters_that_are_not_utf8() -> None:
    with pytest.raises(MalformedQueryString):
        sigv4.parse_query("k=%FF%FE")


def botocore_canonical_lines(aws_request: AWSRequest) -> list[str]:
    auth = SigV4Auth(Credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY), "iam", REGION)
    return str(auth.canonical_request(aws_request)).split("\n")


def botocore_canonical_uri(path: str) -> str:
    return botocore_canonical_lines(AWSRequest(method="GET", url=ENDPOINT + path))[1]


def botocore_canonical_query(pairs: list[tuple[str, str]]) -> str:
    return botocore_canonical_lines(AWSRequest(method="GET", url=ENDPOINT + "/", params=pairs))[2]


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("", "/"),
        ("/", "/"),
        ("/a b", "/a%20b"),
        ("/a%20b", "/a%2520b"),
        ("/a%2Fb", "/a%252Fb"),
        ("/a/./b/../c", "/a/c"),
        ("//a//b//", "/a/b/"),
        ("/a/b/..", "/a"),
        ("/a/.", "/a"),
        ("/..", "/"),
        ("/.../", "/.../"),
        ("/\u1234", "/%E1%88%B4"),
        ("/a+b=c;d", "/a%2Bb%3Dc%3Bd"),
        ("/~user/-._/", "/~user/-._/"),
        ("/rolecall/", "/rolecall/"),
    ],
)
def test_canonical_uri_normalises_then_encodes_the_path_as_botocore_does(
    raw: str, canonical: str
) -> None:
    assert sigv4.canonical_uri(raw) == canonical
    assert botocore_canonical_uri(raw) == canonical


@given(st.text(printable.filter(lambda c: c not in "?#")).map(lambda text: "/" + text))
def test_canonical_uri_agrees_with_botocore_for_any_path(path: str) -> None:
    assert sigv4.canonical_uri(path) == botocore_canonical_uri(path)


def test_canonical_query_string_encodes_then_sorts_by_name_then_value() -> None:
    pairs = [("b", "2"), ("a b", "~/+"), ("b", "1"), ("B", "x"), ("\u1234", "")]
    expected = "%E1%88%B4=&B=x&a%20b=~%2F%2B&b=1&b=2"  # byte order: "%" < "B" < "a"
    assert sigv4.canonical_query_string(pairs) == expected
    assert botocore_canonical_query(pairs) == expected


@given(st.lists(st.tuples(st.text(printable, min_size=1), st.text(printable))))
def test_canonical_query_string_agrees_with_botocore_for_any_parameters(
    pairs: list[tuple[str, str]],
) -> None:
    assert sigv4.canonical_query_string(pairs) == botocore_canonical_query(pairs)


def test_canonical_headers_trim_collapse_and_join_repeated_headers_in_order() -> None:
    headers = [("Host", " h "), ("My-Header", "b"), ("my-header", "  a \t  c  "), ("Other", "x")]
    expected = "host:h\nmy-header:b,a c\n"
    assert sigv4.canonical_headers(headers, ["my-header", "host"]) == expected


# Our signer, verified by us


def test_header_signed_request_verifies_and_claims_what_it_was_signed_with() -> None:
    claim = check(header_signed(service="sts"))
    assert (claim.access_key_id, claim.date, claim.region, claim.service) == (
        ACCESS_KEY_ID,
        "20150830",
        REGION,
        "sts",
    )
    assert claim.scope == "20150830/us-east-1/sts/aws4_request"
    assert claim.request_time == NOW
    assert claim.security_token == SESSION_TOKEN
    assert claim.signed_headers == ("content-type", "host", "x-amz-date", "x-amz-security-token")
    assert not claim.presigned


def test_presigned_request_verifies_and_takes_its_token_from_the_query() -> None:
    claim = check(presigned())
    assert claim.presigned
    assert claim.security_token == SESSION_TOKEN
    assert claim.signed_headers == ("host",)


def test_request_without_token_claims_none() -> None:
    assert check(header_signed(token=None)).security_token is None
    assert check(presigned(token=None)).security_token is None


def test_claim_repr_never_shows_the_session_token() -> None:
    assert SESSION_TOKEN not in repr(sigv4.parse_request(header_signed(), NOW))


@pytest.mark.parametrize("offset", [SKEW, -SKEW], ids=["signed-15-min-ago", "signed-15-min-ahead"])
def test_clock_skew_of_exactly_15_minutes_is_accepted(offset: timedelta) -> None:
    check(header_signed(), now=NOW + offset)


def test_presigned_request_is_accepted_until_the_last_second_of_its_lifetime() -> None:
    check(presigned(expires=60), now=NOW + timedelta(seconds=60))


def test_request_dated_by_an_rfc1123_date_header_verifies() -> None:
    unsigned = request(headers=(("Date", "Sun, 30 Aug 2015 12:36:00 GMT"),))
    claim = check(hand_signed(unsigned, ["content-type", "date", "host"]))
    assert claim.request_time == NOW


def test_date_header_in_an_unknown_zone_is_read_as_utc_whatever_the_local_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    unsigned = request(headers=(("Date", "Sun, 30 Aug 2015 12:36:00 -0000"),))
    signed = hand_signed(unsigned, ["content-type", "date", "host"])
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        assert check(signed).request_time == NOW
    finally:
        monkeypatch.undo()
        time.tzset()


def test_headers_added_after_signing_that_are_not_x_amz_are_accepted() -> None:
    signed = header_signed()
    for name, value in [("User-Agent", "curl"), ("X-Amzn-Trace-Id", "Root=1"), ("Accept", "*/*")]:
        signed = with_header(signed, name, value)
    check(signed)


def test_sign_needs_a_host_header() -> None:
    with pytest.raises(ValueError, match="Host"):
        header_signed(without_header(request(), "Host"))


def test_times_must_be_aware() -> None:
    naive = datetime(2015, 8, 30, 12, 36)
    with pytest.raises(ValueError, match="aware"):
        sigv4.parse_request(header_signed(), naive)
    with pytest.raises(ValueError, match="aware"):
        header_signed(now=naive)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda r: replace(r, body=r.body + b"&RoleName=admin"),
        lambda r: replace(r, query="Action=DeleteRole"),
        lambda r: replace(r, path="/other"),
        lambda r: replace(r, method="PUT"),
        lambda r: with_header(without_header(r, "Host"), "Host", "evil.test"),
        lambda r: with_header(
            without_header(r, "X-Amz-Security-Token"), "X-Amz-Security-Token", "other"
        ),
        lambda r: edit_authorization(r, "/sts/", "/iam/"),
        lambda r: edit_authorization(r, "/us-east-1/", "/eu-west-1/"),
        lambda r: with_signature(r, signature_of(r).upper()),
        lambda r: with_signature(r, signature_of(r)[:-1]),
    ],
    ids=[
        "body",
        "query",
        "path",
        "method",
        "host",
        "token",
        "service",
        "region",
        "uppercase-signature",
        "truncated-signature",
    ],
)
def test_signed_request_changed_after_signing_is_refused(
    tamper: Callable[[HttpRequest], HttpRequest],
) -> None:
    claim = sigv4.parse_request(tamper(header_signed()), NOW)
    with pytest.raises(SignatureDoesNotMatch):
        sigv4.verify(claim, SECRET_ACCESS_KEY)


# What parse_request refuses


@dataclass(frozen=True)
class Refusal:
    name: str
    build: Callable[[], HttpRequest]
    error: type[ApiError]
    says: str
    now: datetime = NOW


def _no_auth() -> HttpRequest:
    return with_header(request(), "X-Amz-Date", AMZ_NOW)


def _token_request() -> HttpRequest:
    return request(headers=(("X-Amz-Date", AMZ_NOW), ("X-Amz-Security-Token", SESSION_TOKEN)))


def presigned_with(name: str, value: str | None) -> Callable[[], HttpRequest]:
    """A presigned request whose query parameter ``name`` is then set to ``value`` or dropped."""
    return lambda: edit_query(presigned(), name, value)


REFUSALS = [
    Refusal("missing-auth", _no_auth, MissingAuthenticationToken, "missing Authentication Token"),
    Refusal(
        "wrong-algorithm",
        lambda: edit_authorization(header_signed(), "AWS4-HMAC-SHA256", "AWS4-HMAC-SHA512"),
        IncompleteSignature,
        "Unsupported AWS 'algorithm': 'AWS4-HMAC-SHA512'",
    ),
    Refusal(
        "signature-v2",
        lambda: with_header(_no_auth(), "Authorization", f"AWS {ACCESS_KEY_ID}:c2lnbmF0dXJl"),
        IncompleteSignature,
        "Unsupported AWS 'algorithm': 'AWS'",
    ),
    Refusal(
        "missing-credential",
        lambda: authorization_without(header_signed(), "Credential"),
        IncompleteSignature,
        "requires 'Credential' parameter",
    ),
    Refusal(
        "missing-signed-headers",
        lambda: authorization_without(header_signed(), "SignedHeaders"),
        IncompleteSignature,
        "requires 'SignedHeaders' parameter",
    ),
    Refusal(
        "missing-signature",
        lambda: authorization_without(header_signed(), "Signature"),
        IncompleteSignature,
        "requires 'Signature' parameter",
    ),
    Refusal(
        "part-without-equals",
        lambda: edit_authorization(header_signed(), "Signature=", "Signature "),
        IncompleteSignature,
        "missing equal-sign",
    ),
    Refusal(
        "unknown-part",
        lambda: edit_authorization(header_signed(), "Signature=", "Salt=1, Signature="),
        IncompleteSignature,
        "Unknown parameter 'Salt'",
    ),
    Refusal(
        "two-authorization-headers",
        lambda: with_header(
            header_signed(), "Authorization", header(header_signed(), "Authorization")
        ),
        IncompleteSignature,
        "more than one Authorization header",
    ),
    Refusal(
        "two-authorization-headers-spelled-differently",
        lambda: with_header(
            header_signed(), "AUTHORIZATION", header(header_signed(), "Authorization")
        ),
        IncompleteSignature,
        "more than one Authorization header",
    ),
    Refusal(
        "two-x-amz-date-headers",
        lambda: with_header(header_signed(), "x-amz-date", "20150830T123600Z"),
        IncompleteSignature,
        "more than one x-amz-date header",
    ),
    Refusal(
        "scope-missing-a-part",
        lambda: edit_authorization(header_signed(), "/us-east-1/", "/"),
        IncompleteSignature,
        "Credential is mal-formed (it has 4 '/'-separated parts, not 5)",
    ),
    Refusal(
        "scope-bad-terminator",
        lambda: edit_authorization(header_signed(), "aws4_request", "aws5_request"),
        IncompleteSignature,
        "valid terminator: 'aws4_request', not 'aws5_request'",
    ),
    Refusal(
        "scope-bad-date",
        lambda: edit_authorization(header_signed(), "/20150830/", "/2015-08-30/"),
        IncompleteSignature,
        "valid date (YYYYMMDD), not '2015-08-30'",
    ),
    Refusal(
        "scope-impossible-date",
        lambda: edit_authorization(header_signed(), "/20150830/", "/20151331/"),
        IncompleteSignature,
        "valid date (YYYYMMDD), not '20151331'",
    ),
    Refusal(
        "scope-empty-region",
        lambda: edit_authorization(header_signed(), "/us-east-1/", "//"),
        IncompleteSignature,
        "valid region",
    ),
    Refusal(
        "scope-empty-service",
        lambda: edit_authorization(header_signed(), "/sts/", "//"),
        IncompleteSignature,
        "valid service",
    ),
    Refusal(
        "scope-date-mismatch",
        lambda: hand_signed(
            _token_request(),
            ["content-type", "host", "x-amz-date", "x-amz-security-token"],
            scope_date="20150831",
        ),
        SignatureDoesNotMatch,
        "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from "
        "HTTP: '20150831' != '20150830', from '20150830T123600Z'.",
    ),
    Refusal(
        "unsigned-host",
        lambda: hand_signed(_token_request(), ["x-amz-date", "x-amz-security-token"]),
        IncompleteSignature,
        "'Host' must be a signed header",
    ),
    Refusal(
        "unsigned-security-token",
        lambda: with_header(header_signed(token=None), "X-Amz-Security-Token", SESSION_TOKEN),
        IncompleteSignature,
        "not signed: x-amz-security-token",
    ),
    Refusal(
        "unsigned-x-amz-foo",
        lambda: with_header(header_signed(), "X-Amz-Foo", "bar"),
        IncompleteSignature,
        "not signed: x-amz-foo",
    ),
    Refusal(
        "signed-header-absent",
        lambda: without_header(
            hand_signed(
                with_header(_token_request(), "My-Header", "1"),
                ["host", "my-header", "x-amz-date", "x-amz-security-token"],
            ),
            "My-Header",
        ),
        SignatureDoesNotMatch,
        "missing signed headers: my-header",
    ),
    Refusal(
        "signed-headers-unsorted",
        lambda: edit_authorization(header_signed(), "content-type;host", "host;content-type"),
        IncompleteSignature,
        "SignedHeaders must be lowercase header names, sorted",
    ),
    Refusal(
        "signed-headers-uppercase",
        lambda: edit_authorization(header_signed(), "content-type;host", "Content-Type;Host"),
        IncompleteSignature,
        "SignedHeaders must be lowercase header names, sorted",
    ),
    Refusal(
        "no-date",
        lambda: without_header(header_signed(), "X-Amz-Date"),
        IncompleteSignature,
        "requires existence of either a 'X-Amz-Date' or a 'Date' header",
    ),
    Refusal(
        "x-amz-date-not-basic-iso8601",
        lambda: with_header(
            without_header(header_signed(), "X-Amz-Date"), "X-Amz-Date", "2015-08-30T12:36:00Z"
        ),
        IncompleteSignature,
        "ISO-8601 'basic format'",
    ),
    Refusal(
        "date-header-unparseable",
        lambda: with_header(without_header(header_signed(), "X-Amz-Date"), "Date", "yesterday"),
        IncompleteSignature,
        "RFC 1123",
    ),
    Refusal(
        "signed-15-min-and-1-s-ago",
        header_signed,
        RequestExpired,
        "Signature expired: 20150830T123600Z is now earlier than 20150830T123601Z "
        "(20150830T125101Z - 15 min.)",
        now=NOW + SKEW + SECOND,
    ),
    Refusal(
        "signed-15-min-and-1-s-ahead",
        header_signed,
        RequestExpired,
        "Signature not yet current: 20150830T123600Z is still later than 20150830T123559Z "
        "(20150830T122059Z + 15 min.)",
        now=NOW - SKEW - SECOND,
    ),
    Refusal(
        "both-auth-mechanisms",
        lambda: replace(header_signed(), query="X-Amz-Algorithm=AWS4-HMAC-SHA256"),
        IncompleteSignature,
        "Only one auth mechanism allowed",
    ),
    Refusal(
        "presigned-expired",
        lambda: presigned(expires=60),
        RequestExpired,
        "Request has expired: signed at 20150830T123600Z for 60 seconds, so valid until "
        "20150830T123700Z; it is now 20150830T123701Z.",
        now=NOW + timedelta(seconds=61),
    ),
    Refusal(
        "presigned-in-the-future",
        presigned,
        RequestExpired,
        "Signature not yet current",
        now=NOW - SKEW - SECOND,
    ),
    *[
        Refusal(
            f"presigned-expires-{label}",
            presigned_with("X-Amz-Expires", value),
            IncompleteSignature,
            f"X-Amz-Expires must be a whole number of seconds from 1 to 604800 (seven days), "
            f"not '{value}'",
        )
        for label, value in [
            ("zero", "0"),
            ("over-a-week", "604801"),
            ("negative", "-1"),
            ("not-a-number", "ten"),
            ("empty", ""),
        ]
    ],
    Refusal(
        "presigned-expires-missing",
        presigned_with("X-Amz-Expires", None),
        IncompleteSignature,
        "must include 'X-Amz-Expires'",
    ),
    *[
        Refusal(
            f"presigned-missing-{name}",
            presigned_with(name, None),
            IncompleteSignature,
            f"AWS query-string parameters must include '{name}'",
        )
        for name in ("X-Amz-Credential", "X-Amz-Date", "X-Amz-SignedHeaders", "X-Amz-Signature")
    ],
    Refusal(
        "presigned-wrong-algorithm",
        presigned_with("X-Amz-Algorithm", "AWS4-HMAC-SHA1"),
        IncompleteSignature,
        "X-Amz-Algorithm only supports 'AWS4-HMAC-SHA256', not 'AWS4-HMAC-SHA1'",
    ),
    Refusal(
        "presigned-scope-date-mismatch",
        presigned_with("X-Amz-Date", "20150831T000000Z"),
        SignatureDoesNotMatch,
        "'20150830' != '20150831'",
        now=datetime(2015, 8, 31, tzinfo=UTC),
    ),
    Refusal(
        "presigned-parameter-twice",
        lambda: replace(presigned(), query=presigned().query + "&X-Amz-Expires=60"),
        IncompleteSignature,
        "X-Amz-Expires is given more than once",
    ),
    Refusal(
        "presigned-token-in-query-and-header",
        lambda: presigned(with_header(request("GET"), "X-Amz-Security-Token", SESSION_TOKEN)),
        IncompleteSignature,
        "X-Amz-Security-Token must be given once",
    ),
    Refusal(
        "presigned-unsigned-x-amz-header",
        lambda: with_header(presigned(), "X-Amz-Foo", "bar"),
        IncompleteSignature,
        "not signed: x-amz-foo",
    ),
    Refusal(
        "query-not-utf8",
        lambda: replace(header_signed(), query="Name=%C3%28"),
        MalformedQueryString,
        "not valid UTF-8",
    ),
]


@pytest.mark.parametrize("refusal", REFUSALS, ids=[refusal.name for refusal in REFUSALS])
def test_parse_request_refuses_with_the_aws_error_and_says_why(refusal: Refusal) -> None:
    with pytest.raises(ApiError) as raised:
        sigv4.parse_request(refusal.build(), refusal.now)
    assert type(raised.value) is refusal.error
    assert refusal.says in raised.value.message
    assert SECRET_ACCESS_KEY not in raised.value.message
    assert SESSION_TOKEN not in raised.value.message
    assert quote(SESSION_TOKEN, safe="") not in raised.value.message


def test_signature_mismatch_message_is_awss_and_reveals_nothing() -> None:
    claim = sigv4.parse_request(header_signed(), NOW)
    with pytest.raises(SignatureDoesNotMatch) as raised:
        sigv4.verify(claim, "not-the-secret")
    assert raised.value.message.startswith("The request signature we calculated does not match")
    assert SECRET_ACCESS_KEY not in raised.value.message
    assert SESSION_TOKEN not in raised.value.message
    assert claim.canonical_request not in raised.value.message


# botocore signs, we verify; we sign, botocore agrees


@dataclass(frozen=True)
class BotocoreCase:
    name: str
    method: str
    url: str
    data: dict[str, str] | bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()
    token: str | None = SESSION_TOKEN
    service: str = "iam"

    def build(self) -> AWSRequest:
        return AWSRequest(
            method=self.method, url=self.url, data=self.data, headers=dict(self.headers)
        )

    def credentials(self) -> Credentials:
        return Credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY, self.token)


FORM_HEADERS = (("Content-Type", FORM),)
CREATE_ROLE = {
    "Action": "CreateRole",
    "Version": "2010-05-08",
    "RoleName": "web-server",
    "AssumeRolePolicyDocument": POLICY,
    "Description": AWKWARD,
}
LIST_ROLES = [("Action", "ListRoles"), ("Version", "2010-05-08"), ("PathPrefix", "/a b+c/~*=")]

HEADER_CASES = [
    BotocoreCase("post-form-utf8-with-token", "POST", ENDPOINT + "/", CREATE_ROLE, FORM_HEADERS),
    BotocoreCase(
        "post-form-without-token", "POST", ENDPOINT + "/", CREATE_ROLE, FORM_HEADERS, token=None
    ),
    BotocoreCase("get-with-query", "GET", f"{ENDPOINT}/?{form(LIST_ROLES)}"),
    BotocoreCase(
        "post-with-query-and-body",
        "POST",
        f"{ENDPOINT}/?{form([('Marker', AWKWARD)])}",
        CREATE_ROLE,
        FORM_HEADERS,
    ),
    BotocoreCase(
        "path-prefix-already-percent-encoded",
        "POST",
        ENDPOINT + "/role%20call/./v1//",
        CREATE_ROLE,
        FORM_HEADERS,
    ),
    BotocoreCase(
        "user-agent-unsigned-x-amz-target-signed",
        "POST",
        ENDPOINT + "/",
        b"\xff\x00 raw bytes",
        (("User-Agent", "Boto3/1.0"), ("X-Amz-Target", "RoleCall.Ping")),
    ),
    BotocoreCase(
        "ec2-describe",
        "POST",
        ENDPOINT + "/",
        {"Action": "DescribeInstances", "Version": "2016-11-15", "InstanceId.1": "i-0123"},
        FORM_HEADERS,
        service="ec2",
    ),
]
DATE_HEADER_CASE = BotocoreCase(
    "date-header-instead-of-x-amz-date",
    "POST",
    ENDPOINT + "/",
    CREATE_ROLE,
    (*FORM_HEADERS, ("Date", "Thu, 01 Jan 1970 00:00:00 GMT")),
)


def botocore_sign(aws_request: AWSRequest, signer: SigV4Auth) -> datetime:
    """Sign with botocore; return the time it signed at, from its own record."""
    signer.add_auth(aws_request)
    stamp = aws_request.context["timestamp"]
    return datetime.strptime(stamp, sigv4.AMZ_DATE_FORMAT).replace(tzinfo=UTC)


def to_http_request(aws_request: AWSRequest, *, as_sent: bool = True) -> HttpRequest:
    """Our view of a botocore request: as it goes on the wire (with the headers its HTTP layer
    adds, Host and Content-Length, unsigned) or, before signing, with only Host added."""
    source = aws_request.prepare() if as_sent else aws_request
    url = urlsplit(source.url)
    body = aws_request.body or b""
    raw_body = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    headers = (("Host", url.netloc), *source.headers.items())
    return HttpRequest(source.method, url.path or "/", url.query, headers, raw_body)


@pytest.mark.parametrize("case", [*HEADER_CASES, DATE_HEADER_CASE], ids=lambda case: case.name)
def test_botocore_header_signed_request_verifies(case: BotocoreCase) -> None:
    aws_request = case.build()
    signed_at = botocore_sign(aws_request, SigV4Auth(case.credentials(), case.service, REGION))
    received = to_http_request(aws_request)
    claim = check(received, now=signed_at)
    assert claim.access_key_id == ACCESS_KEY_ID
    assert claim.service == case.service
    assert claim.security_token == case.token
    assert claim.request_time == signed_at
    with pytest.raises(SignatureDoesNotMatch):
        sigv4.verify(claim, SECRET_ACCESS_KEY + "x")


@pytest.mark.parametrize("case", HEADER_CASES, ids=lambda case: case.name)
def test_our_authorization_header_equals_botocores(case: BotocoreCase) -> None:
    ours_unsigned = to_http_request(case.build(), as_sent=False)
    theirs = case.build()
    signed_at = botocore_sign(theirs, SigV4Auth(case.credentials(), case.service, REGION))
    ours = sigv4.sign(
        ours_unsigned,
        access_key_id=ACCESS_KEY_ID,
        secret_access_key=SECRET_ACCESS_KEY,
        region=REGION,
        service=case.service,
        now=signed_at,
        security_token=case.token,
    )
    assert header(ours, "Authorization") == theirs.headers["Authorization"]


PRESIGNED_CASES = [
    BotocoreCase(
        "get-caller-identity-with-token",
        "GET",
        f"{ENDPOINT}/?{form([('Action', 'GetCallerIdentity'), ('Version', '2011-06-15')])}",
        service="sts",
    ),
    BotocoreCase(
        "post-form-moved-into-query",
        "POST",
        ENDPOINT + "/",
        CREATE_ROLE,
        FORM_HEADERS,
    ),
    BotocoreCase("get-without-token", "GET", f"{ENDPOINT}/?{form(LIST_ROLES)}", token=None),
]
PRESIGN_EXPIRES = 900


def botocore_presigned(case: BotocoreCase) -> tuple[AWSRequest, datetime]:
    aws_request = case.build()
    signer = SigV4QueryAuth(case.credentials(), case.service, REGION, expires=PRESIGN_EXPIRES)
    return aws_request, botocore_sign(aws_request, signer)


@pytest.mark.parametrize("case", PRESIGNED_CASES, ids=lambda case: case.name)
def test_botocore_presigned_request_verifies_for_its_lifetime(case: BotocoreCase) -> None:
    aws_request, signed_at = botocore_presigned(case)
    received = to_http_request(aws_request)
    claim = check(received, now=signed_at)
    assert claim.presigned
    assert claim.security_token == case.token
    check(received, now=signed_at + timedelta(seconds=PRESIGN_EXPIRES))
    with pytest.raises(RequestExpired):
        sigv4.parse_request(received, signed_at + timedelta(seconds=PRESIGN_EXPIRES + 1))


@pytest.mark.parametrize(
    "case", [c for c in PRESIGNED_CASES if c.method == "GET"], ids=lambda case: case.name
)
def test_our_presigned_url_equals_botocores(case: BotocoreCase) -> None:
    ours_unsigned = to_http_request(case.build(), as_sent=False)
    aws_request, signed_at = botocore_presigned(case)
    ours = sigv4.presign(
        ours_unsigned,
        access_key_id=ACCESS_KEY_ID,
        secret_access_key=SECRET_ACCESS_KEY,
        region=REGION,
        service=case.service,
        now=signed_at,
        expires=PRESIGN_EXPIRES,
        security_token=case.token,
    )
    assert ours.query == urlsplit(aws_request.url).query


# Properties

# A parameter named X-Amz-Algorithm makes a request presigned, and one that also has an
# Authorization header is refused (see REFUSALS), so that one name is left out here.
names = st.text(printable, min_size=1).filter(lambda name: name != "X-Amz-Algorithm")
parameters = st.lists(st.tuples(names, st.text(printable)), max_size=6)


@given(query=parameters, body=parameters, data=st.data())
def test_our_signed_request_verifies_for_any_parameters_and_fails_if_any_body_byte_changes(
    query: list[tuple[str, str]], body: list[tuple[str, str]], data: st.DataObject
) -> None:
    unsigned = request(query=form(query), body=form([("Action", "CreateRole"), *body]).encode())
    signed = header_signed(unsigned)
    check(signed)

    position = data.draw(st.integers(0, len(signed.body) - 1), label="position")
    new_byte = data.draw(st.integers(0, 255).filter(lambda b: b != signed.body[position]))
    changed = bytearray(signed.body)
    changed[position] = new_byte
    claim = sigv4.parse_request(replace(signed, body=bytes(changed)), NOW)
    with pytest.raises(SignatureDoesNotMatch):
        sigv4.verify(claim, SECRET_ACCESS_KEY)


@settings(deadline=None)
@given(query=parameters, body=parameters)
def test_botocore_signed_request_verifies_for_any_parameters(
    query: list[tuple[str, str]], body: list[tuple[str, str]]
) -> None:
    aws_request = AWSRequest(
        method="POST",
        url=f"{ENDPOINT}/?{form(query)}",
        data=form([("Action", "CreateRole"), *body]),
        headers={"Content-Type": FORM},
    )
    credentials = Credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY, SESSION_TOKEN)
    signed_at = botocore_sign(aws_request, SigV4Auth(credentials, "iam", REGION))
    check(to_http_request(aws_request), now=signed_at)
