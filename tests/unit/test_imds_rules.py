"""The IMDS request rules: a conformance table, one or more rows per line of spec/imds.md.

Lines tested here (the pure layer): 1-4, 6, 8-15, and 16-24 through ``respond`` (the tree's own
rows are in test_imds_tree.py).

- Line 5 belongs to the socket layer: here ``ip_ttl`` on the token response is tested as a field;
  that the packets carry it is a netns test.
- Line 7 (cross-instance) is tested here with two views sharing one minter; that each namespace's
  socket maps to its own view is a netns test.
- Lines 25-30 are integration tests (timing, rotation, real SDKs in guests); line 28's "never
  serve expired credentials" floor and line 30's refusal are also checked here and in
  test_imds_botocore.py.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.imds.rules import (
    MEMO_ANSWERS,
    NOT_FOUND_PAGE,
    TOKEN_HEADER,
    ImdsRequest,
    ImdsResponse,
    InstanceView,
    respond,
)
from agent.imds.tokens import TokenMinter
from agent.imds.tree import CredentialsState, ImdsTree
from common.nodemessages import (
    HttpEndpoint,
    HttpTokens,
    MessageError,
    MetadataOptions,
    parse_instance,
    parse_metadata_options,
)
from tests.unit.test_imds_tree import (
    ACCOUNT_ID,
    EXPECTED_CREDENTIALS,
    EXPECTED_INFO,
    EXPIRATION,
    INSTANCE_ID,
    NOW,
    PROFILE_ARN,
    PROFILE_ID,
    ROLE,
    assignment,
    credential_set,
)

HOST = ("Host", "169.254.169.254")
MINTER = TokenMinter(b"k" * 32)
OTHER_INSTANCE_ID = "i-0fedcba9876543210"
CREDENTIALS_PATH = f"/latest/meta-data/iam/security-credentials/{ROLE}"
STATUSES = {200, 400, 401, 403, 404, 405, 503}

_DEFAULT: Any = object()


def make_instance(
    *,
    http_tokens: str = "optional",
    hop_limit: int = 1,
    http_endpoint: str = "enabled",
    strict_proxy: bool = True,
    instance_id: str = INSTANCE_ID,
    credentials: CredentialsState = _DEFAULT,
    minter: TokenMinter = MINTER,
    **changes: Any,
) -> InstanceView:
    """The view of the sample instance (see test_imds_tree.py) with the given options."""
    metadata = {**assignment()["metadata"], "instance-id": instance_id}
    body = assignment(
        instance_id=instance_id,
        metadata=metadata,
        metadata_options={
            "http_tokens": http_tokens,
            "http_put_response_hop_limit": hop_limit,
            "http_endpoint": http_endpoint,
        },
        **changes,
    )
    served = credential_set() if credentials is _DEFAULT else credentials
    parsed = parse_instance(body)
    return InstanceView(
        instance_id=instance_id,
        options=parsed.metadata_options,
        tree=ImdsTree.for_instance(parsed, served),
        minter=minter,
        strict_proxy=strict_proxy,
    )


def get(path: str, *headers: tuple[str, str], method: str = "GET") -> ImdsRequest:
    return ImdsRequest(method, path, [HOST, *headers])


def put_token(ttl: str | None = "21600", *headers: tuple[str, str]) -> ImdsRequest:
    ttl_header = [] if ttl is None else [("X-aws-ec2-metadata-token-ttl-seconds", ttl)]
    return ImdsRequest("PUT", "/latest/api/token", [HOST, *ttl_header, *headers])


def token_for(instance_id: str = INSTANCE_ID, ttl: int = 21600, now: float = NOW) -> str:
    return MINTER.mint(instance_id, ttl, now)


def with_token(token: str) -> tuple[str, str]:
    return ("X-aws-ec2-metadata-token", token)


# -- the conformance table ---------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    line: int
    name: str
    request: ImdsRequest
    status: int
    reason: str | None = None
    instance: dict[str, Any] = field(default_factory=dict)
    rate_limited: bool = False

    def param(self) -> Any:
        return pytest.param(self, id=f"line-{self.line:02d}-{self.name}")


REQUIRED = {"http_tokens": "required"}
DISABLED = {"http_endpoint": "disabled"}
LAX = {"strict_proxy": False}
NO_ROLE = {"instance_profile": None}
XFF = ("X-Forwarded-For", "10.0.0.9")
VIA = ("Via", "1.1 squid")
TTL_60 = ("X-aws-ec2-metadata-token-ttl-seconds", "60")
TOKEN_PATH = "/latest/api/token"
META = "/latest/meta-data/"
EXTENDED_PATH = f"/latest/meta-data/iam/security-credentials-extended/{ROLE}"


def raw(method: str, target: str, *headers: tuple[str, str]) -> ImdsRequest:
    """A request exactly as given: no Host unless one is passed."""
    return ImdsRequest(method, target, list(headers))


def put(path: str, *headers: tuple[str, str]) -> ImdsRequest:
    return ImdsRequest("PUT", path, [HOST, *headers])


def host(value: str) -> ImdsRequest:
    return raw("GET", "/", ("Host", value))


# Reasons, as respond labels them.
OK, TOKEN, NOT_FOUND = "ok", "token", "not-found"
BAD_TTL, PROXY, BAD_HOST, ABSOLUTE = "bad-ttl", "proxy-header", "bad-host", "absolute-target"
NOT_TOKEN_PATH, NOT_ALLOWED = "put-not-token-path", "method-not-allowed"
INVALID, REQUIRED_TOKEN = "token-invalid", "token-required"
OFF, LIMITED = "endpoint-disabled", "rate-limited"

ROWS = [
    # 1. PUT /latest/api/token with a TTL in 1..21600 → 200 and a token.
    Row(1, "ttl-21600", put_token("21600"), 200, TOKEN),
    Row(1, "ttl-1", put_token("1"), 200, TOKEN),
    Row(1, "ttl-leading-zero", put_token("060"), 200, TOKEN),
    Row(1, "query-ignored", put(TOKEN_PATH + "?x=1", TTL_60), 200, TOKEN),
    Row(1, "required-mode-too", put_token("60"), 200, TOKEN, REQUIRED),
    Row(
        1,
        "header-name-any-case",
        put(TOKEN_PATH, ("x-AWS-ec2-METADATA-token-TTL-seconds", "5")),
        200,
    ),
    # 2. TTL missing, empty, non-integer, 0, negative or over 21600 → 400.
    Row(2, "ttl-missing", put_token(None), 400, BAD_TTL),
    Row(2, "ttl-empty", put_token(""), 400, BAD_TTL),
    Row(2, "ttl-non-integer", put_token("six"), 400, BAD_TTL),
    Row(2, "ttl-fraction", put_token("1.5"), 400, BAD_TTL),
    Row(2, "ttl-exponent", put_token("1e3"), 400, BAD_TTL),
    Row(2, "ttl-plus-sign", put_token("+60"), 400, BAD_TTL),
    Row(2, "ttl-zero", put_token("0"), 400, BAD_TTL),
    Row(2, "ttl-negative", put_token("-1"), 400, BAD_TTL),
    Row(2, "ttl-over-max", put_token("21601"), 400, BAD_TTL),
    Row(2, "ttl-huge", put_token("9" * 5000), 400, BAD_TTL),
    Row(2, "ttl-unicode-digits", put_token("٦٠"), 400, BAD_TTL),
    Row(2, "ttl-twice", put_token("60", TTL_60), 400, BAD_TTL),
    # 3. A PUT carrying X-Forwarded-For → 403, whatever strict_proxy says.
    Row(3, "xff", put_token("60", XFF), 403, PROXY),
    Row(3, "xff-not-strict", put_token("60", XFF), 403, PROXY, LAX),
    Row(3, "xff-empty-value", put_token("60", ("x-forwarded-for", "")), 403, PROXY),
    # 4. PUT on any other path → 403 (never 404 or 405).
    Row(4, "token-trailing-slash", put(TOKEN_PATH + "/", TTL_60), 403, NOT_TOKEN_PATH),
    Row(4, "token-versioned", put("/2021-03-23/api/token", TTL_60), 403, NOT_TOKEN_PATH),
    Row(4, "token-case", put("/latest/api/TOKEN", TTL_60), 403, NOT_TOKEN_PATH),
    Row(4, "metadata-dir", put(META), 403, NOT_TOKEN_PATH),
    Row(4, "metadata-item", put(META + "instance-id"), 403, NOT_TOKEN_PATH),
    Row(4, "root", put("/"), 403, NOT_TOKEN_PATH),
    Row(4, "unknown-not-strict", raw("PUT", "/nope"), 403, NOT_TOKEN_PATH, LAX),
    # 6. An invalid token header → 401, in optional mode too (valid tokens: see tests below).
    Row(6, "garbage-optional", get(META, with_token("garbage")), 401, INVALID),
    Row(6, "garbage-required", get(META, with_token("garbage")), 401, INVALID, REQUIRED),
    Row(6, "empty-optional", get(META, with_token("")), 401, INVALID),
    Row(6, "on-a-404-path", get("/nope", with_token("garbage")), 401, INVALID),
    # 8. HttpTokens=required: no token → 401; optional: served.
    Row(8, "required-no-token", get(META), 401, REQUIRED_TOKEN, REQUIRED),
    Row(8, "required-credentials", get(CREDENTIALS_PATH), 401, REQUIRED_TOKEN, REQUIRED),
    Row(8, "required-head", get(META, method="HEAD"), 401, REQUIRED_TOKEN, REQUIRED),
    Row(8, "required-404-path", get("/nope"), 401, REQUIRED_TOKEN, REQUIRED),
    Row(8, "optional-no-token", get(META), 200, OK),
    Row(8, "optional-credentials", get(CREDENTIALS_PATH), 200, OK),
    # 9. HttpEndpoint=disabled → 403 for everything.
    Row(9, "get", get(META), 403, OFF, DISABLED),
    Row(9, "head", get("/", method="HEAD"), 403, OFF, DISABLED),
    Row(9, "token-put", put_token("60"), 403, OFF, DISABLED),
    Row(9, "bad-ttl", put_token("0"), 403, OFF, DISABLED),
    Row(9, "post", get("/", method="POST"), 403, OFF, DISABLED),
    Row(9, "unknown-path", get("/nope"), 403, OFF, DISABLED),
    Row(9, "no-host", raw("GET", "/"), 403, OFF, DISABLED),
    # 10. GET and HEAD served; POST, DELETE, PATCH and the rest → 405.
    Row(10, "get", get(META + "instance-id"), 200, OK),
    Row(10, "head", get(META + "instance-id", method="HEAD"), 200, OK),
    *(
        Row(10, method.lower() or "empty", get(META, method=method), 405, NOT_ALLOWED)
        for method in ("POST", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "get", "")
    ),
    Row(10, "post-token-path", get(TOKEN_PATH, method="POST"), 405, NOT_ALLOWED),
    Row(10, "get-token-path", get(TOKEN_PATH), 405, NOT_ALLOWED),
    Row(10, "post-unknown-path", get("/nope", method="POST"), 405, NOT_ALLOWED),
    Row(10, "post-required-no-token", get("/", method="POST"), 405, NOT_ALLOWED, REQUIRED),
    # 11. A directory answers the same with or without its trailing slash (bodies: see below).
    Row(11, "dir-without-slash", get("/latest/meta-data"), 200, OK),
    Row(11, "dir-with-slash", get(META), 200, OK),
    Row(11, "leaf-with-slash", get(META + "placement/availability-zone/"), 200, OK),
    # 12. Unknown paths → 404.
    Row(12, "unknown-item", get(META + "nope"), 404, NOT_FOUND),
    Row(12, "unknown-version", get("/2009-04-05/meta-data/"), 404, NOT_FOUND),
    Row(15, "dated-version", get("/2009-04-04/meta-data/"), 200, OK),
    Row(15, "double-slash", get("/latest//meta-data/instance-id"), 200, OK),
    Row(12, "user-data", get("/latest/user-data"), 404, NOT_FOUND),
    Row(12, "token-path-prefix", get("/latest/api/"), 404, NOT_FOUND),
    Row(12, "empty-target", get(""), 404, NOT_FOUND),
    Row(12, "asterisk-target", get("*"), 404, NOT_FOUND),
    # 13. Proxy headers on any path → 403; Host must be 169.254.169.254[:80]; both switchable.
    Row(13, "xff-get", get(META, XFF), 403, PROXY),
    Row(13, "forwarded-get", get(META, ("Forwarded", "for=10.0.0.9")), 403, PROXY),
    Row(13, "via-get", get(META, VIA), 403, PROXY),
    Row(13, "via-on-404", get("/nope", ("VIA", "1.1 squid")), 403, PROXY),
    Row(13, "via-on-put", put_token("60", VIA), 403, PROXY),
    Row(13, "host-with-port-80", host("169.254.169.254:80"), 200, OK),
    Row(13, "host-other-port", host("169.254.169.254:8080"), 403, BAD_HOST),
    Row(13, "host-name", host("instance-data.ec2.internal"), 403, BAD_HOST),
    Row(13, "host-rebinding", host("evil.example:80"), 403, BAD_HOST),
    Row(13, "host-localhost", host("localhost"), 403, BAD_HOST),
    Row(13, "host-missing", raw("GET", "/"), 403, BAD_HOST),
    Row(13, "host-twice", raw("GET", "/", HOST, HOST), 403, BAD_HOST),
    Row(13, "host-on-put", raw("PUT", TOKEN_PATH, ("Host", "evil.example"), TTL_60), 403, BAD_HOST),
    Row(13, "absolute-target", get("http://169.254.169.254/latest/meta-data/"), 403, ABSOLUTE),
    Row(13, "lax-xff-get", get(META, XFF), 200, OK, LAX),
    Row(13, "lax-via-get", get(META, VIA), 200, OK, LAX),
    Row(13, "lax-any-host", host("evil.example"), 200, OK, LAX),
    Row(13, "lax-no-host", raw("GET", "/"), 200, OK, LAX),
    Row(13, "lax-absolute-target", raw("GET", "http://169.254.169.254/latest/"), 200, OK, LAX),
    Row(13, "lax-via-on-put", put_token("60", VIA), 200, TOKEN, LAX),
    # 14. Over the rate → 503.
    Row(14, "get", get(META), 503, LIMITED, rate_limited=True),
    Row(14, "token-put", put_token("60"), 503, LIMITED, rate_limited=True),
    Row(14, "disabled-wins", get("/"), 403, OFF, DISABLED, rate_limited=True),
    # 15. latest everywhere; / lists the versions.
    Row(15, "root", get("/"), 200, OK),
    Row(15, "latest", get("/latest"), 200, OK),
    Row(15, "dated-version", get("/2021-07-15/meta-data/instance-id"), 200, OK),
    Row(15, "undated-version", get("/2021-07-16/meta-data/instance-id"), 404, NOT_FOUND),
    # 16-24 through respond (bodies below and in test_imds_tree.py).
    Row(16, "meta-data", get(META), 200, OK),
    Row(17, "iam", get(META + "iam/"), 200, OK),
    Row(18, "iam-info", get(META + "iam/info"), 200, OK),
    Row(19, "security-credentials", get(META + "iam/security-credentials/"), 200, OK),
    Row(20, "security-credentials-role", get(CREDENTIALS_PATH), 200, OK),
    Row(22, "extended-role", get(EXTENDED_PATH), 200, OK),
    Row(23, "no-role-iam", get(META + "iam/"), 404, NOT_FOUND, NO_ROLE),
    Row(23, "no-role-info", get(META + "iam/info"), 404, NOT_FOUND, NO_ROLE),
    Row(23, "no-role-credentials", get(CREDENTIALS_PATH), 404, NOT_FOUND, NO_ROLE),
    Row(23, "unknown-role", get(META + "iam/security-credentials/admin"), 404, NOT_FOUND),
    Row(24, "identity-document", get("/latest/dynamic/instance-identity/document"), 200, OK),
    Row(24, "services-domain", get(META + "services/domain"), 200, OK),
    Row(28, "no-credentials-yet", get(CREDENTIALS_PATH), 404, NOT_FOUND, {"credentials": None}),
]


@pytest.mark.parametrize("row", [row.param() for row in ROWS])
def test_conformance(row: Row) -> None:
    response = respond(
        row.request, make_instance(**row.instance), NOW, rate_limited=row.rate_limited
    )
    assert response.status == row.status
    if row.reason is not None:
        assert response.reason == row.reason


def test_the_table_covers_every_line_testable_at_this_layer() -> None:
    covered = {row.line for row in ROWS}
    assert set(range(1, 25)) - covered == {5, 7, 21}  # 5, 7: tests below; 21: test_imds_tree.py


# -- 1, 5: the token response ------------------------------------------------------------------


def test_line_1_the_token_response_is_text_plain_echoes_the_ttl_and_the_token_checks() -> None:
    instance = make_instance()
    response = respond(put_token("300"), instance, NOW)
    assert response.status == 200
    assert response.header("Content-Type") == "text/plain"
    assert ("X-Aws-Ec2-Metadata-Token-Ttl-Seconds", "300") in response.headers
    token = response.body.decode("ascii")
    assert token and not any(character.isspace() for character in token)
    assert MINTER.check(token, INSTANCE_ID, NOW + 299)
    assert not MINTER.check(token, INSTANCE_ID, NOW + 300)


def test_line_1_the_echoed_ttl_is_the_number_without_leading_zeros() -> None:
    response = respond(put_token("0060"), make_instance(), NOW)
    assert response.header("X-Aws-Ec2-Metadata-Token-Ttl-Seconds") == "60"


@pytest.mark.parametrize("hop_limit", [1, 2, 64])
def test_line_5_the_token_response_carries_the_hop_limit_as_ip_ttl(hop_limit: int) -> None:
    assert respond(put_token("60"), make_instance(hop_limit=hop_limit), NOW).ip_ttl == hop_limit


@pytest.mark.parametrize(
    "request_",
    [get("/latest/meta-data/"), put_token("0"), get("/nope"), put_token("60", XFF)],
    ids=["get", "bad-ttl", "not-found", "refused-put"],
)
def test_line_5_no_other_response_sets_an_ip_ttl(request_: ImdsRequest) -> None:
    assert respond(request_, make_instance(hop_limit=2), NOW).ip_ttl is None


@pytest.mark.parametrize("hop_limit", [0, 65, -1])
def test_line_5_a_hop_limit_outside_1_to_64_is_refused(hop_limit: int) -> None:
    with pytest.raises(ValueError, match="hop_limit"):
        make_instance(hop_limit=hop_limit)


def test_line_3_a_refused_put_carries_no_token() -> None:
    response = respond(put_token("60", XFF), make_instance(), NOW)
    assert response.body == b"" and response.header("X-Aws-Ec2-Metadata-Token-Ttl-Seconds") is None


# -- 6, 7, 8: tokens on GET --------------------------------------------------------------------


@pytest.mark.parametrize("http_tokens", ["optional", "required"])
def test_line_6_a_token_is_reusable_for_its_ttl(http_tokens: str) -> None:
    instance = make_instance(http_tokens=http_tokens)
    token = respond(put_token("60"), instance, NOW).body.decode()
    for offset in (0, 1, 59):
        response = respond(get(CREDENTIALS_PATH, with_token(token)), instance, NOW + offset)
        assert response.status == 200 and response.body == EXPECTED_CREDENTIALS


@pytest.mark.parametrize("http_tokens", ["optional", "required"])
def test_line_6_an_expired_token_is_401(http_tokens: str) -> None:
    instance = make_instance(http_tokens=http_tokens)
    token = token_for(ttl=60, now=NOW - 60)
    response = respond(get("/latest/meta-data/", with_token(token)), instance, NOW)
    assert (response.status, response.reason) == (401, "token-invalid")


def test_line_6_a_token_from_a_restarted_agent_is_401() -> None:
    token = TokenMinter(b"x" * 32).mint(INSTANCE_ID, 60, NOW)
    assert respond(get("/", with_token(token)), make_instance(), NOW).status == 401


def test_line_6_two_token_headers_are_401_even_if_one_is_valid() -> None:
    request = get("/", with_token(token_for()), with_token("garbage"))
    assert respond(request, make_instance(), NOW).status == 401


def test_line_6_the_token_header_name_is_case_insensitive() -> None:
    request = get("/", ("x-AWS-EC2-metadata-TOKEN", token_for()))
    assert respond(request, make_instance(http_tokens="required"), NOW).status == 200


@pytest.mark.parametrize("http_tokens", ["optional", "required"])
def test_line_7_a_token_from_another_instance_is_401(http_tokens: str) -> None:
    other = make_instance(instance_id=OTHER_INSTANCE_ID, http_tokens=http_tokens)
    token = respond(put_token("60"), other, NOW).body.decode()
    assert respond(get("/", with_token(token)), other, NOW).status == 200
    mine = make_instance(http_tokens=http_tokens)
    response = respond(get(CREDENTIALS_PATH, with_token(token)), mine, NOW)
    assert (response.status, response.body) == (401, b"")


def test_line_8_required_with_a_valid_token_is_served() -> None:
    instance = make_instance(http_tokens="required")
    response = respond(get(CREDENTIALS_PATH, with_token(token_for())), instance, NOW)
    assert (response.status, response.body) == (200, EXPECTED_CREDENTIALS)


# -- 10, 11, 12: methods, slashes, the 404 page ------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/latest/meta-data/instance-id", "/latest/meta-data/", CREDENTIALS_PATH, "/nope"]
)
def test_line_10_head_has_gets_status_and_headers_and_no_body(path: str) -> None:
    instance = make_instance()
    got, head = respond(get(path), instance, NOW), respond(get(path, method="HEAD"), instance, NOW)
    assert (head.status, head.headers, head.body) == (got.status, got.headers, b"")
    assert got.body


@pytest.mark.parametrize(
    ("path", "allow"),
    [("/latest/meta-data/", "GET, HEAD"), ("/nope", "GET, HEAD"), ("/latest/api/token", "PUT")],
)
def test_line_10_a_405_names_what_the_path_allows(path: str, allow: str) -> None:
    response = respond(get(path, method="DELETE"), make_instance(), NOW)
    assert (response.status, response.header("Allow")) == (405, allow)


@pytest.mark.parametrize(
    "path", ["/latest", "/latest/meta-data", "/latest/meta-data/iam", "/latest/dynamic"]
)
def test_line_11_a_directory_answers_the_same_with_or_without_its_slash(path: str) -> None:
    instance = make_instance()
    assert respond(get(path), instance, NOW) == respond(get(path + "/"), instance, NOW)


def test_line_12_the_404_page_is_the_exact_339_byte_xhtml_page() -> None:
    response = respond(get("/latest/meta-data/nope"), make_instance(), NOW)
    assert response.status == 404
    assert response.header("Content-Type") == "text/html"
    assert response.header("Content-Length") == "339"
    assert len(response.body) == 339 and response.body == NOT_FOUND_PAGE
    # The spec's page, hashed from spec/imds.md independently of the module's constant.
    assert hashlib.sha256(response.body).hexdigest() == (
        "3f92bfc0961a4bf4e83938c708afb562018c698f4a2775acc4d59879c33aa39c"
    )
    assert response.body.split(b"\n")[2].startswith(b'\t\t "http://www.w3.org/')
    assert response.body.endswith(b"</html>\n")


def test_line_13_an_absolute_target_is_served_by_its_path_when_not_strict() -> None:
    request = ImdsRequest("GET", "http://169.254.169.254/latest/meta-data/instance-id?x", [])
    response = respond(request, make_instance(strict_proxy=False), NOW)
    assert (response.status, response.body) == (200, INSTANCE_ID.encode())


def test_line_14_a_503_says_when_to_retry() -> None:
    response = respond(get("/"), make_instance(), NOW, rate_limited=True)
    assert (response.status, response.header("Retry-After")) == (503, "1")


def test_line_15_root_lists_the_dated_versions_then_latest() -> None:
    listed = respond(get("/"), make_instance(), NOW).body.split(b"\n")
    assert listed[0] == b"1.0" and listed[-1] == b"latest"
    assert {b"2009-04-04", b"2016-09-02", b"2018-09-24", b"2021-03-23"} <= set(listed)


# -- 16-24 through respond ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/latest/meta-data/iam/", b"info\nsecurity-credentials/"),
        ("/latest/meta-data/iam/info", EXPECTED_INFO),
        ("/latest/meta-data/iam/security-credentials/", ROLE.encode()),
        (CREDENTIALS_PATH, EXPECTED_CREDENTIALS),
        ("/latest/meta-data/instance-id", INSTANCE_ID.encode()),
        ("/latest/meta-data/services/partition", b"aws"),
    ],
)
def test_lines_16_to_24_served_bodies_are_text_plain_with_exact_length(
    path: str, body: bytes
) -> None:
    response = respond(get(path), make_instance(), NOW)
    assert (response.status, response.body) == (200, body)
    assert response.header("Content-Type") == "text/plain"
    assert response.header("Content-Length") == str(len(body))


def test_line_24_the_identity_document_through_respond() -> None:
    response = respond(get("/latest/dynamic/instance-identity/document"), make_instance(), NOW)
    document = json.loads(response.body)
    assert document["accountId"] == ACCOUNT_ID and document["instanceId"] == INSTANCE_ID


def test_line_28_expired_credentials_are_never_served_even_if_handed_in() -> None:
    instance = make_instance()
    response = respond(get(CREDENTIALS_PATH), instance, EXPIRATION.timestamp())
    assert response.status == 404
    info = json.loads(
        respond(get("/latest/meta-data/iam/info"), instance, EXPIRATION.timestamp()).body
    )
    assert info["Code"] == "CredentialsExpired"
    assert (info["InstanceProfileArn"], info["InstanceProfileId"]) == (PROFILE_ARN, PROFILE_ID)


# -- every response ----------------------------------------------------------------------------


def test_refusals_have_an_empty_text_plain_body() -> None:
    response = respond(get("/", XFF), make_instance(), NOW)
    assert (response.status, response.body, response.header("Content-Type")) == (
        403,
        b"",
        "text/plain",
    )
    assert response.header("Content-Length") == "0"


def test_every_response_names_the_server_as_ec2ws() -> None:
    for row in ROWS:
        response = respond(
            row.request, make_instance(**row.instance), NOW, rate_limited=row.rate_limited
        )
        assert response.header("Server") == "EC2ws", row.name


# -- options from the assignment ---------------------------------------------------------------


def test_metadata_options_default_to_imdsv2_only_as_the_controller_does() -> None:
    expected = MetadataOptions(HttpTokens.REQUIRED, 1, HttpEndpoint.ENABLED)
    assert parse_metadata_options(None) == expected
    assert parse_metadata_options({}) == expected
    assert parse_metadata_options({"http_endpoint": "enabled"}) == expected


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"http_tokens": "sometimes"}, "metadata_options.http_tokens"),
        ({"http_endpoint": "on"}, "metadata_options.http_endpoint"),
        ({"http_put_response_hop_limit": "2"}, "metadata_options.http_put_response_hop_limit"),
        ({"http_put_response_hop_limit": True}, "metadata_options.http_put_response_hop_limit"),
        ({"http_put_response_hop_limit": 65}, "metadata_options.http_put_response_hop_limit"),
        ([], "metadata_options"),
    ],
)
def test_malformed_metadata_options_are_refused_naming_the_key(body: object, path: str) -> None:
    with pytest.raises(MessageError, match=rf"^{re.escape(path)}: "):
        parse_instance(assignment(metadata_options=body))


# -- properties --------------------------------------------------------------------------------

HEADER_NAMES = st.sampled_from(
    [
        "Host",
        "X-aws-ec2-metadata-token",
        "X-aws-ec2-metadata-token-ttl-seconds",
        "X-Forwarded-For",
        "Forwarded",
        "Via",
        "Content-Length",
        "User-Agent",
    ]
) | st.text(max_size=20)
HEADER_VALUES = st.sampled_from(
    ["169.254.169.254", "169.254.169.254:80", "60", "0", "21600", token_for()]
) | st.text(max_size=60)
METHODS = st.sampled_from(["GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"]) | st.text(
    max_size=10
)
SEGMENTS = st.sampled_from(
    ["latest", "meta-data", "iam", "info", "security-credentials", ROLE, "api", "token", "", ".."]
) | st.text(max_size=12)
TARGETS = st.builds(
    lambda parts, slash: "/" + "/".join(parts) + slash,
    st.lists(SEGMENTS, max_size=6),
    st.sampled_from(["", "/", "?a=b"]),
) | st.text(max_size=60)
INSTANCES = st.builds(
    make_instance,
    http_tokens=st.sampled_from(["optional", "required"]),
    hop_limit=st.integers(min_value=1, max_value=64),
    http_endpoint=st.sampled_from(["enabled", "enabled", "disabled"]),
    strict_proxy=st.booleans(),
    credentials=st.sampled_from([None, credential_set()]),
)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(
    method=METHODS,
    target=TARGETS,
    headers=st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=6),
    instance=INSTANCES,
    rate_limited=st.booleans(),
    now=st.floats(min_value=0, max_value=4e9),
)
def test_respond_never_raises_and_answers_only_known_statuses(
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    instance: InstanceView,
    rate_limited: bool,
    now: float,
) -> None:
    response = respond(
        ImdsRequest(method, target, headers), instance, now, rate_limited=rate_limited
    )
    assert isinstance(response, ImdsResponse)
    assert response.status in STATUSES
    length = response.header("Content-Length")
    assert length is not None and length.isdigit()
    assert response.header("Server") == "EC2ws"
    if method == "HEAD":
        assert response.body == b""
    else:
        assert int(length) == len(response.body)
    if response.status != 404:
        assert response.header("Content-Type") == "text/plain"
    if response.status != 200 or response.reason != "token":
        assert response.ip_ttl is None


@given(
    method=METHODS,
    target=TARGETS,
    headers=st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=4),
    proxy=st.sampled_from(["X-Forwarded-For", "forwarded", "VIA"]),
)
def test_a_strict_instance_serves_nothing_to_a_proxied_request(
    method: str, target: str, headers: list[tuple[str, str]], proxy: str
) -> None:
    request = ImdsRequest(method, target, [HOST, *headers, (proxy, "10.0.0.9")])
    assert respond(request, make_instance(), NOW).status == 403


@given(
    method=METHODS,
    target=TARGETS,
    headers=st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=4),
)
def test_a_required_instance_serves_nothing_without_a_valid_token(
    method: str, target: str, headers: list[tuple[str, str]]
) -> None:
    headers = [
        (name, value) for name, value in headers if name.lower() != "x-aws-ec2-metadata-token"
    ]
    request = ImdsRequest(method, target, [HOST, *headers])
    response = respond(request, make_instance(http_tokens="required"), NOW)
    assert response.status != 200 or response.reason == "token"


# -- the memo of tree answers ------------------------------------------------------------------


def test_an_answer_remembered_while_valid_is_not_served_once_the_credentials_expire() -> None:
    instance = make_instance()
    assert respond(get(CREDENTIALS_PATH), instance, NOW).status == 200
    assert (CREDENTIALS_PATH, False) in instance.answers
    assert respond(get(CREDENTIALS_PATH), instance, EXPIRATION.timestamp()).status == 404
    assert respond(get(CREDENTIALS_PATH), instance, NOW).status == 200


def test_remembered_answers_are_bounded_and_guests_paths_still_answer() -> None:
    instance = make_instance()
    for number in range(MEMO_ANSWERS + 50):
        assert respond(get(f"/latest/meta-data/nothing-{number}"), instance, NOW).status == 404
    assert len(instance.answers) == MEMO_ANSWERS
    assert respond(get(CREDENTIALS_PATH), instance, NOW).status == 200
    head = respond(get(CREDENTIALS_PATH, method="HEAD"), instance, NOW)
    assert (head.status, head.body) == (200, b"")
    assert head.header("Content-Length") == str(
        len(respond(get(CREDENTIALS_PATH), instance, NOW).body)
    )


def test_a_remembered_answer_never_skips_the_checks_before_it() -> None:
    instance = make_instance(http_tokens="required")
    token = MINTER.mint(INSTANCE_ID, 60, NOW)
    assert respond(get(CREDENTIALS_PATH, (TOKEN_HEADER, token)), instance, NOW).status == 200
    assert respond(get(CREDENTIALS_PATH), instance, NOW).status == 401
    assert respond(get(CREDENTIALS_PATH, (TOKEN_HEADER, token), XFF), instance, NOW).status == 403
