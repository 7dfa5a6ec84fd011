"""AWS's Signature Version 4 test suite, every case: canonical request, string to sign,
Authorization header, and verification of the signed request (tests/data/README.md)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import pytest

from controller import sigv4
from controller.errors import IncompleteSignature, SignatureDoesNotMatch
from controller.sigv4 import HttpRequest

SUITE = Path(__file__).parent.parent / "data" / "aws-sig-v4-test-suite" / "aws4_testsuite"
ACCESS_KEY_ID = "AKIDEXAMPLE"
SECRET_ACCESS_KEY = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
REGION = "us-east-1"
SERVICE = "service"
NOW = datetime(2015, 8, 30, 12, 36, 0, tzinfo=UTC)

# post-vanilla-query-nonunreserved's request line ("/?@#$%^&+=/,?><`";:\|][{}") is not a parseable
# URL: it has a '#' and a literal '&'. Its .creq shows it means one parameter named '@#$%^&+' with
# the value '/,?><`";:\|][{}', so we send that parameter as a client would put it on the wire.
QUERY_OVERRIDES = {
    "post-vanilla-query-nonunreserved": quote("@#$%^&+", safe="")
    + "="
    + quote('/,?><`";:\\|][{}', safe=""),
}
# post-sts-header-after adds X-Amz-Security-Token after signing: RoleCall refuses an unsigned
# x-amz-* header, so its signed request must be refused rather than verified.
REFUSED_AS_UNSIGNED = {"post-sts-header-after"}


@dataclass(frozen=True)
class SuiteCase:
    name: str
    request: HttpRequest
    signed_request: HttpRequest
    canonical_request: str
    string_to_sign: str
    authorization: str


def parse_suite_request(text: str, query_override: str | None = None) -> HttpRequest:
    """A .req/.sreq file as an HttpRequest, read as the suite means it (see module notes)."""
    text = text.removeprefix("\ufeff")
    head, _, body = text.partition("\n\n")
    request_line, *header_lines = head.split("\n")
    tokens = request_line.split(" ")
    method, target = tokens[0], " ".join(tokens[1:-1])
    path, _, query = target.partition("?")
    query = query.partition(" ")[0]  # the suite's query ends at the first space
    headers: list[tuple[str, str]] = []
    for line in header_lines:
        if line[:1] in (" ", "\t"):  # a continuation line is a further value of the header above
            headers.append((headers[-1][0], line))
        else:
            name, _, value = line.partition(":")
            headers.append((name, value))
    if query_override is not None:
        query = query_override
    return HttpRequest(method, path, query, tuple(headers), body.encode("utf-8"))


def load_case(request_file: Path) -> SuiteCase:
    name = request_file.stem

    def read(suffix: str) -> str:
        return request_file.with_suffix(suffix).read_text(encoding="utf-8")

    override = QUERY_OVERRIDES.get(name)
    return SuiteCase(
        name=name,
        request=parse_suite_request(read(".req"), override),
        signed_request=parse_suite_request(read(".sreq"), override),
        canonical_request=read(".creq"),
        string_to_sign=read(".sts"),
        authorization=read(".authz"),
    )


CASE_FILES = sorted(SUITE.rglob("*.req"))
CASES = [load_case(path) for path in CASE_FILES]
CASE_IDS = [str(path.parent.relative_to(SUITE)) for path in CASE_FILES]
VERIFIABLE = [case for case in CASES if case.name not in REFUSED_AS_UNSIGNED]
VERIFIABLE_IDS = [case.name for case in VERIFIABLE]


def all_header_names(request: HttpRequest) -> list[str]:
    return sorted({name.lower() for name, _ in request.headers})


def authorization_of(request: HttpRequest) -> str:
    (value,) = [value for name, value in request.headers if name.lower() == "authorization"]
    return value.strip()


def with_authorization(request: HttpRequest, authorization: str) -> HttpRequest:
    headers = [(n, v) for n, v in request.headers if n.lower() != "authorization"]
    return replace(request, headers=(*headers, ("Authorization", authorization)))


def test_suite_has_every_case_including_nested_ones() -> None:
    assert len(CASES) == 31
    assert sum(case_id.startswith("normalize-path/") for case_id in CASE_IDS) == 7
    assert sum(case_id.startswith("post-sts-token/") for case_id in CASE_IDS) == 2


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_canonical_request_matches_suite(case: SuiteCase) -> None:
    signed_headers = all_header_names(case.request)
    assert sigv4.canonical_request(case.request, signed_headers) == case.canonical_request


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_string_to_sign_matches_suite(case: SuiteCase) -> None:
    scope = sigv4.credential_scope("20150830", REGION, SERVICE)
    created = sigv4.string_to_sign("20150830T123600Z", scope, case.canonical_request)
    assert created == case.string_to_sign


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_our_signer_produces_suite_authorization(case: SuiteCase) -> None:
    tokens = [v for n, v in case.request.headers if n.lower() == "x-amz-security-token"]
    signed = sigv4.sign(
        case.request,
        access_key_id=ACCESS_KEY_ID,
        secret_access_key=SECRET_ACCESS_KEY,
        region=REGION,
        service=SERVICE,
        now=NOW,
        security_token=tokens[0] if tokens else None,
    )
    assert authorization_of(signed) == case.authorization
    assert authorization_of(case.signed_request) == case.authorization


@pytest.mark.parametrize("case", VERIFIABLE, ids=VERIFIABLE_IDS)
def test_suite_signed_request_verifies(case: SuiteCase) -> None:
    claim = sigv4.parse_request(case.signed_request, NOW)
    sigv4.verify(claim, SECRET_ACCESS_KEY)
    assert claim.canonical_request == case.canonical_request
    assert claim.string_to_sign == case.string_to_sign
    assert (claim.access_key_id, claim.date, claim.region, claim.service) == (
        ACCESS_KEY_ID,
        "20150830",
        REGION,
        SERVICE,
    )
    assert claim.request_time == NOW
    assert not claim.presigned


@pytest.mark.parametrize("case", VERIFIABLE, ids=VERIFIABLE_IDS)
def test_suite_request_with_one_signature_digit_changed_is_refused(case: SuiteCase) -> None:
    authorization = authorization_of(case.signed_request)
    last = authorization[-1]
    tampered = authorization[:-1] + ("0" if last != "0" else "1")
    claim = sigv4.parse_request(with_authorization(case.signed_request, tampered), NOW)
    with pytest.raises(SignatureDoesNotMatch):
        sigv4.verify(claim, SECRET_ACCESS_KEY)


@pytest.mark.parametrize("case", VERIFIABLE, ids=VERIFIABLE_IDS)
def test_suite_request_checked_with_another_secret_is_refused(case: SuiteCase) -> None:
    claim = sigv4.parse_request(case.signed_request, NOW)
    with pytest.raises(SignatureDoesNotMatch):
        sigv4.verify(claim, SECRET_ACCESS_KEY.replace("EXAMPLE", "ELPMAXE"))


def test_security_token_signed_before_signing_is_claimed() -> None:
    (case,) = [case for case in CASES if case.name == "post-sts-header-before"]
    claim = sigv4.parse_request(case.signed_request, NOW)
    assert claim.security_token is not None
    assert claim.security_token.startswith("AQoDYXdzEPT//")
    assert "x-amz-security-token" in claim.signed_headers


def test_security_token_added_after_signing_is_refused_as_unsigned() -> None:
    (case,) = [case for case in CASES if case.name == "post-sts-header-after"]
    with pytest.raises(IncompleteSignature) as raised:
        sigv4.parse_request(case.signed_request, NOW)
    assert "x-amz-security-token" in raised.value.message
    assert "AQoDYXdz" not in raised.value.message
